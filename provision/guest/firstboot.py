"""First-boot access and customisation: a sudo user, a generated root password, dom0's
hosts, timezone, locale, extra packages, role scripts and a script run at first boot.

What only writes files (the user in passwd/shadow/group, sudoers, hosts, timezone,
locale settings, the first-boot unit) is more operations of
``configure.guest_files``, so a tree, a cached filesystem and a template get the same
bytes. What must run in the guest (locale-gen, apt for a template's packages, roles)
runs afterwards in the mounted image's chroot (:func:`customise`, through
``guest.chroot``), with no service started. A role that fails fails the command: the
new image is removed by its build's undo stack.

Roles run as ``/tmp/xen-provision-role`` in the chroot with this environment:

    XP_ROLE      the role's name           XP_HOSTNAME  the guest's (fully qualified) name
    XP_SUITE     bookworm, jammy...        XP_DISTRO    debian or ubuntu
    XP_INIT      systemd, sysvinit...      XP_TARGET    the image (or tree) in dom0
    XP_IP        static address or empty   XP_PREFIX    its prefix length or empty
    XP_GATEWAY   or empty                  XP_DNS       name servers, space separated
    XP_USER      --user's name or empty    XP_TIMEZONE, XP_LOCALE  or empty

plus PATH, HOME=/root, LANG=C and DEBIAN_FRONTEND=noninteractive; dom0's resolver is
usable, so a role may apt-get install from the guest's sources.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from provision import log
from provision.errors import ProvisionError
from provision.guest.configure import (
    Mkdir,
    Op,
    Symlink,
    TreeReader,
    Write,
    host_nameservers,
    read_crypt_hash,
    render,
)
from provision.run import run, which

ROLES_DIR = Path(__file__).with_name("roles")
ZONEINFO = "/usr/share/zoneinfo"
SUPPORTED_LOCALES = "/usr/share/i18n/SUPPORTED"
MARK = "/var/lib/xen-provision/first-boot.done"
FIRST_BOOT_SCRIPT = "/usr/local/sbin/xp-first-boot"
FIRST_BOOT_RUNNER = "/usr/local/sbin/xp-first-boot-run"
FIRST_BOOT_LOG = "/var/log/xp-first-boot.log"
FIRST_BOOT_UNIT = "/etc/systemd/system/xp-first-boot.service"
RC_LINKS = tuple(f"/etc/rc{n}.d/S99xp-first-boot" for n in (2, 3, 4, 5))
ROLE_PATH = "/tmp/xen-provision-role"

_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # Debian adduser's, less '.' (sudoers.d skips those)
_PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[A-Za-z0-9]+)?$")
_HASH_RE = re.compile(r"^\$(1|2[abxy]?|5|6|y|gy|7)\$[./A-Za-z0-9$=,]+$")
_RESERVED_USERS = {"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
                   "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "sshd", "messagebus",
                   "systemd-network", "systemd-resolve", "systemd-timesync", "_apt", "sudo", "admin", "staff",
                   "users", "adm", "shadow", "utmp", "tty", "disk", "kmem", "dialout", "operator"}


@dataclass(frozen=True)
class Role:
    name: str                       # as given: a shipped role's name or the script's file name
    script: bytes = field(repr=False)
    source: str = ""                # where it came from (shipped, or a path in dom0)


@dataclass(frozen=True)
class FirstBoot:
    """The first-boot options, read and checked once (``from_args``); no secret is
    shown by ``repr`` or :meth:`public`."""

    user: str | None = None
    user_hash: str | None = field(default=None, repr=False)   # --password-file: the user's crypt hash
    generated_password: str | None = field(default=None, repr=False, compare=False)  # --genpass, shown once
    hosts: tuple[str, ...] = ()     # --copy-hosts: dom0's entries, "ADDRESS\tNAMES"
    timezone: str | None = None
    locale: str | None = None       # en_GB.UTF-8
    charset: str | None = None      # its charmap in locale.gen: UTF-8
    packages: tuple[str, ...] = ()  # --packages FILE
    roles: tuple[Role, ...] = ()
    first_boot: bytes | None = field(default=None, repr=False)

    def includes(self) -> tuple[str, ...]:
        """Packages a bootstrap adds for these options (part of the base's cache key)."""
        extra = set(self.packages)
        if self.user:
            extra.add("sudo")
        if self.locale:
            extra.add("locales")
        if self.timezone:
            extra.add("tzdata")
        return tuple(sorted(extra))

    @property
    def runs_in_chroot(self) -> bool:
        """Whether a bootstrapped image needs :func:`customise` (a template also for packages)."""
        return bool(self.locale or self.roles)

    def public(self) -> dict:
        return {"user": self.user, "user_password": self.user_hash is not None,
                "root_password_generated": self.generated_password is not None,
                "hosts_copied": len(self.hosts), "timezone": self.timezone, "locale": self.locale,
                "packages": list(self.packages), "roles": [r.name for r in self.roles],
                "first_boot": self.first_boot is not None}


# ---------------------------------------------------------------- reading the options


def user_name(value: str) -> str:
    if not _USER_RE.match(value):
        raise ProvisionError(f"user name '{value}' is not valid",
                             hint="lower-case letters, digits, '_' and '-', starting with a letter; at most 32")
    if value in _RESERVED_USERS:
        raise ProvisionError(f"user name '{value}' is a system account's", hint="choose a name of your own")
    return value


def generate_password(old: bool = False) -> tuple[str, str]:
    """A random password and its crypt hash: sha512 ($6$), or md5 ($1$) for a guest whose
    glibc predates sha512 crypt. The password never touches a file or a command line."""
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    password = "".join(secrets.choice(alphabet) for _ in range(20))
    hashed = run(["openssl", "passwd", "-1" if old else "-6", "-stdin"], input=password + "\n",
                 capture=True).stdout.strip()
    if not _HASH_RE.match(hashed):
        raise ProvisionError("openssl passwd did not give a crypt hash")
    return password, hashed


def host_entries(path: str = "/etc/hosts") -> tuple[str, ...]:
    """dom0's hosts entries for a guest: no loopback, no localhost or ip6-* names."""
    import ipaddress

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}") from None
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            addr = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        names = fields[1:]
        if addr.is_loopback or addr.is_multicast or addr.is_unspecified or (addr.version == 6 and addr.is_reserved):
            continue
        if any(n.startswith(("localhost", "ip6-")) for n in names):
            continue
        out.append(f"{fields[0]}\t{' '.join(names)}")
    return tuple(out)


def timezone(zone: str, zoneinfo: str = ZONEINFO) -> str:
    """A zone from dom0's tz database (Europe/Paris, UTC)."""
    base = os.path.realpath(zoneinfo)
    real = os.path.realpath(os.path.join(zoneinfo, zone))
    if zone.startswith("/") or ".." in zone.split("/") or not real.startswith(base + "/") \
            or not os.path.isfile(real):
        raise ProvisionError(f"time zone '{zone}' is not in {zoneinfo}",
                             hint="e.g. Europe/Paris or UTC (see timedatectl list-timezones)")
    return zone


def locale(value: str, supported: str = SUPPORTED_LOCALES) -> tuple[str, str]:
    """(locale, charset) for locale.gen, checked against dom0's list of supported locales
    where dom0 has one."""
    if not _LOCALE_RE.match(value):
        raise ProvisionError(f"locale '{value}' is not a locale name", hint="e.g. en_GB.UTF-8")
    try:
        lines = Path(supported).read_text().splitlines()
    except OSError:
        if value.upper().endswith((".UTF-8", ".UTF8")):
            return value, "UTF-8"
        raise ProvisionError(f"cannot check locale '{value}': dom0 has no {supported}",
                             hint="give a .UTF-8 locale, e.g. en_GB.UTF-8, or install locales") from None
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] == value:
            return value, parts[1]
    raise ProvisionError(f"locale '{value}' is not a supported locale", hint=f"see {supported}, e.g. en_GB.UTF-8")


def read_packages(path: str | os.PathLike) -> tuple[str, ...]:
    """One package per line; '#' starts a comment."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ProvisionError(f"cannot read packages file {path}: {e.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for name in line.split("#", 1)[0].split():
            if not _PKG_RE.match(name):
                raise ProvisionError(f"packages file {path} line {n}: '{name}' is not a package name",
                                     hint="one Debian package name per line (lower-case, digits, + - .); # comments")
            out.append(name)
    if not out:
        raise ProvisionError(f"packages file {path} names no package")
    return tuple(sorted(set(out)))


def shipped_roles() -> list[str]:
    return sorted(p.name for p in ROLES_DIR.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))


def role(value: str) -> Role:
    """A shipped role by name (``sudo-user``), or a script by path (executable)."""
    shipped = ROLES_DIR / value
    if "/" not in value and shipped.is_file():
        return Role(value, shipped.read_bytes(), "shipped")
    p = Path(value)
    if not p.exists():
        raise ProvisionError(f"role '{value}' is neither a shipped role nor a file",
                             hint=f"shipped roles: {', '.join(shipped_roles())}; or give a script's path")
    if not p.is_file():
        raise ProvisionError(f"role {value} is not a file")
    if not os.access(p, os.X_OK):
        raise ProvisionError(f"role script {value} is not executable", hint=f"chmod +x {value}")
    data = p.read_bytes()
    if not data.startswith(b"#!"):
        raise ProvisionError(f"role script {value} has no #! line", hint="start it with e.g. #!/bin/sh")
    return Role(p.name, data, str(p.resolve()))


def first_boot_script(path: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ProvisionError(f"cannot read first-boot script {path}: {e.strerror}") from None
    if not data.startswith(b"#!"):
        raise ProvisionError(f"first-boot script {path} has no #! line", hint="start it with e.g. #!/bin/sh")
    return data


def from_args(args, *, old_glibc: bool) -> tuple[FirstBoot | None, str | None]:
    """The first-boot options of the image command, checked: (None when none is given,
    root's hash from --genpass or None)."""
    if args.genpass and args.root_password_file:
        raise ProvisionError("--genpass and --root-password-file both set root's password", hint="give one of them")
    if args.password_file and not args.user:
        raise ProvisionError("--password-file is the --user's password hash: give --user NAME too",
                             hint="root's hash goes in --root-password-file")
    given = (args.user, args.genpass, args.copy_hosts, args.timezone, args.locale, args.packages, args.role,
             args.first_boot)
    if not any(given):
        return None, None
    loc, charset = locale(args.locale) if args.locale else (None, None)
    password, root_hash = generate_password(old_glibc) if args.genpass else (None, None)
    fb = FirstBoot(
        user=user_name(args.user) if args.user else None,
        user_hash=read_crypt_hash(args.password_file, "password") if args.password_file else None,
        hosts=host_entries() if args.copy_hosts else (),
        timezone=timezone(args.timezone) if args.timezone else None,
        locale=loc, charset=charset,
        packages=read_packages(args.packages) if args.packages else (),
        roles=tuple(role(r) for r in args.role or ()),
        first_boot=first_boot_script(args.first_boot) if args.first_boot else None,
        generated_password=password,
    )
    return fb, root_hash


# ---------------------------------------------------------------- files


def _current(ops: list[Op], tree: TreeReader, path: str) -> str | None:
    """``path`` as the operations so far leave it (else as the tree holds it)."""
    for op in reversed(ops):
        if op.path == path and isinstance(op, Write):
            return op.data.decode(errors="replace")
    return tree.read(path)


def _set(ops: list[Op], op: Write) -> None:
    """Write ``op``, replacing an earlier write of the same file (one write per file)."""
    ops[:] = [o for o in ops if not (isinstance(o, Write) and o.path == op.path)]
    ops.append(op)


def _table(text: str | None) -> list[list[str]]:
    return [line.split(":") for line in (text or "").splitlines() if line.strip()]


def _join(rows: list[list[str]]) -> str:
    return "".join(":".join(r) + "\n" for r in rows)


def _free_id(*tables: list[list[str]], start: int = 1000) -> int:
    used = {int(r[2]) for t in tables for r in t if len(r) > 2 and r[2].isdigit()}
    n = start
    while n in used:
        n += 1
    return n


def _days() -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    return str(epoch // 86400)


def _user_files(s, fb: FirstBoot, tree: TreeReader, ops: list[Op]) -> None:
    name = fb.user
    passwd = _table(_current(ops, tree, "/etc/passwd"))
    group = _table(_current(ops, tree, "/etc/group"))
    shadow_text = _current(ops, tree, "/etc/shadow")
    if not passwd or shadow_text is None:
        raise ProvisionError("the image has no /etc/passwd and /etc/shadow to add the user to")
    if any(r[0] == name for r in passwd) or any(r[0] == name for r in group):
        raise ProvisionError(f"user or group '{name}' already exists in the image", hint="choose another --user")
    uid = _free_id(passwd, group)
    passwd.append([name, "x", str(uid), str(uid), name + ",,,", f"/home/{name}", "/bin/bash"])
    group.append([name, "x", str(uid), ""])
    for r in group:
        if r[0] == "sudo" and len(r) >= 4:
            r[3] = ",".join([m for m in r[3].split(",") if m] + [name])
    shadow = _table(shadow_text)
    # '*': no password login, yet not locked ('!'), so SSH keys work.
    shadow.append([name, fb.user_hash or "*", _days(), "0", "99999", "7", "", "", ""])
    shadow_gid = next((int(r[2]) for r in group if r[0] == "shadow" and r[2].isdigit()), 0)
    _set(ops, Write("/etc/passwd", _join(passwd).encode(), 0o644))
    _set(ops, Write("/etc/group", _join(group).encode(), 0o644))
    _set(ops, Write("/etc/shadow", _join(shadow).encode(), 0o640, 0, shadow_gid))
    gshadow_text = _current(ops, tree, "/etc/gshadow")
    if gshadow_text is not None:
        gshadow = _table(gshadow_text)
        gshadow.append([name, "!", "", ""])
        for r in gshadow:
            if r[0] == "sudo" and len(r) >= 4:
                r[3] = ",".join([m for m in r[3].split(",") if m] + [name])
        _set(ops, Write("/etc/gshadow", _join(gshadow).encode(), 0o640, 0, shadow_gid))
    home = f"/home/{name}"
    ops.append(Mkdir("/home", 0o755))
    ops.append(Mkdir(home, 0o700, uid, uid))
    for entry in tree.listdir("/etc/skel"):
        data = tree.read(f"/etc/skel/{entry}")
        if data is not None:
            ops.append(Write(f"{home}/{entry}", data.encode(), 0o644, uid, uid))
    if s.ssh_keys:
        ops.append(Mkdir(f"{home}/.ssh", 0o700, uid, uid))
        ops.append(Write(f"{home}/.ssh/authorized_keys", ("\n".join(s.ssh_keys) + "\n").encode(), 0o600, uid, uid))
    ops.append(Mkdir("/etc/sudoers.d", 0o755))
    ops.append(Write(f"/etc/sudoers.d/{name}", sudoers(name), 0o440))


def sudoers(name: str) -> bytes:
    """The user's sudoers.d file, checked by dom0's visudo where dom0 has one."""
    data = f"# xen-provision: --user {name}\n{name} ALL=(ALL:ALL) NOPASSWD: ALL\n".encode()
    if which("visudo"):
        with tempfile.NamedTemporaryFile(prefix="xen-provision-sudoers.") as f:
            f.write(data)
            f.flush()
            proc = run(["visudo", "-cf", f.name], check=False, capture=True)
        if proc.returncode != 0:
            raise ProvisionError(f"visudo refuses the sudoers line for '{name}': {proc.stderr.strip()}")
    return data


def _locale_gen(text: str | None, fb: FirstBoot) -> str:
    line = f"{fb.locale} {fb.charset}"
    out, found = [], False
    for row in (text or "").splitlines():
        if row.lstrip("# ").strip() == line:
            row, found = line, True
        out.append(row)
    if not found:
        out.append(line)
    return "\n".join(out) + "\n"


def guest_files(release, s, tree: TreeReader, ops: list[Op]) -> list[Op]:
    """``ops`` (configure.guest_files') with the first-boot options' files added."""
    fb: FirstBoot = s.firstboot
    ops = list(ops)
    if fb.user:
        _user_files(s, fb, tree, ops)
    own = {s.hostname, s.hostname.split(".", 1)[0]}
    copied = [h for h in fb.hosts if not own.intersection(h.split()[1:])]  # the guest's own line stays ours
    if copied:
        hosts = (_current(ops, tree, "/etc/hosts") or "").rstrip("\n")
        _set(ops, Write("/etc/hosts", (hosts + "\n\n# dom0's hosts (xen-provision --copy-hosts)\n"
                                       + "".join(h + "\n" for h in copied)).encode()))
    if fb.timezone:
        _set(ops, Write("/etc/timezone", f"{fb.timezone}\n".encode()))
        ops.append(Symlink("/etc/localtime", f"{ZONEINFO}/{fb.timezone}"))
    if fb.locale:
        _set(ops, Write("/etc/locale.gen", _locale_gen(_current(ops, tree, "/etc/locale.gen"), fb).encode()))
        _set(ops, Write("/etc/default/locale", f"LANG={fb.locale}\n".encode()))
    if fb.first_boot is not None:
        ops += _first_boot_files(release, fb.first_boot)
    return ops


def _first_boot_files(release, script: bytes) -> list[Op]:
    systemd = release.init == "systemd"
    runner = render("first-boot-run.sh.j2", systemd=systemd, mark=MARK, log=FIRST_BOOT_LOG,
                    script=FIRST_BOOT_SCRIPT, runner=FIRST_BOOT_RUNNER, unit=FIRST_BOOT_UNIT, rc_links=RC_LINKS)
    ops: list[Op] = [Mkdir("/usr/local/sbin", 0o755),
                     Write(FIRST_BOOT_SCRIPT, script, 0o755),
                     Write(FIRST_BOOT_RUNNER, runner.encode(), 0o755)]
    if systemd:
        ops.append(Write(FIRST_BOOT_UNIT, render("xp-first-boot.service.j2", mark=MARK,
                                                 runner=FIRST_BOOT_RUNNER).encode()))
        ops.append(Symlink("/etc/systemd/system/multi-user.target.wants/xp-first-boot.service", FIRST_BOOT_UNIT))
    else:  # sysvinit, and upstart's rc compatibility: the last script of the multi-user runlevels
        ops += [Symlink(link, FIRST_BOOT_RUNNER) for link in RC_LINKS]
    return ops


# ---------------------------------------------------------------- in the chroot


def template_packages(fb: FirstBoot, tree: TreeReader) -> tuple[str, ...]:
    """What apt installs in a guest made from a template: --packages, and what the
    options need that the template lacks."""
    need = set(fb.packages)
    if fb.user and "sudo" not in tree.listdir("/usr/bin"):
        need.add("sudo")
    if fb.locale and "locale-gen" not in tree.listdir("/usr/sbin"):
        need.add("locales")
    if fb.timezone:
        folder, _, zone = f"{ZONEINFO}/{fb.timezone}".rpartition("/")
        if zone not in tree.listdir(folder):
            need.add("tzdata")
    return tuple(sorted(need))


def plan(fb: FirstBoot | None, apt: tuple[str, ...] = ()) -> list[str]:
    """What :func:`customise` runs, for --dry-run."""
    if fb is None:
        return []
    lines = []
    if apt:
        lines += ["chroot:   apt-get update", f"chroot:   apt-get install -y --no-install-recommends {' '.join(apt)}"]
    if fb.locale:
        lines.append("chroot:   locale-gen")
    lines += [f"role:     {r.name} ({r.source})" for r in fb.roles]
    return lines


def role_env(release, s, target: str, role_name: str) -> dict[str, str]:
    fb: FirstBoot = s.firstboot
    net = s.network
    return {"XP_ROLE": role_name, "XP_HOSTNAME": s.hostname, "XP_SUITE": release.name,
            "XP_DISTRO": release.distro, "XP_INIT": release.init, "XP_TARGET": target,
            "XP_IP": str(net.address.ip) if net.address else "",
            "XP_PREFIX": str(net.address.network.prefixlen) if net.address else "",
            "XP_GATEWAY": net.gateway or "", "XP_DNS": " ".join(net.nameservers or host_nameservers()),
            "XP_USER": fb.user or "", "XP_TIMEZONE": fb.timezone or "", "XP_LOCALE": fb.locale or ""}


def customise(source, release, s, target: str, *, apt: tuple[str, ...] = (), partition: int | None = None) -> None:
    """Run what the first-boot options need in the guest at ``source`` (a tree, an
    image, a device; ``partition`` of a disk image): apt for ``apt``, locale-gen, then
    each role in order. A failure raises ProvisionError; the caller's undo stack
    removes the new image."""
    from provision.guest.chroot import chrooted

    fb: FirstBoot = s.firstboot
    if fb is None or not (apt or fb.runs_in_chroot):
        return
    with chrooted(source, partition=partition) as guest:
        if apt:
            log.info(f"installing {' '.join(apt)} in the guest")
            _check(guest.run(["apt-get", "update"], network=True, check=False, quiet=True), "apt-get update")
            _check(guest.run(["apt-get", "install", "-y", "--no-install-recommends", *apt], network=True,
                             check=False, quiet=True), f"apt-get install {' '.join(apt)}")
            guest.run(["apt-get", "clean"], check=False, quiet=True)
        if fb.locale:
            argv = ["locale-gen", fb.locale] if release.distro == "ubuntu" else ["locale-gen"]
            _check(guest.run(argv, check=False, quiet=True), "locale-gen")
        for r in fb.roles:
            _run_role(guest, r, role_env(release, s, target, r.name))


def _check(proc, what: str) -> None:
    if proc.returncode != 0:
        tail = ((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:]
        for line in tail:
            log.warn(f"  {line}", hold=False)
        raise ProvisionError(f"{what} failed in the guest (exit {proc.returncode}); the image was not made",
                             hint="its output is above")


def _run_role(guest, r: Role, env: dict[str, str]) -> None:
    path = guest.path(ROLE_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "wb") as f:
        f.write(r.script)
    log.info(f"role {r.name}")
    try:
        # Its output shown as it comes, all on stderr: stdout is for --genpass's password.
        proc = guest.run(["/bin/sh", "-c", 'exec "$0" >&2', ROLE_PATH], env=env, check=False)
    finally:
        path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise ProvisionError(f"role {r.name} failed (exit {proc.returncode}); the image was not made",
                             hint="its output is above")


def print_password(fb: FirstBoot | None, hostname: str) -> None:
    """Show --genpass's password, once: it is stored nowhere else."""
    if fb is not None and fb.generated_password:
        print(f"root password of {hostname} (shown once, stored only as a hash): {fb.generated_password}",
              flush=True)

