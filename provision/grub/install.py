"""Install Xen boot entries into a live /boot or an offline image root, beside the user's own.

Everything is planned first (validated model, paths checked in the target, files
rendered), then written: each file atomically, each replaced file backed up beside
itself as ``<name>.<UTC time>.xen-provision.bak`` (mode 0644, so grub-mkconfig never
runs a backed-up script). Shared files (custom.cfg, menu.lst, inittab, securetty) get
a managed block between BEGIN/END markers; the bytes outside it are never changed.
Files that are ours alone (the grub.d script, the GRUB_DEFAULT drop-in, xen.cfg) are
written whole. A second run with the same request changes nothing.

``--default`` sets GRUB_DEFAULT to our entry's id in a drop-in,
/etc/default/grub.d/xen-provision.cfg, which Debian's grub-mkconfig reads after
/etc/default/grub: GRUB's own scripts are neither renamed nor diverted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from provision import log
from provision.changes import Change, apply, current, restore
from provision.errors import ProvisionError
from provision.fsutil import within
from provision.grub.render import (
    BootEntry,
    render_grub2,
    render_grubd_script,
    render_menu_lst,
    render_xen_cfg,
    script_check,
)
from provision.run import run, which
from provision.sizes import shorten
from provision.undo import UndoStack

GRUBD_SCRIPT = "/etc/grub.d/42_xen_provision"
DEFAULT_DROPIN = "/etc/default/grub.d/xen-provision.cfg"
BEGIN = "### BEGIN xen-provision: managed block, rewritten by `python -m provision grub` ###"
END = "### END xen-provision ###"
SYSTEMD_UNIT_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system")
GETTY_WANTS = "/etc/systemd/system/getty.target.wants"
GETTY_MARKER = "/var/lib/xen-provision/serial-getty"


@dataclass
class Request:
    root: Path
    entries: list[BootEntry]
    format: str = "grubd"            # grubd | custom
    loader: str = "multiboot2"
    make_default: bool = False
    menu_lst: bool = False
    efi_dir: str | None = None       # directory of xen.efi inside the target, for xen.cfg
    console_device: str | None = None  # dom0's serial console: getty + securetty
    getty: bool = True
    serial_command: str | None = None  # GRUB's own menu on this serial port too (headless hosts)
    timeout: int | None = None         # GRUB_TIMEOUT
    notes: list[str] = field(default_factory=list)


# -- managed blocks ---------------------------------------------------------------------

def merge_block(existing: bytes | None, block: str | None) -> bytes | None:
    """``existing`` with our block replaced by ``block`` (appended if absent; removed if None).

    Bytes outside the markers stay exactly as they were. Broken markers (one without
    the other, or twice) are an error: we will not guess what the user meant.
    """
    text = existing.decode("utf-8", errors="surrogateescape") if existing is not None else ""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == END]
    new_block = f"{BEGIN}\n{block.rstrip(chr(10))}\n{END}\n" if block is not None else ""
    if not begins and not ends:
        if block is None:
            return existing
        if text and not text.endswith("\n"):
            text += "\n"
        out = text + new_block
    elif len(begins) == 1 and len(ends) == 1 and begins[0] < ends[0]:
        out = "".join(lines[: begins[0]]) + new_block + "".join(lines[ends[0] + 1:])
    else:
        raise ProvisionError(
            "the xen-provision markers in this file are broken (missing, repeated or out of order)",
            hint=f"fix or remove the lines '{BEGIN}' and '{END}' by hand",
        )
    if not out:
        return None  # the file held nothing but our block: take it away whole
    return out.encode("utf-8", errors="surrogateescape")


_TITLE = re.compile(r"^[ \t]*title[ \t=]", re.I)
MENU_DEFAULT = "default 0"


def menu_lst(existing: bytes | None, block: str | None, make_default: bool, notes: list[str]) -> bytes | None:
    """menu.lst with our stanzas: after the user's own, or, with ``make_default``, before
    them behind a ``default 0`` of our own.

    Legacy GRUB's ``default`` counts stanzas, and the last ``default`` of the global
    section (everything before the first ``title``) wins. So ``--default`` puts our block
    right before the first title: our ``default 0`` comes after the user's own line, our
    entry is stanza 0 whatever the user adds later, and the user's lines stay as they
    are. Without ``--default`` the block goes back after the user's stanzas, so their own
    ``default N`` counts as before.
    """
    if block is None:
        return merge_block(existing, None)
    if not make_default:
        if MENU_DEFAULT + "\n" not in _our_block(existing):
            return merge_block(existing, block)
        return merge_block(merge_block(existing, None), block)  # from the top to the end
    block = f"{MENU_DEFAULT}\n\n{block.rstrip(chr(10))}\n"
    rest = merge_block(existing, None) or b""
    lines = rest.decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if _TITLE.match(line)), len(lines))
    if any(re.match(r"^[ \t]*fallback[ \t=]", line, re.I) for line in lines[:first]):
        notes.append("menu.lst: our stanzas now come first, so 'fallback' counts them too: check it")
    head = "".join(lines[:first])
    if head and not head.endswith("\n"):
        head += "\n"
    ours = merge_block(None, block).decode()
    out = head + ours + "".join(lines[first:])
    return out.encode("utf-8", errors="surrogateescape")


def _our_block(content: bytes | None) -> str:
    text = (content or b"").decode("utf-8", errors="surrogateescape")
    start, end = text.find(BEGIN + "\n"), text.find(END + "\n")
    return text[start:end] if 0 <= start < end else ""


# -- where things go -----------------------------------------------------------------------

def grub_dir(root: Path) -> str:
    """/boot/grub, or /boot/grub2 where only that exists (Fedora, openSUSE)."""
    if not within(root, "/boot/grub").is_dir() and within(root, "/boot/grub2").is_dir():
        return "/boot/grub2"
    return "/boot/grub"


def boot_path(root: Path, path: str) -> str:
    """``path`` (inside the target) as GRUB sees it: relative to /boot's filesystem
    when /boot is a separate mount, as GRUB reads files per filesystem."""
    if os.path.ismount(within(root, "/boot")) and path.startswith("/boot/"):
        return path[len("/boot"):]
    return path


def detect_loader(root: Path) -> tuple[str, str]:
    """multiboot2 unless the target's installed GRUB lacks multiboot2.mod. Returns (loader, why)."""
    gdir = within(root, grub_dir(root))
    platforms = [p for p in ("i386-pc", "x86_64-efi", "i386-efi") if (gdir / p).is_dir()]
    if platforms:
        if any((gdir / p / "multiboot2.mod").exists() for p in platforms):
            return "multiboot2", f"{grub_dir(root)}/{platforms[0]} has multiboot2.mod"
        return "multiboot", f"{grub_dir(root)}/{','.join(platforms)} has no multiboot2.mod"
    libs = sorted(within(root, "/usr/lib/grub").glob("*/multiboot2.mod"))
    if libs:
        return "multiboot2", "the target's GRUB package has multiboot2.mod"
    return "multiboot2", "no installed GRUB found in the target; assuming GRUB 2 with multiboot2"


def detect_init(root: Path) -> str | None:
    if any(within(root, f"{d}/serial-getty@.service").exists() for d in SYSTEMD_UNIT_DIRS):
        return "systemd"
    if within(root, "/etc/inittab").exists():
        return "sysvinit"
    return None


# -- planning -------------------------------------------------------------------------------

def _read(root: Path, path: str) -> bytes | None:
    try:
        return within(root, path).read_bytes()
    except FileNotFoundError:
        return None


def plan(req: Request) -> list[Change]:
    """Every file this request wants, rendered and checked; nothing is written here."""
    root, entries = req.root, req.entries
    changes: list[Change] = []
    default_id = entries[0].id if (entries and req.make_default) else None

    if entries:
        script_check(render_grub2(entries, req.loader, default_id))
    if req.format not in ("grubd", "custom"):
        raise ProvisionError(f"--format {req.format} is not valid: use grubd or custom")
    # Both places are always planned, so switching formats (or removing) leaves no
    # second copy of the entries behind.
    grubd = entries if req.format == "grubd" else []
    script = render_grubd_script(grubd, req.loader).encode() if grubd else None
    changes.append(Change(GRUBD_SCRIPT, script, 0o755))
    settings = []
    if grubd and default_id:
        settings += ["# Boot the Xen entry by default.", f"GRUB_DEFAULT={shlex.quote(default_id)}"]
    if entries and req.serial_command:
        settings += ["# GRUB's own menu on the serial line too (a headless host).",
                     'GRUB_TERMINAL="console serial"',
                     f"GRUB_SERIAL_COMMAND={shlex.quote(req.serial_command)}"]
    if entries and req.timeout is not None:
        settings += [f"GRUB_TIMEOUT={req.timeout}"]
    dropin = None
    if settings:
        dropin = ("# Written by xen-provision (`python -m provision grub install`); delete this\n"
                  "# file to go back to /etc/default/grub's settings.\n" + "\n".join(settings) + "\n").encode()
    changes.append(Change(DEFAULT_DROPIN, dropin))
    path = f"{grub_dir(root)}/custom.cfg"
    block = render_grub2(entries, req.loader, default_id) if (entries and req.format == "custom") else None
    changes.append(Change(path, merge_block(_read(root, path), block), None))

    path = f"{grub_dir(root)}/menu.lst"
    block = render_menu_lst(entries) if (entries and req.menu_lst) else None
    changes.append(Change(path, menu_lst(_read(root, path), block, req.make_default, req.notes), None))

    if req.efi_dir:
        efi_dir = req.efi_dir.rstrip("/")
        content = render_xen_cfg(entries).encode() if entries else None
        changes.append(Change(f"{efi_dir}/xen.cfg", content))
        # xen.efi reads kernel= and ramdisk= from its own directory on the ESP; we do
        # not copy boot files onto the ESP, so say which ones are not there yet.
        wanted = sorted({Path(p).name for e in entries for p in (e.kernel, e.initrd) if p})
        missing = [n for n in wanted if not within(root, f"{efi_dir}/{n}").is_file()]
        if missing:
            req.notes.append(f"xen.cfg names {', '.join(missing)}: copy them into {efi_dir} beside xen.efi")

    if req.getty:
        changes += _console_changes(req)
    return changes


def _console_changes(req: Request) -> list[Change]:
    root, dev = req.root, req.console_device
    changes = []
    init = detect_init(root)
    if init == "systemd":
        unit_dir = next(d for d in SYSTEMD_UNIT_DIRS if within(root, f"{d}/serial-getty@.service").exists())
        # The marker remembers which link is ours, so a changed console or `grub remove`
        # takes away only what we made.
        prev = _read(root, GETTY_MARKER)
        prev_name = prev.decode().strip() if prev else None
        name = f"serial-getty@{dev}.service" if dev else None
        if prev_name and prev_name != name:
            changes.append(Change(f"{GETTY_WANTS}/{prev_name}", None))
        if name:
            changes.append(Change(f"{GETTY_WANTS}/{name}", None, link=f"{unit_dir}/serial-getty@.service"))
        changes.append(Change(GETTY_MARKER, f"{name}\n".encode() if name else None))
    elif init == "sysvinit":
        line = f"{dev[-4:]}:2345:respawn:/sbin/getty -L 115200 {dev} vt102" if dev else None
        changes.append(Change("/etc/inittab", merge_block(_read(root, "/etc/inittab"), line), None))
    elif dev:
        req.notes.append(f"no systemd or /etc/inittab in the target: add a getty on {dev} yourself")
    securetty = _read(root, "/etc/securetty")
    if securetty is not None:
        outside = merge_block(securetty, None) or b""
        needed = dev and dev not in outside.decode(errors="replace").split()
        changes.append(Change("/etc/securetty", merge_block(securetty, dev if needed else None), None))
    elif dev:
        req.notes.append(f"the target has no /etc/securetty, so nothing restricts root logins on {dev}")
    return changes


# -- applying: provision.changes (Change, apply) ------------------------------------------


def _restore_if_changed(path: Path, content: bytes | None, mode: int | None) -> None:
    if current(path)[0] != content:
        restore(path, content, None, mode)



# An offline root regenerates grub.cfg with its own GRUB, in a chroot that sees the
# host's /dev, /proc and /sys. The bind mounts live in a private mount namespace: they
# vanish with it, however the command ends, and the host's mount table never sees them.
_IN_CHROOT = 'for d in dev proc sys; do mount --bind "/$d" "$0/$d" || exit 1; done; exec chroot "$0" "$@"'


def update_command(root: Path) -> list[str] | None:
    """The command that regenerates grub.cfg for this target, or None without GRUB tools."""
    cfg = f"{grub_dir(root)}/grub.cfg"
    live = root.resolve() == Path("/")
    if live:
        if which("update-grub"):
            return ["update-grub"]
        if which("grub-mkconfig"):
            return ["grub-mkconfig", "-o", cfg]
        if which("grub2-mkconfig"):
            return ["grub2-mkconfig", "-o", cfg]
        return None
    for tool in ("update-grub", "grub-mkconfig"):
        for d in ("/usr/sbin", "/sbin", "/usr/bin"):
            if within(root, f"{d}/{tool}").exists():
                tool_argv = [f"{d}/{tool}"] + ([] if tool == "update-grub" else ["-o", cfg])
                return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_CHROOT,
                        str(root.resolve()), *tool_argv]
    return None


def _rmdir_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def regenerate(root: Path, cmd: list[str]) -> None:
    """Run ``cmd`` (update-grub or grub-mkconfig, maybe in the target's chroot). Its
    output is shown when it succeeds; when it fails, one line says so, its own last line
    says why, and the grub.cfg.new it leaves for a bug report goes (grub.cfg itself is only
    replaced when the tool succeeds). The caller's undo stack takes our files back."""
    tool = next(Path(a).name for a in cmd if "grub" in Path(a).name)
    new = within(root, f"{grub_dir(root)}/grub.cfg.new")
    had_new = new.exists()
    proc = run(cmd, check=False, quiet=True)
    output = [ln.strip() for part in (proc.stdout, proc.stderr) for ln in (part or "").splitlines() if ln.strip()]
    if proc.returncode != 0:
        if not had_new:
            new.unlink(missing_ok=True)
        why = shorten(output[-1], 120) if output else f"exit code {proc.returncode}"
        raise ProvisionError(f"{tool} failed, so the boot configuration was rolled back (grub.cfg is unchanged): {why}",
                             hint=f"see the whole of its output with --no-update, then run the {tool} command it prints")
    for line in output:
        log.info(f"{tool}: {line}")


def install(req: Request, *, update: bool = True) -> list[str]:
    """Plan, write, and regenerate grub.cfg (grubd format); all or nothing."""
    changes = plan(req)
    with UndoStack() as undo:
        changed = apply(req.root, changes, undo)
        # Also when the script or drop-in went away (switching to custom.cfg, removing):
        # grub.cfg still holds what they printed until it is regenerated.
        grub_changed = any(c in (GRUBD_SCRIPT, DEFAULT_DROPIN) for c in changed)
        if grub_changed:
            cmd = update_command(req.root)
            live = req.root.resolve() == Path("/")
            if cmd is None:
                req.notes.append("no update-grub/grub-mkconfig for this target: regenerate grub.cfg with the target's GRUB")
            elif update:
                # A failed grub-mkconfig leaves grub.cfg alone; undo our files too.
                if not live:
                    for d in ("dev", "proc", "sys"):
                        if not within(req.root, f"/{d}").is_dir():
                            raise ProvisionError(f"{req.root} has no /{d} to run its update-grub in a chroot",
                                                 hint="give the root of a whole system, or use --no-update")
                # A root whose GRUB was never installed (a new image) has no grub.cfg's
                # directory yet: grub-install makes it, and grub-mkconfig needs it.
                cfg_dir = within(req.root, grub_dir(req.root))
                if not cfg_dir.is_dir():
                    cfg_dir.mkdir(parents=True)
                    undo.rollback(f"remove {cfg_dir}", _rmdir_quietly, cfg_dir)
                # update-grub replaces grub.cfg itself: if we roll back after it ran (a later
                # step fails, Ctrl-C), the old grub.cfg comes back with our files.
                cfg = within(req.root, f"{grub_dir(req.root)}/grub.cfg")
                content, link, mode = current(cfg)
                if link is None:
                    undo.rollback(f"restore {cfg}", _restore_if_changed, cfg, content, mode, made=str(cfg))
                regenerate(req.root, cmd)
            else:
                req.notes.append(f"regenerate grub.cfg: {shlex.join(cmd)}")
        if req.format == "custom" and any(c.endswith("/custom.cfg") for c in changed):
            req.notes.append(f"GRUB reads {grub_dir(req.root)}/custom.cfg at boot (41_custom); no grub.cfg update needed")
    for note in req.notes:
        log.note(note)
    return changed
