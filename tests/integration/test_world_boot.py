"""The staged hypervisor boots under QEMU with our xen0 kernel as dom0.

QEMU loads the uncompressed Xen image (dist/xen-<ver>.elf) as a multiboot kernel; the
modules are the staged xen0 vmlinuz and a busybox initramfs whose /init reports what dom0
sees and powers off. The serial console must show Xen's banner, the scheduler from our
fragment, and dom0's userspace running with control-domain rights.
"""

from __future__ import annotations

import json

import pytest

from provision.proof.initramfs import busybox_initramfs
from provision.proof.machine import Machine

pytestmark = pytest.mark.integration

INIT = """\
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t xenfs xenfs /proc/xen
echo "dom0-userspace: kernel $(uname -r) caps=$(cat /proc/xen/capabilities)"
echo "dom0-devices: $(ls /dev | grep -E '^(xen|hvc0)' | tr '\\n' ' ')"
poweroff -f
"""


def test_staged_xen_boots_xen0_as_dom0(world, tmp_path):
    m = json.loads((world / "manifest.json").read_text())
    elf = (world / m["xen"]["elf"]).resolve()
    xen0 = m["kernels"]["mk.linux-6.1-xen0"]
    vmlinuz = world / xen0["vmlinuz"]
    initramfs = busybox_initramfs(INIT, out=tmp_path / "initramfs.cpio.gz")
    log_path = tmp_path / "serial.log"
    vm = Machine(
        log_path=log_path, kernel=elf, memory="1G", smp=2, name="xen-world-boot",
        # Multiboot modules: dom0's kernel with its command line, then its initramfs.
        initrd=f"{vmlinuz} console=hvc0 earlyprintk=xen,{initramfs}",
        append="console=com1 com1=115200,8n1 dom0_mem=512M loglvl=all guest_loglvl=all",
    )
    with vm:
        vm.wait_for(rf"Xen version {m['xen']['version']}", 300, what="Xen banner")
        vm.wait_for(r"Using scheduler: .*\(credit2\)", 300, what="default scheduler credit2")
        vm.wait_for(r"Linux version " + xen0["release"].replace(".", r"\."), 300,
                    what="dom0 kernel starts")
        match = vm.wait_for(r"dom0-userspace: kernel (\S+) caps=(\S+)", 600, what="dom0 userspace")
        vm.wait_for(r"dom0-devices: .*", 60, what="dom0 device nodes")
        vm.expect_absent(r"Kernel panic", what="no dom0 panic")
    print(vm.report())
    assert match.group(1) == xen0["release"]
    assert match.group(2) == "control_d"
    devices = vm.text.split("dom0-devices:")[1].splitlines()[0]
    assert "hvc0" in devices and "xen" in devices
