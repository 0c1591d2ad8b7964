"""Storage for guests and hosts: file images, filesystems and swap, partitioned disk
images, loop devices, mounts, LVM volumes and copy-on-write clones.

The manual's three homes for a guest disk (a partition, a file, an LV) as one library.
Everything that creates something takes an optional ``undo: UndoStack`` and registers
how to take it away again; context managers (``loop_device``, ``mounted``) always undo
themselves. Safety checks run before anything is changed: whether a disk is in use is
:mod:`provision.inuse`'s answer, the same for every command.

    from provision.storage import create_image, make_fs, loop_device, mounted

    with UndoStack() as undo:
        with building_image("/srv/xen/vm1.img", "2G", undo=undo) as tmp:   # renamed at the end
            make_fs(tmp, "ext4", label="root", populate="/srv/rootfs")
        clone_file("/srv/xen/vm1.img", "/srv/xen/vm2.img")                  # reflink or sparse copy

    with loop_device(disk_img, partscan=True) as loop:     # /dev/loopN, partitions /dev/loopNp1...
        with mounted(f"{loop}p2") as root:                   # Path of a temporary mountpoint
            ...

Only the standard library and the command-line tools are needed, except for
:func:`partition_image`, which imports pyparted when called (so the LVM path runs in a
minimal guest without pyparted).
"""

from provision.storage.clone import clone_file, copy_into
from provision.storage.fs import FILESYSTEMS, grow_btrfs, make_fs, make_swap
from provision.storage.images import allocated_bytes, building_image, create_image
from provision.storage.loop import attach_loop, detach_loop, loop_device, partition_device
from provision.storage.lvm import (
    create_lv,
    create_thin_pool,
    extend_lv,
    lv_exists,
    lv_path,
    pvcreate,
    remove_lv,
    snapshot_lv,
    snapshot_usage,
    validate_lv_name,
    validate_vg_name,
    vg_free,
    vgcreate,
    watch_snapshot,
)
from provision.storage.mount import mount, mounted, umount
from provision.storage.partition import PartInfo, PartSpec, format_partitions, partition_image
from provision.storage.safety import check_target_free

__all__ = [
    "FILESYSTEMS",
    "PartInfo",
    "PartSpec",
    "allocated_bytes",
    "attach_loop",
    "building_image",
    "check_target_free",
    "clone_file",
    "copy_into",
    "create_image",
    "create_lv",
    "create_thin_pool",
    "detach_loop",
    "extend_lv",
    "format_partitions",
    "grow_btrfs",
    "loop_device",
    "lv_exists",
    "lv_path",
    "make_fs",
    "make_swap",
    "mount",
    "mounted",
    "partition_device",
    "partition_image",
    "pvcreate",
    "remove_lv",
    "snapshot_lv",
    "snapshot_usage",
    "umount",
    "validate_lv_name",
    "validate_vg_name",
    "vg_free",
    "vgcreate",
    "watch_snapshot",
]
