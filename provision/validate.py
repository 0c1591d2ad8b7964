"""Validators for names, hostnames, MACs and addresses, shared by every command.

Each returns the normalised value or raises ProvisionError with one line that says
what is wrong and what is accepted.
"""

from __future__ import annotations

import ipaddress
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


def ip(value: str, what: str = "IP address") -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ProvisionError(f"{what} '{value}' is not a valid IP address") from None


def interface(value: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address with prefix: '10.0.0.5/24' (a bare address is refused: say the prefix)."""
    if "/" not in value:
        raise ProvisionError(f"address '{value}' has no prefix length", hint="write it as ADDRESS/PREFIX, e.g. 192.0.2.10/24")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise ProvisionError(f"address '{value}' is not a valid IP address with prefix") from None


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
