"""The pipeline: a base (cached), configured as a guest, made into its target.

    spec = resolve("bookworm")                                  # bootstrap.resolve
    settings = GuestSettings("vm1", Network.make(ip="192.0.2.10/24", gateway="192.0.2.1"))
    info = build(spec, settings, Target.file("/srv/xen/vm1.img", "2G", swap="512M"))

reads like the manual's appendix: make the disk, bootstrap, edit the files, done. The
tree is configured before the filesystem is made from it (``mkfs.ext4 -d``), so nothing
is mounted. Each image gets a JSON sidecar (``<image>.json``) saying how to boot it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from provision import cache, log
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.guest import basecache
from provision.guest.bootstrap import BaseSpec, command
from provision.guest.configure import (
    GuestSettings,
    TreeReader,
    apply_to_dir,
    describe,
    dir_reader,
    guest_files,
)
from provision.run import run
from provision.sizes import MiB, format_size, parse_size
from provision.undo import UndoStack, critical

SIDECAR_FORMAT = "xen-provision-image/1"
FSTYPES = ("ext4", "ext3", "ext2")


@dataclass(frozen=True)
class Target:
    """Where the guest goes: a directory, a file image, a partitioned disk image or an LV."""

    kind: str  # "dir" | "file" | "disk" | "lv"
    path: str  # directory, image file, disk image, or "VG/LV"
    size: int | None = None
    swap: int | None = None  # swap size: an image or LV beside it, or partition 2
    fstype: str = "ext4"
    preallocate: bool = False

    @classmethod
    def dir(cls, path) -> Target:
        return cls("dir", os.path.abspath(path))

    @classmethod
    def file(cls, path, size="2G", *, swap=None, fstype="ext4", preallocate=False) -> Target:
        return cls._sized("file", os.path.abspath(path), size, swap, fstype, preallocate)

    @classmethod
    def disk(cls, path, size="2G", *, swap=None, fstype="ext4", preallocate=False) -> Target:
        return cls._sized("disk", os.path.abspath(path), size, swap, fstype, preallocate)

    @classmethod
    def lv(cls, vg_lv: str, size="2G", *, swap=None, fstype="ext4") -> Target:
        from provision.storage import validate_lv_name, validate_vg_name

        vg, _, lv = vg_lv.partition("/")
        if not lv:
            raise ProvisionError(f"LV '{vg_lv}' is not VG/NAME", hint="e.g. --lv vg0/vm1")
        validate_vg_name(vg)
        validate_lv_name(lv)
        return cls._sized("lv", vg_lv, size, swap, fstype, False)

    @classmethod
    def _sized(cls, kind, path, size, swap, fstype, preallocate) -> Target:
        if fstype not in FSTYPES:
            raise ProvisionError(f"filesystem type '{fstype}' is not supported for a root image",
                                 hint=f"use one of: {', '.join(FSTYPES)}")
        # No size: a snapshot of a template, which has its origin's size.
        nbytes = parse_size(size, "image size", minimum=32 * MiB) if size is not None else None
        swap_bytes = parse_size(swap, "swap size", minimum=MiB) if swap else None
        return cls(kind, path, nbytes, swap_bytes, fstype, preallocate)

    @property
    def swap_path(self) -> str | None:
        """Where the swap goes: ``vm1.img`` -> ``vm1-swap.img``, ``vg/vm1`` -> ``vg/vm1-swap``."""
        if not self.swap or self.kind == "disk":
            return None
        stem, ext = os.path.splitext(self.path)
        return f"{stem}-swap{ext}" if self.kind == "file" else f"{self.path}-swap"

    @property
    def sidecar(self) -> str:
        if self.kind == "lv":
            vg, lv = self.path.split("/", 1)
            return str(basecache.cache_root(create=False).parent / "images" / vg / f"{lv}.json")
        return self.path.rstrip("/") + ".json"

    def check_free(self, extra: int = 0) -> None:
        """A target that exists, or an LV target whose VG is missing or has no room for
        it (and ``extra`` bytes more: a snapshot's room for changes), is refused before
        anything is done."""
        if self.kind == "lv":
            from provision.storage import lv_exists, vg_free

            vg, lv = self.path.split("/", 1)
            free = vg_free(vg)  # one line when the VG does not exist
            for name in filter(None, (lv, self.swap_path and self.swap_path.split("/", 1)[1])):
                if lv_exists(vg, name):
                    raise ProvisionError(f"logical volume {vg}/{name} already exists",
                                         hint="choose another name, or remove it with lvremove")
            need = (self.size or 0) + (self.swap or 0) + extra
            if need > free:
                raise ProvisionError(f"volume group '{vg}' has no room for {format_size(need)}: "
                                     f"{format_size(free)} free", hint="choose smaller sizes or add a PV (vgextend)")
            return
        for path in filter(None, (self.path, self.swap_path)):
            if os.path.lexists(path):
                raise ProvisionError(f"target {path} already exists", hint="choose another path or remove it first")
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise ProvisionError(f"directory {parent} does not exist", hint="create it first")


def needed_bytes(meta: dict) -> int:
    """Room a filesystem needs for the tree: data, inode tables and journal, with a margin."""
    return int(meta.get("unpacked_bytes", 0) * 1.25) + meta.get("inodes", 0) * 256 + 48 * MiB


def smallest_size(meta: dict) -> int:
    """The smallest root size for the base ``meta`` describes, in whole 64 MiB."""
    return -(-needed_bytes(meta) // (64 * MiB)) * 64 * MiB


def check_room(target: Target, meta: dict) -> None:
    """Refuse a file or disk image whose filesystem has no room for the tree: a sparse
    image would otherwise fail half-way through mkfs."""
    if target.kind not in ("file", "disk"):
        return
    st = os.statvfs(os.path.dirname(target.path))
    free = st.f_bavail * st.f_frsize
    need = target.size if target.preallocate else needed_bytes(meta)
    if free < need:
        raise ProvisionError(f"not enough space in {os.path.dirname(target.path)}: {format_size(free)} free, "
                             f"the image needs about {need >> 20} MiB",
                             hint="free some space or choose another directory")


def _work_parent(target: Target, expected: int) -> str | None:
    """Where to unpack the tree: beside a directory target (so it is renamed into place),
    otherwise on tmpfs when it has room (unpacking and removing 10k files is fast there)."""
    if target.kind == "dir":
        return os.path.dirname(target.path)
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 2 * expected + 256 * MiB:
            return shm
    return str(basecache.cache_root().parent / "tmp")


def _mounts_below(path: str) -> list[str]:
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == real or mnt.startswith(real + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: str) -> None:
    """Remove a work tree, first unmounting anything a killed backend left mounted in it."""
    for mnt in _mounts_below(path):
        run(["umount", "--lazy", mnt], check=False, quiet=True)
    if os.path.lexists(path):
        run(["rm", "-rf", "--one-file-system", path], quiet=True)


def sidecar_info(spec_or_meta: dict, settings: GuestSettings, target: Target, release) -> dict:
    """The JSON beside an image: everything a domain config needs to boot it."""
    disks = []
    if target.kind == "disk":
        disks.append({"role": "disk", "path": target.path, "vdev": f"{settings.devices}a", "format": "raw",
                      "size": target.size, "partitions": {"root": 1, **({"swap": 2} if target.swap else {})}})
    elif target.kind in ("file", "lv"):
        def dev(p):
            return f"/dev/{p}" if target.kind == "lv" else p
        disks.append({"role": "root", "path": dev(target.path), "vdev": settings.root_device, "format": "raw",
                      "fstype": target.fstype, "size": target.size})
        if target.swap:
            disks.append({"role": "swap", "path": dev(target.swap_path), "vdev": settings.swap_device,
                          "format": "raw", "size": target.swap})
    return {
        "format": SIDECAR_FORMAT,
        "name": settings.hostname.split(".", 1)[0],
        "distro": release.distro,
        "suite": release.name,
        "version": release.version,
        "status": release.status,
        "arch": spec_or_meta.get("arch"),
        "init": release.init,
        "target": target.kind,
        "disks": disks,
        "root": f"/dev/{settings.root_device}",
        "fstype": target.fstype,
        "console": "hvc0",
        "kernel_args": list(release.kernel_args),
        "guest": settings.public(),
        "base": spec_or_meta,
    }


def _plan_reader(spec: BaseSpec, settings: GuestSettings) -> TreeReader:
    """A stand-in for a tree not yet bootstrapped (--dry-run): what the base will hold."""
    rel = spec.release
    files = {"/etc/shadow": "root:*:19000:0:99999:7:::\n", "/etc/group": "root:x:0:\nshadow:x:42:\n"}
    if rel.init == "sysvinit":
        files["/etc/inittab"] = "id:2:initdefault:\n"
        files["/etc/securetty"] = "console\ntty1\n"
    if "openssh-server" in spec.include:
        files["/etc/ssh/sshd_config"] = ""
    return TreeReader(files.get, lambda path: [])


def plan(spec: BaseSpec, settings: GuestSettings, target: Target, *, refresh: bool = False,
         offline: bool = False) -> list[str]:
    """What a build would do: the commands and the files, without doing any of it."""
    entry = basecache.entry_for(spec, create=False)
    hit = basecache.is_cached(spec) and not refresh
    if not hit:
        basecache.check_can_bootstrap(spec, offline)
    rel = spec.release
    lines = [
        f"release:  {rel} [{rel.status}], init {rel.init}, network {rel.network}",
        f"arch:     {spec.arch}",
        f"mirror:   {spec.mirror}" + (f" (proxy {spec.proxy})" if spec.proxy else ""),
        f"keyring:  {spec.keyring}" if spec.keyring else "keyring:  NONE (--no-check-gpg: signatures NOT checked)",
        f"backend:  {spec.backend} ({spec.variant})",
        f"packages: {' '.join(spec.include) or '-'}" + (f"; excluded: {' '.join(spec.exclude)}" if spec.exclude else ""),
        f"cache:    {entry.tarball} ({'hit' if hit else 'miss: will bootstrap'})",
    ]
    if rel.kernel_args:
        lines.append(f"kernel:   the domain needs {' '.join(rel.kernel_args)} on its command line (old glibc)")
    fs_cached = None
    if target.kind == "file" and not target.preallocate and not refresh and hit:
        entry = fs_cache_entry(spec, target, create=False)
        fs_cached = entry.path if entry.record() is not None else None
    if fs_cached is not None:
        lines.append(f"clone:    {fs_cached} -> {target.path} (cached {target.fstype} of the base)")
        for line in describe(guest_files(rel, settings, _plan_reader(spec, settings))):
            lines.append("debugfs:  " + line)
        lines.append(f"run:      e2fsck -fn {target.path}")
        if target.swap:
            lines += [f"target:   sparse image {target.swap_path} ({format_size(target.swap)})",
                      f"target:   mkswap {target.swap_path}"]
        lines.append(f"write:    {target.sidecar}")
        return lines
    if not hit:
        argv, env = command(spec, "ROOT")
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if k == "http_proxy")
        lines.append("run:      " + (envs + " " if envs else "") + shlex.join(argv))
        lines.append(f"run:      tar {' '.join(basecache.TAR_OPTS)} --sort=name -C ROOT -cf {entry.tarball} .")
    else:
        lines.append(f"run:      tar {' '.join(basecache.TAR_OPTS)} -xpf {entry.tarball} -C ROOT")
    for line in describe(guest_files(rel, settings, _plan_reader(spec, settings))):
        lines.append("config:   " + line)
    lines += [f"target:   {line}" for line in _target_plan(target)]
    lines.append(f"write:    {target.sidecar}")
    return lines


def _target_plan(t: Target) -> list[str]:
    size = format_size(t.size) if t.size else ""
    mkfs = f"mkfs.{t.fstype} -F -q -d ROOT"
    if t.kind == "dir":
        return [f"rename ROOT {t.path}"]
    if t.kind == "file":
        out = [f"{'preallocated' if t.preallocate else 'sparse'} image {t.path} ({size})", f"{mkfs} {t.path}"]
        if t.swap:
            out += [f"sparse image {t.swap_path} ({format_size(t.swap)})", f"mkswap {t.swap_path}"]
        return out
    if t.kind == "disk":
        out = [f"disk image {t.path} ({size}), msdos table: 1 = {t.fstype}"
               + (f", 2 = swap ({format_size(t.swap)})" if t.swap else ""),
               f"{mkfs} {t.path} partition 1 (through a loop device)"]
        return out + ([f"mkswap {t.path} partition 2"] if t.swap else [])
    vg, lv = t.path.split("/", 1)
    out = [f"lvcreate -L {size} -n {lv} {vg}", f"{mkfs} /dev/{vg}/{lv}"]
    if t.swap:
        out += [f"lvcreate -L {format_size(t.swap)} -n {lv}-swap {vg}", f"mkswap /dev/{vg}/{lv}-swap"]
    return out


def set_fs_uuid(image: str | os.PathLike, uuid: str | None) -> None:
    """Give a cloned ext filesystem the UUID its fstab names (clones share their origin's)."""
    if uuid:
        run(["tune2fs", "-U", uuid, image], quiet=True)


def _make_target(root: Path, target: Target, undo: UndoStack, settings: GuestSettings) -> None:
    from provision import storage

    uuid, swap_uuid = settings.root_uuid, settings.swap_uuid

    if target.kind == "dir":
        os.rename(root, target.path)
        undo.rollback(f"remove {target.path}", remove_tree, target.path, made=target.path)
        return
    if target.kind == "file":
        with storage.building_image(target.path, target.size, preallocate=target.preallocate, undo=undo) as tmp:
            storage.make_fs(tmp, target.fstype, populate=root, uuid=uuid)
        _make_swap_beside(target, undo, swap_uuid)
        return
    if target.kind == "disk":
        total = target.size + (target.swap or 0) + 2 * MiB
        parts = [storage.PartSpec(target.size, fs=target.fstype, bootable=True)]
        if target.swap:
            parts.append(storage.PartSpec(None, fs="swap"))
        with storage.building_image(target.path, total, preallocate=target.preallocate, undo=undo) as tmp:
            storage.partition_image(tmp, "msdos", parts)
            with storage.loop_device(tmp, partscan=True) as loop:
                storage.make_fs(storage.partition_device(loop, 1), target.fstype, populate=root, uuid=uuid)
                if target.swap:
                    storage.make_swap(storage.partition_device(loop, 2), uuid=swap_uuid)
        return
    vg, lv = target.path.split("/", 1)
    dev = storage.create_lv(vg, lv, target.size, undo=undo)
    storage.make_fs(dev, target.fstype, populate=root, uuid=uuid)
    if target.swap:
        storage.make_swap(storage.create_lv(vg, f"{lv}-swap", target.swap, undo=undo), uuid=swap_uuid)


def fs_cache_entry(spec: BaseSpec, target: Target, create: bool = True) -> cache.Entry:
    """The cached pristine filesystem of a base, for file targets of one fstype and size:
    ``<key>.<fstype>.<size>.img``, stamped by ``.img.json`` (its extents' sha256)."""
    base = basecache.entry_for(spec, create=create)
    return cache.Entry(base.tarball.with_name(f"{base.key}.{target.fstype}.{target.size}.img"))


def fs_cache_path(spec: BaseSpec, target: Target, create: bool = True) -> Path:
    return fs_cache_entry(spec, target, create).path


def extents_sha256(path: str | os.PathLike) -> str:
    """sha256 of a sparse image's data extents and where they lie: the holes are not
    read, so a 2 GiB image holding 250 MB is checked in half a second."""
    from provision.storage.clone import _data_extents

    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        h.update(f"size {size}\n".encode())
        for start, end in _data_extents(fd, size):
            h.update(f"{start}-{end}\n".encode())
            offset = start
            while offset < end:
                block = os.pread(fd, min(4 << 20, end - offset), offset)
                if not block:
                    break
                h.update(block)
                offset += len(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def _store_fs_cache(image: Path, entry: cache.Entry) -> threading.Thread:
    """Keep a pristine copy of the filesystem made from the base; its stamp (the
    checksum) is written last, by the returned thread (join it), which also releases
    the entry's lock: a copy without its stamp is never used."""
    from provision import storage

    lock = entry.locked()
    lock.acquire()
    try:
        entry.remove()
        with cache.staging(entry.path) as tmp:
            storage.clone_file(image, tmp)
    except BaseException:
        lock.release()
        raise

    def stamp():
        try:
            entry.finish({"sha256": extents_sha256(entry.path)})
        except OSError as e:
            log.warn(f"could not checksum the cached filesystem {entry.path.name}: {e}")
        finally:
            lock.release()

    thread = threading.Thread(target=stamp, name="cache-fs-sum", daemon=True)
    thread.start()
    return thread


def staging_path(path: str) -> Path:
    """A fresh temporary name beside ``path``: an image is configured there and renamed
    into place, so nothing half-configured is ever at the final path."""
    p = Path(path)
    return p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")


def _configure_image(image: str | os.PathLike, release, settings: GuestSettings) -> None:
    """Configure the guest inside a finished ext image, without mounting it (debugfs)."""
    from provision.guest import ext4edit

    ext4edit.apply(image, guest_files(release, settings, ext4edit.reader(image)))


def _fsck_clean(image: str | os.PathLike) -> bool:
    return run(["e2fsck", "-fn", image], check=False, quiet=True).returncode == 0


def _make_swap_beside(target: Target, undo: UndoStack, uuid: str | None = None) -> None:
    from provision import storage

    if target.swap:
        with storage.building_image(target.swap_path, target.swap, preallocate=target.preallocate,
                                    undo=undo) as tmp:
            storage.make_swap(tmp, uuid=uuid)


def _from_fs_cache(spec: BaseSpec, settings: GuestSettings, target: Target, undo: UndoStack):
    """The warm path for file images: clone the cached pristine filesystem and configure
    the clone with debugfs. None when there is no intact cached filesystem."""
    from provision import storage

    entry = fs_cache_entry(spec, target)
    cached = entry.path
    try:
        expected = (entry.record() or {})["sha256"]
        meta = basecache.entry_for(spec).info()
    except (OSError, ValueError, KeyError):
        return None  # no pristine filesystem with its checksum (yet)
    check_room(target, meta)
    # The checksum runs beside the clone and debugfs, so checking costs little time.
    result: dict = {}

    def checksum():
        try:
            result["sha256"] = extents_sha256(cached)
        except OSError as e:
            result["error"] = e

    hasher = threading.Thread(target=checksum, daemon=True)
    hasher.start()
    tmp = staging_path(target.path)
    undo.rollback(f"remove {tmp}", tmp.unlink, True)
    problem = None
    try:
        storage.clone_file(cached, tmp)
        set_fs_uuid(tmp, settings.root_uuid)
        _configure_image(tmp, spec.release, settings)
        if not _fsck_clean(tmp):
            problem = "e2fsck finds errors in it"
    except ProvisionError as e:
        problem = str(e)
    finally:
        hasher.join()
    if problem is None and result.get("sha256") != expected:
        problem = "it fails its checksum"
    if problem is not None:
        log.warn(f"cached filesystem {cached.name} is broken ({problem}); rebuilding it from the base")
        entry.remove()
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, target.path)
    undo.rollback(f"remove {target.path}", Path(target.path).unlink, True, made=target.path)
    log.info(f"base {spec.suite}/{spec.arch}/{spec.variant} from the cache ({cached.name})")
    return meta


def build(spec: BaseSpec, settings: GuestSettings, target: Target, *, refresh: bool = False,
          quiet: bool = False, check_mirror: bool = True, after_configure=None,
          offline: bool = False) -> dict:
    """Make a configured guest at ``target``; returns the sidecar written beside it.
    ``offline``: the base must come from the cache; a miss is an error, not a bootstrap.

    ``after_configure(root)`` may change the configured tree before it is packed (the
    boot test uses it to add the host's own files). Nothing is left behind on failure or
    SIGINT/SIGTERM: no work tree, no mounts, no half-made image.

    A sparse file image also caches the pristine filesystem made from the base (per
    fstype and size); the next such image is a clone of it configured by debugfs.
    """
    from provision import storage

    if settings.fstype != target.fstype and target.kind != "dir":
        raise ProvisionError(f"settings say {settings.fstype} but the target is {target.fstype}")
    if bool(settings.swap) != bool(target.swap) and target.kind != "dir":
        raise ProvisionError("the fstab's swap entry and the target's swap disagree")
    target.check_free()
    fs_cache = target.kind == "file" and not target.preallocate and after_configure is None
    with UndoStack() as undo:
        meta = None
        if fs_cache and not refresh and fs_cache_entry(spec, target, create=False).record() is not None:
            with log.step(f"Cloning the cached {spec.release} filesystem and configuring {settings.hostname}"):
                meta = _from_fs_cache(spec, settings, target, undo)
                if meta is not None:
                    _make_swap_beside(target, undo, settings.swap_uuid)
                    status = "hit"
        if meta is None:
            parent = _work_parent(target, 512 * MiB)
            os.makedirs(parent, exist_ok=True)
            work = tempfile.mkdtemp(prefix=".xen-provision-root.", dir=parent)
            undo.cleanup(f"remove {work}", remove_tree, work)
            root = Path(work) / "root"
            with log.step(f"Base system: {spec.release} {spec.arch} {spec.variant}"):
                status, meta, storing = basecache.start(spec, root, refresh=refresh, quiet=quiet,
                                                        check_mirror=check_mirror, offline=offline)
            if storing is not None:
                # Runs before the tree is removed, also when we fail or are interrupted.
                undo.cleanup("finish caching the base", storing.wait)
                if not fs_cache:
                    storing.wait()  # the tree is about to be configured
            if target.size and target.size < needed_bytes(meta):
                raise ProvisionError(
                    f"image size {format_size(target.size)} is too small for this {spec.release} tree "
                    f"({meta['unpacked_bytes'] >> 20} MiB)",
                    hint=f"use --size {smallest_size(meta) >> 20}M or more")
            check_room(target, meta)
            if fs_cache:
                with log.step(f"Making the file target {target.path} and configuring {settings.hostname}"):
                    with storage.building_image(target.path, target.size, undo=undo) as tmp:
                        storage.make_fs(tmp, target.fstype, populate=root)
                        if storing is not None:
                            storing.wait()  # the tarball first: it removes older cached filesystems
                        summing = _store_fs_cache(tmp, fs_cache_entry(spec, target))
                        try:
                            set_fs_uuid(tmp, settings.root_uuid)
                            _configure_image(tmp, spec.release, settings)
                        finally:
                            with critical():  # its checksum file is written whole, or not at all
                                summing.join()
                    _make_swap_beside(target, undo, settings.swap_uuid)
            else:
                with log.step(f"Configuring {settings.hostname}"):
                    apply_to_dir(root, guest_files(spec.release, settings, dir_reader(root)))
                    if after_configure is not None:
                        after_configure(root)
                with log.step(f"Making the {target.kind} target {target.path}"):
                    _make_target(root, target, undo, settings)
        info = sidecar_info({**meta["manifest"], "cache": status}, settings, target, spec.release)
        atomic_write(target.sidecar, json.dumps(info, indent=2, sort_keys=True) + "\n")
        undo.rollback(f"remove {target.sidecar}", Path(target.sidecar).unlink, True, made=target.sidecar)
    return info
