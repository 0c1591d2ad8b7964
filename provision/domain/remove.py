"""``domain remove NAME --purge``: the guest and what our commands made for it.

What goes, in this order:

1. its ``/etc/xen/auto`` link and its config (together, the link first: it never
   dangles); its MACs are free again with it, for a MAC is reserved by nothing but the
   config that names it (see macs.py);
2. the ``/etc/exports`` line ``domain create --exports`` wrote for its NFS root;
3. the disks and swap ``image`` made for it, as that image's facts file (IMAGE.json)
   records them: files, LVs (lvremove), a ``--dir`` tree served as its NFS root;
4. those facts files.

Any other disk of the guest is listed and kept. Refused, with nothing changed: while the
domain runs (``xl list`` on the live host, where xl answers), and when another domain's
config, or this machine (a mount, swap, a loop device), uses one of the disks.

Interruption. Before anything is removed, the plan is written to
``/etc/xen/.NAME.purge.json``; each step is idempotent (a thing already gone is
skipped) and the plan goes last. So a purge interrupted before the plan is written
changed nothing (the whole guest is there), and one interrupted after it left a guest
without a config whose remainder the plan names: ``domain remove NAME --purge`` again
finishes it, even though the config is gone. The config goes first, so no half-removed
guest can be started (xendomains, ``xl create``) meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provision import inuse, log, run, validate
from provision.domain import autostart, macs, nfs, xmconvert
from provision.domain import list as lister
from provision.domain.model import parse_disk, parse_vif
from provision.domain.paths import Paths
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.undo import critical, keep, pause_point

JOURNAL_FORMAT = "xen-provision-purge/1"
EXPORT_OPTIONS = "rw,sync,no_root_squash,no_subtree_check"   # as nfs.NfsRoot.export_line writes them

# A test hook: called after each step with its number (1-based); tests raise in it to
# interrupt a purge at a known point. None in normal runs.
after_step = None


@dataclass
class Step:
    kind: str        # "auto-link" | "config" | "export" | "file" | "lv" | "tree" | "facts"
    path: str        # on this machine; "VG/LV" for an LV; the exports file for "export"
    what: str        # what it is, for the listing
    line: str = ""   # "export": the line

    def describe(self) -> str:
        target = f"{self.line!r} from {self.path}" if self.kind == "export" else self.path
        return f"{target} ({self.what})"


@dataclass
class Plan:
    name: str
    config: str
    config_sha256: str | None
    steps: list[Step] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)    # disks listed and kept
    resumed: bool = False

    def as_json(self) -> str:
        return json.dumps({"format": JOURNAL_FORMAT, "name": self.name, "config": self.config,
                           "config_sha256": self.config_sha256, "steps": [asdict(s) for s in self.steps],
                           "kept": self.kept}, indent=2) + "\n"


def journal_path(paths: Paths, name: str) -> Path:
    """The plan of a purge under way (hidden: no config reader takes it for a domain)."""
    return paths.xen / f".{validate.name(name, 'domain name')}.purge.json"


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _read_journal(path: Path) -> Plan | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ProvisionError(f"{path} (an interrupted purge's plan) is not valid JSON: {e}",
                             hint="look at it, remove what it names by hand, then remove it") from None
    if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
        raise ProvisionError(f"{path} is not a purge plan written by xen-provision")
    return Plan(data["name"], data["config"], data.get("config_sha256"),
                [Step(**s) for s in data.get("steps", [])], data.get("kept", []), resumed=True)


# -- planning ------------------------------------------------------------------------------------

def _export_line(values: dict, root: tuple[str | None, str]) -> str:
    """The line ``domain create --exports`` writes for this guest (nfs.NfsRoot.export_line)."""
    client = lister.kernel_ip(values) or "*"
    return f"{root[1]} {client}({EXPORT_OPTIONS})"


def _has_line(exports: Path, line: str) -> bool:
    try:
        return any(existing.strip() == line for existing in exports.read_text().splitlines())
    except FileNotFoundError:
        return False


def _lv_of(path: Path) -> str | None:
    """VG/LV of /dev/VG/LV or /dev/mapper/VG-LV, else None."""
    parts = path.parts
    if len(parts) == 4 and parts[:2] == ("/", "dev") and parts[2] != "mapper":
        return f"{parts[2]}/{parts[3]}"
    if len(parts) == 4 and parts[:3] == ("/", "dev", "mapper"):
        vg, sep, lv = parts[3].replace("--", "\0").partition("-")
        if sep:
            return f"{vg.replace(chr(0), '-')}/{lv.replace(chr(0), '-')}"
    return None


def _disk_step(path: Path, role: str, facts: Path) -> Step | None:
    backing, size, _ = lister.disk_facts(path)
    what = f"{role}{', ' + lister.size_text(size) if size else ''}, made by image: {facts}"
    if backing == "lv" or (backing == "missing" and _lv_of(path)):
        lv = _lv_of(Path(os.path.realpath(path)) if backing == "lv" else path) or _lv_of(path)
        if lv:
            return Step("lv", lv, f"logical volume, {what}")
    if backing in ("file", "missing"):   # a regular file (or gone): never a directory
        return Step("file", str(path), what)
    return None   # a block device that is no LV is never ours to remove


def _specs(values: dict, key: str) -> list:
    specs = values.get(key) or []
    return specs if isinstance(specs, list) else [specs]


def plan(paths: Paths, name: str) -> Plan:
    """What a purge of ``name`` removes and keeps; a plan left by an interrupted purge is
    taken up again. Nothing is checked for use here (see :func:`check`)."""
    config = paths.config(validate.name(name, "domain name"))
    journal = _read_journal(journal_path(paths, name))
    sha = _sha256(config)
    if journal is not None:
        if sha is None or sha == journal.config_sha256:
            return journal
        raise ProvisionError(f"{journal_path(paths, name)} is the plan of an interrupted purge of an earlier "
                             f"'{name}', and {config} is another config",
                             hint="finish or drop that plan by hand (it names what is left), then try again")
    if sha is None:
        raise ProvisionError(f"no domain config {config}")
    values, _, _ = xmconvert.load_any(config, notes=False, strict=False)
    disks = []
    for spec in _specs(values, "disk"):
        try:
            disks.append(parse_disk(spec))
        except ProvisionError as e:
            raise ProvisionError(f"{config}: {e.message}", hint="fix the config, or remove it without --purge") from None
    found: list[str] = []
    for spec in _specs(values, "vif"):
        try:
            if (mac := parse_vif(spec).mac):
                found.append(mac)
        except ProvisionError:
            continue
    out = Plan(name, str(config), sha)
    link = autostart.link_path(paths, name)
    if link.is_symlink():
        out.steps.append(Step("auto-link", str(link), "starts it at boot"))
    freed = f"; frees MAC {', '.join(found)}" if found else ""
    out.steps.append(Step("config", str(config), f"its xl config{freed}"))
    wheres = [lister.host_path(paths, d.target) for d in disks]
    images = lister.guest_images(wheres)
    root = nfs.root_of(values)
    tree_image = None
    if root:
        line = _export_line(values, root)
        if _has_line(paths.exports, line):
            out.steps.append(Step("export", str(paths.exports), "its NFS root's export", line))
        tree_image = lister.image_of_tree(lister.host_path(paths, root[1]))
    # A disk goes when the config uses it AND the facts record it as made for the guest:
    # the facts alone name no file for removal (a config without its swap keeps it).
    used = {inuse.identity(w) for w in wheres}
    owned: set = set()
    for image in images.values():
        for role, path in image.disks:
            ident = inuse.identity(path)
            if ident in owned:
                continue
            if ident not in used:
                out.kept.append(f"{path} ({role} of {image.facts_path}, which {name}'s config does not use)")
                continue
            step = _disk_step(path, role, image.facts_path)
            if step:
                owned.add(ident)
                out.steps.append(step)
    for d, where in zip(disks, wheres, strict=True):
        if inuse.identity(where) not in owned:
            out.kept.append(f"{where} ({d.vdev}: not made for {name} by image)")
    if tree_image and os.path.realpath(tree_image.tree) in ("/", os.path.realpath(paths.root)):
        tree_image = None   # never a whole root, whatever a facts file says
    if tree_image:
        out.steps.append(Step("tree", str(tree_image.tree), f"its NFS root tree, made by image: {tree_image.facts_path}"))
    elif root:
        out.kept.append(f"{lister.host_path(paths, root[1])} (its NFS root: not made for {name} by image)")
    for image in [*images.values(), *([tree_image] if tree_image else [])]:
        out.steps.append(Step("facts", str(image.facts_path), "the image's facts file"))
    return out


# -- checks --------------------------------------------------------------------------------------

def _others(paths: Paths, config: str) -> list[inuse.DomainConfig]:
    """The other domains' configs, their disks as paths on this machine."""
    out = []
    for cfg in inuse.domain_configs(paths.xen, exclude=config, quiet=True):
        for d in cfg.disks:
            d.target = str(lister.host_path(paths, d.target))
        out.append(cfg)
    return out


def _mounted_below(tree: str) -> str | None:
    real = os.path.realpath(tree)
    for _, mnt, _ in inuse.mounts():
        if mnt == real or mnt.startswith(real.rstrip("/") + "/"):
            return mnt
    return None


def check(paths: Paths, p: Plan) -> None:
    """Refuse (one line, nothing changed) a purge of a running domain, or of a disk or tree
    another domain or this machine uses."""
    state, domid = lister.xl_state(paths).state(p.name)
    if state == "running":
        raise ProvisionError(f"domain {p.name} is running (domid {domid})",
                             hint=f"shut it down first: xl shutdown -w {p.name}")
    others = _others(paths, p.config)
    for s in p.steps:
        if s.kind in ("file", "lv"):
            target = s.path if s.kind == "file" else f"/dev/{s.path}"
            if not os.path.lexists(target):
                continue
            for use in inuse.users(target, configs=others, dom0=True):
                raise ProvisionError(f"{target} is {use.describe(target)}",
                                     hint=f"--purge removes nothing another user has; remove {p.name} without "
                                          "--purge to keep its disks" if use.kind == "domain" else use.hint())
        elif s.kind == "tree":
            for other in others:
                if other.nfs_root and os.path.realpath(lister.host_path(paths, other.nfs_root[1])) == \
                        os.path.realpath(s.path):
                    raise ProvisionError(f"{s.path} is the NFS root of domain {other.name or '?'} ({other.path})",
                                         hint=f"remove {p.name} without --purge to keep the tree")
            if (mnt := _mounted_below(s.path)):
                raise ProvisionError(f"{s.path} is in use in dom0: {mnt} is mounted in it",
                                     hint=f"unmount it first (umount {mnt})")


# -- doing it --------------------------------------------------------------------------------------

def _remove_export(path: Path, line: str, live: bool) -> bool:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    lines = text.splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() != line]
    if len(kept) == len(lines):
        return False
    atomic_write(path, "".join(kept), stat.S_IMODE(path.stat().st_mode))
    if live:
        if run.which("exportfs"):
            run.run(["exportfs", "-ra"], quiet=True)
        else:
            log.warn("exportfs is not installed: the NFS server (if any) still serves the old exports")
    return True


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _remove_tree(path: str) -> bool:
    if not os.path.lexists(path):
        return False
    run.run(["rm", "-rf", "--one-file-system", "--", path], quiet=True)
    return True


def _remove_lv(vg_lv: str) -> bool:
    from provision.storage.lvm import lv_exists, remove_lv

    vg, lv = vg_lv.split("/", 1)
    if not lv_exists(vg, lv):
        return False
    remove_lv(vg, lv)
    return True


def _remove(paths: Paths, name: str, s: Step) -> bool:
    if s.kind == "auto-link":
        return autostart.disable(paths, name)
    if s.kind == "export":
        return _remove_export(Path(s.path), s.line, lister.is_live(paths))
    if s.kind in ("config", "file", "facts"):
        return _unlink(s.path)
    if s.kind == "lv":
        return _remove_lv(s.path)
    if s.kind == "tree":
        return _remove_tree(s.path)
    raise ProvisionError(f"unknown step '{s.kind}' in a purge plan")


def _do(paths: Paths, p: Plan) -> None:
    """Each step in order; each one whole or not at all (signals wait until it is done)."""
    for n, s in enumerate(p.steps, 1):
        with critical():
            gone = _remove(paths, p.name, s)
            keep(f"the removal of {s.path}")
        if gone:
            log.info(f"removed {s.describe()}")
        else:
            log.debug(f"already gone: {s.describe()}")
        pause_point(f"purge-step-{n}")
        if after_step is not None:
            after_step(n)


def purge(paths: Paths, name: str, dry_run: bool = False) -> Plan:
    """Remove ``name`` and what was made for it (see the module's docstring)."""
    p = plan(paths, name)
    check(paths, p)
    if dry_run:
        return p
    journal = journal_path(paths, name)
    with macs.config_lock(paths):
        p = plan(paths, name)   # again under the lock: no create or purge ran in between
        check(paths, p)
        if not p.resumed:
            atomic_write(journal, p.as_json(), 0o600)
        else:
            log.info(f"taking up the interrupted purge of {name} ({journal})")
        log.release()  # the work begins: show what was logged so far
        pause_point("purge-planned")
        try:
            _do(paths, p)
        except BaseException:
            log.warn(f"the purge of {name} stopped part-way; its plan {journal} is kept: "
                     f"domain remove {name} --purge again finishes it", hold=False)
            raise
        journal.unlink(missing_ok=True)
    return p


def listing(p: Plan, dry_run: bool) -> list[str]:
    verb = "would remove" if dry_run else "removed"
    out = [f"{verb}: {s.describe()}" for s in p.steps]
    out += [f"kept: {k}" for k in p.kept]
    return out
