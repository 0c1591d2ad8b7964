"""``grub bios``: GRUB's boot sector and core image written into a disk image's MBR gap,
from the image root's own GRUB modules, and really booted by QEMU. No loop device, no
root: the filesystem is made inside the image at the partition's offset."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.grub import bios
from provision.proof.machine import Machine

HOST_GRUB = Path(bios.I386_PC)


def image_root(tmp_path: Path) -> Path:
    """A root as `image --include grub-pc-bin` makes one: GRUB's i386-pc files in /usr/lib."""
    root = tmp_path / "fsroot"
    shutil.copytree(HOST_GRUB, root / bios.I386_PC.lstrip("/"))
    (root / "boot/grub").mkdir(parents=True)
    return root


@pytest.mark.skipif(not ((HOST_GRUB / "boot.img").exists() and shutil.which("grub-mkimage")
                         and shutil.which("qemu-system-x86_64") and shutil.which("sfdisk")),
                    reason="needs grub-common, grub-pc-bin, fdisk and qemu-system-x86 (setup-host)")
def test_grub_written_into_the_mbr_really_boots(tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], input="label: dos\n2048,,83,*\n", text=True, check=True)
    root = image_root(tmp_path)
    bios.stage_modules(root)
    assert (root / "boot/grub/i386-pc/normal.mod").is_file()
    (root / "boot/grub/grub.cfg").write_text(
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
        "echo GRUB-BOOTED-FROM-OUR-MBR\nhalt\n")
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    subprocess.run([mkfs, "-q", "-F", "-E", "offset=1048576", "-d", str(root), str(image), "63M"], check=True)
    before = image.read_bytes()[0x1B8:0x200]
    bios.install(image, root)
    data = image.read_bytes()
    assert data[0x1B8:0x200] == before   # disk signature and partition table kept
    assert data[0x5C:0x64] == (1).to_bytes(8, "little")
    with Machine(log_path=tmp_path / "serial.log", disks=[image], memory="128M", smp=1) as vm:
        vm.wait_for("GRUB-BOOTED-FROM-OUR-MBR", 120, what="GRUB from our MBR")
    assert vm.checks[0].ok


def test_a_disk_without_room_or_a_root_without_grub_is_refused(tmp_path, run_cli):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    if (HOST_GRUB / "boot.img").exists():
        with pytest.raises(ProvisionError, match="no msdos partition table"):
            bios.install(image, image_root(tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    proc = run_cli("grub", "bios", image, "--root", bare)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {bare} has no GRUB for BIOS (/usr/lib/grub/i386-pc/boot.img)",
                                        "hint: install grub-pc-bin in it"]
    assert image.read_bytes() == bytes(1 << 20)   # nothing written
