"""Clones of file images: a reflink where the filesystem shares extents (btrfs, xfs),
else a sparse-aware copy that copies only the data extents and keeps the holes."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from provision import inuse, log
from provision.errors import ProvisionError
from provision.storage.images import make_temp, refuse_non_file
from provision.storage.safety import check_target_free
from provision.undo import UndoStack, critical, pause_point

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
_CHUNK = 16 << 20  # measured: smaller chunks are as fast and keep each syscall short


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as e:
        if e.errno in _NO_REFLINK:
            return False
        raise


def _data_extents(fd: int, size: int):
    """(start, end) of each data region, found with SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _sparse_copy(src_fd: int, dst_fd: int, size: int) -> None:
    os.ftruncate(dst_fd, size)  # full length (all hole) first: the copy never extends the file
    _copy_extents(src_fd, dst_fd, size)


def _copy_extents(src_fd: int, dst_fd: int, size: int, at: int = 0) -> None:
    """Copy the data extents of the first ``size`` bytes of ``src_fd`` to ``dst_fd``,
    each at its own offset plus ``at``; the holes are not written."""
    for start, end in _data_extents(src_fd, size):
        offset = start
        while offset < end:
            n = min(_CHUNK, end - offset)
            try:
                # In-kernel copy: no trip through user space.
                done = os.copy_file_range(src_fd, dst_fd, n, offset, offset + at)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                done = os.pwrite(dst_fd, os.pread(src_fd, n, offset), offset + at)
            if done <= 0:
                raise ProvisionError(f"short copy at offset {offset}: the source changed while copying")
            offset += done


def copy_into(src: str | os.PathLike, dst: str | os.PathLike, at: int) -> None:
    """Write the file ``src`` into the existing image ``dst`` at byte ``at`` (a filesystem
    image into a partition, say), its data extents only: where ``dst`` is sparse, ``src``'s
    holes stay holes."""
    with open(src, "rb") as s, open(dst, "r+b") as d:
        size = os.fstat(s.fileno()).st_size
        if at < 0 or at + size > os.fstat(d.fileno()).st_size:
            raise ProvisionError(f"{src} ({size} bytes) does not fit in {dst} at byte {at}")
        _copy_extents(s.fileno(), d.fileno(), size, at)


def clone_file(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False,
               undo: UndoStack | None = None) -> str:
    """Copy image ``src`` to ``dst``; return ``"reflink"`` or ``"sparse-copy"``.

    The clone is written under a temporary name and renamed into place, so ``dst`` is
    never half-written; an existing ``dst`` is refused unless ``force``. With ``undo``
    the clone is removed again if a later step of that stack fails.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ProvisionError(f"clone source {src} is not an image file")
    if not dst.parent.is_dir():
        raise ProvisionError(f"directory {dst.parent} does not exist", hint="create it first")
    if dst.exists() and os.path.samefile(src, dst):
        raise ProvisionError(f"clone source and target are the same file: {src}")
    check_target_free(dst, force=force, what="clone target")
    refuse_non_file(dst, "clone target")
    # A source dom0 is writing (mounted read-write, swapped on, on a loop device) would be
    # copied torn: the same answer storage check gives.
    inuse.refuse(src, writing=False, what=f"clone source {src}")
    fd, tmp = -1, None
    try:
        with critical():  # a signal lands only once the temporary file is ours to remove
            fd, tmpname = make_temp(dst)
            tmp = Path(tmpname)
        with open(src, "rb") as s:
            size = os.fstat(s.fileno()).st_size
            os.fchmod(fd, os.fstat(s.fileno()).st_mode & 0o7777)
            if _reflink(s.fileno(), fd):
                method = "reflink"
            else:
                _sparse_copy(s.fileno(), fd, size)
                method = "sparse-copy"
        # No fsync, like cp: rename-over is flushed by ext4 (auto_da_alloc), and syncing
        # 250 MB would make every clone pay for a crash it very rarely meets.
        os.close(fd)
        fd = -1
        pause_point("cloned")
        with critical():  # renamed and registered as one step
            os.replace(tmp, dst)
            if undo is not None:
                undo.rollback(f"remove {dst}", dst.unlink, True, made=str(dst))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    log.info(f"cloned {src} to {dst} ({method})")
    return method
