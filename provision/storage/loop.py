"""Loop devices, with partition scanning.

udev may not run (containers, build chroots), so after ``losetup --partscan`` we wait
for the partition nodes and create any that /sys knows about but /dev lacks; those we
made are removed again when the device is detached.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from provision import log
from provision.errors import ProvisionError
from provision.run import CommandError, output, run
from provision.undo import UndoStack, critical, pause_point

_made_nodes: dict[str, list[str]] = {}
_attached_to: dict[str, str] = {}  # loop device -> the image it was attached to


def partition_device(disk: str, number: int) -> str:
    """``/dev/loop0`` + 1 -> ``/dev/loop0p1``; ``/dev/sda`` + 1 -> ``/dev/sda1``."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def _sys_partitions(loop: str) -> list[tuple[int, str]]:
    """(partition number, major:minor) of each partition the kernel knows on ``loop``."""
    name = os.path.basename(loop)
    parts = []
    for entry in Path("/sys/block", name).glob(f"{name}p*"):
        try:
            parts.append((int((entry / "partition").read_text()), (entry / "dev").read_text().strip()))
        except (OSError, ValueError):
            continue
    return sorted(parts)


def _ensure_partition_nodes(loop: str, expected: int | None, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    rescanned = False
    while True:
        parts = _sys_partitions(loop)
        if expected is None or len(parts) >= expected:
            break
        if time.monotonic() > deadline:
            raise ProvisionError(
                f"the partitions of {loop} did not appear (found {len(parts)}, expected {expected})",
                hint="the kernel may lack loop partition support (loop.max_part)",
            )
        if not rescanned and time.monotonic() > deadline - timeout / 2:
            # losetup -P asks the kernel to scan; partx adds them when that did not happen.
            with contextlib.suppress(CommandError):
                run(["partx", "-a", loop], quiet=True)
            rescanned = True
        time.sleep(0.05)
    nodes = []
    for number, majmin in parts:
        node = f"{loop}p{number}"
        major, minor = (int(x) for x in majmin.split(":"))
        for _ in range(20):  # give udev a moment before doing its job ourselves
            if os.path.exists(node):
                break
            time.sleep(0.05)
        if not os.path.exists(node):
            os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(major, minor))
            _made_nodes.setdefault(loop, []).append(node)
        nodes.append(node)
    return nodes


def _count_partitions(image: str) -> int | None:
    """Partitions in the image's table, read with sfdisk (None if it cannot tell)."""
    try:
        text = output(["sfdisk", "-d", image], quiet=True)
    except (CommandError, ProvisionError):
        return None
    # "IMAGE1 : start=..." lines; IMAGE is named as given, relative or not.
    return sum(1 for line in text.splitlines() if ": start=" in line)


def _backing(loop: str) -> str | None:
    try:
        return Path("/sys/block", os.path.basename(loop), "loop", "backing_file").read_text().strip()
    except OSError:
        return None


def detach_loop(loop: str, image: str | None = None) -> None:
    """Detach ``loop`` (retrying while a just-unmounted partition is still busy), and wait
    until the kernel has let go of ``image``: losetup -d on a device that udev is still
    probing only marks it to be cleared when closed, and the run must not end (nor its
    temporary image be removed) with the device still attached."""
    for node in _made_nodes.pop(loop, []):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(node)
    image = image or _attached_to.get(loop)
    for attempt in range(20):
        try:
            # In a session of its own: a Ctrl-C on the terminal must not kill it half-way.
            run(["losetup", "-d", loop], quiet=True, group=True)
            break
        except CommandError as e:
            if "No such device" in e.output or not os.path.exists(loop):
                break
            if attempt == 19:
                raise
            time.sleep(0.1 * (attempt + 1))
    deadline = time.monotonic() + 10
    while image and (_backing(loop) or "").removesuffix(" (deleted)") == image:
        if time.monotonic() > deadline:
            raise ProvisionError(f"{loop} is still attached to {image} after losetup -d",
                                 hint=f"something holds it open: see fuser -v {loop}")
        time.sleep(0.05)
    _attached_to.pop(loop, None)


def attach_loop(image: str | os.PathLike, *, partscan: bool = False, read_only: bool = False,
                undo: UndoStack | None = None) -> str:
    """Attach ``image`` to a free loop device and return it (``/dev/loopN``).

    With ``partscan`` its partitions appear as ``/dev/loopNpM`` before this returns.
    With ``undo`` the device is detached when that stack unwinds.
    """
    image = os.fspath(image)
    if not os.path.isfile(image):
        raise ProvisionError(f"image {image} does not exist or is not a file")
    argv = ["losetup", "--find", "--show"]
    if partscan:
        argv.append("--partscan")
    if read_only:
        argv.append("--read-only")
    with critical():
        # In a session of its own: a Ctrl-C on the terminal must not kill losetup after it
        # attached the image but before it said which device it took.
        loop = output([*argv, image], quiet=True, group=True)
        _attached_to[loop] = os.path.realpath(image)
        if undo is not None:
            undo.cleanup(f"detach {loop}", detach_loop, loop)
    log.debug(f"attached {image} to {loop}")
    if partscan:
        try:
            _ensure_partition_nodes(loop, _count_partitions(image))
        except BaseException:
            if undo is None:
                detach_loop(loop)
            raise
    pause_point("loop-attached")
    return loop


@contextlib.contextmanager
def loop_device(image: str | os.PathLike, *, partscan: bool = False,
                read_only: bool = False) -> Iterator[str]:
    """``with loop_device(img, partscan=True) as loop:`` -> ``/dev/loopN``, always detached."""
    with UndoStack() as undo:
        yield attach_loop(image, partscan=partscan, read_only=read_only, undo=undo)
