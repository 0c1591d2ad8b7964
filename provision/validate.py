"""Validators for names, hostnames, MACs and addresses, shared by every command.

Each returns the normalised value or raises ProvisionError with one line that says
what is wrong and what is accepted.
"""

from __future__ import annotations

import ipaddress
import os
import re

from provision.errors import ProvisionError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC_RE = re.compile(r"^([0-9A-Fa-f]{2})([:-][0-9A-Fa-f]{2}){5}$")


def name(value: str, what: str = "name", max_len: int = 64) -> str:
    """A safe object name: letters, digits, '.', '_', '+', '-'; no '/', '..', spaces or shell characters."""
    if not value or len(value) > max_len or ".." in value or not _NAME_RE.match(value):
        raise ProvisionError(
            f"{what} '{value}' is not valid",
            hint=f"use 1-{max_len} letters, digits, '.', '_', '+' or '-', starting with a letter or digit; no '/', '..', spaces or shell characters",
        )
    return value


def image_path(path: str, what: str = "image name") -> str:
    """The file name of an image we create: no spaces, commas or shell characters, which
    break xl disk specs (``'file:/srv/a,b.img,xvda,w'``) and scripts that name the file."""
    name(os.path.basename(path), what, max_len=255)
    return path


def hostname(value: str) -> str:
    labels = value.split(".") if value else []
    if not labels or len(value) > 253 or not all(_HOST_LABEL.match(lbl) for lbl in labels):
        raise ProvisionError(
            f"hostname '{value}' is not a valid hostname",
            hint="use labels of letters, digits and '-' (not at either end), at most 63 characters each, joined by '.'",
        )
    return value.lower()


def mac(value: str) -> str:
    """A unicast MAC as lower-case colon form."""
    if not _MAC_RE.match(value or ""):
        raise ProvisionError(f"MAC address '{value}' is not valid", hint="use six hex pairs, e.g. 00:16:3e:12:34:56")
    norm = value.replace("-", ":").lower()
    if int(norm[:2], 16) & 1:
        raise ProvisionError(
            f"MAC address '{value}' is a multicast address",
            hint="the first octet must be even; Xen's own prefix is 00:16:3e",
        )
    if norm == "00:00:00:00:00:00":
        raise ProvisionError(f"MAC address '{value}' is all zeros")
    return norm


def _host(addr, value: str, what: str, loopback_ok: bool = False) -> None:
    """Refuse what cannot be one machine's address: 0.0.0.0, the broadcast address,
    multicast, reserved (240/4) and, unless ``loopback_ok``, loopback addresses."""
    why = None
    if addr.is_unspecified:
        why = "the unspecified address (0.0.0.0 or ::)"
    elif addr.version == 4 and int(addr) == 0xFFFFFFFF:
        why = "the broadcast address"
    elif addr.is_multicast:
        why = "a multicast address"
    elif addr.is_loopback and not loopback_ok:
        why = "a loopback address (this machine itself, wherever it is used)"
    elif addr.version == 4 and addr in ipaddress.IPv4Network("240.0.0.0/4"):
        why = "a reserved address (240.0.0.0/4)"
    if why:
        raise ProvisionError(f"{what} '{value}' is {why}, not a host's address",
                             hint="give the unicast address of one machine, e.g. 192.0.2.10")


def ip(value: str, what: str = "IP address", loopback_ok: bool = False) -> str:
    """One machine's address (IPv4 or IPv6), normalised."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ProvisionError(f"{what} '{value}' is not a valid IP address") from None
    _host(addr, value, what, loopback_ok)
    return str(addr)


def interface(value: str, what: str = "address") -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """A host address with prefix: '10.0.0.5/24' (a bare address is refused: say the
    prefix). Neither the network's own address nor its broadcast address."""
    if "/" not in value:
        ip(value, what)  # '256.1.1.1' is no address at all: say that first
        raise ProvisionError(f"{what} '{value}' has no prefix length", hint="write it as ADDRESS/PREFIX, e.g. 192.0.2.10/24")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ProvisionError(f"{what} '{value}' is not a valid IP address with prefix",
                             hint="write it as ADDRESS/PREFIX, e.g. 192.0.2.10/24") from None
    _host(iface.ip, value, what)
    net = iface.network
    if net.version == 4 and net.prefixlen < 31:
        if iface.ip == net.network_address:
            raise ProvisionError(f"{what} '{value}' is the network address of {net}",
                                 hint="choose a host address inside the network")
        if iface.ip == net.broadcast_address:
            raise ProvisionError(f"{what} '{value}' is the broadcast address of {net}",
                                 hint="choose a host address inside the network")
    return iface


def netmask(value: str) -> int:
    """A dotted netmask or a prefix length; returns the prefix length."""
    try:
        if value.isdigit():
            n = int(value)
            if not 0 <= n <= 32:
                raise ValueError
            return n
        return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    except ValueError:
        raise ProvisionError(f"netmask '{value}' is not valid", hint="use a dotted mask such as 255.255.255.0 or a prefix length 0-32") from None
