"""``python -m provision domain ...`` and ``python -m provision xendomains ...``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from provision import log, validate
from provision.domain import autostart, create, macs, nfs, render, xendomains, xmconvert
from provision.domain import list as lister
from provision.domain import remove as remover
from provision.domain.model import Domain
from provision.domain.paths import from_args
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.network.model import host_address, ifname
from provision.sizes import shorten
from provision.undo import UndoStack


def _root_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR", help="work inside this root (an offline image, a test dir); default /")
    p.add_argument("--config-dir", metavar="DIR", help="xl config directory (default ROOT/etc/xen)")


def register(subparsers) -> None:
    dom = subparsers.add_parser("domain", help="xl domain configs, /etc/xen/auto",
                                description="Create, convert and check xl domain configs.")
    sub = dom.add_subparsers(dest="domain_command", metavar="ACTION", required=True)

    c = sub.add_parser("create", help="write ROOT/etc/xen/NAME.cfg after the safety checks",
                       description="Write an xl domain config. key=value words override the file "
                                   "or fill its template variables, as in 'xm create myvmconf vmid=1'.")
    c.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    c.add_argument("-f", "--file", type=Path, help="a config or template (xl, or plain xm which is converted)")
    c.add_argument("--from-image", type=Path, metavar="IMAGE", help="use the facts recorded in IMAGE.json")
    c.add_argument("--name")
    c.add_argument("--memory", help="MiB, or a size such as 512M")
    c.add_argument("--maxmem")
    c.add_argument("--vcpus", help="a number (checked with the other settings)")
    c.add_argument("--type", choices=("pv", "pvh", "hvm"),
                   help="default: pvh for a kernel whose config-RELEASE beside it has CONFIG_XEN_PVH=y "
                        "and for --bootloader pvgrub, else pv")
    c.add_argument("--kernel")
    c.add_argument("--ramdisk")
    c.add_argument("--root-device", metavar="DEV", help="the guest's root= (e.g. /dev/xvda1 ro)")
    c.add_argument("--extra", help="more kernel command line")
    c.add_argument("--bootloader", choices=("pvgrub", "pygrub"),
                   help="boot the guest's own kernel: pvgrub (pvgrub2 from grub-xen-host, run inside the "
                        "guest) or pygrub (runs in dom0 on the guest's filesystem: a security risk)")
    c.add_argument("--disk", action="append", metavar="SPEC", help="xl disk spec; repeat for more")
    c.add_argument("--vif", action="append", metavar="SPEC",
                   help="xl vif spec ('' for defaults); repeat").blank_ok = True  # '' is xl's all-defaults vif
    c.add_argument("--bridge", metavar="NAME",
                   help="the bridge the vif joins (must exist in the root's network configuration; "
                        "`network bridge` makes one)")
    c.add_argument("--nfs-server", metavar="ADDR", help="NFS root: server address")
    c.add_argument("--nfs-root", metavar="PATH", help="NFS root: exported directory")
    c.add_argument("--ip", metavar="ADDR[/PREFIX]",
                   help="the guest's address: for a routed vif (vif-route), or an NFS root's kernel "
                        "(default: the image's, else DHCP)")
    c.add_argument("--gateway", metavar="ADDR")
    c.add_argument("--hostname")
    c.add_argument("--exports", action="store_true",
                   help="add the NFS export line (to the guest's --ip only) to ROOT/etc/exports and, on "
                        "the live host, run exportfs -ra (nfs-kernel-server)")
    c.add_argument("--autostart", action="store_true", help="link it into /etc/xen/auto")
    c.add_argument("--mac-prefix", default=macs.XEN_PREFIX, help="for generated MACs: Xen's 00:16:3e (default) or a locally administered one such as 02:00:00")
    c.add_argument("--force", action="store_true", help="replace an existing config of that name")
    c.add_argument("--no-kernel-check", action="store_true", help="do not require the kernel file to exist")
    c.add_argument("-n", "--dry-run", action="store_true", help="print the config, write nothing")
    _root_options(c)
    c.set_defaults(func=cmd_create)

    v = sub.add_parser("convert", help="print an xm config in xl form")
    v.add_argument("file", type=Path)
    v.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    v.add_argument("--force", action="store_true", help="replace an existing --output file (the input too)")
    v.set_defaults(func=cmd_convert)

    k = sub.add_parser("check", help="read configs as xl would; report the first problem of each")
    k.add_argument("files", type=Path, nargs="+")
    k.set_defaults(func=cmd_check)

    ls = sub.add_parser("list", help="the domains: type, memory, disks, network, autostart, running",
                        description="Every domain config, in the manner of xen-list-images: type, memory, "
                                    "vcpus, each disk (backing, size, allocated), IPs, MACs, bridges, "
                                    "autostart, and whether it runs (xl list; 'unknown' offline).")
    ls.add_argument("--json", action="store_true", help="one JSON object for scripts (format "
                    "xen-provision-domain-list/1, keys documented in provision/domain/list.py)")
    _root_options(ls)
    ls.set_defaults(func=cmd_list)

    rm = sub.add_parser("remove", help="remove a domain's config and its auto link (--purge: and its disks)",
                        description="Remove a domain's config and its /etc/xen/auto link. --purge also removes "
                                    "what `image` made for it (disks, swap, NFS root tree, facts file) and "
                                    "the export line `domain create --exports` wrote; other disks are kept.")
    rm.add_argument("name")
    rm.add_argument("--purge", action="store_true",
                    help="also the disks and swap recorded in its image's facts file (IMAGE.json), that file, "
                         "its NFS root tree and export line; refused while it runs or if another domain uses one")
    rm.add_argument("-n", "--dry-run", action="store_true", help="list what would be removed and kept; remove nothing")
    _root_options(rm)
    rm.set_defaults(func=cmd_remove)

    from provision.domain import resize

    resize.register(sub)

    a = sub.add_parser("autostart", help="start a domain at boot (on), not (off), or list")
    a.add_argument("state", choices=("on", "off", "list"))
    a.add_argument("name", nargs="?")
    _root_options(a)
    a.set_defaults(func=cmd_autostart)

    x = subparsers.add_parser("xendomains", help="install and enable the xendomains init script",
                              description="The xendomains init script, settings file and systemd unit.")
    xsub = x.add_subparsers(dest="xendomains_command", metavar="ACTION", required=True)
    i = xsub.add_parser("install", help="write the script, settings and unit")
    i.add_argument("--flavour", choices=("debian", "redhat"), help="settings in /etc/default or /etc/sysconfig (default: from the root)")
    i.add_argument("--save-dir", metavar="DIR", help="save domains here on stop (default: shut them down)")
    i.add_argument("--no-restore", action="store_true", help="do not restore saved domains on start")
    i.add_argument("--parallel", default="4", help="domains started/stopped at once (default 4)")
    i.add_argument("--stop-timeout", default="300", help="seconds to wait for shutdowns (default 300)")
    i.add_argument("--destroy-on-timeout", action="store_true")
    i.add_argument("--only-auto", action="store_true", help="on stop, only the domains in /etc/xen/auto")
    i.add_argument("--xen-service", help="LSB name of the Xen daemons' script (default: found in the root)")
    i.add_argument("--log-consoles", action="store_true",
                   help="xenconsoled keeps each guest's console in /var/log/xen/console "
                        "(XENCONSOLED_TRACE=guest in Xen's xencommons settings)")
    i.add_argument("--enable", action="store_true", help="also enable it")
    i.add_argument("--method", choices=xendomains.METHODS, default="auto")
    _root_options(i)
    i.set_defaults(func=cmd_xd_install)
    e = xsub.add_parser("enable", help="start xendomains at boot")
    e.add_argument("--method", choices=xendomains.METHODS, default="auto")
    _root_options(e)
    e.set_defaults(func=cmd_xd_enable)
    d = xsub.add_parser("disable", help="remove xendomains from the boot sequence")
    _root_options(d)
    d.set_defaults(func=cmd_xd_disable)
    s = xsub.add_parser("status", help="links, and the domains that will start at boot")
    _root_options(s)
    s.set_defaults(func=cmd_xd_status)


def _options(args) -> dict:
    opts: dict = {}
    for key, attr in (("name", "name"), ("memory", "memory"), ("maxmem", "maxmem"), ("vcpus", "vcpus"),
                      ("type", "type"), ("kernel", "kernel"), ("ramdisk", "ramdisk"),
                      ("root", "root_device"), ("extra", "extra")):
        value = getattr(args, attr)
        if value is not None:
            opts[key] = value
    if args.disk:
        opts["disk"] = args.disk
    if args.vif:
        opts["vif"] = args.vif
    return opts


def cmd_create(args) -> int:
    paths = from_args(args)
    nfsroot = None
    if args.nfs_server or args.nfs_root:
        if not (args.nfs_server and args.nfs_root):
            raise ProvisionError("an NFS root needs both --nfs-server and --nfs-root")
        nfsroot = nfs.NfsRoot(server=args.nfs_server, path=args.nfs_root, ip=args.ip,
                              gateway=args.gateway, hostname=args.hostname)
    elif args.exports:
        raise ProvisionError("--exports is for NFS-root guests", hint="add --nfs-server and --nfs-root")
    ip = _guest_ip(args.ip) if args.ip else None
    if args.bridge:
        ifname(args.bridge, "bridge name")
    req = create.Request(
        file=args.file, image=args.from_image, assignments=args.assignments, options=_options(args),
        bridge=args.bridge, ip=ip,
        nfs=nfsroot, bootloader=args.bootloader, autostart=args.autostart, exports=args.exports, mac_prefix=args.mac_prefix,
        check_kernel=not args.no_kernel_check, dry_run=args.dry_run, force=args.force,
    )
    if not (args.file or args.from_image or req.options or args.assignments or args.bridge or args.bootloader):
        raise ProvisionError("nothing to create from", hint="give -f FILE, --from-image IMAGE or --name/--memory/--kernel ...")
    dom, path, text = create.create(req, paths)
    if args.dry_run:
        sys.stdout.write(text)
        if nfsroot:
            print(f"# /etc/exports: {nfsroot.export_line()}")
    elif nfsroot and not args.exports:
        log.info(f"export the root on {nfsroot.server} with this /etc/exports line:")
        print(nfsroot.export_line())
    return 0


def _guest_ip(value: str) -> str:
    """--ip: ADDRESS or ADDRESS/PREFIX, a host's own address."""
    if "/" in value:
        return str(host_address(value, "--ip"))
    return str(host_address(f"{validate.ip(value, '--ip')}/32", "--ip").ip)


def cmd_convert(args) -> int:
    out = args.output
    if out is not None:
        if out.is_dir():
            raise ProvisionError(f"--output {out} is a directory", hint="give the file to write, e.g. vm1.cfg")
        if out.exists() and not args.force:
            same = args.file.exists() and out.resolve() == args.file.resolve()
            raise ProvisionError(f"--output {out} already exists" + (": it is the file being converted" if same else ""),
                                 hint="give another file, or --force to replace it")
        if not out.parent.is_dir():
            raise ProvisionError(f"directory {out.parent} does not exist", hint="create it first")
    values, lines, was_xm = xmconvert.load_any(args.file)
    if not was_xm:
        log.note(f"{args.file} is already an xl config; normalising it")
    dom = Domain.from_config(values, str(args.file), lines)
    dom.type_reason = _converted_type_reason(values, dom.type, args.file)
    text = render.domain_config(dom, str(out) if out else f"/etc/xen/{dom.name}.cfg", source=str(args.file))
    if out:
        atomic_write(out, text, 0o644)
        log.info(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0


def _converted_type_reason(values: dict, dtype: str, source: Path) -> str:
    """Why a converted config has its type: xl's default is PV when ``type`` is absent, and
    so was xm's (builder = "linux"), so a config without one is PV, written out."""
    if "type" in values:
        return f"{dtype.upper()}: as {source} says"
    if "builder" in values:
        return f"{dtype.upper()}: builder = \"{values['builder']}\" in {source}"
    return "PV: the type of a config that names none (xl's and xm's default), written out"


def cmd_check(args) -> int:
    """Each file's first problem as one 'error:' line naming it once (and its hint)."""
    bad = 0
    for f in args.files:
        try:
            values, lines, was_xm = xmconvert.load_any(f, notes=False)
            dom = Domain.from_config(values, str(f), lines)
            print(f"{f}: ok ({dom.name}{', xm syntax: convert it' if was_xm else ''})")
        except ProvisionError as e:
            named = e.message if str(f) in e.message else f"{f}: {e.message}"
            ProvisionError(named, hint=e.hint).report()
            bad += 1
    return 1 if bad else 0


def cmd_list(args) -> int:
    found, xl = lister.entries(from_args(args))
    if args.json:
        sys.stdout.write(lister.as_json(found, xl))
    else:
        for line in lister.lines(found, xl):
            print(line)
    return 0


def cmd_remove(args) -> int:
    paths = from_args(args)
    if args.purge:
        plan = remover.purge(paths, args.name, dry_run=args.dry_run)
        if args.dry_run:
            for line in remover.listing(plan, dry_run=True):
                print(line)
        else:
            for kept in plan.kept:
                log.info(f"kept: {kept}")
        return 0
    config = paths.config(args.name)
    if not config.exists() and remover.journal_path(paths, args.name).exists():
        raise ProvisionError(f"no domain config {config}; an interrupted purge of {args.name} left its plan",
                             hint=f"finish it: python -m provision domain remove {args.name} --purge")
    if args.dry_run:
        link = autostart.link_path(paths, args.name)
        if not config.exists():
            raise ProvisionError(f"no domain config {config}")
        for path in ([link] if link.is_symlink() else []) + [config]:
            print(f"would remove: {path}")
        return 0
    path = create.remove(paths, args.name)
    log.info(f"removed {path}")
    return 0


def cmd_autostart(args) -> int:
    paths = from_args(args)
    if args.state == "list":
        for entry in autostart.listing(paths):
            print(f"{entry.name}\t{entry.path} -> {entry.target}" + ("" if entry.ok else "\t(dangling: skipped)"))
        return 0
    if not args.name:
        raise ProvisionError(f"autostart {args.state} needs a domain name")
    if args.state == "on":
        link = autostart.enable(paths, args.name)
        log.info(f"{args.name} starts at boot: {link}")
    elif autostart.disable(paths, args.name):
        log.info(f"{args.name} no longer starts at boot")
    else:
        log.info(f"{args.name} was not set to start at boot")
    return 0


def cmd_xd_install(args) -> int:
    paths = from_args(args)
    s = xendomains.Settings(
        flavour=args.flavour or xendomains.flavour_of(paths), save_dir=args.save_dir or "",
        restore=not args.no_restore, parallel=_count(args.parallel, "--parallel"),
        stop_timeout=_count(args.stop_timeout, "--stop-timeout"),
        destroy_on_timeout=args.destroy_on_timeout, stop_all=not args.only_auto,
        xen_service=args.xen_service, log_consoles=args.log_consoles,
    )
    with UndoStack() as undo:  # a refused enable takes back the files we just made
        xendomains.install(paths, s, undo)
        if args.enable:
            for line in xendomains.enable(paths, args.method, undo):
                log.info(line)
    return 0


def _count(value: str, option: str) -> int:
    # A string option, not type=int: a bad value is one line, not argparse's usage.
    if not re.fullmatch(r"\s*[0-9]+\s*", value):
        raise ProvisionError(f"{option} '{shorten(value)}' is not a whole number")
    if len(value.strip()) > 9:
        raise ProvisionError(f"{option} '{shorten(value)}' is too large")
    return int(value)


def cmd_xd_enable(args) -> int:
    with UndoStack() as undo:  # a refused insserv takes back the directories made for it
        for line in xendomains.enable(from_args(args), args.method, undo):
            log.info(line)
    return 0


def cmd_xd_disable(args) -> int:
    for line in xendomains.disable(from_args(args)) or ["xendomains was not enabled"]:
        log.info(line)
    return 0


def cmd_xd_status(args) -> int:
    paths = from_args(args)
    for level, names in xendomains.status(paths).items():
        print(f"{level}: {' '.join(names)}")
    wants = paths.inside("/etc/systemd/system/multi-user.target.wants/xendomains.service")
    print(f"systemd: {'enabled' if wants.is_symlink() else 'not enabled'}")
    for entry in autostart.listing(paths):
        print(f"auto: {entry.name}" + ("" if entry.ok else " (dangling: skipped)"))
    return 0
