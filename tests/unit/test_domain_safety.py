"""The dom0 checks' reading of /proc and /sys, for a layout this machine cannot produce.

This kernel does no partition scanning on loop devices (``losetup -P`` makes no
/dev/loopNp1), so a mounted partition of a guest's image file is given here as the
kernel lays it out: /proc/mounts names /dev/loopNpM, /sys/class/block/loopNpM links
into the loop device's directory, whose loop/backing_file names the image. The image
files are real, so identities (device, inode) are the real ones. The same checks with
real loop devices, mounts and swap are in tests/integration/test_domain_dom0.py.
"""

from __future__ import annotations

import os

import pytest

from provision import inuse
from provision.domain import safety
from provision.domain.model import Domain
from provision.errors import ProvisionError


@pytest.fixture
def host(tmp_path):
    """An image file whose first partition is mounted read-write through loop7p1."""
    image = tmp_path / "guest.img"
    image.write_bytes(b"\0" * 4096)
    sys = tmp_path / "sys"
    loop = sys / "devices/virtual/block/loop7"
    (loop / "loop").mkdir(parents=True)
    (loop / "loop/backing_file").write_text(f"{image}\n")
    (loop / "dev").write_text("7:7\n")
    (loop / "loop7p1").mkdir()
    (loop / "loop7p1/partition").write_text("1\n")
    (loop / "loop7p1/dev").write_text("259:7\n")
    (sys / "class/block").mkdir(parents=True)
    (sys / "class/block/loop7").symlink_to("../../devices/virtual/block/loop7")
    (sys / "class/block/loop7p1").symlink_to("../../devices/virtual/block/loop7/loop7p1")
    (sys / "block").mkdir()
    (sys / "block/loop7").symlink_to("../devices/virtual/block/loop7")  # whole disks only, as in sysfs
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mounts").write_text("/dev/loop7p1 /mnt/guest\\040root ext4 rw,relatime 0 0\n")
    (proc / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    return image, proc, sys


def guest(target: str, access: str = "rw") -> Domain:
    return Domain.from_config({"name": "g", "memory": 64, "kernel": "/k",
                               "disk": [f"vdev=xvda, access={access}, target={target}"]}, "t")


def test_mounted_loop_partition_marks_its_image_file(host):
    image, proc, sys = host
    for access in ("rw", "ro"):  # dom0 writes it: even reading it in a guest sees garbage
        with pytest.raises(ProvisionError) as e:
            safety.check(guest(str(image), access), [], proc=proc, sys=sys)
        assert e.value.message == f"disk {image} is in use in dom0: {image} is mounted on /mnt/guest root read-write"


def test_other_files_are_free(host, tmp_path):
    _, proc, sys = host
    other = tmp_path / "other.img"
    other.write_bytes(b"\0")
    safety.check(guest(str(other)), [], proc=proc, sys=sys)


def test_read_only_partition_mount_allows_read_only_guests(host):
    image, proc, sys = host
    (proc / "mounts").write_text("/dev/loop7p1 /mnt/guest ext4 ro,relatime 0 0\n")
    safety.check(guest(str(image), "ro"), [], proc=proc, sys=sys)
    with pytest.raises(ProvisionError, match="mounted on /mnt/guest read-only"):
        safety.check(guest(str(image), "rw"), [], proc=proc, sys=sys)


def test_offline_root_ignores_dom0(host):
    image, proc, sys = host
    safety.check(guest(str(image)), [], dom0=False, proc=proc, sys=sys)


def test_partitions_and_volumes_on_a_disk(tmp_path):
    """sdb holds sdb1 and the PV sdb2, on which the LV dm-0 sits (device-mapper is missing
    in this kernel, so its sysfs layout is given): all three are on sdb, dm-0 is on sdb2,
    and nothing is on sdb1."""
    sys = tmp_path / "sys"
    sdb = sys / "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sdb"
    dm0 = sys / "devices/virtual/block/dm-0"
    for d, num in ((sdb, "8:16"), (sdb / "sdb1", "8:17"), (sdb / "sdb2", "8:18"), (dm0, "254:0")):
        (d / "holders").mkdir(parents=True)
        (d / "dev").write_text(num + "\n")
    (sdb / "sdb1/partition").write_text("1\n")
    (sdb / "sdb2/partition").write_text("2\n")
    (sdb / "sdb2/holders/dm-0").symlink_to(os.path.relpath(dm0, sdb / "sdb2/holders"))
    (sys / "dev/block").mkdir(parents=True)
    for num, d in (("8:16", sdb), ("8:17", sdb / "sdb1"), ("8:18", sdb / "sdb2"), ("254:0", dm0)):
        (sys / "dev/block" / num).symlink_to(os.path.relpath(d, sys / "dev/block"))

    def blk(ma, mi):
        return ("blk", os.makedev(ma, mi))

    assert inuse._parts_and_holders(blk(8, 16), sys) == {blk(8, 17), blk(8, 18), blk(254, 0)}
    assert inuse._parts_and_holders(blk(8, 18), sys) == {blk(254, 0)}
    assert inuse._parts_and_holders(blk(8, 17), sys) == set()
    assert inuse._parent_disk(blk(8, 18), sys) == {blk(8, 16)}
