"""The download and build cache, outside any checkout, and the one way to fill it.

``$XEN_PROVISION_CACHE`` or ``~/.cache/xen-provision``. Entries are keyed by a
manifest of their inputs: the same inputs give the same key, a changed input a new one.

Every cache (build trees, sources, bootstrapped bases and their filesystems, the boot
test's host images, initramfs archives) is an :class:`Entry`: its data at ``path`` (a
file or a directory) and its record, a JSON stamp written last. An entry without its
stamp is unfinished and is never used. :func:`obtain` is the whole protocol:

    entry = Entry(cache_dir("sources") / identity, stamp="source.json")
    record, hit = obtain(entry, unpack)      # unpack(path) -> record

look up (a finished entry is used, and marked as used so pruning keeps it); else take
the entry's lock (one builder at a time, across processes; the lock file goes away with
its last holder), look again, build into a temporary path beside the entry
(:func:`staging`) that is renamed into place, write the stamp last. A failed or
interrupted build leaves no temporary path, no lock file and no entry. :func:`prune`
keeps the most recently used entries of a kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from provision import log
from provision.fsutil import Lock, atomic_write
from provision.undo import UndoStack, critical


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The cache path for ``parts``, created unless ``create`` is false (dry runs)."""
    base = os.environ.get("XEN_PROVISION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xen-provision"
    )
    path = Path(base, *parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def manifest_key(manifest: dict) -> str:
    """A stable hash of a JSON-able manifest (sorted keys)."""
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_path(path: Path) -> None:
    """Remove a file, a link or a whole tree at ``path``, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def staging(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary name beside ``path`` (nothing is there yet) to build a file or a
    tree at; renamed onto ``path`` when the block succeeds (an unfinished leftover at
    ``path`` is replaced), removed when it fails or is interrupted. So ``path`` holds
    either nothing or the whole result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with UndoStack() as undo:
        undo.rollback(f"remove {tmp}", remove_path, tmp)
        yield tmp
        with critical():
            if path.is_dir() and not path.is_symlink() and tmp.is_dir():
                shutil.rmtree(path)  # os.replace cannot rename a tree onto a full directory
            os.replace(tmp, path)


class Entry:
    """One cache entry: the data at ``path`` and the JSON record at ``stamp``, written
    last. ``stamp`` is a path, or a bare name for a stamp inside the directory ``path``;
    by default ``<path>.json`` beside it. ``lock`` is the entry's lock file (default
    ``.<name>.lock`` beside it); entries that share a work tree share a lock."""

    def __init__(self, path: str | os.PathLike, *, stamp: str | os.PathLike | None = None,
                 lock: str | os.PathLike | None = None):
        self.path = Path(path)
        if stamp is None:
            self.stamp = self.path.with_name(self.path.name + ".json")
        elif os.sep in str(stamp):
            self.stamp = Path(stamp)
        else:
            self.stamp = self.path / stamp
        self.lock = Path(lock) if lock else self.path.with_name(f".{self.path.name}.lock")

    def __repr__(self) -> str:
        return f"Entry({self.path})"

    def record(self) -> dict | None:
        """The finished entry's record; None when it is missing or unfinished."""
        try:
            record = json.loads(self.stamp.read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return record if os.path.lexists(self.path) and isinstance(record, dict) else None

    def use(self) -> dict | None:
        """:meth:`record`, marking the entry as just used (so :func:`prune` keeps it)."""
        record = self.record()
        if record is not None:
            with contextlib.suppress(OSError):
                os.utime(self.stamp)
        return record

    def locked(self) -> Lock:
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        return Lock(self.lock, 0o644)

    def finish(self, record: dict) -> dict:
        """Write the stamp: from now on the entry is used."""
        atomic_write(self.stamp, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return record

    def remove(self) -> None:
        """The stamp first: an entry is never finished without all of its data."""
        with contextlib.suppress(NotADirectoryError):
            self.stamp.unlink(missing_ok=True)
        remove_path(self.path)

    def used_at(self) -> float:
        try:
            return self.stamp.stat().st_mtime
        except OSError:
            return 0.0


def obtain(entry: Entry, build: Callable[[Path], dict], *, refresh: bool = False,
           label: str | None = None) -> tuple[dict, bool]:
    """``(record, hit)`` of ``entry``, built by ``build(path)`` when it is not finished
    (or with ``refresh``). ``build`` makes the data at ``path`` through :func:`staging`
    and returns the record; the stamp is written after it. The entry's lock is held
    while it is looked up again and built, so a second process waits and then finds it."""
    if not refresh and (record := entry.use()) is not None:
        return record, True
    with entry.locked():
        if not refresh and (record := entry.use()) is not None:
            return record, True  # another process finished it while we waited
        if label:
            log.debug(f"{label}: building cache entry {entry.path}")
        entry.remove()  # an unfinished leftover, or the entry being refreshed
        with UndoStack() as undo:
            undo.rollback(f"remove the unfinished {entry.path}", entry.remove)
            record = entry.finish(build(entry.path))
        return record, False


def prune(entries: Iterable[Entry], keep: int, *, unfinished: bool = False) -> None:
    """Keep the ``keep`` most recently finished or used of ``entries``; with
    ``unfinished`` also drop those without a stamp (only where no one can be building
    one: with the lock of their builder held)."""
    entries = list(entries)
    finished = sorted((e for e in entries if e.record() is not None), key=Entry.used_at, reverse=True)
    drop = finished[keep:]
    if unfinished:
        drop += [e for e in entries if e.record() is None]
    for old in drop:
        log.debug(f"pruning cache entry {old.path}")
        old.remove()
