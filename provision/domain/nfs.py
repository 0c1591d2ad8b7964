"""NFS-root guests: the kernel arguments and the server's /etc/exports line (manual 5.4).

The manual's own exports line has a space before the options:
``/export/vm1root 1.2.3.4/24 (rw,sync,no_root_squash)``; to exportfs that space means
"1.2.3.4/24 with default options, and the whole world read-write". We never write it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from provision import validate
from provision.domain.paths import Paths
from provision.errors import ProvisionError
from provision.fsutil import atomic_write


@dataclass(frozen=True)
class NfsRoot:
    server: str
    path: str
    ip: str | None = None           # ADDRESS/PREFIX of the guest; None = DHCP
    gateway: str | None = None
    hostname: str | None = None
    interface: str = "eth0"
    options: str = "vers=3,tcp"

    def __post_init__(self):
        validate.ip(self.server, "NFS server address")
        if not self.path.startswith("/") or any(c.isspace() for c in self.path):
            raise ProvisionError(f"NFS root '{self.path}' must be an absolute path without spaces")
        if self.ip:
            validate.interface(self.ip)
        if self.gateway:
            validate.ip(self.gateway, "gateway")
        if self.hostname:
            validate.hostname(self.hostname)

    def kernel_args(self) -> str:
        nfsroot = f"nfsroot={self.server}:{self.path}" + (f",{self.options}" if self.options else "")
        if self.ip:
            iface = ipaddress.ip_interface(self.ip)
            # ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>
            ip = (f"ip={iface.ip}:{self.server}:{self.gateway or ''}:{iface.netmask}:"
                  f"{self.hostname or ''}:{self.interface}:off")
        else:
            ip = f"ip=:{self.server}::::{self.interface}:dhcp"
        return f"{nfsroot} {ip}"

    def settings(self, extra: str | None) -> dict:
        return {"root": "/dev/nfs", "extra": " ".join(filter(None, [self.kernel_args(), extra]))}

    def export_line(self) -> str:
        client = str(ipaddress.ip_interface(self.ip).ip) if self.ip else "*"
        # No space before '(': the options belong to this client only.
        return f"{self.path} {client}(rw,sync,no_root_squash,no_subtree_check)"


def add_export(paths: Paths, line: str) -> bool:
    """Add ``line`` to ROOT/etc/exports unless that path/client is already exported."""
    path = paths.exports
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    key = line.split("(")[0].split()
    for existing in text.splitlines():
        if existing.split("(")[0].split() == key:
            if existing.strip() != line:
                raise ProvisionError(f"{path} already exports {key[0]} to {key[1]} differently: {existing.strip()}",
                                     hint="edit that line by hand, then run exportfs -ra")
            return False
    if text and not text.endswith("\n"):
        text += "\n"
    atomic_write(path, text + line + "\n", 0o644)
    return True
