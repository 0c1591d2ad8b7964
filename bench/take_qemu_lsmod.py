#!/usr/bin/env python3
"""Take buildconfigs/qemu-pc.lsmod: the modules Debian's own kernel loads on the boot
test's QEMU machine (this container has no /proc/modules of its own).

    python3 bench/take_qemu_lsmod.py [--out buildconfigs/qemu-pc.lsmod] [--keep DIR]

Downloads linux-image-<abi>-amd64 (the Linux version of world.toml) with the host's apt
(``apt-get download``, the host's Debian mirror), indexes its modules with depmod and
boots its vmlinuz under QEMU the way the boot test boots a machine (TCG, -cpu qemu64, a
virtio disk, a virtio NIC at PCI slot 16 on a restrict=on user net: provision.proof's
Machine and Lan). The initramfs is busybox plus the package's modules and the host's
kmod; its /init does udev's coldplug (modprobe every modalias under /sys/devices until
nothing new loads), mounts the ext4 disk and brings the NIC up, then prints kmod's
``lsmod``. That output is written to --out unchanged.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.build import config  # noqa: E402
from provision.build.lsmod import validate  # noqa: E402
from provision.proof.initramfs import busybox_initramfs  # noqa: E402
from provision.proof.machine import Disk, Lan, Machine  # noqa: E402

INIT = r"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mkdir -p /k /mnt
for t in modprobe lsmod; do ln -s /kmod/kmod /k/$t; done
echo /k/modprobe > /proc/sys/kernel/modprobe
# udev's coldplug: the driver of every device, again while new devices keep appearing.
n=-1
while [ "$n" != "$(wc -l < /proc/modules)" ]; do
    n=$(wc -l < /proc/modules)
    find /sys/devices -name modalias -exec cat {} + | sort -u | xargs /k/modprobe -a -q -b 2>/dev/null
    sleep 1
done
mount -t ext4 /dev/vda /mnt && echo ROOT-MOUNTED
for nic in /sys/class/net/*; do ip link set "${nic##*/}" up; done
sleep 2
echo LSMOD-BEGIN
/k/lsmod
echo LSMOD-END
poweroff -f
"""


def abi_version() -> tuple[str, str]:
    """world.toml's Linux source version and the ABI name of its linux-image package,
    read from the unpacked source's debian/ (fetched by doit source)."""
    world = config.load(ROOT / "buildconfigs", kernels=[])
    version = world.linux_source.version
    if not version:
        sys.exit("error: world.toml's [linux] source has no pinned version")
    from provision.build.sources import fetch
    tree = fetch(world.linux_source).tree
    from provision.build.debconfig import abiname
    return version, abiname(tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "buildconfigs/qemu-pc.lsmod")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    version, abi = abi_version()
    package = f"linux-image-{abi}-amd64"
    work = args.keep or Path(tempfile.mkdtemp(prefix="take-lsmod."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        debs = work / "deb"
        debs.mkdir(exist_ok=True)
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=debs, check=True)
        img = work / "img"
        shutil.rmtree(img, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", next(debs.glob(f"{package}_*.deb")), img], check=True)
        release = f"{abi}-amd64"
        subprocess.run(["depmod", "-b", img, release], check=True)
        files: dict[str, str | Path] = {}
        for path in sorted((img / "lib/modules").rglob("*")):
            if path.is_file():
                files[str(path.relative_to(img))] = path
        kmod = Path(shutil.which("kmod") or "/usr/bin/kmod")
        files["kmod/kmod"] = kmod
        for lib in re.findall(r"=> (/\S+)|^\s*(/\S+)", subprocess.run(
                ["ldd", kmod], capture_output=True, text=True, check=True).stdout, re.M):
            path = lib[0] or lib[1]
            files[path.lstrip("/")] = Path(path)
        initrd = busybox_initramfs(INIT, files=files, out=work / "initrd.gz")
        disk = work / "root.ext4"
        subprocess.run(["truncate", "-s", "32M", disk], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", disk], check=True)
        log = work / "console.log"
        with Machine(log_path=log, kernel=img / f"boot/vmlinuz-{release}", initrd=initrd,
                     append="console=ttyS0 loglevel=1 panic=-1", memory="3G", disks=[Disk(disk)],
                     lan=Lan(), name="take-lsmod") as vm:
            vm.wait_for(r"LSMOD-END", args.timeout, what="lsmod output")
            text = vm.text
        body = text.split("LSMOD-BEGIN", 1)[1].split("LSMOD-END", 1)[0]
        lines = [line.rstrip("\r") for line in body.splitlines()]
        lines = [line for line in lines if line.strip() and not line.startswith("[")]
        out = "\n".join(lines) + "\n"
        validate(out, str(args.out))
        if "ROOT-MOUNTED" not in text:
            sys.exit(f"error: the ext4 disk did not mount; see {log}")
        args.out.write_text(out)
        print(f"{args.out}: {len(lines) - 1} modules (Debian {package} {version} on QEMU pc, TCG)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
