"""Xen's control tools (xl, xenstored, xenconsoled, libxl, hotplug scripts).

    record = build(settings, source)   # {"dir": ..., "install": ".../dist/install", ...}

Xen's tools cannot build out of tree, so the shared source is copied into the build
directory first. Debian's source package ships without the generated configure scripts
(its packaging regenerates them), so they are made with autoconf when missing. Then
Xen's configure with the flags from world.toml and ``make dist-tools``, which installs
into ``<dir>/dist/install`` for staging.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

from provision import log
from provision.build import builddir, hypervisor, reproducible
from provision.build.config import XenSettings
from provision.build.sources import Source
from provision.errors import ProvisionError
from provision.run import run

NAME = "xen-tools"
SYSTEM_PYTHON = "/usr/bin/python3"
# Where autoconf's helper scripts live when the source package deleted its own copies.
_AUX = (Path("/usr/share/misc"), Path("/usr/share/autoconf/build-aux"))


def inputs(settings: XenSettings, source: Source) -> dict:
    return {"source": source.identity, "configure": list(settings.tools_configure),
            "reproducible": hypervisor.pinned(source)}


def build_env(source: Source, src: Path) -> dict[str, str]:
    """The hypervisor's pinned build identity (SOURCE_DATE_EPOCH also makes Python write
    hash-checked .pyc files, not ones stamped with the copied sources' mtimes), and the
    copied tree's path mapped to a fixed name."""
    flags = f"{reproducible.prefix_map({src: f'/usr/src/xen-{source.version}'})} {reproducible.macro_map(src)}"
    return {**hypervisor.pinned(source), "EXTRA_CFLAGS_XEN_TOOLS": flags}


def _copy_tree(tree: Path, src: Path) -> None:
    if (src / "Makefile").exists():
        return  # the work tree of an earlier build: make decides what is out of date
    tmp = src.with_name(src.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run(["cp", "-a", "--reflink=auto", f"{tree}/.", tmp])
    tmp.rename(src)


def _autoconf(src: Path) -> None:
    """Recreate configure scripts and autoconf's helpers the Debian source removed."""
    for aux in ("config.guess", "config.sub"):
        if not (src / aux).exists():
            found = next((d / aux for d in _AUX if (d / aux).exists()), None)
            if found is None:
                raise ProvisionError(f"{aux} is missing from the Xen tree and from this host",
                                     hint="apt-get install autoconf")
            shutil.copy2(found, src / aux)
    if not (src / "configure").exists() or not (src / "tools" / "configure").exists():
        run(["./autogen.sh"], cwd=src, quiet=True)


def build(settings: XenSettings, source: Source, *, jobs: int | None = None) -> dict:
    """Build (or reuse) the control tools for these inputs (make -j ``jobs``); returns their build record."""
    return builddir.build_once(NAME, inputs(settings, source), "tools",
                               functools.partial(_compile, settings, source, jobs))


def _compile(settings: XenSettings, source: Source, jobs: int | None, work: Path, out: Path) -> dict:
    src = work / "src"
    flags = list(settings.tools_configure)
    with log.step(f"Building the Xen {source.version} control tools in {work}"):
        _copy_tree(source.tree, src)
        _autoconf(src)
        stamp = src / ".xen-provision-configure"
        wanted = "\n".join(flags) + "\n"
        if not stamp.exists() or stamp.read_text() != wanted:
            env = builddir.build_env()
            if Path(SYSTEM_PYTHON).exists():  # build for the system's python3, not a venv's
                env["PYTHON"] = SYSTEM_PYTHON
            run(["./configure", *flags], cwd=src, quiet=True, env=env)
            stamp.write_text(wanted)
        dist = work / "dist"
        shutil.rmtree(dist, ignore_errors=True)  # a stale file must not be staged
        builddir.make("dist-tools", f"DISTDIR={dist}", directory=src, parallel=jobs,
                      env=build_env(source, src))
    builddir.publish(work, out, [], {"install": dist / "install"})
    files = [p for p in (out / "install").rglob("*") if p.is_file() or p.is_symlink()]
    return {
        "dir": str(out),
        "install": str(out / "install"),
        "version": source.version,
        "source": source.summary(),
        "configure": flags,
        "configure_sha256": hashlib.sha256("\n".join(flags).encode()).hexdigest(),
        "files": len(files),
        "reproducible": hypervisor.pinned(source),
    }
