"""``network status``: bridges and their ports, the vifs of each running domain, xl's
defaults, and a live change waiting for confirmation. Offline (``--root``): what the
root's files configure."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from provision import inuse
from provision.network import xlconf
from provision.network.apply import PENDING, read_record, record_path
from provision.network.discover import Config, is_live, live_links

SYS_NET = Path("/sys/class/net")


def _domains() -> dict[int, str]:
    """{domid: name} of the running domains, from ``xl list`` where xl runs."""
    return {domid: name for name, domid in inuse.xl_list().domids.items()}


def _ports(bridge: str) -> list[str]:
    try:
        return sorted(os.listdir(SYS_NET / bridge / "brif"))
    except FileNotFoundError:
        return []


def lines(root: Path) -> list[str]:
    out: list[str] = []
    config = Config.read(root)
    defaults = xlconf.read(root)
    if is_live(root):
        links = live_links()
        domains = _domains()
        bridges = [n for n, link in links.items() if link.kind == "bridge"]
        for br in bridges:
            addrs = " ".join(a for a, _ in links[br].addresses) or "no address"
            out.append(f"bridge {br}: {addrs}; {'up' if links[br].up else 'DOWN'}")
            for port in _ports(br):
                m = re.fullmatch(r"vif(\d+)\.(\d+)(-emu)?", port)
                owner = f"  (domain {domains.get(int(m.group(1)), '#' + m.group(1))}, vif {m.group(2)})" if m else ""
                out.append(f"  port {port}{owner}")
        routed = [n for n in links if re.fullmatch(r"vif\d+\.\d+", n) and not links[n].master]
        for vif in routed:
            domid = int(vif[3:].split(".")[0])
            addrs = " ".join(a for a, _ in links[vif].addresses)
            out.append(f"routed {vif}  (domain {domains.get(domid, '#' + str(domid))}) {addrs}")
        if not bridges and not routed:
            out.append("no bridges and no routed vifs")
        try:
            forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
            out.append(f"ip_forward: {forward}")
        except OSError:
            pass
        rec = read_record(record_path())
        if rec and rec.get("state") in PENDING:
            left = max(0, int((rec.get("deadline") or time.time()) - time.time()))
            txn = rec.get("txn", {})
            out.append(f"pending: {txn.get('bridge') or 'routing'} over {txn.get('uplink')} "
                       f"({rec['state']}; rolled back in {left} s unless `network confirm`)")
    else:
        for br, ports in config.bridges().items():
            out.append(f"bridge {br}: ports {' '.join(ports) or '-'}")
        if not config.bridges():
            out.append(f"no bridges in {root}'s configuration")
    for key in ("vif.default.bridge", "vif.default.script", "vif.default.gatewaydev"):
        if key in defaults:
            out.append(f"xl.conf {key}={defaults[key]}")
    return out
