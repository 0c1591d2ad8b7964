"""``domain list``: every domain config with what an administrator asks of a guest, in the
manner of xen-tools' xen-list-images and more: its type, memory, vcpus, each disk with
its backing, size and allocated bytes, its addresses, MACs and bridges, whether it
starts at boot, whether it runs, and the image facts (``IMAGE.json``) it was made from.

Running state comes from ``xl list`` on the live host (``--root /``) where xl is
installed and answers; it is "unknown" where xl is absent or fails, and for an offline
root (this machine's Xen says nothing about the host that root becomes).

``--json`` prints one object, its keys stable (format ``xen-provision-domain-list/1``;
new keys may be added, none renamed or removed)::

    {"format": "xen-provision-domain-list/1",
     "xl": "ok" | "absent" | "failed" | "offline",   # where the states come from
     "domains": [{
       "name": "web1",                 # null if the config has none
       "config": "/etc/xen/web1.cfg",  # as found on this machine (under --root)
       "type": "pvh", "memory_mib": 512, "maxmem_mib": null, "vcpus": 2,
       "autostart": true,              # linked in /etc/xen/auto
       "state": "running" | "stopped" | "unknown", "domid": 3 | null,
       "disks": [{"vdev": "xvda1", "target": "/srv/web1.img",   # as the config says
                  "path": "/srv/web1.img",                      # where it is on this machine
                  "backing": "file" | "lv" | "block" | "missing",
                  "access": "rw", "format": "raw",
                  "size": 2147483648 | null, "allocated": 811597824 | null,
                  "role": "root" | "swap" | "disk" | null,      # as the image's facts record it
                  "owned": true}],                              # made for it by `image`
       "nfs_root": {"server": "192.0.2.1", "path": "/export/vm1", "tree": "/export/vm1",
                    "owned": true} | null,
       "vifs": [{"mac": "00:16:3e:..", "bridge": "xenbr0" | null, "ip": ".." | null}],
       "ips": ["192.0.2.10"], "macs": ["00:16:3e:.."], "bridges": ["xenbr0"],
       "image": {"facts": "/srv/web1.img.json", "suite": "bookworm", ...} | null,
       "error": null | "why the config could not be read in full"}]}

``allocated`` is what the disk holds on the host: st_blocks * 512 for a (sparse) file,
the device's size for a block device or LV.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from provision import inuse
from provision.domain import autostart, nfs, xmconvert
from provision.domain.create import sidecar_of
from provision.domain.model import Domain, parse_disk, parse_vif
from provision.domain.paths import Paths
from provision.errors import ProvisionError
from provision.inuse import XlState
from provision.network import discover, xlconf
from provision.sizes import format_approx

FORMAT = "xen-provision-domain-list/1"


# -- the live host's domains --------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def is_live(paths: Paths) -> bool:
    """Whether ``paths`` is this running host (asked once per command: it is asked per disk)."""
    return discover.is_live(paths.root)


def xl_state(paths: Paths) -> XlState:
    """Which domains run, from ``xl list`` on the live host; "offline" for another root."""
    if not is_live(paths):
        return XlState("offline", why=f"{paths.root} is an offline root")
    return inuse.xl_list()


# -- disks on this machine -----------------------------------------------------------------------

def host_path(paths: Paths, target: str) -> Path:
    """Where a config's disk (or NFS tree) is on this machine: under --root; else, for an
    offline root, the path as given when it lies outside the root (``domain create
    --from-image`` keeps such a path as the host saw it). A device (/dev/...) is this
    machine's: an offline root's /dev holds no disks (``image --lv`` made it here)."""
    if is_live(paths) or target.startswith("/dev/"):
        return Path(target)
    inside = paths.inside(target)
    if os.path.lexists(inside):
        return inside
    return Path(target) if os.path.lexists(target) else inside


def _sysfs_size(st: os.stat_result) -> int | None:
    try:
        sectors = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/size").read_text()
        return int(sectors) * 512
    except (OSError, ValueError):
        return None


def _is_lv(path: Path, st: os.stat_result | None) -> bool:
    if st is not None:
        try:
            uuid = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/dm/uuid").read_text()
            return uuid.startswith("LVM-")
        except OSError:
            pass
    # Offline, by name: /dev/mapper/VG-LV or /dev/VG/LV (a directory per VG).
    parts = path.parts
    return len(parts) == 4 and parts[1] == "dev" and parts[2] not in ("disk", "loop", "md", "block")


def disk_facts(path: Path, named: str | None = None) -> tuple[str, int | None, int | None]:
    """(backing, size, allocated) of a disk on this machine; ``named``: the path its config
    gives (an LV of an offline root is known by its name, /dev/VG/LV)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("lv" if _is_lv(Path(named or path), None) else "missing"), None, None
    if stat.S_ISBLK(st.st_mode):
        size = _sysfs_size(st)
        return ("lv" if _is_lv(path, st) else "block"), size, size
    if stat.S_ISREG(st.st_mode):
        return "file", st.st_size, st.st_blocks * 512
    return "other", None, None


# -- the image facts a guest was made from ---------------------------------------------------------

@dataclass
class Image:
    """An image's facts file (sidecar) and what it records as made for the guest."""

    facts_path: Path
    facts: dict
    disks: list[tuple[str, Path]]     # (role, path on this machine) of each disk `image` made
    tree: Path | None = None          # a --dir tree (NFS root)

    def role_of(self, path: Path) -> str | None:
        ident = inuse.identity(path)
        for role, p in self.disks:
            if inuse.identity(p) == ident:
                return role
        return None

    def summary(self) -> dict:
        f = self.facts
        return {"facts": str(self.facts_path), "name": f.get("name"), "distro": f.get("distro"),
                "suite": f.get("suite"), "target": f.get("target"), "template": f.get("base", {}).get("template")
                if isinstance(f.get("base"), dict) else None}


def _read_facts(path: Path) -> dict | None:
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or not str(facts.get("format", "")).startswith("xen-provision-image/"):
        return None
    return facts


def image_of_disk(path: Path) -> Image | None:
    """The facts file that records ``path`` (a disk on this machine) as one of the disks
    ``image`` made: beside it (IMAGE.json), or in the cache for an LV."""
    facts_path = sidecar_of(path)
    facts = _read_facts(facts_path)
    if facts is None or facts.get("target") == "dir":
        return None
    disks = []
    for d in facts.get("disks") or []:
        if isinstance(d, dict) and isinstance(d.get("path"), str):
            p = Path(d["path"])
            if not p.is_absolute():
                p = (facts_path.parent / p).resolve()
            disks.append((str(d.get("role") or "disk"), p))
    image = Image(facts_path, facts, disks)
    # Only the facts of this very disk: a file that merely lies beside another's image is not it.
    return image if image.role_of(path) else None


def image_of_tree(tree: Path) -> Image | None:
    """The facts of a --dir tree (an NFS root): TREE.json, target "dir"."""
    facts_path = Path(str(tree).rstrip("/") + ".json")
    facts = _read_facts(facts_path)
    if facts is None or facts.get("target") != "dir":
        return None
    return Image(facts_path, facts, [], tree=tree)


def guest_images(disks: list[Path]) -> dict[Path, Image]:
    """The facts files of the images a domain's disks were made as, by facts path: the
    facts beside its root disk also own its swap, which has none of its own."""
    images: dict[Path, Image] = {}
    for where in disks:
        image = image_of_disk(where)
        if image:
            images.setdefault(image.facts_path, image)
    return images


# -- one domain ------------------------------------------------------------------------------------

@dataclass
class DiskEntry:
    vdev: str
    target: str
    path: str
    backing: str
    access: str
    format: str
    size: int | None
    allocated: int | None
    role: str | None = None
    owned: bool = False


@dataclass
class Entry:
    name: str | None
    config: str
    type: str | None = None
    memory_mib: int | None = None
    maxmem_mib: int | None = None
    vcpus: int | None = None
    autostart: bool = False
    state: str = "unknown"
    domid: int | None = None
    disks: list[DiskEntry] = field(default_factory=list)
    nfs_root: dict | None = None
    vifs: list[dict] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    macs: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    image: dict | None = None
    error: str | None = None


def kernel_ip(values: dict) -> str | None:
    """The client address of a kernel ip=CLIENT:SERVER:... argument (an NFS root's)."""
    for key in ("extra", "cmdline"):
        text = values.get(key)
        if isinstance(text, str):
            for word in text.split():
                if word.startswith("ip=") and ":" in word:
                    client = word[3:].split(":", 1)[0]
                    if client:
                        return client
    return None


def _add(seq: list, value) -> None:
    if value and value not in seq:
        seq.append(value)


def entry(paths: Paths, config: Path, auto: set[str], xl: XlState, defaults: dict) -> Entry:
    """What ``domain list`` says of one config; a config that cannot be read in full is
    listed with what could be read and its error."""
    e = Entry(name=None, config=str(config), autostart=os.path.realpath(config) in auto)
    try:
        values, _, _ = xmconvert.load_any(config, notes=False, strict=False)
    except ProvisionError as err:
        e.error = err.message
        e.name = config.stem if config.suffix == ".cfg" else config.name
        return e
    name = values.get("name")
    e.name = str(name) if isinstance(name, (str, int)) else None
    try:
        dom = Domain.from_config(values, str(config))
        e.type, e.memory_mib, e.maxmem_mib, e.vcpus = dom.type, dom.memory, dom.maxmem, dom.vcpus
        disks, vifs = dom.disks, dom.vifs
    except ProvisionError as err:
        e.error = err.message
        disks, vifs = [], []
        for key, parse, out in (("disk", parse_disk, disks), ("vif", parse_vif, vifs)):
            specs = values.get(key) or []
            for spec in specs if isinstance(specs, list) else [specs]:
                try:
                    out.append(parse(spec))
                except ProvisionError:
                    continue
    e.state, e.domid = xl.state(e.name)
    wheres = [host_path(paths, d.target) for d in disks]
    images = guest_images(wheres)
    for d, where in zip(disks, wheres, strict=True):
        backing, size, allocated = disk_facts(where, d.target)
        role = next((r for i in images.values() if (r := i.role_of(where))), None)
        e.disks.append(DiskEntry(d.vdev, d.target, str(where), backing, d.access, d.format, size, allocated,
                                 role, role is not None))
    root = nfs.root_of(values)
    if root:
        tree = host_path(paths, root[1])
        image = image_of_tree(tree)
        if image:
            images.setdefault(image.facts_path, image)
        e.nfs_root = {"server": root[0], "path": root[1], "tree": str(tree), "owned": image is not None}
    facts = next((i for i in images.values() if i), None)
    if facts:
        e.image = facts.summary()
    default_bridge = defaults.get("vif.default.bridge") or xlconf.XL_DEFAULT_BRIDGE
    default_script = defaults.get("vif.default.script") or "vif-bridge"
    for v in vifs:
        routed = Path(v.settings.get("script") or default_script).name == "vif-route"
        bridge = None if routed else v.settings.get("bridge") or default_bridge
        ip = v.settings.get("ip")
        e.vifs.append({"mac": v.mac, "bridge": bridge, "ip": ip})
        _add(e.macs, v.mac)
        _add(e.bridges, bridge)
        for a in (ip or "").split():
            _add(e.ips, a.split("/")[0])
    _add(e.ips, kernel_ip(values))
    if facts:
        network = (facts.facts.get("guest") or {}).get("network") or {}
        address = network.get("address") if isinstance(network, dict) else None
        if isinstance(address, str):
            _add(e.ips, address.split("/")[0])
    return e


def entries(paths: Paths) -> tuple[list[Entry], XlState]:
    """Every domain config of the root (as the in-use checks find them), by name."""
    auto = {os.path.realpath(e.target) for e in autostart.listing(paths) if e.ok}
    xl = xl_state(paths)
    defaults = xlconf.read(paths.root)
    found = [entry(paths, c, auto, xl, defaults) for c in inuse.config_files(paths.xen)]
    found.sort(key=lambda e: (e.name or "", e.config))
    return found, xl


# -- output ------------------------------------------------------------------------------------------

def as_dict(e: Entry) -> dict:
    return {**vars(e), "disks": [vars(d) for d in e.disks]}


def as_json(found: list[Entry], xl: XlState) -> str:
    """One object; each domain on a line of its own (greppable; ``jq .`` pretty-prints)."""
    domains = ",\n".join(json.dumps(as_dict(e)) for e in found)
    return (f'{{"format": {json.dumps(FORMAT)}, "xl": {json.dumps(xl.status)}, "domains": [\n'
            + domains + ("\n" if domains else "") + "]}\n")


def size_text(n: int | None) -> str:
    return "?" if n is None else format_approx(n) if n else "0B"


def lines(found: list[Entry], xl: XlState) -> list[str]:
    """One block per domain, as xen-list-images prints them, with more in each."""
    out = []
    for e in found:
        state = e.state + (f" (domid {e.domid})" if e.domid is not None else "")
        head = [e.name or "?", e.type or "?", f"{e.memory_mib} MiB" if e.memory_mib else "? MiB",
                f"{e.vcpus} vcpu{'s' if e.vcpus != 1 else ''}" if e.vcpus else "? vcpus", state,
                "autostart" if e.autostart else "no autostart"]
        out.append("  ".join(head))
        out.append(f"  config  {e.config}")
        if e.error:
            out.append(f"  error   {e.error}")
        for d in e.disks:
            made = f", {d.role} made by image" if d.owned else ""
            sizes = "" if d.backing == "missing" else f"  {size_text(d.size)}, {size_text(d.allocated)} allocated"
            out.append(f"  disk    {d.vdev} {d.access}  {d.backing} {d.target}{sizes}{made}")
        if e.nfs_root:
            server = f"{e.nfs_root['server']}:" if e.nfs_root["server"] else ""
            made = ", made by image" if e.nfs_root["owned"] else ""
            out.append(f"  disk    NFS root {server}{e.nfs_root['path']}{made}")
        for v in e.vifs:
            where = f"bridge {v['bridge']}" if v["bridge"] else "routed"
            out.append(f"  net     {v['mac'] or '(mac from xl)'}  {where}" + (f"  ip {v['ip']}" if v["ip"] else ""))
        if e.ips:
            out.append(f"  ip      {' '.join(e.ips)}")
        if e.image:
            what = " ".join(filter(None, (e.image.get("distro"), e.image.get("suite"))))
            out.append(f"  image   {e.image['facts']}" + (f" ({what})" if what else ""))
    if xl.status != "ok" and found:
        out.append(f"(running state unknown: {xl.why})")
    return out
