"""Storage with the real tools as root: loop devices with partition scanning, mounts,
populating through a mount, safety checks against live mounts, and the undo guarantee
(runs interrupted by SIGINT/SIGTERM at each step leave no mount, loop device or file)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision import inuse
from provision.errors import ProvisionError
from provision.sizes import MiB
from provision.storage import (
    PartSpec,
    attach_loop,
    create_image,
    format_partitions,
    loop_device,
    make_fs,
    mounted,
    partition_image,
)
from provision.undo import UndoStack

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root_required")]
ROOT = Path(__file__).resolve().parents[2]


def loops_for(folder: Path) -> list[str]:
    """Loop devices whose backing file lies in ``folder``."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(str(folder)):
                found.append(backing.parent.parent.name)
        except OSError:
            pass
    return found


def mounts_matching(text: str) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if text in line]


def temp_mountpoints() -> set[str]:
    return {p.name for p in Path("/tmp").glob("xen-provision-mnt.*")}


def blkid(dev, tag):
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", tag, str(dev)],
                          capture_output=True, text=True).stdout.strip()


def test_loop_partscan_nodes_and_detach(tmp_path):
    img = tmp_path / "disk.img"
    create_image(img, "200M")
    infos = partition_image(img, "gpt", [PartSpec("64M", fs="ext4", label="boot"), PartSpec(None, fs="swap")])
    format_partitions(img, infos)
    assert loops_for(tmp_path) == []
    with loop_device(img, partscan=True) as loop:
        assert loops_for(tmp_path) == [Path(loop).name]
        assert blkid(f"{loop}p1", "TYPE") == "ext4"
        assert blkid(f"{loop}p1", "LABEL") == "boot"
        assert blkid(f"{loop}p2", "TYPE") == "swap"
        size = int(subprocess.run(["blockdev", "--getsize64", f"{loop}p1"], capture_output=True,
                                  text=True, check=True).stdout)
        assert size == 64 * MiB
    assert loops_for(tmp_path) == []


def test_mounted_is_always_undone(tmp_path):
    img = tmp_path / "root.img"
    create_image(img, "64M")
    make_fs(img, "ext4")
    before = temp_mountpoints()
    with pytest.raises(RuntimeError):
        with mounted(img) as mnt:
            (mnt / "hello").write_text("world\n")
            assert mounts_matching(str(mnt))
            raise RuntimeError("a step failed")
    assert not mounts_matching(str(mnt)) and not mnt.exists()
    assert loops_for(tmp_path) == [] and temp_mountpoints() == before
    out = subprocess.run(["debugfs", "-R", "cat /hello", str(img)], capture_output=True, text=True)
    assert out.stdout == "world\n"


def test_a_growable_ext4_gets_4k_blocks_however_small(tmp_path):
    """mke2fs's "small" profile (under 512 MiB) means 1 KiB blocks for good; a guest root
    that will be grown gets the default profile's 4 KiB blocks."""
    from provision.storage.resize import fs_geometry

    small, root = tmp_path / "small.img", tmp_path / "root.img"
    for image in (small, root):
        image.touch()
        os.truncate(image, 384 * MiB)
    make_fs(small, "ext4")
    make_fs(root, "ext4", growable=True)
    assert (fs_geometry(str(small), "ext4")[1], fs_geometry(str(root), "ext4")[1]) == (1024, 4096)


def test_clone_of_a_source_dom0_writes_is_refused(tmp_path, run_cli):
    """storage check calls an image mounted read-write in dom0 in use; storage clone of it
    exited 0 without a word and copied a filesystem being written. Same answer now; a
    read-only mount may be cloned."""
    img = tmp_path / "root.img"
    create_image(img, "64M")
    make_fs(img, "ext4")
    with mounted(img) as mnt:
        check = run_cli("storage", "check", img)
        assert check.returncode != 0 and f"{img} is in use in dom0: {img} is mounted on {mnt} read-write" in check.stderr
        proc = run_cli("storage", "clone", img, tmp_path / "copy.img")
        assert proc.returncode != 0
        assert proc.stderr.splitlines()[0] == (f"error: clone source {img} is in use in dom0: "
                                               f"{img} is mounted on {mnt} read-write"), proc.stderr
        assert not (tmp_path / "copy.img").exists() and not list(tmp_path.glob(".copy.img.*"))
    with mounted(img, options=["ro"]):
        proc = run_cli("storage", "clone", img, tmp_path / "copy.img")
        assert proc.returncode == 0, proc.stderr
    loop = subprocess.run(["losetup", "-f", "--show", img], check=True, capture_output=True, text=True).stdout.strip()
    try:  # attached read-write: whoever has the loop device may be writing it
        proc = run_cli("storage", "clone", img, tmp_path / "copy2.img")
        assert proc.returncode != 0 and f"{img} is attached to {loop}" in proc.stderr
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_mounted_device_is_refused(tmp_path, run_cli):
    img = tmp_path / "root.img"
    create_image(img, "64M")
    make_fs(img, "ext4")
    with mounted(img) as mnt:
        loop = f"/dev/{loops_for(tmp_path)[0]}"
        with pytest.raises(ProvisionError, match="is mounted on .* read-write"):
            inuse.refuse(loop, writing=True)
        with pytest.raises(ProvisionError, match="is mounted on .* read-write"):
            make_fs(loop, "ext4")
        with pytest.raises(ProvisionError, match=f"{img} is in use in dom0: {img} is mounted on {mnt} read-write"):
            make_fs(img, "ext4")
        with pytest.raises(ProvisionError):
            with mounted(loop):
                pass
        proc = run_cli("storage", "check", loop)
        assert proc.returncode != 0 and re.search("is mounted on .* read-write", proc.stderr)
        proc = run_cli("storage", "create", img, "--size", "64M", "--force")
        assert proc.returncode != 0 and "in use" in proc.stderr
        proc = run_cli("storage", "partition", loop, "--part", "rest,fs=ext4", "--force")
        assert proc.returncode != 0 and re.search("is mounted on .* read-write", proc.stderr)
        assert proc.stderr.count("error: ") == 1
        assert (mnt / "lost+found").is_dir()  # the filesystem is untouched
    assert blkid(img, "TYPE") == "ext4"


def test_populate_through_mount_keeps_owners(tmp_path, run_cli):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "shadow").write_text("root:*:1::::::\n")
    os.chown(src / "etc" / "shadow", 0, 42)
    os.chmod(src / "etc" / "shadow", 0o640)
    img = tmp_path / "root.img"
    run_cli("storage", "create", img, "--size", "300M", "--fs", "xfs", "--label", "root",
            "--populate", src, check=True)
    assert blkid(img, "TYPE") == "xfs"
    with mounted(img, options=("ro",)) as mnt:
        st = (mnt / "etc" / "shadow").stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 42, 0o640)
        assert (mnt / "etc" / "shadow").read_text() == "root:*:1::::::\n"
    assert loops_for(tmp_path) == []


def test_cli_partitioned_disk(tmp_path, run_cli):
    img = tmp_path / "host.img"
    proc = run_cli("storage", "partition", img, "--size", "600M", "--table", "gpt",
                   "--part", "1M,type=bios_grub", "--part", "200M,fs=ext4,label=boot",
                   "--part", "rest,fs=btrfs,label=root", check=True)
    assert proc.stdout.splitlines()[1].startswith("2 start=2097152 size=209715200 type=linux fs=ext4")
    with loop_device(img, partscan=True, read_only=True) as loop:
        assert blkid(f"{loop}p2", "LABEL") == "boot"
        assert blkid(f"{loop}p3", "TYPE") == "btrfs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.img"]


# --- the undo guarantee ---------------------------------------------------------------

def _interrupt_at(step: str, sig: int, argv: list, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XEN_PROVISION_PAUSE_AT=step,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "provision", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.strip() == f"paused at {step}":
                break
            assert time.monotonic() < deadline, "no pause"
        else:
            pytest.fail(f"never reached step {step}: {''.join(seen)}")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, "".join(seen) + err)


CREATE_XFS = ["image-created", "mkfs-done", "loop-attached", "mounted", "populated"]
PARTITION = ["image-created", "partitioned", "loop-attached", "mkfs-done"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command,step", [("create", s) for s in CREATE_XFS]
                         + [("partition", s) for s in PARTITION] + [("clone", "cloned")])
def test_interrupted_run_leaves_nothing(tmp_path, command, step, sig):
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("data\n")
    if command == "create":
        argv = ["storage", "create", work / "vm.img", "--size", "300M", "--fs", "xfs", "--populate", src]
    elif command == "partition":
        argv = ["storage", "partition", work / "disk.img", "--size", "300M", "--table", "gpt",
                "--part", "100M,fs=ext4", "--part", "rest,fs=swap"]
    else:
        create_image(tmp_path / "base.img", "64M")
        argv = ["storage", "clone", tmp_path / "base.img", work / "vm.img"]
    mountpoints = temp_mountpoints()
    done = _interrupt_at(step, sig, argv, tmp_path)
    assert done.returncode == (130 if sig == signal.SIGINT else 128 + sig), done.stderr
    assert "has been undone" in done.stderr
    assert list(work.iterdir()) == [], "files left behind"
    assert loops_for(tmp_path) == [], "loop device left attached"
    assert mounts_matching(str(tmp_path)) == [] and temp_mountpoints() == mountpoints, "mount left behind"
    assert [p.name for p in Path("/dev").glob("loop*p*") if not p.is_block_device()] == []


def test_interrupt_keeps_an_existing_image(tmp_path):
    """--force over an existing image: interrupted, the old image is still there, unchanged."""
    img = tmp_path / "vm.img"
    create_image(img, "64M")
    make_fs(img, "ext4", label="old")
    before = img.read_bytes()
    done = _interrupt_at("mkfs-done", signal.SIGTERM,
                         ["storage", "create", img, "--size", "300M", "--fs", "xfs", "--force"], tmp_path)
    assert done.returncode == 143
    assert img.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm.img"]


def test_clone_reflinks_on_xfs(tmp_path):
    """On a filesystem that shares extents the clone is a reflink: instant, no new space."""
    from provision.storage import clone_file

    host = tmp_path / "xfs.img"
    create_image(host, "1G")
    make_fs(host, "xfs")
    with mounted(host) as mnt:
        src = mnt / "guest.img"
        create_image(src, "512M")
        with open(src, "r+b") as f:
            f.write(os.urandom(64 * MiB))
        os.sync()
        used = os.statvfs(mnt).f_bfree
        assert clone_file(src, mnt / "clone.img") == "reflink"
        os.sync()
        assert (mnt / "clone.img").read_bytes()[: 64 * MiB] == src.read_bytes()[: 64 * MiB]
        bsize = os.statvfs(mnt).f_frsize
        assert (used - os.statvfs(mnt).f_bfree) * bsize < 4 * MiB  # shared, not copied


def test_partition_nodes_made_when_udev_does_not(tmp_path):
    """Without udev/devtmpfs making /dev/loopNpM, we make the node from /sys and remove it again."""
    from provision.storage import loop as loopmod

    img = tmp_path / "disk.img"
    create_image(img, "64M")
    partition_image(img, "msdos", [PartSpec("16M"), PartSpec(None)])
    with UndoStack() as undo:
        loop = attach_loop(img, partscan=True, undo=undo)
        node = Path(f"{loop}p2")
        rdev = node.stat().st_rdev
        node.unlink()  # as if nothing had created it
        assert loopmod._ensure_partition_nodes(loop, 2) == [f"{loop}p1", str(node)]
        assert node.is_block_device() and node.stat().st_rdev == rdev
    assert not node.exists() and loops_for(tmp_path) == []


def test_partition_a_block_device(tmp_path):
    """The same on a disk (here a loop device): the kernel learns the new table at once."""
    img = tmp_path / "disk.img"
    create_image(img, "128M")
    with loop_device(img, partscan=True) as loop:
        infos = partition_image(loop, "gpt", [PartSpec("32M", fs="ext4", label="one"), PartSpec(None, fs="swap")])
        format_partitions(loop, infos)
        assert blkid(f"{loop}p1", "LABEL") == "one"
        assert blkid(f"{loop}p2", "TYPE") == "swap"
    dump = subprocess.run(["sfdisk", "-d", str(img)], capture_output=True, text=True, check=True).stdout
    assert "start=        2048, size=       65536" in dump


# --- review of issue 4: the gaps closed ---------------------------------------------

def test_swap_in_use_is_refused(tmp_path, run_cli):
    """A device or file dom0 swaps on (/proc/swaps) is never written."""
    img = tmp_path / "swapdev.img"
    create_image(img, "64M")
    swapfile = tmp_path / "swapfile.img"
    create_image(swapfile, "64M", preallocate=True)  # the kernel refuses swap files with holes
    with loop_device(img) as loop:
        subprocess.run(["mkswap", loop], check=True, capture_output=True)
        subprocess.run(["mkswap", swapfile], check=True, capture_output=True)
        subprocess.run(["swapon", loop], check=True)
        try:
            subprocess.run(["swapon", swapfile], check=True)
            try:
                with pytest.raises(ProvisionError, match="is used as swap"):
                    make_fs(loop, "ext4")
                proc = run_cli("storage", "partition", loop, "--part", "rest,fs=ext4", "--force")
                assert proc.returncode != 0
                assert proc.stderr.startswith(f"error: {loop} is in use in dom0: {loop} is used as swap")
                with pytest.raises(ProvisionError, match=f"in use in dom0: {swapfile} is used as swap"):
                    make_fs(swapfile, "ext4")
                proc = run_cli("storage", "create", swapfile, "--size", "8M", "--force")
                assert proc.returncode != 0 and f"{swapfile} is used as swap" in proc.stderr
            finally:
                subprocess.run(["swapoff", swapfile], check=True)
        finally:
            subprocess.run(["swapoff", loop], check=True)
        assert blkid(loop, "TYPE") == "swap"
    assert blkid(swapfile, "TYPE") == "swap" and swapfile.stat().st_size == 64 * MiB


def test_create_force_never_replaces_a_device_node(tmp_path, run_cli):
    img = tmp_path / "disk.img"
    create_image(img, "16M")
    with loop_device(img) as loop:
        proc = run_cli("storage", "create", loop, "--size", "1M", "--force")
        assert proc.returncode != 0 and "not a regular file" in proc.stderr
        assert Path(loop).is_block_device()
        proc = run_cli("storage", "clone", img, loop, "--force")
        assert proc.returncode != 0 and Path(loop).is_block_device()


def test_populate_from_tarball_through_a_mount(tmp_path, run_cli):
    """xfs has no offline populate: a tarball goes in through a loop mount, owners kept."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("vm1\n")
    os.chown(src / "etc" / "hostname", 7, 8)
    tarball = tmp_path / "root.tar"
    subprocess.run(["tar", "-C", src, "--numeric-owner", "-cf", tarball, "."], check=True)
    img = tmp_path / "root.img"
    run_cli("storage", "create", img, "--size", "300M", "--fs", "xfs", "--populate", tarball, check=True)
    with mounted(img, options=("ro",)) as mnt:
        st = (mnt / "etc" / "hostname").stat()
        assert (mnt / "etc" / "hostname").read_text() == "vm1\n" and (st.st_uid, st.st_gid) == (7, 8)
    assert loops_for(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["root.img", "root.tar", "src"]


def test_populate_btrfs_rootdir_without_mounting(tmp_path, monkeypatch):
    from provision.storage import fs as fsmod

    def no_mount(*args, **kwargs):
        raise AssertionError("btrfs is populated by mkfs.btrfs --rootdir, without a mount")

    src = tmp_path / "src"
    (src / "srv").mkdir(parents=True)
    (src / "srv" / "data").write_bytes(b"x" * 5000)
    img = tmp_path / "root.img"
    create_image(img, "300M")
    with monkeypatch.context() as m:
        m.setattr(fsmod, "mounted", no_mount)
        make_fs(img, "btrfs", label="root", populate=src)
    with mounted(img, options=("ro",)) as mnt:
        assert (mnt / "srv" / "data").read_bytes() == b"x" * 5000


def _btrfs_total(dev) -> int:
    out = subprocess.run(["btrfs", "inspect-internal", "dump-super", str(dev)], capture_output=True,
                         text=True, check=True).stdout
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("total_bytes")))


def test_grow_btrfs_offline_and_online(tmp_path):
    """lvextend --resizefs cannot grow btrfs (bookworm's fsadm does not know it): grow_btrfs
    does, through a temporary mount or on the live one. Here on a loop device grown in place."""
    from provision.storage.fs import grow_btrfs

    img = tmp_path / "btrfs.img"
    create_image(img, "300M")
    make_fs(img, "btrfs")
    with UndoStack() as undo:
        loop = attach_loop(img, undo=undo)
        os.truncate(img, 500 * MiB)
        subprocess.run(["losetup", "-c", loop], check=True)
        grow_btrfs(loop)  # not mounted: a temporary mount, undone
        assert _btrfs_total(loop) == 500 * MiB
        assert mounts_matching(loop) == []
        with mounted(loop) as mnt:
            os.truncate(img, 700 * MiB)
            subprocess.run(["losetup", "-c", loop], check=True)
            grow_btrfs(loop)  # mounted: online, where it is
            assert _btrfs_total(loop) == 700 * MiB
            assert os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize > 600 * MiB
    assert loops_for(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_repartition_puts_the_old_table_back(tmp_path, sig):
    """--force over an existing disk image, interrupted once the new table is written:
    the old table (and so the whole image) is as it was."""
    import hashlib

    img = tmp_path / "disk.img"
    create_image(img, "64M")
    format_partitions(img, partition_image(img, "msdos", [PartSpec("16M", fs="ext4"), PartSpec(None)]))
    before = hashlib.sha256(img.read_bytes()).hexdigest()
    done = _interrupt_at("partitioned", sig, ["storage", "partition", img, "--table", "gpt", "--force",
                                              "--part", "8M,fs=ext4", "--part", "rest,fs=swap"], tmp_path)
    assert done.returncode == (130 if sig == signal.SIGINT else 128 + sig), done.stderr
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.img"] and loops_for(tmp_path) == []
