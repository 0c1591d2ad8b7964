"""Linux kernels from recipes, built out of tree (``O=``) from one shared source tree.

    record = build(recipe, source)   # {"dir": ..., "release": "6.1.176-xen0", ...}

The base config (tinyconfig, defconfig, Debian's own or a file), trimmed to one machine's
modules by the kernel's ``make LSMOD=FILE localmodconfig`` when the recipe has an lsmod
file, the recipe's fragments laid over it in order (after the trim, so what they ask for
stays whatever the machine had loaded), ``LOCALVERSION=-<flavour>`` so ``uname -r`` matches the staged names, olddefconfig,
then the required-option check: a setting Kconfig dropped is an error naming the
dependency that is missing, before any time is spent compiling.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

from provision import log
from provision.build import builddir, debconfig, kconfig, reproducible
from provision.build.config import DEBIAN, KernelRecipe
from provision.build.distcc import Plan, check_kernel
from provision.build.sources import Source
from provision.errors import ProvisionError
from provision.run import output

ARCH = "ARCH=x86_64"  # tinyconfig would otherwise make a 32-bit kernel
# What staging needs ("?" = only some configs make it).
OUTPUTS = ["arch/x86/boot/bzImage", ".config", "System.map", "vmlinux",
           "?modules.builtin", "?modules.builtin.modinfo", "?modules.order"]


def tree_name(recipe: KernelRecipe) -> str:
    return f"linux-{recipe.flavour}"


def inputs(recipe: KernelRecipe, source: Source) -> dict:
    return {"source": source.identity, **recipe.inputs(), "reproducible": pinned(source)}


def pinned(source: Source) -> dict[str, str]:
    """The build identity kernels are built with (:mod:`.reproducible`)."""
    return reproducible.linux_env(reproducible.source_date_epoch(source))


def build_env(source: Source, work: Path) -> dict[str, str]:
    """:func:`pinned`, and the source and work trees' paths mapped to fixed names in debug
    information (kbuild itself makes ``__FILE__`` relative with -fmacro-prefix-map)."""
    paths = {source.tree: f"/usr/src/linux-{source.version}", work: f"/usr/src/linux-{source.version}-build"}
    return {**pinned(source), "KCFLAGS": reproducible.prefix_map(paths)}


def _make(out: Path, tree: Path, *targets: str, quiet: bool = False, jobs: int | None = None,
          env: dict[str, str] | None = None, distcc: Plan | None = None) -> None:
    builddir.make(f"O={out}", ARCH, *targets, directory=tree, quiet=quiet, env=env, parallel=jobs,
                  distcc=distcc)


def fragments(recipe: KernelRecipe, tree: Path) -> list[dict[str, str]]:
    """Every fragment's settings, in order; Linux's own are read from the tree."""
    result = []
    for frag in recipe.fragments:
        if frag.tree_path:
            path = tree / frag.tree_path
            if not path.is_file():
                raise ProvisionError(f"{recipe.name}: {frag.label} is not in the Linux tree {tree}",
                                     hint="check the path, e.g. linux:kernel/configs/xen.config")
            result.append(kconfig.parse_file(path, f"{frag.label}"))
        else:
            result.append(frag.values)
    return result


def configure(recipe: KernelRecipe, tree: Path, out: Path) -> dict[str, str]:
    """Write ``out/.config`` for the recipe and verify it; return the final settings."""
    if recipe.base == DEBIAN:
        base = debconfig.config(tree)
    elif recipe.base in ("tinyconfig", "defconfig"):
        _make(out, tree, recipe.base, quiet=True)
        base = kconfig.parse((out / ".config").read_text(), f"{recipe.base} output")
    else:
        base = kconfig.parse_file(Path(recipe.base))
    if recipe.lsmod:
        base = localmodconfig(base, recipe.lsmod, tree, out)
    local = {"LOCALVERSION": f'"-{recipe.flavour}"', "LOCALVERSION_AUTO": "n"}
    merged = kconfig.merge(base, *fragments(recipe, tree), local)
    kconfig.write_if_changed(out / ".config", merged)
    _make(out, tree, "olddefconfig", quiet=True)
    final = kconfig.parse((out / ".config").read_text(), f"{out}/.config")
    dropped = kconfig.check(final, kconfig.merge(recipe.ours(), local), recipe.require, recipe.forbid)
    if dropped:
        why = kconfig.explain(tree, dropped, final)
        raise ProvisionError(
            f"{recipe.name}: after olddefconfig {why[0]}"
            + (f" (and {len(why) - 1} more: {'; '.join(why[1:])})" if len(why) > 1 else ""),
            hint=f"add the missing dependency to a fragment of {recipe.name}, or drop the option",
        )
    return final


def localmodconfig(base: dict[str, str], lsmod: Path, tree: Path, out: Path) -> dict[str, str]:
    """``base`` with the modules that ``lsmod`` does not list switched off: the kernel's
    own ``make LSMOD=FILE localmodconfig`` (scripts/kconfig/streamline_config.pl) on it."""
    kconfig.write_if_changed(out / ".config", base)
    _make(out, tree, "olddefconfig", quiet=True)
    before = sum(v == "m" for v in kconfig.parse((out / ".config").read_text()).values())
    _make(out, tree, f"LSMOD={lsmod}", "localmodconfig", quiet=True)
    trimmed = kconfig.parse((out / ".config").read_text(), f"{out}/.config after localmodconfig")
    log.info(f"localmodconfig with {lsmod.name}: {before} modules -> "
             f"{sum(v == 'm' for v in trimmed.values())}")
    return trimmed


def build(recipe: KernelRecipe, source: Source, *, jobs: int | None = None,
          distcc: Plan | None = None) -> dict:
    """Build (or reuse) one kernel (make -j ``jobs``, through ``distcc`` when given: not part
    of the key, the outputs are the same); returns its build record."""
    if not (source.version == recipe.series or source.version.startswith(recipe.series + ".")):
        raise ProvisionError(
            f"{recipe.name} is a recipe for Linux {recipe.series} but the Linux source is {source.version}",
            hint=f"point [linux] source in world.toml at a {recipe.series}.x tree, or use a matching recipe",
        )
    return builddir.build_once(tree_name(recipe), inputs(recipe, source), recipe.name,
                               functools.partial(_compile, recipe, source, jobs, distcc))


def _compile(recipe: KernelRecipe, source: Source, jobs: int | None, distcc: Plan | None,
             work: Path, out: Path) -> dict:
    via = f" through distcc ({len(distcc.hosts)} hosts)" if distcc else ""
    with log.step(f"Building {recipe.name} (Linux {source.version}) in {work}{via}"):
        final = configure(recipe, source.tree, work)
        if distcc:
            check_kernel(recipe.name, final)
        modules = final.get("MODULES") == "y"
        env = build_env(source, work)
        _make(work, source.tree, "bzImage", *(["modules"] if modules else []), jobs=jobs, env=env,
              distcc=distcc)
    release = output(["make", "-s", "-C", source.tree, f"O={work}", ARCH, "kernelrelease"], env=env)
    trees = {}
    if modules:
        staging = work / ".modules-install"
        shutil.rmtree(staging, ignore_errors=True)
        # modules_install also writes build/source links back into the work tree: drop them.
        _make(work, source.tree, f"INSTALL_MOD_PATH={staging}", "INSTALL_MOD_STRIP=1",
              "DEPMOD=/bin/true", "modules_install", quiet=True, env=env)
        for link in ("build", "source"):
            (staging / "lib/modules" / release / link).unlink(missing_ok=True)
        trees["modules"] = staging / "lib/modules" / release
    builddir.publish(work, out, OUTPUTS, trees)
    return {
        "dir": str(out),
        "name": recipe.name,
        "flavour": recipe.flavour,
        "series": recipe.series,
        "version": source.version,
        "release": release,
        "modules": modules,
        "source": source.summary(),
        "config_sha256": hashlib.sha256((out / ".config").read_bytes()).hexdigest(),
        "inputs": recipe.inputs(),
        "reproducible": pinned(source),
    }
