"""``python -m provision image update``: ``apt-get update && apt-get -y dist-upgrade``
inside an offline guest image or a saved template, as xen-update-image does.

    python -m provision image update /srv/xen/vm1.img
    python -m provision image update vg0/vm2            # an LV guest
    python -m provision image update web                # template 'web' (or --template web)
    python -m provision image update --all-templates

The target's facts file (``<image>.json``) says what it is: a file image, a partition
of a disk image, an LV or a directory tree. Its root is mounted (nothing for a tree), a
``policy-rc.d`` that exits 101 keeps every service from starting, and apt runs in the
root through :mod:`provision.guest.chroot` (a private mount namespace with /proc, /sys,
/dev and the host's resolv.conf). Afterwards policy-rc.d goes, apt's lists and
downloaded packages go if the image had none before, the guest's identity stays as it
was (an empty machine-id in a never-booted image or a template, and no SSH host keys
but the ones it had: an upgraded openssh-server would otherwise make keys every clone
shares), everything is
unmounted and the filesystem is checked.

Refused, with nothing changed: a disk a running domain uses (``xl list``, where xl
runs), one dom0 has mounted, loop-attached or uses as swap, and anything without our
facts file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from provision import inuse, log
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.guest.chroot import POLICY_RC_D, Chroot, install_policy
from provision.run import run
from provision.undo import UndoStack

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
APT_OPTS = ["-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef"]


def register(actions) -> None:
    p = actions.add_parser(
        "update", help="apt-get update && dist-upgrade inside an offline image or a template",
        description="Upgrade the packages of a guest image made by `image` (file, disk image, LV or "
                    "directory) or of saved templates, offline: mounted, chrooted in a private mount "
                    "namespace, no service started. Refused while a running domain or dom0 uses it.")
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="an image, disk image, VG/LV or directory made by `image`, or a template's name")
    p.add_argument("--template", action="append", default=[], metavar="NAME", help="a saved template (repeatable)")
    p.add_argument("--all-templates", action="store_true", help="every saved template")
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help="print the plan and the checks' outcome; change nothing")
    p.set_defaults(func=run_update)


# -- what is updated -------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One thing to update, resolved from its facts file."""

    label: str          # how the user named it ("template 'web'", "/srv/xen/vm1.img")
    kind: str           # "file" | "disk" | "lv" | "dir"
    path: str           # the image file, disk image, /dev/VG/LV or directory
    sidecar: Path
    info: dict
    partition: int | None = None   # a disk image's root partition

    @property
    def fstype(self) -> str | None:
        return self.info.get("fstype") if self.kind != "dir" else None


@dataclass(frozen=True)
class UpdateSettings:
    items: tuple[Item, ...]
    dry_run: bool = False


def _read_facts(sidecar: Path, label: str) -> dict:
    from provision.guest.build import SIDECAR_FORMAT

    try:
        info = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise ProvisionError(f"{label} is not an image made by xen-provision: no facts file {sidecar}",
                             hint="image update works on what `image` made (its facts say where the root "
                                  "filesystem is); upgrade anything else from inside it") from None
    except (OSError, ValueError) as e:
        raise ProvisionError(f"cannot read {sidecar}: {e}") from None
    if not isinstance(info, dict) or not str(info.get("format", "")).startswith(SIDECAR_FORMAT.split("/")[0] + "/"):
        raise ProvisionError(f"{sidecar} is not an image description written by xen-provision")
    return info


def _item(label: str, sidecar: Path, info: dict) -> Item:
    kind = info.get("target")
    disks = info.get("disks") or []
    if kind == "dir":
        return Item(label, kind, sidecar.with_suffix("").as_posix(), sidecar, info)
    if kind == "disk":
        disk = next((d for d in disks if d.get("role") == "disk"), None)
        if disk is None:
            raise ProvisionError(f"{sidecar} names no disk")
        part = (disk.get("partitions") or {}).get("root", 1)
        return Item(label, kind, disk["path"], sidecar, info, partition=int(part))
    if kind in ("file", "lv"):
        root = next((d for d in disks if d.get("role") == "root"), None)
        if root is None:
            raise ProvisionError(f"{sidecar} names no root disk")
        return Item(label, kind, root["path"], sidecar, info)
    raise ProvisionError(f"{sidecar}: unknown target kind '{kind}'")


def resolve(spec: str) -> Item:
    """TARGET as a user gives it: an image, a disk image, a directory, VG/LV or /dev/VG/LV
    (whose facts are in the cache), or a template's name."""
    from provision.guest import templates
    from provision.guest.target import Target

    if spec.endswith(".json"):
        spec = spec[: -len(".json")]
    if "/" not in spec and not os.path.exists(spec) and spec in templates.names():
        return template_item(spec)
    parts = Path(spec).parts
    lv = None
    if parts[:2] == ("/", "dev") and len(parts) == 4:
        lv = "/".join(parts[2:])
    elif not os.path.isabs(spec) and len(parts) == 2 and not os.path.exists(spec):
        lv = spec
    if lv is not None:
        sidecar = Path(Target.lv(lv).sidecar)
        item = _item(spec, sidecar, _read_facts(sidecar, spec))
        if item.kind != "lv":
            raise ProvisionError(f"{sidecar} describes a {item.kind}, not the LV {lv}")
        return item
    path = os.path.abspath(spec).rstrip("/")
    if not os.path.exists(path):
        raise ProvisionError(f"{spec} does not exist", hint="give an image, VG/LV, directory or template name")
    sidecar = Path(path + ".json")
    item = _item(spec, sidecar, _read_facts(sidecar, spec))
    if os.path.realpath(item.path) != os.path.realpath(path):
        raise ProvisionError(f"{sidecar} describes {item.path}, not {path}",
                             hint="give the image the facts file belongs to")
    return item


def template_item(name: str) -> Item:
    from provision.guest import templates

    image, info, _ = templates.load(name)
    sidecar = templates.paths(name)[1]
    if templates.store(info) == "lv":
        return Item(f"template '{name}'", "lv", str(image), sidecar, info)
    return Item(f"template '{name}'", "file", str(image), sidecar, info)


def parse(args) -> UpdateSettings:
    from provision.guest import templates

    for opt in ("debootstrap", "from_template", "file", "disk", "dir", "lv", "save_template"):
        if getattr(args, opt, None):
            raise ProvisionError(f"--{opt.replace('_', '-')} is not an option of image update",
                                 hint="python -m provision image update TARGET [--template NAME] [--all-templates]")
    names = list(args.template)
    if args.all_templates:
        names += [n for n in templates.names() if n not in names]
        if not names and not args.target:
            raise ProvisionError("there are no saved templates", hint="make one with image --save-template NAME")
    if not args.target and not names:
        raise ProvisionError("give a TARGET, --template NAME or --all-templates",
                             hint="e.g. python -m provision image update /srv/xen/vm1.img")
    items = ([resolve(args.target)] if args.target else []) + [template_item(n) for n in names]
    return UpdateSettings(tuple(items), dry_run=args.dry_run)


# -- may it be updated? ----------------------------------------------------------------------------

def refuse_busy(item: Item, running: set[str] | None) -> None:
    """One line for the first user that forbids writing ``item``: dom0 (a mount, swap, a
    loop device) always; a domain config only while that domain runs (every config where
    xl cannot say: ``running`` None)."""
    if item.kind == "dir":
        real = os.path.realpath(item.path)
        for cfg in inuse.domain_configs(quiet=True):
            if cfg.nfs_root and os.path.realpath(cfg.nfs_root[1]) == real and (running is None or cfg.name in running):
                raise ProvisionError(f"{item.label} is the root of domain {cfg.name}, which is running ({cfg.path})",
                                     hint=f"shut it down first: xl shutdown -w {cfg.name}")
        return
    inuse.refuse_busy(item.path, running=running, what=item.label)


# -- the update --------------------------------------------------------------------------------------

def _installed(root: Path) -> dict[str, str]:
    """package -> version of what dpkg has installed in ``root`` (its status file)."""
    out: dict[str, str] = {}
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return out
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            arch = fields.get("Architecture", "")
            name = fields["Package"] if arch in ("", "all") or fields["Package"] not in out else \
                f"{fields['Package']}:{arch}"
            out[name] = fields.get("Version", "")
    return out


def _has_files(d: Path, skip=("lock", "partial", "auxfiles")) -> bool:
    try:
        return any(p.name not in skip for p in d.iterdir())
    except OSError:
        return False


@dataclass
class _State:
    """What the image held before apt ran, to put back what apt should not change."""

    lists: bool
    debs: bool
    machine_id: bytes | None
    dbus_machine_id: bool
    host_keys: set[str]

    @classmethod
    def read(cls, root: Path) -> _State:
        mid = root / "etc/machine-id"
        return cls(lists=_has_files(root / "var/lib/apt/lists"),
                   debs=any((root / "var/cache/apt/archives").glob("*.deb")),
                   machine_id=mid.read_bytes() if mid.is_file() else None,
                   dbus_machine_id=os.path.lexists(root / "var/lib/dbus/machine-id"),
                   host_keys={p.name for p in (root / "etc/ssh").glob("ssh_host_*")})

    def restore(self, root: Path) -> list[str]:
        """Put the guest's identity and apt's state back; says what it removed."""
        done = []
        mid = root / "etc/machine-id"
        if self.machine_id == b"" and mid.is_file() and not mid.is_symlink() and mid.read_bytes() != b"":
            mid.write_bytes(b"")
            done.append("/etc/machine-id (emptied again: each guest makes its own)")
        dbus = root / "var/lib/dbus/machine-id"
        if not self.dbus_machine_id and os.path.lexists(dbus):
            dbus.unlink()
            done.append("/var/lib/dbus/machine-id")
        for key in sorted(p for p in (root / "etc/ssh").glob("ssh_host_*") if p.name not in self.host_keys):
            key.unlink()
            done.append(f"/etc/ssh/{key.name}")
        if not self.lists:
            lists = root / "var/lib/apt/lists"
            for p in lists.iterdir() if lists.is_dir() else ():
                if p.name not in ("lock", "partial", "auxfiles") and (p.is_file() or p.is_symlink()):
                    p.unlink()
            done.append("apt's package lists (the image had none)")
        return done


def _apt(root: Path, argv: list[str]) -> None:
    Chroot(root).run(argv, env=APT_ENV, network=True)


def upgrade_root(root: Path, label: str) -> dict:
    """Run apt in the mounted (or directory) root ``root``; returns what changed."""
    root = Path(root)
    for d in ("proc", "sys", "dev", "usr/sbin"):
        # A symlink would lead our mounts and policy-rc.d out of the root, into dom0's own tree.
        if not (root / d).is_dir() or (root / d).is_symlink():
            raise ProvisionError(f"{label} holds no guest root: /{d} is missing or a symlink")
    state = _State.read(root)
    before = _installed(root)
    restored: list[str] = []
    with UndoStack() as undo:
        # Also after a failed or interrupted upgrade: no identity apt made stays behind.
        undo.cleanup("restore the guest's identity and apt's state", lambda: restored.extend(state.restore(root)))
        undo.cleanup(f"restore {POLICY_RC_D}", install_policy(root))
        with log.step(f"{label}: apt-get update"):
            # An update interrupted during dpkg left packages unconfigured: finish them first.
            _apt(root, ["dpkg", "--configure", "-a"])
            _apt(root, ["apt-get", "update"])
        undo.rollback("say what apt left", lambda: log.warn(
            f"{label}: apt stopped part-way: the packages it changed stay; the next image update "
            "finishes them (dpkg --configure -a)", hold=False))
        with log.step(f"{label}: apt-get -y dist-upgrade"):
            _apt(root, ["apt-get", "-y", *APT_OPTS, "dist-upgrade"])
        if not state.debs:
            _apt(root, ["apt-get", "clean"])
    after = _installed(root)
    changed = {p: (before.get(p), v) for p, v in after.items() if before.get(p) != v}
    removed = sorted(set(before) - set(after))
    for p, (old, new) in sorted(changed.items()):
        log.info(f"  {p} {old or '(new)'} -> {new}")
    for p in removed:
        log.info(f"  {p} {before[p]} removed")
    for what in restored:
        log.debug(f"restored {what}")
    return {"upgraded": sum(1 for old, _ in changed.values() if old), "installed": sum(1 for old, _ in
            changed.values() if not old), "removed": len(removed)}


def _fsck(device: str, fstype: str | None) -> None:
    if fstype not in ("ext2", "ext3", "ext4"):
        return
    proc = run(["e2fsck", "-fn", device], check=False, quiet=True)
    if proc.returncode != 0:
        raise ProvisionError(f"e2fsck finds errors in {device} after the update",
                             hint=f"repair it: e2fsck -f {device}")


def update(item: Item, running: set[str] | None) -> dict:
    """Upgrade one image or template; returns the counts written into its facts."""
    from provision.storage.loop import attach_loop, partition_device
    from provision.storage.mount import mount

    refuse_busy(item, running)
    if item.kind == "dir":
        counts = upgrade_root(Path(item.path), item.label)
    else:
        with UndoStack() as undo:
            device = item.path
            if item.kind in ("file", "disk"):
                dev = attach_loop(item.path, partscan=item.kind == "disk", undo=undo)
                device = partition_device(dev, item.partition) if item.kind == "disk" else dev
            with UndoStack() as mounted:  # unmounted before the check below; detached after it
                mnt = tempfile.mkdtemp(prefix="xen-provision-update.")
                mounted.cleanup(f"remove {mnt}", os.rmdir, mnt)
                # The domains were judged above (only a running one forbids it); dom0 is checked again.
                mount(device, mnt, fstype=item.fstype, undo=mounted, configs=[])
                counts = upgrade_root(Path(mnt), item.label)
            _fsck(device, item.fstype)
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    record = {**item.info, "updated": {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)), **counts}}
    atomic_write(item.sidecar, json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info(f"{item.label}: {counts['upgraded']} upgraded, {counts['installed']} newly installed, "
             f"{counts['removed']} removed")
    return counts


def plan(item: Item) -> list[str]:
    """What :func:`update` does to ``item``, for --dry-run."""
    where = item.path + (f" partition {item.partition}" if item.partition else "")
    lines = [f"update:   {item.label} ({item.kind} {where}; facts {item.sidecar})"]
    if item.kind != "dir":
        lines += [f"mount:    {where} on a temporary directory" + (" (loop device)" if item.kind != "lv" else "")]
    lines += [f"write:    ROOT{POLICY_RC_D} (exit 101: no service starts)",
              "chroot:   unshare --mount --propagation private: /proc, /sys, /dev, the host's resolv.conf"]
    env = " ".join(f"{k}={v}" for k, v in APT_ENV.items())
    lines += [f"chroot:   {env} dpkg --configure -a",
              f"chroot:   {env} apt-get update",
              f"chroot:   {env} {shlex.join(['apt-get', '-y', *APT_OPTS, 'dist-upgrade'])}",
              f"remove:   ROOT{POLICY_RC_D}; apt's lists and downloads if the image had none; "
              "SSH host keys and a machine-id apt made in a never-booted image"]
    if item.kind != "dir":
        lines.append("unmount")
        if item.fstype in ("ext2", "ext3", "ext4"):
            lines.append(f"run:      e2fsck -fn {where}")
    lines.append(f"write:    {item.sidecar} (updated: when, how many packages)")
    return lines


def run_update(args) -> int:
    settings = parse(args)
    running = inuse.running_domains()
    for item in settings.items:
        refuse_busy(item, running)  # all of them, before any is changed
    if settings.dry_run:
        for item in settings.items:
            print("\n".join(plan(item)))
        return 0
    if os.geteuid() != 0:
        raise ProvisionError("image update needs root: it mounts the image and runs apt in a chroot",
                             hint="run it as root (sudo), or see the plan with --dry-run")
    for item in settings.items:
        update(item, running)
    return 0
