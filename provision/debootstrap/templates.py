"""Named templates: a configured image saved once, cloned for each new guest.

The manual's template paragraph: "copy the image file, then modify the image-specific
settings". A template is ``<dir>/NAME.img`` (an ext2/3/4 root filesystem) and
``<dir>/NAME.json`` (its sidecar). A new guest is a reflink or sparse copy of the image,
grown to the size asked for, with the per-guest settings (hostname, addresses, root
access, machine-id, SSH host keys, MAC-pinned udev rules) re-applied by debugfs: no
mount, no loop device.

The directory is ``$XEN_PROVISION_TEMPLATES``, else ``<cache>/templates``
(``~/.cache/xen-provision/templates``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from provision import log, validate
from provision.cache import cache_dir
from provision.debootstrap import ext4edit
from provision.debootstrap.build import Target, sidecar_info, staging_path
from provision.debootstrap.configure import GuestSettings, describe, guest_files
from provision.debootstrap.suites import Release, lookup
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.run import run
from provision.undo import UndoStack


def template_dir(create: bool = True) -> Path:
    env = os.environ.get("XEN_PROVISION_TEMPLATES")
    if env:
        path = Path(env)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path
    if create:
        return cache_dir("templates")
    from provision.debootstrap.basecache import cache_root

    return cache_root(create=False).parent / "templates"


def paths(name: str, create: bool = False) -> tuple[Path, Path]:
    validate.name(name, "template name")
    d = template_dir(create)
    return d / f"{name}.img", d / f"{name}.json"


def names() -> list[str]:
    d = template_dir(create=False)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def load(name: str) -> tuple[Path, dict, Release]:
    image, meta = paths(name)
    if not (image.is_file() and meta.is_file()):
        known = names()
        raise ProvisionError(f"template '{name}' does not exist",
                             hint=("known templates: " + ", ".join(known)) if known else
                             "make one with: image --debootstrap SUITE --file IMG --save-template NAME")
    info = json.loads(meta.read_text())
    return image, info, lookup(info["suite"])


def check_new(name: str) -> None:
    """Refuse a template name that is taken, before an image is built for it."""
    image, meta = paths(name)
    if meta.exists() or image.exists():
        raise ProvisionError(f"template '{name}' already exists",
                             hint=f"remove {meta} and {image}, or choose another name")


def save(name: str, info: dict, *, force: bool = False) -> Path:
    """Save the root image described by sidecar ``info`` as template ``name``."""
    from provision.storage import clone_file

    if info.get("target") != "file":
        raise ProvisionError("only a file image can be saved as a template", hint="use --file IMG")
    if not force:
        check_new(name)
    image, meta = paths(name, create=True)
    root = next(d for d in info["disks"] if d["role"] == "root")
    with UndoStack() as undo:
        clone_file(root["path"], image, force=force)
        undo.rollback(f"remove {image}", image.unlink, True)
        atomic_write(meta, json.dumps({**info, "template": name}, indent=2, sort_keys=True) + "\n")
    log.info(f"saved template '{name}' as {image}")
    return image


def plan(name: str, settings: GuestSettings, target: Target) -> list[str]:
    image, info, release = load(name)
    ops = guest_files(release, settings, ext4edit.reader(image))
    lines = [f"template: {name} ({release}, {image})", f"clone:    {image} -> {target.path}"]
    if target.size and target.size > os.path.getsize(image):
        lines.append(f"run:      resize2fs {target.path}")
    lines += ["debugfs:  " + line for line in describe(ops)]
    if target.swap:
        lines += [f"target:   sparse image {target.swap_path}", f"target:   mkswap {target.swap_path}"]
    lines.append(f"write:    {target.sidecar}")
    return lines


def instantiate(name: str, settings: GuestSettings, target: Target) -> dict:
    """A new guest at ``target`` (a file image) from template ``name``; returns its sidecar."""
    from provision import storage

    if target.kind != "file":
        raise ProvisionError("a template is cloned into a file image", hint="use --file IMG")
    image, info, release = load(name)
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
        ops = guest_files(release, settings, ext4edit.reader(tmp))
        ext4edit.apply(tmp, ops)
        os.replace(tmp, target.path)
        undo.rollback(f"remove {target.path}", Path(target.path).unlink, True)
        if target.swap:
            with storage.building_image(target.swap_path, target.swap, undo=undo) as tmp:
                storage.make_swap(tmp)
        new = sidecar_info({**info.get("base", {}), "template": name, "clone": method},
                           settings, Target(target.kind, target.path, target.size or size, target.swap,
                                            target.fstype), release)
        atomic_write(target.sidecar, json.dumps(new, indent=2, sort_keys=True) + "\n")
        undo.rollback(f"remove {target.sidecar}", Path(target.sidecar).unlink, True)
    return new
