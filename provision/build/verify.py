"""``doit verify``: rebuild in a scratch directory and compare with dist/install.

    result = verify(world, sources, stamps, dist, parts=("xen",))   # -> Result, or raises

The staged files are first checked against manifest.json (a file changed after staging
is named at once). The parts named (default: all) are then compiled again from the same
sources into a scratch build cache, with ccache off, so nothing cached is reused for
them (unless ``scratch`` names a directory of an earlier verify: its builds are reused,
which compares again without recompiling); they are staged beside the scratch cache, and every file of theirs is compared with dist/install's
manifest.json (sha256, mode, link target; the hypervisor's ELF beside the tree by its
sha256). The first path that differs, in sorted order, is the error. A full verify also
makes the dist tarball from the rebuilt tree and compares it with dist's, when there is one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.build import hypervisor, linux, reproducible, stage, tools
from provision.build.config import World
from provision.build.sources import Source
from provision.errors import ProvisionError

TARBALL = "tarball"  # the pseudo-path of the dist tarball in a difference


@dataclass(frozen=True)
class Result:
    compared: int
    parts: tuple[str, ...]


def parse_parts(value: str | None, world: World) -> tuple[str, ...]:
    """``parts=xen,xenU``: "xen" (the hypervisor), "tools", and kernels by recipe name or
    flavour; None or empty is all of them. An unknown name is an error naming the valid ones."""
    kernels = {r.name: r.name for r in world.kernels} | {r.flavour: r.name for r in world.kernels}
    valid = ["xen", *(["tools"] if world.xen.tools else []), *kernels]
    if not value or not value.strip():
        return ("xen", *(["tools"] if world.xen.tools else []), *(r.name for r in world.kernels))
    out: list[str] = []
    for name in value.replace(",", " ").split():
        if name in ("xen", "tools") and name in valid:
            part = name
        elif name in kernels:
            part = kernels[name]
        else:
            raise ProvisionError(f"parts={value}: {name!r} is not a part of this world",
                                 hint=f"choose from {', '.join(valid)}")
        if part not in out:
            out.append(part)
    return tuple(out)


def owned(path: str, part: str, manifest: dict) -> bool:
    """Whether the staged ``path`` belongs to ``part`` of ``manifest`` ("xen", "tools" or a
    kernel's recipe name). The tools own what neither the hypervisor nor a kernel does."""
    xen = manifest["xen"]
    xen_paths = {xen["image"], xen["syms"], xen["config"], *xen["links"], xen["elf"]}
    kernels = manifest.get("kernels", {})

    def kernel_owns(k: dict) -> bool:
        return path in (k["vmlinuz"], k["config"], k["system_map"], k["syms"]) or \
            path == k["modules"] or path.startswith(k["modules"] + "/")

    if part == "xen":
        return path in xen_paths
    if part == "tools":
        return path not in xen_paths and not any(kernel_owns(k) for k in kernels.values())
    return part in kernels and kernel_owns(kernels[part])


def table(install: Path, manifest: dict) -> dict[str, dict]:
    """manifest.json's file table, with the hypervisor's ELF beside the tree (by its
    sha256 in the manifest, else read from disk)."""
    files = dict(manifest["files"])
    elf = manifest["xen"]["elf"]
    sha = manifest["xen"].get("elf_sha256")
    if sha is None and (install / elf).is_file():
        sha = hashlib.sha256((install / elf).read_bytes()).hexdigest()
    if sha:
        files[elf] = {"sha256": sha, "mode": "0644"}
    return files


@contextlib.contextmanager
def scratch_cache(path: Path) -> Iterator[None]:
    """Builds in this block use the cache at ``path`` and no ccache."""
    saved = {k: os.environ.get(k) for k in ("XEN_PROVISION_CACHE", "CCACHE_DISABLE")}
    os.environ.update(XEN_PROVISION_CACHE=str(path), CCACHE_DISABLE="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def verify(world: World, sources: dict[str, Source], records: dict[str, dict], dist: Path,
           parts: tuple[str, ...], *, scratch: Path | None = None, jobs: int | None = None,
           keep: bool = False) -> Result:
    """Rebuild ``parts`` from ``sources`` ("xen", "linux") and compare with ``dist``/install.
    ``records`` are the build records of dist's builds ("xen", "tools", recipe names): a
    part not rebuilt is staged from its record. Raises ProvisionError naming the first
    file that differs."""
    install = dist / "install"
    try:
        expected = json.loads((install / stage.MANIFEST).read_text())
    except (OSError, ValueError):
        raise ProvisionError(f"{install / stage.MANIFEST} is missing or unreadable",
                             hint="run doit world first") from None
    if not expected.get("reproducible"):
        raise ProvisionError(f"{install} was staged before builds were pinned (manifest.json has no "
                             f"\"reproducible\" section)", hint="run doit world again, then doit verify")
    # A staged file changed after staging is named without rebuilding anything.
    tampered = reproducible.compare(expected["files"], stage.file_table(install))
    if tampered is not None:
        raise ProvisionError(f"verify: {install}/{tampered.path} does not match manifest.json: "
                             f"{tampered.describe('staged').split(': ', 1)[1]}",
                             hint="run doit world again (it restages dist/install), then doit verify")
    made = scratch is None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="xen-provision-verify-", dir="/var/tmp"))
    try:
        with scratch_cache(scratch / "cache"):
            rebuilt = _rebuild(world, sources, records, parts, jobs)
        staged = stage.stage(scratch / "dist" / "install", rebuilt["xen"], rebuilt.get("tools"),
                             {r.name: rebuilt[r.name] for r in world.kernels if r.name in rebuilt})
        full = set(parts) == set(parse_parts(None, world))
        want = table(install, expected)
        got = {p: e for p, e in table(scratch / "dist" / "install", staged).items()
               if full or any(owned(p, part, staged) for part in parts)}
        difference = reproducible.compare(want, got, subset=not full)
        compared = len(got)
        if difference is None and full:
            difference, n = _compare_tarballs(dist, scratch / "dist")
            compared += n
        if difference is not None:
            kept = keep or not made
            raise ProvisionError(f"verify: {difference.describe()}",
                                 hint=f"the rebuild is in {scratch}" if kept else
                                 "doit verify keep=1 keeps the rebuild to compare (cmp, strings, diffoscope)")
        return Result(compared, parts)
    finally:
        if made and not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _rebuild(world: World, sources: dict[str, Source], records: dict[str, dict],
             parts: tuple[str, ...], jobs: int | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    out["xen"] = hypervisor.build(world.xen, sources["xen"], jobs=jobs) if "xen" in parts else records["xen"]
    if world.xen.tools:
        out["tools"] = tools.build(world.xen, sources["xen"], jobs=jobs) if "tools" in parts else records["tools"]
    for recipe in world.kernels:
        if recipe.name in parts:
            out[recipe.name] = linux.build(recipe, sources["linux"], jobs=jobs)
        elif recipe.name in records:
            out[recipe.name] = records[recipe.name]
    log.info(f"verify: rebuilt {', '.join(parts)}")
    return out


def _compare_tarballs(dist: Path, scratch_dist: Path) -> tuple[reproducible.Difference | None, int]:
    """Make the tarball of the rebuilt tree and compare it with dist's (if dist has one)."""
    from provision.build import install as inst

    theirs = sorted(dist.glob("xen-*-install.tgz"))
    if not theirs:
        return None, 0
    ours = inst.make_dist(scratch_dist)
    a = hashlib.sha256(theirs[-1].read_bytes()).hexdigest()
    b = hashlib.sha256(ours.read_bytes()).hexdigest()
    if a != b:
        return reproducible.Difference(theirs[-1].name, a, b), 1
    return None, 1
