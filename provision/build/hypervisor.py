"""The Xen hypervisor, built with Xen's own Kconfig and make, out of tree.

    record = build(settings, source)   # {"dir": ..., "version": "4.17.5", ...}

Xen's defconfig, our fragment laid over it, olddefconfig, a check that every setting of
the fragment survived, then ``make -C xen O=<cache dir>``. The source tree stays
untouched (it is shared and read-only).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from provision import log
from provision.build import builddir, kconfig, reproducible
from provision.build.config import XenSettings
from provision.build.sources import Source
from provision.errors import ProvisionError
from provision.run import output

NAME = "xen-hypervisor"
# What staging needs: the multiboot ELF, its gzip'd copy, the symbols, the config.
OUTPUTS = ["xen", "xen.gz", "xen-syms", ".config"]


def inputs(settings: XenSettings, source: Source) -> dict:
    return {
        "source": source.identity,
        "fragment": kconfig.render(settings.fragment_values),
        "reproducible": pinned(source),
    }


def pinned(source: Source) -> dict[str, str]:
    """The build identity the hypervisor is built with (:mod:`.reproducible`)."""
    return reproducible.xen_env(reproducible.source_date_epoch(source))


def build_env(source: Source, work: Path) -> dict[str, str]:
    """:func:`pinned`, and the source and work trees' paths mapped to fixed names."""
    paths = {source.tree: f"/usr/src/xen-{source.version}", work: f"/usr/src/xen-{source.version}-build"}
    flags = f"{reproducible.prefix_map(paths)} {reproducible.macro_map(source.tree)}"
    return {**pinned(source), "EXTRA_CFLAGS_XEN_CORE": flags}


def configure(tree: Path, out: Path, settings: XenSettings) -> dict[str, str]:
    """Write ``out/.config`` from defconfig + fragment; return the final settings."""
    xen = tree / "xen"
    builddir.make("defconfig", f"O={out}", directory=xen, quiet=True)
    base = kconfig.parse((out / ".config").read_text(), f"{out}/.config")
    merged = kconfig.merge(base, settings.fragment_values)
    kconfig.write_if_changed(out / ".config", merged)
    builddir.make("olddefconfig", f"O={out}", directory=xen, quiet=True)
    final = kconfig.parse((out / ".config").read_text(), f"{out}/.config")
    dropped = kconfig.check(final, settings.fragment_values)
    if dropped:
        why = kconfig.explain(xen, dropped, final)
        raise ProvisionError(
            f"{settings.fragment.name}: Kconfig dropped {why[0]}"
            + (f" (and {len(why) - 1} more: {'; '.join(why[1:])})" if len(why) > 1 else ""),
            hint="enable the missing dependency in the fragment, or drop the option",
        )
    return final


def schedulers(config: dict[str, str]) -> tuple[list[str], str | None]:
    """The schedulers a hypervisor .config builds in, and its default."""
    names = {"CREDIT": "credit", "CREDIT2": "credit2", "RTDS": "rtds",
             "ARINC653": "arinc653", "NULL": "null"}
    built = [n for sym, n in names.items() if config.get(f"SCHED_{sym}") == "y"]
    default = config.get("SCHED_DEFAULT", "").strip('"') or None
    return built, default


def build(settings: XenSettings, source: Source, *, jobs: int | None = None) -> dict:
    """Build (or reuse) the hypervisor for these inputs (make -j ``jobs``); returns its build record."""
    return builddir.build_once(NAME, inputs(settings, source), "hypervisor",
                               functools.partial(_compile, settings, source, jobs))


def _compile(settings: XenSettings, source: Source, jobs: int | None, work: Path, out: Path) -> dict:
    with log.step(f"Building the Xen {source.version} hypervisor in {work}"):
        final = configure(source.tree, work, settings)
        builddir.make(f"O={work}", directory=source.tree / "xen", parallel=jobs, env=build_env(source, work))
    version = output(["make", "-s", "-C", source.tree / "xen", f"O={work}", "xenversion"])
    built, default = schedulers(final)
    builddir.publish(work, out, OUTPUTS)
    return {
        "dir": str(out),
        "version": version,
        "source": source.summary(),
        "config_sha256": hashlib.sha256((out / ".config").read_bytes()).hexdigest(),
        "fragment_sha256": hashlib.sha256(settings.fragment_text.encode()).hexdigest(),
        "debug": final.get("DEBUG") == "y",
        "schedulers": built,
        "default_scheduler": default,
        "elf_sha256": hashlib.sha256((out / "xen").read_bytes()).hexdigest(),
        "reproducible": pinned(source),
    }
