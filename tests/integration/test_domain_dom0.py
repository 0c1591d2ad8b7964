"""The dom0 checks with real loop devices, mounts and swap: a disk dom0 is using is refused."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402

pytestmark = pytest.mark.integration

KERNEL = "/boot/vmlinuz-xenU"  # not checked here (--no-kernel-check)


def sh(*argv, check=True):
    return subprocess.run(list(map(str, argv)), check=check, capture_output=True, text=True)


@pytest.fixture(scope="module")
def checker():
    return xlcheck.build()


@pytest.fixture
def root(tmp_path, checker):
    yield tmp_path / "root"
    xlcheck.accept_all(checker, tmp_path / "root/etc/xen")  # every config made, Xen accepts


@pytest.fixture
def mounted(tmp_path, root_required):
    """An ext4 image on a loop device, mounted read-write; everything undone afterwards."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    sh("mkfs.ext4", "-q", "-F", img)
    loop = sh("losetup", "-f", "--show", img).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        sh("mount", loop, mnt)
        yield img, Path(loop), mnt
    finally:
        sh("umount", mnt, check=False)
        sh("losetup", "-d", loop, check=False)


def create(run_cli, root, name, disk):
    # --config-dir, not --root: the dom0 checks are about this live host (an offline
    # --root is a different machine's disk, and skips them).
    return run_cli("domain", "create", "--config-dir", root / "etc/xen", "--name", name, "--memory", "64",
                   "--kernel", KERNEL, "--no-kernel-check", "--disk", disk)


def test_refuses_a_device_dom0_has_mounted(run_cli, root, mounted):
    img, loop, mnt = mounted
    for access in ("rw", "ro"):
        proc = create(run_cli, root, "g", f"vdev=xvda, access={access}, target={loop}")
        assert proc.returncode != 0
        assert f"disk {loop} is in use in dom0: {loop} is mounted on {mnt} read-write" in proc.stderr
    # The image file behind the loop device is the same disk.
    proc = create(run_cli, root, "g", f"vdev=xvda, access=rw, target={img}")
    assert proc.returncode != 0 and f"is in use in dom0: {img} is mounted on {mnt}" in proc.stderr
    assert not root.exists()  # refused: not even the config directory or its lock was made


def test_refuses_another_loop_device_on_the_mounted_file(run_cli, root, mounted):
    """dom0 mounts the image through one loop device; a guest given a second one on the
    same file would write the same blocks."""
    img, loop, mnt = mounted
    second = sh("losetup", "-f", "--show", img).stdout.strip()
    try:
        proc = create(run_cli, root, "g", f"vdev=xvda, access=rw, target={second}")
        assert proc.returncode != 0, proc.stderr
        assert f"disk {second} is in use in dom0: {img} is mounted on {mnt} read-write" in proc.stderr
    finally:
        sh("losetup", "-d", second, check=False)
    assert not (root / "etc/xen/g.cfg").exists()


def test_loop_device_and_its_file_are_one_disk_between_domains(run_cli, root, tmp_path, root_required,
                                                              checker):
    img = tmp_path / "shared.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    loop = sh("losetup", "-f", "--show", img).stdout.strip()
    try:
        assert create(run_cli, root, "a", f"vdev=xvda, access=rw, target={img}").returncode == 0
        for access in ("rw", "ro"):
            proc = create(run_cli, root, "b", f"vdev=xvda, access={access}, target={loop}")
            assert proc.returncode != 0
            assert f"disk {loop} is used read-write by domain a as {img}" in proc.stderr
        # Read-only everywhere is fine, whichever spelling each domain uses.
        ro = tmp_path / "ro.img"
        with open(ro, "wb") as f:
            f.truncate(1 << 20)
        ro_loop = sh("losetup", "-f", "--show", ro).stdout.strip()
        try:
            assert create(run_cli, root, "c", f"vdev=xvda, access=ro, target={ro}").returncode == 0
            proc = create(run_cli, root, "d", f"vdev=xvda, access=ro, target={ro_loop}")
            assert proc.returncode == 0, proc.stderr
            proc = create(run_cli, root, "e", f"vdev=xvda, access=rw, target={ro_loop}")
            assert proc.returncode != 0 and f"is used read-only by domain c as {ro}" in proc.stderr
        finally:
            sh("losetup", "-d", ro_loop, check=False)
    finally:
        sh("losetup", "-d", loop, check=False)
    assert sorted(p.name for p in (root / "etc/xen").glob("*.cfg")) == ["a.cfg", "c.cfg", "d.cfg"]
    assert f"target={ro_loop} format=raw access=ro" in xlcheck.accept(checker, root / "etc/xen/d.cfg")


def test_read_only_mount_allows_read_only_guests(run_cli, root, mounted, checker):
    img, loop, mnt = mounted
    sh("mount", "-o", "remount,ro", mnt)
    proc = create(run_cli, root, "g", f"vdev=xvda, access=rw, target={loop}")
    assert proc.returncode != 0 and "read-only" in proc.stderr
    proc = create(run_cli, root, "g", f"vdev=xvda, access=ro, target={loop}")
    assert proc.returncode == 0, proc.stderr
    seen = xlcheck.accept(checker, root / "etc/xen/g.cfg")
    assert f"disk 0: vdev=xvda target={loop} format=raw access=ro\n" in seen


def test_offline_root_skips_dom0_checks(run_cli, tmp_path, mounted, checker):
    img, loop, mnt = mounted
    image_root = tmp_path / "image"
    (image_root / "boot").mkdir(parents=True)
    (image_root / "boot/vmlinuz-xenU").write_text("k")
    proc = run_cli("domain", "create", "--root", image_root, "--name", "g", "--memory", "64",
                   "--kernel", KERNEL, "--disk", f"vdev=xvda, access=rw, target={loop}")
    assert proc.returncode == 0, proc.stderr
    assert f"disk 0: vdev=xvda target={loop} format=raw access=rw\n" in xlcheck.accept(
        checker, image_root / "etc/xen/g.cfg")


def test_unmounted_device_is_fine(run_cli, root, tmp_path, root_required):
    img = tmp_path / "free.img"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    loop = sh("losetup", "-f", "--show", img).stdout.strip()
    try:
        proc = create(run_cli, root, "g", f"vdev=xvda, access=rw, target={loop}")
        assert proc.returncode == 0, proc.stderr
    finally:
        sh("losetup", "-d", loop, check=False)


def test_refuses_dom0_swap(run_cli, root, tmp_path, root_required):
    swap = tmp_path / "swapfile"
    with open(swap, "wb") as f:
        f.write(b"\0" * (8 << 20))  # swapon refuses sparse files
    swap.chmod(0o600)
    sh("mkswap", swap)
    on = sh("swapon", swap, check=False)
    if on.returncode != 0:
        pytest.skip(f"this kernel/container does not allow swapon: {on.stderr.strip()}")
    try:
        proc = create(run_cli, root, "g", f"vdev=xvda, access=rw, target={swap}")
        assert proc.returncode != 0 and f"is in use in dom0: {swap} is used as swap" in proc.stderr
    finally:
        with contextlib.suppress(Exception):
            sh("swapoff", swap)
