"""LVM with the real lvm2 tools: PVs and VGs, LVs, copy-on-write snapshot clones, thin
pools and thin volumes, extending a volume (and its filesystem), and watching snapshot
fill - the manual's warning that a full snapshot confuses LVM, answered with its
``dmsetup wait`` + ``lvextend`` idea as a watcher that extends before the snapshot fills.

Standard library and lvm2 only: this module runs in the boot test's minimal guest.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from provision import inuse, log
from provision.errors import ProvisionError
from provision.run import CommandError, run, which
from provision.sizes import format_size, parse_size, round_up
from provision.storage.fs import blkid_tags, grow_btrfs, signature
from provision.undo import UndoStack, critical, pause_point

_LVM_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")
# lvm(8): LV names may not contain these (they name LVM's own hidden sub-volumes) ...
_LV_RESERVED_PARTS = ("_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare",
                      "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
# ... nor start with these.
_LV_RESERVED_PREFIXES = ("snapshot", "pvmove")
_NAME_MAX = 127
_EXTENT_ROUND = 512  # lvm wants sizes in 512-byte sectors at least


def _check_lvm_name(value: str, what: str) -> str:
    if (not value or len(value) > _NAME_MAX or value in (".", "..") or value.startswith("-")
            or not _LVM_NAME.match(value)):
        raise ProvisionError(
            f"{what} '{value}' is not valid",
            hint=f"use 1-{_NAME_MAX} letters, digits, '+', '_', '.' or '-', not starting with '-'; "
                 "no '/', spaces or shell characters",
        )
    return value


def validate_vg_name(value: str) -> str:
    """A VG name by LVM's rules (and ours: no '..')."""
    _check_lvm_name(value, "volume group name")
    if ".." in value:
        raise ProvisionError(f"volume group name '{value}' is not valid", hint="no '..'")
    return value


def validate_lv_name(value: str) -> str:
    """An LV name by LVM's rules: no reserved prefixes ('snapshot', 'pvmove') or sub-volume suffixes."""
    _check_lvm_name(value, "logical volume name")
    if ".." in value:
        raise ProvisionError(f"logical volume name '{value}' is not valid", hint="no '..'")
    for prefix in _LV_RESERVED_PREFIXES:
        if value.startswith(prefix):
            raise ProvisionError(f"logical volume name '{value}' is reserved by LVM",
                                 hint=f"names may not start with '{prefix}'")
    for part in _LV_RESERVED_PARTS:
        if part in value:
            raise ProvisionError(f"logical volume name '{value}' is reserved by LVM",
                                 hint=f"names may not contain '{part}'")
    return value


def lv_path(vg: str, name: str) -> str:
    return f"/dev/{vg}/{name}"


def _report(cmd: str, fields: str, *objects: str) -> list[list[str]]:
    """Rows of an lvm report command (pvs/vgs/lvs), fields in bytes, '|'-separated."""
    proc = run([cmd, "--noheadings", "--nosuffix", "--units", "b", "--separator", "|", "-o", fields, *objects],
               check=False, capture=True)
    if proc.returncode != 0:
        return []
    return [[f.strip() for f in line.split("|")] for line in proc.stdout.splitlines() if line.strip()]


def vg_exists(vg: str) -> bool:
    return bool(_report("vgs", "vg_name", vg))


def lv_exists(vg: str, name: str) -> bool:
    return bool(_report("lvs", "lv_name", f"{vg}/{name}"))


def _lv_size(vg: str, name: str) -> int:
    rows = _report("lvs", "lv_size", f"{vg}/{name}")
    if not rows:
        raise ProvisionError(f"logical volume {vg}/{name} does not exist")
    return int(rows[0][0])


def vg_free(vg: str) -> int:
    """Free bytes in ``vg``."""
    rows = _report("vgs", "vg_free", vg)
    if not rows:
        raise ProvisionError(f"volume group '{vg}' does not exist", hint="create it with: storage lvm vg NAME DEVICE...")
    return int(rows[0][0])


_NOISE = ("File descriptor", "Run `", "WARNING: ")


def device_mapper_in_kernel() -> bool:
    """Whether the running kernel has device-mapper (built in, or its module loaded):
    it registers the misc device that /dev/mapper/control is."""
    try:
        with open("/proc/misc") as f:
            return any(line.split()[1:2] == ["device-mapper"] for line in f)
    except OSError:
        return os.path.exists("/sys/class/misc/device-mapper")


def _lvm(argv: list[str]) -> None:
    """Run an lvm2 command; a failure is one line with lvm2's own reason."""
    try:
        run(argv, quiet=True, env={"LVM_SUPPRESS_FD_WARNINGS": "1"})
    except CommandError as e:
        lines = [ln.strip() for ln in e.output.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
        # Only a kernel without it: lvm2 names device-mapper in other failures too (a
        # reload ioctl refused for an invalidated snapshot, say), whose own line says more.
        if any("device-mapper" in ln for ln in lines) and not device_mapper_in_kernel():
            raise ProvisionError(
                f"{argv[0]} failed: device-mapper is not available in this kernel",
                hint="load it (modprobe dm-mod) or use a kernel with device-mapper; PVs and VGs work without it, volumes do not",
                exit_code=e.exit_code,
            ) from None
        reason = lines[-1] if lines else f"exit code {e.returncode}"
        raise ProvisionError(f"{argv[0]} failed: {reason}", exit_code=e.exit_code) from None


def _pv_remove(device: str) -> None:
    run(["pvremove", "-y", "-ff", device], quiet=True)


def pvcreate(devices: list[str], *, force: bool = False, undo: UndoStack | None = None) -> None:
    """Make each device a physical volume. A device holding anything (blkid sees a
    partition table, filesystem or PV) is refused unless ``force``."""
    if not devices:
        raise ProvisionError("no devices given for the physical volume")
    for dev in devices:
        if not os.path.exists(dev):
            raise ProvisionError(f"device {dev} does not exist")
        inuse.refuse(dev, writing=True)
        found = None if force else signature(dev)
        if found:
            raise ProvisionError(f"{dev} already holds a filesystem, partition table or PV ({found})",
                                 hint="pass --force to overwrite it")
    for dev in devices:
        with critical():
            _lvm(["pvcreate", "-y", *(["-ff"] if force else []), dev])
            if undo is not None:
                undo.rollback(f"pvremove {dev}", _pv_remove, dev, made=f"physical volume {dev}")
        pause_point("pv-created")
    log.info(f"physical volume{'s' if len(devices) > 1 else ''}: {', '.join(devices)}")


def _vg_remove(vg: str) -> None:
    run(["vgremove", "-y", "-f", vg], quiet=True)


def vgcreate(vg: str, devices: list[str], *, force: bool = False, undo: UndoStack | None = None) -> None:
    """Create volume group ``vg`` on ``devices`` (already PVs, or made PVs by vgcreate).
    A device that is not yet a PV but holds something (filesystem, partition table) is
    refused unless ``force``: vgcreate -y would wipe it without asking."""
    validate_vg_name(vg)
    if not devices:
        raise ProvisionError("no devices given for the volume group")
    if vg_exists(vg):
        raise ProvisionError(f"volume group '{vg}' already exists")
    for dev in devices:
        if not os.path.exists(dev):
            raise ProvisionError(f"device {dev} does not exist")
        inuse.refuse(dev, writing=True)
    # vgcreate makes PVs of plain devices itself; those labels are ours to take away too.
    fresh = [dev for dev in devices if not _report("pvs", "pv_name", dev)]
    for dev in fresh:
        found = None if force else signature(dev)
        if found:
            raise ProvisionError(f"{dev} already holds a filesystem or partition table ({found})",
                                 hint="pass --force to overwrite it")
    with critical():
        _lvm(["vgcreate", "-y", vg, *devices])  # -y: wipes what --force allowed
        if undo is not None:
            for dev in fresh:
                undo.rollback(f"pvremove {dev}", _pv_remove, dev, made=f"physical volume {dev}")
            undo.rollback(f"vgremove {vg}", _vg_remove, vg, made=f"volume group {vg}")
    pause_point("vg-created")
    log.info(f"volume group {vg} on {', '.join(devices)}")


def _size_arg(size: int) -> str:
    return f"{round_up(size, _EXTENT_ROUND)}b"


def remove_lv(vg: str, name: str) -> None:
    run(["lvremove", "-y", "-f", f"{vg}/{name}"], quiet=True)


def _check_new_lv(vg: str, name: str, size: int | None, force: bool) -> None:
    validate_vg_name(vg)
    validate_lv_name(name)
    free = vg_free(vg)
    if lv_exists(vg, name):
        if not force:
            raise ProvisionError(f"logical volume {vg}/{name} already exists",
                                 hint="choose another name, or pass --force to replace it")
        inuse.refuse(lv_path(vg, name), writing=True)
        free += _lv_size(vg, name)
    if size is not None and size > free:
        raise ProvisionError(
            f"volume group '{vg}' has no room for {format_size(size)}: {format_size(free)} free",
            hint="choose a smaller size or add a PV (vgextend)",
        )


def _create(vg: str, name: str, argv: list[str], force: bool, undo: UndoStack | None) -> str:
    if force and lv_exists(vg, name):
        remove_lv(vg, name)
    with critical():
        _lvm(argv)
        if undo is not None:
            undo.rollback(f"lvremove {vg}/{name}", remove_lv, vg, name, made=f"logical volume {vg}/{name}")
    pause_point("lv-created")
    return lv_path(vg, name)


def create_lv(vg: str, name: str, size: int | str, *, thin_pool: str | None = None,
              force: bool = False, undo: UndoStack | None = None) -> str:
    """Create LV ``vg/name`` of ``size`` (the manual's ``lvcreate -L4096M -n myvmdisk1 vg``);
    with ``thin_pool`` a thin volume of that virtual size in the pool. Returns its path."""
    size = parse_size(size, "volume size")
    if thin_pool:
        validate_lv_name(thin_pool)
        _check_new_lv(vg, name, None, force)
        if not lv_exists(vg, thin_pool):
            raise ProvisionError(f"thin pool {vg}/{thin_pool} does not exist",
                                 hint="create it with: storage lvm pool VG NAME --size SIZE")
        argv = ["lvcreate", "-y", "-V", _size_arg(size), "-T", f"{vg}/{thin_pool}", "-n", name]
    else:
        _check_new_lv(vg, name, size, force)
        argv = ["lvcreate", "-y", "-W", "y", "-L", _size_arg(size), "-n", name, vg]
    path = _create(vg, name, argv, force, undo)
    log.info(f"logical volume {path} ({format_size(size)}{', thin in ' + thin_pool if thin_pool else ''})")
    return path


def create_thin_pool(vg: str, name: str, size: int | str, *, undo: UndoStack | None = None) -> str:
    """Create a thin pool ``vg/name`` of ``size``; thin volumes take space from it as written."""
    size = parse_size(size, "pool size")
    _check_new_lv(vg, name, size, False)
    path = _create(vg, name, ["lvcreate", "-y", "--type", "thin-pool", "-L", _size_arg(size), "-n", name, vg],
                   False, undo)
    log.info(f"thin pool {vg}/{name} ({format_size(size)})")
    return path


def _is_thin(vg: str, name: str) -> bool:
    rows = _report("lvs", "segtype", f"{vg}/{name}")
    return bool(rows) and rows[0][0] == "thin"


def snapshot_argv(vg: str, origin: str, name: str, nbytes: int | None) -> list[str]:
    """The lvcreate command of :func:`snapshot_lv` (``--dry-run`` plans print it)."""
    if nbytes is None:
        # Thin snapshots are created with "skip activation"; -kn makes it usable at once.
        return ["lvcreate", "-y", "-s", "-kn", "-n", name, f"{vg}/{origin}"]
    return ["lvcreate", "-y", "-s", "-L", _size_arg(nbytes), "-n", name, f"{vg}/{origin}"]


def snapshot_lv(vg: str, origin: str, name: str, size: int | str | None = None, *,
                force: bool = False, undo: UndoStack | None = None) -> str:
    """A copy-on-write clone of ``vg/origin`` (a template): the manual's
    ``lvcreate -s -L1024M -n myclonedisk1 /dev/vg/myvmdisk1``. ``size`` is the room for
    changes; for a thin origin leave it None for a thin snapshot sharing the pool."""
    validate_vg_name(vg)
    validate_lv_name(origin)
    validate_lv_name(name)
    if not lv_exists(vg, origin):
        raise ProvisionError(f"origin volume {vg}/{origin} does not exist")
    thin = _is_thin(vg, origin)
    nbytes = parse_size(size, "snapshot size") if size is not None else None
    if nbytes is None and not thin:
        raise ProvisionError(f"a snapshot of {vg}/{origin} needs a size (room for the clone's changes)",
                             hint="give --size, e.g. 1G; only snapshots of thin volumes need none")
    _check_new_lv(vg, name, nbytes, force)
    path = _create(vg, name, snapshot_argv(vg, origin, name, nbytes), force, undo)
    log.info(f"snapshot {path} of {vg}/{origin}" + (f" ({format_size(nbytes)} for changes)" if nbytes else " (thin)"))
    return path


# What lvextend --resizefs (fsadm) grows; btrfs is grown by us (fs.grow_btrfs).
_FSADM_FS = ("ext2", "ext3", "ext4", "xfs")


def _fs_type(vg: str, name: str) -> str:
    return blkid_tags(lv_path(vg, name)).get("TYPE", "")


class SnapshotAtLargest(ProvisionError):
    """lvextend left a snapshot as it was: it already holds room for all of its origin."""


def extend_lv(vg: str, name: str, size: int | str, *, resize_fs: bool = True) -> int:
    """Grow ``vg/name`` to ``size``, or by it when given as ``+SIZE``; its filesystem is
    grown with it (online where the filesystem allows). Returns the new size in bytes,
    as LVM made it: a snapshot grows at most to what a copy of all its origin needs."""
    validate_vg_name(vg)
    validate_lv_name(name)
    rows = _report("lvs", "lv_size,lv_attr", f"{vg}/{name}")
    if not rows:
        raise ProvisionError(f"logical volume {vg}/{name} does not exist")
    current = int(rows[0][0])
    if rows[0][1].startswith("o"):
        # lvm2 itself refuses: "Snapshot origin volumes can be resized only while inactive".
        raise ProvisionError(
            f"{vg}/{name} is the origin of snapshots: LVM grows a snapshot origin only while it is inactive",
            hint=f"stop what uses it, then: lvchange -an {vg}/{name}; or use thin volumes, which grow online",
        )
    text = str(size)
    relative = text.startswith("+")
    amount = parse_size(text[1:] if relative else text, "new size")
    target = current + amount if relative else amount
    if target <= current:
        raise ProvisionError(
            f"{vg}/{name} is already {format_size(current)}: extending only grows a volume",
            hint="give a larger size, or +SIZE to grow by that much",
        )
    thin = _is_thin(vg, name)
    if not thin and target - current > vg_free(vg):
        raise ProvisionError(
            f"volume group '{vg}' has no room to grow {name} by {format_size(target - current)}: "
            f"{format_size(vg_free(vg))} free",
            hint="add a PV (vgextend) or grow by less",
        )
    snapshot = rows[0][1].startswith("s")
    # A snapshot grows its room for changes; the filesystem it shows stays the origin's size.
    fstype = _fs_type(vg, name) if resize_fs and not snapshot else ""
    argv = ["lvextend", "-L", _size_arg(target)]
    if fstype in _FSADM_FS:
        argv.append("--resizefs")
    _lvm([*argv, f"{vg}/{name}"])
    grown = _lv_size(vg, name)
    if grown <= current and snapshot:
        # lvm2 caps a snapshot there, says so and exits 0 (seen with 2.03.16).
        raise SnapshotAtLargest(
            f"{vg}/{name} stays {format_size(current)}: LVM gives a snapshot no more room than a "
            "copy of its whole origin needs, so it cannot fill",
            hint="nothing to do; a larger origin needs a larger snapshot",
        )
    if fstype == "btrfs":
        grow_btrfs(lv_path(vg, name))
    log.info(f"extended {vg}/{name} to {format_size(grown)}")
    return grown


def reduce_lv(vg: str, name: str, size: int) -> int:
    """Shrink ``vg/name`` to ``size`` bytes (LVM rounds up to whole extents). Its
    filesystem must already be that small: :mod:`provision.storage.resize` shrinks it
    first. Returns the new size."""
    validate_vg_name(vg)
    validate_lv_name(name)
    current = _lv_size(vg, name)
    if size >= current:
        raise ProvisionError(f"{vg}/{name} is {format_size(current)}: reducing only shrinks a volume")
    _lvm(["lvreduce", "-y", "-L", _size_arg(size), f"{vg}/{name}"])
    smaller = _lv_size(vg, name)
    log.info(f"reduced {vg}/{name} to {format_size(smaller)}")
    return smaller


def dm_name(vg: str, name: str) -> str:
    """The device-mapper name LVM gives ``vg/name`` (each '-' in either doubled)."""
    return f"{vg.replace('-', '--')}-{name.replace('-', '--')}"


def parse_snapshot_status(status: str) -> float | None:
    """The fill level in ``dmsetup status`` of a snapshot target (``0 131072 snapshot
    2064/32768 16``: sectors used of the room, of which metadata), as lvs computes it
    (lvm2's _snap_target_percent): 0 when only the metadata is there, 100 once invalid.
    None for anything else (another target, a merge, an unknown state)."""
    fields = status.split()
    if len(fields) < 4 or fields[2] != "snapshot":
        return None
    if fields[3] == "Invalid":
        return 100.0
    m = re.fullmatch(r"(\d+)/(\d+)", fields[3])
    if not m or not int(m[2]):
        return None
    used, total = int(m[1]), int(m[2])
    if len(fields) > 4 and fields[4].isdigit() and used == int(fields[4]):
        return 0.0
    return 100.0 * used / total


def dm_snapshot_usage(vg: str, name: str) -> float | None:
    """An active snapshot's fill level from the kernel (``dmsetup status``), else None.
    What lvs reads too, without scanning every PV's metadata first: measured in the boot
    test's dom0 under TCG, lvs took 0.6 s a call, which a watcher polling every few
    seconds pays for as long as it runs."""
    if which("dmsetup") is None:
        return None
    proc = run(["dmsetup", "status", dm_name(vg, name)], check=False, capture=True, quiet=True)
    return parse_snapshot_status(proc.stdout) if proc.returncode == 0 else None


def snapshot_usage(vg: str, name: str) -> float:
    """How full a snapshot (or thin pool) is, in percent of its room for changes."""
    validate_vg_name(vg)
    validate_lv_name(name)
    usage = dm_snapshot_usage(vg, name)
    if usage is not None:
        return usage
    rows = _report("lvs", "data_percent,snap_percent", f"{vg}/{name}")
    if not rows:
        raise ProvisionError(f"logical volume {vg}/{name} does not exist")
    for value in rows[0]:
        if value:
            return float(value)
    raise ProvisionError(f"{vg}/{name} is neither a snapshot nor a thin pool: it has no fill level")


def watch_snapshot(vg: str, name: str, *, threshold: float = 80.0, extend_by: int | str = "512M",
                   interval: float = 5.0, once: bool = False,
                   report: Callable[[float], None] | None = None) -> None:
    """Keep a snapshot from filling: whenever it is ``threshold`` percent full, extend it
    by ``extend_by`` (or what the VG has left). Once it has room for all of its origin it
    cannot fill and is extended no more. Runs until interrupted (or one check with ``once``).

    The manual's idea was ``dmsetup wait`` on the snapshot, then ``lvextend``; a
    snapshot only raises a device-mapper event when it is already full (invalid), so we
    poll the fill level (as dmeventd's snapshot monitor does) and act before that.
    """
    if not 0 < threshold < 100:
        raise ProvisionError(f"threshold {threshold} is not a percentage between 0 and 100")
    if not 0 < interval <= 86400:
        raise ProvisionError(f"interval {interval} is not a number of seconds between 0 and 86400 (a day)")
    step = parse_size(extend_by, "extend-by size")
    at_largest = False  # room for all of its origin: it cannot fill, extending does nothing
    warned = False
    while True:
        usage = snapshot_usage(vg, name)
        if report:
            report(usage)
        if usage >= 100.0:
            raise ProvisionError(f"snapshot {vg}/{name} is full and has been invalidated",
                                 hint="remove it and take a new snapshot with more room")
        if usage >= threshold and not at_largest:
            # What the VG has left still helps. With nothing left, say so once and keep
            # watching: a PV added meanwhile (vgextend) gives the next check room again.
            grow = min(step, vg_free(vg))
            if grow > 0:
                warned = False
                log.info(f"{vg}/{name} is {usage:.1f}% full (threshold {threshold:g}%): extending by "
                         f"{format_size(grow)}" + (" (all the volume group has left)" if grow < step else ""))
                try:
                    extend_lv(vg, name, f"+{grow}b", resize_fs=False)
                except SnapshotAtLargest as e:
                    log.info(e.message)
                    at_largest = True
            elif not warned:
                log.warn(f"{vg}/{name} is {usage:.1f}% full and volume group '{vg}' has no room left "
                         f"to extend it: add a PV now (vgextend {vg} DEVICE)")
                warned = True
        if once:
            return
        time.sleep(interval)
