"""NFS-root guests: the kernel arguments and the server's /etc/exports line (manual 5.4).

The manual's own exports line has a space before the options:
``/export/vm1root 1.2.3.4/24 (rw,sync,no_root_squash)``; to exportfs that space means
"1.2.3.4/24 with default options, and the whole world read-write". We never write it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from provision import log, run, validate
from provision.domain.paths import Paths
from provision.errors import ProvisionError
from provision.fsutil import atomic_write

# The kernel's nfsroot=[SERVER:]PATH[,OPTIONS] (Documentation/admin-guide/nfs/nfsroot.rst).
_NFSROOT = re.compile(r"(?:^|\s)nfsroot=(?:(?P<server>[^:,\s]+):)?(?P<path>/[^,\s]*)")


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


def root_of(values: dict) -> tuple[str | None, str] | None:
    """The (server, path) of a domain config's NFS root: the kernel's nfsroot= in extra
    or cmdline (how we and xm wrote it), or xm's nfs_server/nfs_root keys; None if its
    root is not over NFS."""
    if isinstance(values.get("nfs_root"), str):
        server = values.get("nfs_server")
        return (server if isinstance(server, str) else None, values["nfs_root"])
    for key in ("extra", "cmdline"):
        text = values.get(key)
        if isinstance(text, str) and (m := _NFSROOT.search(text)):
            return m["server"], m["path"].rstrip("/") or "/"
    return None


def same_root(a: tuple[str | None, str], b: tuple[str | None, str]) -> bool:
    """One tree: the same path on the same server (an unnamed server may be any)."""
    return a[1] == b[1] and (a[0] is None or b[0] is None or a[0] == b[0])


def _exports(paths: Paths) -> list[tuple[str, str, str]]:
    """(path, client, options) of each client of each line of ROOT/etc/exports."""
    try:
        text = paths.exports.read_text()
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        for client in words[1:] or ["*"]:
            host, _, options = client.partition("(")
            out.append((words[0].rstrip("/") or "/", host or "*", options.rstrip(")")))
    return out


def check_export(paths: Paths, root: NfsRoot) -> None:
    """Refuse an export that cannot be right: a tree that is not there, a guest with no
    address to limit it to, or a tree another client may already write."""
    if not root.ip:
        raise ProvisionError("--exports needs the guest's address to limit the export to it",
                             hint="add --ip ADDRESS/PREFIX (the guest's static address)")
    tree = paths.inside(root.path)
    if not tree.is_dir():
        raise ProvisionError(f"the NFS root {tree} does not exist" if not tree.exists()
                             else f"the NFS root {tree} is not a directory",
                             hint=f"make the tree first: python -m provision image --debootstrap SUITE --dir {root.path}")
    client = str(ipaddress.ip_interface(root.ip).ip)
    for path, other, options in _exports(paths):
        if path == root.path.rstrip("/") and other != client and "ro" not in options.split(","):
            raise ProvisionError(f"{paths.exports} already exports {path} read-write to {other}",
                                 hint="two guests writing one root tree corrupt it: give each guest its own "
                                      "tree (image --debootstrap SUITE --dir /export/NAME)")


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


def reload_exports(paths: Paths, live: bool) -> None:
    """Make the NFS server serve ROOT/etc/exports now on a live host; an offline root's
    server reads it when it starts."""
    if not live:
        log.info(f"{paths.exports} is read by that host's NFS server (nfs-kernel-server) when it starts")
        return
    run.run(["exportfs", "-ra"], quiet=True)
    log.info("exportfs -ra: the NFS server serves the new export")
