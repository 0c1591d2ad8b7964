"""The checks xend made and xl no longer makes, done before any file is written.

- a domain name used by no other config;
- MACs unique among all configs;
- no disk writable by two domain configs (read-only sharing is fine);
- no disk dom0 has mounted or uses as swap while a guest would write it, nor one dom0
  has mounted read-write while a guest reads it. File images count through the loop
  devices that back them (a mounted /dev/loopNpM uses its image file); whole disks
  count through their partitions and the LVM/device-mapper volumes built on them.

Disks are compared by identity, not by spelling: a block device by its device number
(/dev/vg/lv and /dev/mapper/vg-lv are one disk), a file by device and inode; a loop
device is the same disk as its file, and a whole disk overlaps its partitions (two
partitions of one disk do not overlap).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from provision import log
from provision.domain import xmconvert
from provision.domain.model import Disk, Domain, parse_disk, parse_vif
from provision.domain.paths import Paths
from provision.errors import ProvisionError


@dataclass
class Existing:
    path: Path
    name: str | None
    disks: list[Disk] = field(default_factory=list)
    macs: list[str] = field(default_factory=list)


def config_files(paths: Paths) -> list[Path]:
    """Every domain config we know of: *.cfg in the config dir and whatever auto/ holds."""
    seen: dict[str, Path] = {}
    candidates = sorted(paths.xen.glob("*.cfg"))
    if paths.auto.is_dir():
        candidates += sorted(p for p in paths.auto.iterdir() if not p.name.startswith("."))
    for p in candidates:
        if p.is_file():  # dangling links and directories are not configs
            seen.setdefault(os.path.realpath(p), p)
    return list(seen.values())


def scan(paths: Paths, exclude: Path | None = None, quiet: bool = False) -> list[Existing]:
    """The other domains' names, disks and MACs; an unreadable config is a warning
    (unless ``quiet``: the caller has warned already)."""
    out = []
    skip = os.path.realpath(exclude) if exclude else None
    for path in config_files(paths):
        if os.path.realpath(path) == skip:
            continue
        try:
            values, _, _ = xmconvert.load_any(path, notes=False)
            disks = values.get("disk") or []
            vifs = values.get("vif") or []
            existing = Existing(path, str(values["name"]) if "name" in values else None)
            existing.disks = [parse_disk(s) for s in (disks if isinstance(disks, list) else [disks])]
            existing.macs = [m for v in (vifs if isinstance(vifs, list) else [vifs]) if (m := parse_vif(v).mac)]
        except ProvisionError as e:
            if not quiet:
                log.warn(f"skipping {path} in the safety checks: {e.message}")
            continue
        out.append(existing)
    return out


def identity(path: str) -> tuple:
    """What makes two disk paths the same disk."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.normpath(path))
    if stat.S_ISBLK(st.st_mode):
        return ("blk", st.st_rdev)
    return ("file", st.st_dev, st.st_ino)


def _unescape(field_: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _block_dir(dev: str, sys: Path) -> Path | None:
    """The sysfs directory of block device ``dev`` (a partition's lies inside its disk's)."""
    d = sys / "class" / "block" / os.path.basename(os.path.realpath(dev))
    return Path(os.path.realpath(d)) if d.exists() else None


def _loop_backing(dev: str, sys: Path, partitions: bool = False) -> str | None:
    """The file behind loop device ``dev``; with ``partitions``, also behind /dev/loopNpM
    (mounting a partition of an image file uses that file)."""
    name = os.path.basename(os.path.realpath(dev))
    try:
        return (sys / "block" / name / "loop" / "backing_file").read_text().strip()
    except OSError:
        pass
    d = _block_dir(dev, sys) if partitions else None
    if d and (d / "partition").exists():
        try:
            return (d.parent / "loop" / "backing_file").read_text().strip()
        except OSError:
            return None
    return None


def _parent_disk(ident: tuple, sys: Path) -> set[tuple]:
    """A partition's whole disk, and the file behind it if it is a loop device."""
    if ident[0] != "blk":
        return set()
    part = sys / "dev" / "block" / f"{os.major(ident[1])}:{os.minor(ident[1])}"
    try:
        if not (part / "partition").exists():
            return set()
        disk = Path(os.path.realpath(part)).parent
        ma, mi = (disk / "dev").read_text().strip().split(":")
    except (OSError, ValueError):
        return set()
    found = {("blk", os.makedev(int(ma), int(mi)))}
    try:
        found.add(identity((disk / "loop" / "backing_file").read_text().strip()))
    except OSError:
        pass
    return found


def _below(path: str, sys: Path) -> list[tuple]:
    """The identities a guest writing ``path`` writes: itself first, its partitions and
    the volumes built on it, and the file behind it if it is a loop device."""
    ident = identity(path)
    found = [ident, *sorted(_parts_and_holders(ident, sys) - {ident})]
    if ident[0] == "blk" and (backing := _loop_backing(path, sys)) and identity(backing) not in found:
        found.append(identity(backing))
    return found


def same_disk(a: str, b: str, sys: Path = Path("/sys")) -> bool:
    """Whether ``a`` and ``b`` share blocks: one path, a loop device and its file, a whole
    disk and its partition. Two partitions of one disk do not."""
    ia, ib = identity(a), identity(b)
    return bool(set(_below(a, sys)) & set(_below(b, sys))) or ia in _parent_disk(ib, sys) or ib in _parent_disk(ia, sys)


def _devnum(entry: Path) -> tuple | None:
    try:
        ma, mi = (entry / "dev").read_text().strip().split(":")
        return ("blk", os.makedev(int(ma), int(mi)))
    except (OSError, ValueError):
        return None


def _parts_and_holders(ident: tuple, sys: Path) -> set[tuple]:
    """What sits on a disk (as identities): its partitions (mounting sdb1 uses sdb) and,
    through holders/, the device-mapper volumes built on it or on them (an LV on the PV
    sdb2 uses sdb2 and sdb), to any depth."""
    if ident[0] != "blk":
        return set()
    found: set[tuple] = set()
    todo = [sys / "dev" / "block" / f"{os.major(ident[1])}:{os.minor(ident[1])}"]
    while todo:
        base = Path(os.path.realpath(todo.pop()))
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        subs = [e for e in entries if (e / "partition").exists()]
        holders = base / "holders"
        if holders.is_dir():
            subs += [Path(os.path.realpath(h)) for h in holders.iterdir()]
        for sub in subs:
            num = _devnum(sub)
            if num and num not in found:
                found.add(num)
                todo.append(sub)
    return found


@dataclass
class Dom0Use:
    source: str
    where: str
    writable: bool


def dom0_uses(proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> dict[tuple, Dom0Use]:
    """Disk identity -> how dom0 uses it (mounted rw/ro, swap), loop devices resolved."""
    uses: dict[tuple, Dom0Use] = {}

    def add(source: str, where: str, writable: bool):
        targets = [source]
        if source.startswith("/dev/loop") and (backing := _loop_backing(source, sys, partitions=True)):
            targets.append(backing)
        for t in targets:
            ident = identity(t)
            if ident[0] == "path":
                continue
            old = uses.get(ident)
            if not old or (writable and not old.writable):
                uses[ident] = Dom0Use(t, where, writable)

    try:
        for line in (proc / "mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[0].startswith("/"):
                add(_unescape(fields[0]), f"mounted on {_unescape(fields[1])}", "rw" in fields[3].split(","))
    except OSError:
        pass
    try:
        for line in (proc / "swaps").read_text().splitlines()[1:]:
            fields = line.split()
            if fields:
                add(_unescape(fields[0]), "used as swap", True)
    except OSError:
        pass
    return uses


def check(dom: Domain, others: list[Existing], dom0: bool = True,
          proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> None:
    """Raise one ProvisionError for the first conflict; return quietly if none.

    ``dom0=False`` (an offline root) skips the mount and swap checks: this machine's
    mounts say nothing about the host the image will become."""
    for other in others:
        if other.name == dom.name:
            raise ProvisionError(f"a domain named '{dom.name}' already exists in {other.path}",
                                 hint="choose another name, or remove that domain first")
    macs = dom.macs()
    for m in macs:
        if macs.count(m) > 1:
            raise ProvisionError(f"MAC {m} is given to two interfaces of '{dom.name}'")
        for other in others:
            if m in other.macs:
                raise ProvisionError(f"MAC {m} is already used by {other.path}",
                                     hint="leave mac= out to get a free one generated")
    uses = dom0_uses(proc, sys) if dom0 else {}
    for disk in dom.disks:
        for other in others:
            for od in other.disks:
                if (disk.writable or od.writable) and same_disk(disk.target, od.target, sys):
                    rw = "read-write" if od.writable else "read-only"
                    alias = "" if od.target == disk.target else f" as {od.target}"
                    raise ProvisionError(
                        f"disk {disk.target} is already given {rw} to {other.name or other.path}{alias} ({other.path})",
                        hint="share a disk only read-only (access=ro) in every domain; for shared writes use NFS",
                    )
        for part in _below(disk.target, sys):
            use = uses.get(part)
            if use and (disk.writable or use.writable):
                mode = "read-write" if use.writable else "read-only"
                what = "used as swap" if use.where == "used as swap" else f"{use.where} {mode}"
                raise ProvisionError(
                    f"disk {disk.target} is in use in dom0: {use.source} is {what}",
                    hint="unmount it (or swapoff) in dom0 first; a disk used by two kernels at once is corrupted",
                )
