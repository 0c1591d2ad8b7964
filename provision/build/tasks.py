"""doit tasks for `doit world`: sources, hypervisor, tools, kernels, staging.

dodo.py loads these (through provision/tasks.py, which also reads the command-line
variables); ``python -m provision world`` runs the same tasks. ``doit world name=value``:

    kernels=mk.linux-6.1-xenU    override the KERNELS list (space or comma separated)
    buildconfigs=DIR             another buildconfigs directory (provision/paths.py)
    dist=DIR                     where to stage (DIR/install; provision/paths.py)
    jobs=N                       make -j (default: the number of CPUs, or the distcc slots)
    distcc='HOST/N ...'          compile the kernels through distcc (overrides
                                 [build] distcc in world.toml; distcc= for none)
    lsmod=FILE                   trim the kernels with modules to FILE's (lsmod output)

    doit verify [parts=xen,xenU] [keep=1] [scratch=DIR]
                                 rebuild into a scratch cache (a temporary one, removed
                                 unless keep=1) and compare with dist/install, naming the
                                 first file that differs (provision/build/verify.py)

Each build task's target is a small JSON stamp (in DIST/.stamps) holding the build
record: doit fingerprints that, and the stamp names the build tree in the cache. Inputs
doit cannot see as files go through ``config_changed``. The build functions themselves
reuse a finished tree in the cache, so even a fresh clone rebuilds nothing that was
built before with the same inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import time
from pathlib import Path

from doit.task import clean_targets
from doit.tools import config_changed

from provision.build import (
    builddir,
    config,
    distcc,
    hypervisor,
    linux,
    preflight,
    stage,
    tools,
    verify,
)
from provision.build.install_tasks import clean_dist
from provision.build.sources import Source, SourceSpec, fetch
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.grub.tasks import OUTPUTS as GRUB_OUTPUTS
from provision.tasks import fail, variables

# When this doit run began: a build record finished after it was built by this run.
STARTED = time.time()


@functools.cache
def world() -> config.World:
    v = variables()
    try:
        return config.load(v.buildconfigs, kernels=v.kernels, distcc=v.distcc, lsmod_file=v.lsmod)
    except ProvisionError as e:
        fail(e)


def dist() -> Path:
    return variables().dist


def install_dir() -> Path:
    return dist() / "install"


def stamps() -> Path:
    return dist() / ".stamps"


def _stamp(name: str) -> Path:
    return stamps() / f"{name}.json"


def _write(path: Path, record: dict) -> None:
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _tree_ok(stamp_path: Path, key: str = "dir") -> bool:
    """The stamp's finished build tree (or its source tree) is still in the cache."""
    try:
        path = Path(_read(stamp_path)[key])
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return False
    return builddir.done(path) is not None if key == "dir" else path.is_dir()


def _source_of(stamp_path: Path) -> Source:
    d = _read(stamp_path)
    return Source(tree=Path(d["tree"]), version=d["version"], identity=d["identity"],
                  spec=SourceSpec(**d["spec"]))


def _guard(fn, *args):
    """Run a build step; a ProvisionError becomes one line and a failed task."""
    try:
        fn(*args)
    except ProvisionError as e:
        e.report()
        return False
    return None


def _fetch_source(what: str, spec: SourceSpec) -> None:
    src = fetch(spec)
    _write(_stamp(f"source-{what}"), {"tree": str(src.tree), "version": src.version,
                                      "identity": src.identity, "spec": dataclasses.asdict(spec)})


def task_source():
    """Fetch and verify the Xen and Linux sources (cached by checksum)."""
    w = world()
    specs = {"xen": w.xen.source}
    if w.kernels:
        specs["linux"] = w.linux_source
    for what, spec in specs.items():
        target = _stamp(f"source-{what}")
        yield {
            "name": what,
            "doc": f"fetch the {what} source: {spec.describe()}",
            "actions": [(_guard, [_fetch_source, what, spec])],
            "targets": [target],
            # A local tree can change under us; the others are fixed by their checksums.
            "uptodate": [config_changed(repr(spec)), lambda t=target: _tree_ok(t, "tree"),
                         spec.kind != "local"],
            "clean": [clean_targets, _remove_stamps_dir],
        }


def _remove_stamps_dir() -> None:
    """The sources are cleaned last: the last one takes the emptied stamps directory."""
    with contextlib.suppress(OSError):
        stamps().rmdir()


def _build(task: str, build, settings, source: str, needs: str) -> None:
    """The action of the build task ``task`` ("xen", "tools", "kernel:<recipe>"): check the
    build dependencies (``needs``: a switch of preflight.check), build or reuse ``settings``
    with ``build`` from the tree of the ``source`` stamp, and write the task's stamp. The
    kernels compile through the distcc hosts that pass their probe; Xen stays local
    (provision/build/distcc.py says why)."""
    preflight.check(**{needs: True}, staging=True)
    plan = distcc.prepare(world().distcc) if task.startswith("kernel:") else None
    record = build(settings, _source_of(_stamp(f"source-{source}")), jobs=variables().jobs,
                   **({"distcc": plan} if plan else {}))
    _write(_stamp(task.replace(":", "-")), {**record, "task": task})


def task_xen():
    """Build the Xen hypervisor from the Kconfig fragment (buildconfigs/xen.config)."""
    w = world()
    return {
        "actions": [(_guard, [_build, "xen", hypervisor.build, w.xen, "xen", "hypervisor"])],
        "file_dep": [_stamp("source-xen"), w.xen.fragment],
        "targets": [_stamp("xen")],
        "uptodate": [lambda: _tree_ok(_stamp("xen"))],
        "clean": True,
    }


def task_tools():
    """Build Xen's control tools (xl, xenstored, libxl...) with make dist-tools."""
    w = world()
    if not w.xen.tools:
        return {"actions": [], "doc": "control tools: switched off in world.toml", "uptodate": [True]}
    return {
        "actions": [(_guard, [_build, "tools", tools.build, w.xen, "xen", "xen_tools"])],
        "file_dep": [_stamp("source-xen")],
        "targets": [_stamp("tools")],
        "uptodate": [config_changed(" ".join(w.xen.tools_configure)), lambda: _tree_ok(_stamp("tools"))],
        "clean": True,
    }


def task_kernel():
    """Build the kernels of the KERNELS list (buildconfigs/mk.linux-*), out of tree."""
    for recipe in world().kernels:
        target = _stamp(f"kernel-{recipe.name}")
        yield {
            "name": recipe.name,
            "doc": f"build {recipe.name}: {recipe.base}"
                   + (f" trimmed to {recipe.lsmod.name}" if recipe.lsmod else "")
                   + f" + {', '.join(f.label for f in recipe.fragments)}",
            "actions": [(_guard, [_build, f"kernel:{recipe.name}", linux.build, recipe, "linux", "linux"])],
            "file_dep": [_stamp("source-linux"), *recipe.files()],
            "targets": [target],
            "uptodate": [lambda t=target: _tree_ok(t)],
            "clean": True,
        }


def _stage() -> None:
    preflight.check(staging=True)
    w = world()
    xen = _read(_stamp("xen"))
    tools_record = _read(_stamp("tools")) if w.xen.tools else None
    kernels = {r.name: _read(_stamp(f"kernel-{r.name}")) for r in w.kernels}
    stage.stage(install_dir(), xen, tools_record, kernels)


def _unstage() -> None:
    shutil.rmtree(install_dir(), ignore_errors=True)
    for elf in dist().glob("xen-*.elf"):
        elf.unlink()
    install_dir().with_name(f".{install_dir().name}.lock").unlink(missing_ok=True)


def task_stage():
    """Stage everything into dist/install with manifest.json (like Xen's make install)."""
    w = world()
    deps = [_stamp("xen"), *(_stamp(f"kernel-{r.name}") for r in w.kernels)]
    if w.xen.tools:
        deps.append(_stamp("tools"))
    return {
        "actions": [(_guard, [_stage])],
        "file_dep": deps,
        "targets": [install_dir() / stage.MANIFEST],
        "uptodate": [config_changed({"kernels": [r.name for r in w.kernels], "tools": w.xen.tools,
                                     "format": stage.FORMAT})],
        "clean": [_unstage],
    }


def _report() -> None:
    """What this run compiled: the build records (the stamps) finished since it began."""
    w = world()
    names = ["xen", *(["tools"] if w.xen.tools else []), *(f"kernel-{r.name}" for r in w.kernels)]
    records = [_read(_stamp(name)) for name in names if _stamp(name).exists()]
    rebuilt = [r.get("task", "?") for r in records if r.get("finished_at", 0) >= STARTED]
    if rebuilt:
        print(f"world: rebuilt {', '.join(rebuilt)}; staged in {install_dir()}")
    else:
        print(f"world: nothing was rebuilt; {install_dir()} is up to date")


def _distcc_check() -> None:
    hosts = world().distcc
    if not hosts:
        raise ProvisionError("no distcc hosts to check",
                             hint="give distcc='HOST/N ...', or [build] distcc = [...] in world.toml")
    statuses = distcc.check(hosts)
    for s in statuses:
        print(s.line())
    bad = [s for s in statuses if not s.ok]
    if bad:
        raise ProvisionError(f"distcc host {bad[0].host.spec} is not usable: {bad[0].error}"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                             hint="start distccd there with --allow for this machine, or drop the host")


def task_distcc_check():
    """Check the distcc hosts: each answers, compiles a probe, with the local gcc's version."""
    world()
    return {
        "basename": "distcc-check",
        "actions": [(_guard, [_distcc_check])],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_world():
    """Build the hypervisor, the control tools and the KERNELS into dist/install (default)."""
    world()
    return {
        "actions": [_report],
        "task_dep": ["stage"],
        "uptodate": [False],
        "clean": [_clean_products],
        "verbosity": 2,
    }


def _clean_products() -> None:
    """A plain ``doit clean`` cleans world and what it depends on; what ``doit dist`` and
    ``doit grub`` made from dist/install goes with it."""
    clean_dist()
    grub = dist() / "grub"
    for name in GRUB_OUTPUTS:
        if (grub / name).exists():
            (grub / name).unlink()
            print(f"removed {grub / name}")
    with contextlib.suppress(OSError):
        grub.rmdir()


def _verify() -> None:
    from doit import get_var

    w = world()
    parts = verify.parse_parts(get_var("parts", None), w)
    names = ["xen", *(["tools"] if w.xen.tools else []), *(f"kernel-{r.name}" for r in w.kernels)]
    missing = [n for n in ["source-xen", *(["source-linux"] if w.kernels else []), *names] if not _stamp(n).exists()]
    if missing:
        raise ProvisionError(f"{dist()} has no finished doit world to verify ({_stamp(missing[0])} is missing)",
                             hint="run doit world first")
    sources = {what: _source_of(_stamp(f"source-{what}")) for what in ("xen", "linux") if _stamp(f"source-{what}").exists()}
    records = {n.removeprefix("kernel-"): _read(_stamp(n)) for n in names}
    preflight.check(hypervisor="xen" in parts, xen_tools="tools" in parts,
                    linux=any(p not in ("xen", "tools") for p in parts), staging=True)
    scratch = get_var("scratch", None)
    result = verify.verify(w, sources, records, dist(), parts, jobs=variables().jobs,
                           scratch=Path(scratch).resolve() if scratch else None,
                           keep=get_var("keep", "") not in ("", "0", "no"))
    print(f"verify: OK, {result.compared} files compared, identical ({', '.join(result.parts)} rebuilt)")


def task_verify():
    """Rebuild (parts=xen,tools,xenU,...; default all) in a scratch cache; name the first file that differs from dist/install."""
    return {
        "actions": [(_guard, [_verify])],
        "uptodate": [False],
        "verbosity": 2,
    }
