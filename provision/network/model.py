"""What a host's network should be: the parsed, validated request of ``network bridge``
and ``network routed``, and the addressing of an interface."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from provision import validate
from provision.errors import ProvisionError

IFNAMSIZ = 16   # the kernel's limit, with the terminating NUL
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
BACKENDS = ("ifupdown", "networkd")


def ifname(value: str, what: str = "interface name") -> str:
    """A Linux interface name: at most 15 characters, no '/', ':' or white space."""
    if not value or len(value) > IFNAMSIZ - 1 or not _IFNAME.match(value) or value in (".", ".."):
        raise ProvisionError(
            f"{what} '{value}' is not a valid interface name",
            hint=f"use 1-{IFNAMSIZ - 1} letters, digits, '-', '_' or '.' (Linux's limit), e.g. xenbr0")
    return value


@dataclass(frozen=True)
class Addressing:
    """How an interface gets its addresses: DHCP, or static addresses and a gateway.

    ``extra`` keeps what we move without understanding (a networkd file's other sections,
    an ifupdown stanza's other options, inet6 stanzas), as lines of the backend's syntax.
    """

    dhcp: bool = False
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    source: str = ""                   # where it was read: "options", a file, "live"
    extra: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def empty(self) -> bool:
        return not self.dhcp and not self.addresses

    def describe(self) -> str:
        if self.dhcp:
            return "DHCP"
        if not self.addresses:
            return "no address"
        text = ", ".join(str(a) for a in self.addresses)
        return text + (f" via {self.gateway}" if self.gateway else "")

    def ipv4(self) -> ipaddress.IPv4Interface | None:
        return next((a for a in self.addresses if a.version == 4), None)


def host_address(value: str, what: str = "address") -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """ADDRESS/PREFIX that a host may carry: not the network's or the broadcast address,
    not loopback, multicast, link-local or unspecified."""
    iface = validate.interface(value)
    ip, net = iface.ip, iface.network
    bad = ("loopback" if ip.is_loopback else "multicast" if ip.is_multicast
           else "unspecified" if ip.is_unspecified else "link-local" if ip.is_link_local else None)
    if bad:
        raise ProvisionError(f"{what} {value} is a {bad} address", hint="give the host's own address, e.g. 192.0.2.1/24")
    if ip.version == 4 and net.prefixlen < 31:
        if ip == net.network_address:
            raise ProvisionError(f"{what} {value} is the network address of {net}",
                                 hint="choose a host address inside the network")
        if ip == net.broadcast_address:
            raise ProvisionError(f"{what} {value} is the broadcast address of {net}",
                                 hint="choose a host address inside the network")
    return iface


def gateway_for(value: str, addresses) -> str:
    """A gateway that is a plain address inside the prefix of one of ``addresses``."""
    gw = ipaddress.ip_address(validate.ip(value, "gateway"))
    same = [a for a in addresses if a.version == gw.version]
    if not same:
        raise ProvisionError(f"gateway {gw} is IPv{gw.version} and no address of that family is given")
    if not any(gw in a.network for a in same):
        nets = ", ".join(str(a.network) for a in same)
        raise ProvisionError(f"gateway {gw} is not in {nets}",
                             hint="the gateway must be on the bridge's own network")
    if any(gw == a.ip for a in same):
        raise ProvisionError(f"gateway {gw} is the host's own address")
    return str(gw)


def addressing_from_options(dhcp: bool, ips: list[str], gateway: str | None,
                            dns: list[str]) -> Addressing | None:
    """The addressing the user asked for, or None: keep what the uplink has."""
    nameservers = tuple(validate.ip(d, "DNS server") for d in dns)
    if dhcp and (ips or gateway):
        raise ProvisionError("--dhcp and --ip/--gateway exclude each other", hint="give one of them")
    if gateway and not ips:
        raise ProvisionError("--gateway needs --ip ADDRESS/PREFIX")
    if dhcp:
        return Addressing(dhcp=True, dns=nameservers, source="options")
    if not ips:
        if nameservers:
            raise ProvisionError("--dns goes with --dhcp or --ip", hint="say how the bridge gets its address")
        return None
    addresses = tuple(host_address(a, "--ip") for a in ips)
    gw = gateway_for(gateway, addresses) if gateway else None
    return Addressing(addresses=addresses, gateway=gw, dns=nameservers, source="options")


@dataclass(frozen=True)
class BridgeRequest:
    """``network bridge``: ``bridge`` takes over ``uplink`` (None: find it)."""

    bridge: str = "xenbr0"
    uplink: str | None = None
    addressing: Addressing | None = None   # None: keep what the uplink has
    backend: str | None = None             # None: detect
    stp: bool = False


@dataclass(frozen=True)
class RoutedRequest:
    """``network routed``: guests reach the network through ``uplink`` by routing."""

    uplink: str | None = None
    backend: str | None = None
    addressing: Addressing | None = None   # None: the uplink keeps what it has
