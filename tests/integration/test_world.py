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
import subprocess
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
        image = (boot / f"vmlinuz-{release}").read_bytes()
        assert image[0x202:0x206] == b"HdrS"  # a bzImage
        # Its payload is LZ4 (legacy frame), which Xen and xl's domain builder decompress
        # much faster than tinyconfig's XZ: boot protocol fields payload_offset/length.
        setup = ((image[0x1F1] or 4) + 1) * 512
        payload = setup + int.from_bytes(image[0x248:0x24C], "little")
        assert image[payload:payload + 4] == b"\x02\x21\x4c\x18", f"{name}: payload {image[payload:payload + 4].hex()}"
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
    # PV and PVH guests, root on a Xen disk or over NFS (issues 19 and 20).
    for opt in ("XEN_PV", "XEN_PVH", "ACPI", "NFS_FS", "NFS_V3", "ROOT_NFS", "IP_PNP", "IP_PNP_DHCP"):
        assert f"CONFIG_{opt}=y\n" in xenu, opt

    if m["tools"]:
        assert (world / "usr/sbin/xl").is_file()
        assert (world / "usr/sbin/xenstored").exists()
        assert (world / "etc/xen").is_dir()
        # systemd units (--enable-systemd), so a systemd dom0 need not run the LSB
        # xencommons, which ends by starting a QEMU disk backend and fails without one.
        for unit in ("proc-xen.mount", "xenstored.service", "xenconsoled.service", "xen-init-dom0.service"):
            assert (world / "usr/lib/systemd/system" / unit).is_file(), unit

    # The manifest lists every staged file with its real checksum.
    staged = {str(p.relative_to(world)) for p in world.rglob("*") if p.is_file() or p.is_symlink()}
    assert staged - {"manifest.json"} == set(m["files"])
    for rel, entry in m["files"].items():
        path = world / rel
        if "link" in entry:
            assert os.readlink(path) == entry["link"]
        else:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], rel


def _modprobe(root: Path, release: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["modprobe", "--dirname", root, "--set-version", release, "--dry-run", *args],
                          capture_output=True, text=True)


def test_lib_modules_is_what_modprobe_and_xencommons_need(world, tmp_path):
    """The kernels are monolithic (MODULES is forbidden), yet dom0's userland asks modprobe
    for drivers by name: xencommons loads its BACKEND_MODULES. depmod's index makes those
    built-in drivers succeed, as on a kernel installed by make modules_install."""
    kernels = _manifest(world)["kernels"]
    xen0 = kernels["mk.linux-6.1-xen0"]["release"]
    xenu = kernels["mk.linux-6.1-xenU"]["release"]
    for release in (xen0, xenu):
        moddir = world / "lib/modules" / release
        for name in ("modules.builtin", "modules.builtin.modinfo", "modules.dep", "modules.dep.bin",
                     "modules.builtin.bin", "modules.alias.bin", "modules.symbols.bin"):
            assert (moddir / name).is_file(), f"{release}: {name} missing"
        assert not list(moddir.rglob("*.ko")), f"{release}: modules in a MODULES=n kernel"
    for module in ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-blkback", "xen-netback", "xen-pciback"):
        proc = _modprobe(world, xen0, module)
        assert proc.returncode == 0, f"{xen0}: modprobe {module}: {proc.stderr}"
    info = subprocess.run(["modinfo", "--basedir", world, "--set-version", xen0, "xen-blkback"],
                          capture_output=True, text=True, check=True).stdout
    assert re.search(r"^filename:\s+\(builtin\)$", info, re.M) and "xen-backend:vbd" in info
    proc = _modprobe(world, xenu, "xen-blkback")  # a guest kernel has no backends
    assert proc.returncode != 0 and "not found" in proc.stderr
    assert _modprobe(world, xenu, "xen-blkfront").returncode == 0
    # The index is current: depmod run again on a copy of the tree writes the same bytes.
    copy = tmp_path / "lib/modules" / xen0
    shutil.copytree(world / "lib/modules" / xen0, copy)
    subprocess.run(["depmod", "--basedir", tmp_path, "--filesyms", world / f"boot/System.map-{xen0}", xen0],
                   capture_output=True, check=True)
    for staged in (world / "lib/modules" / xen0).iterdir():
        assert (copy / staged.name).read_bytes() == staged.read_bytes(), staged.name


def test_a_kernel_with_modules_is_staged_like_make_modules_install(world, tmp_path):
    """Our recipes are monolithic, but a user's (a distribution config, say) may build
    modules: they go through modules_install and are indexed by depmod. The smallest Xen PV
    kernel with its network frontend as a module proves that path (no filesystems, no IP
    stack: about half of xenU's objects; cached after one build)."""
    shutil.copytree(ROOT / "buildconfigs", tmp_path / "buildconfigs")
    (tmp_path / "buildconfigs/modules.config").write_text("".join(f"CONFIG_{o}\n" for o in (
        "64BIT=y", "HYPERVISOR_GUEST=y", "PARAVIRT=y", "XEN=y", "XEN_PV=y", "NET=y", "NETDEVICES=y",
        "BLOCK=y", "BLK_DEV=y", "XEN_BLKDEV_FRONTEND=y", "MODULES=y", "MODULE_UNLOAD=y",
        "XEN_NETDEV_FRONTEND=m")))
    (tmp_path / "buildconfigs/mk.linux-6.1-xenmod").write_text(
        'base = "tinyconfig"\nfragments = ["modules.config"]\n'
        'require = ["XEN_PV", "MODULES", "XEN_BLKDEV_FRONTEND"]\n')
    proc, seconds = _world_in(tmp_path, "kernels=mk.linux-6.1-xenmod")
    assert proc.returncode == 0, proc.stdout[-3000:]
    print(f"doit world with a modular kernel: {seconds:.1f}s")
    install = tmp_path / "dist/install"
    kernel = _manifest(install)["kernels"]["mk.linux-6.1-xenmod"]
    release = kernel["release"]
    assert "CONFIG_XEN_NETDEV_FRONTEND=m" in (install / kernel["config"]).read_text()
    moddir = install / "lib/modules" / release
    ko = moddir / "kernel/drivers/net/xen-netfront.ko"
    assert ko.read_bytes()[:4] == b"\x7fELF"
    assert not (moddir / "build").exists() and not (moddir / "source").exists()  # no links into the cache
    assert "kernel/drivers/net/xen-netfront.ko:" in (moddir / "modules.dep").read_text().splitlines()
    assert "kernel/drivers/net/xen-netfront.ko" in (moddir / "modules.order").read_text()
    info = subprocess.run(["modinfo", "--basedir", install, "--set-version", release, "xen-netfront"],
                          capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^filename:\s+{re.escape(str(ko))}$", info, re.M)
    assert re.search(rf"^vermagic:\s+{re.escape(release)} ", info, re.M)
    assert "xen:vif" in info  # its alias: udev loads it when a vif appears
    proc = _modprobe(install, release, "--show-depends", "xen-netfront")
    assert proc.returncode == 0 and f"insmod {ko}" in proc.stdout, proc.stderr
    assert _modprobe(install, release, "xen-blkfront").returncode == 0  # still built in


def test_xenU_is_at_least_30_percent_smaller(world):
    m = _manifest(world)["kernels"]
    xen0 = (world / m["mk.linux-6.1-xen0"]["vmlinuz"]).stat().st_size
    xenu = (world / m["mk.linux-6.1-xenU"]["vmlinuz"]).stat().st_size
    print(f"vmlinuz xen0 {xen0} bytes, xenU {xenu} bytes: {100 * (1 - xenu / xen0):.0f}% smaller")
    assert xenu <= 0.7 * xen0


def test_domain_create_reads_the_staged_kernels_configs(world, run_cli):
    """The config-RELEASE staged beside each vmlinuz is what `domain create` reads: our
    xenU boots as PVH and from an NFS root; xen0 has no NFS client, refused in one line."""
    m = _manifest(world)["kernels"]
    xenu, xen0 = ("/" + m[f"mk.linux-6.1-{k}"]["vmlinuz"] for k in ("xenU", "xen0"))
    nfs = ("--nfs-server", "192.0.2.1", "--nfs-root", "/export/g", "--ip", "192.0.2.10/24",
           "--vif", "script=vif-route", "--dry-run")
    proc = run_cli("domain", "create", "--root", world, "--name", "g", "--memory", "256", "--kernel", xenu, *nfs)
    assert proc.returncode == 0, proc.stderr
    assert 'type = "pvh"\n' in proc.stdout and 'root = "/dev/nfs"\n' in proc.stdout
    proc = run_cli("domain", "create", "--root", world, "--name", "g", "--memory", "256", "--kernel", xen0, *nfs)
    assert proc.returncode != 0 and "cannot boot from an NFS root" in proc.stderr and "CONFIG_ROOT_NFS=y" in proc.stderr
    assert not (world / "etc/xen/g.cfg").exists()


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


def test_missing_build_tool_is_one_line_naming_the_package(world, tmp_path, monkeypatch):
    """A host without gcc (the rest of /usr/bin on PATH): the first build task stops with one
    line naming the Debian package, before any build or staging."""
    shutil.copytree(ROOT / "buildconfigs", tmp_path / "buildconfigs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in ("gcc", "cc") and not re.match(r"(x86_64-linux-gnu-)?gcc-", tool.name):
            (bin_dir / tool.name).symlink_to(tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    proc, _ = _world_in(tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: missing build dependencies: gcc; install the Debian packages: gcc"], proc.stdout[-3000:]
    assert "hint: apt-get install gcc" in proc.stdout
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "dist/install").exists()
    assert not list((tmp_path / "dist/.stamps").glob("xen.json"))


def test_clean_removes_what_the_tasks_made(world, tmp_path):
    """A plain ``doit clean`` after world, dist and grub leaves dist/ as empty as it found
    it (and the build cache as it was)."""
    shutil.copytree(ROOT / "buildconfigs", tmp_path / "buildconfigs")
    db = ["--db-file", str(tmp_path / ".doit.db")]
    variables = [f"buildconfigs={tmp_path / 'buildconfigs'}", f"dist={tmp_path / 'dist'}"]
    proc, _ = _world_in(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for task in ("dist", "grub"):
        proc, _ = doit(*db, task, *variables)
        assert proc.returncode == 0, proc.stdout[-3000:]
    made = {p.name for p in (tmp_path / "dist").iterdir()}
    assert {"install", ".stamps", "grub"} <= made and any(n.endswith("-install.tgz") for n in made)
    xen_tree = Path(json.loads((tmp_path / "dist/.stamps/xen.json").read_text())["dir"])
    proc, _ = doit("clean", *db, *variables)
    assert proc.returncode == 0, proc.stdout
    assert list((tmp_path / "dist").rglob("*")) == [], proc.stdout
    assert (xen_tree / "build.json").exists()  # the cache stays: the next world restages from it
