"""``python -m provision image``: a configured Xen guest root from debootstrap or a template.

    python -m provision image --debootstrap sarge --file /srv/xen/vm1.img --swap 256M
    python -m provision image --debootstrap bookworm --file vm1.img --hostname vm1 \\
        --ip 192.0.2.10/24 --gateway 192.0.2.1 --ssh-key ~/.ssh/id_ed25519.pub --save-template web
    python -m provision image --from-template web --file vm2.img --hostname vm2 --ip 192.0.2.11/24
    python -m provision image --debootstrap jammy --dir /srv/roots/jammy --dry-run
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from provision import log, validate
from provision.errors import ProvisionError
from provision.undo import UndoStack

if TYPE_CHECKING:
    from provision.guest.bootstrap import BaseSpec
    from provision.guest.cloudinit import Seed
    from provision.guest.configure import GuestSettings
    from provision.guest.target import Target


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "image",
        help="make a Xen guest root filesystem (debootstrap, cache, templates)",
        description="Bootstrap any Debian or Ubuntu suite (or clone a template) into a directory, "
                    "a sparse image, a partition of a disk image or an LVM LV, configured for Xen.",
    )
    src = p.add_argument_group("source (one of)")
    src.add_argument("--debootstrap", metavar="SUITE", help="Debian or Ubuntu suite: sarge, bookworm, jammy...")
    src.add_argument("--from-template", metavar="NAME", help="clone a saved template instead of bootstrapping")
    src.add_argument("--list-suites", action="store_true", help="list the known suites and exit")
    src.add_argument("--list-templates", action="store_true", help="list the saved templates and exit")

    tgt = p.add_argument_group("target (one of)")
    tgt.add_argument("--dir", metavar="DIR", help="a directory tree")
    tgt.add_argument("--file", metavar="IMG", help="a file image holding the root filesystem (sparse by default)")
    tgt.add_argument("--disk", metavar="IMG", help="a partitioned disk image: root in partition 1, swap in 2")
    tgt.add_argument("--lv", metavar="VG/LV", help="an LVM logical volume (created)")
    tgt.add_argument("--size", default=None, help="root size (default 2G; from a template: its size)")
    tgt.add_argument("--swap", metavar="SIZE", help="also make swap: an image or LV beside it, or partition 2")
    tgt.add_argument("--fstype", choices=("ext4", "ext3", "ext2"),
                     help="default ext4; ext3 for sarge-era suites, whose fsck predates ext4")
    tgt.add_argument("--preallocate", action="store_true", help="reserve every block instead of a sparse image")

    b = p.add_argument_group("bootstrap")
    b.add_argument("--backend", default="auto", choices=("auto", "mmdebstrap", "debootstrap"),
                   help="auto: mmdebstrap when installed and able, else debootstrap")
    b.add_argument("--variant", default="minbase", choices=("minbase", "buildd", "default"))
    b.add_argument("--arch", help="architecture (default: the host's; i386 for sarge and older)")
    b.add_argument("--include", action="append", default=[], metavar="PKGS", help="extra packages (comma list)")
    b.add_argument("--exclude", action="append", default=[], metavar="PKGS", help="packages to leave out (debootstrap)")
    b.add_argument("--mirror", help="mirror URL (default: the host's apt mirror; the archive for archived suites)")
    b.add_argument("--proxy", metavar="URL", help="HTTP proxy for the bootstrap, e.g. http://127.0.0.1:3142")
    b.add_argument("--keyring", metavar="FILE", help="keyring to check the archive's signatures with")
    b.add_argument("--no-check-gpg", action="store_true", help="do NOT check signatures (loudly warned)")
    b.add_argument("--no-boot-packages", action="store_true",
                   help="do not add the init and network packages a minimal variant lacks")
    b.add_argument("--refresh", action="store_true", help="bootstrap again even when the base is cached")
    b.add_argument("--offline", action="store_true",
                   help="never bootstrap: the base must be in the cache (a miss is an error, not a download)")

    g = p.add_argument_group("guest")
    g.add_argument("--hostname", help="default: the target's name")
    g.add_argument("--ip", metavar="ADDR[/PREFIX]", help="static address (default: DHCP)")
    g.add_argument("--netmask", help="netmask, when --ip has no /PREFIX")
    g.add_argument("--gateway", help="default gateway (static only)")
    g.add_argument("--dns", action="append", default=[], metavar="IP", help="name server (repeatable; default: the host's)")
    g.add_argument("--search", metavar="DOMAIN", help="resolver search domain")
    g.add_argument("--devices", default="xvd", choices=("xvd", "sd"), help="fstab names: xvda1/xvda2 or the manual's sda1/sda2")
    g.add_argument("--fstab-by", default="device", choices=("device", "uuid"),
                   help="name the root and swap in fstab by device (default) or by filesystem UUID: "
                        "for a disk that is not a domain's, such as a host's own")
    g.add_argument("--root-password-file", metavar="FILE", help="file holding root's crypt hash (mkpasswd -m yescrypt)")
    g.add_argument("--ssh-key", metavar="FILE", help="public key(s) for root (adds openssh-server)")
    g.add_argument("--guest-kernel", action="store_true",
                   help="install the distribution's kernel (linux-image-amd64, Ubuntu's linux-image-virtual) "
                        "and a /boot/grub/grub.cfg for pvgrub2 (domain create --bootloader pvgrub)")

    f = p.add_argument_group("first boot: access and customisation")
    f.add_argument("--user", metavar="NAME", help="a user with password-less sudo and the --ssh-key keys (adds sudo)")
    f.add_argument("--password-file", metavar="FILE",
                   help="file holding --user's crypt hash (mkpasswd -m yescrypt); default: keys only")
    f.add_argument("--genpass", action="store_true",
                   help="a random root password, printed once and stored only as a hash")
    f.add_argument("--copy-hosts", action="store_true", help="add dom0's /etc/hosts entries (not localhost's)")
    f.add_argument("--timezone", metavar="ZONE", help="e.g. Europe/Paris (adds tzdata)")
    f.add_argument("--locale", metavar="LOCALE", help="e.g. en_GB.UTF-8: generated and made the default (adds locales)")
    f.add_argument("--packages", metavar="FILE", help="more packages, one per line (# comments)")
    f.add_argument("--role", action="append", default=[], metavar="SCRIPT",
                   help="run SCRIPT (a path, or a shipped role: sudo-user, unattended-upgrades, serial-console) "
                        "in the image's chroot after configuring it (repeatable; see README for its environment)")
    f.add_argument("--first-boot", metavar="SCRIPT",
                   help="run SCRIPT once at the guest's first boot (a one-shot unit that then removes itself)")

    t = p.add_argument_group("templates")
    t.add_argument("--save-template", metavar="NAME",
                   help="also save the new image as template NAME: a file, or for an --lv guest an LV "
                        "VG/template-NAME in its VG")
    t.add_argument("--template-vg", metavar="VG",
                   help="with --save-template: keep the template as LV VG/template-NAME (guests made from "
                        "it with --lv are LVM snapshots)")
    t.add_argument("--snapshot-size", metavar="SIZE",
                   help="with --from-template of an LV template: the snapshot's room for the guest's changes")
    c = p.add_argument_group("cloud-init")
    c.add_argument("--cloud-init", metavar="USER_DATA",
                   help="also write a NoCloud seed IMAGE.cidata.iso (user-data, meta-data, network-config) "
                        "that domain create --from-image attaches read-only")
    c.add_argument("--network-config", metavar="FILE", help="with --cloud-init: the seed's network-config")
    p.add_argument("--dry-run", action="store_true", help="print the plan (commands and files); change nothing")
    p.set_defaults(func=run_image)
    actions = p.add_subparsers(dest="image_action", metavar="ACTION", required=False)
    from provision.guest import cloudinit, resize, update

    resize.register(actions)
    update.register(actions)
    cloudinit.register(actions)


@dataclass(frozen=True)
class ImageSettings:
    """The image command's arguments, parsed and checked once, at the edge (as mkosi's
    Config): sizes in bytes, the bootstrap spec resolved, the target and the guest's
    settings made. The pipeline below trusts it and parses nothing again."""

    target: Target
    guest: GuestSettings
    spec: BaseSpec | None = None         # --debootstrap: the base to build from
    template: str | None = None          # --from-template: the template to clone
    save_template: str | None = None
    template_vg: str | None = None       # the VG of an LV template to save; None: a file template
    snapshot_size: int | None = None     # bytes of room for a snapshot's changes
    refresh: bool = False
    offline: bool = False
    dry_run: bool = False
    seed: Seed | None = None             # --cloud-init: the NoCloud seed written beside the image

    @property
    def seed_path(self) -> str:
        from provision.guest.cloudinit import seed_path

        return seed_path(self.target.sidecar)

    @property
    def reserve(self) -> int:
        """Room the target's VG needs besides the guest: a template saved in the same VG."""
        t = self.target
        return t.size if self.template_vg and t.kind == "lv" and t.path.startswith(self.template_vg + "/") else 0


def parse(args) -> ImageSettings:
    """The one place the image command's arguments are read."""
    from provision.sizes import MiB, parse_size

    if bool(args.debootstrap) == bool(args.from_template):
        raise ProvisionError("give --debootstrap SUITE or --from-template NAME",
                             hint="e.g. python -m provision image --debootstrap bookworm --file vm1.img")
    if args.template_vg and not args.save_template:
        raise ProvisionError("--template-vg goes with --save-template")
    common = {"refresh": args.refresh, "offline": args.offline, "dry_run": args.dry_run}
    if args.from_template:
        from provision.guest import templates

        if args.save_template:
            raise ProvisionError("--save-template goes with --debootstrap", hint="the template already exists")
        if args.guest_kernel:
            raise ProvisionError("--guest-kernel goes with --debootstrap: a template's packages are fixed",
                                 hint="save a template made with --guest-kernel")
        if args.offline or args.refresh:
            raise ProvisionError(f"--{'offline' if args.offline else 'refresh'} is about the bootstrapped base; "
                                 "a template needs none")
        template_image, info, release = templates.load(args.from_template)
        # No --size: a clone keeps the template's size.
        fstype = args.fstype or info.get("fstype") or ("ext3" if release.old_glibc else "ext4")
        target = _target(args, fstype, args.size)
        base = info.get("base", {})
        guest = _guest(args, target, release, base.get("mirror") or "", base.get("components") or ["main"],
                       _firstboot(args, release), ssh_server=templates.has_ssh_server(template_image))
        room = parse_size(args.snapshot_size, "snapshot size", minimum=4 * MiB) if args.snapshot_size else None
        return ImageSettings(target, guest, template=args.from_template, snapshot_size=room,
                             seed=_seed(args, target, guest), **common)
    if args.snapshot_size:
        raise ProvisionError("--snapshot-size goes with --from-template (an LVM template)",
                             hint="a new LV of its own takes --size")
    if args.refresh and args.offline:
        raise ProvisionError("--refresh bootstraps again, which --offline forbids", hint="give one of them")
    from provision.guest import suites
    from provision.guest.bootstrap import resolve

    firstboot = _firstboot(args, release=suites.lookup(args.debootstrap))
    include = list(args.include) + list(firstboot[0].includes() if firstboot[0] else ())
    if args.ssh_key:
        include.append("openssh-server")  # root's key is of no use without an SSH server
    kernel = _guest_kernel(args)
    if kernel:
        include.append(kernel.package)
    spec = resolve(args.debootstrap, arch=args.arch, mirror=args.mirror, variant=args.variant,
                   include=include, exclude=args.exclude, backend=args.backend, keyring=args.keyring,
                   check_gpg=not args.no_check_gpg, proxy=args.proxy, boot_packages=not args.no_boot_packages)
    fstype = args.fstype or ("ext3" if spec.release.old_glibc else "ext4")
    target = _target(args, fstype, args.size if args.size is not None else "2G")
    guest = _guest(args, target, spec.release, spec.mirror, spec.components, firstboot,
                   ssh_server="openssh-server" in spec.include)
    if kernel:
        guest = replace(guest, guest_kernel=kernel)
    return ImageSettings(target, guest, spec=spec, save_template=args.save_template,
                         template_vg=_template_vg(args, target), seed=_seed(args, target, guest), **common)


def _seed(args, target, guest) -> Seed | None:
    """--cloud-init's seed, its files checked before anything is built."""
    if not args.cloud_init:
        if args.network_config:
            raise ProvisionError("--network-config goes with --cloud-init USER_DATA")
        return None
    from provision.guest import cloudinit
    from provision.run import require

    seed = cloudinit.read(args.cloud_init, guest.hostname, args.network_config)
    cloudinit.check_new(cloudinit.seed_path(target.sidecar), make_parent=target.kind == "lv")
    if not args.dry_run:
        require("xorriso")
    return seed


def _guest_kernel(args):
    """The kernel --guest-kernel installs (None without it); refused for a suite whose
    kernel cannot run on Xen, and for a target pvgrub2 cannot boot from."""
    if not args.guest_kernel:
        return None
    from provision.guest import suites
    from provision.guest.bootstrap import arch_for

    if args.dir:
        raise ProvisionError("--guest-kernel makes a disk that pvgrub2 boots from; a --dir tree has none",
                             hint="use --file, --disk or --lv (an NFS-root tree boots our xenU kernel)")
    release = suites.lookup(args.debootstrap)
    return suites.guest_kernel(release, arch_for(release, args.arch))


def _target(args, fstype: str, size) -> Target:
    from provision.guest.target import Target

    chosen = [(k, getattr(args, k)) for k in ("dir", "file", "disk", "lv") if getattr(args, k)]
    if len(chosen) != 1:
        raise ProvisionError("give exactly one target: --dir, --file, --disk or --lv",
                             hint="e.g. --file /srv/xen/vm1.img")
    kind, path = chosen[0]
    if kind == "dir":
        if args.swap is not None or args.size is not None:
            raise ProvisionError("a --dir target has no size and no swap", hint="use --file, --disk or --lv")
        return Target.dir(path)
    if kind in ("file", "disk"):
        validate.image_path(path)  # the names storage create refuses, refused here too
    if kind == "lv":
        return Target.lv(path, size, swap=args.swap, fstype=fstype)
    return getattr(Target, kind)(path, size, swap=args.swap, fstype=fstype, preallocate=args.preallocate)


def _hostname(args, target) -> str:
    if args.hostname:
        return validate.hostname(args.hostname)
    base = os.path.basename(target.path.rstrip("/"))
    base = base.split("/")[-1]
    stem = base.split(".", 1)[0] if target.kind != "dir" else base
    try:
        return validate.hostname(stem)
    except ProvisionError:
        raise ProvisionError(f"cannot use '{stem}' (the target's name) as the hostname",
                             hint="give --hostname NAME") from None


def _firstboot(args, release):
    """(FirstBoot or None, root's hash from --genpass or None): read before the bootstrap
    is resolved, as its packages are part of the base."""
    from provision.guest import firstboot

    return firstboot.from_args(args, old_glibc=release.old_glibc)


def _guest(args, target, release, mirror, components, firstboot=(None, None), *,
           ssh_server: bool = False) -> GuestSettings:
    """The guest's settings; ``ssh_server``: the image will have one (the base includes
    openssh-server, or the template's image has an sshd_config), so the guest gets its
    own host keys now (guest.hostkeys), where its sshd reads them (systemd releases)."""
    from provision.guest.configure import (
        GuestSettings,
        Network,
        apt_sources,
        read_root_hash,
        read_ssh_keys,
    )

    network = Network.make(ip=args.ip, netmask=args.netmask, gateway=args.gateway, dns=args.dns, search=args.search)
    root_uuid = swap_uuid = None
    if args.fstab_by == "uuid":
        if target.kind == "dir":
            raise ProvisionError("--fstab-by uuid needs a filesystem made here: a --file, --disk or --lv target",
                                 hint="for a directory, write its fstab yourself, or use --fstab-by device")
        import uuid

        root_uuid = str(uuid.uuid4())
        swap_uuid = str(uuid.uuid4()) if target.swap else None
    return GuestSettings(
        root_uuid=root_uuid, swap_uuid=swap_uuid,
        hostname=_hostname(args, target),
        network=network,
        devices=args.devices,
        root_hash=read_root_hash(args.root_password_file) if args.root_password_file else firstboot[1],
        ssh_keys=read_ssh_keys(args.ssh_key) if args.ssh_key else (),
        apt_sources=apt_sources(release, mirror, components),
        firstboot=firstboot[0],
        host_keys=_host_keys(_hostname(args, target), release) if ssh_server else (),
    ).on(target)


def _host_keys(hostname: str, release):
    """The guest's own SSH host keys (guest.hostkeys), for a release whose sshd reads them."""
    from provision.guest import hostkeys

    if release.init != "systemd":
        return ()
    if not hostkeys.available():
        log.warn("ssh-keygen is not installed here, so the guest makes its SSH host keys on its first boot "
                 "and the image's JSON cannot list them (apt-get install openssh-client)")
        return ()
    return hostkeys.generate(hostname)


def _template_vg(args, target) -> str | None:
    """Check --save-template before the image is built, not after; returns the VG of an
    LV template (None: a file template)."""
    if not args.save_template:
        return None
    from provision.guest import templates

    validate.name(args.save_template, "template name")
    if target.kind not in ("file", "lv"):
        raise ProvisionError("only a --file image or an --lv can be saved as a template")
    vg = args.template_vg or (target.path.split("/", 1)[0] if target.kind == "lv" else None)
    if vg is not None:
        from provision.storage import validate_vg_name

        validate_vg_name(vg)
        templates.template_lv(args.save_template)
    if args.dry_run:
        templates.check_new(args.save_template)
    else:
        templates.check_new(args.save_template, vg, target.size)
    return vg


def run_image(args) -> int:
    from provision.guest import suites

    if args.list_suites:
        for r in suites.RELEASES:
            extra = f" [{' '.join(r.kernel_args)}]" if r.kernel_args else ""
            print(f"{r.name:10} {r.distro:7} {r.version:9} {r.status:9} {r.init:9} {r.network:9}{extra}")
        return 0
    if args.list_templates:
        from provision.guest import templates

        for name in templates.names():
            print(f"{name:16} {templates.where(name)}")
        return 0
    settings = parse(args)
    return _from_template(settings) if settings.template else _bootstrap(settings)


def _bootstrap(s: ImageSettings) -> int:
    from provision.guest import firstboot, templates
    from provision.guest.build import Build

    job = Build(s.spec, s.guest, s.target, refresh=s.refresh, offline=s.offline, quiet=not sys.stderr.isatty(),
                reserve=s.reserve)
    if s.dry_run:
        for line in job.plan():
            print(line)
        if s.save_template:
            root = f"/dev/{s.target.path}" if s.target.kind == "lv" else s.target.path
            for line in templates.save_plan(s.save_template, root, s.target.size, s.template_vg):
                print(line)
        _seed_plan(s)
        return 0
    with UndoStack() as undo:
        _write_seed(s, undo)  # first: a failed build takes it away again
        info, _ = job.run()  # --debug logs the seconds of each step
        seeded = _attach_seed(s, info)
    if s.save_template:
        templates.save(s.save_template, info, vg=s.template_vg)  # each guest gets its own seed
    _report(seeded, s.target)
    firstboot.print_password(s.guest.firstboot, s.guest.hostname)
    return 0


def _seed_plan(s: ImageSettings) -> None:
    if s.seed is not None:
        print(f"seed:     {s.seed_path} (iso9660 cidata: {', '.join(s.seed.files())}), "
              f"read-only disk {s.guest.devices}b in {s.target.sidecar}")


def _write_seed(s: ImageSettings, undo: UndoStack) -> None:
    if s.seed is not None:
        from provision.guest import cloudinit

        cloudinit.write(s.seed, s.seed_path, undo, make_parent=s.target.kind == "lv")


def _attach_seed(s: ImageSettings, info: dict) -> dict:
    if s.seed is None:
        return info
    from provision.guest import cloudinit

    return cloudinit.attach(info, s.seed_path, s.target.sidecar, s.guest.devices)


def _from_template(s: ImageSettings) -> int:
    from provision.guest import firstboot, templates

    if s.dry_run:
        if s.target.kind != "lv":  # an LV target is checked against its VG by the real run
            s.target.check_free()
        for line in templates.plan(s.template, s.guest, s.target, s.snapshot_size):
            print(line)
        _seed_plan(s)
        return 0
    with UndoStack() as undo:
        _write_seed(s, undo)
        new = templates.instantiate(s.template, s.guest, s.target, snapshot_size=s.snapshot_size)
        new = _attach_seed(s, new)
    _report(new, s.target)
    firstboot.print_password(s.guest.firstboot, s.guest.hostname)
    return 0


def _report(info: dict, target) -> None:
    disks = ", ".join(f"{d['path']} as {d['vdev']}" for d in info["disks"]) or target.path
    log.info(f"{info['name']}: {info['distro']} {info['suite']} ({info['arch']}) in {disks}")
    args = " ".join(info["kernel_args"])
    log.info(f"boot with root={info['root']} console=hvc0{' ' + args if args else ''}; details in {target.sidecar}")
