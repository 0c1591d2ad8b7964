"""The checks xend made and xl no longer makes, done before any file is written.

- a domain name used by no other config;
- MACs unique among all configs;
- an NFS root tree no other config boots from (two guests writing one root corrupt it);
- each disk free for this domain, as :mod:`provision.inuse` answers it for every command:
  no disk writable by two domain configs (read-only sharing is fine), none dom0 has
  mounted or uses as swap while a guest would write it, nor one dom0 has mounted
  read-write while a guest reads it; and no disk twice in one domain unless every use of
  it is read-only.
"""

from __future__ import annotations

from pathlib import Path

from provision import inuse
from provision.domain import nfs
from provision.domain.model import Domain
from provision.domain.paths import Paths
from provision.errors import ProvisionError

DomainConfig = inuse.DomainConfig


def scan(paths: Paths, exclude: Path | None = None, quiet: bool = False) -> list[DomainConfig]:
    """The other domains' names, disks and MACs (every config inuse reads: *.cfg, Xen 2.0
    names without an extension, auto/); an unreadable one is a warning unless ``quiet``."""
    return inuse.domain_configs(paths.xen, exclude=exclude, quiet=quiet)


def check(dom: Domain, others: list[DomainConfig], dom0: bool = True,
          proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> None:
    """Raise one ProvisionError for the first conflict; return quietly if none.

    ``dom0=False`` (an offline root) skips the mount and swap checks: this machine's
    mounts say nothing about the host the image will become."""
    for other in others:
        if other.name == dom.name:
            raise ProvisionError(f"a domain named '{dom.name}' already exists in {other.path}",
                                 hint="choose another name, or remove that domain first")
    mine = nfs.root_of({"extra": dom.extra, "cmdline": dom.cmdline})
    for other in others if mine else ():
        if other.nfs_root and nfs.same_root(mine, other.nfs_root):
            server = f"{other.nfs_root[0]}:" if other.nfs_root[0] else ""
            raise ProvisionError(f"'{other.name or other.path}' ({other.path}) already has its root at {server}{mine[1]}",
                                 hint="two guests writing one root tree corrupt it: give each guest its own "
                                      "tree (image --debootstrap SUITE --dir /export/NAME)")
    macs = dom.macs()
    for m in macs:
        if macs.count(m) > 1:
            raise ProvisionError(f"MAC {m} is given to two interfaces of '{dom.name}'")
        for other in others:
            if m in other.macs:
                raise ProvisionError(f"MAC {m} is already used by {other.path}",
                                     hint="leave mac= out to get a free one generated")
    for i, disk in enumerate(dom.disks):
        for second in dom.disks[i + 1:]:
            if (disk.writable or second.writable) and inuse.same_disk(disk.target, second.target, sys):
                alias = "" if second.target == disk.target else f" (as {second.target})"
                raise ProvisionError(
                    f"disk {disk.target} is given to '{dom.name}' twice, as {disk.vdev} and {second.vdev}{alias}",
                    hint="a disk written through two devices at once is corrupted: give it once",
                )
        inuse.refuse(disk.target, writing=disk.writable, what=f"disk {disk.target}", for_domain=True,
                     configs=others, dom0=dom0, proc=proc, sys=sys)
