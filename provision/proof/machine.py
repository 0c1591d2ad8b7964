"""A QEMU x86_64 machine under TCG whose first serial port is a :class:`Console`.

    with Machine(disks=[image], memory="2G", log_path=log_file) as vm:
        vm.wait_for(r"Xen version", 120, what="Xen banner")
        vm.login()
        out, status = vm.shell("xl list", timeout=60)
    print(vm.report())

TCG only (``/dev/kvm`` hangs guests on our machines and CI has none), ``-cpu qemu64``
(``-cpu max`` crashes a PV dom0), no display. A network card is given only on a
network that has no way out of QEMU (user-mode networking with ``restrict=on``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.errors import ProvisionError
from provision.proof.console import Console
from provision.run import require, which


def _size_mib(memory: str | int) -> int:
    from provision.sizes import parse_size
    return memory if isinstance(memory, int) else parse_size(memory) // (1024 * 1024)


@dataclass(frozen=True)
class Lan:
    """One virtio NIC on a LAN that ends inside QEMU: user-mode networking with
    ``restrict=on`` (no packet leaves QEMU, not even to this host), on ``subnet``, which
    QEMU's side takes ``host`` of. The NIC sits at PCI slot ``slot``, so the guest's
    predictable name for it is fixed (``enp0s<slot>`` without ACPI slot numbers)."""

    subnet: str = "192.0.2.0/24"
    host: str = "192.0.2.2"
    mac: str = "52:54:00:12:34:56"
    slot: int = 16

    def argv(self) -> list[str]:
        return ["-netdev", f"user,id=lan,restrict=on,net={self.subnet},host={self.host}",
                "-device", f"virtio-net-pci,netdev=lan,mac={self.mac},addr={self.slot:#x}"]


@dataclass
class Disk:
    """A disk image for :class:`Machine`: raw by default, on virtio unless ``interface``."""

    path: Path
    format: str = "raw"
    interface: str = "virtio"
    snapshot: bool = False   # writes go to a temporary overlay, the image is untouched


class Machine(Console):
    """A QEMU x86_64 machine under TCG, its first serial port as the console.

    Before login, input is typed blind, 16 bytes at a time, 50 ms apart (see
    :attr:`Console.type_chunk`); after it, echo-paced and verified (``verify_echo``).

    Either boot a kernel directly (``kernel``, ``initrd``, ``append``) or from
    ``disks`` through the BIOS (the first disk boots). Use as a context manager:
    QEMU is always killed when the block ends, whatever happened.
    """

    def __init__(self, *, log_path: str | os.PathLike, disks: Sequence[Disk | str | os.PathLike] = (),
                 kernel: str | os.PathLike | None = None, initrd: str | os.PathLike | None = None,
                 append: str | None = None, memory: str | int = "2G", smp: int = 2,
                 cpu: str = "qemu64", lan: Lan | None = None, extra: Sequence[str] = (),
                 name: str = "qemu"):
        if cpu in ("max", "host"):
            raise ProvisionError(f"-cpu {cpu} is not supported here: it crashes a PV dom0 under "
                                 "TCG", hint="use -cpu qemu64 (the default)")
        self.disks = [d if isinstance(d, Disk) else Disk(Path(d)) for d in disks]
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.memory_mib = _size_mib(memory)
        self.smp, self.cpu, self.lan, self.extra = smp, cpu, lan, list(extra)
        super().__init__(self.qemu_argv(name), log_path, name=name)
        self.type_chunk, self.type_delay = 16, 0.05
        self.verify_echo = True

    def qemu_argv(self, name: str) -> list[str]:
        require("qemu-system-x86_64")
        argv = [
            which("qemu-system-x86_64"),
            "-name", name,
            # TCG only: KVM hangs guests on our machines and CI has no /dev/kvm.
            "-accel", "tcg",
            "-cpu", self.cpu,
            "-smp", str(self.smp),
            "-m", str(self.memory_mib),
            "-display", "none", "-vga", "none", "-monitor", "none",
            "-serial", "stdio",
            # A guest that reboots (panic=N, a triple fault) ends the run instead of looping.
            "-no-reboot",
        ]
        argv += self.lan.argv() if self.lan else ["-nic", "none"]
        for i, d in enumerate(self.disks):
            opts = f"file={d.path},format={d.format},if={d.interface},index={i},cache=unsafe"
            if d.snapshot:
                opts += ",snapshot=on"
            argv += ["-drive", opts]
        if self.kernel:
            argv += ["-kernel", os.fspath(self.kernel)]
            if self.initrd:
                argv += ["-initrd", os.fspath(self.initrd)]
            if self.append:
                argv += ["-append", self.append]
        return argv + self.extra

    def start(self) -> Machine:
        log.info(f"booting {self.name} (TCG, -cpu {self.cpu}, {self.smp} vCPUs, "
                 f"{self.memory_mib} MiB); serial log: {self.log_path}")
        return super().start()


