"""systemd-networkd's .network and .netdev files: read them, find the file that
configures an interface (the first matching one in lexical order, as networkd picks),
and render a bridge (.netdev), its port (.network) and its addressing (.network)."""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import ProvisionError
from provision.fsutil import within
from provision.network.model import Addressing

# networkd reads these, a name in an earlier directory hiding the same name in a later one.
DIRS = ("/etc/systemd/network", "/run/systemd/network", "/usr/lib/systemd/network",
        "/lib/systemd/network")
ETC = DIRS[0]
PREFIXES = ("05", "00")        # ours sort before the distribution's and most users' files
UNIT = "/lib/systemd/system/systemd-networkd.service"
ENABLED = "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"


@dataclass
class Unit:
    """A parsed .network/.netdev file: its sections in order, keys repeatable."""

    name: str                                   # file name
    path: str                                   # inside the root
    sections: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, items in self.sections if s == section for k, v in items if k == key]

    def value(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None

    def matches(self, iface: str) -> bool:
        """Whether ``[Match] Name=`` takes ``iface`` (a file without Name= matches by
        other properties we cannot judge offline: not counted)."""
        names = " ".join(self.values("Match", "Name")).split()
        if not names:
            return False
        negate = names[0].startswith("!")
        pats = [n.lstrip("!") for n in names]
        hit = any(fnmatch.fnmatchcase(iface, p) for p in pats)
        return hit != negate

    @property
    def wildcard(self) -> bool:
        return any(ch in " ".join(self.values("Match", "Name")) for ch in "*?[!")


def parse(text: str, name: str, path: str) -> Unit:
    unit = Unit(name, path)
    items: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            items = []
            unit.sections.append((line[1:-1], items))
        elif "=" in line and items is not None:
            key, _, value = line.partition("=")
            items.append((key.strip(), value.strip()))
    return unit


def read(root: Path, suffix: str) -> list[Unit]:
    """The root's ``*.suffix`` files in networkd's order (by file name; /etc first)."""
    found: dict[str, Unit] = {}
    for d in DIRS:
        if d.startswith("/run") and root.resolve() != Path("/"):
            continue   # an offline root's /run is not what it will have at boot
        base = within(root, d, follow=True)
        try:
            names = os.listdir(base)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if not name.endswith(suffix) or name in found:
                continue
            p = base / name
            try:
                text = p.read_text(errors="replace")
            except (IsADirectoryError, FileNotFoundError):
                continue
            if text.strip() == "" and p.is_symlink() and os.readlink(p) == "/dev/null":
                continue   # masked
            found[name] = parse(text, name, f"{d}/{name}")
    return [found[n] for n in sorted(found)]


def configured(networks: list[Unit]) -> list[str]:
    """Interfaces named exactly (no wildcards) by a .network file."""
    names: list[str] = []
    for u in networks:
        if not u.wildcard:
            for n in " ".join(u.values("Match", "Name")).split():
                if n not in names and not n.startswith("!"):
                    names.append(n)
    return names


def first_match(networks: list[Unit], iface: str) -> Unit | None:
    return next((u for u in networks if u.matches(iface)), None)


def bridges(root: Path) -> dict[str, list[str]]:
    """{bridge: its ports} from .netdev Kind=bridge and .network Bridge= lines."""
    out: dict[str, list[str]] = {}
    for u in read(root, ".netdev"):
        if u.value("NetDev", "Kind") == "bridge" and u.value("NetDev", "Name"):
            out.setdefault(u.value("NetDev", "Name"), [])
    for u in read(root, ".network"):
        br = u.value("Network", "Bridge")
        if br:
            for n in " ".join(u.values("Match", "Name")).split():
                out.setdefault(br, []).append(n)
    return out


_MOVED_KEYS = {"DHCP", "Address", "Gateway", "DNS"}
_KEPT_SECTIONS = ("Address", "Route", "DHCP", "DHCPv4", "DHCPv6", "IPv6AcceptRA", "RoutingPolicyRule")


def addressing(unit: Unit) -> Addressing | None:
    """The addressing ``unit`` gives its interface, or None when it gives none."""
    dhcp_value = (unit.value("Network", "DHCP") or "no").lower()
    dhcp = dhcp_value in ("yes", "true", "ipv4", "1", "on")
    addresses = []
    for a in unit.values("Network", "Address") + unit.values("Address", "Address"):
        try:
            addresses.append(ipaddress.ip_interface(a))
        except ValueError:
            continue
    gateways = unit.values("Network", "Gateway") + unit.values("Route", "Gateway")
    other = [f"{k}={v}" for s, items in unit.sections if s == "Network" for k, v in items
             if k not in _MOVED_KEYS and k not in ("Bridge", "Bond", "VLAN")]
    sections = [f"[{s}]\n" + "\n".join(f"{k}={v}" for k, v in items)
                for s, items in unit.sections if s in _KEPT_SECTIONS and s != "Address"]
    if not dhcp and not addresses and dhcp_value in ("no", "false", "0", "off"):
        return None
    return Addressing(dhcp=dhcp, addresses=tuple(addresses),
                      gateway=gateways[0] if gateways else None,
                      dns=tuple(" ".join(unit.values("Network", "DNS")).split()), source=unit.path,
                      extra={"network": other, "sections": sections, "dhcp": [dhcp_value]})


def file_names(bridge: str, uplink: str, networks: list[Unit]) -> tuple[str, str, str]:
    """Names for the bridge's .netdev, its .network and the uplink's .network that sort
    before every other file matching the bridge or the uplink (networkd uses the first)."""
    for prefix in PREFIXES:
        names = (f"{prefix}-xen-provision-{bridge}.netdev", f"{prefix}-xen-provision-{bridge}.network",
                 f"{prefix}-xen-provision-{bridge}-{uplink}.network")
        # Our own files for this bridge (from an earlier run, any prefix) are replaced.
        mine = re.compile(rf"\d\d-xen-provision-{re.escape(bridge)}(-[^/]+)?\.network")
        rivals = [u for u in networks if (u.matches(uplink) or u.matches(bridge)) and not mine.fullmatch(u.name)]
        if all(u.name > names[2] and u.name > names[1] for u in rivals):
            return names
    first = min(rivals, key=lambda u: u.name)
    raise ProvisionError(f"{first.path} configures {uplink} or {bridge} and sorts before any file of ours",
                         hint="rename it to sort after 05- (networkd uses the first matching file), or remove it")


def render_netdev(bridge: str, *, stp: bool, mac: str | None, header: str) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["[NetDev]", f"Name={bridge}", "Kind=bridge"]
    if mac:
        lines.append(f"MACAddress={mac}")
    lines += ["", "[Bridge]", f"STP={'yes' if stp else 'no'}", "ForwardDelaySec=0", ""]
    return "\n".join(lines)


def render_port(bridge: str, uplink: str, *, header: str) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["[Match]", f"Name={uplink}", "", "[Network]", f"Bridge={bridge}", ""]
    return "\n".join(lines)


def render_addressed(iface: str, addr: Addressing, *, header: str, bridge: bool = False) -> str:
    """``iface``'s .network giving it ``addr`` (a bridge's, or a routed host's uplink)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["[Match]", f"Name={iface}", "", "[Network]"]
    if addr.dhcp:
        dhcp = (addr.extra.get("dhcp") or ["yes"])[0]
        lines.append(f"DHCP={dhcp if dhcp not in ('no', 'false', '0', 'off') else 'yes'}")
    for a in addr.addresses:
        lines.append(f"Address={a.with_prefixlen}")
    if addr.gateway:
        lines.append(f"Gateway={addr.gateway}")
    for ns in addr.dns:
        lines.append(f"DNS={ns}")
    if bridge:
        # A bridge has carrier only once a port is up; configure it even before that.
        lines.append("ConfigureWithoutCarrier=yes")
    lines += [line for line in addr.extra.get("network", []) if not line.startswith("ConfigureWithoutCarrier=")]
    for section in addr.extra.get("sections", []):
        lines += ["", section]
    lines.append("")
    return "\n".join(lines)


def enabled(root: Path) -> bool:
    return within(root, ENABLED).is_symlink() or within(root, ENABLED).exists()


def installed(root: Path) -> bool:
    return any(within(root, p).exists() for p in (UNIT, "/usr/lib/systemd/system/systemd-networkd.service"))
