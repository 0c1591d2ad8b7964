"""``python -m provision image resize TARGET --size SIZE``: grow or shrink a guest's disk
and its filesystem (the logic is :mod:`provision.storage.resize`), and keep the size the
image's facts file (``<image>.json``) records in step.

    python -m provision image resize /srv/xen/vm1.img --size +2G
    python -m provision image resize /srv/xen/vm1-disk.img --size 8G       # its last partition
    python -m provision image resize vg0/vm1 --size 3G --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from provision import inuse, log
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.sizes import format_approx
from provision.storage import resize


def register(actions) -> None:
    r = actions.add_parser(
        "resize", help="grow or shrink a guest image, disk image partition or LV and its filesystem",
        description="Grow a file image, the last partition of a disk image or an LV, and its ext2/3/4 or "
                    "xfs filesystem; or shrink an ext2/3/4 one (offline, e2fsck -f first). Refused while the "
                    "image is in use: mounted, attached or given to a running domain.")
    r.add_argument("target", metavar="TARGET", help="an image file, a partitioned disk image, VG/LV or /dev/VG/LV")
    r.add_argument("--size", required=True, metavar="SIZE", help="the new size (e.g. 4G), or +SIZE to grow by that")
    r.add_argument("--partition", type=int, metavar="N",
                   help="of a disk image: the partition to resize (default and only choice: the last one)")
    r.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help="print the plan; change nothing")
    r.set_defaults(func=run_resize)


@dataclass(frozen=True)
class ResizeSettings:
    target: str
    size: str           # SIZE or +SIZE, read against the target's size once it is known
    partition: int | None = None
    dry_run: bool = False


def run_resize(args) -> int:
    s = ResizeSettings(args.target, args.size, args.partition, args.dry_run)
    if s.partition is not None and s.partition < 1:
        raise ProvisionError(f"--partition {s.partition} is not a partition number", hint="partitions count from 1")
    resize.size_request(s.size)  # bad input is refused before the target is read
    facts = resize.inspect(s.target, partition=s.partition)
    want = resize.wanted(s.size, facts.size)
    steps = resize.plan(facts, want)
    resize.refuse_in_use(facts, running=inuse.running_domains())  # --dry-run too: the plan is the run's
    return finish(facts, steps, s.dry_run)


def finish(facts: resize.Facts, steps: list[resize.Step], dry_run: bool, what: str | None = None) -> int:
    """Print the plan (``dry_run``), or do it, record the new size and say what changed."""
    what = what or facts.name
    if not steps:
        log.info(f"nothing to do: {what} is {format_approx(facts.size)} with its {facts.fstype} filling it")
        return 0
    if dry_run:
        for step in steps:
            print(step.command)
        return 0
    resize.apply(facts, steps)
    after = resize.inspect(facts.path if facts.kind != "lv" else "/".join(facts.lv),
                           partition=facts.part.number if facts.part else None)
    record_size(after)
    log.info(f"{what}: {format_approx(facts.size)} -> {format_approx(after.size)}, "
             f"{after.fstype} {format_approx(facts.fs_size)} -> {format_approx(after.fs_size)}")
    return 0


def sidecar_of(facts: resize.Facts) -> Path:
    """Where ``image`` keeps the facts of this disk: beside a file, in the cache for an LV."""
    if facts.kind == "lv":
        from provision.guest.target import Target

        return Path(Target.lv("/".join(facts.lv)).sidecar)
    return Path(facts.path + ".json")


def record_size(facts: resize.Facts) -> Path | None:
    """Write the new size into the facts file, if there is one that records this disk:
    the root filesystem's size (for a disk image: its root partition's)."""
    path = sidecar_of(facts)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    changed = False
    for disk in info.get("disks", []) if isinstance(info, dict) else []:
        if not isinstance(disk, dict) or not _same(disk.get("path"), facts.path):
            continue
        if facts.part is not None:
            if disk.get("partitions", {}).get("root") == facts.part.number:
                disk["size"], changed = facts.part.size, True
        elif disk.get("role") == "root":
            disk["size"], changed = facts.size, True
    if not changed:
        return None
    atomic_write(path, json.dumps(info, indent=2, sort_keys=True) + "\n")
    log.debug(f"recorded the new size in {path}")
    return path


def _same(recorded, path: str) -> bool:
    if not isinstance(recorded, str):
        return False
    return recorded == path or os.path.realpath(recorded) == os.path.realpath(path)
