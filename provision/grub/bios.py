"""GRUB in a disk image's MBR, for images whose loop device grub-install cannot use.

What grub-install does through grub-bios-setup, done on the image file: grub-install
cannot map a loop device's partition to a BIOS drive (grub-probe: "cannot find a GRUB
drive for /dev/loopNp1": the loop driver has no HDIO_GETGEO). GRUB's own grub-mkimage
makes core.img from the image's own GRUB modules (the root's grub-pc-bin, so that the
core and the modules it loads are one version); boot.img goes into the MBR's first 440
bytes (the disk signature and partition table stay), core.img into the gap before the
first partition, and the two block pointers grub-bios-setup writes are set the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from provision.errors import ProvisionError
from provision.fsutil import within
from provision.run import require, run

I386_PC = "/usr/lib/grub/i386-pc"
PREFIX = "(hd0,msdos1)/boot/grub"
CORE_MODULES = ("biosdisk", "part_msdos", "ext2")


def modules_dir(root: Path) -> Path:
    d = within(root, I386_PC, follow=True)
    if not (d / "boot.img").is_file():
        raise ProvisionError(f"{root} has no GRUB for BIOS ({I386_PC}/boot.img)",
                             hint="install grub-pc-bin in it")
    return d


def stage_modules(root: Path) -> None:
    """The root's GRUB modules into its /boot/grub/i386-pc, as grub-install copies them."""
    src = modules_dir(root)
    dest = within(root, "/boot/grub/i386-pc")
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".mod", ".lst", ".img", ".o"):
            shutil.copyfile(f, dest / f.name)


def install(disk: Path, root: Path, prefix: str = PREFIX) -> None:
    """Make the msdos-partitioned ``disk`` boot GRUB from ``root`` (its first partition,
    mounted) at power-on."""
    require("grub-mkimage")
    src = modules_dir(root)
    with tempfile.TemporaryDirectory(prefix="grub-core.") as tmp:
        core_path = Path(tmp) / "core.img"
        run(["grub-mkimage", "-O", "i386-pc", "-d", src, "-o", core_path, "-p", prefix, *CORE_MODULES],
            quiet=True)
        core = bytearray(core_path.read_bytes())
    boot = bytearray((src / "boot.img").read_bytes())
    nsec = -(-len(core) // 512)
    core += bytes(nsec * 512 - len(core))
    try:
        f = open(disk, "r+b")
    except FileNotFoundError:
        raise ProvisionError(f"disk image {disk} does not exist") from None
    with f:
        mbr = bytearray(f.read(512))
        first_part = int.from_bytes(mbr[0x1BE + 8:0x1BE + 12], "little")
        if len(mbr) < 512 or mbr[0x1FE:] != b"\x55\xaa" or first_part < 1 + nsec:
            raise ProvisionError(f"{disk}: no msdos partition table with room for GRUB's "
                                 f"{nsec} sectors before the first partition",
                                 hint="partition it with the first partition at 1 MiB (storage partition does)")
        stage_modules(root)
        boot[0x5C:0x64] = (1).to_bytes(8, "little")   # core.img's first sector (diskboot)
        boot[0x64] = 0xFF                              # boot from the drive the BIOS says
        boot[0x66:0x68] = b"\x90\x90"                 # a hard disk: skip the floppy probe
        # diskboot's blocklist: the rest of core.img, sectors 2.., loaded at 0x820:0.
        core[500:512] = ((2).to_bytes(8, "little") + (nsec - 1).to_bytes(2, "little")
                         + (0x820).to_bytes(2, "little"))
        mbr[:0x1B8] = boot[:0x1B8]
        f.seek(0)
        f.write(mbr)
        f.write(core)
        f.flush()
        os.fsync(f.fileno())
