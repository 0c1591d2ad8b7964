"""The pipeline: a base (cached), configured as a guest, made into its target.

    spec = resolve("bookworm")                                  # bootstrap.resolve
    settings = GuestSettings("vm1", Network.make(ip="192.0.2.10/24", gateway="192.0.2.1"))
    info = build(spec, settings, Target.file("/srv/xen/vm1.img", "2G", swap="512M"))

reads like the manual's appendix: make the disk, bootstrap, edit the files, done. The
tree is configured before the filesystem is made from it (``mkfs.ext4 -d``), so nothing
is mounted. Each image gets a JSON sidecar (``<image>.json``) saying how to boot it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shlex
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provision import cache, log, steps
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.guest import basecache, firstboot
from provision.guest.bootstrap import BaseSpec, command
from provision.guest.configure import (
    GuestSettings,
    TreeReader,
    apply_to_dir,
    describe,
    dir_reader,
    guest_files,
)
from provision.guest.target import Target, check_room, needed_bytes, smallest_size
from provision.run import run
from provision.sizes import MiB, format_size
from provision.steps import Step
from provision.undo import UndoStack, critical

SIDECAR_FORMAT = "xen-provision-image/1"


def spill_dir() -> Path:
    """Where a tree is unpacked when /dev/shm has no room for it (see _work_parent)."""
    return basecache.cache_root().parent / "tmp"


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
    return str(spill_dir())


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
        "guest_kernel": _guest_kernel(settings),
        "guest": settings.public(),
        "base": spec_or_meta,
    }


def _guest_kernel(settings: GuestSettings) -> dict | None:
    """What pvgrub2 boots in an image made with --guest-kernel: the package, and whether
    that kernel runs as a PVH guest (domain create chooses the type from it)."""
    kernel = settings.guest_kernel
    if kernel is None:
        return None
    return {"package": kernel.package, "pvh": kernel.pvh, "config": "/boot/grub/grub.cfg"}


def _plan_reader(spec: BaseSpec, settings: GuestSettings) -> TreeReader:
    """A stand-in for a tree not yet bootstrapped (--dry-run): what the base will hold."""
    rel = spec.release
    files = {"/etc/shadow": "root:*:19000:0:99999:7:::\n", "/etc/group": "root:x:0:\nsudo:x:27:\nshadow:x:42:\n",
             "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", "/etc/gshadow": "root:*::\nsudo:*::\n"}
    if rel.init == "sysvinit":
        files["/etc/inittab"] = "id:2:initdefault:\n"
        files["/etc/securetty"] = "console\ntty1\n"
    if "openssh-server" in spec.include:
        files["/etc/ssh/sshd_config"] = ""
    return TreeReader(files.get, lambda path: [])


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
            storage.make_fs(tmp, target.fstype, populate=root, uuid=uuid, growable=True)
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
                storage.make_fs(storage.partition_device(loop, 1), target.fstype, populate=root, uuid=uuid,
                                growable=True)
                if target.swap:
                    storage.make_swap(storage.partition_device(loop, 2), uuid=swap_uuid)
        return
    vg, lv = target.path.split("/", 1)
    dev = storage.create_lv(vg, lv, target.size, undo=undo)
    storage.make_fs(dev, target.fstype, populate=root, uuid=uuid, growable=True)
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


class _CacheBroken(Exception):
    """The cached filesystem failed its checks (and is removed): build from the base."""


@dataclass
class _Work:
    """The mutable state of one build, shared by its steps (as mkosi's Context)."""

    undo: UndoStack
    root: Path | None = None   # the configured tree, on the paths through a tree
    meta: dict | None = None   # the base's description (its manifest, sizes)
    status: str = "hit"        # where the base came from: "hit" (cache) or "miss"
    storing: basecache.Storing | None = None
    info: dict | None = None   # the sidecar, once written
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Build:
    """One guest build: what it is made of and where it goes, parsed and checked.
    ``plan()`` and ``run()`` walk the same :meth:`steps`.

    The fstab's filesystem type and swap come from the target, the one source of them.
    ``reserve``: bytes more that must be free in an LV target's VG (a template saved
    beside it). ``after_configure(root)`` may change the configured tree before it is
    packed (the boot test adds the host's own files)."""

    spec: BaseSpec
    settings: GuestSettings
    target: Target
    refresh: bool = False
    offline: bool = False
    quiet: bool = False
    check_mirror: bool = True
    after_configure: Callable[[Path], None] | None = None
    reserve: int = 0

    def __post_init__(self):
        object.__setattr__(self, "settings", self.settings.on(self.target))

    @property
    def _fs_cacheable(self) -> bool:
        """A sparse file image, configured only by us: its pristine filesystem is cached."""
        t = self.target
        return t.kind == "file" and not t.preallocate and self.after_configure is None

    def _base_cached(self) -> bool:
        return not self.refresh and basecache.is_cached(self.spec)

    def _fs_cached(self) -> bool:
        return (self._fs_cacheable and self._base_cached()
                and fs_cache_entry(self.spec, self.target, create=False).record() is not None)

    def _header(self, base_hit: bool) -> list[str]:
        spec, rel = self.spec, self.spec.release
        entry = basecache.entry_for(spec, create=False)
        lines = [
            f"release:  {rel} [{rel.status}], init {rel.init}, network {rel.network}",
            f"arch:     {spec.arch}",
            f"mirror:   {spec.mirror}" + (f" (proxy {spec.proxy})" if spec.proxy else ""),
            f"keyring:  {spec.keyring}" if spec.keyring else "keyring:  NONE (--no-check-gpg: signatures NOT checked)",
            f"backend:  {spec.backend} ({spec.variant})",
            f"packages: {' '.join(spec.include) or '-'}"
            + (f"; excluded: {' '.join(spec.exclude)}" if spec.exclude else ""),
            f"cache:    {entry.tarball} ({'hit' if base_hit else 'miss: will bootstrap'})",
        ]
        if rel.kernel_args:
            lines.append(f"kernel:   the domain needs {' '.join(rel.kernel_args)} on its command line (old glibc)")
        return lines

    def steps(self, *, fs_hit: bool, base_hit: bool) -> list[Step]:
        """The build, step by step: from the cached filesystem (``fs_hit``), or from the
        base (from the cache when ``base_hit``, else bootstrapped)."""
        spec, settings, t = self.spec, self.settings, self.target
        config = describe(guest_files(spec.release, settings, _plan_reader(spec, settings)))
        swap = [] if not (t.swap and t.kind == "file") else [Step(
            "swap", None, (f"target:   sparse image {t.swap_path} ({format_size(t.swap)})",
                           f"target:   mkswap {t.swap_path}"),
            lambda w: _make_swap_beside(t, w.undo, settings.swap_uuid))]
        sidecar = Step("sidecar", None, (f"write:    {t.sidecar}",), self._write_sidecar)
        fb = settings.firstboot
        if fb is not None and fb.runs_in_chroot:  # locale-gen, roles: in the finished image
            sidecar = [Step("customise", f"Customising {settings.hostname} in a chroot",
                            tuple(firstboot.plan(fb)), self._customise), sidecar]
        else:
            sidecar = [sidecar]
        if fs_hit:
            cached = fs_cache_entry(spec, t, create=False).path
            return [Step("clone", f"Cloning the cached {spec.release} filesystem and configuring {settings.hostname}",
                         (f"clone:    {cached} -> {t.path} (cached {t.fstype} of the base)",
                          *("debugfs:  " + line for line in config), f"run:      e2fsck -fn {t.path}"),
                         self._clone), *swap, *sidecar]
        tarball = basecache.entry_for(spec, create=False).tarball
        if base_hit:
            base = [f"run:      tar {' '.join(basecache.TAR_OPTS)} -xpf {tarball} -C ROOT"]
        else:
            argv, env = command(spec, "ROOT")
            envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if k == "http_proxy")
            base = ["run:      " + (envs + " " if envs else "") + shlex.join(argv),
                    f"run:      tar {' '.join(basecache.TAR_OPTS)} --sort=name -C ROOT -cf {tarball} ."]
        out = [Step("base", f"Base system: {spec.release} {spec.arch} {spec.variant}", tuple(base), self._base)]
        if self._fs_cacheable:
            image = _target_plan(t)[:2]  # the image and its filesystem; the swap is a step of its own
            store = fs_cache_entry(spec, t, create=False).path
            out.append(Step("filesystem", f"Making the file target {t.path} and configuring {settings.hostname}",
                              (*(f"target:   {line}" for line in image),
                               f"cache:    {store} (the pristine filesystem, for the next image like it)",
                               *("config:   " + line for line in config)),
                              self._filesystem))
            return [*out, *swap, *sidecar]
        return [*out,
                Step("configure", f"Configuring {settings.hostname}", tuple("config:   " + line for line in config),
                     self._configure),
                Step("target", f"Making the {t.kind} target {t.path}",
                     tuple(f"target:   {line}" for line in _target_plan(t)),
                     lambda w: _make_target(w.root, t, w.undo, settings)),
                *sidecar]

    def plan(self) -> list[str]:
        """What :meth:`run` would do, checked as far as it can be without root: the
        commands and the files, without doing any of it."""
        if self.target.kind != "lv":  # an LV target is checked against its VG by the real run
            self.target.check_free(self.reserve)
        base_hit = self._base_cached()
        if not base_hit:
            basecache.check_can_bootstrap(self.spec, self.offline)
        return self._header(base_hit) + steps.describe(self.steps(fs_hit=self._fs_cached(), base_hit=base_hit))

    def run(self) -> tuple[dict, dict[str, float]]:
        """Make the guest; returns its sidecar and the seconds each step took. Nothing
        is left behind on failure or SIGINT/SIGTERM: no work tree, no mounts, no
        half-made image."""
        self.target.check_free(self.reserve)
        with UndoStack() as undo:
            work = _Work(undo)
            try:
                steps.run(self.steps(fs_hit=self._fs_cached(), base_hit=self._base_cached()), work,
                          work.seconds)
            except _CacheBroken:
                steps.run(self.steps(fs_hit=False, base_hit=self._base_cached()), work, work.seconds)
        log.debug(f"steps: {steps.table(work.seconds)}")
        return work.info, work.seconds

    # -- the steps' actions --------------------------------------------------------------

    def _clone(self, work: _Work) -> None:
        work.meta = _from_fs_cache(self.spec, self.settings, self.target, work.undo)
        if work.meta is None:
            raise _CacheBroken
        work.status = "hit"

    def _base(self, work: _Work) -> None:
        spec, t = self.spec, self.target
        parent = _work_parent(t, 512 * MiB)
        os.makedirs(parent, exist_ok=True)
        tree = tempfile.mkdtemp(prefix=".xen-provision-root.", dir=parent)
        work.undo.cleanup(f"remove {tree}", remove_tree, tree)
        work.root = Path(tree) / "root"
        work.status, work.meta, work.storing = basecache.start(
            spec, work.root, refresh=self.refresh, quiet=self.quiet, check_mirror=self.check_mirror,
            offline=self.offline, seconds=work.seconds)
        if work.storing is not None:
            # Runs before the tree is removed, also when we fail or are interrupted.
            work.undo.cleanup("finish caching the base", work.storing.wait)
            if not self._fs_cacheable:
                work.storing.wait()  # the tree is about to be configured
        if t.size and t.size < needed_bytes(work.meta):
            raise ProvisionError(
                f"image size {format_size(t.size)} is too small for this {spec.release} tree "
                f"({work.meta['unpacked_bytes'] >> 20} MiB)",
                hint=f"use --size {smallest_size(work.meta) >> 20}M or more")
        check_room(t, work.meta)

    def _filesystem(self, work: _Work) -> None:
        """The file image made from the unconfigured base, its pristine copy cached,
        then configured with debugfs."""
        from provision import storage

        spec, settings, t = self.spec, self.settings, self.target
        part = functools.partial(steps.part, work.seconds)
        with storage.building_image(t.path, t.size, undo=work.undo) as tmp:
            with part("filesystem: mkfs"):
                storage.make_fs(tmp, t.fstype, populate=work.root, growable=True)
            if work.storing is not None:
                with part("filesystem: waiting for the base's cache tarball"):
                    work.storing.wait()  # the tarball first: it removes older cached filesystems
            with part("filesystem: cache copy"):
                summing = _store_fs_cache(tmp, fs_cache_entry(spec, t))
            try:
                with part("filesystem: configure (debugfs)"):
                    set_fs_uuid(tmp, settings.root_uuid)
                    _configure_image(tmp, spec.release, settings)
            finally:
                with part("filesystem: waiting for the cache copy's checksum"), critical():
                    summing.join()  # its checksum file is written whole, or not at all

    def _configure(self, work: _Work) -> None:
        apply_to_dir(work.root, guest_files(self.spec.release, self.settings, dir_reader(work.root)))
        if self.after_configure is not None:
            self.after_configure(work.root)

    def _customise(self, work: _Work) -> None:
        """locale-gen and the roles, in the made image: a failure removes it (rollback)."""
        t = self.target
        source = f"/dev/{t.path}" if t.kind == "lv" else t.path
        firstboot.customise(source, self.spec.release, self.settings, t.path,
                            partition=1 if t.kind == "disk" else None)

    def _write_sidecar(self, work: _Work) -> None:
        t = self.target
        work.info = sidecar_info({**work.meta["manifest"], "cache": work.status}, self.settings, t,
                                 self.spec.release)
        atomic_write(t.sidecar, json.dumps(work.info, indent=2, sort_keys=True) + "\n")
        work.undo.rollback(f"remove {t.sidecar}", Path(t.sidecar).unlink, True, made=t.sidecar)


def plan(spec: BaseSpec, settings: GuestSettings, target: Target, *, refresh: bool = False,
         offline: bool = False, reserve: int = 0) -> list[str]:
    """What a build would do: the commands and the files, without doing any of it."""
    return Build(spec, settings, target, refresh=refresh, offline=offline, reserve=reserve).plan()


def build(spec: BaseSpec, settings: GuestSettings, target: Target, *, refresh: bool = False,
          quiet: bool = False, check_mirror: bool = True, after_configure=None,
          offline: bool = False, reserve: int = 0) -> dict:
    """Make a configured guest at ``target``; returns the sidecar written beside it.
    ``offline``: the base must come from the cache; a miss is an error, not a bootstrap.

    A sparse file image also caches the pristine filesystem made from the base (per
    fstype and size); the next such image is a clone of it configured by debugfs.
    """
    info, _ = Build(spec, settings, target, refresh=refresh, quiet=quiet, check_mirror=check_mirror,
                    after_configure=after_configure, offline=offline, reserve=reserve).run()
    return info
