"""Guest configuration for Xen, written into a root tree before it becomes a filesystem.

What the manual's appendix did by hand in a chroot: hostname, hosts, resolver, network,
fstab, apt sources; plus what a domain needs today: a getty on the Xen console hvc0,
root access without a password on any command line, an empty machine-id and SSH host
keys made on first boot.

:func:`guest_files` decides the changes as a list of operations, from the settings and
whatever it needs to read of the tree (shadow, inittab); :func:`apply_to_dir` makes them
in a directory, and ``provision.guest.ext4edit`` in an ext4 image without mounting
it (templates). Same settings, same bytes.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from provision import validate
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.guest.suites import GuestKernel, Release

if TYPE_CHECKING:
    from provision.guest.firstboot import FirstBoot
    from provision.guest.hostkeys import HostKey

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.dirname(__file__)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)

DEVICE_STYLES = ("xvd", "sd")
_HASH_RE = re.compile(r"^\$(1|2[abxy]?|5|6|y|gy|7)\$[./A-Za-z0-9$=,]+$")
_KEY_RE = re.compile(r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp\d+|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)\s+[A-Za-z0-9+/=]+(\s.*)?$")


def render(name: str, **values) -> str:
    return _ENV.get_template(name).render(**values)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Network:
    """DHCP, or a static address with prefix, gateway and resolvers."""

    dhcp: bool = True
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()
    search: str | None = None

    @classmethod
    def make(cls, ip: str | None = None, netmask: str | None = None, gateway: str | None = None,
             dns=(), search: str | None = None) -> Network:
        """Validate the user's network options (one line per mistake)."""
        # A resolver on the guest itself (127.0.0.1) is a choice; any other non-host address is not.
        nameservers = tuple(validate.ip(d, "DNS server", loopback_ok=True) for d in dns or ())
        if search is not None:
            validate.hostname(search)
        if ip is None:
            if netmask or gateway:
                raise ProvisionError("--netmask and --gateway need a static --ip", hint="add --ip ADDRESS/PREFIX")
            return cls(True, None, None, nameservers, search)
        if netmask is not None:
            if "/" in ip:
                raise ProvisionError(f"address '{ip}' has a prefix and --netmask is given too", hint="give one of them")
            prefix = validate.netmask(netmask)
            ip = f"{validate.ip(ip)}/{prefix}"
        address = validate.interface(ip)
        gw = None
        if gateway is not None:
            gw = validate.ip(gateway, "gateway")
            if ipaddress.ip_address(gw) not in address.network:
                raise ProvisionError(f"gateway {gw} is not in the network {address.network} of {address}",
                                     hint="the gateway must be reachable on the guest's own network")
            if ipaddress.ip_address(gw) == address.ip:
                raise ProvisionError(f"gateway {gw} is the guest's own address")
            net = address.network
            if net.version == 4 and net.prefixlen < 31 and ipaddress.ip_address(gw) in (
                    net.network_address, net.broadcast_address):
                which = "network" if ipaddress.ip_address(gw) == net.network_address else "broadcast"
                raise ProvisionError(f"gateway '{gw}' is the {which} address of {net}, not a host's",
                                     hint="give the router's own address in that network")
        return cls(False, address, gw, nameservers, search)

    def as_dict(self) -> dict:
        return {"dhcp": self.dhcp, "address": str(self.address) if self.address else None,
                "gateway": self.gateway, "nameservers": list(self.nameservers), "search": self.search}


@dataclass(frozen=True)
class GuestSettings:
    hostname: str
    network: Network = field(default_factory=Network)
    devices: str = "xvd"  # fstab names: xvda1/xvda2, or the manual's sda1/sda2
    fstype: str = "ext4"   # the fstab's; a build takes both from its target (see ``on``)
    swap: bool = False
    root_hash: str | None = field(default=None, repr=False)  # a crypt hash, never a password
    ssh_keys: tuple[str, ...] = ()
    apt_sources: tuple[str, ...] = ()  # one-line sources.list entries
    root_uuid: str | None = None       # fstab names the root (and swap) by UUID, not device
    swap_uuid: str | None = None
    nfs_root: bool = False             # a tree served over NFS: the kernel mounts / and sets the NIC up
    guest_kernel: GuestKernel | None = None    # the distribution's kernel, booted by pvgrub2
    firstboot: FirstBoot | None = None  # access and customisation: user, timezone, roles... (guest.firstboot)
    # The guest's own SSH host keys (guest.hostkeys), written where it has an SSH server;
    # none: it makes them on its first boot.
    host_keys: tuple[HostKey, ...] = field(default=(), repr=False)

    def on(self, target) -> GuestSettings:
        """These settings for a guest made at ``target`` (a guest.target.Target): the
        fstab's filesystem type and swap are the target's, their one source. A
        directory is the manual's NFS root tree: no disk, no swap, and its root and
        network are the kernel's (``root=/dev/nfs nfsroot=... ip=...``)."""
        if target.kind == "dir":
            return replace(self, swap=False, nfs_root=True)
        return replace(self, fstype=target.fstype, swap=bool(target.swap))

    @property
    def root_device(self) -> str:
        return f"{self.devices}a1"

    @property
    def swap_device(self) -> str | None:
        return f"{self.devices}a2" if self.swap else None

    @property
    def root_spec(self) -> str | None:
        """The root's first fstab field: UUID=... or /dev/xvda1; None for an NFS root,
        which the kernel mounted and no fstab line may remount."""
        if self.nfs_root:
            return None
        return f"UUID={self.root_uuid}" if self.root_uuid else f"/dev/{self.root_device}"

    @property
    def swap_spec(self) -> str | None:
        if not self.swap:
            return None
        return f"UUID={self.swap_uuid}" if self.swap_uuid else f"/dev/{self.swap_device}"

    def public(self) -> dict:
        """The settings as recorded in the image's JSON: no secrets."""
        return {"hostname": self.hostname, "network": self.network.as_dict(), "devices": self.devices,
                "root_device": f"/dev/{self.root_device}",
                "swap_device": f"/dev/{self.swap_device}" if self.swap else None,
                "fstype": self.fstype, "nfs_root": self.nfs_root, "guest_kernel": self.guest_kernel.package if self.guest_kernel else None,
                "root_password": self.root_hash is not None,
                "root_uuid": self.root_uuid, "swap_uuid": self.swap_uuid if self.swap else None,
                "ssh_keys": len(self.ssh_keys),
                **({"ssh_host_keys": [k.public for k in self.host_keys]} if self.host_keys else {}),
                **({"firstboot": self.firstboot.public()} if self.firstboot else {})}


def read_root_hash(path: str | os.PathLike) -> str:
    """Root's crypt hash in ``path`` (e.g. ``mkpasswd -m yescrypt > file``)."""
    return read_crypt_hash(path, "root password")


def read_crypt_hash(path: str | os.PathLike, what: str) -> str:
    """The crypt hash in ``path``; a plain password is refused. ``what``: whose, for messages."""
    try:
        text = Path(path).read_text().strip()
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ProvisionError(f"cannot read {what} file {path}: {e.strerror}") from None
    if not _HASH_RE.match(text) or "\n" in text:
        # Never echo the content: it may be a password.
        raise ProvisionError(f"{what} file {path} does not hold a crypt hash",
                             hint="write a hash into it, e.g. mkpasswd -m yescrypt > FILE (not a plain password)")
    if mode & 0o077:
        from provision import log

        log.warn(f"{what} file {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    return text


def read_ssh_keys(path: str | os.PathLike) -> tuple[str, ...]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ProvisionError(f"cannot read SSH key file {path}: {e.strerror}") from None
    if "PRIVATE KEY" in text:
        raise ProvisionError(f"{path} is a private key", hint="pass the public key (the .pub file)")
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not keys or not all(_KEY_RE.match(k) for k in keys):
        raise ProvisionError(f"{path} does not hold SSH public keys",
                             hint="pass an authorized_keys-style file, e.g. ~/.ssh/id_ed25519.pub")
    return keys


def apt_sources(release: Release, mirror: str, components=("main",)) -> tuple[str, ...]:
    """The guest's sources.list: the suite, and its updates and security where they exist."""
    comps = " ".join(components)
    lines = [f"deb {mirror} {release.name} {comps}"]
    if release.name == "sid" or (release.distro == "debian" and release.archived):
        return tuple(lines)
    if release.distro == "ubuntu":
        lines += [f"deb {mirror} {release.name}-updates {comps}",
                  f"deb {mirror} {release.name}-security {comps}"]
        return tuple(lines)
    lines.append(f"deb {mirror} {release.name}-updates {comps}")
    security = mirror.rsplit("/", 1)[0] + "/debian-security" if mirror.endswith("/debian") else None
    if security:
        lines.append(f"deb {security} {release.name}-security {comps}")
    return tuple(lines)


# ---------------------------------------------------------------- operations


@dataclass(frozen=True)
class Write:
    path: str
    data: bytes = field(repr=False)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Remove:
    path: str


@dataclass(frozen=True)
class Mkdir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


Op = Write | Symlink | Remove | Mkdir


@dataclass
class TreeReader:
    """What :func:`guest_files` may look at in the tree: file contents and a directory listing."""

    read: Callable[[str], str | None]
    listdir: Callable[[str], list[str]]


def dir_reader(root: str | os.PathLike) -> TreeReader:
    root = Path(root)

    def read(path: str) -> str | None:
        p = root / path.lstrip("/")
        try:
            return p.read_text(errors="replace") if p.is_file() else None
        except OSError:
            return None

    def listdir(path: str) -> list[str]:
        p = root / path.lstrip("/")
        return sorted(os.listdir(p)) if p.is_dir() else []

    return TreeReader(read, listdir)


def _group_id(groups: str | None, name: str, default: int = 0) -> int:
    for line in (groups or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
            return int(parts[2])
    return default


def _shadow_with_root(shadow: str, root_hash: str) -> str:
    out, found = [], False
    for line in shadow.splitlines():
        parts = line.split(":")
        if parts[0] == "root" and len(parts) >= 2:
            parts[1] = root_hash
            line, found = ":".join(parts), True
        out.append(line)
    if not found:
        raise ProvisionError("the image's /etc/shadow has no root entry")
    return "\n".join(out) + "\n"


_SYSTEMD_UNITS = "/lib/systemd/system"


def _enable(unit: str, wanted_by: str, source: str | None = None) -> Symlink:
    return Symlink(f"/etc/systemd/system/{wanted_by}.wants/{unit}", source or f"{_SYSTEMD_UNITS}/{unit}")


def host_nameservers(resolv: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The host's resolvers, without loopback ones (a stub resolver in dom0 is no use to a guest)."""
    out = []
    try:
        for line in Path(resolv).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    if not ipaddress.ip_address(parts[1]).is_loopback:
                        out.append(parts[1])
                except ValueError:
                    continue
    except OSError:
        pass
    return tuple(out)


def guest_files(release: Release, settings: GuestSettings, tree: TreeReader) -> list[Op]:
    """Every change that makes the tree a Xen guest called ``settings.hostname``."""
    s = settings
    fqdn = s.hostname
    short = fqdn.split(".", 1)[0]
    net = s.network
    ops: list[Op] = []

    def write(path: str, text: str, mode: int = 0o644, gid: int = 0) -> None:
        ops.append(Write(path, text.encode(), mode, 0, gid))

    # Identity and name resolution.
    write("/etc/hostname", short + "\n")
    host_address = str(net.address.ip) if net.address else "127.0.1.1"
    write("/etc/hosts", render("hosts.j2", host_address=host_address, fqdn=fqdn, short=short))
    nameservers = net.nameservers or host_nameservers()
    ops.append(Remove("/etc/resolv.conf"))  # may be a symlink into /run (resolved)
    write("/etc/resolv.conf", render("resolv.conf.j2", nameservers=nameservers, search=net.search))

    # Network: ifupdown on eth0 for old guests, networkd matching the Xen NIC for new ones.
    # An NFS root's NIC is set up by the kernel (ip=) before / is mounted: nothing may
    # take it down or flush its address while / is mounted, at shutdown least of all.
    values = {"dhcp": net.dhcp, "gateway": net.gateway, "nameservers": nameservers, "nfs_root": s.nfs_root}
    if net.address:
        values.update(address=str(net.address), netmask=str(net.address.netmask))
    if release.network == "ifupdown":
        if net.address:
            values["address"] = str(net.address.ip)
        write("/etc/network/interfaces", render("interfaces.j2", nic="eth0", **values))
    else:
        ops.append(Mkdir("/etc/systemd/network"))
        write("/etc/systemd/network/50-xen-vif.network", render("xen-vif.network.j2", **values))
        ops.append(_enable("systemd-networkd.service", "multi-user.target"))
        ops.append(_enable("systemd-networkd.socket", "sockets.target"))
        ops.append(_enable("systemd-networkd-wait-online.service", "network-online.target"))
    # Old udev pins eth0 to the template's MAC: a clone would come up with eth1.
    ops.append(Remove("/etc/udev/rules.d/70-persistent-net.rules"))

    # Disks as the domain config names them.
    write("/etc/fstab", render("fstab.j2", root_spec=s.root_spec, swap_spec=s.swap_spec, fstype=s.fstype))

    # The guest's own kernel: the menu pvgrub2 reads from the guest's disk.
    if s.guest_kernel:
        ops.append(Mkdir("/boot/grub"))
        write("/boot/grub/grub.cfg", render("pvgrub.cfg.j2", title=str(release), root=s.root_spec,
                                            args=release.kernel_args))

    # Console on hvc0, and root may log in there.
    if release.init == "systemd":
        ops.append(_enable("serial-getty@hvc0.service", "getty.target", f"{_SYSTEMD_UNITS}/serial-getty@.service"))
    elif release.init == "upstart":
        write("/etc/init/hvc0.conf", render("hvc0.conf.j2"))
    inittab = tree.read("/etc/inittab")
    if inittab is not None and not re.search(r"^[^#]*\bhvc0\b", inittab, re.M):
        write("/etc/inittab", inittab.rstrip("\n") + "\n# Xen console (xen-provision)\n"
              "hvc0:2345:respawn:/sbin/getty 38400 hvc0\n")
    securetty = tree.read("/etc/securetty")
    if securetty is not None and "hvc0" not in securetty.split():
        write("/etc/securetty", securetty.rstrip("\n") + "\n# Xen console\nhvc0\n")

    # Root access: a hash from a file or SSH keys; files holding secrets are 0600/0640.
    if s.root_hash:
        shadow = tree.read("/etc/shadow")
        if shadow is None:
            raise ProvisionError("the image has no /etc/shadow to set the root password in")
        write("/etc/shadow", _shadow_with_root(shadow, s.root_hash), 0o640, _group_id(tree.read("/etc/group"), "shadow"))
    if s.ssh_keys:
        ops.append(Mkdir("/root/.ssh", 0o700))
        write("/root/.ssh/authorized_keys", "\n".join(s.ssh_keys) + "\n", 0o600)

    # Apt: the guest's own sources; build-time options (proxy, gpgv wrapper) stay behind.
    write("/etc/apt/sources.list", render("sources.list.j2", lines=s.apt_sources))
    ops.append(Remove("/etc/apt/apt.conf.d/99mmdebstrap"))
    if release.archived:
        write("/etc/apt/apt.conf.d/99archived-release", 'Acquire::Check-Valid-Until "false";\n')

    # Per-guest identity: an empty machine-id (made at first boot), and no shared SSH host
    # keys: the guest's own (made with the image), else made on its first boot.
    write("/etc/machine-id", "", 0o444)
    ops.append(Remove("/var/lib/dbus/machine-id"))
    sshd = tree.read("/etc/ssh/sshd_config") is not None
    own = {k.path for k in s.host_keys} | {k.path + ".pub" for k in s.host_keys} if sshd else set()
    for name in tree.listdir("/etc/ssh"):
        if name.startswith("ssh_host_") and f"/etc/ssh/{name}" not in own:
            ops.append(Remove(f"/etc/ssh/{name}"))
    if sshd:
        for key in s.host_keys:
            ops.append(Write(key.path, key.private, 0o600))
            write(key.path + ".pub", key.public + "\n")
        if s.host_keys and tree.read("/etc/cloud/cloud.cfg") is not None:
            # cloud-init deletes and remakes host keys on a new instance by default,
            # which would leave the keys the image's JSON lists behind.
            ops.append(Mkdir("/etc/cloud/cloud.cfg.d"))
            write("/etc/cloud/cloud.cfg.d/90-xen-provision-ssh-host-keys.cfg",
                  "# Written by xen-provision: this guest's SSH host keys were made with its image,\n"
                  "# whose JSON lists them; cloud-init keeps them.\nssh_deletekeys: false\nssh_genkeytypes: []\n")
        # Kept beside the keys: it makes them again for a guest whose keys were removed.
        if release.init == "systemd":
            write("/etc/systemd/system/regenerate-ssh-host-keys.service",
                  render("regenerate-ssh-host-keys.service.j2"))
            ops.append(_enable("regenerate-ssh-host-keys.service", "multi-user.target",
                               "/etc/systemd/system/regenerate-ssh-host-keys.service"))
        else:
            types = "rsa dsa" if release.old_glibc else "rsa ecdsa ed25519"
            write("/etc/init.d/regenerate-ssh-host-keys",
                  render("regenerate-ssh-host-keys.init.j2", key_types=types), 0o755)
            ops.append(Symlink("/etc/rcS.d/S90regenerate-ssh-host-keys", "../init.d/regenerate-ssh-host-keys"))
    if s.firstboot:
        from provision.guest import firstboot

        ops = firstboot.guest_files(release, s, tree, ops)
    return ops


# ---------------------------------------------------------------- applying


def _inside(root: Path, path: str) -> Path:
    """``path`` under ``root``, refusing a parent that is a symlink leading out of the tree."""
    target = root / path.lstrip("/")
    parent = Path(os.path.realpath(target.parent))
    real_root = Path(os.path.realpath(root))
    if parent != real_root and real_root not in parent.parents:
        raise ProvisionError(f"{path} in the image leads outside it (through a symlink)")
    return target


def apply_to_dir(root: str | os.PathLike, ops: list[Op]) -> None:
    """Make ``ops`` in the tree at ``root``. Files are replaced atomically (new inodes)."""
    root = Path(root)
    for op in ops:
        if isinstance(op, Mkdir):
            p = _inside(root, op.path)
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, op.mode)
            os.chown(p, op.uid, op.gid)
            continue
        p = _inside(root, op.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(op, Write):
            atomic_write(p, op.data, op.mode)
            os.chown(p, op.uid, op.gid)
        elif isinstance(op, Symlink):
            if os.path.lexists(p):
                p.unlink()
            os.symlink(op.target, p)
        elif isinstance(op, Remove):
            if os.path.lexists(p) and not p.is_dir():
                p.unlink()


def configure(root: str | os.PathLike, release: Release, settings: GuestSettings) -> list[Op]:
    """Configure the tree at ``root`` as a Xen guest; returns what was done."""
    ops = guest_files(release, settings, dir_reader(root))
    apply_to_dir(root, ops)
    return ops


def describe(ops: list[Op]) -> list[str]:
    """One line per operation, for --dry-run (contents of secrets are never shown)."""
    lines = []
    for op in ops:
        if isinstance(op, Write):
            lines.append(f"write {op.path} (mode {op.mode:04o}, {len(op.data)} bytes)")
        elif isinstance(op, Symlink):
            lines.append(f"link  {op.path} -> {op.target}")
        elif isinstance(op, Remove):
            lines.append(f"rm    {op.path}")
        elif isinstance(op, Mkdir):
            lines.append(f"mkdir {op.path} (mode {op.mode:04o})")
    return lines
