"""``domain list`` and ``domain remove --purge`` on guests the real ``image`` made: a
bootstrapped file image with its swap image, and an NFS root tree (the host suite's
base is cached, so each takes about a second once test_debootstrap or any image run
has warmed it). Files, loop devices and mounts are real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_debootstrap import SBIN_PATH, host_suite

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "/boot/vmlinuz-xenU"


def cli(*args, check=True, env=None) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    p = subprocess.run([sys.executable, "-m", "provision", *map(str, args)], capture_output=True, text=True,
                       env=full, cwd=ROOT, timeout=1800)
    if check:
        assert p.returncode == 0, f"{args}: {p.stderr}"
    return p


@pytest.fixture
def host(tmp_path):
    """An offline host root with a bridge, and its image directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root (image chroots and uses loop devices); CI runs as root")
    root = tmp_path / "root"
    (root / "etc/network").mkdir(parents=True)
    (root / "etc/network/interfaces").write_text("auto xenbr0\niface xenbr0 inet dhcp\n    bridge_ports eth0\n")
    (root / "var/lib/xen/images").mkdir(parents=True)
    (root / "export").mkdir()
    return root


def make_guest(host: Path, name: str, address: str, *extra_disks: str) -> Path:
    img = host / f"var/lib/xen/images/{name}.img"
    cli("image", "--debootstrap", host_suite(), "--file", img, "--size", "1G", "--swap", "64M",
        "--hostname", name, "--ip", address)
    disks = [f"format=raw, vdev=xvda1, access=rw, target=/var/lib/xen/images/{name}.img",
             f"format=raw, vdev=xvda2, access=rw, target=/var/lib/xen/images/{name}-swap.img", *extra_disks]
    cli("domain", "create", "--root", host, "--from-image", img, "--memory", "256", "--kernel", KERNEL,
        "--no-kernel-check", "--autostart", *[a for d in disks for a in ("--disk", d)])
    return img


def snapshot(top: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
    return out


def test_list_then_purge_a_real_image_keeping_a_foreign_disk(host):
    foreign = host / "srv/data.img"
    foreign.parent.mkdir()
    subprocess.run(["truncate", "-s", "32M", foreign], check=True)
    img = make_guest(host, "vm1", "192.0.2.10/24", "format=raw, vdev=xvdb, access=rw, target=/srv/data.img")
    other = make_guest(host, "vm2", "192.0.2.11/24")
    swap = host / "var/lib/xen/images/vm1-swap.img"

    listed = json.loads(cli("domain", "list", "--root", host, "--json").stdout)["domains"]
    vm1 = next(d for d in listed if d["name"] == "vm1")
    assert [(d["vdev"], d["role"], d["owned"]) for d in vm1["disks"]] == [
        ("xvda1", "root", True), ("xvda2", "swap", True), ("xvdb", None, False)]
    root_disk = vm1["disks"][0]
    assert root_disk["size"] == 1 << 30 and root_disk["allocated"] == img.stat().st_blocks * 512
    assert 50 << 20 < root_disk["allocated"] < 1 << 30   # a bootstrapped system in a sparse image
    assert vm1["ips"] == ["192.0.2.10"] and vm1["autostart"] and vm1["state"] == "unknown"

    before = snapshot(host)
    dry = cli("domain", "remove", "--root", host, "vm1", "--purge", "--dry-run").stdout
    assert snapshot(host) == before
    assert f"would remove: {img} (root, 1GiB, made by image: {img}.json)\n" in dry
    assert f"would remove: {swap} (swap, 64MiB, made by image: {img}.json)\n" in dry
    assert f"kept: {foreign} (xvdb: not made for vm1 by image)\n" in dry

    p = cli("domain", "remove", "--root", host, "vm1", "--purge")
    assert f"kept: {foreign}" in p.stderr
    for gone in (img, swap, Path(f"{img}.json"), host / "etc/xen/vm1.cfg", host / "etc/xen/auto/vm1.cfg"):
        assert not os.path.lexists(gone), gone
    assert foreign.stat().st_size == 32 << 20
    assert other.is_file() and (host / "etc/xen/vm2.cfg").is_file() and (host / "etc/xen/auto/vm2.cfg").is_file()
    assert [d["name"] for d in json.loads(cli("domain", "list", "--root", host, "--json").stdout)["domains"]] == ["vm2"]


def test_an_image_attached_in_dom0_is_refused(host):
    img = make_guest(host, "vm1", "192.0.2.10/24")
    loop = subprocess.run(["losetup", "--find", "--show", img], capture_output=True, text=True,
                          check=True, env=dict(os.environ, PATH=SBIN_PATH)).stdout.strip()
    try:
        before = snapshot(host)
        p = cli("domain", "remove", "--root", host, "vm1", "--purge", check=False)
        assert p.returncode != 0 and p.stderr.startswith(f"error: {img} is in use in dom0: ")
        assert f"attached to {loop}" in p.stderr.splitlines()[0]
        assert snapshot(host) == before
    finally:
        subprocess.run(["losetup", "-d", loop], check=True, env=dict(os.environ, PATH=SBIN_PATH))
    cli("domain", "remove", "--root", host, "vm1", "--purge")
    assert not img.exists()


def test_purge_of_another_domains_disk_is_refused(host):
    img = make_guest(host, "vm1", "192.0.2.10/24")
    # Written by hand (domain create refuses it while vm1 writes the disk): an old xm config.
    (host / "etc/xen/reader.cfg").write_text(
        "name = 'reader'\nmemory = 128\nkernel = '/boot/vmlinuz-xenU'\n"
        "disk = ['file:/var/lib/xen/images/vm1.img,xvda1,r']\n")
    before = snapshot(host)
    p = cli("domain", "remove", "--root", host, "vm1", "--purge", check=False)
    assert p.returncode != 0
    assert p.stderr.splitlines()[0] == (f"error: {img} is used read-only by domain reader "
                                        f"({host / 'etc/xen/reader.cfg'})")
    assert snapshot(host) == before


def test_nfs_root_tree_and_export(host):
    tree = host / "export/nfs1"
    cli("image", "--debootstrap", host_suite(), "--dir", tree, "--hostname", "nfs1", "--ip", "192.0.2.20/24")
    cli("domain", "create", "--root", host, "--from-image", tree, "--memory", "256", "--kernel", KERNEL,
        "--no-kernel-check", "--nfs-server", "192.0.2.1", "--nfs-root", "/export/nfs1", "--exports",
        "--bridge", "xenbr0")
    exports = host / "etc/exports"
    assert exports.read_text() == "/export/nfs1 192.0.2.20(rw,sync,no_root_squash,no_subtree_check)\n"
    (d,) = json.loads(cli("domain", "list", "--root", host, "--json").stdout)["domains"]
    assert d["nfs_root"]["owned"] and d["ips"] == ["192.0.2.20"]
    cli("domain", "remove", "--root", host, "nfs1", "--purge")
    assert not tree.exists() and not Path(f"{tree}.json").exists() and exports.read_text() == ""
    assert list((host / "etc/xen").glob("*.cfg")) == []


@pytest.mark.parametrize("step,sig", [(1, signal.SIGKILL), (3, signal.SIGKILL), (4, signal.SIGTERM)])
def test_interrupted_purge_is_finished_by_a_second(host, step, sig):
    img = make_guest(host, "vm1", "192.0.2.10/24")
    env = dict(os.environ, PYTHONPATH=str(ROOT), XEN_PROVISION_PAUSE_AT=f"purge-step-{step}")
    p = subprocess.Popen([sys.executable, "-m", "provision", "domain", "remove", "--root", str(host), "vm1",
                          "--purge"], env=env, stderr=subprocess.PIPE, text=True)
    while f"paused at purge-step-{step}" not in (line := p.stderr.readline()):
        assert line
    p.send_signal(sig)
    p.communicate(timeout=60)
    assert p.returncode != 0
    journal = host / "etc/xen/.vm1.purge.json"
    assert journal.is_file()
    # The remainder never has a dangling autostart link, and xendomains sees no vm1.
    link = host / "etc/xen/auto/vm1.cfg"
    assert not link.is_symlink()
    assert (host / "etc/xen/vm1.cfg").exists() == (step < 2)
    cli("domain", "remove", "--root", host, "vm1", "--purge")
    assert not journal.exists() and not img.exists()
    assert sorted(p.name for p in (host / "var/lib/xen/images").iterdir()) == []


def test_lv_guest_is_purged_with_lvremove(host, tmp_path, device_mapper_required):
    """Skipped where device-mapper is missing (this kernel); runs where lvm2 can make volumes."""
    sbin = dict(os.environ, PATH=SBIN_PATH)
    backing = tmp_path / "pv.img"
    subprocess.run(["truncate", "-s", "2G", backing], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True,
                          check=True, env=sbin).stdout.strip()
    try:
        subprocess.run(["pvcreate", "-q", loop], check=True, env=sbin)
        subprocess.run(["vgcreate", "-q", "xpurge", loop], check=True, env=sbin)
        cli("image", "--debootstrap", host_suite(), "--lv", "xpurge/vm1", "--size", "1G", "--swap", "64M",
            "--hostname", "vm1", "--ip", "192.0.2.10/24")
        cli("domain", "create", "--root", host, "--from-image", "/dev/xpurge/vm1", "--memory", "256",
            "--kernel", KERNEL, "--no-kernel-check", "--bridge", "xenbr0")
        dry = cli("domain", "remove", "--root", host, "vm1", "--purge", "--dry-run").stdout
        assert "would remove: xpurge/vm1 (logical volume, root" in dry
        assert "would remove: xpurge/vm1-swap (logical volume, swap" in dry
        cli("domain", "remove", "--root", host, "vm1", "--purge")
        lvs = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", "xpurge"], capture_output=True, text=True,
                             env=sbin).stdout.split()
        assert lvs == [] and not (host / "etc/xen/vm1.cfg").exists()
    finally:
        subprocess.run(["vgremove", "-f", "-q", "xpurge"], env=sbin)
        subprocess.run(["losetup", "-d", loop], env=sbin)
