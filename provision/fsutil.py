"""Files written atomically and deterministically."""

from __future__ import annotations

import contextlib
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


def within(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` (absolute, as seen inside an image) re-rooted under ``root``."""
    return Path(root) / str(path).lstrip("/")
