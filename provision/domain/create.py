"""``domain create``: settings from a template, an image's facts and the command line,
checked, then written atomically as ROOT/etc/xen/NAME.cfg.

Precedence, as with ``xm create``: command-line ``key=value`` beats options, which beat
the image's facts, which beat the file. A ``key=value`` whose key the template uses as a
variable (``{{ vmid }}``) feeds the template instead: the modern form of the manual's
``xm create myvmconf vmid=1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta

from provision import log, run, validate
from provision.domain import autostart, boot, macs, nfs, render, safety, vifs, xlcfg, xmconvert
from provision.domain.model import XL_KEYS, XM_ONLY_KEYS, Domain, closest
from provision.domain.paths import Paths
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.undo import UndoStack, critical, keep


def parse_assignments(items: list[str]) -> dict[str, object]:
    """``key=value`` words; values in xl syntax (64, "text", ['a', 'b']) or bare text."""
    out: dict[str, object] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ProvisionError(f"'{item}' is not key=value", hint="e.g. vmid=1 or memory=256")
        if not xlcfg._IDENT.fullmatch(key):
            raise ProvisionError(f"'{key}' is not a valid key or variable name", hint="use lower case letters, digits and '_'")
        try:
            out[key] = xlcfg.parse(f"{key} = {value}", "<command line>")[key]
        except ProvisionError:
            out[key] = value  # bare words: name=web1, extra=console=hvc0
    return out


def render_template(path: Path, variables: dict[str, object]) -> tuple[str, set[str]]:
    """The file's text with ``{{ var }}`` filled in; and which variables it uses."""
    text = xlcfg.read_text(path)
    if "{{" not in text and "{%" not in text:
        return text, set()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        used = jinja2.meta.find_undeclared_variables(env.parse(text))
    except jinja2.TemplateSyntaxError as e:
        raise ProvisionError(f"{path}:{e.lineno}: template error: {e.message}") from None
    missing = sorted(used - set(variables))
    try:
        return env.from_string(text).render(**variables), used
    except jinja2.UndefinedError as e:
        example = " ".join(f"{v}=VALUE" for v in missing) or "NAME=VALUE"
        raise ProvisionError(f"{path}: template variable missing: {e.message}",
                             hint=f"pass it on the command line: domain create -f {path} {example}") from None
    except (jinja2.TemplateError, ValueError, TypeError) as e:
        raise ProvisionError(f"{path}: template error: {e}") from None


@dataclass
class ImageFacts:
    """What ``image --debootstrap`` records beside an image in IMAGE.json."""

    disks: list[str]
    root: str | None
    extra: str | None
    kernel: str | None = None
    ramdisk: str | None = None
    name: str | None = None
    memory: int | None = None
    facts: dict = field(default_factory=dict)


def _lv_sidecar(image: Path) -> Path | None:
    """Where ``image --lv VG/LV`` keeps the facts of /dev/VG/LV (or VG/LV): in the cache,
    since a block device has no "beside"."""
    parts = image.parts[2:] if image.parts[:2] == ("/", "dev") else image.parts
    if len(parts) != 2 or (not image.is_absolute() and image.exists()):
        return None
    from provision.guest.build import Target  # the owner of the sidecar's location

    try:
        return Path(Target.lv("/".join(parts)).sidecar)
    except ProvisionError:
        return None  # not a valid VG/LV name: just a path


def sidecar_of(image: Path) -> Path:
    if image.suffix == ".json":
        return image
    beside = image.with_name(image.name + ".json")
    lv = None if beside.exists() else _lv_sidecar(image)
    return lv if lv and lv.exists() else beside


def _as_seen_in(root: Path | None, path: Path) -> Path:
    """A host path under ``root`` (an image made into an offline root) as that root sees it."""
    if root is None or root.resolve() == Path("/"):
        return path
    real = root.resolve()
    try:
        return Path("/") / path.resolve().relative_to(real)
    except ValueError:
        return path


def read_image_facts(image: Path, root: Path | None = None) -> ImageFacts:
    """The sidecar ``image --debootstrap`` writes (format xen-provision-image/1):

    {"name": "vm1", "root": "/dev/xvda1", "console": "hvc0", "kernel_args": ["vsyscall=emulate"],
     "disks": [{"role": "root"|"swap"|"disk", "path": ..., "vdev": "xvda1", "format": "raw"}], ...}
    """
    sidecar = sidecar_of(image)
    try:
        facts = json.loads(sidecar.read_text())
    except FileNotFoundError:
        lv = _lv_sidecar(image)
        where = f"{sidecar} (nor {lv})" if lv and lv != sidecar else str(sidecar)
        raise ProvisionError(f"no image facts at {where}",
                             hint="make the image with: python -m provision image --debootstrap SUITE") from None
    except json.JSONDecodeError as e:
        raise ProvisionError(f"{sidecar} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(facts, dict) or not str(facts.get("format", "xen-provision-image/1")).startswith("xen-provision-image/"):
        raise ProvisionError(f"{sidecar} is not an image description written by xen-provision")
    base = sidecar.parent
    image_path = image if image.suffix != ".json" else image.with_suffix("")
    root_device = facts.get("root") or facts.get("root_device") or "/dev/xvda1"
    disks = []
    tree = facts.get("target") == "dir"
    if tree:
        # A directory tree is no disk: it boots over NFS (--nfs-server/--nfs-root). Its
        # cloud-init seed (image --cloud-init) is one, read-only.
        declared = [d for d in facts.get("disks") or [] if d.get("role") == "seed"]
    else:
        declared = facts.get("disks") or [{"path": str(image_path), "vdev": root_device.removeprefix("/dev/")}]
    for d in declared:
        path = Path(d.get("path") or d.get("target") or image_path)
        if not path.is_absolute():
            path = (base / path).resolve()
        path = _as_seen_in(root, path)
        vdev = d.get("vdev") or root_device.removeprefix("/dev/")
        access = "ro" if d.get("readonly") else "rw"
        disks.append(f"format={d.get('format') or 'raw'}, vdev={vdev}, access={access}, target={path}")
    args = facts.get("kernel_args") or []
    if isinstance(args, str):
        args = args.split()
    if facts.get("console"):
        args = [f"console={facts['console']}", *args]
    if facts.get("extra"):
        args.append(str(facts["extra"]))
    return ImageFacts(
        disks=disks,
        root=f"{root_device} ro" if disks and not tree else None,
        extra=" ".join(args) or None,
        kernel=facts.get("kernel"),
        ramdisk=facts.get("ramdisk"),
        name=facts.get("name") or (facts.get("hostname") or "").split(".")[0] or None,
        facts=facts,
    )


@dataclass(frozen=True)
class Request:
    """``domain create``'s arguments, checked and parsed at the edge (domain/cli.py)."""

    file: Path | None = None
    image: Path | None = None
    bridge: str | None = None        # the vifs' bridge
    ip: str | None = None            # the guest's address (routed vifs, NFS root)
    assignments: list[str] = field(default_factory=list)
    options: dict[str, object] = field(default_factory=dict)  # xl keys from --name etc.
    nfs: nfs.NfsRoot | None = None
    bootloader: str | None = None    # "pvgrub" or "pygrub": the guest's own kernel
    autostart: bool = False
    exports: bool = False
    mac_prefix: str = macs.XEN_PREFIX
    check_kernel: bool = True
    dry_run: bool = False
    force: bool = False


@dataclass
class Settings:
    values: dict                     # the merged xl settings
    lines: dict                      # their line numbers in the file
    source: str                      # a description of where they came from
    type_by: str | None = None       # who asked for ``type`` (None: it is ours to choose)
    kernel_by: str | None = None     # who gave ``kernel``, other than the image's facts
    type_reason: str | None = None   # why the type is what it is (see boot.choose_type)
    own_kernel: dict | None = None   # the image's own kernel (image --guest-kernel): package, pvh


def _given_by(key: str, req: Request, cli: dict, file_values: dict) -> str | None:
    """Which of the sources that beat the image's facts set ``key``, as a user names it."""
    if key in cli:
        return f"{key}= on the command line"
    if key in req.options:
        return f"--{key}"
    if key in file_values or (key == "type" and file_values.get("builder") == "hvm"):
        return str(req.file)
    return None


def settings(req: Request, root: Path | None = None) -> Settings:
    """The merged xl settings, their line numbers, a description of the source, and who
    set the type and the kernel."""
    cli = parse_assignments(req.assignments)
    values: dict = {}
    lines: dict = {}
    source = "<command line>"
    if req.file:
        text, used = render_template(req.file, cli)
        for var in used:
            cli.pop(var, None)  # consumed by the template
        source = str(req.file)
        values, lines, was_xm = xmconvert.read_any(req.file, text)
        if was_xm:
            # As with xm create, the command line's settings are xm settings here (ip=,
            # nics=, disk=['phy:...']): convert the file with them; what they changed is
            # applied last below, so the command line still wins over the options.
            xm_cli = {k: v for k, v in cli.items() if k in XL_KEYS or k in XM_ONLY_KEYS}
            file_only = xmconvert.converted(values, source, show=not xm_cli)
            if xm_cli:
                merged = xmconvert.converted({**values, **xm_cli}, source)
                cli = {k: v for k, v in cli.items() if k not in xm_cli}
                cli.update({k: v for k, v in merged.items() if file_only.get(k) != v})
            values = file_only
        for key in cli:
            if key not in XL_KEYS and key not in XM_ONLY_KEYS:
                guess = closest(key, used | XL_KEYS)
                raise ProvisionError(
                    f"'{key}' is neither a variable of {req.file} nor an xl key"
                    + (f" (did you mean '{guess}'?)" if guess else ""),
                    hint=f"variables of this template: {', '.join(sorted(used)) or 'none'}")
    file_values = dict(values)
    if req.image:
        facts = read_image_facts(req.image, root)
        if facts.facts.get("target") == "dir" and not req.nfs:
            raise ProvisionError(f"{req.image} is a directory tree, not a disk image",
                                 hint=f"boot it over NFS: add --nfs-server ADDRESS --nfs-root {req.image}")
        values.update({k: v for k, v in (("disk", facts.disks), ("root", facts.root),
                                         ("kernel", facts.kernel), ("ramdisk", facts.ramdisk))
                       if v})
        if facts.extra:
            values["extra"] = " ".join(filter(None, [facts.extra, values.get("extra")]))
        if facts.name and "name" not in values:
            values["name"] = facts.name
        source = f"{source} + {req.image}" if req.file else str(req.image)
    own_kernel = facts.facts.get("guest_kernel") if req.image else None
    values.update(req.options)
    if req.nfs:
        values.update(req.nfs.settings(values.get("extra")))
        values.setdefault("disk", [])
    values.update(cli)
    return Settings(values, lines, source, type_by=_given_by("type", req, cli, file_values),
                    kernel_by=_given_by("kernel", req, cli, file_values),
                    own_kernel=own_kernel if isinstance(own_kernel, dict) else None)


def _image_address(req: Request, root: Path) -> str | None:
    """The static address ``image --ip`` gave the guest, from the image's facts."""
    if not req.image:
        return None
    network = (read_image_facts(req.image, root).facts.get("guest") or {}).get("network") or {}
    return network.get("address")


def _boot(req: Request, s: Settings, paths: Paths) -> None:
    """Choose the type (and pvgrub2's binary) into ``s.values``; refuse a kernel that
    cannot boot that way."""
    values = s.values
    bootloader = req.bootloader
    if bootloader is None and s.own_kernel and not s.kernel_by and not values.get("bootloader"):
        bootloader = "pvgrub"   # an image with its own kernel boots it, through pvgrub2
    if bootloader and s.kernel_by:
        raise ProvisionError(f"--bootloader {bootloader} boots the guest's own kernel; {s.kernel_by} gives another",
                             hint=f"drop the kernel, or drop --bootloader {bootloader} to boot that kernel directly")
    if bootloader:
        values.pop("kernel", None)  # an image's facts name dom0's kernel: not this guest's
        values.pop("ramdisk", None)  # the guest's GRUB loads the guest's initrd
    if bootloader == "pygrub":
        values["bootloader"] = "pygrub"
    asked = values.get("type") if s.type_by else None
    if asked is None and values.get("builder") == "hvm":
        asked = "hvm"
    kernel = values.get("kernel") if bootloader is None else None
    kernel = kernel if isinstance(kernel, str) and kernel else None
    config = boot.kernel_config(paths, kernel) if kernel else None
    choice = boot.choose_type(asked if isinstance(asked, str) else None, s.type_by or "", kernel,
                              bootloader or values.get("bootloader"), config,
                              own=s.own_kernel if bootloader == "pvgrub" else None)
    values["type"] = choice.type
    if bootloader == "pvgrub":
        values["kernel"] = boot.pvgrub_kernel(paths, choice.type, check=req.check_kernel)
    elif kernel and req.check_kernel and not boot.is_pvgrub(kernel):
        boot.check_kernel(kernel, choice.type, config, nfs_root=req.nfs is not None,
                          dhcp=req.nfs is not None and not req.nfs.ip)
    s.type_reason = choice.reason


def build(req: Request, paths: Paths) -> Domain:
    s = settings(req, paths.root)
    _boot(req, s, paths)
    dom = Domain.from_config(s.values, s.source, s.lines)
    dom.type_reason = s.type_reason
    if req.check_kernel:
        for what in ("kernel", "ramdisk"):
            path = getattr(dom, what)
            if path and not paths.inside(path).is_file():
                raise ProvisionError(f"{what} file {paths.inside(path)} does not exist",
                                     hint="install the guest kernel first (doit install), or fix the path")
    if dom.bootloader == "pygrub":
        boot.warn_pygrub()
    # A guest made by `image` was configured with a network: give it its NIC. An NFS
    # root needs one to boot at all.
    ip = req.ip or (req.nfs.ip if req.nfs else None) or _image_address(req, paths.root)
    vifs.complete(dom, paths.root, bridge=req.bridge, ip=ip,
                  want_vif=bool(req.nfs or req.image and read_image_facts(req.image, paths.root).disks))
    return dom


def _nfs_address(req: Request, paths: Paths) -> Request:
    """An NFS root without --ip takes the static address ``image --ip`` gave its tree."""
    if req.nfs and not req.nfs.ip and (address := _image_address(req, paths.root)):
        return dataclasses.replace(req, nfs=dataclasses.replace(req.nfs, ip=address))
    return req


def create(req: Request, paths: Paths) -> tuple[Domain, Path | None, str]:
    """Check, fill in MACs and write. Returns the domain, its path (None on dry run), the text."""
    prefix = macs.parse_prefix(req.mac_prefix)  # refused before anything is made
    req = _nfs_address(req, paths)
    dom = build(req, paths)
    target = paths.config(dom.name)
    live = paths.root.resolve() == Path("/")
    if not live:
        log.debug("offline root: the dom0 mount and swap checks apply to the live host only")
    exporting = req.exports and req.nfs is not None
    if exporting:
        nfs.check_export(paths, req.nfs)
        if live and not req.dry_run:
            run.require("exportfs")  # before anything is written

    def check(quiet: bool):
        if target.exists() and not req.force:
            raise ProvisionError(f"{target} already exists", hint="use another name, or --force to replace it")
        others = safety.scan(paths, exclude=target if req.force else None, quiet=quiet)
        safety.check(dom, others, dom0=live)
        return others

    # Once before taking the lock, so that refused input creates nothing (not even the
    # config directory or its lock file); again under the lock, against concurrent runs.
    check(quiet=False)
    lock = contextlib.nullcontext() if req.dry_run else macs.config_lock(paths)
    with lock, UndoStack() as undo:
        others = check(quiet=True)
        missing = [v for v in dom.vifs if not v.mac]
        if missing:
            used = {m for o in others for m in o.macs} | set(dom.macs())
            for vif, mac in zip(missing, macs.generate(paths, used, prefix, len(missing)), strict=True):
                vif.settings["mac"] = mac
        shown = Path("/") / target.relative_to(paths.root) if target.is_relative_to(paths.root) else target
        text = render.domain_config(dom, str(shown))  # the path as the host will see it
        if req.dry_run:
            return dom, None, text
        existed = target.exists()
        atomic_write(target, text, 0o644)
        if not existed:
            undo.rollback(f"remove {target}", os.unlink, target, made=str(target))
        log.info(f"wrote {target}")
        if exporting:
            before = paths.exports.read_text() if paths.exports.exists() else None
            if nfs.add_export(paths, req.nfs.export_line()):
                undo.rollback(f"restore {paths.exports}", _restore, paths.exports, before,
                              made=f"the export line in {paths.exports}")
            nfs.reload_exports(paths, live)
        if req.autostart:
            had = autostart.link_path(paths, dom.name).is_symlink()
            with critical():  # made and registered as one step: it must never dangle
                link = autostart.enable(paths, dom.name)
                if not had:
                    undo.rollback(f"remove {link}", link.unlink, True, made=str(link))
            log.info(f"{dom.name} starts at boot: {link}")
    return dom, target, text


def _restore(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, text, 0o644)


def remove(paths: Paths, name: str) -> Path:
    target = paths.config(validate.name(name, "domain name"))
    if not target.exists():
        raise ProvisionError(f"no domain config {target}")
    with macs.config_lock(paths), critical():  # both go, or neither
        autostart.disable(paths, name)  # the link goes first: it must never dangle
        target.unlink()
        keep(f"the removal of {target}")
    return target
