"""One answer to "who uses this disk, and how" (provision/inuse.py), the same for storage,
image and domain commands: every config under /etc/xen read with the real xl/xm parser."""

from __future__ import annotations

import pytest

from provision import inuse
from provision.errors import ProvisionError

KERNEL = "/boot/vmlinuz-xenU"

# The same domain, as each kind of config file Xen has read over the years.
LAYOUTS = {
    "xl.cfg": ("vm1.cfg", "name = 'vm1'\nmemory = 64\nkernel = '/k'\ndisk = ['vdev=xvda, access=rw, target={img}']\n"),
    "xen2-style": ("vm1", "name = 'vm1'\nmemory = 64\nkernel = '/k'\ndisk = ['file:{img},sda1,w']\n"),
    "xm-python": ("vm1", "# Xen 2.0 manual style\nkernel = \"/boot/vmlinuz-2.6-xenU\"\nmemory = 64\n"
                         "name = \"vm1\"\nnics = 1\ndisk = [ 'file:{img},sda1,w' ]\nroot = \"/dev/sda1 ro\"\n"),
    "auto-only": ("auto/vm1", "name = 'vm1'\nmemory = 64\nkernel = '/k'\ndisk = ['{img},raw,xvda,rw']\n"),
    "latin-1": ("vm1", "# Ma\xeetre de l'image\nname = 'vm1'\nmemory = 64\nkernel = '/k'\ndisk = ['phy:{img},xvda,w']\n"),
}


@pytest.fixture
def xen(tmp_path):
    d = tmp_path / "xen"
    (d / "auto").mkdir(parents=True)
    (d / "scripts").mkdir()
    # Xen's own files are not domains, even where they hold disk-like lines.
    (d / "xl.conf").write_text("autoballoon = 'off'\n")
    (d / "xlexample.pvlinux").write_text("name = 'example'\ndisk = ['/dev/vg/guest-volume,raw,xvda,rw']\n")
    (d / "scripts" / "block").write_text("#!/bin/sh\n")
    return d


@pytest.mark.parametrize("layout", LAYOUTS)
def test_storage_and_domain_commands_agree(run_cli, tmp_path, xen, layout):
    """A Xen 2.0-style config named /etc/xen/vm1 blocked storage create but not domain
    create; now every command reads the same configs the same way."""
    img = tmp_path / "vm1.img"
    img.write_bytes(b"\0" * 4096)
    name, text = LAYOUTS[layout]
    data = text.format(img=img).encode("latin-1")
    (xen / name).write_bytes(data)
    env = {"XEN_PROVISION_XEN_DIR": str(xen)}
    proc = run_cli("storage", "check", img, env=env)
    assert proc.returncode != 0 and f"{img} is used read-write by domain vm1" in proc.stderr, proc.stderr
    proc = run_cli("storage", "create", img, "--size", "1M", "--force", env=env)
    assert proc.returncode != 0 and "used read-write by domain vm1" in proc.stderr
    assert img.stat().st_size == 4096
    for access in ("rw", "ro"):
        proc = run_cli("domain", "create", "--config-dir", xen, "--name", "vm2", "--memory", "64",
                       "--kernel", KERNEL, "--no-kernel-check", "--disk", f"vdev=xvda, access={access}, target={img}")
        assert proc.returncode != 0, proc.stderr
        assert f"error: disk {img} is used read-write by domain vm1" in proc.stderr, proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert not (xen / "vm2.cfg").exists()
    # Cloning it is reading it: a config is not a running domain, so a warning, not a refusal.
    proc = run_cli("storage", "clone", img, tmp_path / "copy.img", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning: clone source" in proc.stderr and "the copy may be torn" in proc.stderr


def test_xen_own_files_are_not_domains(xen, tmp_path):
    assert [p.name for p in inuse.config_files(xen)] == []
    (xen / "web1.cfg").write_text("name = 'web1'\nmemory = 64\nkernel = '/k'\n")
    (xen / "web1.cfg.xen-provision.bak").write_text("name = 'old'\n")
    (xen / ".web1.cfg.x1y2.tmp").write_text("name = 'tmp'\n")
    (xen / "auto" / "web1.cfg").symlink_to(xen / "web1.cfg")
    (xen / "auto" / "gone.cfg").symlink_to(xen / "gone.cfg")  # dangling: skipped
    assert [p.name for p in inuse.config_files(xen)] == ["web1.cfg"]


def test_same_image_writable_twice_in_one_domain(run_cli, tmp_path, xen):
    img = tmp_path / "a.img"
    img.write_bytes(b"\0" * 4096)
    alias = tmp_path / "alias.img"
    alias.symlink_to(img)

    def create(*disks):
        args = [a for d in disks for a in ("--disk", d)]
        return run_cli("domain", "create", "--config-dir", xen, "--name", "g", "--memory", "64",
                       "--kernel", KERNEL, "--no-kernel-check", *args)

    for second in (f"vdev=xvdb, access=rw, target={img}", f"vdev=xvdb, access=ro, target={alias}"):
        proc = create(f"vdev=xvda, access=rw, target={img}", second)
        assert proc.returncode != 0
        assert f"error: disk {img} is given to 'g' twice, as xvda and xvdb" in proc.stderr, proc.stderr
    assert not (xen / "g.cfg").exists()
    # Read-only twice cannot corrupt it.
    proc = create(f"vdev=xvda, access=ro, target={img}", f"vdev=xvdb, access=ro, target={alias}")
    assert proc.returncode == 0, proc.stderr


def test_unreadable_config_is_a_warning_not_a_crash(xen, tmp_path):
    img = tmp_path / "x.img"
    img.write_bytes(b"")
    (xen / "broken").write_text("for i in range(3):\n    disk = ['x']\n")
    (xen / "binary").write_bytes(b"\0\x01\x02")
    assert inuse.users(img, xen_dir=xen) == []
    inuse.refuse(img, writing=True, xen_dir=xen)


def test_writing_refuses_readers_reading_only_writers(xen, tmp_path):
    img = tmp_path / "ro.img"
    img.write_bytes(b"")
    (xen / "r1.cfg").write_text(f"name = 'r1'\nmemory = 64\nkernel = '/k'\ndisk = ['{img},raw,xvda,ro']\n")
    with pytest.raises(ProvisionError) as e:
        inuse.refuse(img, writing=True, xen_dir=xen)
    assert e.value.message == f"{img} is used read-only by domain r1 ({xen / 'r1.cfg'})"
    inuse.refuse(img, writing=False, xen_dir=xen)
