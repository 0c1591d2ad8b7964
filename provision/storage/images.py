"""File images: sparse (the manual's ``dd ... seek=2048k count=1``) or preallocated.

Images are built under a temporary name beside the target and renamed into place only
when complete, so an interrupted run never leaves a half-made image at its final path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from provision import log
from provision.errors import ProvisionError
from provision.sizes import format_approx, format_size, parse_size
from provision.storage.safety import check_target_free
from provision.undo import UndoStack, critical, pause_point

# Temporary image name -> the final path it is being built for, so log lines name the
# image the user asked for rather than ".vm1.img.x1y2z3.tmp".
_building: dict[str, str] = {}


def shown(target: str | os.PathLike) -> str:
    """How to name ``target`` in messages."""
    target = os.fspath(target)
    return _building.get(target, target)


def allocated_bytes(path: str | os.PathLike) -> int:
    """Bytes of disk really used by ``path`` (st_blocks counts 512-byte units)."""
    return os.stat(path).st_blocks * 512


def _sparse_committed(folder: Path) -> int:
    """Apparent minus allocated size of the images already in ``folder``: what they may still claim."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                total += max(0, st.st_size - st.st_blocks * 512)
    return total


def check_free_space(path: str | os.PathLike, size: int, *, preallocate: bool) -> None:
    """Refuse a preallocated image that does not fit; warn when a sparse one overcommits."""
    folder = Path(path).parent
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if preallocate and size > free:
        raise ProvisionError(
            f"a preallocated image of {format_size(size)} does not fit in {folder}: "
            f"only {format_approx(free)} free",
            hint="choose a smaller size, free some space, or make a sparse image (no --preallocate)",
        )
    if not preallocate:
        claimed = size + _sparse_committed(folder)
        if claimed > free:
            log.warn(
                f"sparse images in {folder} may grow to {format_approx(claimed)} "
                f"but only {format_approx(free)} is free: writes will fail when it runs out"
            )


def _allocate(path: Path, size: int, preallocate: bool) -> None:
    with open(path, "r+b") as f:
        if preallocate:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                raise ProvisionError(f"could not preallocate {format_size(size)} for {path}: {e.strerror}") from None
        else:
            # A hole: no data blocks until something is written.
            try:
                f.truncate(size)
            except OSError as e:
                raise ProvisionError(f"could not make a {format_size(size)} image in {path.parent}: {e.strerror}",
                                     hint="the filesystem does not allow a file that large") from None


def refuse_non_file(path: Path, what: str) -> None:
    """An existing target that is not a regular file (a device node, a fifo) is never
    replaced by an image: renaming over /dev/sdb would lose the node, not write the disk."""
    if os.path.exists(path) and not path.is_file():
        raise ProvisionError(f"{what} {path} exists and is not a regular file",
                             hint="write to a device with 'storage partition' or make_fs; choose another name")


def make_temp(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` (same filesystem, so the final rename is atomic)."""
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ProvisionError(f"cannot create a file in {path.parent}: {e.strerror}",
                             hint="choose a directory you can write to") from None


@contextlib.contextmanager
def building_image(path: str | os.PathLike, size: int | str, *, preallocate: bool = False,
                   force: bool = False, undo: UndoStack | None = None) -> Iterator[Path]:
    """Yield a temporary image of ``size`` beside ``path``; rename it to ``path`` when the
    block succeeds, remove it when the block fails or is interrupted.

    With ``undo``, the finished image is also removed if a later step of that stack fails.
    """
    path = Path(path)
    size = parse_size(size, "image size")
    if path.name in ("", ".", ".."):
        raise ProvisionError(f"image path '{path}' names no file")
    if not path.parent.is_dir():
        raise ProvisionError(f"directory {path.parent} does not exist", hint="create it first")
    check_target_free(path, force=force, what="image")
    refuse_non_file(path, "image")
    check_free_space(path, size, preallocate=preallocate)
    with UndoStack() as local:
        with critical():  # made and registered as one step
            fd, tmpname = make_temp(path)
            os.close(fd)
            tmp = Path(tmpname)
            _building[tmpname] = os.fspath(path)
            local.rollback(f"forget {tmp}", _building.pop, tmpname, None)
            local.rollback(f"remove {tmp}", tmp.unlink, True)
        _allocate(tmp, size, preallocate)
        os.chmod(tmp, 0o600)  # guest disks hold secrets (keys, shadow)
        pause_point("image-created")
        yield tmp
        with critical():  # renamed and registered as one step
            os.replace(tmp, path)
            _building.pop(tmpname, None)
            if undo is not None:
                undo.rollback(f"remove {path}", path.unlink, True, made=str(path))
    log.info(f"created {'preallocated' if preallocate else 'sparse'} image {path} ({format_size(size)})")


def create_image(path: str | os.PathLike, size: int | str, *, preallocate: bool = False,
                 force: bool = False, undo: UndoStack | None = None) -> Path:
    """Create an empty image of ``size`` (bytes, or a size string such as ``2G``).

    Sparse by default (no data blocks allocated); ``preallocate`` reserves every block
    with fallocate. Refuses an existing ``path`` unless ``force`` (and then only when it is
    not in use). Built under a temporary name and renamed at the end.
    """
    with building_image(path, size, preallocate=preallocate, force=force, undo=undo):
        pass
    return Path(path)


