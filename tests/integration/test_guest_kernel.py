"""Images that boot their own kernel through pvgrub2 (issue 19): `image --guest-kernel`
installs the distribution's kernel and writes the menu pvgrub2 reads. Both a cold image
and one made through the warm cache are read back with debugfs (no mount): the menu's
kernel and initrd paths resolve inside the image, GRUB's parser accepts the menu, and
the kernel can run as the type the sidecar records."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess

import pytest

from tests.integration.test_debootstrap import (
    SBIN_PATH,
    cli,
    debugfs,
    debugfs_cat,
    fsck_clean,
    host_suite,
)

pytestmark = pytest.mark.integration


def resolve_in_image(image, path: str, hops: int = 8) -> str | None:
    """``path`` inside the ext image with its symlinks followed (relative or absolute), or
    None when it does not end at a regular file."""
    for _ in range(hops):
        st = debugfs(image, f"stat {path}")
        if "Type: regular" in st:
            return path
        m = re.search(r'Fast link dest: "([^"]+)"', st)
        if not m:
            return None
        target = m.group(1)
        path = posixpath.normpath(target if target.startswith("/") else
                                  posixpath.join(posixpath.dirname(path), target))
    return None


def menu_paths(cfg: str) -> list[tuple[str, str]]:
    """(kernel, initrd) of each menu entry."""
    kernels = re.findall(r"^\s*linux\s+(\S+)", cfg, re.M)
    initrds = re.findall(r"^\s*initrd\s+(\S+)", cfg, re.M)
    return list(zip(kernels, initrds, strict=True))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (the backends chroot); CI runs as root")
    d = tmp_path_factory.mktemp("guestkernel")
    made = []
    for name in ("gk1", "gk2"):   # the first bootstraps (--refresh), the second comes through the warm cache
        img = d / f"{name}.img"
        p, took = cli("--debootstrap", host_suite(), "--guest-kernel", "--file", img, "--size", "1G",
                      "--hostname", name, "--fstab-by", "uuid", *(["--refresh"] if name == "gk1" else []),
                      timeout=2400)
        assert p.returncode == 0, p.stderr[-3000:]
        print(f"{name}: {took:.1f}s")
        made.append(img)
    return made


def test_the_menu_boots_the_images_own_kernel_and_initrd(images):
    for img in images:
        fsck_clean(img)
        cfg = debugfs_cat(img, "/boot/grub/grub.cfg")
        assert cfg, f"{img} has no /boot/grub/grub.cfg"
        facts = json.loads(img.with_name(img.name + ".json").read_text())
        uuid = facts["guest"]["root_uuid"]
        entries = menu_paths(cfg)
        assert entries[0] == ("/vmlinuz", "/initrd.img")
        assert f"root=UUID={uuid} ro console=hvc0" in cfg
        kernel = resolve_in_image(img, "/vmlinuz")
        initrd = resolve_in_image(img, "/initrd.img")
        assert kernel and kernel.startswith("/boot/vmlinuz-"), kernel
        assert initrd and initrd.startswith("/boot/initrd.img-"), initrd
        release = kernel.removeprefix("/boot/vmlinuz-")
        assert initrd == f"/boot/initrd.img-{release}"
        # The kernel can run as the type the sidecar records (domain create reads it).
        config = debugfs_cat(img, f"/boot/config-{release}") or ""
        assert facts["guest_kernel"]["package"] == "linux-image-amd64"
        assert ("CONFIG_XEN_PVH=y" in config) == facts["guest_kernel"]["pvh"] is True
        assert "CONFIG_XEN_BLKDEV_FRONTEND=" in config and "CONFIG_XEN_NETDEV_FRONTEND=" in config
        if shutil.which("grub-script-check"):
            f = img.with_suffix(".cfg")
            f.write_text(cfg)
            assert subprocess.run(["grub-script-check", str(f)], env={**os.environ, "PATH": SBIN_PATH}).returncode == 0
    # Each image's menu names its own root.
    a, b = (debugfs_cat(i, "/boot/grub/grub.cfg") for i in images)
    assert a != b


def test_domain_create_boots_it_with_pvgrub(images, tmp_path):
    """From the image's facts alone: pvgrub2's PVH build, the image's disk, no dom0 kernel."""
    import sys

    from tests.integration.test_debootstrap import ROOT
    root = tmp_path / "r"
    grub = root / "usr/lib/grub-xen"
    grub.mkdir(parents=True)
    for name in ("grub-x86_64-xen.bin", "grub-i386-xen_pvh.bin"):
        (grub / name).write_bytes(b"stand-in: pvgrub2 is Debian's grub-xen-host in dom0")
    (root / "etc/xen").mkdir(parents=True)
    (root / "etc/network/interfaces.d").mkdir(parents=True)   # the host's bridge, as `network bridge` writes it
    (root / "etc/network/interfaces").write_text("source /etc/network/interfaces.d/*\n")
    (root / "etc/network/interfaces.d/xenbr0").write_text(
        "auto xenbr0\niface xenbr0 inet dhcp\n    bridge_ports eth0\n")
    p = subprocess.run([sys.executable, "-m", "provision", "domain", "create", "--root", str(root),
                        "--from-image", str(images[0]), "--memory", "384", "--no-kernel-check"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    cfg = (root / "etc/xen/gk1.cfg").read_text()
    assert 'type = "pvh"' in cfg and 'kernel = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"' in cfg
    assert f"target={images[0]}" in cfg and "ramdisk" not in cfg
