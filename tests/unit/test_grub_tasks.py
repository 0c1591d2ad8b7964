"""`doit grub` renders entries for a staged dist/install, and only when its inputs change."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dist(tmp_path) -> Path:
    """A dist/ laid out as `doit world` stages it (names from provision/build/stage.py)."""
    boot = tmp_path / "dist" / "install" / "boot"
    boot.mkdir(parents=True)
    (boot / "xen-4.17.5.gz").write_bytes(gzip.compress(b"xen"))
    for link in ("xen-4.17.gz", "xen-4.gz", "xen.gz"):
        (boot / link).symlink_to("xen-4.17.5.gz")
    (boot / "xen-4.17.5.config").write_text("CONFIG_SCHED_CREDIT=y\nCONFIG_SCHED_CREDIT2=y\n")
    (boot / "vmlinuz-6.1.176-xen0").write_bytes(b"kernel")
    (boot / "vmlinuz-6.1.176-xenU").write_bytes(b"guest kernel")
    (tmp_path / "dist" / "install" / "manifest.json").write_text('{"xen": {"version": "4.17.5"}}\n')
    return tmp_path / "dist"


def doit(dist: Path, *args: str) -> subprocess.CompletedProcess:
    # -s: the named task alone. Its manifest.json is `doit stage`'s target, and without -s
    # doit builds the world first (a cache miss is a full build, not a unit test).
    env = dict(os.environ, XEN_PROVISION_DIST=str(dist), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "doit", "--db-file", str(dist / ".doit.db"), "-s", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_doit_grub_renders_staged_files(dist):
    proc = doit(dist, "grub", "XEN_ARGS=dom0_mem=131072 com1=115200,8n1 sched=credit")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = dist / "grub"
    custom = (out / "custom.cfg").read_text()
    assert "\tmultiboot2 /boot/xen-4.17.5.gz dom0_mem=128M com1=115200,8n1 sched=credit\n" in custom
    assert "\tmodule2 /boot/vmlinuz-6.1.176-xen0 root=/dev/sda1 ro console=hvc0\n" in custom
    assert "xenU" not in custom
    assert (out / "42_xen_provision").stat().st_mode & 0o777 == 0o755
    assert "\tkernel /boot/xen-4.17.5.gz dom0_mem=128M" in (out / "menu.lst").read_text()
    assert "kernel=vmlinuz-6.1.176-xen0 root=/dev/sda1 ro console=hvc0" in (out / "xen.cfg").read_text()
    assert subprocess.run(["grub-script-check", str(out / "custom.cfg")]).returncode == 0

    # Same inputs: up to date. Different arguments: rendered again.
    again = doit(dist, "grub", "XEN_ARGS=dom0_mem=131072 com1=115200,8n1 sched=credit")
    assert again.returncode == 0 and "-- grub" in again.stdout, again.stdout
    changed = doit(dist, "grub", "XEN_ARGS=dom0_mem=2G")
    assert changed.returncode == 0 and ".  grub" in changed.stdout
    assert "dom0_mem=2G" in (out / "custom.cfg").read_text()


def test_doit_grub_checks_the_scheduler_against_the_staged_config(dist):
    proc = doit(dist, "grub", "XEN_ARGS=dom0_mem=1G sched=rtds")
    assert proc.returncode != 0
    assert "sched=rtds is not built into this hypervisor (it has: credit, credit2)" in proc.stdout + proc.stderr
    assert not (dist / "grub" / "custom.cfg").exists()



def test_grub_takes_the_hardware_xen0_when_it_is_staged_alone(dist):
    from provision.grub.tasks import DEFAULT_DOM0_ARGS, render_staged
    boot = dist / "install" / "boot"
    (boot / "vmlinuz-6.1.176-xen0").rename(boot / "vmlinuz-6.1.176-xen0-hw")
    render_staged(dist / "install", dist / "grub", "dom0_mem=1G", DEFAULT_DOM0_ARGS)
    assert "\tmodule2 /boot/vmlinuz-6.1.176-xen0-hw root=/dev/sda1 ro" in (dist / "grub/custom.cfg").read_text()
