"""Fetch a source: a local tree in place, or a tarball or Debian source package
downloaded, verified and unpacked once into the sources cache.

    sources/<identity>/    the unpacked tree, stamped by ``source.json`` (written last)
    downloads/<sha256>/    verified tarballs (:mod:`provision.build.download`)
    debian/<dsc-sha256>/   a .dsc and its files (:mod:`provision.build.sources.debian`)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from provision import cache, log
from provision.build.download import download, filename_from_url
from provision.build.sources import debian
from provision.build.sources.spec import Source, SourceSpec, check_tree
from provision.cache import cache_dir, staging
from provision.errors import ProvisionError
from provision.run import require, run

STAMP = "source.json"


def fetch(spec: SourceSpec, *, dry_run: bool = False) -> Source:
    """Make ``spec``'s tree available (download, verify, unpack; cached) and describe it.

    A second fetch of the same source finds the stamped tree and returns at once. With
    ``dry_run`` nothing is downloaded or written: the plan is logged and the returned
    Source names where the tree is or would be (its version is the tree's if it is
    already cached, else the requested version or "unknown")."""
    if spec.kind == "local":
        return _fetch_local(spec)
    if spec.kind == "tarball":
        return _fetch_tarball(spec, dry_run)
    if spec.kind == "debian":
        if dry_run:
            return debian.dry_run_debian(spec, lambda identity: _unpacked(spec, identity, None, create=False))
        return debian.fetch_debian(spec, lambda identity, unpack: _unpacked(spec, identity, unpack))
    raise ProvisionError(f"unknown source kind {spec.kind!r}")


def _unpacked(spec: SourceSpec, identity: str, unpack: Callable[[Path], str] | None, *,
              create: bool = True) -> Source | None:
    """The cached tree ``identity``, made by ``unpack(path)`` (which unpacks into ``path``
    and returns the tree's name in it) when it is not there; without ``unpack`` only
    looked up (None when missing)."""
    entry = cache.Entry(cache_dir("sources", create=create) / identity, stamp=STAMP)
    if unpack is None:
        record = entry.record()
    else:
        def build(path: Path) -> dict:
            tree_rel = unpack(path)
            return {"identity": identity, "tree": tree_rel, "version": check_tree(path / tree_rel, spec),
                    "spec": spec.__dict__}

        record, _hit = cache.obtain(entry, build)
    if record is None:
        return None
    return Source(tree=entry.path / record["tree"], version=record["version"], identity=record["identity"],
                  spec=spec)


# --------------------------------------------------------------------------- local


def local_identity(tree: Path) -> str:
    """A hash of the path and every file's name, size and mtime (dot-directories skipped)."""
    h = hashlib.sha256(str(tree).encode() + b"\0")
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            h.update(f"{os.path.relpath(path, tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _fetch_local(spec: SourceSpec) -> Source:
    tree = Path(spec.path)
    if not tree.is_dir():
        raise ProvisionError(f"local source {tree} does not exist or is not a directory",
                             hint="point 'path' at an unpacked Xen or Linux source tree")
    version = check_tree(tree, spec)
    return Source(tree=tree, version=version, identity=local_identity(tree), spec=spec)


# --------------------------------------------------------------------------- tarball


def _fetch_tarball(spec: SourceSpec, dry_run: bool) -> Source:
    name = filename_from_url(spec.url)
    if dry_run:
        if source := _unpacked(spec, spec.sha256, None, create=False):
            return source
        have = (cache_dir("downloads", create=False) / spec.sha256 / name).exists()
        entry = cache_dir("sources", create=False) / spec.sha256
        log.info(f"would {'unpack the cached' if have else 'download and verify'} {name} "
                 f"(sha256 {spec.sha256[:16]}...) from {spec.url} into {entry}")
        return Source(tree=entry, version=spec.version or "unknown", identity=spec.sha256, spec=spec)

    def unpack(path: Path) -> str:
        with log.step(f"Fetching {name}"):
            archive = download(spec.url, spec.sha256, cache_dir("downloads") / spec.sha256, name=name)
            require("tar")
            with staging(path) as tmp:
                (tmp / "tree").mkdir(parents=True)
                log.info(f"unpacking {name}")
                # tar picks the decompressor itself; no owners from the archive, no absolute paths.
                run(["tar", "-xf", archive, "-C", tmp / "tree", "--no-same-owner", "--no-same-permissions"],
                    quiet=True)
                top = list((tmp / "tree").iterdir())
                tree_rel = f"tree/{top[0].name}" if len(top) == 1 and top[0].is_dir() else "tree"
            return tree_rel

    return _unpacked(spec, spec.sha256, unpack)
