"""Filesystems and swap on images, partitions or LVs, optionally populated.

Populating happens without mounting when the tool can do it (``mkfs.ext4 -d``,
``mkfs.btrfs --rootdir``); otherwise through a loop mount that is always undone.
A tarball is unpacked to a temporary directory beside the target first.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass

from provision import inuse, log
from provision.errors import ProvisionError
from provision.fsutil import source_date_epoch
from provision.run import CommandError, require, run
from provision.storage.images import shown
from provision.storage.mount import mounted
from provision.undo import UndoStack, pause_point


@dataclass(frozen=True)
class FsKind:
    mkfs: str
    force: tuple[str, ...]          # overwrite an existing signature without asking
    label_opt: str
    label_max: int
    uuid_opt: tuple[str, str]       # option, and the prefix of its value
    populate_opt: str | None        # populate from a directory without mounting ("mtools": by mcopy)
    owners: bool = True             # keeps Unix owners and modes
    growable: tuple[str, ...] = ()  # options for a filesystem that will be grown (see make_fs)


# mke2fs gives a filesystem under 512 MiB its "small" profile: 1 KiB blocks and an inode
# per 4 KiB, which it keeps when grown. The default profile (4 KiB blocks, the page size)
# whatever the size: a tool walking the filesystem does a quarter of the block I/O
# (measured in the boot test's dom0: mkfs.ext4 -d of a 226 MiB tree into a 400 MiB LV
# 83-100 s with 1 KiB blocks, 23 s with 4 KiB; e2image -ra of it 65-80 s, 13 s).
_GROWABLE_EXT = ("-T", "default")

FILESYSTEMS: dict[str, FsKind] = {
    "ext2": FsKind("mkfs.ext2", ("-F", "-q"), "-L", 16, ("-U", ""), "-d", growable=_GROWABLE_EXT),
    "ext3": FsKind("mkfs.ext3", ("-F", "-q"), "-L", 16, ("-U", ""), "-d", growable=_GROWABLE_EXT),
    "ext4": FsKind("mkfs.ext4", ("-F", "-q"), "-L", 16, ("-U", ""), "-d", growable=_GROWABLE_EXT),
    "xfs": FsKind("mkfs.xfs", ("-f", "-q"), "-L", 12, ("-m", "uuid="), None),
    "btrfs": FsKind("mkfs.btrfs", ("-f", "-q"), "-L", 255, ("-U", ""), "--rootdir"),
    # mtools writes into a FAT image without mounting it (and without the kernel's vfat).
    "vfat": FsKind("mkfs.vfat", (), "-n", 11, ("-i", ""), "mtools", owners=False),
}
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_VOLID_RE = re.compile(r"^[0-9a-fA-F]{8}$")
_BANNER_RE = re.compile(r"^\S+ \d+(\.\d+)+ \(\d{4}-\d\d-\d\d\)$")  # "mkfs.fat 4.2 (2021-01-31)"
_PREFIX_RE = re.compile(r"^((mkfs\.\w+|mke2fs|mkswap)(: error)?: |ERROR: )+", re.I)
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def check_label(label: str | None, limit: int, fstype: str) -> None:
    if label is None:
        return
    if not _LABEL_RE.match(label) or len(label) > limit:
        raise ProvisionError(
            f"label '{label}' is not valid for {fstype}",
            hint=f"use at most {limit} letters, digits, '.', '_', '+' or '-'",
        )


def _check_target(target: str) -> None:
    if not os.path.exists(target):
        raise ProvisionError(f"{target} does not exist")
    mode = os.stat(target).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ProvisionError(f"{target} is neither an image file nor a block device")
    inuse.refuse(target, writing=True)


def _reason(e: CommandError, target: str) -> str:
    """A mkfs failure in one line: its messages (often wrapped over several lines) joined,
    without version banners, usage text, the tool's name or our temporary file name."""
    lines = []
    for line in (ln.strip() for ln in e.output.splitlines()):
        if line.startswith("Usage:"):
            break
        if line and not _BANNER_RE.match(line):
            lines.append(_PREFIX_RE.sub("", line).replace(target, shown(target)))
    return " ".join(lines[:3]) or f"exit code {e.returncode}"


def _unpack(tarball: str, near: str, undo: UndoStack) -> str:
    """Extract ``tarball`` to a temporary directory beside ``near`` (same filesystem, room)."""
    parent = os.path.dirname(os.path.abspath(near)) if not near.startswith("/dev/") else None
    tmp = tempfile.mkdtemp(prefix=".xen-provision-populate.", dir=parent)
    undo.cleanup(f"remove {tmp}", shutil.rmtree, tmp, True)
    run(["tar", "-x", "-p", "--numeric-owner", "--xattrs", "-f", tarball, "-C", tmp], quiet=True)
    pause_point("unpacked")
    return tmp


def _copy_into(source: str, is_tar: bool, mountpoint: str, owners: bool) -> None:
    if is_tar:
        argv = ["tar", "-x", "-f", source, "-C", mountpoint]
        argv += ["-p", "--numeric-owner"] if owners else ["--no-same-owner", "--no-same-permissions"]
        run(argv, quiet=True)
    else:
        preserve = ["-a"] if owners else ["-r", "--preserve=timestamps"]
        run(["cp", *preserve, "--", f"{source.rstrip('/')}/.", mountpoint], quiet=True)


def _mcopy(directory: str, target: str) -> None:
    entries = sorted(os.listdir(directory))
    if entries:
        run(["mcopy", "-s", "-p", "-m", "-Q", "-i", target, *(os.path.join(directory, e) for e in entries), "::/"],
            quiet=True, env={"MTOOLS_SKIP_CHECK": "1"})


def make_fs(target: str | os.PathLike, fstype: str = "ext4", *, label: str | None = None,
            populate: str | os.PathLike | None = None, uuid: str | None = None,
            growable: bool = False, undo: UndoStack | None = None) -> None:
    """Make a ``fstype`` filesystem on ``target`` (image file, partition or LV).

    ``populate`` is a directory or a tarball whose contents become the filesystem's.
    ``uuid`` makes the result reproducible (with SOURCE_DATE_EPOCH for ext timestamps).
    ``growable``: made to be grown later (a guest's root, which ``image resize`` grows),
    so laid out as a large one is, however small it starts (ext: 4 KiB blocks).
    Refuses a target that is mounted, swapped on, attached or used by a domain.
    """
    target = os.fspath(target)
    kind = FILESYSTEMS.get(fstype)
    if kind is None:
        raise ProvisionError(
            f"filesystem type '{fstype}' is not supported",
            hint=f"choose one of: {', '.join(FILESYSTEMS)} (or 'swap')",
        )
    check_label(label, kind.label_max, fstype)
    if uuid is not None and not (_VOLID_RE if fstype == "vfat" else _UUID_RE).match(uuid):
        form = "8 hex digits" if fstype == "vfat" else "the 8-4-4-4-12 hex form"
        raise ProvisionError(f"UUID '{uuid}' is not valid for {fstype}", hint=f"use {form}")
    source = os.fspath(populate) if populate is not None else None
    is_tar = False
    if source is not None:
        if os.path.isfile(source):
            is_tar = True
        elif not os.path.isdir(source):
            raise ProvisionError(f"populate source {source} is neither a directory nor a tarball")
    _check_target(target)
    require(kind.mkfs)
    with UndoStack() as local:
        argv = [kind.mkfs, *kind.force, *(kind.growable if growable else ())]
        if label:
            argv += [kind.label_opt, label]
        if uuid:
            argv += [kind.uuid_opt[0], kind.uuid_opt[1] + uuid]
        offline = source is not None and kind.populate_opt is not None
        directory = None
        if offline:
            directory = _unpack(source, target, local) if is_tar else source
            if kind.populate_opt != "mtools":
                argv += [kind.populate_opt, directory]
        env = {"E2FSPROGS_FAKE_TIME": str(source_date_epoch())} if "SOURCE_DATE_EPOCH" in os.environ else None
        try:
            run([*argv, target], quiet=True, env=env)
        except CommandError as e:
            raise ProvisionError(f"could not make {fstype} on {shown(target)}: {_reason(e, target)}") from None
        if directory and kind.populate_opt == "mtools":
            _mcopy(directory, target)
        pause_point("mkfs-done")
        if source is not None and not offline:
            with mounted(target, fstype=fstype) as mnt:
                _copy_into(source, is_tar, os.fspath(mnt), kind.owners)
                pause_point("populated")
    log.info(f"made {fstype} on {shown(target)}" + (f" from {source}" if source else ""))


def make_swap(target: str | os.PathLike, *, label: str | None = None, uuid: str | None = None,
              undo: UndoStack | None = None) -> None:
    """Make swap space on ``target`` (image file, partition or LV)."""
    target = os.fspath(target)
    check_label(label, 15, "swap")
    if uuid is not None and not _UUID_RE.match(uuid):
        raise ProvisionError(f"UUID '{uuid}' is not valid", hint="use the 8-4-4-4-12 hex form")
    _check_target(target)
    argv = ["mkswap"]
    if label:
        argv += ["-L", label]
    if uuid:
        argv += ["-U", uuid]
    try:
        run([*argv, target], quiet=True)
    except CommandError as e:
        raise ProvisionError(f"could not make swap on {shown(target)}: {_reason(e, target)}") from None
    pause_point("mkfs-done")
    log.info(f"made swap on {shown(target)}")


def blkid_tags(target: str | os.PathLike) -> dict[str, str]:
    """What ``blkid -p`` (a low-level probe, no cache) finds on ``target``: TYPE, PTTYPE,
    LABEL, UUID, ... and on a partition its own table entry (PART_ENTRY_*); empty when it
    finds nothing or ``target`` cannot be read."""
    proc = run(["blkid", "-p", "-o", "export", os.fspath(target)], check=False, capture=True)
    if proc.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def signature(target: str | os.PathLike) -> str | None:
    """What blkid finds on ``target`` that writing over it would destroy: a filesystem,
    swap or PV signature ("ext4", "LVM2_member") or a partition table ("dos partition
    table"); None when there is nothing. A partition's own entry in its disk's table
    (the PART_ENTRY_* that ``blkid -p`` prints for every partition, empty or not) is not
    content: an empty partition is free."""
    tags = blkid_tags(target)
    if tags.get("TYPE"):
        return tags["TYPE"]
    if tags.get("PTTYPE"):
        return f"{tags['PTTYPE']} partition table"
    return None


def filesystem_type(target: str | os.PathLike) -> str | None:
    """The filesystem signature on ``target`` as blkid sees it (None when there is none)."""
    return blkid_tags(target).get("TYPE") or None


_DEVID_RE = re.compile(r"^\s*devid\s+(\d+)\s.*\spath\s+(\S+)\s*$")


def grow_btrfs(device: str | os.PathLike) -> None:
    """Grow the btrfs on ``device`` to fill it. btrfs grows only while mounted: online
    where dom0 has it mounted, else through a temporary mount. (lvextend --resizefs
    cannot: fsadm in lvm2 2.03.16, Debian bookworm's, does not know btrfs.)"""
    device = os.fspath(device)
    ident = inuse.identity(device)
    require("btrfs")
    mountpoint = next((mnt for src, mnt, _ in inuse.mounts() if src.startswith("/") and inuse.identity(src) == ident),
                      None)

    def resize(mnt: str) -> None:
        # A multi-device btrfs grows one device at a time: find ours by its device number.
        listing = run(["btrfs", "filesystem", "show", "--raw", mnt], capture=True, quiet=True).stdout
        devid = next((m.group(1) for m in map(_DEVID_RE.match, listing.splitlines())
                      if m and inuse.identity(m.group(2)) == ident), "1")
        run(["btrfs", "filesystem", "resize", f"{devid}:max", mnt], quiet=True)

    if mountpoint:
        resize(mountpoint)
    else:
        with mounted(device, fstype="btrfs") as mnt:
            resize(os.fspath(mnt))
    log.info(f"grew btrfs on {device}" + (f" (mounted at {mountpoint})" if mountpoint else ""))
