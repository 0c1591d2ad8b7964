"""Checks made before anything is changed.

Never overwrite an existing image, LV or device without ``force``; refuse a device that
dom0 has mounted read-write or uses as swap (the manual: mounting one filesystem
read-write twice destroys it), and a disk another domain config under /etc/xen already
uses writable.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProvisionError

XEN_CONFIG_DIR = "/etc/xen"
# Files in /etc/xen that are not domain configs.
_NOT_DOMAINS = {"xl.conf", "xend-config.sxp", "cpupool", "xlexample.hvm", "xlexample.pvlinux",
                "xlexample.pvhlinux", "README", "README.incompatibilities", "oxenstored.conf"}

_DISK_RE = re.compile(r"^\s*disk\s*=\s*\[(.*?)\]", re.S | re.M)
_STRING_RE = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_PREFIXES = ("phy:", "file:", "tap:aio:", "tap:qcow2:", "tap:vhd:", "tap2:tapdisk:aio:", "tap:", "aio:", "qdisk:")
_ACCESS = {"r", "ro", "w", "rw", "w!", "rw!", "!"}


@dataclass(frozen=True)
class DiskUse:
    config: Path      # the domain config naming the disk
    target: str       # as written there (prefix removed)
    writable: bool


def _identity(path: str | os.PathLike) -> tuple[str, int, int] | None:
    """What a path really is: ('dev', rdev, 0) for a block device, ('file', st_dev, inode) else."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return ("dev", st.st_rdev, 0)
    return ("file", st.st_dev, st.st_ino)


def parse_disk_spec(spec: str) -> tuple[str, bool]:
    """(target, writable) of one xl disk spec: ``target=...,vdev=xvda,access=rw``,
    positional ``/img,raw,xvda,rw`` or the old ``phy:hda3,sda1,w`` / ``file:/img,xvda,w``."""
    target = None
    access = None
    positional: list[str] = []
    rest = spec.strip()
    # xl: target= must be last and takes the rest of the string, commas included.
    m = re.search(r"(?:^|,)\s*target\s*=\s*(.*)$", rest)
    if m:
        target = m.group(1).strip()
        rest = rest[: m.start()]
    for token in filter(None, (t.strip() for t in rest.split(","))):
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip()
            if key in ("access", "mode"):
                access = value.strip()
        else:
            positional.append(token)
    if target is None and positional:
        target = positional[0]
    if access is None and len(positional) > 1 and positional[-1].lower() in _ACCESS:
        access = positional[-1]
    target = target or ""
    for prefix in _PREFIXES:
        if target.startswith(prefix):
            target = target[len(prefix):]
            break
    if target and not target.startswith("/") and "/" not in target:
        target = "/dev/" + target  # old form: phy:hda3
    # xl's default access is read-write.
    writable = access is None or "w" in access.lower()
    return target, writable


def domain_disks(xen_dir: str | os.PathLike | None = None) -> list[DiskUse]:
    """Every disk named in a domain config under /etc/xen (and /etc/xen/auto)."""
    base = Path(xen_dir or os.environ.get("XEN_PROVISION_XEN_DIR") or XEN_CONFIG_DIR)
    found: list[DiskUse] = []
    seen: set[Path] = set()
    for folder in (base, base / "auto"):
        if not folder.is_dir():
            continue
        for cfg in sorted(folder.iterdir()):
            try:
                real = cfg.resolve()
                if real in seen or not real.is_file() or cfg.name in _NOT_DOMAINS or cfg.suffix in (".sh", ".sxp"):
                    continue
                seen.add(real)
                text = real.read_text(errors="replace")
            except OSError:
                continue
            for block in _DISK_RE.findall(text):
                for m in _STRING_RE.finditer(block):
                    target, writable = parse_disk_spec(m.group(1) or m.group(2) or "")
                    if target:
                        found.append(DiskUse(cfg, target, writable))
    return found


def domain_disk_users(path: str | os.PathLike, xen_dir: str | os.PathLike | None = None) -> list[DiskUse]:
    """Domain configs that use ``path`` (same device or same file), writable or not."""
    ident = _identity(path)
    real = os.path.realpath(path)
    users = []
    for use in domain_disks(xen_dir):
        other = _identity(use.target)
        if (ident is not None and other == ident) or os.path.realpath(use.target) == real:
            users.append(use)
    return users


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4:
                src = fields[0].replace("\\040", " ")
                out.append((src, fields[1].replace("\\040", " "), set(fields[3].split(","))))
    return out


def _swaps() -> list[str]:
    """Devices and files dom0 swaps on (/proc/swaps)."""
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return []
    # The name is the first column; "\040" stands for a space in it.
    return [line.split()[0].replace("\\040", " ") for line in lines if line.split()]


def _related_rdevs(rdev: int) -> set[int]:
    """The device itself, its partitions and the devices stacked on it (LVM, dm)."""
    result = {rdev}
    sysdir = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    try:
        sysdir = sysdir.resolve()
    except OSError:
        return result
    candidates = []
    if sysdir.is_dir():
        candidates += [p for p in sysdir.iterdir() if (p / "partition").exists()]
        candidates += list((sysdir / "holders").glob("*")) if (sysdir / "holders").is_dir() else []
    for part in candidates:
        try:
            major, minor = (part / "dev").read_text().strip().split(":")
            result |= _related_rdevs(os.makedev(int(major), int(minor)))
        except (OSError, ValueError):
            continue
    return result


def _loops_backed_by(path: str) -> list[str]:
    """Loop devices whose backing file is ``path`` (from /sys, no losetup needed)."""
    real = os.path.realpath(path)
    loops = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip()
        except OSError:
            continue
        if name.removesuffix(" (deleted)") == real:
            loops.append("/dev/" + backing.parent.parent.name)
    return loops


def refuse_in_use(target: str | os.PathLike, *, writable_only: bool = True,
                  xen_dir: str | os.PathLike | None = None) -> None:
    """ProvisionError if ``target`` (block device or image file) is in use: mounted
    (read-write, or at all with ``writable_only=False``) or swapped on in dom0, attached to
    a loop device, or used writable by a domain config under /etc/xen."""
    target = os.fspath(target)
    ident = _identity(target)
    if ident is None:
        return
    devices: set[int] = set()
    if ident[0] == "dev":
        devices = _related_rdevs(ident[1])
    else:
        for src in _swaps():
            if _identity(src) == ident:
                raise ProvisionError(f"{target} is in use as a swap file", hint=f"swapoff {src} first")
        loops = _loops_backed_by(target)
        if loops:
            raise ProvisionError(
                f"{target} is in use: it is attached to {', '.join(sorted(loops))}",
                hint=f"detach it first (losetup -d {sorted(loops)[0]}) or choose another target",
            )
    if devices:
        for src, mnt, opts in _mounts():
            if not src.startswith("/"):
                continue
            other = _identity(src)
            if other and other[0] == "dev" and other[1] in devices and ("rw" in opts or not writable_only):
                mode = "read-write" if "rw" in opts else "read-only"
                raise ProvisionError(
                    f"{target} is mounted {mode} at {mnt} ({src})",
                    hint=f"unmount it first (umount {mnt}); a filesystem used twice read-write is destroyed",
                )
        for src in _swaps():
            other = _identity(src)
            if other and other[0] == "dev" and other[1] in devices:
                raise ProvisionError(f"{target} is in use as swap ({src})", hint=f"swapoff {src} first")
    for use in domain_disk_users(target, xen_dir):
        if use.writable:
            raise ProvisionError(
                f"{target} is used writable by domain config {use.config}",
                hint="a disk written by two domains (or by dom0 and a domain) is destroyed; choose another target",
            )


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
    refuse_in_use(target, xen_dir=xen_dir)
