"""Mounts that are always undone: images are mounted through a loop device we own, the
mountpoint is a temporary directory unless given, and both go away at exit."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from provision import inuse, log
from provision.errors import ProvisionError
from provision.run import CommandError, run
from provision.storage.loop import attach_loop
from provision.undo import UndoStack, critical, pause_point


def _is_mountpoint(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == real for line in f if line.strip())


def umount(mountpoint: str | os.PathLike) -> None:
    """Unmount, retrying while busy; a lazy unmount is the last resort (and says so)."""
    mountpoint = os.fspath(mountpoint)
    for attempt in range(10):
        if not _is_mountpoint(mountpoint):
            return
        try:
            run(["umount", mountpoint], quiet=True, group=True)  # a terminal Ctrl-C must not stop it
            return
        except CommandError:
            time.sleep(0.1 * (attempt + 1))
    log.warn(f"{mountpoint} stayed busy; detaching it lazily")
    run(["umount", "--lazy", mountpoint], quiet=True, group=True)


def mount(device: str | os.PathLike, mountpoint: str | os.PathLike, *, options: Sequence[str] = (),
          fstype: str | None = None, undo: UndoStack | None = None, configs: list | None = None) -> None:
    """Mount ``device`` (a block device) on ``mountpoint``; with ``undo`` it is unmounted at exit.

    Refuses a device dom0 already has mounted read-write: mounting one filesystem twice
    read-write destroys it. ``configs``: the domain configs to check it against (default:
    all; ``[]`` when the caller has judged the domains itself, e.g. only running ones).
    """
    device, mountpoint = os.fspath(device), os.fspath(mountpoint)
    inuse.refuse(device, writing="ro" not in options, configs=configs)
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    with critical():
        try:
            run([*argv, device, mountpoint], quiet=True, group=True)
        except CommandError as e:
            first = next((ln.strip() for ln in e.output.splitlines() if ln.strip()), "")
            raise ProvisionError(f"could not mount {device} on {mountpoint}: {first.split(': ', 1)[-1]}") from None
        if undo is not None:
            undo.cleanup(f"unmount {mountpoint}", umount, mountpoint)
    log.debug(f"mounted {device} on {mountpoint}")


@contextlib.contextmanager
def mounted(device_or_image: str | os.PathLike, mountpoint: str | os.PathLike | None = None, *,
            options: Sequence[str] = (), fstype: str | None = None) -> Iterator[Path]:
    """``with mounted(img_or_dev) as root:`` -> the mountpoint; unmounted (and a loop
    device or temporary mountpoint we made removed) whatever happens."""
    source = os.fspath(device_or_image)
    if not os.path.exists(source):
        raise ProvisionError(f"{source} does not exist")
    with UndoStack() as undo:
        if mountpoint is None:
            mountpoint = tempfile.mkdtemp(prefix="xen-provision-mnt.")
            undo.cleanup(f"remove {mountpoint}", os.rmdir, mountpoint)
        elif not os.path.isdir(mountpoint):
            raise ProvisionError(f"mountpoint {mountpoint} is not a directory")
        device = source
        if stat.S_ISREG(os.stat(source).st_mode):
            inuse.refuse(source, writing="ro" not in options)  # an image already on a loop device may be mounted there
            device = attach_loop(source, read_only="ro" in options, undo=undo)
        mount(device, mountpoint, options=options, fstype=fstype, undo=undo)
        pause_point("mounted")
        yield Path(mountpoint)
