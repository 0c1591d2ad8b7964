"""The check made before a target is written: it must not exist unless ``force``, and when
it does (block devices always do) no one may be using it (:mod:`provision.inuse`: dom0's
mounts, swap and loop devices, and every domain config under /etc/xen). A filesystem
mounted read-write twice, or a disk written by two kernels, is destroyed."""

from __future__ import annotations

import os
import stat

from provision import inuse
from provision.errors import ProvisionError


def check_target_free(target: str | os.PathLike, *, force: bool = False, what: str = "target",
                      xen_dir: str | os.PathLike | None = None) -> None:
    """Before writing ``target``: it must not exist unless ``force``; when it does exist
    (block devices always do) it must not be in use."""
    target = os.fspath(target)
    if not os.path.lexists(target):
        return
    is_dev = stat.S_ISBLK(os.stat(target).st_mode) if os.path.exists(target) else False
    if not force:
        raise ProvisionError(
            f"{what} {target} already exists" + (" (a block device)" if is_dev else ""),
            hint="choose another name, or pass --force to overwrite it",
        )
    if os.path.isdir(target):
        raise ProvisionError(f"{what} {target} is a directory")
    inuse.refuse(target, writing=True, xen_dir=xen_dir)
