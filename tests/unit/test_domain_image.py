"""``domain create --from-image``: the sidecar that ``image --debootstrap`` really writes.

The sidecars here come from provision.guest's own writer (``sidecar_info``), for
each kind of target it makes (file image with swap, partitioned disk, LV, directory),
so a change on either side of that interface fails here. Every config is read by Xen's
own parser (tests/xlcheck).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from provision.guest import suites
from provision.guest.build import Target, sidecar_info
from provision.guest.configure import GuestSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402

KERNEL = "/boot/vmlinuz-xenU"




def write_sidecar(target: Target, suite: str, hostname: str, swap: bool = False) -> Path:
    info = sidecar_info({"arch": "i386"}, GuestSettings(hostname=hostname, swap=swap), target,
                        suites.lookup(suite))
    path = Path(target.sidecar)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


def configs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "etc/xen").glob("*.cfg")) if (root / "etc/xen").is_dir() else []


def test_file_image_with_swap_one_step(run_cli, root, tmp_path, checker):
    """sarge: root and swap images, console on hvc0 and vsyscall=emulate for its old glibc."""
    img = tmp_path / "sarge.img"
    write_sidecar(Target.file(img, "64M", swap="16M"), "sarge", "sarge.example.org", swap=True)
    proc = run_cli("domain", "create", "--root", root, "--from-image", img, "--memory", "128",
                   "--kernel", KERNEL, "--autostart")
    assert proc.returncode == 0, proc.stderr
    seen = xlcheck.accept(checker, root / "etc/xen/sarge.cfg")  # the name comes from the image
    assert f"disk 0: vdev=xvda1 target={img} format=raw access=rw\n" in seen
    assert f"disk 1: vdev=xvda2 target={tmp_path / 'sarge-swap.img'} format=raw access=rw\n" in seen
    assert "root=/dev/xvda1 ro\n" in seen
    assert "extra=console=hvc0 vsyscall=emulate\n" in seen
    assert (root / "etc/xen/auto/sarge.cfg").is_file()


def test_current_release_needs_no_vsyscall(run_cli, root, tmp_path, checker):
    img = tmp_path / "web.img"
    write_sidecar(Target.file(img, "64M"), "bookworm", "web")
    run_cli("domain", "create", "--root", root, "--from-image", img, "--memory", "256",
            "--kernel", KERNEL, check=True)
    seen = xlcheck.accept(checker, root / "etc/xen/web.cfg")
    assert "extra=console=hvc0\n" in seen and "disk 1:" not in seen


def test_partitioned_disk_image(run_cli, root, tmp_path, checker):
    img = tmp_path / "whole.img"
    write_sidecar(Target.disk(img, "64M", swap="16M"), "bookworm", "whole", swap=True)
    run_cli("domain", "create", "--root", root, "--from-image", img, "--memory", "256",
            "--kernel", KERNEL, check=True)
    seen = xlcheck.accept(checker, root / "etc/xen/whole.cfg")
    # One whole disk; the guest finds root on its first partition.
    assert f"disk 0: vdev=xvda target={img} format=raw access=rw\n" in seen
    assert "root=/dev/xvda1 ro\n" in seen and "disk 1:" not in seen


@pytest.mark.parametrize("spelling", ["/dev/vg0/guest", "vg0/guest"])
def test_lv_image_found_by_its_device(run_cli, root, tmp_path, checker, monkeypatch, spelling):
    """An LV has no "beside": image --lv keeps its facts in the cache; naming the LV finds them."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(cache))  # inherited by run_cli's subprocess
    sidecar = write_sidecar(Target.lv("vg0/guest", "64M", swap="16M"), "bookworm", "guest", swap=True)
    assert sidecar.is_relative_to(cache)
    run_cli("domain", "create", "--root", root, "--from-image", spelling, "--memory", "256",
            "--kernel", KERNEL, check=True)
    seen = xlcheck.accept(checker, root / "etc/xen/guest.cfg")
    assert "disk 0: vdev=xvda1 target=/dev/vg0/guest format=raw access=rw\n" in seen
    assert "disk 1: vdev=xvda2 target=/dev/vg0/guest-swap format=raw access=rw\n" in seen


def test_lv_without_facts(run_cli, root, tmp_path, monkeypatch):
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    proc = run_cli("domain", "create", "--root", root, "--from-image", "/dev/vg0/none", "--memory", "256",
                   "--kernel", KERNEL)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1
    assert "no image facts at /dev/vg0/none.json (nor " in errors[0] and "images/vg0/none.json" in errors[0]
    assert configs(root) == []


def test_directory_tree_boots_over_nfs(run_cli, root, tmp_path, checker):
    tree = tmp_path / "vm1root"
    write_sidecar(Target.dir(tree), "bookworm", "vm1")
    proc = run_cli("domain", "create", "--root", root, "--from-image", tree, "--memory", "128",
                   "--kernel", KERNEL)
    assert proc.returncode != 0 and "is a directory tree, not a disk image" in proc.stderr
    assert f"--nfs-root {tree}" in proc.stderr and configs(root) == []
    run_cli("domain", "create", "--root", root, "--from-image", tree, "--memory", "128", "--kernel", KERNEL,
            "--nfs-server", "192.0.2.1", "--nfs-root", str(tree), check=True)
    seen = xlcheck.accept(checker, root / "etc/xen/vm1.cfg")
    assert "root=/dev/nfs\n" in seen and "disk 0:" not in seen
    assert f"extra=nfsroot=192.0.2.1:{tree},vers=3,tcp ip=:192.0.2.1::::eth0:dhcp console=hvc0\n" in seen
