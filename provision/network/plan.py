"""The files a bridged or routed Xen host needs, planned as :class:`Change` lists.

Bridged: ``bridge`` takes over ``uplink`` with the uplink's addressing (or the one asked
for), written for the root's stack, and ``vif.default.bridge`` in xl.conf names it.
Routed (the rented-server case: the provider accepts only the host's MAC): guests'
vifs use Xen's ``vif-route``, which gives each vif the host's address and a host route
to the guest; the uplink answers ARP for the guests (proxy ARP) and the host forwards.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from provision.changes import Change
from provision.errors import ProvisionError
from provision.fsutil import within
from provision.network import ifupdown, networkd, xlconf
from provision.network.discover import (
    Config,
    Link,
    choose_backend,
    choose_uplink,
    is_live,
    live_addressing,
    live_default_route,
    live_links,
)
from provision.network.model import Addressing, BridgeRequest, RoutedRequest, ifname

RESOLV_CONF = "/etc/resolv.conf"
SYSCTL_ROUTED = "/etc/sysctl.d/60-xen-provision-routed.conf"
BACKUP_DIR = "/var/backups/xen-provision"   # backups of files whose directory is all config
IFCONFIG = ("/sbin/ifconfig", "/usr/sbin/ifconfig", "/bin/ifconfig", "/usr/bin/ifconfig")


@dataclass
class Plan:
    """What ``network bridge`` or ``network routed`` will write, and what it found."""

    kind: str                      # "bridge" | "routed"
    root: Path
    uplink: str
    backend: str | None
    bridge: str | None = None
    addressing: Addressing | None = None
    previous: Addressing | None = None
    changes: list[Change] = field(default_factory=list)
    sysctl: dict[str, str] = field(default_factory=dict)   # routed: live values to set
    notes: list[str] = field(default_factory=list)
    uplink_link: Link | None = None                         # live: the kernel's view


def _header(bridge: str, uplink: str) -> str:
    return (f"Written by xen-provision (`python -m provision network bridge`): {bridge} takes\n"
            f"over {uplink} and its addressing; Xen domains' vifs join {bridge}\n"
            f"(vif.default.bridge in {xlconf.XL_CONF}).\n")


def _read(root: Path, path: str) -> bytes | None:
    p = within(root, path)
    try:
        return p.read_bytes() if not p.is_symlink() else None
    except (FileNotFoundError, IsADirectoryError):
        return None


def _xl_conf_change(root: Path, settings: dict[str, str | None], why: str) -> Change:
    old = _read(root, xlconf.XL_CONF)
    text = xlconf.with_settings(old.decode(errors="surrogateescape") if old is not None else None, settings, why)
    return Change(xlconf.XL_CONF, text.encode(errors="surrogateescape"), None if old is not None else 0o644)


def _resolver_change(root: Path, dns: tuple[str, ...]) -> Change | None:
    """resolv.conf's nameservers, when it is a plain file (a symlink is a resolver
    manager's: it takes DNS= / dns-nameservers from the files we write)."""
    p = within(root, RESOLV_CONF)
    if not dns or p.is_symlink():
        return None
    old = p.read_text(errors="replace") if p.exists() else ""
    kept = [line for line in old.splitlines() if not re.match(r"^\s*nameserver\s", line)]
    text = "\n".join(kept + [f"nameserver {ns}" for ns in dns]) + "\n"
    return Change(RESOLV_CONF, text.encode(), None if p.exists() else 0o644)


def plan_bridge(root: Path, req: BridgeRequest) -> Plan:
    """Everything ``network bridge`` checks and writes; nothing is changed here."""
    bridge = ifname(req.bridge, "bridge name")
    config = Config.read(root)
    links = live_links() if is_live(root) else None
    uplink = ifname(choose_uplink(config, req.uplink, links, bridge), "uplink")
    if uplink == bridge:
        raise ProvisionError(f"the bridge and the uplink are both '{bridge}'", hint="give the bridge another name")
    backend = choose_backend(config, uplink, req.backend)
    bridge_file = f"{ifupdown.INTERFACES_D}/{bridge}"

    # Who holds the uplink now. A second bridge over the same uplink would steal it.
    for other, ports in config.bridges().items():
        if uplink in ports and other != bridge:
            raise ProvisionError(f"{uplink} is already a port of bridge {other} in {root}'s configuration",
                                 hint=f"use --name {other}, or take {uplink} out of {other} first")
        if other == uplink:
            raise ProvisionError(f"{uplink} is itself a bridge", hint="give the physical NIC as --uplink")
    link = links.get(uplink) if links is not None else None
    if link is not None:
        if link.kind == "bridge":
            raise ProvisionError(f"{uplink} is itself a bridge", hint="give the physical NIC as --uplink")
        if link.master and link.master != bridge:
            raise ProvisionError(f"{uplink} is already a port of bridge {link.master} on this host",
                                 hint=f"use --name {link.master}, or take {uplink} out of it first")
        if bridge in links and links[bridge].kind != "bridge":
            raise ProvisionError(f"there is already an interface '{bridge}' on this host that is not a bridge",
                                 hint="give the bridge another name (--name)")

    # What the uplink has now: its own files, else (after an earlier run) our bridge's,
    # else (live) what the kernel shows.
    previous = config.addressing(uplink, backend)
    rerun = bridge in config.bridges() and uplink in config.bridges()[bridge]
    if previous is None and rerun:
        previous = config.addressing(bridge, backend)
    if previous is None and links is not None:
        dev, gw = live_default_route()
        for name in (uplink, bridge):
            if name in links:
                previous = live_addressing(links[name], gw if dev == name else None)
                if previous:
                    break
    addressing = req.addressing or previous
    if addressing is None or (addressing.empty and not addressing.extra.get("inet6")):
        where = "on this host" if links is not None else f"in {root}'s configuration"
        raise ProvisionError(f"cannot tell how {uplink} is addressed {where}",
                             hint="say how the bridge gets its address: --dhcp, or --ip ADDRESS/PREFIX [--gateway GW]")
    if req.addressing and req.addressing.addresses and previous and previous.addresses:
        for new in req.addressing.addresses:
            same = [a for a in previous.addresses if a.version == new.version]
            if same and not any(new.ip in a.network for a in same):
                nets = ", ".join(str(a.network) for a in same)
                raise ProvisionError(f"--ip {new} is outside {nets}, the network {uplink} is on now: "
                                     "the host would lose its connection",
                                     hint="give an address in that network, or re-address the uplink first")

    plan = Plan("bridge", root, uplink, backend, bridge=bridge, addressing=addressing, previous=previous,
                uplink_link=link)
    header = _header(bridge, uplink)
    if backend == "ifupdown":
        if not ifupdown.has_bridge_support(root):
            raise ProvisionError(f"{root}'s ifupdown cannot make bridges (no bridge-utils hook)",
                                 hint="install bridge-utils in it (apt-get install bridge-utils)")
        plan.changes.append(Change(bridge_file, ifupdown.render_bridge(
            bridge, uplink, addressing, stp=req.stp, header=header).encode()))
        for file in sorted({s.file for s in config.stanzas if s.iface == uplink and s.file != bridge_file}):
            old = _read(root, file)
            if old is not None:
                new = ifupdown.disable(old.decode(errors="surrogateescape"), uplink)
                plan.changes.append(Change(file, new.encode(errors="surrogateescape"), None))
        if not _sourced(root, bridge_file):
            old = _read(root, ifupdown.INTERFACES)
            text = (old.decode(errors="surrogateescape") if old is not None else
                    "# interfaces(5) file used by ifup(8) and ifdown(8)\nauto lo\niface lo inet loopback\n")
            text = text.rstrip("\n") + f"\n\n# The Xen bridge (xen-provision)\nsource {bridge_file}\n"
            plan.changes.append(Change(ifupdown.INTERFACES, text.encode(errors="surrogateescape"),
                                       None if old is not None else 0o644))
        if not ifupdown.installed(root):
            plan.notes.append(f"{root} has no ifup: install ifupdown there, or use --backend networkd")
    else:
        netdev, net, port = networkd.file_names(bridge, uplink, config.networks)
        mac = link.mac if link is not None else None
        plan.changes += [
            Change(f"{networkd.ETC}/{netdev}", networkd.render_netdev(bridge, stp=req.stp, mac=mac, header=header).encode()),
            Change(f"{networkd.ETC}/{net}", networkd.render_addressed(bridge, addressing, header=header, bridge=True).encode()),
            Change(f"{networkd.ETC}/{port}", networkd.render_port(bridge, uplink, header=header).encode()),
        ]
        # Files of ours for this bridge from an earlier run with another uplink or name.
        ours = {netdev, net, port}
        etc = within(root, networkd.ETC)
        if etc.is_dir():
            for p in sorted(etc.iterdir()):
                if re.fullmatch(rf"\d\d-xen-provision-{re.escape(bridge)}(-\S+)?\.(network|netdev)", p.name) \
                        and p.name not in ours:
                    plan.changes.append(Change(f"{networkd.ETC}/{p.name}", None))
        if not networkd.enabled(root):
            plan.notes.append(f"systemd-networkd is not enabled in {root}: "
                              "systemctl enable systemd-networkd, or use --backend ifupdown")
        if mac is None and addressing.dhcp:
            plan.notes.append(f"{bridge} gets a MAC of its own (from the machine-id), not {uplink}'s: "
                              "a DHCP server sees a new client")
    plan.changes.append(_xl_conf_change(root, {"vif.default.bridge": bridge},
                                        "Domains' vifs join the bridge (xen-provision network bridge)"))
    resolver = _resolver_change(root, addressing.dns)
    if resolver:
        plan.changes.append(resolver)
    return plan


def _sourced(root: Path, path: str) -> bool:
    """Whether ifupdown reads ``path`` from /etc/network/interfaces (after we write it)."""
    stanzas, sources = ifupdown.parse((_read(root, ifupdown.INTERFACES) or b"").decode(errors="replace"),
                                      ifupdown.INTERFACES)
    d, name = path.rsplit("/", 1)
    for pattern in sources:
        if pattern.startswith("dir:"):
            if pattern[4:].rstrip("/") == d and ifupdown._SOURCE_DIR_NAME.match(name):
                return True
        elif fnmatch.fnmatchcase(path, pattern if pattern.startswith("/") else f"/etc/network/{pattern}"):
            return True
    return False


def _uplink_addressing(root: Path, config: Config, uplink: str, backend: str, addr: Addressing) -> list[Change]:
    """The uplink's own configuration giving it ``addr`` (a routed host's main address)."""
    header = (f"Written by xen-provision (`python -m provision network routed`): {uplink}'s\n"
              "addressing; guests are routed through it (vif-route).\n")
    if backend == "ifupdown":
        own = f"{ifupdown.INTERFACES_D}/{uplink}"
        changes = [Change(own, ifupdown.render_iface(uplink, addr, header=header).encode())]
        for file in sorted({s.file for s in config.stanzas if s.iface == uplink and s.file != own}):
            old = _read(root, file)
            if old is not None:
                new = ifupdown.disable(old.decode(errors="surrogateescape"), uplink)
                changes.append(Change(file, new.encode(errors="surrogateescape"), None))
        if not _sourced(root, own):
            raise ProvisionError(f"{root}/etc/network/interfaces does not read {ifupdown.INTERFACES_D}",
                                 hint="add `source /etc/network/interfaces.d/*` to it")
        return changes
    name = f"05-xen-provision-{uplink}.network"
    rivals = [u for u in config.networks if u.matches(uplink) and u.name < name]
    if rivals:
        raise ProvisionError(f"{rivals[0].path} configures {uplink} and sorts before any file of ours",
                             hint="rename it to sort after 05- (networkd uses the first matching file), or remove it")
    return [Change(f"{networkd.ETC}/{name}", networkd.render_addressed(uplink, addr, header=header).encode())]


def plan_routed(root: Path, req: RoutedRequest) -> Plan:
    """Everything ``network routed`` checks and writes; nothing is changed here."""
    config = Config.read(root)
    links = live_links() if is_live(root) else None
    uplink = ifname(choose_uplink(config, req.uplink, links), "uplink")
    link = links.get(uplink) if links is not None else None
    if link is not None and link.kind == "bridge" or uplink in config.bridges():
        raise ProvisionError(f"{uplink} is a bridge: a routed host routes through its NIC",
                             hint="give the NIC as --uplink, or use `network bridge` for bridged guests")
    backend = config.backend(uplink)
    previous = config.addressing(uplink, backend) if backend else None
    if previous is None and link is not None:
        dev, gw = live_default_route()
        previous = live_addressing(link, gw if dev == uplink else None)
    uplink_changes: list[Change] = []
    if req.addressing is not None:
        backend = choose_backend(config, uplink, req.backend)
        uplink_changes = _uplink_addressing(root, config, uplink, backend, req.addressing)
        previous = req.addressing
    if previous is None or previous.empty:
        where = "on this host" if links is not None else f"in {root}'s configuration"
        raise ProvisionError(f"{uplink} has no address {where}: vif-route gives every guest's vif "
                             "the host's address on the uplink", hint="address the uplink first")
    if not any(within(root, p).exists() for p in IFCONFIG):
        raise ProvisionError(f"{root} has no ifconfig, which Xen's vif-route script runs",
                             hint="install net-tools there (apt-get install net-tools)")
    if not within(root, "/etc/xen/scripts/vif-route").exists():
        raise ProvisionError(f"{root} has no /etc/xen/scripts/vif-route",
                             hint="install Xen's tools there first (install.sh, or doit install DESTDIR=...)")
    key = uplink.replace(".", "/")   # sysctl.d's separator for a dotted (VLAN) name
    sysctl = {"net.ipv4.ip_forward": "1", f"net.ipv4.conf.{key}.proxy_arp": "1"}
    text = ("# Written by xen-provision (`python -m provision network routed`): guests' traffic is\n"
            f"# routed through {uplink} (Xen's vif-route); forwarding on, and {uplink} answers ARP\n"
            "# for the guests' addresses (proxy ARP).\n"
            + "".join(f"{k} = {v}\n" for k, v in sysctl.items()))
    plan = Plan("routed", root, uplink, backend, addressing=previous, previous=previous, sysctl=sysctl,
                uplink_link=link)
    plan.changes += uplink_changes
    plan.changes.append(Change(SYSCTL_ROUTED, text.encode()))
    plan.changes.append(_xl_conf_change(root, {"vif.default.script": "vif-route",
                                               "vif.default.gatewaydev": uplink},
                                        "Domains' vifs are routed through the uplink (xen-provision network routed)"))
    v4 = previous.ipv4()
    if v4 is not None:
        plan.notes.append(f"give each guest an address and {v4.ip} as its gateway "
                          f"(image --ip ADDR/{v4.network.prefixlen} --gateway {v4.ip})")
    return plan

