"""Planned changes to files in a target root, applied with backups and undo.

A command that edits a system's configuration (boot entries, network, services) first
plans every file as a :class:`Change` (what the path should hold: content, nothing, or a
symlink), so that ``--dry-run`` can show the plan and a second run with the same request
changes nothing. :func:`apply` then writes only what differs: each file atomically,
each replaced file backed up (beside itself as ``<name>.<UTC time>.xen-provision.bak``,
or under ``backup_dir`` where a file beside it would be read as configuration), and a
rollback registered for every write so that a failure or Ctrl-C restores all of them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.fsutil import atomic_write, within
from provision.undo import UndoStack


@dataclass(frozen=True)
class Change:
    """What one path should be: ``content`` (None = absent) or a symlink to ``link``."""

    path: str                # as seen inside the target root
    content: bytes | None
    mode: int | None = 0o644  # None: keep the file's mode (shared files)
    link: str | None = None


def current(path: Path) -> tuple[bytes | None, str | None, int | None]:
    """(content, link target, mode) of ``path``; all None when it does not exist."""
    if path.is_symlink():
        return None, os.readlink(path), None
    try:
        return path.read_bytes(), None, path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return None, None, None


def restore(path: Path, content: bytes | None, link: str | None, mode: int | None) -> None:
    """Put ``path`` back to what :func:`current` returned."""
    if path.is_symlink() or path.exists():
        path.unlink()
    if link is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(link)
    elif content is not None:
        atomic_write(path, content, mode or 0o644)


def backup_name(path: Path, stamp: str) -> Path:
    candidate = path.with_name(f"{path.name}.{stamp}.xen-provision.bak")
    n = 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}.{stamp}-{n}.xen-provision.bak")
    return candidate


def differs(root: Path, ch: Change) -> bool:
    """Whether applying ``ch`` would change anything."""
    content, link, mode = current(within(root, ch.path))
    if ch.link is not None:
        return link != ch.link
    if ch.content is None:
        return content is not None or link is not None
    return content != ch.content or (ch.mode is not None and mode != ch.mode)


def apply(root: Path, changes: list[Change], undo: UndoStack, *,
          backup_dir: str | None = None, backups: list[Path] | None = None) -> list[str]:
    """Write the changes that differ from what is there; returns the paths changed.

    ``backup_dir`` (a path inside ``root``) keeps the backups of replaced files there,
    under their own path, instead of beside them: for directories whose every file is
    read as configuration (/etc/network/interfaces.d, /etc/systemd/network). The
    backups made are appended to ``backups`` when given.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    changed = []
    for ch in changes:
        if not differs(root, ch):
            continue
        path = within(root, ch.path)
        content, link, mode = current(path)
        if content is not None:
            beside = within(root, f"{backup_dir}/{ch.path}") if backup_dir else path
            backup = backup_name(beside, stamp)
            atomic_write(backup, content, 0o644)
            undo.rollback(f"remove {backup}", backup.unlink)
            if backups is not None:
                backups.append(backup)
            log.info(f"backed up {ch.path} to {backup if backup_dir else backup.name}")
        undo.rollback(f"restore {ch.path}", restore, path, content, link, mode, made=str(path))
        if ch.link is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(ch.link)
        elif ch.content is None:
            path.unlink()
        else:
            atomic_write(path, ch.content, ch.mode if ch.mode is not None else (mode or 0o644))
        changed.append(ch.path)
        log.info(f"{'removed' if ch.content is None and ch.link is None else 'wrote'} {ch.path}")
    return changed


def describe(root: Path, changes: list[Change], *, show_content: bool = True) -> list[str]:
    """The plan as text for ``--dry-run``: each change that differs, with the new content."""
    lines = []
    for ch in changes:
        if not differs(root, ch):
            continue
        if ch.link is not None:
            lines.append(f"link   {ch.path} -> {ch.link}")
        elif ch.content is None:
            lines.append(f"remove {ch.path}")
        else:
            exists = current(within(root, ch.path))[0] is not None
            lines.append(f"{'change' if exists else 'write'} {ch.path}"
                         + (f" (mode {ch.mode:04o})" if ch.mode is not None else ""))
            if show_content:
                text = ch.content.decode(errors="replace")
                lines += [f"    | {line}" for line in text.rstrip("\n").split("\n")]
    return lines
