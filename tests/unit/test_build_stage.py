"""Staging names and layout, from build trees shaped like Xen's and Linux's outputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from provision.build import preflight, stage
from provision.errors import ProvisionError


def test_xen_names_like_xens_own_install():
    names = stage.xen_names("4.17.5")
    assert names["image"] == "boot/xen-4.17.5.gz"
    assert names["links"] == ["boot/xen-4.17.gz", "boot/xen-4.gz", "boot/xen.gz"]
    assert names["syms"] == "boot/xen-syms-4.17.5"
    assert names["config"] == "boot/xen-4.17.5.config"
    assert names["elf"] == "../xen-4.17.5.elf"


def test_kernel_names():
    assert stage.kernel_names("6.1.176-xenU") == {
        "vmlinuz": "boot/vmlinuz-6.1.176-xenU",
        "config": "boot/config-6.1.176-xenU",
        "system_map": "boot/System.map-6.1.176-xenU",
        "syms": "boot/vmlinux-syms-6.1.176-xenU",
        "modules": "lib/modules/6.1.176-xenU",
    }


def _file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def records(tmp_path):
    xen = tmp_path / "xen-build"
    for name in ("xen.gz", "xen-syms", "xen", ".config"):
        _file(xen / name, f"xen {name}\n".encode())
    kern = tmp_path / "linux-build"
    _file(kern / "arch/x86/boot/bzImage", b"bzImage")
    _file(kern / ".config", b"CONFIG_XEN=y\n")
    _file(kern / "System.map", b"ffffffff81000000 T _text\n")
    _file(kern / "vmlinux", b"vmlinux")
    _file(kern / "modules.builtin", b"kernel/drivers/block/xen-blkfront.ko\n")
    tools = tmp_path / "tools-install"
    _file(tools / "usr/sbin/xl", b"#!xl\n")
    _file(tools / "etc/xen/xl.conf", b"# xl.conf\n")
    os.symlink("libxenctrl.so.4.17", tools / "usr/sbin/libxenctrl.so")
    src = {"identity": "abc", "version": "x", "spec": "test"}
    return {
        "xen": {"dir": str(xen), "version": "4.17.5", "source": src, "config_sha256": "c",
                "fragment_sha256": "f", "debug": False, "schedulers": ["credit", "credit2"],
                "default_scheduler": "credit2"},
        "tools": {"install": str(tools), "version": "4.17.5", "source": src, "configure": ["--x"],
                  "configure_sha256": "s"},
        "kernels": {"mk.linux-6.1-xenU": {
            "dir": str(kern), "flavour": "xenU", "series": "6.1", "version": "6.1.176",
            "release": "6.1.176-xenU", "source": src, "config_sha256": "k", "modules": False}},
    }


def test_stage_layout_and_manifest(tmp_path, records):
    dest = tmp_path / "dist" / "install"
    manifest = stage.stage(dest, records["xen"], records["tools"], records["kernels"])
    boot = dest / "boot"
    assert (boot / "xen-4.17.5.gz").read_bytes() == b"xen xen.gz\n"
    for link in ("xen-4.17.gz", "xen-4.gz", "xen.gz"):
        assert os.readlink(boot / link) == "xen-4.17.5.gz"
    assert (boot / "xen-syms-4.17.5").exists() and (boot / "xen-4.17.5.config").exists()
    assert (tmp_path / "dist" / "xen-4.17.5.elf").read_bytes() == b"xen xen\n"
    assert (boot / "vmlinuz-6.1.176-xenU").read_bytes() == b"bzImage"
    assert (boot / "vmlinux-syms-6.1.176-xenU").exists()
    assert (boot / "System.map-6.1.176-xenU").exists() and (boot / "config-6.1.176-xenU").exists()
    assert (dest / "lib/modules/6.1.176-xenU/modules.builtin").exists()
    assert (dest / "usr/sbin/xl").exists() and (dest / "etc/xen/xl.conf").exists()

    on_disk = json.loads((dest / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["xen"]["version"] == "4.17.5"
    assert manifest["xen"]["image"] == "boot/xen-4.17.5.gz"
    assert manifest["xen"]["default_scheduler"] == "credit2"
    assert manifest["kernels"]["mk.linux-6.1-xenU"]["vmlinuz"] == "boot/vmlinuz-6.1.176-xenU"
    files = manifest["files"]
    assert files["boot/xen.gz"] == {"link": "xen-4.17.5.gz"}
    assert files["boot/vmlinuz-6.1.176-xenU"]["size"] == 7
    assert len(files["boot/xen-4.17.5.gz"]["sha256"]) == 64
    assert "manifest.json" not in files
    # Every staged file is in the manifest.
    staged = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink()}
    assert staged - {"manifest.json"} == set(files)


def test_lib_modules_is_indexed_by_depmod(tmp_path, records):
    """As make modules_install leaves it: modprobe finds a built-in driver (xencommons asks
    for the backends by name) and fails for one the kernel does not have."""
    dest = tmp_path / "dist" / "install"
    manifest = stage.stage(dest, records["xen"], None, records["kernels"])
    moddir = dest / "lib/modules/6.1.176-xenU"
    for name in ("modules.dep", "modules.dep.bin", "modules.alias.bin", "modules.symbols.bin",
                 "modules.builtin", "modules.builtin.bin"):
        assert (moddir / name).is_file(), name
        assert f"lib/modules/6.1.176-xenU/{name}" in manifest["files"]

    def modprobe(module):
        return subprocess.run(["modprobe", "--dirname", dest, "--set-version", "6.1.176-xenU", "--dry-run",
                               "--verbose", module], capture_output=True, text=True)

    for name in ("xen-blkfront", "xen_blkfront"):
        assert modprobe(name).returncode == 0, modprobe(name).stderr
    missing = modprobe("xen-blkback")
    assert missing.returncode != 0 and "not found" in missing.stderr
    # depmod's files carry the kernel build's time: restaging the same build changes nothing.
    when = (dest / "boot/System.map-6.1.176-xenU").stat().st_mtime_ns
    assert {p.stat().st_mtime_ns for p in moddir.glob("*.bin")} == {when}


def test_restage_replaces_the_tree_and_is_deterministic(tmp_path, records):
    dest = tmp_path / "dist" / "install"
    first = stage.stage(dest, records["xen"], records["tools"], records["kernels"])
    (dest / "stray").write_text("left over from an older build")
    second = stage.stage(dest, records["xen"], None, records["kernels"])
    assert not (dest / "stray").exists()
    assert not (dest / "usr/sbin/xl").exists()  # tools switched off: gone
    assert second["tools"] is None
    third = stage.stage(dest, records["xen"], None, records["kernels"])
    assert third == second
    assert {k: v for k, v in first["files"].items() if k.startswith(("boot/", "lib/"))} == \
        {k: v for k, v in third["files"].items() if k.startswith(("boot/", "lib/"))}
    assert not list(dest.parent.glob(".install.new")) + list(dest.parent.glob(".install.old"))


def test_failed_stage_leaves_the_old_tree(tmp_path, records):
    dest = tmp_path / "dist" / "install"
    stage.stage(dest, records["xen"], None, records["kernels"])
    before = (dest / "manifest.json").read_text()
    os.unlink(Path(records["kernels"]["mk.linux-6.1-xenU"]["dir"]) / "vmlinux")
    with pytest.raises(FileNotFoundError):
        stage.stage(dest, records["xen"], None, records["kernels"])
    assert (dest / "manifest.json").read_text() == before
    assert not list(dest.parent.glob(".install.new")) + list(dest.parent.glob(".install.old"))


def test_preflight_names_the_packages(monkeypatch):
    monkeypatch.setattr(preflight, "LINUX_TOOLS", {**preflight.LINUX_TOOLS, "no-such-tool-xyz": "xyz-utils"})
    monkeypatch.setattr(preflight, "LINUX_HEADERS", {**preflight.LINUX_HEADERS, "no/such.h": "libnosuch-dev"})
    with pytest.raises(ProvisionError) as e:
        preflight.check(linux=True)
    assert "no-such-tool-xyz" in e.value.message and "no/such.h" in e.value.message
    assert "libnosuch-dev xyz-utils" in e.value.message
    assert e.value.hint.startswith("apt-get install libnosuch-dev xyz-utils")


def test_preflight_passes_on_a_set_up_host():
    preflight.check(hypervisor=True, linux=True, xen_tools=True, staging=True)
