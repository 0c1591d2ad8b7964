"""A domain's network devices against the host they will run on.

Each vif ends up either bridged (Xen's ``vif-bridge``: it joins a bridge, which must exist
in the root's network configuration or, on a live host, in the kernel) or routed
(``vif-route``: the host routes the guest's address to the vif, so the address must be
known). The defaults come from the root's ``xl.conf`` as xl reads them, and what a
config leaves to those defaults is written out explicitly for a routed guest, so the
config says how the guest is reached.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from provision.domain.model import Domain, Vif
from provision.errors import ProvisionError
from provision.network import xlconf
from provision.network.discover import Config, is_live


def _script(vif: Vif, defaults: dict[str, str]) -> str:
    return vif.settings.get("script") or defaults.get("vif.default.script") or "vif-bridge"


def _routed(script: str) -> bool:
    return Path(script).name == "vif-route"


def _bridged(script: str) -> bool:
    return Path(script).name == "vif-bridge"


def bridge_exists(root: Path, bridge: str, config: Config | None = None) -> bool:
    config = config or Config.read(root)
    if bridge in config.bridges():
        return True
    return is_live(root) and Path(f"/sys/class/net/{bridge}/bridge").is_dir()


def complete(dom: Domain, root: Path, *, bridge: str | None = None, ip: str | None = None,
             want_vif: bool = False) -> None:
    """Give ``dom`` its vif (``want_vif``, or a bridge or an address asked for), then check
    and complete every vif for the host at ``root``; one line on what cannot work."""
    if not dom.vifs and (want_vif or bridge or ip):
        dom.vifs = [Vif({})]
    if not dom.vifs:
        return
    defaults = xlconf.read(root)
    config = None
    for n, vif in enumerate(dom.vifs):
        if bridge:
            if "bridge" not in vif.settings:
                vif.settings["bridge"] = bridge
            if "script" not in vif.settings and _routed(_script(vif, defaults)):
                vif.settings["script"] = "vif-bridge"   # the host routes by default: say bridged
        script = _script(vif, defaults)
        if _routed(script):
            address = vif.settings.get("ip") or ip
            if not address:
                raise ProvisionError(f"{dom.name}'s vif {n} is routed (vif-route) but has no address",
                                     hint="give --ip ADDRESS (or make the image with --ip), or --bridge NAME")
            vif.settings["ip"] = str(ipaddress.ip_interface(address).ip)
            vif.settings.setdefault("script", "vif-route")
            gatewaydev = defaults.get("vif.default.gatewaydev")
            if gatewaydev:
                vif.settings.setdefault("gatewaydev", gatewaydev)
        elif _bridged(script):
            name = vif.settings.get("bridge") or defaults.get("vif.default.bridge") or xlconf.XL_DEFAULT_BRIDGE
            config = config or Config.read(root)
            if not bridge_exists(root, name, config):
                where = "this host" if is_live(root) else f"{root}'s network configuration"
                known = ", ".join(config.bridges()) or "none"
                raise ProvisionError(
                    f"bridge {name} (vif {n} of {dom.name}) does not exist in {where} (bridges: {known})",
                    hint=f"make it: python -m provision network bridge --name {name}"
                         + (f" --root {root}" if not is_live(root) else "") + ", or give --bridge NAME")
            if ip and "ip" not in vif.settings:
                vif.settings["ip"] = str(ipaddress.ip_interface(ip).ip)
