"""Build trees and their outputs in the cache, keyed by their inputs.

Each build (the hypervisor, the tools, one kernel flavour) compiles in one work tree at a
stable path, ``$XEN_PROVISION_CACHE/build/<name>.work``, so make and kbuild rebuild only
what a changed input touches (their dependency records hold absolute paths: a tree must
not move). A finished build publishes the files staging needs into an immutable output
directory ``build/<name>-<key>``, the key being a hash of everything that decides them,
with ``build.json`` written last. The next run with the same inputs, even from a fresh
clone, takes that directory and runs no make at all.

    record = build_once(NAME, inputs, "hypervisor", compile)   # compile(work, out) -> record
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from provision import cache, log
from provision.build.distcc import Plan
from provision.cache import cache_dir, manifest_key
from provision.run import run

DONE = "build.json"
FORMAT = 1  # bump to invalidate every cached build tree


def jobs() -> int:
    """The default -j for make: $XEN_PROVISION_JOBS (the user's), else the number of CPUs
    we may use. doit's jobs= reaches make as an argument, not through here."""
    value = os.environ.get("XEN_PROVISION_JOBS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


CCACHE_DIR = Path("/usr/lib/ccache")  # Debian's gcc -> ccache masquerade links


def ccache_enabled() -> bool:
    return (CCACHE_DIR / "gcc").exists() and not os.environ.get("CCACHE_DISABLE")


def build_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for builds: ccache's masquerade directory first on PATH when ccache
    is installed (unless CCACHE_DISABLE). PATH rather than CC=, because Xen's tools pass
    $(CC) unquoted to sub-makes and "CC=ccache gcc" breaks them."""
    env = dict(extra or {})
    if ccache_enabled():
        env["PATH"] = f"{CCACHE_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return env


def make(*args: str | os.PathLike, directory: Path, quiet: bool = False, env=None,
         parallel: int | None = None, distcc: Plan | None = None) -> None:
    """make in ``directory`` with ``-j parallel`` (the build's setting; default :func:`jobs`,
    or the distcc hosts' slots), compiling through ``distcc`` when given."""
    if distcc:
        ccache = ccache_enabled()
        env = {**(env or {}), **distcc.env(ccache)}
        args = (*distcc.make_args(ccache), *args)
        parallel = parallel or distcc.jobs
    run(["nice", "make", "-C", directory, f"-j{parallel or jobs()}", *args], quiet=quiet, env=build_env(env))


def key(name: str, inputs: dict) -> str:
    return manifest_key({"format": FORMAT, "name": name, **inputs})


def _lock(name: str) -> Path:
    """One builder per tree name at a time (the work tree is shared by its outputs)."""
    return cache_dir("locks") / f"build-{name}.lock"


def entry(name: str, inputs: dict) -> cache.Entry:
    """The output directory of a build of ``name`` with ``inputs``, stamped by build.json."""
    return cache.Entry(output_dir(name, inputs), stamp=DONE, lock=_lock(name))


def done(directory: Path) -> dict | None:
    return cache.Entry(directory, stamp=DONE).record()


def reuse(directory: Path) -> dict | None:
    """The record of a finished tree, marked as just used (so pruning keeps it)."""
    return cache.Entry(directory, stamp=DONE).use()


def finish(directory: Path, record: dict) -> dict:
    # finished_at tells a fresh build from a reused one (world's summary).
    return cache.Entry(directory, stamp=DONE).finish({**record, "finished_at": time.time()})


def output_dir(name: str, inputs: dict) -> Path:
    """Where the outputs of a build of ``name`` with ``inputs`` live (may not exist yet)."""
    return cache_dir("build") / f"{name}-{key(name, inputs)}"


def work_dir(name: str) -> Path:
    """The stable work tree of ``name``; build in it only inside :func:`build_once` (its lock)."""
    path = cache_dir("build") / f"{name}.work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(work: Path, out: Path, files: list[str], trees: dict[str, Path] | None = None) -> None:
    """Copy ``files`` (relative to ``work``; missing optional ones are skipped when they
    start with "?") and whole ``trees`` (name in ``out`` -> directory) into ``out``,
    built under a temporary name and renamed, so ``out`` is complete or absent."""
    with cache.staging(out) as tmp:
        tmp.mkdir()
        for rel in files:
            optional = rel.startswith("?")
            rel = rel.removeprefix("?")
            src = work / rel
            if optional and not src.exists():
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        for name, tree in (trees or {}).items():
            run(["cp", "-a", "--reflink=auto", f"{tree}/.", tmp / name])


def build_once(name: str, inputs: dict, label: str, build: Callable[[Path, Path], dict]) -> dict:
    """The build record of ``name`` for ``inputs``: the finished output directory's when
    there is one, else ``build(work, out)``'s, which compiles in the stable work tree,
    publishes into ``out`` and returns the record; older output directories are then
    pruned. The tree's lock is held throughout (:func:`provision.cache.obtain`)."""
    out = entry(name, inputs)
    record, hit = cache.obtain(out, lambda path: {**build(work_dir(name), path), "finished_at": time.time()})
    if hit:
        log.info(f"{label}: reusing the cached build {out.path.name}")
    else:
        with out.locked():
            prune(name)
    return record


def prune(name: str, keep: int = 3) -> None:
    """Keep only the ``keep`` most recently finished or reused output directories of
    ``name``, and drop unfinished ones. Call with the tree's lock held: then no other
    process is publishing for this name."""
    trees = [p for p in cache_dir("build").glob(f"{name}-*")
             if re.fullmatch(r"[0-9a-f]{32}", p.name[len(name) + 1:]) and p.is_dir()]
    cache.prune((cache.Entry(p, stamp=DONE) for p in trees), keep, unfinished=True)
