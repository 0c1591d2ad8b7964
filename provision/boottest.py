"""The proof that it boots: assemble a whole Xen host from this project's outputs and
boot it under QEMU (TCG), reading the serial console.

    python -m provision boottest [--dist dist/install] [--sched credit] [--out dist/boottest]

Stages, each timed, each cached under ``$XEN_PROVISION_CACHE/boottest`` by a key of its
inputs so that a rerun with nothing changed goes straight to the boot:

1. root filesystems: the host's (dom0's) and a guest's, made as ``image --debootstrap``
   makes them (provision.debootstrap: the host's own suite and mirror, the base from
   that library's cache, configured as a Xen domain), then adapted to their roles;
2. the host disk image: a partitioned (pyparted) disk with an ext4 root holding that
   root filesystem, ``dist/install`` installed by ``install.sh`` with the root as
   DESTDIR, our GRUB entry as the default (``dom0_mem``, ``com1``, ``console``,
   ``sched``), GRUB installed for i386-pc, a guest image and its xl config linked into
   ``/etc/xen/auto``, xendomains enabled;
3. the boot, with a second, empty disk for the LVM checks, run in dom0 from a small
   disk holding this checkout's package (made for every boot: ``code_disk``); every
   wait is bounded and reported with the time since power-on; the serial log is kept
   in ``--out``.

Without ``dist/install`` (before ``doit world`` has run) Debian's own hypervisor and
kernel stand in, so the harness and the image assembly can be proven on their own;
the report says which was booted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provision import log
from provision.cache import cache_dir, manifest_key, sha256_file
from provision.errors import ProvisionError
from provision.fsutil import atomic_write, within
from provision.qemu import Disk, Machine
from provision.run import require, run
from provision.sizes import parse_size
from provision.undo import UndoStack

REPO = Path(__file__).resolve().parent.parent

# dom0's userland. Xen's tools come from dist/install when `doit world` built them,
# else from Debian's package of the same Xen series.
HOST_PACKAGES = [
    "systemd-sysv", "udev", "kmod", "procps", "iproute2", "bridge-utils", "lvm2",
    "e2fsprogs", "python3",
    # provision.debootstrap.lvcheck: image --debootstrap renders the guest's files with jinja2.
    "python3-jinja2",
    # provision.storage.lvmcheck's thin pool: lvm2 runs thin_check when it activates one.
    "thin-provisioning-tools",
    # What our own xl, xenstored and libxl link against (readelf -d dist/install/usr/...).
    "libyajl2", "libnl-3-200", "libnl-route-3-200", "libzstd1", "liblzma5", "libbz2-1.0",
    "zlib1g", "libuuid1",
]
DEBIAN_XEN_TOOLS = ["xen-utils-4.17", "xen-utils-common", "xenstore-utils"]
# Stand-ins until dist/install exists: Debian's hypervisor and kernel (with an initrd).
DEBIAN_XEN_BOOT = ["xen-hypervisor-4.17-amd64", "linux-image-amd64", "initramfs-tools"]
GUEST_PACKAGES = ["systemd-sysv", "udev"]


@dataclass(frozen=True)
class Settings:
    """What the boot test builds and boots; validated once by :func:`settings_from_args`."""

    dist: Path | None                 # dist/install, or None for Debian's Xen
    out: Path                         # artifacts: serial log, report
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    sched: str = "credit"             # not Xen's default (credit2), so the check means something
    dom0_mem: str = "1024M,max:1024M"
    memory: str = "3G"
    smp: int = 2
    guest_memory: int = 256           # MiB
    guest_disk: str | None = None     # override the guest's disk spec (the broken-input test)
    timeout: float = 300.0            # for each long wait (boot to multi-user, guest boot)
    host_size: str = "4G"
    lvm_size: str = "1G"
    refresh: bool = False
    keep: bool = False                # leave QEMU's disk image cached even on failure
    extra_checks: bool = True         # xl save/restore, mem-set, LVM after the boot checks
    lvmcheck: bool = True             # the full provision.storage.lvmcheck (see extra_checks)
                                      # and image --debootstrap into LVM (debootstrap.lvcheck)
    lvimage_size: str = "2G"          # the scratch disk of debootstrap.lvcheck


@dataclass
class Result:
    """What a run measured: per-stage seconds, the checks, where the log is."""

    log_path: Path
    stages: dict[str, float] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    ok: bool = False
    booted: str = ""

    def summary(self) -> str:
        lines = [f"boot test: {'PASS' if self.ok else 'FAIL'} ({self.booted})"]
        lines += [f"  stage {name}: {secs:.1f}s" for name, secs in self.stages.items()]
        lines += [f"  {c}" for c in self.checks]
        lines.append(f"  serial log: {self.log_path}")
        return "\n".join(lines)


@contextlib.contextmanager
def _stage(result: Result, name: str, title: str):
    start = time.monotonic()
    with log.step(title):
        try:
            yield
        finally:
            result.stages[name] = round(time.monotonic() - start, 1)


# -- stage 1: root filesystems -----------------------------------------------------------

def base_spec(settings: Settings, packages: list[str]):
    """The base ``image --debootstrap SUITE`` bootstraps (provision.debootstrap's
    ``resolve``): the suite's minbase from the mirror, with ``packages`` and what the
    release needs to boot as a domain."""
    from provision.debootstrap import resolve
    return resolve(settings.suite, mirror=settings.mirror, include=packages)


def bootstrap_root(spec, hostname: str, dest: Path, *, refresh: bool = False) -> None:
    """A root tree in the new directory ``dest`` as ``image --debootstrap`` makes one: the
    base unpacked from provision.debootstrap's cache (bootstrapped into it on a miss),
    then configured by that library as a Xen domain called ``hostname`` (hostname,
    hosts, resolver, network, fstab, hvc0 getty, apt sources, empty machine-id)."""
    from provision.debootstrap import GuestSettings, apt_sources, basecache, configure
    basecache.obtain(spec, dest, refresh=refresh, quiet=True)
    configure(dest, spec.release,
              GuestSettings(hostname, apt_sources=apt_sources(spec.release, spec.mirror)))


# What of provision.debootstrap shapes a configured tree; the base itself is keyed by
# the library's cache (basecache.entry_for).
DEBOOTSTRAP_FILES = ("bootstrap.py", "basecache.py", "configure.py", "suites.py", "*.j2")


def _base_key(spec) -> str:
    from provision.debootstrap import basecache
    return basecache.entry_for(spec).key


def _library_digest() -> str:
    lib = REPO / "provision" / "debootstrap"
    files = sorted({p for pattern in DEBOOTSTRAP_FILES for p in lib.glob(pattern)})
    return manifest_key({p.name: sha256_file(p) for p in files})


def host_packages(settings: Settings) -> list[str]:
    pkgs = list(HOST_PACKAGES)
    if not _dist_has_tools(settings.dist):
        pkgs += DEBIAN_XEN_TOOLS
    if settings.dist is None:
        pkgs += DEBIAN_XEN_BOOT
    return pkgs


def _dist_has_tools(dist: Path | None) -> bool:
    return dist is not None and (dist / "usr/sbin/xl").exists()


# -- what gets booted ---------------------------------------------------------------------

@dataclass(frozen=True)
class BootFiles:
    """The hypervisor and kernels to boot, as paths inside the host image."""

    xen: str                  # /boot/xen-4.17.5.gz
    xen_config: str | None    # /boot/xen-4.17.5.config (its schedulers), None for Debian's
    dom0_kernel: str
    dom0_initrd: str | None
    guest_kernel: str
    guest_initrd: str | None
    origin: str               # "dist/install" or "Debian packages"


def _newest(paths: list[Path]) -> Path | None:
    return sorted(paths, key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)])[-1] \
        if paths else None


def find_boot_files(root: Path, dist: Path | None) -> BootFiles:
    """Pick the hypervisor and kernels out of the assembled root's /boot."""
    boot = root / "boot"
    if dist is not None:
        xen = _newest([p for p in boot.glob("xen-*.gz") if re.fullmatch(r"xen-\d+\.\d+\.\d+.*\.gz", p.name)
                       and not p.is_symlink()])
        xen0 = _newest(list(boot.glob("vmlinuz-*-xen0")))
        xenu = _newest(list(boot.glob("vmlinuz-*-xenU")))
        missing = [n for n, p in (("xen-<version>.gz", xen), ("vmlinuz-*-xen0", xen0),
                                  ("vmlinuz-*-xenU", xenu)) if p is None]
        if missing:
            raise ProvisionError(f"{dist} has no {', '.join(missing)} in boot/",
                                 hint="run `doit world` first (or boot Debian's Xen without --dist)")
        config = boot / (xen.name[:-3] + ".config")
        return BootFiles(f"/boot/{xen.name}", f"/boot/{config.name}" if config.exists() else None,
                         f"/boot/{xen0.name}", None, f"/boot/{xenu.name}", None, "dist/install")
    xen = _newest([p for p in boot.glob("xen-*.gz") if not p.is_symlink()])
    kernel = _newest([p for p in boot.glob("vmlinuz-*") if not p.is_symlink()])
    if xen is None or kernel is None:
        raise ProvisionError("the host root has no Debian hypervisor or kernel in /boot")
    initrd = boot / kernel.name.replace("vmlinuz-", "initrd.img-")
    config = boot / (xen.name[:-3] + ".config")
    return BootFiles(f"/boot/{xen.name}", f"/boot/{config.name}" if config.exists() else None, f"/boot/{kernel.name}", f"/boot/{initrd.name}",
                     f"/boot/{kernel.name}", f"/boot/{initrd.name}", "Debian packages")


# -- stage 2: the host image -------------------------------------------------------------

HOSTNAME = "xenhost"
GUEST = "guest1"
ROOT_LABEL = "xenroot"
GUEST_DEVICE = "/dev/vdc"   # the guest image, QEMU's third disk (see guest_image)
GUEST_VDEV = "xvda1"        # as `image --debootstrap` and its fstab name the root
GUEST_SIZE = "1G"
BROKEN = "broken1"
BROKEN_DISK = "format=raw, vdev=xvda, access=rw, target=/var/lib/xen/images/missing.img"
DOM0_ROOT = "/dev/vda1"   # no initrd with our xen0, so no LABEL=: the first virtio disk


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    atomic_write(within(root, path), text, mode)


def _link(root: Path, path: str, target: str) -> None:
    link = within(root, path)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _no_root_password(root: Path) -> None:
    # A throwaway test machine: root logs in on the serial console without a password
    # (pam_unix's nullok). Never done to anything but the boot test's own images.
    shadow = within(root, "/etc/shadow")
    text = re.sub(r"^root:[^:]*:", "root::", shadow.read_text(), count=1, flags=re.M)
    atomic_write(shadow, text, 0o640)


def enable_unit(root: Path, unit: str) -> None:
    """`systemctl enable` offline: link the unit into the targets its [Install] names."""
    for d in ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"):
        path = root / d / unit
        if path.exists():
            break
    else:
        raise ProvisionError(f"systemd unit {unit} is not in the image")
    wanted = re.findall(r"^(?:WantedBy|RequiredBy)=(.+)$", path.read_text(), re.M)
    for target in " ".join(wanted).split() or ["multi-user.target"]:
        _link(root, f"/etc/systemd/system/{target}.wants/{unit}", f"/{path.relative_to(root)}")


# Housekeeping a test boot does not need, each costly under TCG.
MASKED = ["e2scrub_reap.service", "e2scrub_all.timer", "fstrim.timer", "apt-daily.timer",
          "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "getty-static.service",
          "systemd-tmpfiles-clean.timer"] + [f"getty@tty{i}.service" for i in range(1, 7)]
# dom0 has no NIC here: networkd (which the library enables for a guest) would only cost
# time, and its wait-online holds network-online.target, which xendomains wants, for 2 min.
DOM0_MASKED = ["systemd-networkd.service", "systemd-networkd.socket",
               "systemd-networkd-wait-online.service"]


def _mask(root: Path, units: list[str]) -> None:
    for unit in units:
        _link(root, f"/etc/systemd/system/{unit}", "/dev/null")


def configure_guest(root: Path) -> None:
    """The configured guest tree as a test guest: no housekeeping, root without password."""
    _mask(root, MASKED)
    _no_root_password(root)


def guest_domain(settings: Settings, files: BootFiles, name: str = GUEST,
                 disk: str | None = None) -> str:
    """A guest's xl config, rendered by provision/domain."""
    from provision.domain.model import Domain
    from provision.domain.render import domain_config
    disk = disk or settings.guest_disk or \
        f"format=raw, vdev={GUEST_VDEV}, access=rw, target={GUEST_DEVICE}"
    values = {"name": name, "memory": settings.guest_memory, "vcpus": 1,
              "kernel": files.guest_kernel, "root": f"/dev/{GUEST_VDEV} ro", "extra": "console=hvc0",
              "disk": [disk], "on_crash": "preserve"}
    if files.guest_initrd:
        values["ramdisk"] = files.guest_initrd
    return domain_config(Domain.from_config(values, "boottest"), f"/etc/xen/{name}.cfg")


def grub_config(settings: Settings, root: Path, files: BootFiles) -> tuple[str, str]:
    """/boot/grub/grub.cfg: GRUB on the serial port, our entry as the default.

    Returns the config and the Xen command line it carries (what Xen must echo).
    """
    from provision.grub.cmdline import parse_dom0_options, parse_xen_options, schedulers_from_config
    from provision.grub.render import make_entry, render_grub2
    schedulers = schedulers_from_config(within(root, files.xen_config)) if files.xen_config else None
    xen = parse_xen_options([f"dom0_mem={settings.dom0_mem}", "com1=115200,8n1", "console=com1",
                             f"sched={settings.sched}"], schedulers=schedulers)
    dom0 = parse_dom0_options([f"root={DOM0_ROOT}", "ro", "console=hvc0"], xen=xen)
    entry = make_entry(files.xen, files.dom0_kernel, xen, dom0, initrd=files.dom0_initrd,
                       id="xen-provision-boottest")
    header = ("serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n"
              "terminal_input serial\nterminal_output serial\nset timeout=1\n")
    return header + render_grub2([entry], default=entry.id), str(xen)


def configure_host(settings: Settings, root: Path, files: BootFiles) -> str:
    """Everything dom0 needs beyond its packages and the library's configuration (see
    bootstrap_root); returns the Xen command line."""
    # The root is the host disk's first partition, not a domain's xvda1.
    _write(root, "/etc/fstab", f"LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n")
    _no_root_password(root)
    _mask(root, MASKED + DOM0_MASKED)
    # Guest console output goes to /var/log/xen/console/guest-NAME.log.
    within(root, "/var/log/xen/console").mkdir(parents=True, exist_ok=True)
    # (XENCONSOLED_TRACE for Xen's xencommons, XENCONSOLED_ARGS for Debian's init script.)
    for default in ("/etc/default/xencommons", "/etc/default/xen"):
        path = within(root, default)
        old = path.read_text() if path.exists() else ""
        old = re.sub(r"^XENCONSOLED_(TRACE|ARGS)=.*\n", "", old, flags=re.M)
        atomic_write(path, old + "XENCONSOLED_TRACE=guest\n"
                     'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"\n')
    _write(root, f"/etc/xen/{GUEST}.cfg", guest_domain(settings, files))
    from provision.domain import autostart
    from provision.domain.paths import Paths
    autostart.enable(Paths(root=root), GUEST)
    # A deliberately broken guest, linked into auto/ only by the check that expects
    # xendomains to report it.
    _write(root, f"/etc/xen/{BROKEN}.cfg", guest_domain(settings, files, name=BROKEN, disk=BROKEN_DISK))
    grub_cfg, xen_cmdline = grub_config(settings, root, files)
    _write(root, "/boot/grub/grub.cfg", grub_cfg)
    return xen_cmdline


GRUB_I386_PC = Path("/usr/lib/grub/i386-pc")


def stage_grub_modules(root: Path) -> None:
    """GRUB's i386-pc modules into the image's /boot/grub, as grub-install copies them."""
    dest = within(root, "/boot/grub/i386-pc")
    dest.mkdir(parents=True, exist_ok=True)
    for f in GRUB_I386_PC.iterdir():
        if f.suffix in (".mod", ".lst", ".img"):
            shutil.copyfile(f, dest / f.name)


def install_grub_bios(disk: Path, prefix: str = "(hd0,msdos1)/boot/grub") -> None:
    """Make an msdos-partitioned image boot GRUB (i386-pc) from its MBR.

    What grub-install does through grub-bios-setup, done on the image file: grub-install
    cannot map a loop device's partition to a BIOS drive (grub-probe: "cannot find a
    GRUB drive for /dev/loopNp1" - the loop driver has no HDIO_GETGEO). GRUB's own
    grub-mkimage makes core.img; boot.img goes into the MBR's first 440 bytes (the
    disk signature and partition table stay), core.img into the gap before the first
    partition, and the two block pointers grub-bios-setup writes are set the same way.
    """
    require("grub-mkimage")
    with contextlib.ExitStack() as stack:
        import tempfile
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="grub-core.")))
        core_path = tmp / "core.img"
        run(["grub-mkimage", "-O", "i386-pc", "-d", GRUB_I386_PC, "-o", core_path, "-p", prefix,
             "biosdisk", "part_msdos", "ext2"], quiet=True)
        core = bytearray(core_path.read_bytes())
    boot = bytearray((GRUB_I386_PC / "boot.img").read_bytes())
    nsec = -(-len(core) // 512)
    core += bytes(nsec * 512 - len(core))
    with open(disk, "r+b") as f:
        mbr = bytearray(f.read(512))
        first_part = int.from_bytes(mbr[0x1BE + 8:0x1BE + 12], "little")
        if mbr[0x1FE:] != b"\x55\xaa" or first_part < 1 + nsec:
            raise ProvisionError(f"{disk}: no msdos partition table with room for GRUB's "
                                 f"{nsec} sectors before the first partition")
        boot[0x5C:0x64] = (1).to_bytes(8, "little")   # core.img's first sector (diskboot)
        boot[0x64] = 0xFF                              # boot from the drive the BIOS says
        boot[0x66:0x68] = b"\x90\x90"                 # a hard disk: skip the floppy probe
        # diskboot's blocklist: the rest of core.img, sectors 2.., loaded at 0x820:0.
        core[500:512] = ((2).to_bytes(8, "little") + (nsec - 1).to_bytes(2, "little")
                         + (0x820).to_bytes(2, "little"))
        mbr[:0x1B8] = boot[:0x1B8]
        f.seek(0)
        f.write(mbr)
        f.write(core)
        f.flush()
        os.fsync(f.fileno())


def _image_code() -> str:
    """This module's text up to the boot stage: what shapes the images."""
    return Path(__file__).read_text().split("\n# -- stage 3:")[0]


def _code_digest() -> str:
    """Our own code that shapes the image is one of its inputs: this module up to the
    boot stage (so changing a check does not rebuild the image), install.sh, and the
    libraries that render and write what goes into the image."""
    digest = {"boottest": manifest_key({"text": _image_code()}), "debootstrap": _library_digest()}
    files = [REPO / "install.sh"]
    for sub in ("grub", "domain", "storage"):
        files += sorted((REPO / "provision" / sub).rglob("*"))
    # The LVM code runs from the code disk (code_disk), not from the image.
    files = [p for p in files if p.name not in ("lvm.py", "lvmcheck.py")]
    digest.update({str(p.relative_to(REPO)): sha256_file(p) for p in files if p.is_file()
                   and "__pycache__" not in p.parts})
    return manifest_key(digest)


def _dist_digest(dist: Path | None) -> str | None:
    if dist is None:
        return None
    entries = {}
    for p in sorted(dist.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            entries[str(p.relative_to(dist))] = [st.st_size, st.st_mtime_ns]
    return manifest_key(entries)


def install_dist(dist: Path, root: Path) -> str:
    """dist/install into the image root the way a user installs it: install.sh DESTDIR."""
    script = REPO / "install.sh"
    if script.exists():
        run(["sh", script, "--from", dist, "-q", root], quiet=True)
        return "install.sh"
    # install.sh not there yet: the same tree copied as it stands.
    run(["cp", "-a", "--no-preserve=ownership", f"{dist}/.", root], quiet=True)
    return "cp -a (no install.sh)"


def enable_xen_services(root: Path) -> str:
    """xenstored and xenconsoled (whichever tools are installed), and our xendomains."""
    from provision.domain import xendomains
    from provision.domain.paths import Paths
    units = [u for u in ("proc-xen.mount", "xenstored.service", "xenconsoled.service",
                         "xen-init-dom0.service")
             if any((root / d / u).exists() for d in ("lib/systemd/system", "usr/lib/systemd/system"))]
    for unit in units:
        enable_unit(root, unit)
    if not units and within(root, "/etc/init.d/xencommons").exists():
        # Xen built without systemd units: its LSB script, started through systemd's
        # sysv generator from the links update-rc.d would make.
        for level in "2345":
            _link(root, f"/etc/rc{level}.d/S01xencommons", "../init.d/xencommons")
        units.append("xencommons (init script)")
    # Ours replaces a distribution's xendomains: its settings file has other variables.
    for old in ("/etc/default/xendomains", "/etc/init.d/xendomains",
                "/lib/systemd/system/xendomains.service"):
        with contextlib.suppress(FileNotFoundError):
            within(root, old).unlink()
    for link in root.glob("etc/rc?.d/[SK][0-9][0-9]xendomains"):
        link.unlink()
    paths = Paths(root=root)
    xendomains.install(paths, xendomains.Settings(flavour="debian", save_dir=""))
    done = xendomains.enable(paths, "systemd")  # "auto" also runs insserv, which a systemd-only root fails
    return ", ".join(units + ["xendomains: " + "; ".join(done)])


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:   # pruned by a concurrent run
        return 0.0


def _prune(images: Path, keep: Path, newest: int = 2) -> None:
    """Drop all but the ``newest`` most recently used images of ``keep``'s kind (host-*,
    guest-*), never ``keep`` itself: each is gigabytes (sparse), and a concurrent run may
    be booting one of the others (a cache hit marks an image used, see _use)."""
    kind = keep.name.split("-", 1)[0]
    others = sorted((p for p in images.glob(f"{kind}-*.img") if p != keep), key=_mtime,
                    reverse=True)
    for image in others[newest - 1:]:
        image.unlink(missing_ok=True)
        image.with_suffix(".json").unlink(missing_ok=True)


def _use(image: Path) -> Path:
    """A cached image about to be booted: the newest by mtime, so _prune keeps it."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(image)
    return image


def _work_root(name: str, undo: UndoStack) -> Path:
    """``<cache>/boottest/work/NAME/root`` for a tree being built: the work directory
    emptied of what an interrupted run left, and removed again when ``undo`` closes."""
    work = Path(cache_dir("boottest", "work")) / name
    if work.exists():
        shutil.rmtree(work)
    undo.cleanup(f"remove {work}", shutil.rmtree, work, True)
    return work / "root"


def guest_image(settings: Settings) -> Path:
    """The guest's root filesystem as a raw ext4 disk image, cached by its inputs.

    QEMU gives it to dom0 as a third disk (/dev/vdc), the guest's xvda1: a block device,
    as the manual's phy: guests have, so the hotplug script has no loop device to set up
    (under TCG on a busy machine that alone can outlast libxl's 40 s hotplug timeout).
    """
    import inspect

    from provision.storage import building_image, make_fs
    spec = base_spec(settings, GUEST_PACKAGES)
    key = manifest_key({"base": _base_key(spec), "debootstrap": _library_digest(),
                        "hostname": GUEST, "configure": inspect.getsource(configure_guest),
                        "masked": MASKED, "size": GUEST_SIZE})
    final = cache_dir("boottest", "images") / f"guest-{key}.img"
    if final.exists() and not settings.refresh:
        log.info(f"guest image: cached {final.name}")
        return _use(final)
    with UndoStack() as undo:
        root = _work_root(f"guest-{key}", undo)
        bootstrap_root(spec, GUEST, root, refresh=settings.refresh)
        configure_guest(root)
        with building_image(final, GUEST_SIZE, force=settings.refresh) as tmp:
            make_fs(tmp, "ext4", label="guestroot", populate=root)
    _prune(final.parent, keep=final, newest=3)
    return final


def host_image(settings: Settings, result: Result) -> tuple[Path, dict]:
    """The bootable host disk image, cached by all of its inputs. Returns it and its facts."""
    spec = base_spec(settings, host_packages(settings))
    inputs = {"host": _base_key(spec), "code": _code_digest(),
              "dist": _dist_digest(settings.dist),
              "settings": {k: v for k, v in asdict(settings).items()
                           if k in ("sched", "dom0_mem", "guest_memory", "guest_disk", "host_size")}}
    key = manifest_key(inputs)
    final = cache_dir("boottest", "images") / f"host-{key}.img"
    facts_path = final.with_suffix(".json")
    if final.exists() and facts_path.exists() and not settings.refresh:
        log.info(f"host image: cached {final}")
        return _use(final), json.loads(facts_path.read_text())

    from provision.storage import building_image, loop_device, make_fs, partition_image
    from provision.storage.partition import PartSpec
    require("grub-mkimage", "tar")
    with UndoStack() as undo:
        root = _work_root(f"host-{key}", undo)
        bootstrap_root(spec, HOSTNAME, root, refresh=settings.refresh)
        installed_by = install_dist(settings.dist, root) if settings.dist else "Debian packages"
        if settings.dist:
            run(["ldconfig", "-r", root], quiet=True)
        files = find_boot_files(root, settings.dist)
        services = enable_xen_services(root)
        xen_cmdline = configure_host(settings, root, files)
        stage_grub_modules(root)
        with building_image(final, settings.host_size, force=settings.refresh, undo=undo) as tmp:
            partition_image(tmp, "msdos", [PartSpec(None, fs="ext4", bootable=True, label=ROOT_LABEL)])
            with loop_device(tmp, partscan=True) as loop:
                make_fs(f"{loop}p1", "ext4", label=ROOT_LABEL, populate=root)
            install_grub_bios(tmp)
        _prune(final.parent, keep=final)
        facts = {"xen_cmdline": xen_cmdline, "files": asdict(files), "installed_by": installed_by,
                 "services": services, "inputs": inputs}
        atomic_write(facts_path, json.dumps(facts, indent=1, sort_keys=True) + "\n")
    return final, facts


# -- stage 3: boot and check -------------------------------------------------------------

CODE_DEVICE = "/dev/vdd"        # QEMU's fourth disk: our package (code_disk)
CODE_MOUNT = "/opt/xen-provision"
CODE_SIZE = "64M"
LVM_PATH = "lvm-path.py"        # beside the package on the code disk
LVM_SCRIPT = """\
# Written by the boot test: the storage library's LVM path on dom0's second disk.
import sys
sys.path.insert(0, "/opt/xen-provision")
from provision.storage import create_lv, lv_path, make_fs, pvcreate, snapshot_lv, vgcreate
from provision.undo import UndoStack
with UndoStack():
    pvcreate(["/dev/vdb"])
    vgcreate("boottest", ["/dev/vdb"])
    create_lv("boottest", "base", "256M")
    make_fs(lv_path("boottest", "base"), "ext4", label="base")
    snapshot_lv("boottest", "base", "clone1", "128M")
print("LVM-PATH-OK")
"""


def code_disk(out: Path, seed_from: Settings | None = None) -> Path:
    """This checkout's ``provision`` package as a small ext4 disk image, for dom0 to
    mount at /opt/xen-provision and run the storage library's own LVM check from.
    With ``seed_from``, also the host suite's cached base (lvcheck.SEED_DIR), so that
    dom0, which has no network, can run ``image --debootstrap`` into an LV.

    Made for every boot (about a second) rather than copied into the cached host image,
    so that an edit to the storage library is tested without rebuilding that image.
    """
    import tempfile

    from provision.storage import building_image, make_fs
    out.mkdir(parents=True, exist_ok=True)
    disk = out / "code.img"
    disk.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="code.", dir=out) as stage:
        shutil.copytree(REPO / "provision", Path(stage) / "provision",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (Path(stage) / LVM_PATH).write_text(LVM_SCRIPT)
        size = parse_size(CODE_SIZE)
        if seed_from is not None:
            from provision.debootstrap import lvcheck
            seed = lvcheck.seed(Path(stage) / lvcheck.SEED_DIR, seed_from.suite, seed_from.mirror)
            size += sum(f.stat().st_size for f in seed) * 11 // 10
        with building_image(disk, size) as tmp:
            make_fs(tmp, "ext4", label="xpcode", populate=stage)
    return disk


def _until(seconds: float) -> str:
    """The head of a shell loop that polls for ``seconds`` of dom0's time, however slow
    each round is under TCG: ``{_until(60)} test-cmd && break; sleep 1; done``."""
    return f"e=$(($(date +%s) + {int(seconds)})); while [ $(date +%s) -lt $e ]; do"


def _shell_check(vm: Machine, what: str, command: str, timeout: float, expect: str | None = None,
                 failure: str | None = None) -> str:
    """Run a command in dom0's shell; a check that passes on status 0 and ``expect``."""
    out, status = vm.shell(command, timeout, what=what)
    ok = status == 0 and (expect is None or re.search(expect, out, re.M) is not None)
    detail = "" if ok else f"exit {status}: " + " | ".join(out.strip().splitlines()[-10:])
    vm.record(what, ok, detail)
    if not ok:
        why = f"{failure} within {timeout:.0f} s" if failure else f"{what} failed"
        raise ProvisionError(f"{why} ({detail}); serial log: {vm.log_path}", exit_code=1)
    return out


def boot_and_check(settings: Settings, image: Path, guest: Path, facts: dict, result: Result,
                   code: Path) -> None:
    from provision.grub.render import version_of
    files = BootFiles(**facts["files"])
    settings.out.mkdir(parents=True, exist_ok=True)
    lvm_disk = settings.out / "lvm.img"
    if lvm_disk.exists():
        lvm_disk.unlink()
    from provision.storage import create_image
    create_image(lvm_disk, settings.lvm_size)
    lvimage_disk = settings.out / "lvimage.img"
    lvimage_disk.unlink(missing_ok=True)
    create_image(lvimage_disk, settings.lvimage_size)
    log_path = result.log_path
    if log_path.exists():
        log_path.unlink()
    t = settings.timeout
    # The cached image is booted with snapshot=on: the boot never changes it.
    # vda the host, vdb empty for lvmcheck, vdc the guest's xvda, vdd CODE_DEVICE,
    # vde empty for debootstrap.lvcheck (its own disk: --no-lvmcheck leaves a VG on vdb).
    disks = [Disk(image, snapshot=True), Disk(lvm_disk), Disk(guest, snapshot=True),
             Disk(code, snapshot=True), Disk(lvimage_disk)]
    vm = Machine(log_path=log_path, disks=disks,
                 memory=settings.memory, smp=settings.smp, name="xen-host")
    try:
        with vm:
            ours = files.origin == "dist/install"
            xen_version = version_of(files.xen, "xen")
            kver = re.sub(r"^vmlinuz-", "", Path(files.dom0_kernel).name)
            m = vm.wait_for(r"Loading Xen (\S+) \.\.\.", 120, what="GRUB started our entry",
                            failure="GRUB did not start our entry")
            _expect(vm, "GRUB loads the staged hypervisor", m.group(1), xen_version)
            m = vm.wait_for(r"Xen version (\S+) ", 120, what="Xen banner",
                            failure="Xen did not print its banner")
            if ours:
                _expect(vm, "Xen version is our build", m.group(1), xen_version)
            else:
                vm.record(f"Xen version {m.group(1)} (Debian's, not our build)", True)
            m = vm.wait_for(r"Command line: ([^\n]*)\n", 60, what="Xen command line")
            _expect(vm, "Xen command line is the one we generated", m.group(1).strip(),
                    facts["xen_cmdline"])
            m = vm.wait_for(r"Using scheduler: .*\((\w+)\)", 60, what="scheduler in use")
            _expect(vm, f"scheduler is {settings.sched}", m.group(1), settings.sched)
            m = vm.wait_for(r"Linux version (\S+) ", 180, what="dom0 kernel started",
                            failure="dom0's kernel did not start")
            _expect(vm, "dom0 runs our kernel", m.group(1), kver)
            # Logged in as soon as the getty is up, so a slow or stuck boot can be examined.
            vm.login("root", timeout=t)
            _shell_check(vm, "dom0 reached multi-user",
                         f"{_until(t)} [ \"$(systemctl show -P ActiveState "
                         "multi-user.target)\" = active ] && break; sleep 1; done; "
                         "systemctl list-jobs --no-pager | tail -8; "
                         "systemctl show -P ActiveState multi-user.target",
                         t + 60, expect=r"^active$", failure="dom0 did not reach multi-user")
            _shell_check(vm, "dom0 has no failed units",
                         "f=$(systemctl --failed --plain --no-legend); [ -z \"$f\" ] || "
                         "{ echo \"$f\"; false; }", 60)
            _shell_check(vm, f"xendomains started {GUEST}",
                         f"{_until(t)} xl list {GUEST} >/dev/null 2>&1 && break; "
                         "systemctl -q is-active xendomains || systemctl -q is-failed xendomains "
                         "&& break; sleep 1; done; xl list "
                         f"{GUEST} || {{ journalctl -b -u xendomains --no-pager | tail -15; false; }}",
                         t + 60)
            _shell_check(vm, f"{GUEST}'s console shows the guest kernel booting to userspace",
                         f"f=/var/log/xen/console/guest-{GUEST}.log; {_until(t)} "
                         "grep -Eq 'Reached target|login:|Run /sbin/init' $f 2>/dev/null && break; "
                         "sleep 1; done; grep -E 'Linux version|Run /.*init as init|Welcome to|login:' "
                         "$f || tail -20 $f",
                         t + 60, expect=r"Linux version (?s:.*)(Run /\S*init as init|Welcome to|login:)")
            if settings.extra_checks:
                extra_checks(vm, full_lvm=settings.lvmcheck)
    finally:
        result.checks = [c.line() for c in vm.checks]
    result.ok = all(c.ok for c in vm.checks)


def _expect(vm: Machine, what: str, got: str, want: str) -> None:
    vm.record(what, got == want, f"got {got!r}, expected {want!r}")
    if got != want:
        raise ProvisionError(f"{what}: got {got!r}, expected {want!r}; serial log: {vm.log_path}",
                             exit_code=1)


LVM_CHECK = ("LVM path of the storage library in dom0 "
             "(lvmcheck: PV, VG, LV, snapshot, thin, extend, fill watch)")
LVM_PATH_CHECK = "LVM path of the storage library in dom0 (PV, VG, LV, snapshot clone)"
LVM_CHECK_TIMEOUT = 900.0   # about 75 s under TCG on an idle machine; ours are shared
# What ends the LVM check: its own verdict, or the kernel failing under it (an oops
# leaves lvmcheck stuck in D state, so waiting for its exit would take the whole timeout).
LVM_CHECK_END = (r"^(LVM-CHECK-OK in \S+|lvm-check FAILED: .*|Traceback .*|BUG: .*|Oops: .*"
                 r"|Kernel panic .*)$")


def lvm_check_command(disk: str = "/dev/vdb", full: bool = True) -> str:
    """dom0's shell command running provision.storage.lvmcheck (``full``) or the short
    LVM_SCRIPT from the code disk."""
    what = f"-m provision.storage.lvmcheck {disk}" if full else f"{CODE_MOUNT}/{LVM_PATH}"
    return (f"mkdir -p {CODE_MOUNT} && mount -o ro {CODE_DEVICE} {CODE_MOUNT} && "
            f"PYTHONPATH={CODE_MOUNT} PYTHONDONTWRITEBYTECODE=1 "
            f"python3 {what}; s=$?; umount {CODE_MOUNT}; [ $s -eq 0 ]")


LV_IMAGE_CHECK = ("image --debootstrap into LVM in dom0 (lvcheck: LV and swap LV from the "
                  "cached base, read back, e2fsck, LV template, snapshot guest)")
LV_IMAGE_DEVICE = "/dev/vde"


def _dom0_check(vm: Machine, what: str, command: str, end: str, ok_prefix: str, timeout: float) -> None:
    """Run one of our check modules in dom0 and wait for its verdict line; fails at once,
    with the console's last lines, when it or the kernel under it reports a failure."""
    vm.send(command)
    m = vm.wait_for(end, timeout, what=what, record=False)
    verdict = m.group(1)
    ok = verdict.startswith(ok_prefix)
    vm.record(what, ok, "" if ok else verdict)
    if not ok:
        time.sleep(5)   # the rest of a traceback or an oops
        raise ProvisionError(f"{what} failed: {verdict}; last lines of {vm.log_path}:\n"
                             f"{vm.tail()}", exit_code=1)


def lvm_check(vm: Machine) -> None:
    """provision.storage.lvmcheck in dom0 on its empty second disk."""
    _dom0_check(vm, LVM_CHECK, lvm_check_command(), LVM_CHECK_END, "LVM-CHECK-OK", LVM_CHECK_TIMEOUT)


def lv_image_check(vm: Machine) -> None:
    """provision.debootstrap.lvcheck in dom0 on its empty fifth disk, from the seeded base."""
    from provision.debootstrap import lvcheck
    _dom0_check(vm, LV_IMAGE_CHECK, lvcheck.command(LV_IMAGE_DEVICE, code_device=CODE_DEVICE,
                                                    code_mount=CODE_MOUNT),
                lvcheck.END, lvcheck.OK, lvcheck.TIMEOUT)


SAVE_DIR = "/var/lib/xen/save"


def extra_checks(vm: Machine, full_lvm: bool = False) -> None:
    """The LVM path in dom0, and the manual's xl operations on the running guest.

    The full lvmcheck, then image --debootstrap into LVM (debootstrap.lvcheck: an LV
    guest with a swap LV from the seeded base, an LV template, a snapshot guest), by
    default; ``--no-lvmcheck`` runs the short check instead, which
    never tears a snapshot down. A xen0 kernel on tinyconfig's CONFIG_SLOB faulted there:
    SLOB's __ksize() reads the 8 bytes before an object, mempool_exit() calls it when
    device-mapper tears a snapshot or thin table down (lvremove), and a PV dom0 faults when
    that page is a ballooned-out hole (BUG in __ksize <- mempool_exit <-
    dm_kcopyd_client_destroy <- snapshot_dtr); buildconfigs/linux-common.config now asks
    for SLUB. LVM first: xl save and restore balloon out pages, adding holes.
    """
    if full_lvm:
        lvm_check(vm)
        lv_image_check(vm)
    else:
        _shell_check(vm, LVM_PATH_CHECK, f"{lvm_check_command(full=False)} && "
                     "lvs --noheadings -o lv_name,origin boottest", 180,
                     expect=r"LVM-PATH-OK(?s:.*)clone1\s+base")
    _shell_check(vm, f"xl list shows {GUEST}", "xl list", 30, expect=rf"^{GUEST}\s+\d+")
    # The manual's save at halt and restore at boot, through our xendomains with a save
    # directory (the image's own settings shut domains down instead).
    xd = (f"{{ cat /etc/default/xendomains; echo XENDOMAINS_SAVE={SAVE_DIR}; }} > /run/xd-save && "
          "XENDOMAINS_CONFIG=/run/xd-save /etc/init.d/xendomains")
    _shell_check(vm, f"xendomains stop saves {GUEST} (xl save)",
                 f"{xd} stop && [ -s {SAVE_DIR}/{GUEST} ] && ! xl list {GUEST} 2>/dev/null", 300,
                 expect=rf"saved {GUEST} to {SAVE_DIR}/{GUEST}")
    _shell_check(vm, f"xendomains start restores {GUEST} (xl restore)",
                 f"{xd} start && [ ! -e {SAVE_DIR}/{GUEST} ] && xl list {GUEST}", 300,
                 expect=rf"restored {GUEST}(?s:.*){GUEST} is already running(?s:.*)^{GUEST}\s+\d+")
    _shell_check(vm, f"xl mem-set {GUEST} 192m", f"xl mem-set {GUEST} 192m && {_until(60)} "
                 f"m=$(xl list {GUEST} | awk 'NR==2 {{print $3}}'); [ \"$m\" -le 200 ] && break; "
                 "sleep 1; done; xl list", 120, expect=rf"^{GUEST}\s+\d+\s+19\d\s")
    _shell_check(vm, "xendomains reports a guest with a bad disk path",
                 f"ln -s ../{BROKEN}.cfg /etc/xen/auto/{BROKEN}.cfg; /etc/init.d/xendomains start; "
                 f"echo \"status=$?\"; rm -f /etc/xen/auto/{BROKEN}.cfg; "
                 f"xl create -q /etc/xen/{BROKEN}.cfg 2>&1 | grep -m1 -F missing.img; xl list", 180,
                 expect=rf"FAILED to start {BROKEN}(?s:.*)status=[1-9](?s:.*)missing\.img(?s:.*)"
                 rf"^{GUEST}\s")


# -- the whole run ------------------------------------------------------------------------

def run_boottest(settings: Settings) -> Result:
    """Build (or reuse) the host image, boot it, check it; print the times and checks."""
    result = Result(log_path=settings.out / "serial.log")
    start = time.monotonic()
    try:
        with _stage(result, "image", "Host image (root filesystems, install, GRUB, guest)"):
            image, facts = host_image(settings, result)
            guest = guest_image(settings)
            code = code_disk(settings.out, settings if settings.extra_checks and settings.lvmcheck
                             else None)
        result.booted = (f"{facts['files']['origin']}: {Path(facts['files']['xen']).name}, "
                         f"{Path(facts['files']['dom0_kernel']).name}; installed by "
                         f"{facts['installed_by']}")
        with _stage(result, "boot", f"Booting under QEMU (TCG); serial log {result.log_path}"):
            boot_and_check(settings, image, guest, facts, result, code)
    finally:
        result.stages["total"] = round(time.monotonic() - start, 1)
        settings.out.mkdir(parents=True, exist_ok=True)
        atomic_write(settings.out / "report.txt", result.summary() + "\n")
        log.info(result.summary())
    return result


def _xen_config(dist: Path) -> Path | None:
    """The staged hypervisor's xen-<version>.config (its schedulers)."""
    configs = [p for p in (dist / "boot").glob("xen-*.config") if not p.is_symlink()]
    return _newest(configs)


def settings_from_args(args) -> Settings:
    dist = None
    if args.dist != "none":
        dist = Path(args.dist).resolve()
        if not (dist / "boot").is_dir():
            if args.dist_given:
                raise ProvisionError(f"{dist} has no boot/ directory",
                                     hint="run `doit world` first, or --dist none for Debian's Xen")
            log.note(f"{dist} does not exist yet; booting Debian's Xen and kernel instead")
            dist = None
    from provision.grub.cmdline import check_scheduler, parse_dom0_mem, schedulers_from_config
    # Caught here, before anything is built, as GRUB entry generation would catch it.
    config = _xen_config(dist) if dist else None
    check_scheduler(args.sched, schedulers_from_config(config) if config else None)
    parse_dom0_mem(args.dom0_mem)
    if args.timeout <= 0:
        raise ProvisionError(f"--timeout {args.timeout} must be positive")
    from provision.debootstrap import resolve
    resolve(args.suite, mirror=args.mirror)   # the suite and mirror, as `image` checks them
    return Settings(dist=dist, out=Path(args.out).resolve(), suite=args.suite, mirror=args.mirror,
                    sched=args.sched, dom0_mem=args.dom0_mem, memory=args.memory,
                    guest_disk=args.guest_disk, timeout=args.timeout, refresh=args.refresh,
                    extra_checks=not args.boot_only, lvmcheck=args.lvmcheck)


def cmd_boottest(args) -> int:
    settings = settings_from_args(args)
    # QEMU runs in its own session, so a SIGTERM to us does not reach it: the undo stack's
    # handler turns the signal into an exception, and the harness's exit kills QEMU.
    with UndoStack():
        result = run_boottest(settings)
    return 0 if result.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "boottest", help="build a Xen host image from our outputs and boot it under QEMU",
        description="Assemble a whole Xen host (dist/install, GRUB entry, a guest in "
                    "/etc/xen/auto, xendomains) and boot it under QEMU with TCG, checking "
                    "the serial console.")
    p.add_argument("--dist", default=None,
                   help="the staged tree to boot (default dist/install; 'none': Debian's Xen)")
    p.add_argument("--out", default=str(REPO / "dist" / "boottest"),
                   help="where the serial log and report go (default dist/boottest)")
    p.add_argument("--suite", default="bookworm", help="dom0's and the guest's suite")
    p.add_argument("--mirror", default=None, help="mirror (default: the host's own)")
    p.add_argument("--sched", default="credit", help="Xen scheduler to ask for (default credit)")
    p.add_argument("--dom0-mem", default="1024M,max:1024M", help="Xen's dom0_mem")
    p.add_argument("--memory", default="3G", help="the QEMU machine's memory")
    p.add_argument("--guest-disk", default=None, help="the guest's disk spec (to test failures)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for each long wait")
    p.add_argument("--boot-only", action="store_true", help="skip xl save/restore, mem-set, LVM")
    p.add_argument("--lvmcheck", action=argparse.BooleanOptionalAction, default=True,
                   help="run the full provision.storage.lvmcheck in dom0 (thin, extend, fill "
                        "watch) and provision.debootstrap.lvcheck (image --debootstrap into an "
                        "LV, LV template, snapshot guest; default); --no-lvmcheck: only PV, VG, "
                        "LV and a snapshot clone")
    p.add_argument("--refresh", action="store_true",
                   help="bootstrap the bases again and rebuild the guest and host images")
    p.set_defaults(func=_main)


def _main(args) -> int:
    args.dist_given = args.dist is not None
    if args.dist is None:
        args.dist = str(REPO / "dist" / "install")
    if args.mirror is None:
        from provision.debootstrap.mirror import host_mirror
        args.mirror = host_mirror("debian") or "http://deb.debian.org/debian"
    return cmd_boottest(args)
