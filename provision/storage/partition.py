"""Partitioned whole-disk images (or disks) with pyparted: msdos or gpt, 1 MiB aligned.

pyparted is imported inside the functions that need it, so the rest of
provision.storage runs where it is not installed (a minimal guest running the LVM path).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass

from provision import inuse, log
from provision.errors import ProvisionError
from provision.sizes import MiB, format_size, parse_size, round_up
from provision.storage.fs import signature
from provision.storage.images import shown
from provision.undo import UndoStack, critical, pause_point

TABLES = {"msdos": "msdos", "dos": "msdos", "mbr": "msdos", "gpt": "gpt"}
TYPES = ("linux", "swap", "bios_grub", "esp", "lvm", "raid")
# Filesystem type recorded in the partition entry (what parted prints).
_PARTED_FS = {"ext2": "ext2", "ext3": "ext3", "ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs",
              "vfat": "fat32", "swap": "linux-swap(v1)"}
_ALIGN = MiB
_GPT_BACKUP_SECTORS = 33  # backup header + 32 sectors of entries at the end of the disk


@dataclass(frozen=True)
class PartSpec:
    """One partition to make. ``size`` in bytes or a size string; None takes the rest
    (only the last). ``fs`` is a filesystem (ext4, xfs, btrfs, vfat) or ``swap``; ``type``
    one of linux, swap, bios_grub, esp, lvm, raid; ``label`` names the filesystem (and the
    GPT partition)."""

    size: int | str | None
    fs: str | None = None
    bootable: bool = False
    type: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class PartInfo:
    """A partition as written: number, start and size in bytes, and what it holds."""

    number: int
    start: int
    size: int
    fs: str | None
    type: str
    bootable: bool
    label: str | None

    @property
    def end(self) -> int:
        return self.start + self.size


def _part_type(spec: PartSpec) -> str:
    kind = spec.type or ("swap" if spec.fs == "swap" else "linux")
    if kind not in TYPES:
        raise ProvisionError(f"partition type '{kind}' is not known", hint=f"use one of: {', '.join(TYPES)}")
    return kind


def _check_specs(table: str, parts: list[PartSpec], disk_size: int) -> list[tuple[PartSpec, int | None, str]]:
    if not parts:
        raise ProvisionError("no partitions given", hint="give at least one partition, e.g. --part rest,fs=ext4")
    if table == "msdos" and len(parts) > 4:
        raise ProvisionError(f"an msdos table holds 4 primary partitions, {len(parts)} were given",
                             hint="use --table gpt")
    checked = []
    for i, spec in enumerate(parts, 1):
        size = None if spec.size in (None, "rest", "") else parse_size(spec.size, f"size of partition {i}")
        if size is None and i != len(parts):
            raise ProvisionError(f"partition {i} takes the rest of the disk but is not the last one")
        kind = _part_type(spec)
        if spec.fs is not None and spec.fs not in _PARTED_FS:
            raise ProvisionError(f"partition {i}: filesystem '{spec.fs}' is not supported",
                                 hint=f"use one of: {', '.join(_PARTED_FS)}")
        if kind == "bios_grub" and table != "gpt":
            raise ProvisionError(f"partition {i}: a bios_grub partition needs a gpt table")
        _check_part_label(i, spec, table)
        if spec.bootable and table == "gpt":
            log.debug("gpt: 'bootable' is set as legacy_boot")
        checked.append((spec, size, kind))
    need = _ALIGN + sum(round_up(s, _ALIGN) for _, s, _ in checked if s) + (_ALIGN if table == "gpt" else 0)
    if checked[-1][1] is None:
        need += _ALIGN
    if need > disk_size:
        raise ProvisionError(
            f"the partitions need {format_size(need)} but the disk is {format_size(disk_size)}",
            hint="make the disk larger or the partitions smaller",
        )
    return checked


def _check_part_label(i: int, spec: PartSpec, table: str) -> None:
    """A label is checked before the table is written: as the filesystem's label (its
    length and characters) and, on gpt, as the partition's name (36 characters)."""
    from provision.storage.fs import FILESYSTEMS, check_label

    if spec.label is None:
        return
    if spec.fs is None and table != "gpt":
        raise ProvisionError(f"partition {i}: label '{spec.label}' needs fs= (on an msdos table only a "
                             "filesystem has a label)", hint="add fs=ext4, or use --table gpt to name the partition")
    if spec.fs is not None:
        check_label(spec.label, 15 if spec.fs == "swap" else FILESYSTEMS[spec.fs].label_max, spec.fs)
    else:
        check_label(spec.label, 36, "a gpt partition name")


def _save_ends(path: str, size: int) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        head = f.read(_ALIGN)
        f.seek(max(0, size - _ALIGN))
        tail = f.read(_ALIGN)
    return head, tail


def _restore_ends(path: str, size: int, saved: tuple[bytes, bytes]) -> None:
    """Put back the first and last MiB: the old partition tables (primary and GPT backup)."""
    head, tail = saved
    with open(path, "r+b") as f:
        f.seek(max(0, size - _ALIGN))
        f.write(tail)
        f.seek(0)
        f.write(head)


@contextlib.contextmanager
def _stderr_silenced():
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _disk_size(path: str) -> int:
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def partition_image(path: str | os.PathLike, table: str = "msdos", parts: list[PartSpec] | tuple = (),
                    *, force: bool = False, undo: UndoStack | None = None) -> list[PartInfo]:
    """Write a ``table`` partition table with ``parts`` to the image (or disk) ``path``.

    Partitions start on 1 MiB boundaries and sizes are rounded up to whole MiB. A target
    that already holds a partition table or filesystem is refused unless ``force``; with
    ``undo`` the previous first and last MiB are put back if a later step fails.
    """
    import parted  # lazily: see the module docstring

    path = os.fspath(path)
    label_type = TABLES.get(table)
    if label_type is None:
        raise ProvisionError(f"partition table type '{table}' is not known", hint="use msdos or gpt")
    if not os.path.exists(path):
        raise ProvisionError(f"{path} does not exist", hint="create the image first")
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ProvisionError(f"{path} is neither an image file nor a block device")
    inuse.refuse(path, writing=True)
    size = _disk_size(path)
    checked = _check_specs(label_type, list(parts), size)
    if not force and signature(path):
        raise ProvisionError(f"{path} already holds a partition table or filesystem",
                             hint="pass --force to replace it")

    device = parted.getDevice(path)
    sector = device.sectorSize
    align = _ALIGN // sector
    disk = parted.freshDisk(device, label_type)
    flags = {name: num for num, name in parted.partitionFlag.items()}
    last_usable = device.length - 1 - (_GPT_BACKUP_SECTORS if label_type == "gpt" else 0)
    start = align
    for spec, nbytes, kind in checked:
        if nbytes is None:
            end = ((last_usable + 1) // align) * align - 1
        else:
            end = start + round_up(nbytes, _ALIGN) // sector - 1
        geometry = parted.Geometry(device=device, start=start, end=end)
        fs = parted.FileSystem(type=_PARTED_FS[spec.fs], geometry=geometry) if spec.fs else None
        partition = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL, fs=fs, geometry=geometry)
        disk.addPartition(partition=partition, constraint=parted.Constraint(exactGeom=geometry))
        wanted = {"swap": ["swap"], "bios_grub": ["bios_grub"], "esp": ["esp"], "lvm": ["lvm"],
                  "raid": ["raid"]}.get(kind, [])
        if spec.bootable:
            wanted.append("boot" if label_type == "msdos" else "legacy_boot")
        for flag in wanted:
            if flag in flags and partition.isFlagAvailable(flags[flag]):
                partition.setFlag(flags[flag])
        if spec.label and label_type == "gpt":
            partition.set_name(spec.label)
        start = end + 1

    with critical():
        if undo is not None:
            undo.rollback(f"restore the old partition table of {path}", _restore_ends, path, size,
                          _save_ends(path, size), made=f"the partition table of {path}")
        with _stderr_silenced():  # libparted runs "udevadm settle", absent where udev is
            disk.commit()
    pause_point("partitioned")

    infos = []
    for partition, (spec, _, kind) in zip(disk.partitions, checked, strict=True):
        infos.append(PartInfo(
            number=partition.number,
            start=partition.geometry.start * sector,
            size=partition.geometry.length * sector,
            fs=spec.fs,
            type=kind,
            bootable=spec.bootable,
            label=spec.label,
        ))
    log.info(f"partitioned {shown(path)} ({label_type}): "
             + ", ".join(f"{p.number}:{format_size(p.size)}{'/' + p.fs if p.fs else ''}" for p in infos))
    return infos


def format_partitions(path: str | os.PathLike, infos: list[PartInfo], *,
                      undo: UndoStack | None = None) -> None:
    """Make each partition's filesystem (or swap), through a loop device for an image."""
    from provision.storage.fs import make_fs, make_swap
    from provision.storage.loop import loop_device, partition_device

    path = os.fspath(path)
    todo = [p for p in infos if p.fs]
    if not todo:
        return

    def _format(disk: str) -> None:
        for p in todo:
            node = partition_device(disk, p.number)
            deadline = time.monotonic() + 10
            while not os.path.exists(node):  # the kernel (and udev) add it after the re-read
                if time.monotonic() > deadline:
                    raise ProvisionError(f"partition {node} did not appear after writing the table",
                                         hint=f"re-read it (partx -u {disk}) and try again")
                time.sleep(0.05)
            if p.fs == "swap":
                make_swap(node, label=p.label)
            else:
                make_fs(node, p.fs, label=p.label)

    if stat.S_ISBLK(os.stat(path).st_mode):
        _format(path)
    else:
        with loop_device(path, partscan=True) as loop:
            _format(loop)
