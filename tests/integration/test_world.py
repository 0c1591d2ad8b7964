"""The real build: `doit world` stages Xen, its tools and the xen0/xenU kernels.

Runs Xen's own build and real kernel builds (cached across runs under
$XEN_PROVISION_CACHE, keyed by their inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, doit

pytestmark = pytest.mark.integration


def _manifest(install: Path) -> dict:
    return json.loads((install / "manifest.json").read_text())


def test_staged_layout_and_manifest(world):
    m = _manifest(world)
    version = m["xen"]["version"]
    assert re.fullmatch(r"4\.\d+\.\d+", version)
    boot = world / "boot"
    major, minor = version.split(".")[:2]
    assert (boot / f"xen-{version}.gz").is_file()
    for link in (f"xen-{major}.{minor}.gz", f"xen-{major}.gz", "xen.gz"):
        assert os.readlink(boot / link) == f"xen-{version}.gz"
    assert (boot / f"xen-syms-{version}").read_bytes()[:4] == b"\x7fELF"
    config = (boot / f"xen-{version}.config").read_text()
    assert "CONFIG_SCHED_CREDIT2=y" in config and "# CONFIG_DEBUG is not set" in config
    assert m["xen"]["default_scheduler"] == "credit2"
    assert {"credit", "credit2"} <= set(m["xen"]["schedulers"])
    elf = (world / m["xen"]["elf"]).resolve()
    assert elf.read_bytes()[:5] == b"\x7fELF\x01"  # 32-bit: what multiboot loaders take

    kernels = m["kernels"]
    assert set(kernels) == {"mk.linux-6.1-xen0", "mk.linux-6.1-xenU"}
    for name, k in kernels.items():
        release = k["release"]
        assert release == f"{k['version']}-{k['flavour']}" and k["version"].startswith("6.1.")
        for key in ("vmlinuz", "config", "system_map", "syms"):
            assert (world / k[key]).is_file(), f"{name}: {k[key]} missing"
        assert (boot / f"vmlinuz-{release}").read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
        assert (boot / f"vmlinux-syms-{release}").read_bytes()[:4] == b"\x7fELF"
        assert (world / "lib/modules" / release / "modules.builtin").is_file()
        cfg = (boot / f"config-{release}").read_text()
        assert f'CONFIG_LOCALVERSION="-{k["flavour"]}"' in cfg
    xen0 = (boot / f"config-{kernels['mk.linux-6.1-xen0']['release']}").read_text()
    xenu = (boot / f"config-{kernels['mk.linux-6.1-xenU']['release']}").read_text()
    for opt in ("XEN_DOM0", "XEN_BLKDEV_BACKEND", "XEN_NETDEV_BACKEND", "XENFS", "XEN_GNTDEV",
                "XEN_PRIVCMD", "VIRTIO_BLK", "SATA_AHCI", "E1000", "BLK_DEV_DM", "DM_THIN_PROVISIONING",
                "BRIDGE", "TUN", "EXT4_FS", "DEVTMPFS_MOUNT", "SERIAL_8250_CONSOLE", "HVC_XEN"):
        assert f"CONFIG_{opt}=y" in xen0, opt
    assert "CONFIG_XEN_BLKDEV_FRONTEND=y" in xenu and "CONFIG_XEN_NETDEV_FRONTEND=y" in xenu
    for opt in ("XEN_DOM0", "XEN_BLKDEV_BACKEND", "XEN_NETDEV_BACKEND", "MODULES"):
        assert f"CONFIG_{opt}=y" not in xenu, opt

    if m["tools"]:
        assert (world / "usr/sbin/xl").is_file()
        assert (world / "usr/sbin/xenstored").exists()
        assert (world / "etc/xen").is_dir()

    # The manifest lists every staged file with its real checksum.
    staged = {str(p.relative_to(world)) for p in world.rglob("*") if p.is_file() or p.is_symlink()}
    assert staged - {"manifest.json"} == set(m["files"])
    for rel, entry in m["files"].items():
        path = world / rel
        if "link" in entry:
            assert os.readlink(path) == entry["link"]
        else:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], rel


def test_xenU_is_at_least_30_percent_smaller(world):
    m = _manifest(world)["kernels"]
    xen0 = (world / m["mk.linux-6.1-xen0"]["vmlinuz"]).stat().st_size
    xenu = (world / m["mk.linux-6.1-xenU"]["vmlinuz"]).stat().st_size
    print(f"vmlinuz xen0 {xen0} bytes, xenU {xenu} bytes: {100 * (1 - xenu / xen0):.0f}% smaller")
    assert xenu <= 0.7 * xen0


def test_noop_world_is_fast_and_says_so(world):
    proc, seconds = doit("world")
    assert proc.returncode == 0, proc.stdout
    assert "nothing was rebuilt" in proc.stdout
    for task in ("xen", "tools", "kernel:mk.linux-6.1-xen0", "kernel:mk.linux-6.1-xenU", "stage"):
        assert f"-- {task}" in proc.stdout, f"{task} was not up to date:\n{proc.stdout}"
    print(f"no-op doit world: {seconds:.2f}s")
    assert seconds < 1.0


def _world_in(tmp: Path, *extra: str):
    """doit world with a private buildconfigs copy, dist and dependency database."""
    return doit("--db-file", str(tmp / ".doit.db"), "world", f"buildconfigs={tmp / 'buildconfigs'}",
                f"dist={tmp / 'dist'}", *extra, log=tmp / f"world-{time.monotonic_ns()}.log")


def test_xenU_fragment_change_rebuilds_only_xenU(world, tmp_path):
    shutil.copytree(ROOT / "buildconfigs", tmp_path / "buildconfigs")
    proc, _ = _world_in(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "nothing was rebuilt" in proc.stdout  # the same inputs: everything from the cache
    before = _manifest(tmp_path / "dist/install")

    # A change only xenU's fragment makes, unique so that it really compiles every run.
    hostname = f"xenu-{uuid.uuid4().hex[:8]}"
    frag = tmp_path / "buildconfigs/linux-xenU.config"
    frag.write_text(frag.read_text() + f'CONFIG_DEFAULT_HOSTNAME="{hostname}"\n')
    proc, seconds = _world_in(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    print(f"incremental doit world after touching the xenU fragment: {seconds:.1f}s")
    assert "world: rebuilt kernel:mk.linux-6.1-xenU;" in proc.stdout
    for task in ("xen", "tools", "kernel:mk.linux-6.1-xen0"):
        assert f"-- {task}" in proc.stdout, f"{task} ran:\n{proc.stdout[-3000:]}"
    after = _manifest(tmp_path / "dist/install")
    xenu = after["kernels"]["mk.linux-6.1-xenU"]
    assert f'CONFIG_DEFAULT_HOSTNAME="{hostname}"' in (tmp_path / "dist/install" / xenu["config"]).read_text()
    assert xenu["config_sha256"] != before["kernels"]["mk.linux-6.1-xenU"]["config_sha256"]
    assert after["kernels"]["mk.linux-6.1-xen0"] == before["kernels"]["mk.linux-6.1-xen0"]
    assert after["xen"] == before["xen"]


def test_dropped_required_option_names_the_missing_dependency(world, tmp_path):
    """A recipe asking for a backend without Xen support: Kconfig drops it; we say why."""
    shutil.copytree(ROOT / "buildconfigs", tmp_path / "buildconfigs")
    (tmp_path / "buildconfigs/broken.config").write_text("CONFIG_64BIT=y\nCONFIG_XEN_BLKDEV_BACKEND=y\n")
    (tmp_path / "buildconfigs/mk.linux-6.1-broken").write_text(
        'base = "tinyconfig"\nfragments = ["broken.config"]\nrequire = ["XEN_BLKDEV_BACKEND"]\n')
    proc, _ = _world_in(tmp_path, "kernels=mk.linux-6.1-broken")
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stdout[-3000:]
    assert "mk.linux-6.1-broken: after olddefconfig CONFIG_XEN_BLKDEV_BACKEND=y (got n)" in errors[0]
    assert "depends on" in errors[0] and "XEN_BACKEND" in errors[0]
    assert not (tmp_path / "dist/install").exists()


def test_clean_removes_what_the_tasks_made(world, tmp_path):
    shutil.copytree(ROOT / "buildconfigs", tmp_path / "buildconfigs")
    proc, _ = _world_in(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    stamps = tmp_path / "dist/.stamps"
    xen_tree = Path(json.loads((stamps / "xen.json").read_text())["dir"])
    proc, _ = doit("clean", "--db-file", str(tmp_path / ".doit.db"), f"buildconfigs={tmp_path / 'buildconfigs'}",
                   f"dist={tmp_path / 'dist'}")
    assert proc.returncode == 0, proc.stdout
    assert not (tmp_path / "dist/install").exists()
    assert not list((tmp_path / "dist").glob("xen-*.elf"))
    assert not list(stamps.glob("*.json"))
    assert (xen_tree / "build.json").exists()  # the cache stays: the next world restages from it
