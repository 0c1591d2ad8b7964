"""``python -m provision grub render|install|remove``: Xen boot entries from one model.

    python -m provision grub install --dom0-mem 1G --com1 115200,8n1 --sched credit2 \\
        --root-device /dev/sda4 --default
    python -m provision grub render --format menu.lst --xen-args "dom0_mem=131072 com1=115200,8n1"
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from provision import log, validate
from provision.errors import ProvisionError
from provision.fsutil import within
from provision.grub import cmdline, install, render
from provision.sizes import parse_size

FORMATS = ("grub2", "grubd", "custom", "menu.lst", "xen.cfg")


def _natural(path: Path):
    return [int(t) if t.isascii() and t.isdigit() else t for t in re.split(r"([0-9]+)", path.name)]


def newest(root: Path, pattern: str) -> str | None:
    """The newest-versioned real file matching ``pattern`` under root/boot, as a target path."""
    found = [p for p in within(root, "/boot", follow=True).glob(pattern) if p.is_file() and not p.is_symlink()]
    return f"/boot/{max(found, key=_natural).name}" if found else None


def dom0_kernel(root: Path) -> str | None:
    """dom0's kernel under root/boot: the newest tinyconfig xen0, else the newest variant
    of it (``vmlinuz-*-xen0-hw``, the hardware dom0, installed alone)."""
    return newest(root, "vmlinuz-*-xen0") or newest(root, "vmlinuz-*-xen0-*")


def _existing(root: Path, path: str, option: str) -> str:
    # '..' would name a file outside the target that GRUB, booting the target, cannot see.
    if not path.startswith("/") or ".." in Path(path).parts:
        raise ProvisionError(f"{option} {path} is not valid: give the absolute path inside the target, e.g. /boot/{Path(path).name}")
    if not within(root, path, follow=True).is_file():
        where = "" if root.resolve() == Path("/") else f" under {root}"
        raise ProvisionError(f"{option} {path} does not exist{where}", hint="give a file that is in the target's /boot")
    return path


def machine_memory(args, root: Path) -> int | None:
    if args.machine_memory:
        return parse_size(args.machine_memory, "--machine-memory")
    # Only a live host that is not already a Xen guest knows the machine's memory.
    if root.resolve() == Path("/") and not Path("/proc/xen").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def xen_words(args) -> list[str]:
    words = (args.xen_args or "").split()
    for flag, key in (("dom0_mem", "dom0_mem"), ("com1", "com1"), ("com2", "com2"), ("console", "console"),
                      ("sched", "sched"), ("dom0_max_vcpus", "dom0_max_vcpus"), ("loglvl", "loglvl"),
                      ("guest_loglvl", "guest_loglvl")):
        value = getattr(args, flag)
        if value is not None:
            words.append(f"{key}={value}")
    for flag in ("noreboot", "sync_console"):
        if getattr(args, flag):
            words.append(flag)
    return words


@dataclass(frozen=True)
class Settings:
    """What ``grub render|install`` were asked, parsed once: the target root, the boot
    entry, dom0's and Xen's options and the loader GRUB uses for Xen."""

    root: Path
    entries: tuple[render.BootEntry, ...]
    dom0: cmdline.Dom0Options | None
    loader: str
    xen: cmdline.XenOptions | None


def build(args) -> Settings:
    """Validate everything the user gave, into one :class:`Settings`."""
    root = Path(args.root)
    if not root.is_dir():
        raise ProvisionError(f"--root {root} is not a directory")
    xen = _existing(root, args.xen, "--xen") if args.xen else newest(root, "xen-*.gz")
    if not xen:
        raise ProvisionError(f"no hypervisor found: {within(root, '/boot')} has no xen-*.gz", hint="give --xen /boot/xen-<version>.gz")
    kernel = _existing(root, args.kernel, "--kernel") if args.kernel else dom0_kernel(root)
    if not kernel:
        raise ProvisionError(f"no dom0 kernel found: {within(root, '/boot')} has no vmlinuz-*-xen0 (or -xen0-*)",
                             hint="give --kernel /boot/vmlinuz-<version>")
    initrd = _existing(root, args.initrd, "--initrd") if args.initrd else None
    if args.xen_config:
        config = within(root, _existing(root, args.xen_config, "--xen-config"))
    else:
        config = cmdline.config_beside(within(root, xen))
    schedulers = cmdline.schedulers_from_config(config) if config.is_file() else None
    xen_opts = cmdline.parse_xen_options(xen_words(args), machine_memory=machine_memory(args, root), schedulers=schedulers)
    if schedulers is None:
        cmdline.with_sched_checked(xen_opts, config)  # says the check was skipped
    dom0 = cmdline.parse_dom0_options(args.dom0_args or "", root=args.root_device,
                                      readonly=False if args.rw else None, xen=xen_opts)
    entry_id = validate.name(args.id, "--id") if args.id else None
    if args.title is not None and (not args.title.strip() or "\n" in args.title):
        raise ProvisionError("--title must be one non-empty line")
    if args.loader == "auto":
        loader, why = install.detect_loader(root)
        log.debug(f"loader {loader}: {why}")
    else:
        loader = args.loader
    if dom0.root is None:
        # Not an error: an initrd may find the root itself (the boot test's does).
        log.warn("dom0's command line has no root=: its kernel finds no root filesystem unless "
                 "the initrd mounts one; give --root-device, e.g. /dev/sda4")
    entry = render.make_entry(
        install.boot_path(root, xen), install.boot_path(root, kernel), xen_opts, dom0,
        initrd=install.boot_path(root, initrd) if initrd else None, title=args.title, id=entry_id,
    )
    return Settings(root, (entry,), dom0, loader, xen_opts)


def cmd_render(args) -> int:
    settings = build(args)
    entries, loader = list(settings.entries), settings.loader
    if args.format == "grub2":
        text = render.render_grub2(entries, loader)
    elif args.format == "custom":
        text = render.render_grub2(entries, loader)
    elif args.format == "grubd":
        text = render.render_grubd_script(entries, loader)
    elif args.format == "menu.lst":
        text = render.render_menu_lst(entries)
    else:
        text = render.render_xen_cfg(entries)
    if args.format in ("grub2", "custom", "grubd"):
        render.script_check(render.render_grub2(entries, loader))
    sys.stdout.write(text)
    return 0


def _efi_dir(value: str | None) -> str | None:
    # Relative or '..' paths would put xen.cfg somewhere other than beside xen.efi.
    if value is not None and (not value.startswith("/") or ".." in Path(value).parts):
        raise ProvisionError(f"--efi-dir {value} is not valid: give the absolute directory of xen.efi "
                             "inside the target, e.g. /boot/efi/EFI/xen")
    return value


def _menu_timeout(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) > 3600:
        raise ProvisionError(f"--menu-timeout '{value}' is not a number of seconds from 0 to 3600")
    return int(value)


def _request(args, settings: Settings) -> install.Request:
    serial = None
    if getattr(args, "serial_menu", False):
        serial = cmdline.grub_serial_command(settings.xen)
    dom0 = settings.dom0
    return install.Request(
        serial_command=serial, timeout=_menu_timeout(getattr(args, "menu_timeout", None)),
        root=settings.root, entries=list(settings.entries), format=args.format, loader=settings.loader,
        make_default=getattr(args, "default", False), menu_lst=args.menu_lst, efi_dir=_efi_dir(args.efi_dir),
        console_device=dom0.serial_device if dom0 else None, getty=not args.no_getty,
    )


def cmd_install(args) -> int:
    settings = build(args)
    entries = settings.entries
    changed = install.install(_request(args, settings), update=not args.no_update)
    log.info(f"{entries[0].title}: id {entries[0].id}; " + (f"{len(changed)} file(s) changed" if changed else "already up to date"))
    return 0


def cmd_bios(args) -> int:
    from provision.grub import bios
    root = Path(args.root)
    if not root.is_dir():
        raise ProvisionError(f"--root {root} is not a directory")
    bios.install(Path(args.disk), root)
    log.info(f"{args.disk}: GRUB (i386-pc) in the MBR and the gap before partition 1; modules in "
             f"{root}/boot/grub/i386-pc")
    return 0


def cmd_remove(args) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise ProvisionError(f"--root {root} is not a directory")
    changed = install.install(_request(args, Settings(root, (), None, "multiboot2", None)), update=not args.no_update)
    log.info(f"{len(changed)} file(s) changed" if changed else "nothing of ours to remove")
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("boot files (paths inside the target root)")
    g.add_argument("--xen", help="hypervisor, e.g. /boot/xen-4.17.gz (default: newest /boot/xen-*.gz)")
    g.add_argument("--xen-config", help="its build config, for the sched= check (default: xen-<ver>.config beside it)")
    g.add_argument("--kernel", help="dom0 kernel (default: newest /boot/vmlinuz-*-xen0, else -xen0-*)")
    g.add_argument("--initrd", help="dom0 initrd, loaded as a second module")
    x = p.add_argument_group("Xen's command line")
    x.add_argument("--xen-args", help='Xen options as you would type them, e.g. "dom0_mem=1G com1=115200,8n1"')
    x.add_argument("--dom0-mem", dest="dom0_mem", help="e.g. 1G, 512M,max:1G, 25%% (no unit = KiB, as in Xen 2.0)")
    x.add_argument("--com1", help="serial port 1, e.g. 115200,8n1 or auto")
    x.add_argument("--com2", help="serial port 2")
    x.add_argument("--console", help="Xen's console(s): vga, com1, com2, ... e.g. com1,vga")
    x.add_argument("--sched", help="scheduler: credit, credit2, rtds, arinc653, null (checked against the build)")
    x.add_argument("--dom0-max-vcpus", dest="dom0_max_vcpus", help="N or MIN-MAX")
    x.add_argument("--loglvl", help="Xen's log level, e.g. all or warning/info")
    x.add_argument("--guest-loglvl", dest="guest_loglvl")
    x.add_argument("--noreboot", action="store_true", help="do not reboot after a crash")
    x.add_argument("--sync-console", dest="sync_console", action="store_true")
    x.add_argument("--machine-memory", help="the machine's memory, to check dom0_mem (default: read on a live host)")
    d = p.add_argument_group("dom0's command line")
    d.add_argument("--dom0-args", help='e.g. "root=/dev/sda4 ro console=tty0"; a serial Xen console adds console=hvc0')
    d.add_argument("--root-device", help="dom0's root device, e.g. /dev/sda4 or UUID=...")
    d.add_argument("--rw", action="store_true", help="mount root read-write (default ro)")
    e = p.add_argument_group("entry")
    e.add_argument("--title", help="menu title (default: Xen <ver> / Linux <ver>)")
    e.add_argument("--id", help="menu entry id (default: xen-provision-<xen ver>-<kernel ver>)")
    e.add_argument("--loader", choices=("auto", "multiboot2", "multiboot"), default="auto",
                   help="GRUB 2 loader commands (auto: multiboot2 unless the target's GRUB lacks it)")


def _target_options(p: argparse.ArgumentParser, default_format: str = "grubd") -> None:
    p.add_argument("--root", default="/", help="target root filesystem (default: this host)")
    p.add_argument("--format", choices=("grubd", "custom"), default=default_format,
                   help=f"grubd: {install.GRUBD_SCRIPT} + grub-mkconfig; custom: a block in /boot/grub/custom.cfg")
    p.add_argument("--menu-lst", action="store_true", help="also a block in legacy GRUB's /boot/grub/menu.lst")
    p.add_argument("--efi-dir", help="also write xen.cfg into this directory (where xen.efi is), e.g. /boot/efi/EFI/xen")
    p.add_argument("--no-update", action="store_true", help="do not run update-grub; print the command instead")
    p.add_argument("--no-getty", action="store_true", help="leave getty and securetty alone")


def register(subparsers) -> None:
    grub = subparsers.add_parser("grub", help="Xen boot entries: GRUB 2, legacy menu.lst, EFI xen.cfg",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = grub.add_subparsers(dest="grub_command", metavar="ACTION", required=True)

    p = sub.add_parser("render", help="print the entries in one format (nothing is written)")
    _model_options(p)
    p.add_argument("--root", default="/", help="target root the paths are checked in (default: /)")
    p.add_argument("--format", choices=FORMATS, default="grub2")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("install", help="install the entry beside the user's own, with backups")
    _model_options(p)
    _target_options(p)
    p.add_argument("--default", action="store_true", help="make the Xen entry the default: a GRUB_DEFAULT drop-in (GRUB 2), our stanza first behind our own 'default 0' (menu.lst), default= (xen.cfg)")
    p.add_argument("--serial-menu", action="store_true",
                   help="GRUB's own menu on Xen's serial port too (GRUB_TERMINAL, GRUB_SERIAL_COMMAND from "
                        "--com1/--com2 and --console): for headless hosts")
    p.add_argument("--menu-timeout", metavar="SECONDS", help="GRUB_TIMEOUT: seconds the menu waits")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("bios", help="make a disk image boot GRUB from its MBR (grub-install for an image file)",
                       description="Write GRUB's i386-pc boot sector and core image into a disk image "
                                   "whose first partition holds ROOT (mounted), and GRUB's modules into "
                                   "ROOT/boot/grub: what grub-install does, for an image file whose loop "
                                   "device grub-install cannot map to a BIOS drive.")
    p.add_argument("disk", help="the disk image (msdos partition table; root in partition 1)")
    p.add_argument("--root", required=True, help="where the image's first partition is mounted")
    p.set_defaults(func=cmd_bios)

    p = sub.add_parser("remove", help="remove what install wrote (with backups)")
    _target_options(p)
    p.set_defaults(func=cmd_remove)
