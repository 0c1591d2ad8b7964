"""``python -m provision domain resize NAME --disk VDEV --size SIZE``: resize a domain's
disk, found in its config, and the size its image's facts file records.

A domain that is not running: offline, as ``image resize`` does (grow or shrink the
file, partition or LV and its filesystem). A running one: only an LV, only grown.
lvextend changes the size of the block device blkback serves; blkback notices, writes
the new ``sectors`` to xenstore and the guest's blkfront takes the new size
("VBD Resize" in the guest's kernel log). The filesystem is mounted inside the guest, so
the guest grows it: ``resize2fs /dev/xvda1`` (ext4 grows mounted) or ``xfs_growfs /``.
A file disk is not grown while the domain runs: a loop device does not pass a new file
size on to blkback reliably.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from provision import inuse, log
from provision.domain.paths import Paths, from_args
from provision.errors import ProvisionError
from provision.guest.resize import finish
from provision.storage import resize


def register(sub) -> None:
    r = sub.add_parser("resize", help="grow or shrink one of a domain's disks and its filesystem",
                       description="Resize the disk VDEV of domain NAME, found in its config: offline, or "
                                   "for a running domain an LV grown online (the guest then grows its "
                                   "filesystem: resize2fs /dev/VDEV).")
    r.add_argument("name", metavar="NAME")
    r.add_argument("--disk", required=True, metavar="VDEV", help="the disk's virtual device, e.g. xvda1")
    r.add_argument("--size", required=True, metavar="SIZE", help="the new size, or +SIZE to grow by that")
    r.add_argument("--partition", type=int, metavar="N", help="of a disk image: the partition (the last one)")
    r.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    r.add_argument("--root", metavar="DIR", help="work inside this root (an offline image, a test dir); default /")
    r.add_argument("--config-dir", metavar="DIR", help="xl config directory (default ROOT/etc/xen)")
    r.set_defaults(func=cmd_resize)


def find_disk(configs: list[inuse.DomainConfig], name: str, vdev: str):
    """(config, disk) of domain ``name``'s disk ``vdev``; one line when either is missing."""
    found = [c for c in configs if c.name == name]
    if not found:
        known = sorted(c.name for c in configs if c.name)
        raise ProvisionError(f"no domain config names a domain '{name}'",
                             hint=f"known: {', '.join(known)}" if known else "domain list shows the configs")
    if len(found) > 1:
        raise ProvisionError(f"two configs name domain '{name}': {found[0].path} and {found[1].path}",
                             hint="remove the stale one first")
    cfg = found[0]
    disk = next((d for d in cfg.disks if d.vdev == vdev), None)
    if disk is None:
        raise ProvisionError(f"domain {name} has no disk {vdev}",
                             hint=f"its disks: {', '.join(d.vdev for d in cfg.disks) or 'none'} ({cfg.path})")
    if disk.devtype == "cdrom" or disk.format != "raw":
        raise ProvisionError(f"disk {vdev} of {name} is {'a cdrom' if disk.devtype == 'cdrom' else disk.format}: "
                             "only raw disks are resized")
    return cfg, disk


def online_refusal(target: str, name: str, vdev: str) -> None:
    """Why the running domain ``name``'s disk ``target`` cannot be resized online, if it
    cannot: only an LV can."""
    if resize.lv_of(target) is None or os.path.isfile(target):
        kind = "a file" if os.path.isfile(target) else "not an LV"
        raise ProvisionError(
            f"{name} is running and its disk {vdev} is {kind} ({target}): only an LV grows while its guest "
            "runs; a loop-backed disk does not pass a new size on to the guest reliably",
            hint=f"shut {name} down, resize, start it again; or keep guests that grow online on LVs")


@dataclass(frozen=True)
class DomainResize:
    """The command's arguments, checked once at the edge."""

    name: str
    vdev: str
    size: str               # SIZE or +SIZE, read against the disk's size once it is known
    partition: int | None
    dry_run: bool
    paths: Paths

    @classmethod
    def parse(cls, args) -> DomainResize:
        if args.partition is not None and args.partition < 1:
            raise ProvisionError(f"--partition {args.partition} is not a partition number")
        resize.size_request(args.size)
        return cls(args.name, args.disk, args.size, args.partition, args.dry_run, from_args(args))


def cmd_resize(args) -> int:
    return run(DomainResize.parse(args))


def run(s: DomainResize) -> int:
    paths = s.paths
    cfg, disk = find_disk(inuse.domain_configs(paths.xen, quiet=True), s.name, s.vdev)
    target = disk.target if str(paths.root) == "/" or disk.target.startswith("/dev/") \
        else str(paths.inside(disk.target))
    running = inuse.running_domains()
    if running is None:
        raise ProvisionError(f"cannot tell whether {s.name} is running: xl list failed",
                             hint="run it in dom0 as root, where xl list works")
    online = s.name in running
    if online:
        online_refusal(target, s.name, s.vdev)
    facts = resize.inspect(target, partition=s.partition)
    want = resize.wanted(s.size, facts.size)
    steps = resize.plan(facts, want, online=online)
    resize.refuse_in_use(facts, running=running, domain=s.name if online else None)
    code = finish(facts, steps, s.dry_run, what=f"{s.name}'s {s.vdev} ({facts.name})")
    if online and steps:
        grow = "resize2fs /dev/" + s.vdev if facts.fstype in resize.EXT else "xfs_growfs /"
        msg = (f"{s.name} sees the new size of {s.vdev} through blkback; grow its filesystem inside the "
               f"guest: {grow}")
        if s.dry_run:
            print(f"# then, inside {s.name}: {grow}")
        else:
            log.info(msg)
    return code
