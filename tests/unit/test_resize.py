"""image resize / domain resize without root: sizes, plans (the order of the steps) and
refusals, from facts made by hand. The tools themselves run in
tests/integration/test_resize.py and, for LVs, in the boot test's dom0 (lvmcheck)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision import inuse
from provision.cli import build_parser
from provision.domain import resize as domain_resize
from provision.errors import ProvisionError
from provision.guest import resize as guest_resize
from provision.sizes import MAX_BYTES, GiB, MiB
from provision.storage import resize
from provision.storage.resize import Facts, Partition, Wanted, plan, wanted

ROOT = Path(__file__).resolve().parents[2]


def ext_file(size=2 * GiB, fs_size=None, fs_min=100 * MiB, fstype="ext4", path="/srv/vm1.img") -> Facts:
    return Facts("file", path, size, fstype, size if fs_size is None else fs_size, 4096, fs_min)


def disk(size=2 * GiB, part_size=None, table="msdos", fs_size=None, fstype="ext4", number=1) -> Facts:
    start = MiB
    tail = 33 * 512 if table == "gpt" else 0
    part_size = size - start - tail if part_size is None else part_size
    fs = part_size // 4096 * 4096 if fs_size is None else fs_size
    return Facts("disk", "/srv/vm1-disk.img", size, fstype, fs, 4096, 50 * MiB,
                 part=Partition(number, start, part_size, table, True))


def lv(size=2 * GiB, fs_size=None, fstype="ext4") -> Facts:
    return Facts("lv", "/dev/vg0/vm1", size, fstype, size if fs_size is None else fs_size, 4096, 100 * MiB,
                 lv=("vg0", "vm1"))


def commands(steps) -> list[str]:
    """The tools a plan runs, in order (its comment lines left out)."""
    return [s.command.split()[0] if not s.command.startswith("set partition") else "partition"
            for s in steps if not s.command.startswith("#")]


# -- sizes ------------------------------------------------------------------------------------

def test_wanted_absolute_and_growth():
    assert wanted("4G", 2 * GiB) == Wanted(4 * GiB, "4G")
    assert wanted("+512M", 2 * GiB).size == 2 * GiB + 512 * MiB
    assert wanted(" +1G ", 0).size == GiB


@pytest.mark.parametrize("text, message", [
    ("-1G", "is negative"),
    ("+8E", "not a size"),
    ("+9000P", "too large"),
    ("99999999999999999999999999G", "too large"),
    ("1M", "too small"),
    ("lots", "not a size"),
    ("+0", "too small"),
])
def test_wanted_refuses(text, message):
    with pytest.raises(ProvisionError, match=message):
        wanted(text, 2 * GiB)


def test_growth_that_overflows_is_refused():
    with pytest.raises(ProvisionError, match="overflows"):
        wanted("+1P", MAX_BYTES - MiB)


# -- plans ------------------------------------------------------------------------------------

def test_grow_file_ext4_container_first():
    steps = plan(ext_file(), wanted("4G", 2 * GiB))
    assert [s.command for s in steps] == [
        f"truncate -s {4 * GiB} /srv/vm1.img", "e2fsck -f -p /srv/vm1.img", "resize2fs /srv/vm1.img"]


def test_shrink_file_ext4_filesystem_first():
    steps = plan(ext_file(), wanted("1G", 2 * GiB))
    assert [s.command for s in steps] == [
        "e2fsck -f -p /srv/vm1.img", f"resize2fs /srv/vm1.img {GiB // 1024}K", f"truncate -s {GiB} /srv/vm1.img"]


def test_rerun_after_the_container_grew_finishes_the_filesystem():
    # Interrupted after truncate: the file is 4G, its ext4 still 2G.
    assert commands(plan(ext_file(size=4 * GiB, fs_size=2 * GiB), wanted("4G", 4 * GiB))) == ["e2fsck", "resize2fs"]
    # Interrupted after the filesystem shrank: only the cut is left.
    assert commands(plan(ext_file(size=2 * GiB, fs_size=GiB), wanted("1G", 2 * GiB))) == ["truncate"]


def test_nothing_to_do():
    assert plan(ext_file(), wanted("2G", 2 * GiB)) == []
    # A size that is not a whole block: the filesystem already fills what it can.
    assert plan(ext_file(size=2 * GiB + 100, fs_size=2 * GiB), wanted(str(2 * GiB + 100) + "B", 2 * GiB)) == []


def test_shrink_below_the_data_is_refused():
    with pytest.raises(ProvisionError, match=r"cannot shrink to 64MiB: its ext4 holds data needing at least 100MiB"):
        plan(ext_file(), wanted("64M", 2 * GiB))


def test_xfs_grows_through_a_mount_and_never_shrinks():
    steps = plan(ext_file(fstype="xfs", fs_min=None), wanted("+1G", 2 * GiB))
    assert commands(steps) == ["truncate", "mount"] and "xfs_growfs -d" in steps[1].command
    with pytest.raises(ProvisionError, match="holds xfs, which cannot shrink"):
        plan(ext_file(fstype="xfs", fs_min=None), wanted("1G", 2 * GiB))


def test_grow_disk_image_partition_between_container_and_filesystem():
    steps = plan(disk(), wanted("+1G", 2 * GiB))
    assert commands(steps) == ["truncate", "partition", "e2fsck", "resize2fs"]
    assert steps[1].command.startswith(f"set partition 1 of /srv/vm1-disk.img to sectors 2048-{3 * GiB // 512 - 1} ")
    assert steps[2].command.startswith("# /dev/loopNp1: partition 1 of /srv/vm1-disk.img, through losetup")
    assert [s.command for s in steps[3:]] == ["e2fsck -f -p /dev/loopNp1", "resize2fs /dev/loopNp1"]


def test_grow_gpt_disk_moves_the_backup_table():
    steps = plan(disk(table="gpt"), wanted("3G", 2 * GiB))
    assert "sfdisk --relocate gpt-bak-std" in steps[0].command
    assert f"-{(3 * GiB - 33 * 512) // 512 - 1} " in steps[1].command  # ends before the backup GPT


def test_shrink_disk_image_filesystem_partition_then_container():
    assert commands(plan(disk(), wanted("1G", 2 * GiB))) == ["e2fsck", "resize2fs", "partition", "truncate"]
    with pytest.raises(ProvisionError, match="shrinking a GPT disk image is not supported"):
        plan(disk(table="gpt"), wanted("1G", 2 * GiB))


def test_rerun_after_the_disk_grew_grows_the_partition():
    facts = disk(size=3 * GiB, part_size=2 * GiB - MiB, fs_size=2 * GiB - MiB)
    assert commands(plan(facts, wanted("3G", 3 * GiB))) == ["partition", "e2fsck", "resize2fs"]


def test_disk_sizes_are_whole_sectors():
    with pytest.raises(ProvisionError, match="not a whole number of 512-byte sectors"):
        plan(disk(), wanted(f"{2 * GiB + 100}B", 2 * GiB))


def test_lv_grow_and_shrink():
    steps = plan(lv(), wanted("+1G", 2 * GiB))
    assert [s.command for s in steps] == [f"lvextend -L {3 * GiB}b vg0/vm1", "e2fsck -f -p /dev/vg0/vm1",
                                         "resize2fs /dev/vg0/vm1"]
    steps = plan(lv(), wanted("1G", 2 * GiB))
    assert [s.command for s in steps] == ["e2fsck -f -p /dev/vg0/vm1", f"resize2fs /dev/vg0/vm1 {GiB // 1024}K",
                                         f"lvreduce -y -L {GiB}b vg0/vm1"]


def test_online_lv_only_grows_the_volume():
    assert [s.command for s in plan(lv(), wanted("+1G", 2 * GiB), online=True)] == [f"lvextend -L {3 * GiB}b vg0/vm1"]
    with pytest.raises(ProvisionError, match="running guest: a disk in use is only grown"):
        plan(lv(), wanted("1G", 2 * GiB), online=True)


# -- targets ----------------------------------------------------------------------------------

def test_lv_names(tmp_path, monkeypatch):
    assert resize.lv_of("vg0/vm1") == ("vg0", "vm1")
    assert resize.lv_of("/dev/vg0/vm1") == ("vg0", "vm1")
    assert resize.lv_of("/dev/mapper/vg0-vm1") is None
    assert resize.lv_of("/srv/vm1.img") is None
    assert resize.lv_of("vg0/snapshot1") is None  # not an LV name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "vm1.img").write_bytes(b"")
    assert resize.lv_of("dir/vm1.img") is None  # a relative file path that exists


PARTS = [(1, MiB, GiB, False), (2, GiB + MiB, 256 * MiB, False)]


def test_only_the_last_partition_is_resized():
    assert resize._pick_partition("d.img", "msdos", PARTS, None).number == 2
    assert resize._pick_partition("d.img", "msdos", PARTS[:1], 1) == Partition(1, MiB, GiB, "msdos", True)
    with pytest.raises(ProvisionError, match="partition 1 of d.img is not the last one: partition 2 lies after it"):
        resize._pick_partition("d.img", "msdos", PARTS, 1)
    with pytest.raises(ProvisionError, match="has no partition 3"):
        resize._pick_partition("d.img", "msdos", PARTS, 3)
    with pytest.raises(ProvisionError, match="extended or logical"):
        resize._pick_partition("d.img", "msdos", [(5, MiB, GiB, True)], None)
    with pytest.raises(ProvisionError, match="only msdos and gpt"):
        resize._pick_partition("d.img", "mac", PARTS, None)


def test_missing_target_and_plain_block_device(tmp_path):
    with pytest.raises(ProvisionError, match="does not exist"):
        resize.inspect(str(tmp_path / "none.img"))
    with pytest.raises(ProvisionError, match="neither an image file nor an LV"):
        resize.inspect("/dev/null")


def test_xl_list_names():
    text = ("Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
            "Domain-0                                     0  1024     2     r-----      12.0\n"
            "vm1                                          3   512     1     -b----       1.2\n")
    assert inuse.parse_xl_list(text) == {"Domain-0": 0, "vm1": 3}


def test_refused_only_for_a_running_domain(tmp_path, monkeypatch):
    img = tmp_path / "vm1.img"
    img.write_bytes(b"")
    xen = tmp_path / "xen"
    xen.mkdir()
    (xen / "vm1.cfg").write_text(f'name = "vm1"\ndisk = ["format=raw, vdev=xvda1, access=rw, target={img}"]\n')
    monkeypatch.setenv("XEN_PROVISION_XEN_DIR", str(xen))
    facts = ext_file(path=str(img))
    resize.refuse_in_use(facts, running=set())          # a config of a stopped domain is no user
    resize.refuse_in_use(facts, running={"vm1"}, domain="vm1")  # its own disk, grown online
    with pytest.raises(ProvisionError, match=r"used read-write by domain vm1 .*, running$"):
        resize.refuse_in_use(facts, running={"vm1", "vm2"})
    with pytest.raises(ProvisionError, match="perhaps running"):
        resize.refuse_in_use(facts, running=None)


# -- facts file, domain disks, the command line -------------------------------------------------

def test_record_size_in_the_facts_file(tmp_path):
    img = tmp_path / "vm1.img"
    img.write_bytes(b"")
    side = tmp_path / "vm1.img.json"
    side.write_text(json.dumps({"name": "vm1", "disks": [
        {"role": "root", "path": str(img), "size": GiB},
        {"role": "swap", "path": str(tmp_path / "vm1-swap.img"), "size": 128 * MiB}]}))
    assert guest_resize.record_size(ext_file(size=3 * GiB, path=str(img))) == side
    disks = json.loads(side.read_text())["disks"]
    assert [d["size"] for d in disks] == [3 * GiB, 128 * MiB]
    assert guest_resize.record_size(ext_file(path=str(tmp_path / "other.img"))) is None


def test_record_size_of_a_disk_image_is_its_root_partition(tmp_path):
    facts = disk()
    facts = Facts("disk", str(tmp_path / "d.img"), facts.size, "ext4", facts.fs_size, 4096, None, part=facts.part)
    side = tmp_path / "d.img.json"
    side.write_text(json.dumps({"disks": [{"role": "disk", "path": facts.path, "size": GiB,
                                           "partitions": {"root": 1, "swap": 2}}]}))
    guest_resize.record_size(facts)
    assert json.loads(side.read_text())["disks"][0]["size"] == facts.part.size


def _config(tmp_path, disks):
    return inuse.DomainConfig(tmp_path / "vm1.cfg", "vm1", disks)


def test_domain_disk_lookup(tmp_path):
    from provision.domain.model import parse_disk

    cfg = _config(tmp_path, [parse_disk("format=raw, vdev=xvda1, access=rw, target=/srv/vm1.img"),
                             parse_disk("format=qcow2, vdev=xvdb, access=rw, target=/srv/b.qcow2")])
    assert domain_resize.find_disk([cfg], "vm1", "xvda1")[1].target == "/srv/vm1.img"
    with pytest.raises(ProvisionError, match="no domain config names a domain 'vm2'"):
        domain_resize.find_disk([cfg], "vm2", "xvda1")
    with pytest.raises(ProvisionError, match="domain vm1 has no disk xvdc"):
        domain_resize.find_disk([cfg], "vm1", "xvdc")
    with pytest.raises(ProvisionError, match="is qcow2: only raw disks"):
        domain_resize.find_disk([cfg], "vm1", "xvdb")


def test_running_guest_file_disk_is_refused(run_cli, tmp_path, monkeypatch):
    img = tmp_path / "vm1.img"
    img.write_bytes(b"\0" * 4096)
    with pytest.raises(ProvisionError, match="vm1 is running and its disk xvda1 is a file .* loop-backed"):
        domain_resize.online_refusal(str(img), "vm1", "xvda1")
    with pytest.raises(ProvisionError, match="is not an LV"):
        domain_resize.online_refusal("/dev/sdb1", "vm1", "xvda1")
    domain_resize.online_refusal("/dev/vg0/vm1", "vm1", "xvda1")
    # The command, with xl saying vm1 runs: refused before the disk is read.
    xen = tmp_path / "xen"
    xen.mkdir()
    (xen / "vm1.cfg").write_text(f'name = "vm1"\ndisk = ["format=raw, vdev=xvda1, access=rw, target={img}"]\n')
    monkeypatch.setattr(inuse, "running_domains", lambda: {"vm1"})
    args = build_parser().parse_args(["domain", "resize", "vm1", "--disk", "xvda1", "--size", "+1G",
                                      "--config-dir", str(xen)])
    with pytest.raises(ProvisionError, match="vm1 is running and its disk xvda1 is a file"):
        args.func(args)
    monkeypatch.setattr(inuse, "running_domains", lambda: None)
    with pytest.raises(ProvisionError, match="cannot tell whether vm1 is running"):
        args.func(args)
    assert img.stat().st_size == 4096


def test_image_parser_keeps_its_flat_form_and_gains_actions():
    parser = build_parser()
    args = parser.parse_args(["image", "--debootstrap", "bookworm", "--file", "x.img", "--dry-run"])
    assert args.func.__name__ == "run_image" and args.image_action is None
    args = parser.parse_args(["image", "resize", "vm1.img", "--size", "+2G", "--dry-run"])
    assert args.func is guest_resize.run_resize and (args.target, args.size, args.dry_run) == ("vm1.img", "+2G", True)
    args = parser.parse_args(["domain", "resize", "vm1", "--disk", "xvda1", "--size", "4G"])
    assert args.func is domain_resize.cmd_resize and args.disk == "xvda1"


def test_cli_refusals_are_one_line(run_cli, tmp_path):
    img = tmp_path / "junk.img"
    img.write_bytes(b"\0" * 65536)
    for argv, message in (
        (["image", "resize", img, "--size", "-1G"], "is negative"),
        (["image", "resize", img, "--size", "2G"], "holds no filesystem"),
        (["image", "resize", tmp_path / "none.img", "--size", "2G"], "does not exist"),
        (["image", "resize", img, "--size", "2G", "--partition", "0"], "not a partition number"),
    ):
        proc = run_cli(*argv)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("error: ") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert img.read_bytes() == b"\0" * 65536


def test_resize_imports_without_pyparted():
    """The LV path runs in the boot test's dom0: no pyparted there."""
    code = ("import sys\n"
            "for m in ('parted', '_ped', 'requests', 'doit'):\n"
            "    sys.modules[m] = None\n"
            "import provision.storage.resize, provision.proof.indom0.lvmcheck\n"
            "from provision.cli import build_parser\n"
            "build_parser().parse_args(['image', 'resize', 'vg/lv', '--size', '+8M'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr


def test_running_guest_lv_grows_online_and_the_guest_grows_its_filesystem(tmp_path, monkeypatch, capsys):
    """The online path without device-mapper: the LV's facts made by hand, the steps
    recorded instead of run (the boot test's dom0 runs lvextend for real)."""
    xen = tmp_path / "xen"
    xen.mkdir()
    (xen / "vm1.cfg").write_text('name = "vm1"\ndisk = ["format=raw, vdev=xvda1, access=rw, target=/dev/vg0/vm1"]\n')
    monkeypatch.setattr(inuse, "running_domains", lambda: {"vm1"})
    monkeypatch.setattr(resize, "inspect", lambda target, partition=None: lv())
    done = []
    monkeypatch.setattr(resize, "apply", lambda facts, steps: done.extend(s.command for s in steps))
    monkeypatch.setattr(resize, "refuse_in_use", lambda facts, running, domain=None: done.append(f"checked {domain}"))
    args = build_parser().parse_args(["domain", "resize", "vm1", "--disk", "xvda1", "--size", "+1G",
                                      "--config-dir", str(xen), "--dry-run"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines() == [f"lvextend -L {3 * GiB}b vg0/vm1",
                                                    "# then, inside vm1: resize2fs /dev/xvda1"]
    args.dry_run = False
    assert args.func(args) == 0
    assert done == ["checked vm1", "checked vm1", f"lvextend -L {3 * GiB}b vg0/vm1"]  # the dry run checks too
    args.size = "1G"
    with pytest.raises(ProvisionError, match="running guest: a disk in use is only grown"):
        args.func(args)
