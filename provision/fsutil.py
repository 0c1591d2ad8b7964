"""Files written atomically and deterministically."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible output), else now."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value and value.isdigit() else int(time.time())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    The temporary file is removed on any failure, so nothing half-written is ever
    visible at the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` via a temporary file and rename; fsync'd; ``mode`` applied."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    return path


def write_if_changed(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> bool:
    """Atomically write only when the content differs (keeps mtimes stable for make/doit)."""
    path = Path(path)
    new = data.encode() if isinstance(data, str) else data
    try:
        if path.read_bytes() == new and (path.stat().st_mode & 0o7777) == mode:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, new, mode)
    return True


MAX_SYMLINKS = 40   # as the kernel's path walk


def within(root: str | os.PathLike, path: str | os.PathLike, *, follow: bool = False) -> Path:
    """``path`` (absolute, as seen inside an image) re-rooted under ``root``.

    Symlinks on the way are followed as a chroot would see them: an absolute target starts
    again at ``root`` and ``..`` stops there, so a link in an offline image (``/lib ->
    /usr/lib``, ``/boot/vmlinuz -> /boot/vmlinuz-6.1``) never leads to the host's files.
    The last component is followed only with ``follow`` (to read what it names); without
    it a write replaces the link itself, as rename does.
    """
    root = Path(root)
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if root.resolve() == Path("/"):
        return Path("/", *parts)
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if (parts or follow) and here.is_symlink():
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(f"too many levels of symbolic links under {root}: {path}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


class Lock:
    """An exclusive flock on a file that exists only while the lock is held or waited for:
    the holder removes it on release, so no lock file outlives the runs that used it.

    A run that opened the file before it was removed finds, once it has the lock, that
    the path now names another file (or none), and starts again on the new one: only
    the holder of the file the path names is ever inside."""

    def __init__(self, path: str | os.PathLike, mode: int = 0o600):
        self.path = Path(path)
        self.mode = mode
        self._fd: int | None = None

    def acquire(self) -> None:
        from provision.undo import critical

        while True:
            with critical():  # made and locked as one step, when no one else has it
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                except BlockingIOError:
                    held = False
            try:
                if not held:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # its holder removes the file when done
                st = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                    same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
