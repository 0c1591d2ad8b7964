"""Named templates: a configured image saved once, cloned for each new guest.

The manual's template paragraph: "copy the image file, then modify the image-specific
settings". A template is ``<dir>/NAME.json`` (its sidecar) and its root filesystem
(ext2/3/4), kept in one of two stores:

- a file, ``<dir>/NAME.img``: a new guest is a reflink or sparse copy of it, grown to
  the size asked for;
- an LV, ``VG/template-NAME`` (``--save-template`` of an ``--lv`` guest, or
  ``--template-vg VG``): a new guest is a copy-on-write snapshot of it (``lvcreate -s``,
  the manual's LVM clone), with ``--snapshot-size`` of room for the guest's changes.

Either way the per-guest settings (hostname, addresses, root access, machine-id, SSH
host keys, MAC-pinned udev rules) are re-applied by debugfs: no mount, no loop device.

The directory is ``$XEN_PROVISION_TEMPLATES``, else ``<cache>/templates``
(``~/.cache/xen-provision/templates``).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from provision import log, validate
from provision.cache import cache_dir
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.guest import ext4edit, firstboot
from provision.guest.build import set_fs_uuid, sidecar_info, staging_path
from provision.guest.configure import GuestSettings, describe, guest_files
from provision.guest.suites import Release, lookup
from provision.guest.target import Target
from provision.run import run
from provision.sizes import MiB, format_size, parse_size
from provision.undo import UndoStack

LV_PREFIX = "template-"  # the LV of template NAME is VG/template-NAME


def template_dir(create: bool = True) -> Path:
    env = os.environ.get("XEN_PROVISION_TEMPLATES")
    if env:
        path = Path(env)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path
    if create:
        return cache_dir("templates")
    from provision.guest.basecache import cache_root

    return cache_root(create=False).parent / "templates"


def paths(name: str, create: bool = False) -> tuple[Path, Path]:
    validate.name(name, "template name")
    d = template_dir(create)
    return d / f"{name}.img", d / f"{name}.json"


def template_lv(name: str) -> str:
    """The LV name of template ``name`` in an LV store."""
    from provision.storage import validate_lv_name

    return validate_lv_name(LV_PREFIX + validate.name(name, "template name"))


def store(info: dict) -> str:
    """Where a template's filesystem is kept: ``"file"`` (NAME.img) or ``"lv"``."""
    return info.get("store", "file")


def names() -> list[str]:
    d = template_dir(create=False)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def where(name: str) -> str:
    """``file /path/NAME.img`` or ``lv VG/template-NAME``, for --list-templates."""
    try:
        image, info, _ = load(name)
    except (ProvisionError, ValueError, KeyError) as e:
        return f"broken ({e})"
    return f"lv {info['lv']}" if store(info) == "lv" else f"file {image}"


def load(name: str) -> tuple[Path, dict, Release]:
    """The template's filesystem (an image file or an LV's device), sidecar and release.
    An LV template's LV is not looked up here (that needs lvm2): see :func:`instantiate`."""
    image, meta = paths(name)
    info = json.loads(meta.read_text()) if meta.is_file() else None
    if info is not None and store(info) == "lv":
        return Path("/dev", info["lv"]), info, lookup(info["suite"])
    if info is None or not image.is_file():
        known = names()
        raise ProvisionError(f"template '{name}' does not exist",
                             hint=("known templates: " + ", ".join(known)) if known else
                             "make one with: image --debootstrap SUITE --file IMG --save-template NAME")
    return image, info, lookup(info["suite"])


def check_new(name: str, vg: str | None = None, size: int | None = None) -> None:
    """Refuse a template name that is taken, before an image is built for it; with
    ``vg`` (an LV store) also a missing VG, a taken LV name and a VG without ``size``
    bytes free."""
    image, meta = paths(name)
    if meta.exists() or image.exists():
        raise ProvisionError(f"template '{name}' already exists",
                             hint=f"remove {meta} and {image}, or choose another name")
    if vg is None:
        return
    from provision.storage import lv_exists, validate_vg_name, vg_free

    lv = template_lv(name)
    free = vg_free(validate_vg_name(vg))
    if lv_exists(vg, lv):
        raise ProvisionError(f"logical volume {vg}/{lv} (template '{name}') already exists",
                             hint=f"choose another template name, or remove it: lvremove {vg}/{lv}")
    if size is not None and size > free:
        raise ProvisionError(f"volume group '{vg}' has no room for template '{name}' ({format_size(size)}): "
                             f"{format_size(free)} free", hint="choose another --template-vg or free some space")


def _root(info: dict) -> str:
    return next(d for d in info["disks"] if d["role"] == "root")["path"]


def _size_of(path: str) -> int:
    """Bytes of an image file or a block device."""
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def save_plan(name: str, root: str, size: int, vg: str | None) -> list[str]:
    """What :func:`save` does, for --dry-run."""
    image, meta = paths(name)
    if vg is None:
        return [f"template: clone {root} -> {image}", f"template: write {meta}"]
    lv = f"{vg}/{template_lv(name)}"
    return [f"template: lvcreate -L {format_size(size)} -n {template_lv(name)} {vg}",
            f"template: {shlex.join(['e2image', '-ra', root, '/dev/' + lv])}",
            f"template: write {meta}"]


def save(name: str, info: dict, *, vg: str | None = None, force: bool = False) -> Path:
    """Save the root image described by sidecar ``info`` as template ``name``: a file
    (the default for a file image) or an LV in ``vg`` (the default for an LV guest: its
    own VG, where snapshots of it can be made). Returns the image or device."""
    if info.get("target") not in ("file", "lv"):
        raise ProvisionError("only a file image or an LV can be saved as a template",
                             hint="use --file IMG or --lv VG/NAME")
    if info.get("target") == "lv" and vg is None:
        vg = _root(info).split("/")[2]
    if vg is not None:
        return _save_lv(name, info, vg)
    from provision.storage import clone_file

    if not force:
        check_new(name)
    image, meta = paths(name, create=True)
    with UndoStack() as undo:
        clone_file(_root(info), image, force=force, undo=undo)
        _drop_host_keys(str(image))
        atomic_write(meta, json.dumps(_record(info, template=name), indent=2, sort_keys=True) + "\n")
    log.info(f"saved template '{name}' as {image}")
    return image


def _save_lv(name: str, info: dict, vg: str) -> Path:
    """Copy the guest's root filesystem into a new LV ``vg/template-NAME``: e2image
    copies only the blocks the filesystem uses."""
    from provision.inuse import refuse
    from provision.storage import create_lv

    root = _root(info)
    size = _size_of(root)
    check_new(name, vg, size)
    refuse(root, writing=False)  # a filesystem dom0 writes would be copied torn
    _, meta = paths(name, create=True)
    lv = template_lv(name)
    with UndoStack() as undo:
        dev = create_lv(vg, lv, size, undo=undo)
        run(["e2image", "-ra", root, dev], quiet=True)
        _drop_host_keys(dev)
        record = _record(info, template=name, store="lv", lv=f"{vg}/{lv}", size=size)
        atomic_write(meta, json.dumps(record, indent=2, sort_keys=True) + "\n")
        undo.rollback(f"remove {meta}", meta.unlink, True, made=f"template '{name}' ({meta})")
    log.info(f"saved template '{name}' as LV {vg}/{lv} ({format_size(size)})")
    return Path(dev)


def _drop_host_keys(image: str) -> None:
    """A template keeps no guest's SSH host keys (private ones least of all): each guest
    made from it gets its own (guest.hostkeys), or makes them on its first boot."""
    from provision.guest.configure import Remove

    keys = [n for n in ext4edit.reader(image).listdir("/etc/ssh") if n.startswith("ssh_host_")]
    if keys:
        ext4edit.apply(image, [Remove(f"/etc/ssh/{n}") for n in keys])


def _record(info: dict, **extra) -> dict:
    """The template's JSON: its guest's, without the host keys it no longer holds."""
    guest = {k: v for k, v in info.get("guest", {}).items() if k != "ssh_host_keys"}
    return {**info, "guest": guest, **extra}


def has_ssh_server(image: str | os.PathLike) -> bool:
    """Whether a template's image has an SSH server (so its guests get host keys made with
    them); False when it cannot be read here."""
    try:
        return ext4edit.reader(str(image)).read("/etc/ssh/sshd_config") is not None
    except (ProvisionError, OSError):
        return False


# -- a new guest from a template -----------------------------------------------------------

def _snapshot_target(name: str, info: dict, target: Target, snapshot_size) -> tuple[str, str, str, int]:
    """Check a new guest from LV template ``name`` without lvm2: (vg, origin, lv, room)."""
    tvg, origin = info["lv"].split("/", 1)
    if target.kind != "lv":
        raise ProvisionError(f"template '{name}' is an LVM template ({info['lv']}): a new guest is a snapshot of it",
                             hint=f"give --lv {tvg}/NAME --snapshot-size SIZE")
    vg, lv = target.path.split("/", 1)
    if vg != tvg:
        raise ProvisionError(f"a snapshot lives in its origin's volume group: template '{name}' is in '{tvg}', "
                             f"not '{vg}'", hint=f"give --lv {tvg}/{lv}")
    if lv == origin:
        raise ProvisionError(f"logical volume {target.path} is template '{name}' itself", hint="choose another name")
    if target.size is not None:
        raise ProvisionError(f"a snapshot of template '{name}' has its size ({format_size(info['size'])}): "
                             "--size does not apply", hint="--snapshot-size sets its room for the guest's changes")
    if snapshot_size is None:
        raise ProvisionError(f"a snapshot of template '{name}' needs --snapshot-size (room for the guest's changes)",
                             hint="e.g. --snapshot-size 512M; watch how full it gets with: storage fill VG NAME")
    if info.get("fstype") != target.fstype:
        raise ProvisionError(f"template '{name}' holds {info.get('fstype')}, not {target.fstype}")
    return vg, origin, lv, parse_size(snapshot_size, "snapshot size", minimum=4 * MiB)


def _check_origin(name: str, vg: str, origin: str) -> None:
    from provision.storage import lv_exists

    if not lv_exists(vg, origin):
        raise ProvisionError(f"template '{name}' is LV {vg}/{origin}, which does not exist",
                             hint=f"restore it, or remove the template: rm {paths(name)[1]}")


def snapshot_commands(name: str, info: dict, target: Target, snapshot_size) -> list[str]:
    """The LVM commands a new guest from LV template ``name`` runs (no lvm2 needed)."""
    from provision.storage.lvm import snapshot_argv

    vg, origin, lv, room = _snapshot_target(name, info, target, snapshot_size)
    lines = [shlex.join(snapshot_argv(vg, origin, lv, room))]
    if target.swap:
        lines += [f"lvcreate -L {format_size(target.swap)} -n {lv}-swap {vg}", f"mkswap /dev/{target.swap_path}"]
    return lines


def plan(name: str, settings: GuestSettings, target: Target, snapshot_size=None) -> list[str]:
    image, info, release = load(name)
    settings = settings.on(target)
    if store(info) == "lv":
        commands = snapshot_commands(name, info, target, snapshot_size)
        vg, origin = info["lv"].split("/", 1)
        _check_origin(name, vg, origin)
        ops = guest_files(release, settings, ext4edit.reader(image))
        return ([f"template: {name} ({release}, LV {info['lv']})", f"run:      {commands[0]}"]
                + ["debugfs:  " + line for line in describe(ops)] + _plan_customise(image, settings)
                + [f"target:   {c}" for c in commands[1:]] + [f"write:    {target.sidecar}"])
    _file_target(name, target, snapshot_size)
    ops = guest_files(release, settings, ext4edit.reader(image))
    lines = [f"template: {name} ({release}, {image})", f"clone:    {image} -> {target.path}"]
    if target.size and target.size > os.path.getsize(image):
        lines.append(f"run:      resize2fs {target.path}")
    lines += ["debugfs:  " + line for line in describe(ops)] + _plan_customise(image, settings)
    if target.swap:
        lines += [f"target:   sparse image {target.swap_path}", f"target:   mkswap {target.swap_path}"]
    lines.append(f"write:    {target.sidecar}")
    return lines


def _file_target(name: str, target: Target, snapshot_size) -> None:
    if target.kind != "file":
        raise ProvisionError(f"template '{name}' is a file template: it is cloned into a file image",
                             hint="use --file IMG (an LVM template, saved with --lv or --template-vg, "
                                  "makes --lv snapshots)")
    if snapshot_size is not None:
        raise ProvisionError(f"--snapshot-size is for LVM templates; '{name}' is a file template",
                             hint="leave --snapshot-size out (a file clone takes --size)")


def _customise(image, release: Release, settings: GuestSettings, target: Target) -> None:
    """The first-boot options that run in the guest: apt for what the template lacks,
    locale-gen, roles (a failure rolls the new guest back)."""
    fb = settings.firstboot
    if fb is not None:
        apt = firstboot.template_packages(fb, ext4edit.reader(image))
        firstboot.customise(image, release, settings, target.path, apt=apt)


def _plan_customise(image, settings: GuestSettings) -> list[str]:
    fb = settings.firstboot
    return firstboot.plan(fb, firstboot.template_packages(fb, ext4edit.reader(image))) if fb else []


def _write_sidecar(target: Target, new: dict, undo: UndoStack) -> None:
    atomic_write(target.sidecar, json.dumps(new, indent=2, sort_keys=True) + "\n")
    undo.rollback(f"remove {target.sidecar}", Path(target.sidecar).unlink, True, made=target.sidecar)


def instantiate(name: str, settings: GuestSettings, target: Target, *, snapshot_size=None) -> dict:
    """A new guest at ``target`` from template ``name``: a file clone of a file template,
    an LVM snapshot (``snapshot_size`` of room for changes) of an LV one. Returns its sidecar."""
    from provision import storage

    image, info, release = load(name)
    settings = settings.on(target)
    if store(info) == "lv":
        return _snapshot(name, info, release, settings, target, snapshot_size)
    _file_target(name, target, snapshot_size)
    if info.get("fstype") != target.fstype:
        raise ProvisionError(f"template '{name}' holds {info.get('fstype')}, not {target.fstype}")
    target.check_free()
    size = os.path.getsize(image)
    if target.size and target.size < size:
        raise ProvisionError(f"template '{name}' is {size >> 20} MiB: the new image cannot be smaller",
                             hint=f"use --size {size >> 20}M or more (or leave --size out)")
    with UndoStack() as undo:
        # Configured under a temporary name: nothing half-configured is ever at target.path.
        tmp = staging_path(target.path)
        undo.rollback(f"remove {tmp}", tmp.unlink, True)
        method = storage.clone_file(image, tmp)
        if target.size and target.size > size:
            os.truncate(tmp, target.size)
            run(["resize2fs", "-f", tmp], quiet=True)
        set_fs_uuid(tmp, settings.root_uuid)
        ops = guest_files(release, settings, ext4edit.reader(tmp))
        ext4edit.apply(tmp, ops)
        _customise(tmp, release, settings, target)
        os.replace(tmp, target.path)
        undo.rollback(f"remove {target.path}", Path(target.path).unlink, True, made=target.path)
        if target.swap:
            with storage.building_image(target.swap_path, target.swap, undo=undo) as tmp:
                storage.make_swap(tmp, uuid=settings.swap_uuid)
        new = sidecar_info({**info.get("base", {}), "template": name, "clone": method},
                           settings, Target(target.kind, target.path, target.size or size, target.swap,
                                            target.fstype), release)
        _write_sidecar(target, new, undo)
    return new


def _snapshot(name: str, info: dict, release: Release, settings: GuestSettings, target: Target,
              snapshot_size) -> dict:
    """The manual's LVM clone: ``lvcreate -s`` of the template's LV, then the per-guest
    settings written into the snapshot with debugfs."""
    from provision import storage

    vg, origin, lv, room = _snapshot_target(name, info, target, snapshot_size)
    _check_origin(name, vg, origin)
    target.check_free(extra=room)
    with UndoStack() as undo:
        dev = storage.snapshot_lv(vg, origin, lv, room, undo=undo)
        set_fs_uuid(dev, settings.root_uuid)
        ext4edit.apply(dev, guest_files(release, settings, ext4edit.reader(dev)))
        _customise(dev, release, settings, target)
        if target.swap:
            storage.make_swap(storage.create_lv(vg, f"{lv}-swap", target.swap, undo=undo), uuid=settings.swap_uuid)
        new = sidecar_info({**info.get("base", {}), "template": name, "clone": "lvm snapshot",
                            "snapshot_room": room},
                           settings, Target("lv", target.path, info["size"], target.swap, target.fstype), release)
        _write_sidecar(target, new, undo)
    log.info(f"{target.path}: snapshot of template '{name}' ({info['lv']}), {format_size(room)} for changes")
    return new
