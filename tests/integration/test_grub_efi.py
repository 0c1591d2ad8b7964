"""Real xen.efi, started by real UEFI firmware (OVMF) in QEMU, reads OUR xen.cfg.

`python -m provision grub install --efi-dir /boot/efi/EFI/xen` writes xen.cfg into a
test root; the files it names (and xen.efi) are copied beside it onto a FAT ESP image,
whose startup.nsh makes the EFI shell run \\EFI\\xen\\xen.efi. xen.efi reads xen.cfg from
its own directory: Xen's command line must be exactly our options=, dom0's exactly our
kernel= arguments, and dom0 must reach its /init from our ramdisk=.

Inputs: Debian's packaged hypervisor (xen-<ver>.efi) and kernel, cached, because
`doit world` stages no xen.efi (see test_grub_boot.py for the staged hypervisor).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provision.proof.initramfs import busybox_initramfs
from provision.proof.machine import Disk, Machine
from tests.integration.test_grub_boot import INIT, XEN_ARGS, _debian_boot_files

pytestmark = pytest.mark.integration

OVMF = Path("/usr/share/ovmf/OVMF.fd")
EFI_DIR = "/boot/efi/EFI/xen"


def fat_image(path: Path, files: dict[str, Path]) -> None:
    """A 64 MiB FAT32 ESP holding ``files`` (their paths on the ESP, '/'-separated)."""
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(["mformat", "-i", str(path), "-F", "::"], check=True, capture_output=True)
    dirs = sorted({str(Path(name).parent) for name in files} - {"."})
    for d in dirs:
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            subprocess.run(["mmd", "-D", "s", "-i", str(path), f"::/{sub}"], capture_output=True)
    for name, src in files.items():
        subprocess.run(["mcopy", "-i", str(path), str(src), f"::/{name}"], check=True, capture_output=True)


def test_xen_efi_boots_with_our_xen_cfg(tmp_path, run_cli):
    for tool in ("mformat", "mmd", "mcopy", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: ./setup-host installs it")
    if not OVMF.is_file():
        pytest.fail(f"{OVMF} is missing: ./setup-host installs ovmf")
    deb = _debian_boot_files()
    xen_efi = sorted(deb.glob("xen-*.efi"))
    xen_gz = sorted(p for p in deb.glob("xen-*.gz") if not p.is_symlink())
    kernel = sorted(deb.glob("vmlinuz-*"))
    assert xen_efi and xen_gz and kernel, f"{deb} has no xen-*.efi, xen-*.gz or vmlinuz-*"

    root = tmp_path / "root"
    boot = root / "boot"
    boot.mkdir(parents=True)
    # The entry is built from /boot as usual; xen.cfg only names the kernel and ramdisk.
    shutil.copyfile(xen_gz[-1], boot / xen_gz[-1].name)
    config = xen_gz[-1].with_name(xen_gz[-1].name.removesuffix(".gz") + ".config")
    shutil.copyfile(config, boot / config.name)
    kernel_name = kernel[-1].name + "-xen0"
    shutil.copyfile(kernel[-1], boot / kernel_name)
    busybox_initramfs(INIT, out=boot / "initrd.img-test")

    proc = run_cli("grub", "install", "--root", root, "--format", "custom", "--no-getty",
                   "--efi-dir", EFI_DIR, "--initrd", "/boot/initrd.img-test",
                   "--root-device", "/dev/ram0", *XEN_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert f"copy them into {EFI_DIR} beside xen.efi" in proc.stderr
    efi = root / EFI_DIR.lstrip("/")
    cfg = (efi / "xen.cfg").read_text()
    options = next(line for line in cfg.splitlines() if line.startswith("options="))[len("options="):]
    kernel_line = next(line for line in cfg.splitlines() if line.startswith("kernel="))[len("kernel="):]
    assert options == "dom0_mem=512M com1=115200,8n1 console=com1 sched=credit loglvl=all noreboot"
    assert kernel_line == f"{kernel_name} root=/dev/ram0 ro console=hvc0"
    assert "ramdisk=initrd.img-test\n" in cfg

    startup = tmp_path / "startup.nsh"
    startup.write_text("fs0:\\EFI\\xen\\xen.efi\r\n")
    esp = tmp_path / "esp.img"
    fat_image(esp, {
        "startup.nsh": startup,
        "EFI/xen/xen.efi": xen_efi[-1],
        "EFI/xen/xen.cfg": efi / "xen.cfg",
        f"EFI/xen/{kernel_name}": boot / kernel_name,
        "EFI/xen/initrd.img-test": boot / "initrd.img-test",
    })

    with Machine(log_path=tmp_path / "serial.log", memory="1024M", smp=1,
                 disks=[Disk(esp, interface="ide")], extra=["-bios", str(OVMF)], name="xen-efi") as vm:
        line = vm.wait_for(r"\(XEN\) Command line: ([^\n]*)\n", 400, what="Xen's command line")
        assert line.group(1).rstrip() == options
        vm.wait_for(r"\(XEN\) Using scheduler: [^\n]*\(credit\)", 300, what="scheduler credit")
        dom0 = vm.wait_for(r"(?m)^(?:\[ *[0-9.]+\] )?Command line: ([^\n]*)\n", 300,
                           what="dom0 kernel's command line")
        assert dom0.group(1).rstrip() == kernel_line.split(" ", 1)[1]
        init = vm.wait_for(r"DOM0-INIT hypervisor=(\S*) cmdline=([^\n]*)\n", 600, what="dom0 /init")
        assert init.group(1) == "xen"
        print(vm.report())
