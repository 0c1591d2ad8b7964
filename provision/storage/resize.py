"""Resize a guest disk and its filesystem: a file image holding a filesystem, the last
partition of a partitioned disk image, or an LVM LV; ext2/3/4 (resize2fs, offline) or
xfs (xfs_growfs, through a private mount; xfs cannot shrink).

    facts = inspect("/srv/xen/vm1.img")                  # what is there now (reads only)
    steps = plan(facts, wanted("+2G", facts.size))       # data: what would change, in order
    for step in steps: print(step.command)               # --dry-run
    apply(facts, steps)                                  # each loop device and mount undone

The plan is data computed from the facts, so ``--dry-run`` shows exactly what a real
run does, and a run that was interrupted is finished by running it again: each layer
(container, partition, filesystem) is compared with the size wanted, not with where
the last run started. Growing goes container, partition, filesystem; shrinking the
other way round, and a container is never cut before its filesystem is smaller.

Only the standard library and the tools: pyparted is imported by the partition steps
only, so the LV path runs in the boot test's dom0.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from provision import inuse, log
from provision.errors import ProvisionError
from provision.run import CommandError, output, require, run
from provision.sizes import MAX_BYTES, MiB, format_size, parse_size, round_up, shorten
from provision.storage.fs import blkid_tags
from provision.storage.images import allocated_bytes
from provision.storage.loop import attach_loop, loop_device, partition_device
from provision.storage.mount import umount
from provision.undo import UndoStack, critical, keep, pause_point

EXT = ("ext2", "ext3", "ext4")
FILESYSTEMS = (*EXT, "xfs")
SECTOR = 512
_GPT_TAIL = 33 * SECTOR      # the backup GPT (header + 32 sectors of entries) at the end
_MIN_FS = 4 * 1024**2        # smaller than this nothing boots; a typo, not a wish


# -- what is there ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    """The partition of a disk image that is resized."""

    number: int
    start: int          # bytes from the start of the disk
    size: int           # bytes
    table: str          # "msdos" | "gpt"
    last: bool          # no partition lies after it


@dataclass(frozen=True)
class Facts:
    """A resize target as it is now."""

    kind: str                       # "file" | "disk" | "lv"
    path: str                       # the image file, or /dev/VG/LV
    size: int                       # bytes of the container: the file, the LV
    fstype: str                     # ext2/3/4 or xfs
    fs_size: int                    # bytes the filesystem spans now
    fs_block: int                   # its block size
    fs_min: int | None = None       # ext: the smallest it can shrink to (resize2fs -P), bytes
    part: Partition | None = None   # kind "disk": the partition holding the filesystem
    lv: tuple[str, str] | None = None  # kind "lv": (VG, LV)

    @property
    def name(self) -> str:
        return f"partition {self.part.number} of {self.path}" if self.part else self.path


@dataclass(frozen=True)
class Wanted:
    """The size asked for: ``size`` bytes of container, and how it was said."""

    size: int
    text: str


def size_request(text: str) -> tuple[bool, int]:
    """(growth?, bytes) of SIZE or +SIZE, checked before the target is looked at."""
    text = str(text).strip()
    if text.startswith("-"):
        raise ProvisionError(f"size '{shorten(text)}' is negative",
                             hint="give the new size (e.g. 2G) to shrink, or +SIZE to grow by SIZE")
    if text.startswith("+"):
        return True, parse_size(text[1:], "growth")
    return False, parse_size(text, "size", minimum=_MIN_FS)


def wanted(text: str, current: int) -> Wanted:
    """SIZE (the new size of the target) or +SIZE (grow by that much); a size that
    overflows what a file or device holds is refused."""
    growth, amount = size_request(text)
    text = str(text).strip()
    if not growth:
        return Wanted(amount, text)
    if amount > MAX_BYTES - current:
        raise ProvisionError(f"size '{shorten(text)}' is too large: {format_size(current)} + that "
                             "overflows the largest size a file or device holds (8 EiB)")
    return Wanted(current + amount, text)


def _blkid(path: str, tag: str) -> str:
    return blkid_tags(path).get(tag, "")


def fs_geometry(device: str, fstype: str) -> tuple[int, int, int | None]:
    """(bytes the filesystem spans, its block size, the smallest it can shrink to or None)
    of the filesystem on ``device``, read without mounting or changing it."""
    if fstype in EXT:
        text = output(["dumpe2fs", "-h", device], quiet=True)
        fields = dict(re.findall(r"^(Block count|Block size):\s*(\d+)", text, re.M))
        if len(fields) != 2:
            raise ProvisionError(f"could not read the size of the {fstype} filesystem on {device}")
        block = int(fields["Block size"])
        # resize2fs -P reads only; its estimate is what resize2fs itself refuses below.
        minimum = output(["resize2fs", "-P", device], quiet=True)
        m = re.search(r"minimum size of the filesystem:\s*(\d+)", minimum)
        return int(fields["Block count"]) * block, block, int(m.group(1)) * block if m else None
    if fstype == "xfs":
        text = output(["xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks blocksize", device], quiet=True)
        fields = dict(re.findall(r"^(dblocks|blocksize) = (\d+)", text, re.M))
        if len(fields) != 2:
            raise ProvisionError(f"could not read the size of the xfs filesystem on {device}")
        return int(fields["dblocks"]) * int(fields["blocksize"]), int(fields["blocksize"]), None
    raise ProvisionError(f"{device} holds {fstype or 'no filesystem'}: only ext2, ext3, ext4 and xfs are resized",
                         hint="resize it with its own tools")


def _checked_fstype(device: str, where: str) -> str:
    fstype = _blkid(device, "TYPE")
    if fstype not in FILESYSTEMS:
        what = {"swap": "swap", "": "no filesystem"}.get(fstype, fstype)
        raise ProvisionError(f"{where} holds {what}: only ext2, ext3, ext4 and xfs are resized",
                             hint="resize it with its own tools" if fstype else "give a disk that holds a filesystem")
    return fstype


def lv_of(target: str) -> tuple[str, str] | None:
    """(VG, LV) for ``VG/LV`` or ``/dev/VG/LV``; None for anything else."""
    from provision.storage.lvm import validate_lv_name, validate_vg_name

    parts = target.split("/")
    if target.startswith("/dev/") and len(parts) == 4 and parts[2] != "mapper":
        vg, lv = parts[2], parts[3]
    elif not target.startswith("/") and len(parts) == 2 and not os.path.lexists(target):
        vg, lv = parts
    else:
        return None
    try:
        return validate_vg_name(vg), validate_lv_name(lv)
    except ProvisionError:
        return None


def read_partitions(path: str) -> tuple[str, list[tuple[int, int, int, bool]]]:
    """(table type, [(number, start, size, is_extended_or_logical)]) of a disk image, in
    bytes, read with pyparted."""
    import parted  # lazily: see the module docstring

    with _parted_device(path) as device:
        try:
            disk = parted.newDisk(device)
        except parted.PartedException as e:
            raise ProvisionError(f"could not read the partition table of {path}: {e}") from None
        sector = device.sectorSize
        return disk.type, [(p.number, p.geometry.start * sector, p.geometry.length * sector,
                            p.type != parted.PARTITION_NORMAL) for p in disk.partitions]


@contextlib.contextmanager
def _parted_device(path: str):
    """pyparted's device for ``path``, dropped from libparted's cache afterwards: a cached
    device keeps the length it had, and reading a grown image through it crashes."""
    import parted

    device = parted.getDevice(path)
    try:
        yield device
    finally:
        device.removeFromCache()


def _pick_partition(path: str, table: str, parts: list, number: int | None) -> Partition:
    if table not in ("msdos", "gpt"):
        raise ProvisionError(f"{path} has a {table} partition table: only msdos and gpt are resized")
    if not parts:
        raise ProvisionError(f"{path} has a partition table but no partitions")
    numbers = [p[0] for p in parts]
    if number is None:
        number = max(parts, key=lambda p: p[1])[0]
    elif number not in numbers:
        raise ProvisionError(f"{path} has no partition {number}",
                             hint=f"its partitions: {', '.join(map(str, sorted(numbers)))}")
    num, start, size, odd = next(p for p in parts if p[0] == number)
    if odd:
        raise ProvisionError(f"partition {num} of {path} is an extended or logical partition: not resized")
    after = sorted(p[0] for p in parts if p[1] > start)
    if after:
        raise ProvisionError(
            f"partition {num} of {path} is not the last one: partition {after[0]} lies after it",
            hint="only the last partition can be resized (our disk images keep swap in partition 2, after root)")
    return Partition(num, start, size, table, True)


def inspect(target: str, *, partition: int | None = None) -> Facts:
    """What ``target`` holds, read without changing it: a file image with a filesystem, a
    partitioned disk image (``partition``: which one, default the last) or an LV."""
    target = os.fspath(target)
    lv = lv_of(target) if not os.path.isfile(target) else None
    if lv is not None:
        from provision.storage.lvm import _lv_size, lv_path

        if partition is not None:
            raise ProvisionError("--partition is for a partitioned disk image, not an LV")
        path = lv_path(*lv)
        size = _lv_size(*lv)  # one line when it does not exist
        fstype = _checked_fstype(path, path)
        fs_size, block, minimum = fs_geometry(path, fstype)
        return Facts("lv", path, size, fstype, fs_size, block, minimum, lv=lv)
    if not os.path.exists(target):
        raise ProvisionError(f"{target} does not exist", hint="give an image file, VG/LV or /dev/VG/LV")
    target = os.path.abspath(target)
    mode = os.stat(target).st_mode
    if stat.S_ISBLK(mode):
        raise ProvisionError(f"{target} is a block device but not an LV (VG/LV): its size is not ours to change",
                             hint="resize the partition or volume with its own tools, then grow the filesystem")
    if not stat.S_ISREG(mode):
        raise ProvisionError(f"{target} is neither an image file nor an LV")
    size = os.stat(target).st_size
    if _blkid(target, "PTTYPE"):
        table, parts = read_partitions(target)
        part = _pick_partition(target, table, parts, partition)
        with loop_device(target, partscan=True, read_only=True) as loop:  # a look, read-only
            node = partition_device(loop, part.number)
            fstype = _checked_fstype(node, f"partition {part.number} of {target}")
            fs_size, block, minimum = fs_geometry(node, fstype)
        return Facts("disk", target, size, fstype, fs_size, block, minimum, part=part)
    if partition is not None:
        raise ProvisionError(f"{target} has no partition table", hint="leave out --partition")
    fstype = _checked_fstype(target, target)
    fs_size, block, minimum = fs_geometry(target, fstype)
    return Facts("file", target, size, fstype, fs_size, block, minimum)


# -- what to do ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One change: the command it amounts to (what --dry-run prints), and how to do it."""

    command: str
    fn: Callable = field(compare=False, repr=False)
    args: tuple = field(default=(), compare=False, repr=False)


def room(facts: Facts, size: int) -> int:
    """The bytes the filesystem may span in a container of ``size``: all of a file or LV,
    or the partition reaching to the end of the disk (before the backup GPT)."""
    if facts.part is None:
        return size
    tail = _GPT_TAIL if facts.part.table == "gpt" else 0
    return (size - tail - facts.part.start) // SECTOR * SECTOR


def plan(facts: Facts, want: Wanted, *, online: bool = False) -> list[Step]:
    """The steps that take ``facts`` to ``want``, in a safe order; [] when it is there.
    ``online``: a running guest's LV, whose filesystem is the guest's to grow."""
    size = want.size
    name = facts.name
    if facts.kind == "disk" and size % SECTOR:
        raise ProvisionError(f"size {want.text} is not a whole number of {SECTOR}-byte sectors",
                             hint="give a size in K, M or G")
    new_room = room(facts, size)
    if facts.kind == "disk" and new_room < _MIN_FS:
        raise ProvisionError(f"size {want.text} leaves partition {facts.part.number} of {facts.path} "
                             f"{format_size(max(new_room, 0))}: too small")
    fs_new = new_room // facts.fs_block * facts.fs_block
    shrink_fs = facts.fs_size > fs_new
    if shrink_fs:
        if online:
            raise ProvisionError(f"{name} belongs to a running guest: a disk in use is only grown, never shrunk",
                                 hint="shut the guest down first, then shrink it offline")
        if facts.fstype == "xfs":
            raise ProvisionError(f"{name} holds xfs, which cannot shrink "
                                 f"({format_size(facts.fs_size)} -> {format_size(fs_new)} asked)",
                                 hint="give a size of at least the filesystem's, or copy the files to a smaller one")
        if facts.fs_min is not None and fs_new < facts.fs_min:
            raise ProvisionError(
                f"{name} cannot shrink to {format_size(fs_new)}: its {facts.fstype} holds data needing at least "
                f"{format_size(round_up(facts.fs_min, MiB))}",
                hint="give a larger size (resize2fs -P says the smallest), or remove files first")
    if size < facts.size and facts.part and facts.part.table == "gpt":
        # Its backup table lies in the last sectors: cutting them off breaks the table.
        raise ProvisionError(f"shrinking a GPT disk image is not supported ({facts.path})",
                             hint="grow it, or make a new disk image of the size wanted and copy the files")
    steps: list[Step] = []
    fs_dev = _fs_device(facts)
    if shrink_fs:
        steps += [_loop_note(facts)] if facts.part else []
        steps.append(_fsck_step(facts, fs_dev))
        steps.append(Step(f"resize2fs {fs_dev} {fs_new // 1024}K", _resize_ext, (facts, fs_new)))
    part_size = facts.part.size if facts.part else None
    if size < facts.size:
        if facts.part and part_size != new_room:
            steps.append(_partition_step(facts, new_room))
        steps.append(_container_step(facts, size))
    elif size > facts.size:
        steps.append(_container_step(facts, size))
        if facts.part and part_size != new_room:
            steps.append(_partition_step(facts, new_room))
    elif facts.part and part_size < new_room:  # a run stopped after the disk grew
        steps.append(_partition_step(facts, new_room))
    if not shrink_fs and facts.fs_size < fs_new and not online:
        steps += [_loop_note(facts)] if facts.part else []
        if facts.fstype in EXT:
            steps.append(_fsck_step(facts, fs_dev))
            steps.append(Step(f"resize2fs {fs_dev}", _resize_ext, (facts, None)))
        else:
            steps.append(Step(f"mount {fs_dev} on a private temporary directory; xfs_growfs -d it; umount",
                              _grow_xfs, (facts,)))
    return steps


def _fs_device(facts: Facts) -> str:
    """How the plan names the filesystem's device."""
    return f"/dev/loopNp{facts.part.number}" if facts.part else facts.path


def _loop_note(facts: Facts) -> Step:
    """A line of the plan saying where /dev/loopNpM comes from; it does nothing itself."""
    return Step(f"# /dev/loopNp{facts.part.number}: partition {facts.part.number} of {facts.path}, through "
                "losetup --find --partscan for each step, detached after it", lambda: None)


def _fsck_step(facts: Facts, dev: str) -> Step:
    return Step(f"e2fsck -f -p {dev}", _fsck, (facts,))


def _container_step(facts: Facts, size: int) -> Step:
    if facts.kind == "lv":
        vg, lv = facts.lv
        verb = "lvextend" if size > facts.size else "lvreduce -y"
        return Step(f"{verb} -L {size}b {vg}/{lv}", _resize_lv, (facts, size))
    extra = f"; sfdisk --relocate gpt-bak-std {facts.path}" if facts.part and facts.part.table == "gpt" else ""
    return Step(f"truncate -s {size} {facts.path}{extra}", _resize_file, (facts, size))


def _partition_step(facts: Facts, new_size: int) -> Step:
    p = facts.part
    end = (p.start + new_size) // SECTOR - 1
    return Step(f"set partition {p.number} of {facts.path} to sectors {p.start // SECTOR}-{end} "
                f"({format_size(new_size) if new_size % 1024 == 0 else f'{new_size} bytes'}, pyparted)",
                _resize_partition, (facts, new_size))


# -- doing it -----------------------------------------------------------------------------------

def _careful(argv: list[str]) -> None:
    """Run a tool that must not be stopped half-way (resize2fs moving blocks): in a session
    of its own, so a Ctrl-C on the terminal does not reach it, with our signals held until
    it is done; an interrupt then unwinds as usual, the target consistent."""
    with critical():
        run(argv, quiet=True, group=True)


@contextlib.contextmanager
def _device(facts: Facts) -> Iterator[str]:
    """The block device (or image file) of the filesystem: the file or LV itself, or
    partition N of a disk image through a loop device, detached again at the end."""
    if facts.part is None:
        yield facts.path
        return
    with loop_device(facts.path, partscan=True) as loop:
        yield partition_device(loop, facts.part.number)


def _fsck(facts: Facts) -> None:
    log.info(f"checking {facts.name} (e2fsck -f)")
    with _device(facts) as dev, critical():
        proc = run(["e2fsck", "-f", "-p", dev], check=False, quiet=True, group=True)
    if proc.returncode >= 4:
        lines = [ln.strip() for ln in (proc.stdout or "").splitlines() + (proc.stderr or "").splitlines() if ln.strip()]
        raise ProvisionError(f"{facts.name}: the {facts.fstype} filesystem has errors e2fsck -p does not fix"
                             + (f": {lines[-1]}" if lines else ""),
                             hint=f"repair it by hand (e2fsck -f {dev}), then resize again")


def _resize_ext(facts: Facts, size: int | None) -> None:
    log.info(f"{'shrinking' if size else 'growing'} {facts.fstype} on {facts.name}"
             + (f" to {format_size(size)}" if size else " to fill it"))
    with _device(facts) as dev:
        try:
            _careful(["resize2fs", dev, *([f"{size // 1024}K"] if size else [])])
        except CommandError as e:
            raise ProvisionError(f"resize2fs could not resize {facts.name}: "
                                 f"{e.message.split(': ', 1)[-1]}") from None
    keep(f"the {facts.fstype} on {facts.name} {'shrunk' if size else 'grown'}")
    pause_point("fs-resized")


def _grow_xfs(facts: Facts) -> None:
    """xfs grows only while mounted: in a private temporary directory, always unmounted."""
    require("xfs_growfs")
    with _device(facts) as dev, UndoStack() as local:  # unmounted before the loop device goes
        if facts.kind == "file":
            dev = attach_loop(facts.path, undo=local)
        mnt = tempfile.mkdtemp(prefix="xen-provision-resize.")
        local.cleanup(f"remove {mnt}", os.rmdir, mnt)
        with critical():
            run(["mount", "-t", "xfs", dev, mnt], quiet=True, group=True)
            local.cleanup(f"unmount {mnt}", umount, mnt)
        pause_point("mounted")
        log.info(f"growing xfs on {facts.name} to fill it")
        _careful(["xfs_growfs", "-d", mnt])
        keep(f"the xfs on {facts.name} grown")
    pause_point("fs-resized")


def _resize_file(facts: Facts, size: int) -> None:
    log.info(f"{'growing' if size > facts.size else 'shrinking'} {facts.path} to {format_size(size)}"
             if size % 1024 == 0 else f"resizing {facts.path} to {size} bytes")
    with critical():
        os.truncate(facts.path, size)
    if facts.part and facts.part.table == "gpt" and size > facts.size:
        # The backup GPT stays where the old end was: move it to the new end, or the
        # partition cannot reach past it.
        _careful(["sfdisk", "--relocate", "gpt-bak-std", facts.path])
    keep(f"{facts.path} {'grown' if size > facts.size else 'shrunk'} to {format_size(size)}"
         + (" (run again to finish)" if size > facts.size else ""))
    pause_point("container-resized")


def _resize_partition(facts: Facts, new_size: int) -> None:
    import parted  # lazily: see the module docstring

    from provision.storage.partition import _stderr_silenced

    p = facts.part
    log.info(f"setting partition {p.number} of {facts.path} to "
             + (format_size(new_size) if new_size % 1024 == 0 else f"{new_size} bytes"))
    with _parted_device(facts.path) as device:
        disk = parted.newDisk(device)
        part = next(x for x in disk.partitions if x.number == p.number)
        sector = device.sectorSize
        end = (p.start + new_size) // sector - 1
        with critical(), _stderr_silenced():  # libparted runs "udevadm settle", absent where udev is
            disk.setPartitionGeometry(partition=part, constraint=parted.Constraint(device=device),
                                      start=p.start // sector, end=end)
            disk.commit()
    if part.geometry.end != end:
        raise ProvisionError(f"libparted set partition {p.number} of {facts.path} to end at sector "
                             f"{part.geometry.end}, not {end}")
    keep(f"partition {p.number} of {facts.path} set to {format_size(new_size)}")
    pause_point("partition-resized")


def _resize_lv(facts: Facts, size: int) -> None:
    from provision.storage.lvm import extend_lv, reduce_lv

    vg, lv = facts.lv
    if size > facts.size:
        extend_lv(vg, lv, f"{size}b", resize_fs=False)
    else:
        reduce_lv(vg, lv, size)
    keep(f"{vg}/{lv} {'grown' if size > facts.size else 'shrunk'} to {format_size(size)}"
         + (" (run again to finish)" if size > facts.size else ""))
    pause_point("container-resized")


def refuse_in_use(facts: Facts, *, running: set[str] | None, domain: str | None = None) -> None:
    """Refused while anyone else may write or read the disk (:func:`inuse.refuse_busy`);
    ``domain``: the running guest whose own disk is grown online."""
    inuse.refuse_busy(facts.path, running=running, but=domain)


def apply(facts: Facts, steps: list[Step]) -> None:
    """Do ``steps``; every loop device and mount made on the way is undone at the end,
    whatever happens. Each step leaves the target consistent, so a run stopped between
    two is finished by running it again."""
    require("blkid", *(["e2fsck", "resize2fs"] if facts.fstype in EXT else []))
    for step in steps:
        log.debug(f"step: {step.command}")
        step.fn(*step.args)
    if facts.kind != "lv":
        log.debug(f"{facts.path}: {allocated_bytes(facts.path)} bytes allocated")
