"""/etc/xen/auto: the domains xendomains starts at boot.

Entries are relative symlinks (auto/NAME.cfg -> ../NAME.cfg), so they resolve the same
on the live host and inside an offline image mounted anywhere (xen-tools' absolute
links into the build root dangle after boot). A link is only made to a config that
exists, and removing a domain removes its link first, so our links never dangle;
``listing`` reports anyone else's dangling entries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.domain.paths import Paths
from provision.errors import ProvisionError


def link_path(paths: Paths, name: str) -> Path:
    return paths.auto / paths.config(name).name


def enable(paths: Paths, name: str) -> Path:
    config = paths.config(name)
    if not config.is_file():
        raise ProvisionError(f"no domain config {config}", hint="create it first: python -m provision domain create ...")
    link = link_path(paths, name)
    target = os.path.relpath(config, paths.auto)
    paths.auto.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == target:
        return link
    if link.exists() and not link.is_symlink():
        raise ProvisionError(f"{link} is a file, not a link to {config}",
                             hint="move it away; xen-provision manages auto/ entries as links")
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)  # atomic: the entry is either the old one or the new link
    return link


def disable(paths: Paths, name: str) -> bool:
    link = link_path(paths, name)
    if link.is_symlink():
        link.unlink()
        return True
    if link.exists():
        raise ProvisionError(f"{link} is a copied file, not a link",
                             hint="remove it by hand if the domain should not start at boot")
    return False


@dataclass
class Entry:
    name: str
    path: Path
    target: Path | None
    ok: bool


def listing(paths: Paths) -> list[Entry]:
    entries = []
    if not paths.auto.is_dir():
        return entries
    for p in sorted(paths.auto.iterdir()):
        if p.name.startswith("."):
            continue
        resolved = Path(os.path.realpath(p)) if p.is_symlink() else p
        ok = p.is_file()
        if not ok:
            log.warn(f"{p} is a dangling link to {os.readlink(p)}; xendomains will skip it")
        entries.append(Entry(p.stem if p.suffix == ".cfg" else p.name, p, resolved, ok))
    return entries
