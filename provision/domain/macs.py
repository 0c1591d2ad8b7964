"""MAC addresses: a free one generated under a lock, so that two runs never pick the same.

Generated MACs use Xen's OUI 00:16:3e or a locally administered three-octet prefix such
as 02:00:00; never another vendor's OUI, whose cards may share the LAN. The search starts at a point derived from this host's
machine-id, so that two hosts on one LAN start far apart, and walks up to the first
address no config uses: deterministic for the same host and configs.

The lock (flock on a file in the config directory) is held from reading the other
configs until our config is written, so a concurrent run sees our MAC.
"""

from __future__ import annotations

import hashlib
import socket

from provision.domain.paths import Paths
from provision.errors import ProvisionError
from provision.fsutil import Lock

XEN_PREFIX = "00:16:3e"


def parse_prefix(prefix: str) -> str:
    parts = prefix.lower().replace("-", ":").split(":")
    if len(parts) != 3 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ProvisionError(f"MAC prefix '{prefix}' is not three hex octets",
                             hint="use Xen's 00:16:3e or a locally administered prefix such as 02:00:00")
    first = int(parts[0], 16)
    if first & 1:
        raise ProvisionError(f"MAC prefix '{prefix}' is a multicast prefix", hint="the first octet must be even")
    prefix = ":".join(parts)
    if prefix != XEN_PREFIX and not first & 2:
        # A universally administered OUI belongs to a vendor: its cards may be on this LAN.
        raise ProvisionError(f"MAC prefix '{prefix}' is a vendor's OUI, not Xen's nor a locally administered one",
                             hint="use Xen's 00:16:3e or a locally administered prefix (first octet x2, x6, xa "
                                  "or xe), such as 02:00:00")
    return prefix


def _host_seed(paths: Paths) -> int:
    for candidate in (paths.inside("/etc/machine-id"), "/etc/machine-id"):
        try:
            text = open(candidate).read().strip()
            if text:
                break
        except OSError:
            continue
    else:
        text = socket.gethostname()
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:3], "big")


def generate(paths: Paths, used: set[str], prefix: str = XEN_PREFIX, count: int = 1) -> list[str]:
    """``count`` MACs under ``prefix`` not in ``used``."""
    prefix = parse_prefix(prefix)
    start = _host_seed(paths)
    out: list[str] = []
    taken = {m.lower() for m in used}
    for i in range(1 << 24):
        n = (start + i) % (1 << 24)
        if n == 0:
            continue
        mac = f"{prefix}:{n >> 16:02x}:{(n >> 8) & 0xff:02x}:{n & 0xff:02x}"
        if mac not in taken:
            out.append(mac)
            taken.add(mac)
            if len(out) == count:
                return out
    raise ProvisionError(f"no free MAC address left under {prefix}")


def config_lock(paths: Paths) -> Lock:
    """Exclusive lock over the config directory for check-then-write (its file goes away
    with the last holder)."""
    paths.xen.mkdir(parents=True, exist_ok=True)
    return Lock(paths.lock)
