"""xendomains: the init script, its settings file, a systemd unit, and enabling them.

Files (all under --root when given):
    /etc/init.d/xendomains                (LSB header and '# chkconfig: 2345 99 00')
    /etc/default/xendomains               (Debian) or /etc/sysconfig/xendomains (Red Hat)
    /etc/systemd/system/xendomains.service

Enabling on a live host uses the host's own tool: chkconfig --add where chkconfig exists,
systemctl enable where systemd runs, else update-rc.d (Debian) or insserv. Into an
offline root (--root DIR) the same links are made there: insserv -p ROOT/etc/init.d
(the links update-rc.d would make, from the LSB header), systemctl --root=ROOT enable,
or, for the chkconfig layout, the S99/K00 links chkconfig --add writes.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from provision import log, validate
from provision.domain.paths import Paths
from provision.domain.render import render
from provision.errors import ProvisionError
from provision.fsutil import write_if_changed
from provision.run import CommandError, run, which
from provision.undo import UndoStack

SCRIPT = "/etc/init.d/xendomains"
UNIT = "/etc/systemd/system/xendomains.service"
SETTINGS = {"debian": "/etc/default/xendomains", "redhat": "/etc/sysconfig/xendomains"}
METHODS = ("auto", "chkconfig", "update-rc.d", "insserv", "systemd", "links")
START_LEVELS, STOP_LEVELS = "2345", "016"  # '# chkconfig: 2345 99 00'


@dataclass
class Settings:
    flavour: str = "debian"
    save_dir: str = ""
    restore: bool = True
    parallel: int = 4
    stop_timeout: int = 300
    destroy_on_timeout: bool = False
    stop_all: bool = True
    xen_service: str | None = None  # the LSB name the script requires; found in the root
    log_consoles: bool = False      # xenconsoled keeps each guest's console in /var/log/xen/console

    def check(self):
        if self.flavour not in SETTINGS:
            raise ProvisionError(f"flavour '{self.flavour}' is not debian or redhat")
        if self.parallel < 1:
            raise ProvisionError(f"--parallel {self.parallel} must be at least 1")
        if self.stop_timeout < 1:
            raise ProvisionError(f"--stop-timeout {self.stop_timeout} must be at least 1 second")
        if self.xen_service is not None:
            # It goes into the script's LSB header (Required-Start:) and is run as a name.
            validate.name(self.xen_service, "--xen-service (the LSB name of the Xen daemons' script)")
        if self.save_dir and not re.fullmatch(r"/[^\s'\"$`\\]*", self.save_dir):
            raise ProvisionError(f"save directory '{self.save_dir}' must be an absolute path without spaces or quotes")


def flavour_of(paths: Paths) -> str:
    """Red Hat layout if the root has /etc/sysconfig or /etc/rc.d/init.d, else Debian."""
    if paths.inside("/etc/rc.d/init.d").is_dir() or (
        paths.inside("/etc/sysconfig").is_dir() and not paths.inside("/etc/default").is_dir()
    ):
        return "redhat"
    return "debian"


def xen_service(paths: Paths) -> str:
    # Upstream Xen installs 'xencommons'; Debian's xen-utils-common calls it 'xen'.
    for name in ("xencommons", "xen"):
        if paths.inside(f"/etc/init.d/{name}").exists():
            return name
    return "xencommons"


def render_files(paths: Paths, s: Settings) -> dict[str, tuple[str, int]]:
    """{absolute path inside the root: (text, mode)}."""
    s.check()
    settings_file = SETTINGS[s.flavour]
    ctx = dict(
        auto_dir="/etc/xen/auto", save_dir=s.save_dir, restore=s.restore, parallel=s.parallel,
        stop_timeout=s.stop_timeout, destroy_on_timeout=s.destroy_on_timeout, stop_all=s.stop_all,
        settings_file=settings_file, xen_service=s.xen_service or xen_service(paths), script=SCRIPT,
    )
    return {
        SCRIPT: (render("xendomains.sh.j2", **ctx), 0o755),
        settings_file: (render("xendomains.default.j2", **ctx), 0o644),
        UNIT: (render("xendomains.service.j2", **ctx), 0o644),
    }


XENCOMMONS = {"debian": "/etc/default/xencommons", "redhat": "/etc/sysconfig/xencommons"}


def with_shell_setting(text: str, key: str, value: str, why: str) -> str:
    """``text`` (a shell settings file) with ``KEY=value``: an uncommented line of the
    key is replaced in place, else the setting is appended after a comment."""
    lines = text.split("\n") if text else []
    if lines and lines[-1] == "":
        lines.pop()
    hits = [i for i, line in enumerate(lines) if re.match(rf"^\s*(export\s+)?{key}=", line)]
    new = f"{key}={value}"
    if hits:
        lines[hits[-1]] = new
    else:
        lines += [f"# {why}", new]
    return "\n".join(lines) + "\n"


def console_log_file(paths: Paths, s: Settings) -> tuple[str, str] | None:
    """(path, text) of Xen's xencommons settings with guest console logging on."""
    if not s.log_consoles:
        return None
    path = XENCOMMONS[s.flavour]
    dest = paths.inside(path)
    old = dest.read_text() if dest.exists() else ""
    return path, with_shell_setting(old, "XENCONSOLED_TRACE", "guest",
                                    "Keep each guest's console in /var/log/xen/console (xen-provision)")


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone, or someone else put a file in it
        path.rmdir()


def makedirs(path: Path, undo: UndoStack | None) -> None:
    """``path`` and its missing parents; each one made is removed again (when empty)
    if ``undo`` rolls back, so that refused input leaves no empty directories."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        if undo:
            undo.rollback(f"remove {d}", _rmdir_if_empty, d)


def install(paths: Paths, s: Settings, undo: UndoStack | None = None) -> list[Path]:
    """Write the script, settings and unit; unchanged files are left alone.
    Files and directories this call creates are registered for rollback on ``undo``."""
    written = []
    files = render_files(paths, s)
    consoles = console_log_file(paths, s)
    if consoles:
        files[consoles[0]] = (consoles[1], 0o644)
    for path, (text, mode) in files.items():
        dest = paths.inside(path)
        makedirs(dest.parent, undo)
        existed = dest.exists()
        before = dest.read_text() if existed and path in XENCOMMONS.values() else None
        if path in SETTINGS.values() and dest.exists():
            # The administrator's edits (or the distribution's file) win over our options.
            if dest.read_text() != text:
                log.warn(f"keeping the existing {dest}: edit it to change these settings")
            else:
                log.info(f"keeping existing settings {dest}")
            continue
        if write_if_changed(dest, text, mode):
            log.info(f"wrote {dest}")
            if not existed and undo:
                undo.rollback(f"remove {dest}", dest.unlink, made=str(dest))
            elif before is not None and undo:
                undo.rollback(f"restore {dest}", write_if_changed, dest, before, mode)
        written.append(dest)
    return written


def _rc_dir(paths: Paths, level: str) -> Path:
    rh = paths.inside("/etc/rc.d/init.d").is_dir()
    return paths.inside(f"/etc/rc.d/rc{level}.d" if rh else f"/etc/rc{level}.d")


def chkconfig_links(paths: Paths) -> list[Path]:
    """What 'chkconfig --add xendomains' writes for '# chkconfig: 2345 99 00'."""
    made = []
    for level in "0123456":
        d = _rc_dir(paths, level)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("[SK][0-9][0-9]xendomains"):
            old.unlink()
        link = d / ("S99xendomains" if level in START_LEVELS else "K00xendomains")
        # rcN.d and init.d are siblings in both layouts (/etc and /etc/rc.d).
        os.symlink("../init.d/xendomains", link)
        made.append(link)
    return made


def _insserv_offline(paths: Paths, remove: bool = False) -> None:
    init_d = paths.inside("/etc/init.d")
    conf = paths.inside("/etc/insserv.conf")
    argv = ["insserv", "-p", str(init_d), "-c", str(conf if conf.exists() else "/etc/insserv.conf")]
    if remove:
        argv.append("-r")
    try:
        run([*argv, "xendomains"], quiet=True)
    except CommandError as e:
        fatal = [ln.strip() for ln in e.output.splitlines() if "FATAL" in ln] or [e.message]
        hint = None
        if "has to be enabled" in fatal[0]:
            hint = f"install and enable the Xen daemons in the image first (insserv -p {init_d} {xen_service(paths)})"
        raise ProvisionError(f"insserv refused xendomains in {paths.root}: {fatal[0]}", hint=hint) from None


def _root_uses_systemd(paths: Paths) -> bool:
    return any(paths.inside(p).exists() for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd"))


# Xen's own daemons, which xendomains needs: enabled with it where they are units
# (proc-xen.mount has no [Install]: the services' Requires= pull it in).
XEN_UNITS = ("xenstored.service", "xenconsoled.service", "xen-init-dom0.service")
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


def _xen_units(paths: Paths) -> list[tuple[str, str]]:
    """(unit, its path inside the root) of Xen's daemons installed as units."""
    found = []
    for unit in XEN_UNITS:
        for d in UNIT_DIRS:
            if paths.inside(f"{d}/{unit}").is_file():
                found.append((unit, f"{d}/{unit}"))
                break
    return found


def _enable_units_offline(paths: Paths, units: list[tuple[str, str]], undo: UndoStack | None) -> list[str]:
    """The links ``systemctl --root enable`` makes from each unit's [Install] WantedBy=."""
    done = []
    for unit, path in units:
        text = paths.inside(path).read_text(errors="replace")
        targets = " ".join(re.findall(r"^\s*(?:WantedBy|RequiredBy)\s*=\s*(.+)$", text, re.M)).split()
        for target in targets:
            link = paths.inside(f"/etc/systemd/system/{target}.wants/{unit}")
            if link.is_symlink() and os.readlink(link) == path:
                continue
            makedirs(link.parent, undo)
            if link.is_symlink():
                link.unlink()
            os.symlink(path, link)
            if undo:
                undo.rollback(f"remove {link}", link.unlink)
            done.append(f"enabled {unit} ({target})")
    return done


def wants_link(paths: Paths) -> Path:
    return paths.inside("/etc/systemd/system/multi-user.target.wants/xendomains.service")


def _systemd_offline(paths: Paths) -> str:
    """The link ``systemctl --root=ROOT enable`` makes for [Install] WantedBy=multi-user.target.

    We make it ourselves: with a SysV script of the same name present, systemctl hands
    the script to the image's own update-rc.d in a chroot, which fails in an image
    without it (or without insserv's dependencies). The test compares our link with
    systemctl's own on a root holding just the unit.
    """
    link = wants_link(paths)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == UNIT:
        return f"{link} already links {UNIT}"
    if link.is_symlink():
        link.unlink()
    os.symlink(UNIT, link)
    return f"linked {link} -> {UNIT}"


def enable(paths: Paths, method: str = "auto", undo: UndoStack | None = None) -> list[str]:
    """Enable xendomains at boot; returns what was done, one line per action.
    Directories made for an offline root are registered for rollback on ``undo``."""
    if method not in METHODS:
        raise ProvisionError(f"method '{method}' is not one of {', '.join(METHODS)}")
    if not paths.inside(SCRIPT).exists():
        raise ProvisionError(f"{paths.inside(SCRIPT)} is not installed",
                             hint="run: python -m provision xendomains install" + (f" --root {paths.root}" if paths.root != Path("/") else ""))
    offline = paths.root.resolve() != Path("/")
    done: list[str] = []
    if not offline:
        if method == "auto":
            if which("chkconfig"):
                method = "chkconfig"
            elif Path("/run/systemd/system").is_dir():
                method = "systemd"
            elif which("update-rc.d"):
                method = "update-rc.d"
            else:
                method = "insserv"
        argv = {
            "chkconfig": ["chkconfig", "--add", "xendomains"],
            "systemd": ["systemctl", "enable", "xendomains.service"],
            "update-rc.d": ["update-rc.d", "xendomains", "defaults"],
            "insserv": ["insserv", "xendomains"],
        }.get(method)
        if argv is None:
            chkconfig_links(paths)
            return ["wrote chkconfig-style links in /etc/rc?.d"]
        if method == "systemd":
            units = [u for u, _ in _xen_units(paths)]
            if units:
                run(["systemctl", "enable", *units])
                done.append("systemctl enable " + " ".join(units))
        run(argv)
        return done + [" ".join(argv)]
    systemd = method == "systemd" or (method == "auto" and _root_uses_systemd(paths))
    if systemd:
        done += _enable_units_offline(paths, _xen_units(paths), undo)
    if method == "auto" and systemd:
        # systemd ignores rc?.d links when a unit of that name exists; Xen's own daemons
        # may then exist only as units, which insserv could not order us after.
        return done + [_systemd_offline(paths)]
    # SysV links first: insserv is the step that can refuse, and then nothing is changed.
    if method in ("auto", "update-rc.d", "insserv"):
        if method == "auto" and (paths.inside("/etc/rc.d/init.d").is_dir() or not which("insserv")):
            method = "chkconfig"
        else:
            # insserv makes the rc?.d directories before it refuses: make them ours.
            for level in "0123456S":
                makedirs(_rc_dir(paths, level), undo)
            _insserv_offline(paths)
            done.append(f"insserv -p {paths.inside('/etc/init.d')} xendomains")
    if method in ("chkconfig", "links"):
        chkconfig_links(paths)
        done.append("wrote the links chkconfig --add would (S99 in 2345, K00 in 016)")
    if systemd:
        done.append(_systemd_offline(paths))
    return done


def disable(paths: Paths) -> list[str]:
    done = []
    offline = paths.root.resolve() != Path("/")
    wants = wants_link(paths)
    if wants.is_symlink():
        if offline:
            wants.unlink()
        else:
            run(["systemctl", "disable", "xendomains.service"])
        done.append("systemd unit disabled")
    removed = 0
    for level in "0123456S":
        for link in _rc_dir(paths, level).glob("[SK][0-9][0-9]xendomains"):
            link.unlink()
            removed += 1
    if removed:
        done.append(f"removed {removed} rc?.d links")
    return done


def status(paths: Paths) -> dict[str, list[str]]:
    links = {}
    for level in "0123456":
        found = sorted(p.name for p in _rc_dir(paths, level).glob("[SK][0-9][0-9]xendomains"))
        if found:
            links[f"rc{level}.d"] = found
    return links
