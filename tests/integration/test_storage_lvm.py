"""LVM with real lvm2 on a loop device. PVs and VGs need no device-mapper and run
everywhere; LVs, snapshots, thin pools and extending need it and skip (saying why)
where the kernel lacks it; the QEMU boot test runs those in its guest."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.sizes import MiB
from provision.storage import (
    attach_loop,
    create_image,
    create_lv,
    create_thin_pool,
    detach_loop,
    extend_lv,
    lv_exists,
    make_fs,
    mounted,
    pvcreate,
    snapshot_lv,
    snapshot_usage,
    vg_free,
    vgcreate,
    watch_snapshot,
)
from provision.undo import UndoStack

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root_required")]


def _load_sibling(name: str):
    """The interrupt helper lives beside us in test_storage_devices.py (tests/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"_storage_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_interrupt_at = _load_sibling("test_storage_devices")._interrupt_at
_names = count()


def lvm(*argv) -> str:
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env).stdout


def pv_label(dev: str) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", dev], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def disk(tmp_path):
    """A 512 MiB loop device; whatever VG/PV the test made on it is removed afterwards."""
    img = tmp_path / "pv.img"
    create_image(img, "512M")
    loop = attach_loop(img)
    yield loop
    vg = lvm("pvs", "--noheadings", "-o", "vg_name", loop).strip()
    if vg:
        lvm("vgremove", "-y", "-f", vg)
    lvm("pvremove", "-y", "-ff", loop)
    detach_loop(loop)


@pytest.fixture
def vg_name():
    return f"xpt{os.getpid()}n{next(_names)}"


def test_pv_and_vg(disk, vg_name, run_cli):
    run_cli("storage", "lvm", "pv", disk, check=True)
    assert pv_label(disk) == "LVM2_member"
    run_cli("storage", "lvm", "vg", vg_name, disk, check=True)
    assert lvm("vgs", "--noheadings", "-o", "vg_name", vg_name).strip() == vg_name
    assert 500 * MiB < vg_free(vg_name) <= 512 * MiB

    proc = run_cli("storage", "lvm", "vg", vg_name, disk)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    # A VG without room: refused before lvcreate runs, with one line, nothing made.
    proc = run_cli("storage", "lvm", "lv", vg_name, "big", "--size", "1G")
    assert proc.returncode != 0 and "has no room" in proc.stderr
    assert proc.stderr.count("error: ") == 1
    assert lvm("lvs", "--noheadings", vg_name).strip() == ""


def test_pv_refuses_a_device_in_use(disk, tmp_path):
    make_fs(disk, "ext4")
    with pytest.raises(ProvisionError, match="already holds"):
        pvcreate([disk])
    assert pv_label(disk) == "ext4"
    with mounted(disk):
        with pytest.raises(ProvisionError, match="mounted on .* read-write"):
            pvcreate([disk], force=True)
    pvcreate([disk], force=True)
    assert pv_label(disk) == "LVM2_member"


def test_vgcreate_rolls_back_on_failure(disk, vg_name):
    with pytest.raises(RuntimeError):
        with UndoStack() as undo:
            vgcreate(vg_name, [disk], undo=undo)
            assert pv_label(disk) == "LVM2_member"
            raise RuntimeError("a later step failed")
    assert lvm("vgs", "--noheadings", vg_name).strip() == ""
    assert pv_label(disk) == ""  # the PV vgcreate made on the way is gone too


def test_vg_refuses_a_device_holding_a_filesystem(disk, vg_name, run_cli):
    """vgcreate -y would wipe a filesystem on a plain device without asking: we ask for --force."""
    make_fs(disk, "ext4", label="precious")
    proc = run_cli("storage", "lvm", "vg", vg_name, disk)
    assert proc.returncode != 0 and proc.stderr.startswith(f"error: {disk} already holds a filesystem")
    assert proc.stderr.count("error: ") == 1
    assert pv_label(disk) == "ext4" and lvm("vgs", "--noheadings", vg_name).strip() == ""
    run_cli("storage", "lvm", "vg", vg_name, disk, "--force", check=True)
    assert pv_label(disk) == "LVM2_member"
    assert lvm("vgs", "--noheadings", "-o", "vg_name", vg_name).strip() == vg_name


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("step", ["pv-created", "vg-created"])
def test_interrupted_lvm_leaves_nothing(disk, vg_name, tmp_path, step, sig):
    argv = ["storage", "lvm", "pv", disk] if step == "pv-created" else ["storage", "lvm", "vg", vg_name, disk]
    done = _interrupt_at(step, sig, argv, tmp_path)
    assert done.returncode in (130, 128 + sig) and "has been undone" in done.stderr
    assert pv_label(disk) == ""
    assert lvm("vgs", "--noheadings", vg_name).strip() == ""


# --- needs device-mapper -----------------------------------------------------------------

@pytest.fixture
def vg(disk, vg_name, device_mapper_required):
    vgcreate(vg_name, [disk])
    return vg_name


def test_lv_snapshot_clone_and_fill_watch(vg, run_cli):
    run_cli("storage", "lvm", "lv", vg, "template", "--size", "64M", "--fs", "ext4", "--label", "tmpl", check=True)
    dev = f"/dev/{vg}/template"
    assert pv_label(dev) == "ext4"
    with mounted(dev) as mnt:
        (mnt / "marker").write_text("template\n")
    path = snapshot_lv(vg, "template", "clone1", "16M")
    assert path == f"/dev/{vg}/clone1"
    with mounted(path) as mnt:
        assert (mnt / "marker").read_text() == "template\n"  # a copy-on-write clone
        with open(mnt / "fill", "wb") as f:
            f.write(os.urandom(12 * MiB))
            f.flush()
            os.fsync(f.fileno())
    usage = snapshot_usage(vg, "clone1")
    assert usage > 50
    proc = run_cli("storage", "fill", vg, "clone1", check=True)
    assert proc.stdout.startswith(f"{vg}/clone1 ")
    watch_snapshot(vg, "clone1", threshold=50, extend_by="32M", once=True)
    assert snapshot_usage(vg, "clone1") < usage  # extended before it filled
    assert int(lvm("lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size", f"{vg}/clone1")) >= 48 * MiB
    proc = run_cli("storage", "lvm", "lv", vg, "template", "--size", "8M")
    assert proc.returncode != 0 and "already exists" in proc.stderr
    proc = run_cli("storage", "lvm", "extend", vg, "template", "--size", "+8M")
    assert proc.returncode != 0 and "origin of snapshots" in proc.stderr


def test_a_snapshot_with_room_for_its_whole_origin_is_not_extended_again(vg, run_cli):
    """lvextend caps a snapshot at what a copy of all its origin needs and exits 0: the
    real size is reported, and past it the watcher stops extending (it cannot fill)."""
    make_fs(create_lv(vg, "small", "16M"), "ext4")
    snap = snapshot_lv(vg, "small", "snap", "8M")
    # Its room grows; the ext4 it shows is the origin's and is left alone (fsadm would fail).
    proc = run_cli("storage", "lvm", "extend", vg, "snap", "--size", "+4M", check=True)
    assert proc.stdout.strip() == "12MiB" and pv_label(snap) == "ext4"
    grown = extend_lv(vg, "snap", "+64M")
    assert 16 * MiB <= grown < 76 * MiB
    assert int(lvm("lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size", f"{vg}/snap")) == grown
    with pytest.raises(ProvisionError, match="cannot fill"):
        extend_lv(vg, "snap", "+8M")
    with open(snap, "r+b") as f:
        f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    assert snapshot_usage(vg, "snap") > 1
    # The default --extend-by 512M is more than the VG has: what it has is used.
    proc = run_cli("storage", "fill", vg, "snap", "--watch", "--once", "--threshold", "1", check=True)
    assert proc.stdout.startswith(f"{vg}/snap ") and "all the volume group has left" in proc.stderr
    assert "cannot fill" in proc.stderr
    proc = run_cli("storage", "lvm", "extend", vg, "snap", "--size", "+8M")
    assert proc.returncode != 0 and proc.stderr.count("error: ") == 1 and "cannot fill" in proc.stderr
    assert int(lvm("lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size", f"{vg}/snap")) == grown


def test_fill_watch_with_a_full_vg_warns_and_keeps_watching(vg, run_cli):
    create_lv(vg, "origin", "64M")
    snap = snapshot_lv(vg, "origin", "snap", "8M")
    create_lv(vg, "rest", vg_free(vg))
    assert vg_free(vg) == 0
    with open(snap, "r+b") as f:
        f.write(os.urandom(2 * MiB))
        os.fsync(f.fileno())
    proc = run_cli("storage", "fill", vg, "snap", "--watch", "--once", "--threshold", "10", check=True)
    assert "has no room left to extend it: add a PV now" in proc.stderr, proc.stderr
    assert int(lvm("lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size", f"{vg}/snap")) == 8 * MiB


def test_extend_grows_the_mounted_filesystem(vg):
    create_lv(vg, "data", "32M")
    make_fs(f"/dev/{vg}/data", "ext4")
    with mounted(f"/dev/{vg}/data") as mnt:
        before = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
        assert extend_lv(vg, "data", "+32M") == 64 * MiB
        after = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
    assert after > before + 24 * MiB
    with pytest.raises(ProvisionError, match="only grows"):
        extend_lv(vg, "data", "16M")
    with pytest.raises(ProvisionError, match="no room"):
        extend_lv(vg, "data", "+1G")


def test_extend_grows_btrfs(vg):
    """fsadm (lvextend --resizefs) knows no btrfs in bookworm's lvm2: extend_lv grows it itself."""
    create_lv(vg, "bt", "256M")  # the kernel resizes no btrfs below 256 MiB
    make_fs(f"/dev/{vg}/bt", "btrfs")
    assert extend_lv(vg, "bt", "+64M") == 320 * MiB
    with mounted(f"/dev/{vg}/bt") as mnt:
        assert os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize > 288 * MiB
        assert extend_lv(vg, "bt", "+64M") == 384 * MiB  # online
        assert os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize > 352 * MiB


def test_thin_pool_volume_and_snapshot(vg):
    create_thin_pool(vg, "pool", "64M")
    path = create_lv(vg, "thin1", "1G", thin_pool="pool")  # overcommitted: thin
    make_fs(path, "ext4")
    snap = snapshot_lv(vg, "thin1", "thin1snap")
    assert Path(snap).exists() and pv_label(snap) == "ext4"
    assert 0 <= snapshot_usage(vg, "pool") < 100


def test_lv_rolls_back(vg):
    with pytest.raises(RuntimeError):
        with UndoStack() as undo:
            create_lv(vg, "half", "16M", undo=undo)
            raise RuntimeError("a later step failed")
    assert not lv_exists(vg, "half")


def test_interrupted_lv_leaves_nothing(vg, tmp_path):
    done = _interrupt_at("lv-created", signal.SIGTERM, ["storage", "lvm", "lv", vg, "gone", "--size", "16M"], tmp_path)
    assert done.returncode == 143
    time.sleep(0.1)
    assert not lv_exists(vg, "gone")


def test_lv_without_device_mapper_is_one_clear_line(disk, vg_name, run_cli):
    """Where the kernel lacks device-mapper (our CI), lvcreate's failure is said plainly."""
    if subprocess.run(["dmsetup", "version"], capture_output=True).returncode == 0:
        pytest.skip("device-mapper works here; the LV tests above cover lvcreate")
    vgcreate(vg_name, [disk])
    proc = run_cli("storage", "lvm", "lv", vg_name, "vm1", "--size", "16M")
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[0] == "error: lvcreate failed: device-mapper is not available in this kernel"
    assert not lv_exists(vg_name, "vm1")


def test_lvmcheck_module(disk, device_mapper_required):
    """The end-to-end check the boot test runs in dom0 passes and leaves the disk empty."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "provision.proof.indom0.lvmcheck", disk], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0 and "LVM-CHECK-OK" in proc.stdout, proc.stdout + proc.stderr
    assert pv_label(disk) == ""
