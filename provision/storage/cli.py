"""``python -m provision storage ...``: images, partitioned disks, clones, LVM, snapshot fill."""

from __future__ import annotations

import argparse
import os
import sys

from provision import inuse, log, validate
from provision.errors import ProvisionError
from provision.sizes import format_size, parse_size
from provision.storage import fs as fsmod
from provision.storage import lvm
from provision.storage.clone import clone_file
from provision.storage.images import building_image
from provision.storage.partition import TABLES, PartSpec, format_partitions, partition_image
from provision.undo import UndoStack


def parse_part(text: str) -> PartSpec:
    """``SIZE[,fs=FS][,type=TYPE][,boot][,label=LABEL]``; SIZE may be ``rest``."""
    fields = [f.strip() for f in text.split(",")]
    size = None if fields[0] in ("rest", "") else parse_size(fields[0], "partition size")  # bytes, parsed here once
    opts: dict[str, str] = {}
    boot = False
    for field in fields[1:]:
        key, eq, value = field.partition("=")
        if key in ("boot", "bootable") and not eq:
            boot = True
        elif key in ("fs", "type", "label") and eq and value:
            opts[key] = value
        else:
            raise ProvisionError(f"partition '{text}': '{field}' is not understood",
                                 hint="write SIZE[,fs=FS][,type=TYPE][,boot][,label=LABEL], e.g. 512M,fs=ext4,boot")
    return PartSpec(size=size, fs=opts.get("fs"), bootable=boot, type=opts.get("type"), label=opts.get("label"))


def _check_fs_args(fstype: str | None, label: str | None, populate: str | None) -> None:
    """Reject bad filesystem arguments before anything is created."""
    if fstype is None:
        if populate or label:
            raise ProvisionError("--populate and --label need --fs")
        return
    if fstype != "swap" and fstype not in fsmod.FILESYSTEMS:
        raise ProvisionError(f"filesystem type '{fstype}' is not supported",
                             hint=f"choose one of: {', '.join(fsmod.FILESYSTEMS)} or swap")
    if fstype == "swap" and populate:
        raise ProvisionError("swap cannot be populated")
    if populate and not os.path.exists(populate):
        raise ProvisionError(f"populate source {populate} does not exist")
    limit = 15 if fstype == "swap" else fsmod.FILESYSTEMS[fstype].label_max
    fsmod.check_label(label, limit, fstype)


def _make_fs(target: str, args) -> None:
    if args.fs == "swap":
        fsmod.make_swap(target, label=args.label, uuid=args.uuid)
    elif args.fs:
        fsmod.make_fs(target, args.fs, label=args.label, populate=args.populate, uuid=args.uuid)


def cmd_create(args) -> int:
    validate.image_path(args.image)
    _check_fs_args(args.fs, args.label, args.populate)
    with UndoStack() as undo:
        with building_image(args.image, args.size, preallocate=args.preallocate, force=args.force,
                            undo=undo) as tmp:
            _make_fs(os.fspath(tmp), args)
    return 0


def cmd_partition(args) -> int:
    if args.size:
        validate.image_path(args.image)
    specs = [parse_part(p) for p in args.part]
    if args.table not in TABLES:
        raise ProvisionError(f"partition table type '{args.table}' is not known", hint="use msdos or gpt")
    for spec in specs:
        if spec.fs and spec.fs != "swap":
            _check_fs_args(spec.fs, spec.label, None)
    with UndoStack() as undo:
        if args.size:
            with building_image(args.image, args.size, preallocate=args.preallocate, force=args.force,
                                undo=undo) as tmp:
                infos = partition_image(tmp, args.table, specs)
                format_partitions(tmp, infos)
        else:
            infos = partition_image(args.image, args.table, specs, force=args.force, undo=undo)
            format_partitions(args.image, infos, undo=undo)
    for p in infos:
        print(f"{p.number} start={p.start} size={p.size} type={p.type} fs={p.fs or '-'}"
              f"{' boot' if p.bootable else ''}{' label=' + p.label if p.label else ''}")
    return 0


def cmd_clone(args) -> int:
    validate.image_path(args.target)
    with UndoStack() as undo:
        method = clone_file(args.source, args.target, force=args.force, undo=undo)
    print(method)
    return 0


def cmd_check(args) -> int:
    if not os.path.exists(args.target):
        raise ProvisionError(f"{args.target} does not exist")
    inuse.refuse(args.target, writing=True)
    print(f"{args.target}: not in use")
    return 0


def cmd_pv(args) -> int:
    with UndoStack() as undo:
        lvm.pvcreate(args.devices, force=args.force, undo=undo)
    return 0


def cmd_vg(args) -> int:
    with UndoStack() as undo:
        lvm.vgcreate(args.vg, args.devices, force=args.force, undo=undo)
    return 0


def cmd_lv(args) -> int:
    _check_fs_args(args.fs, args.label, args.populate)
    with UndoStack() as undo:
        path = lvm.create_lv(args.vg, args.name, args.size, thin_pool=args.thin_pool, force=args.force, undo=undo)
        _make_fs(path, args)
    print(path)
    return 0


def cmd_pool(args) -> int:
    with UndoStack() as undo:
        print(lvm.create_thin_pool(args.vg, args.name, args.size, undo=undo))
    return 0


def cmd_snapshot(args) -> int:
    with UndoStack() as undo:
        print(lvm.snapshot_lv(args.vg, args.origin, args.name, args.size, force=args.force, undo=undo))
    return 0


def cmd_extend(args) -> int:
    with UndoStack():
        size = lvm.extend_lv(args.vg, args.name, args.size, resize_fs=not args.no_resize_fs)
    print(format_size(size))
    return 0


def cmd_fill(args) -> int:
    def report(usage: float) -> None:
        print(f"{args.vg}/{args.name} {usage:.2f}%", flush=True)

    if not args.watch:
        report(lvm.snapshot_usage(args.vg, args.name))
        return 0
    with UndoStack():
        lvm.watch_snapshot(args.vg, args.name, threshold=args.threshold, extend_by=args.extend_by,
                           interval=args.interval, once=args.once, report=report)
    return 0


def _fs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fs", metavar="TYPE", help=f"make a filesystem: {', '.join(fsmod.FILESYSTEMS)} or swap")
    p.add_argument("--label", help="filesystem label")
    p.add_argument("--uuid", help="filesystem UUID (for reproducible images)")
    p.add_argument("--populate", metavar="DIR|TARBALL", help="fill the filesystem from a directory or tarball")


def register(subparsers) -> None:
    storage = subparsers.add_parser("storage", help="disk images, partitions, clones and LVM volumes",
                                    description=__doc__)
    sub = storage.add_subparsers(dest="storage_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("create", help="create a sparse or preallocated image, optionally with a filesystem")
    p.add_argument("image")
    p.add_argument("--size", required=True, help="e.g. 2G, 2048M, 512MiB; a bare number is MiB")
    p.add_argument("--preallocate", action="store_true", help="allocate every block now (fallocate)")
    p.add_argument("--force", action="store_true", help="replace an existing image (not one in use)")
    _fs_options(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("partition", help="write a partition table (pyparted) and make the filesystems")
    p.add_argument("image", help="image file (created with --size) or block device")
    p.add_argument("--size", help="create the image with this size first")
    p.add_argument("--preallocate", action="store_true")
    p.add_argument("--table", default="msdos", help="msdos (default) or gpt")
    p.add_argument("--part", action="append", required=True, metavar="SPEC",
                   help="SIZE[,fs=FS][,type=linux|swap|bios_grub|esp|lvm|raid][,boot][,label=L]; SIZE 'rest' takes the rest")
    p.add_argument("--force", action="store_true", help="replace an existing image or partition table")
    p.set_defaults(func=cmd_partition)

    p = sub.add_parser("clone", help="clone an image: reflink where possible, else a sparse copy")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--force", action="store_true", help="replace an existing target (not one in use)")
    p.set_defaults(func=cmd_clone)

    p = sub.add_parser("check", help="is a device or image free to write (not mounted, swapped, attached or used by a domain)?")
    p.add_argument("target")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fill", help="how full a snapshot is; with --watch, extend it before it fills")
    p.add_argument("vg")
    p.add_argument("name")
    p.add_argument("--watch", action="store_true")
    p.add_argument("--threshold", type=float, default=80.0, help="percent full that triggers an extension (80)")
    p.add_argument("--extend-by", default="512M", help="how much to add each time (512M)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between checks (5)")
    p.add_argument("--once", action="store_true", help="check (and extend) once, then exit")
    p.set_defaults(func=cmd_fill)

    lvm_parser = sub.add_parser("lvm", help="LVM: pv, vg, lv, pool, snapshot, extend")
    lsub = lvm_parser.add_subparsers(dest="lvm_command", metavar="ACTION", required=True)

    p = lsub.add_parser("pv", help="make devices physical volumes")
    p.add_argument("devices", nargs="+")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_pv)

    p = lsub.add_parser("vg", help="create a volume group")
    p.add_argument("vg")
    p.add_argument("devices", nargs="+")
    p.add_argument("--force", action="store_true", help="overwrite what the devices hold (not one in use)")
    p.set_defaults(func=cmd_vg)

    p = lsub.add_parser("lv", help="create a logical volume (or a thin volume in a pool)")
    p.add_argument("vg")
    p.add_argument("name")
    p.add_argument("--size", required=True)
    p.add_argument("--thin-pool", metavar="POOL", help="make a thin volume of --size in this pool")
    p.add_argument("--force", action="store_true", help="replace an existing LV (not one in use)")
    _fs_options(p)
    p.set_defaults(func=cmd_lv)

    p = lsub.add_parser("pool", help="create a thin pool")
    p.add_argument("vg")
    p.add_argument("name")
    p.add_argument("--size", required=True)
    p.set_defaults(func=cmd_pool)

    p = lsub.add_parser("snapshot", help="copy-on-write clone of a template LV")
    p.add_argument("vg")
    p.add_argument("origin")
    p.add_argument("name")
    p.add_argument("--size", help="room for the clone's changes (not needed for thin origins)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_snapshot)

    p = lsub.add_parser("extend", help="grow an LV and its filesystem")
    p.add_argument("vg")
    p.add_argument("name")
    p.add_argument("--size", required=True, help="new size, or +SIZE to grow by")
    p.add_argument("--no-resize-fs", action="store_true", help="leave the filesystem alone")
    p.set_defaults(func=cmd_extend)


def main(argv: list[str] | None = None) -> int:
    """``python -m provision.storage.cli ...``: the storage command alone, importing no other
    command's module, for a minimal guest (the boot test) that has only the standard
    library and lvm2. Same output and exit codes as ``python -m provision storage``."""
    from provision.cli import Parser, run_command

    parser = Parser(prog="python -m provision.storage.cli")
    parser.add_argument("--debug", action="store_true")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["storage", *(argv if argv is not None else sys.argv[1:])])
    if args.debug:
        log.set_debug(True)
    return run_command(args.func, args)

if __name__ == "__main__":
    from provision import cli

    cli._process["ends_with_run"] = True
    cli.finish(main())
