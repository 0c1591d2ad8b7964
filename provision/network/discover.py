"""What a root's network is now: which stack configures it (ifupdown or systemd-networkd),
which interfaces its files configure, how the uplink is addressed, which bridges exist;
on a live host also what the kernel has (``ip -j``)."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.errors import ProvisionError
from provision.fsutil import within
from provision.network import ifupdown, networkd
from provision.network.model import BACKENDS, Addressing
from provision.run import output, which


def is_live(root: Path) -> bool:
    return root.resolve() == Path("/")


# -- the live kernel ---------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    name: str
    mac: str | None
    master: str | None
    kind: str | None                      # "bridge", "veth", ... (None: a plain NIC)
    up: bool
    addresses: tuple[tuple[str, bool], ...]   # (ADDRESS/PREFIX, dynamic)
    altnames: tuple[str, ...] = ()        # `ip link property add ... altname`, udev's other names


def _ip_json(*args: str):
    if which("ip") is None:
        raise ProvisionError("the ip command is missing", hint="install iproute2")
    text = output(["ip", "-j", *args], quiet=True)
    return json.loads(text) if text else []


def live_links() -> dict[str, Link]:
    links = {}
    for entry in _ip_json("-d", "addr", "show"):
        kind = (entry.get("linkinfo") or {}).get("info_kind")
        addrs = tuple((f"{a['local']}/{a['prefixlen']}", bool(a.get("dynamic")))
                      for a in entry.get("addr_info", [])
                      if a.get("family") in ("inet", "inet6") and a.get("scope") == "global")
        links[entry["ifname"]] = Link(entry["ifname"], entry.get("address"), entry.get("master"), kind,
                                      "UP" in entry.get("flags", []), addrs,
                                      tuple(entry.get("altnames") or ()))
    return links


def find_link(links: dict[str, Link], name: str) -> Link | None:
    """The live link called ``name``, by its kernel name or one of its altnames."""
    if name in links:
        return links[name]
    return next((link for link in links.values() if name in link.altnames), None)


def live_default_route() -> tuple[str | None, str | None]:
    """(device, gateway) of the IPv4 default route, or (None, None)."""
    for r in _ip_json("-4", "route", "show", "default"):
        if r.get("dev"):
            return r["dev"], r.get("gateway")
    return None, None


def live_addressing(link: Link, gateway: str | None) -> Addressing | None:
    if not link.addresses:
        return None
    if any(dynamic for addr, dynamic in link.addresses if ":" not in addr):
        return Addressing(dhcp=True, source="live")
    addrs = tuple(ipaddress.ip_interface(a) for a, _ in link.addresses)
    gw = gateway if gateway and any(ipaddress.ip_address(gateway) in a.network for a in addrs) else None
    return Addressing(addresses=addrs, gateway=gw, source="live (ip addr)")


# -- the root's files -------------------------------------------------------------------

@dataclass
class Config:
    """A root's network configuration as its files say."""

    root: Path
    stanzas: list[ifupdown.Stanza]
    networks: list[networkd.Unit]

    @classmethod
    def read(cls, root: Path) -> Config:
        return cls(root, ifupdown.read(root), networkd.read(root, ".network"))

    def backend(self, uplink: str | None = None) -> str | None:
        """The stack that configures ``uplink`` (or the host): ifupdown or networkd."""
        if uplink:
            if any(s.iface == uplink for s in self.stanzas):
                return "ifupdown"
            unit = networkd.first_match(self.networks, uplink)
            if unit is not None and networkd.enabled(self.root):
                return "networkd"
        if networkd.enabled(self.root):
            return "networkd"
        if ifupdown.installed(self.root) or ifupdown.configured(self.stanzas):
            return "ifupdown"
        return None

    def interfaces(self) -> list[str]:
        """Interfaces the files name exactly (loopback, bridges and their ports left out)."""
        bridges = self.bridges()
        skip = set(bridges) | {p for ports in bridges.values() for p in ports} | {"lo"}
        names = ifupdown.configured(self.stanzas) + networkd.configured(self.networks)
        return [n for i, n in enumerate(names) if n not in skip and n not in names[:i]]

    def bridges(self) -> dict[str, list[str]]:
        out = ifupdown.bridges(self.stanzas)
        for br, ports in networkd.bridges(self.root).items():
            out.setdefault(br, [])
            out[br] += [p for p in ports if p not in out[br]]
        return out

    def addressing(self, iface: str, backend: str) -> Addressing | None:
        if backend == "ifupdown":
            return ifupdown.addressing(self.stanzas, iface)
        unit = networkd.first_match(self.networks, iface)
        return networkd.addressing(unit) if unit else None


def choose_backend(config: Config, uplink: str | None, forced: str | None) -> str:
    if forced:
        if forced not in BACKENDS:
            raise ProvisionError(f"backend '{forced}' is not known", hint=f"use one of: {', '.join(BACKENDS)}")
        return forced
    found = config.backend(uplink)
    if found:
        return found
    if within(config.root, "/etc/NetworkManager/NetworkManager.conf").exists():
        raise ProvisionError(f"{config.root} has neither ifupdown nor systemd-networkd enabled "
                             "(NetworkManager?)", hint="give --backend ifupdown or --backend networkd")
    raise ProvisionError(f"cannot tell which network stack {config.root} uses (no ifupdown, "
                         "systemd-networkd not enabled)",
                         hint="give --backend ifupdown or --backend networkd")


def choose_uplink(config: Config, given: str | None, live: dict[str, Link] | None,
                  bridge: str | None = None) -> str:
    """The uplink: given, else the one port ``bridge`` already has (a second run), else
    (live) the default route's device, else the one interface the root's files configure."""
    if given:
        if live is not None and given not in live:
            # udev gives a NIC several names (enp0s16 by path, ens16 by slot, ...) and the
            # kernel keeps the others as altnames. A name the root's files already configure
            # stays (networkd's Name= and ip take altnames, and those files are the ones to
            # replace); otherwise the live changes and the files use the kernel's name.
            link = find_link(live, given)
            if link is not None:
                if given in config.interfaces() or networkd.first_match(config.networks, given):
                    log.info(f"{given} is an altname of {link.name}; the files name {given}")
                    return given
                log.info(f"{given} is an altname of {link.name}: the uplink is {link.name}")
                return link.name
            names = ", ".join(n for n in live if n != "lo") or "none"
            raise ProvisionError(f"there is no interface '{given}' on this host",
                                 hint=f"interfaces here: {names}")
        return given
    ports = config.bridges().get(bridge, []) if bridge else []
    if len(ports) == 1:
        return ports[0]
    if live is not None:
        dev, _ = live_default_route()
        if dev:
            link = live.get(dev)
            if link and link.kind == "bridge":
                raise ProvisionError(f"the default route already goes through bridge {dev}",
                                     hint="give --uplink IFACE to take over another interface")
            return dev
    names = config.interfaces()
    if len(names) == 1:
        return names[0]
    where = f"{config.root}'s files configure " + (", ".join(names) if names else "no interface by name")
    raise ProvisionError(f"cannot tell which interface is the uplink: {where}",
                         hint="give --uplink IFACE")


def netns_id() -> str:
    """This process's network namespace (pending live changes are kept per namespace)."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "host"
