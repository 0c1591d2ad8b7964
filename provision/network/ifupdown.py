"""ifupdown's /etc/network/interfaces: read the stanzas (following ``source`` and
``source-directory``), render a bridge stanza (bridge-utils' ``bridge_ports``), and take
an interface's own stanzas out of service by commenting them, so that the bridge can
hold its addresses. Comments keep a marker, so the change is visible and reversible."""

from __future__ import annotations

import glob
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from provision.fsutil import within
from provision.network.model import Addressing

INTERFACES = "/etc/network/interfaces"
INTERFACES_D = "/etc/network/interfaces.d"
MARK = "#xen-provision# "
_STANZA = ("iface", "mapping", "auto", "source", "source-directory", "rename", "no-auto-down",
           "no-scripts")
# bridge-utils' ifupdown hook: without it `bridge_ports` is ignored.
BRIDGE_HOOKS = ("/lib/bridge-utils/ifupdown.sh", "/usr/lib/bridge-utils/ifupdown.sh",
                "/etc/network/if-pre-up.d/bridge")
_SOURCE_DIR_NAME = re.compile(r"^[A-Za-z0-9_-]+$")   # run-parts' names, as ifupdown reads


@dataclass
class Stanza:
    file: str                    # path inside the root
    first: int                   # index of its first line in the file
    last: int                    # index of its last line (options included)
    keyword: str                 # iface, auto, allow-hotplug, mapping, ...
    words: list[str]             # what follows the keyword
    options: list[tuple[str, str]] = field(default_factory=list)
    option_lines: list[str] = field(default_factory=list)

    @property
    def iface(self) -> str | None:
        return self.words[0] if self.keyword == "iface" and self.words else None

    @property
    def family(self) -> str | None:
        return self.words[1] if self.keyword == "iface" and len(self.words) > 1 else None

    @property
    def method(self) -> str | None:
        return self.words[2] if self.keyword == "iface" and len(self.words) > 2 else None

    def option(self, name: str) -> str | None:
        return next((v for k, v in self.options if k == name), None)


def _logical_lines(text: str) -> list[tuple[int, int, str]]:
    """(first index, last index, text) of each line, backslash continuations joined."""
    raw = text.split("\n")
    out, i = [], 0
    while i < len(raw):
        start, line = i, raw[i]
        while line.endswith("\\") and i + 1 < len(raw):
            i += 1
            line = line[:-1] + " " + raw[i]
        out.append((start, i, line))
        i += 1
    return out


def parse(text: str, file: str) -> tuple[list[Stanza], list[str]]:
    """The stanzas of one file, and the patterns it sources (``source`` globs, and
    ``source-directory`` as ``DIR/*`` with a marker)."""
    stanzas: list[Stanza] = []
    sources: list[str] = []
    current: Stanza | None = None
    for first, last, line in _logical_lines(text):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0]
        if key in _STANZA or key.startswith("allow-"):
            current = Stanza(file, first, last, key, words[1:])
            stanzas.append(current)
            if key == "source" and len(words) > 1:
                sources.append(words[1])
            elif key == "source-directory" and len(words) > 1:
                sources.append("dir:" + words[1])
            if key not in ("iface", "mapping"):
                current = None
        elif current is not None:
            current.options.append((key, " ".join(words[1:])))
            current.option_lines.append(line.strip())
            current.last = last
    return stanzas, sources


def read(root: Path) -> list[Stanza]:
    """Every stanza of the root's ifupdown configuration, in ifupdown's reading order."""
    out: list[Stanza] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        real = within(root, path, follow=True)
        try:
            text = real.read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        stanzas, sources = parse(text, path)
        out.extend(stanzas)
        base = os.path.dirname(path)
        for pattern in sources:
            if pattern.startswith("dir:"):
                d = pattern[4:] if pattern[4:].startswith("/") else f"{base}/{pattern[4:]}"
                names = sorted(n for n in _listdir(within(root, d, follow=True)) if _SOURCE_DIR_NAME.match(n))
                for name in names:
                    visit(f"{d}/{name}")
                continue
            pat = pattern if pattern.startswith("/") else f"{base}/{pattern}"
            host_pat = str(within(root, os.path.dirname(pat), follow=True)) + "/" + os.path.basename(pat)
            prefix = str(within(root, os.path.dirname(pat), follow=True))
            for match in sorted(glob.glob(host_pat)):
                if os.path.isfile(match):
                    visit(os.path.dirname(pat) + match[len(prefix):])

    visit(INTERFACES)
    return out


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def configured(stanzas: list[Stanza]) -> list[str]:
    """The interfaces with an ``iface`` stanza, loopback left out, in order."""
    names: list[str] = []
    for s in stanzas:
        if s.iface and s.iface != "lo" and s.iface not in names:
            names.append(s.iface)
    return names


def bridges(stanzas: list[Stanza]) -> dict[str, list[str]]:
    """{bridge: its ports} for every iface stanza with ``bridge_ports``."""
    out: dict[str, list[str]] = {}
    for s in stanzas:
        ports = s.option("bridge_ports") if s.iface else None
        if ports is not None:
            out[s.iface] = [p for p in ports.split() if p not in ("none", "all")]
    return out


def addressing(stanzas: list[Stanza], iface: str) -> Addressing | None:
    """How ``iface``'s own stanzas address it (its first ``inet`` stanza; inet6 ones kept
    as extra stanzas), or None when it has none or only ``manual``."""
    own = [s for s in stanzas if s.iface == iface]
    inet = next((s for s in own if s.family == "inet"), None)
    extra = {"inet6": [_stanza_text(s, s.iface) for s in own if s.family == "inet6"]}
    if inet is None or inet.method in ("manual", "loopback"):
        if extra["inet6"]:
            return Addressing(source=inet.file if inet else own[0].file, extra=extra)
        return None
    if inet.method == "dhcp":
        return Addressing(dhcp=True, source=inet.file, extra={**extra, "options": _other_options(inet)})
    if inet.method != "static":
        return Addressing(source=inet.file, extra={**extra, "method": [inet.method],
                                                   "options": _other_options(inet)})
    address = inet.option("address") or ""
    netmask = inet.option("netmask")
    if address and "/" not in address and netmask:
        address = f"{address}/{netmask}"
    try:
        addr = ipaddress.ip_interface(address)
    except ValueError:
        return None
    dns = tuple((inet.option("dns-nameservers") or "").split())
    return Addressing(addresses=(addr,), gateway=inet.option("gateway"), dns=dns, source=inet.file,
                      extra={**extra, "options": _other_options(inet)})


_ADDRESSING_OPTIONS = {"address", "netmask", "gateway", "dns-nameservers", "broadcast", "network"}


def _other_options(s: Stanza) -> list[str]:
    # bridge_* too: re-reading our own stanza must not carry them twice.
    return [line for (key, _), line in zip(s.options, s.option_lines, strict=True)
            if key not in _ADDRESSING_OPTIONS and not key.startswith("bridge_")]


def _stanza_text(s: Stanza, name: str) -> str:
    head = " ".join(["iface", name, *s.words[1:]])
    return "\n".join([head] + [f"\t{line}" for line in s.option_lines])


def render_bridge(bridge: str, uplink: str, addr: Addressing, *, stp: bool, header: str) -> str:
    """The interfaces.d file of ``bridge``: it holds ``addr`` and ``uplink`` is its port."""
    bridge_opts = [f"bridge_ports {uplink}", f"bridge_stp {'on' if stp else 'off'}", "bridge_fd 0",
                   "bridge_maxwait 0"]
    lines = render_iface(bridge, addr, header=header, options=bridge_opts).rstrip("\n").split("\n")
    lines += ["", f"# {uplink} carries no address of its own: it is {bridge}'s port.",
              f"iface {uplink} inet manual", ""]
    return "\n".join(lines)


def render_iface(iface: str, addr: Addressing, *, header: str, options: list[str] = ()) -> str:
    """An interfaces.d file giving ``iface`` the addressing ``addr`` (and ``options``)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"auto {iface}"]
    method = "dhcp" if addr.dhcp else (addr.extra.get("method") or ["static" if addr.ipv4() else "manual"])[0]
    lines.append(f"iface {iface} inet {method}")
    body = list(options)
    v4 = addr.ipv4()
    if method == "static" and v4:
        body.append(f"address {v4.with_prefixlen}")
        if addr.gateway and ipaddress.ip_address(addr.gateway).version == 4:
            body.append(f"gateway {addr.gateway}")
    if addr.dns:
        body.append(f"dns-nameservers {' '.join(addr.dns)}")
    body += addr.extra.get("options", [])
    lines += [f"\t{line}" for line in body]
    for a in addr.addresses:
        if a.version == 6:
            lines += ["", f"iface {iface} inet6 static", f"\taddress {a.with_prefixlen}"]
            if addr.gateway and ipaddress.ip_address(addr.gateway).version == 6:
                lines.append(f"\tgateway {addr.gateway}")
    for text in addr.extra.get("inet6", []):
        lines += ["", re.sub(r"^iface \S+", f"iface {iface}", text)]
    return "\n".join(lines) + "\n"


def disable(text: str, iface: str) -> str:
    """``text`` with ``iface``'s own stanzas commented out (marked) and ``iface`` taken
    off ``auto``/``allow-*`` lines; every other byte stays."""
    raw = text.split("\n")
    stanzas, _ = parse(text, "")
    out = list(raw)
    for s in stanzas:
        if s.iface == iface:
            for i in range(s.first, s.last + 1):
                if raw[i].strip() and not raw[i].lstrip().startswith("#"):
                    out[i] = MARK + raw[i]
        elif (s.keyword == "auto" or s.keyword.startswith("allow-")) and iface in s.words:
            rest = [w for w in s.words if w != iface]
            out[s.first] = MARK + raw[s.first]
            if rest:
                out[s.first] += "\n" + " ".join([s.keyword, *rest])
            for i in range(s.first + 1, s.last + 1):
                out[i] = MARK + raw[i]
    return "\n".join(out)


def has_bridge_support(root: Path) -> bool:
    return any(within(root, p).exists() for p in BRIDGE_HOOKS)


def installed(root: Path) -> bool:
    return any(within(root, p).exists() for p in ("/sbin/ifup", "/usr/sbin/ifup"))
