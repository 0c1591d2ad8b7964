"""The cache of bootstrapped bases: one tarball per manifest of inputs.

    <cache>/debootstrap/<key>.tar    the base, uncompressed (unpacking it is the warm path)
    <cache>/debootstrap/<key>.json   the manifest, the tarball's sha256 and size, its unpacked size

Each base is a :class:`provision.cache.Entry` whose stamp is the JSON, written last: an
entry without it is unfinished and is never used. An entry whose tarball does not match
its recorded size or checksum is broken: it is removed and rebuilt, never used. The
base is bootstrapped into the caller's tree (not into the cache), so a miss is tarred
into the cache beside the caller's work (:class:`Storing`), with the entry's lock held
until it is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from provision import cache, log, steps
from provision.cache import cache_dir, manifest_key, sha256_file, staging
from provision.errors import ProvisionError
from provision.fsutil import Lock, atomic_path, atomic_write
from provision.guest.bootstrap import BaseSpec, backend_version, bootstrap
from provision.guest.mirror import probe
from provision.run import run

TAR_OPTS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]


def cache_root(create: bool = True) -> Path:
    return cache_dir("debootstrap", create=create)


class Entry(cache.Entry):
    """A base in the cache: ``<key>.tar``, stamped by ``<key>.json``."""

    def __init__(self, key: str, root: Path):
        super().__init__(root / f"{key}.tar", stamp=root / f"{key}.json")
        self.key = key

    @property
    def tarball(self) -> Path:
        return self.path

    @property
    def meta(self) -> Path:
        return self.stamp

    def info(self) -> dict:
        return json.loads(self.meta.read_text())


def entry_for(spec: BaseSpec, create: bool = True) -> Entry:
    return Entry(manifest_key(spec.manifest()), cache_root(create))


def is_cached(spec: BaseSpec) -> bool:
    return entry_for(spec, create=False).record() is not None


def _tree_size(root: Path) -> tuple[int, int]:
    """Bytes and inodes of a tree, to size images before mkfs fails half-way."""
    total, count = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            count += 1
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_blocks * 512
    return total, count


def _write_tarball(entry: Entry, tree: Path) -> dict:
    with staging(entry.tarball) as tmp:
        run(["tar", *TAR_OPTS, "--sort=name", "-C", tree, "-cf", tmp, "."], quiet=True)
        sha256, size = sha256_file(tmp), os.path.getsize(tmp)
    for stale in entry.tarball.parent.glob(f"{entry.key}.*.img*"):
        stale.unlink(missing_ok=True)  # filesystems made from the base this one replaces
    return {"sha256": sha256, "size": size}


def _tree_meta(spec: BaseSpec, tree: Path) -> dict:
    unpacked, inodes = _tree_size(tree)
    return {"manifest": spec.manifest(), "unpacked_bytes": unpacked, "inodes": inodes, "created": int(time.time())}


def store(entry: Entry, spec: BaseSpec, tree: Path) -> dict:
    """Tar ``tree`` into the cache under ``entry``; returns the recorded metadata."""
    meta = _tree_meta(spec, tree)
    entry.stamp.unlink(missing_ok=True)  # a refreshed base: the old stamp must not name the new tarball
    meta.update(_write_tarball(entry, tree))
    return entry.finish(meta)


class Storing:
    """A fresh base being tarred into the cache while the caller goes on with the same,
    unchanged tree (mkfs reads it too). Call :meth:`wait` before the tree is changed or
    removed; the entry's lock is held until then."""

    def __init__(self, entry: Entry, spec: BaseSpec, tree: Path, lock: Lock,
                 seconds: dict[str, float] | None = None):
        self.entry, self.tree, self._lock = entry, tree, lock
        self.seconds = seconds
        with steps.part(seconds, "base: size estimate"):
            self.meta = _tree_meta(spec, tree)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="cache-base", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            # In the background, beside mkfs: the time it takes, not time on the critical path.
            with steps.part(self.seconds, "(background) base: cache tarball and checksum"):
                self.entry.stamp.unlink(missing_ok=True)  # a refreshed base: the old stamp goes first
                self.meta.update(_write_tarball(self.entry, self.tree))
                self.entry.finish(self.meta)
        except BaseException as e:  # reported by wait(): a cache we could not fill is no failure
            self.error = e

    def wait(self) -> None:
        if self._lock is None:
            return
        self._thread.join()
        self._lock.release()
        self._lock = None
        if self.error is not None:
            log.warn(f"could not cache the base: {self.error}")
        else:
            log.info(f"cached the base as {self.entry.tarball} ({self.meta['size'] >> 20} MiB)")


def _sha256_thread(path: Path, result: dict) -> threading.Thread:
    def work():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(4 << 20):
                h.update(block)
        result["sha256"] = h.hexdigest()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def unpack(entry: Entry, dest: Path) -> dict | None:
    """Unpack a cached base into the empty directory ``dest``, checking it as it goes.

    The checksum runs beside tar, so checking costs no extra time. Returns the entry's
    metadata, or None (with ``dest`` emptied) when the entry is broken.
    """
    try:
        meta = entry.info()
        size = entry.tarball.stat().st_size
    except (OSError, ValueError):
        return None
    if size != meta.get("size"):
        log.warn(f"cached base {entry.tarball.name} is truncated ({size} of {meta.get('size')} bytes); rebuilding it")
        return None
    result: dict = {}
    hasher = _sha256_thread(entry.tarball, result)
    try:
        run(["tar", *TAR_OPTS, "-xpf", entry.tarball, "-C", dest], quiet=True)
    except ProvisionError:
        hasher.join()
        log.warn(f"cached base {entry.tarball.name} does not unpack; rebuilding it")
        return None
    finally:
        hasher.join()
    if result.get("sha256") != meta.get("sha256"):
        log.warn(f"cached base {entry.tarball.name} fails its checksum; rebuilding it")
        return None
    return meta


def _empty(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            run(["rm", "-rf", "--one-file-system", child], quiet=True)
        else:
            child.unlink()


def check_can_bootstrap(spec: BaseSpec, offline: bool) -> None:
    """Refuse a miss where bootstrapping is not allowed (``offline``) or would make a base
    other than the one asked for (a seeded spec made with another backend version)."""
    entry = entry_for(spec, create=False)
    made_here = backend_version(spec.backend)
    if not offline and spec.made_with in (None, made_here):
        return
    why = ("this run may not bootstrap (offline)" if offline else
           f"it was made with {spec.made_with}, and this machine has {made_here}")
    raise ProvisionError(
        f"the {spec.suite}/{spec.arch}/{spec.variant} base is not in the cache ({entry.tarball}) and {why}",
        hint="run once without --offline where the mirror is reachable, or seed the cache from a "
             "machine that has the base (basecache.export_entry, import_entry)")


def start(spec: BaseSpec, dest: str | os.PathLike, *, refresh: bool = False, quiet: bool = False,
          check_mirror: bool = True, offline: bool = False,
          seconds: dict[str, float] | None = None) -> tuple[str, dict, Storing | None]:
    """Fill the empty directory ``dest`` with the base for ``spec``: from the cache when
    an intact entry exists (``"hit"``), else by bootstrapping it (``"miss"``), in which
    case the returned :class:`Storing` is caching it in the background. ``offline``: a
    miss is an error, never a bootstrap."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    entry = entry_for(spec)
    lock = entry.locked()  # one bootstrap per key; a second run waits, then finds it cached
    lock.acquire()
    try:
        if not refresh and entry.record() is not None:
            meta = unpack(entry, dest)
            if meta is not None:
                log.info(f"base {spec.suite}/{spec.arch}/{spec.variant} from the cache ({entry.key[:12]})")
                lock.release()
                return "hit", meta, None
            entry.remove()
            _empty(dest)
        elif not refresh:
            entry.remove()  # a tarball without its JSON was never finished
        check_can_bootstrap(spec, offline)
        if check_mirror:
            with steps.part(seconds, "base: mirror check"):
                probe(spec.mirror, spec.suite, spec.proxy)
        with steps.part(seconds, "base: bootstrap"):
            bootstrap(spec, dest, quiet=quiet)
        storing = Storing(entry, spec, dest, lock, seconds)
    except BaseException:
        lock.release()
        raise
    return "miss", storing.meta, storing


def obtain(spec: BaseSpec, dest: str | os.PathLike, **kw) -> tuple[str, dict]:
    """:func:`start`, waiting for the base to be cached: ``("hit"|"miss", metadata)``."""
    status, meta, storing = start(spec, dest, **kw)
    if storing is not None:
        storing.wait()
    return status, meta


# -- moving a base to a machine without the network (the boot test's dom0) ---------------

def export_entry(spec: BaseSpec, dest: str | os.PathLike) -> list[Path] | None:
    """Copy the cached base of ``spec`` (``<key>.tar`` and ``<key>.json``) into the
    directory ``dest``, checking its checksum on the way. None when it is not cached or
    broken (a broken entry is removed, as :func:`start` would)."""
    entry = entry_for(spec)
    try:
        meta = entry.info()
    except (OSError, ValueError):
        return None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tar, js = dest / entry.tarball.name, dest / entry.meta.name
    try:
        with atomic_path(tar) as tmp:
            h = hashlib.sha256()
            with open(entry.tarball, "rb") as src, open(tmp, "wb") as out:
                while block := src.read(4 << 20):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != meta.get("sha256"):
                raise _Broken
    except FileNotFoundError:
        return None
    except _Broken:
        log.warn(f"cached base {entry.tarball.name} fails its checksum; removing it")
        entry.remove()
        return None
    atomic_write(js, entry.meta.read_bytes())
    return [tar, js]


class _Broken(Exception):
    """Raised inside atomic_path so that a bad copy is removed, never renamed into place."""


def import_entry(seed: str | os.PathLike) -> BaseSpec:
    """Use the base that :func:`export_entry` put in the directory ``seed`` (which may be
    read-only) as this machine's cached base; returns its spec. The tarball is linked,
    not copied; :func:`unpack` checks it as usual."""
    seed = Path(seed)
    found = sorted(seed.glob("*.json"))
    if len(found) != 1:
        raise ProvisionError(f"{seed} holds {len(found)} base manifests, not one",
                             hint="fill it with basecache.export_entry (one base)")
    try:
        meta = json.loads(found[0].read_text())
    except (OSError, ValueError) as e:
        raise ProvisionError(f"cannot read the base manifest {found[0]}: {e}") from None
    spec = BaseSpec.from_manifest(meta.get("manifest") or {})
    entry = entry_for(spec)
    if entry.key != found[0].stem:
        raise ProvisionError(f"base manifest {found[0].name} is keyed {entry.key} here",
                             hint="seed the cache again with this checkout")
    tarball = found[0].with_suffix(".tar")
    if not tarball.is_file():
        raise ProvisionError(f"the base tarball {tarball} is missing")
    entry.remove()
    entry.tarball.symlink_to(tarball.resolve())
    atomic_write(entry.meta, found[0].read_bytes())  # the stamp last, as the seed has it
    return spec
