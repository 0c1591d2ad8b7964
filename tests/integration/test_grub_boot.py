"""Real GRUB boots the hypervisor and a dom0 kernel through OUR generated entry, in QEMU.

`python -m provision grub install --format custom --default` writes the entry into a
test root's /boot/grub/custom.cfg; grub-mkrescue makes a BIOS-bootable ISO of that
/boot whose grub.cfg only sources custom.cfg (as GRUB's 41_custom does), so the entry
and its `set default` are exactly what we generated. Xen prints its command line on
com1 early ("(XEN) Command line: ..."): it must be byte for byte what we rendered, and
Xen must run the scheduler we asked for; dom0 must reach its /init with our line.

Inputs: the hypervisor (xen-<ver>.gz + xen-<ver>.config) and the xen0 kernel that
`doit world` staged (the session fixture ``world``, the dist/install Path). Where that
fixture does not exist yet, or with XEN_PROVISION_GRUB_TEST_INPUTS=debian, Debian's
packaged hypervisor and kernel are used instead (apt-get download, cached);
XEN_PROVISION_GRUB_TEST_INPUTS=/abs/dist/install uses what an earlier `doit world` staged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provision.cache import cache_dir
from provision.fsutil import atomic_write
from provision.proof.initramfs import busybox_initramfs
from provision.proof.machine import Machine

pytestmark = pytest.mark.integration

SCHED = "credit"  # not Xen's default (credit2), so the check proves sched= took effect
XEN_ARGS = ["--dom0-mem", "512M", "--com1", "115200,8n1", "--console", "com1",
            "--sched", SCHED, "--noreboot", "--loglvl", "all"]
INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "DOM0-INIT hypervisor=$(cat /sys/hypervisor/type 2>/dev/null) cmdline=$(cat /proc/cmdline)"
poweroff -f
"""


def _debian_boot_files() -> Path:
    """Debian's xen-hypervisor and linux-image, unpacked once into the cache; returns its boot/."""
    cache = cache_dir("grub-test", "debian")
    boot = cache / "root" / "boot"
    if list(boot.glob("xen-*.gz")) and list(boot.glob("vmlinuz-*")):
        return boot
    xen_pkg = subprocess.run(["apt-cache", "search", "--names-only", r"^xen-hypervisor-[0-9.]+-amd64$"],
                             capture_output=True, text=True, check=True).stdout.split()
    deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                          check=True).stdout
    kernel_pkg = re.search(r"Depends: (linux-image-\S+-amd64)", deps)
    if not xen_pkg or not kernel_pkg:
        pytest.fail("apt cannot find Debian's xen-hypervisor-*-amd64 or linux-image-amd64 (apt-get update?)")
    download = cache / "debs"
    download.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", xen_pkg[0], kernel_pkg.group(1)], cwd=download,
                   check=True, capture_output=True)
    staging = cache / "root.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(download.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
    shutil.rmtree(cache / "root", ignore_errors=True)
    staging.rename(cache / "root")
    return boot


def _staged(request) -> tuple[Path, Path, Path, str]:
    """(hypervisor, its .config, dom0 kernel, where they came from)."""
    inputs = os.environ.get("XEN_PROVISION_GRUB_TEST_INPUTS", "")
    if inputs == "debian":
        boot, source = _debian_boot_files(), "Debian packages (XEN_PROVISION_GRUB_TEST_INPUTS=debian)"
    elif inputs.startswith("/"):
        # A dist/install that `doit world` already staged, without running doit here.
        boot, source = Path(inputs) / "boot", f"{inputs} (XEN_PROVISION_GRUB_TEST_INPUTS)"
        assert boot.is_dir(), f"XEN_PROVISION_GRUB_TEST_INPUTS={inputs} has no boot/"
    elif inputs:
        pytest.fail(f"XEN_PROVISION_GRUB_TEST_INPUTS={inputs}: use debian or the absolute path of a staged dist/install")
    else:
        try:
            boot, source = Path(request.getfixturevalue("world")) / "boot", "doit world (dist/install)"
        except pytest.FixtureLookupError:
            boot, source = _debian_boot_files(), "Debian packages (no `world` fixture)"
    xens = sorted(p for p in boot.glob("xen-*.gz") if not p.is_symlink())
    kernels = sorted(p for p in boot.glob("vmlinuz-*-xen0")) or sorted(boot.glob("vmlinuz-*"))
    assert xens and kernels, f"{boot} has no xen-*.gz or vmlinuz-*"
    xen = xens[-1]
    config = xen.with_name(xen.name.removesuffix(".gz") + ".config")
    assert config.exists(), f"{config} is missing: the scheduler check needs it"
    return xen, config, kernels[-1], source


@pytest.fixture
def boot_root(request, tmp_path, root_required) -> tuple[Path, str]:
    for tool in ("grub-mkrescue", "xorriso", "mformat", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: ./setup-host installs it")
    xen, config, kernel, source = _staged(request)
    root = tmp_path / "root"
    boot = root / "boot"
    (boot / "grub").mkdir(parents=True)
    shutil.copyfile(xen, boot / xen.name)
    shutil.copyfile(config, boot / config.name)
    kernel_name = kernel.name if kernel.name.endswith("-xen0") else kernel.name + "-xen0"
    shutil.copyfile(kernel, boot / kernel_name)
    busybox_initramfs(INIT, out=boot / "initrd.img-test")
    return root, source


@pytest.mark.parametrize("loader", ["multiboot2", "multiboot"])
def test_grub_boots_xen_with_our_command_line(boot_root, run_cli, tmp_path, loader):
    root, source = boot_root
    proc = run_cli("grub", "install", "--root", root, "--format", "custom", "--default", "--no-getty",
                   "--loader", loader, "--initrd", "/boot/initrd.img-test", "--root-device", "/dev/ram0",
                   *XEN_ARGS)
    assert proc.returncode == 0, proc.stderr
    custom = (root / "boot/grub/custom.cfg").read_text()
    module = "module2" if loader == "multiboot2" else "module"
    xen_line = re.search(rf"^\t{loader} (\S+) (.*)$", custom, re.M)
    dom0_line = re.search(rf"^\t{module} /boot/vmlinuz\S* (.*)$", custom, re.M)
    assert xen_line and dom0_line, custom
    expected = xen_line.group(2)
    assert expected == f"dom0_mem=512M com1=115200,8n1 console=com1 sched={SCHED} loglvl=all noreboot"
    assert dom0_line.group(1) == "root=/dev/ram0 ro console=hvc0"

    # The ISO's grub.cfg only sets up GRUB's own serial terminal and sources our file.
    atomic_write(root / "boot/grub/grub.cfg",
                 "serial --unit=0 --speed=115200\nterminal_input serial console\n"
                 "terminal_output serial console\nset timeout=1\nsource $prefix/custom.cfg\n")
    iso = tmp_path / "boot.iso"
    subprocess.run(["grub-mkrescue", "-o", str(iso), str(root)], check=True, capture_output=True, timeout=300)

    log_path = tmp_path / "serial.log"
    with Machine(log_path=log_path, memory="1024M", smp=1,
                 extra=["-cdrom", str(iso), "-boot", "d"], name=f"grub-xen-{loader}") as vm:
        # Patterns end in \n: the console may hold half a line when a wait looks at it.
        line = vm.wait_for(r"\(XEN\) Command line: ([^\n]*)\n", 300, what="Xen's command line")
        assert line.group(1).rstrip() == expected, f"inputs: {source}"
        vm.wait_for(rf"\(XEN\) Using scheduler: [^\n]*\({SCHED}\)", 300, what=f"scheduler {SCHED}")
        # Linux's own early line, with or without a printk timestamp (not Xen's "(XEN) ...").
        kernel = vm.wait_for(r"(?m)^(?:\[ *[0-9.]+\] )?Command line: ([^\n]*)\n", 300,
                             what="dom0 kernel's command line")
        assert kernel.group(1).rstrip() == dom0_line.group(1)
        if loader == "multiboot2":  # one full boot to userspace is enough
            init = vm.wait_for(r"DOM0-INIT hypervisor=(\S*) cmdline=([^\n]*)\n", 600, what="dom0 /init")
            assert init.group(1) == "xen"
            assert init.group(2).rstrip() == dom0_line.group(1)
        print(f"inputs: {source}\n{vm.report()}")
