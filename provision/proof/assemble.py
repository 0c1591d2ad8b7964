"""Host disk images made exactly as the README's quick start makes a Xen host.

Every file in a host image comes from a public entry point, run as a user runs it
(``python -m provision ...`` and the dist tarball's ``sh ./install.sh``) against the
image's root filesystem mounted on this machine:

    image --debootstrap SUITE --disk HOST.img --fstab-by uuid ...   dom0's root, partition 1
    (mount partition 1 on ROOT)
    tar zxf xen-<ver>-install.tgz; sh ./install.sh ROOT               doit dist's tarball
    grub install --root ROOT --dom0-mem ... --default --serial-menu   the root's own update-grub
    xendomains install --root ROOT --log-consoles; xendomains enable --root ROOT
    network bridge --root ROOT --uplink NIC --ip ...                  (or network routed)
    image --debootstrap SUITE --file ROOT/var/lib/xen/images/G.img --ip ... --ssh-key ...
    domain create --root ROOT --from-image ... --bridge xenbr0 --autostart
    grub bios HOST.img --root ROOT                                    GRUB in the MBR

What this module adds is only what a user does by hand: mounting the image. Each command
is kept in the image's facts (``commands``) and in ``assemble.log``. An image is cached
under ``$XEN_PROVISION_CACHE/boottest/images`` by a key of its inputs: the commands
themselves (their arguments are the settings), the dist tarball, the package's code,
and the bases the commands bootstrap.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provision import cache, log, paths
from provision.cache import cache_dir, manifest_key, sha256_file
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.guest.target import Target
from provision.undo import UndoStack

PACKAGE = paths.PACKAGE       # provision/
HOST_DISK_SIZE = "6G"
# No swap disk: every disk of a file-backed guest is a loop device that Xen's block
# hotplug script sets up, and under TCG two guests' scripts at once come close to
# libxl's 40 s hotplug timeout. Swap images are proven by the image tests.
GUEST_SIZE = "1G"
# guest1 pings guest2; the routed guest pings dom0; sudo: --user adds it, so every guest
# shares one cached base.
GUEST_PACKAGES = ("iputils-ping", "sudo")
USER = "alice"                # the --user of a guest made with first-boot access
FIRST_BOOT = "#!/bin/sh\n# the boot test's --first-boot script: the count must stay at one\necho once >> /root/fb-count\n"
IMAGES_DIR = "/var/lib/xen/images"
NFS_DIR = "/srv/nfs"          # dom0 serves NFS-root guests' trees from here (manual 5.4)
DOM0_ROOT = "/dev/vda1"   # our xen0 has no initrd: the kernel mounts the first virtio disk
PASSWORD = "xen-provision"  # root's password on the test machines' consoles (never a real host)

# dom0's userland beyond minbase: what systemd, the LVM checks, our xl and the checks use.
HOST_PACKAGES = (
    "systemd-sysv", "udev", "kmod", "procps", "iproute2", "lvm2", "e2fsprogs", "python3",
    # provision.proof.indom0.lvcheck renders the guest's files with jinja2.
    "python3-jinja2",
    # lvmcheck's thin pool: lvm2 runs thin_check when it activates one.
    "thin-provisioning-tools",
    # What our own xl, xenstored and libxl link against (readelf -d dist/install/usr/...).
    "libyajl2", "libnl-3-200", "libnl-route-3-200", "libzstd1", "liblzma5", "libbz2-1.0",
    "zlib1g", "libuuid1",
    # grub install runs the root's own update-grub; grub bios takes its i386-pc modules.
    "grub2-common", "grub-pc-bin",
    # Xen's vif-route runs ifconfig; the checks ping and ssh the guests.
    "net-tools", "iputils-ping", "openssh-client",
    # dom0 serves the NFS-root guest's tree (what `domain create --exports` tells users to install).
    "nfs-kernel-server",
    # pvgrub2, which boots the kernel a guest installed in its own image.
    "grub-xen-host",
)


@dataclass(frozen=True)
class Guest:
    name: str
    ip: str                 # ADDRESS/PREFIX
    memory: int = 256
    type: str | None = None  # None: what `domain create` chooses for our xenU (PVH)
    nfs: bool = False        # root is a tree in dom0's NFS_DIR, exported to it, not an image
    own_kernel: bool = False  # the distribution's kernel in its image (--guest-kernel), booted by pvgrub2
    access: bool = False     # made with --user USER, --role and --first-boot (first-boot access)
    xl: tuple[str, ...] = ()  # more settings of its xl config: domain create's KEY=VALUE words


@dataclass(frozen=True)
class Scenario:
    """One host: its network setup, its dom0 address on the QEMU LAN, its guests."""

    name: str
    network: str            # "bridge" | "routed"
    host_ip: str
    guests: tuple[Guest, ...]
    bridge: str = "xenbr0"
    # The QEMU NIC at PCI slot 16 (proof.machine.Lan), as udev names it by its PCI path. A
    # kernel with ACPI PCI hotplug (Debian's config: the hardware dom0) gives it the slot
    # name ens16 first and enp0s16 as an altname, which networkd's Name= matches too.
    uplink: str = "enp0s16"
    uplink_slot_name: str = "ens16"
    broken_guest: bool = False   # a config whose disk is missing, for xendomains' failure report

    lan_gateway: str = "192.0.2.2"   # QEMU's own side of the LAN (proof.machine.Lan.host)

    @property
    def gateway(self) -> str:
        """The guests' gateway: the LAN's for bridged guests, dom0 for routed ones."""
        return self.lan_gateway if self.network == "bridge" else self.host_ip.split("/")[0]


SCENARIOS = {
    "bridged": Scenario("bridged", "bridge", "192.0.2.1/24",
                        # guest2 is the README's default, PVH for our xenU; guest1, which the
                        # save/restore, mem-set and console checks use, and guest4, whose NFS
                        # boot is the longest, are PV. TCG has no invariant TSC, so Xen's
                        # default tsc_mode traps every rdtsc of a PVH guest (on hardware with
                        # an invariant TSC it runs natively), and QEMU's emulated AMD-V now and
                        # then triple-faults the guest among those exits (Xen reboots it): 60-85 s
                        # of the bridged boot. tsc_mode=native gives it what hardware gives it.
                        (Guest("guest1", "192.0.2.11/24", type="pv"),
                         Guest("guest2", "192.0.2.12/24", xl=("tsc_mode=native",)),
                         Guest("guest4", "192.0.2.14/24", type="pv", nfs=True)),
                        broken_guest=True),
    # guest3 stays PV, beside the bridged host's PVH guests: both guest types are booted.
    "routed": Scenario("routed", "routed", "192.0.2.1/24",
                       (Guest("guest3", "192.0.2.21/24", type="pv", access=True),
                        # pvgrub2 boots the Debian kernel installed in guest5's own image (PV,
                        # as guest1: its initramfs boot is the longest of all).
                        Guest("guest5", "192.0.2.25/24", memory=384, type="pv", own_kernel=True))),
}
BROKEN = "broken1"


@dataclass(frozen=True)
class Inputs:
    """What a host image is made from, besides the scenario."""

    dist: Path                  # dist/install
    suite: str
    mirror: str
    sched: str
    dom0_mem: str
    refresh: bool = False


@dataclass
class Facts:
    """What the boot checks need to know of an assembled image."""

    scenario: str
    xen: str                    # /boot/xen-4.17.5.gz
    xen_version: str
    xen_cmdline: str            # what Xen must echo: our entry's multiboot2 line
    dom0_kernel: str            # /boot/vmlinuz-6.1.176-xen0
    dom0_release: str
    guest_release: str
    guests: list[dict] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    key: str = ""


# -- test credentials: fixed, so images are cached --------------------------------------------

def credentials() -> tuple[Path, Path, Path]:
    """(root password hash file, SSH private key, public key) for the test machines,
    made once in the cache: the same inputs give the same cached images."""
    d = cache_dir("boottest", "credentials")
    key = d / "id_ed25519"
    if not key.exists():
        tmp = d / f".id_ed25519.{os.getpid()}"
        for p in (tmp, tmp.with_name(tmp.name + ".pub")):
            p.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xen-provision-boottest", "-f", str(tmp)])
        os.replace(tmp.with_name(tmp.name + ".pub"), d / "id_ed25519.pub")
        os.replace(tmp, key)
    hashed = d / "root.hash"
    if not hashed.exists():
        # A fixed salt: the hash, and so the images' key, stays the same.
        text = _run(["openssl", "passwd", "-6", "-salt", "xenprovisionboot", PASSWORD]).strip()
        atomic_write(hashed, text + "\n", 0o600)
    return hashed, key, d / "id_ed25519.pub"


# -- running the public commands ----------------------------------------------------------------

class Transcript:
    """The commands run, in order, with their output in a log."""

    def __init__(self, log_path: Path):
        self.commands: list[str] = []
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "a")

    def close(self):
        self.log.close()

    def run(self, argv: list[str], *, cwd: Path | None = None, shown: str | None = None) -> str:
        """Run ``argv``; ``shown`` is how the transcript writes it (paths made readable)."""
        text = shown or shlex.join(argv)
        self.commands.append(text)
        self.log.write(f"\n$ {text}\n")
        self.log.flush()
        start = time.monotonic()
        env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, stdin=subprocess.DEVNULL)
        self.log.write(proc.stdout)
        self.log.write(f"[exit {proc.returncode}, {time.monotonic() - start:.1f} s]\n")
        self.log.flush()
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise ProvisionError(f"assembling the host image: `{text}` failed ({proc.returncode}):\n{tail}",
                                 exit_code=1)
        log.info(f"  {text}")
        return proc.stdout

    def provision(self, *args: str, shown: str | None = None) -> str:
        argv = [sys.executable, "-m", "provision", *args]
        return self.run(argv, shown=shown or "python3 -m provision " + shlex.join(args))


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# -- what goes into the key ---------------------------------------------------------------------

def package_digest() -> str:
    """The package's code that the commands run (everything but the proof itself)."""
    files = {}
    for p in sorted(PACKAGE.rglob("*")):
        rel = p.relative_to(PACKAGE)
        if p.is_file() and "__pycache__" not in rel.parts and rel.parts[0] != "proof" \
                and p.suffix not in (".pyc",):
            files[str(rel)] = sha256_file(p)
    return manifest_key(files)


def dist_release(dist: Path) -> dict:
    """The versions in dist/install's manifest: Xen, the dom0 kernel and the xenU kernel.

    dom0's is the kernel of flavour ``xen0``, or the one xen0 variant the world built
    (``doit world kernels=mk.linux-6.1-xen0-hw,mk.linux-6.1-xenU``: the hardware dom0)."""
    try:
        m = json.loads((dist / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise ProvisionError(f"{dist} has no manifest.json", hint="run `doit world` first") from None
    kernels = {v.get("flavour") or k.rsplit("-", 1)[-1]: v for k, v in m.get("kernels", {}).items()}
    dom0s = sorted(f for f in kernels if f == "xen0" or f.startswith("xen0-"))
    dom0 = "xen0" if "xen0" in dom0s else (dom0s[0] if len(dom0s) == 1 else None)
    if dom0 is None or "xenU" not in kernels:
        raise ProvisionError(f"{dist} has no xen0 (or one xen0 variant) and xenU kernel"
                             f" (it has: {', '.join(sorted(kernels)) or 'none'})",
                             hint="run `doit world` with the default KERNELS")
    return {"xen": m["xen"]["version"], "xen0": kernels[dom0]["release"], "xenU": kernels["xenU"]["release"]}


# -- the assembly ----------------------------------------------------------------------------

def _mounted_partition(image: Path, mountpoint: Path, undo: UndoStack) -> None:
    """What the administrator does with ``mount -o loop,offset=...``: partition 1 on
    ``mountpoint`` until ``undo`` closes."""
    from provision.storage.loop import attach_loop, partition_device
    from provision.storage.mount import mount
    loop = attach_loop(image, partscan=True, undo=undo)
    mountpoint.mkdir(parents=True, exist_ok=True)
    mount(partition_device(loop, 1), mountpoint, undo=undo)


def _xen_cmdline(root: Path) -> str:
    """Our entry's Xen command line in the grub.cfg the root's update-grub wrote."""
    cfg = (root / "boot/grub/grub.cfg").read_text()
    block = re.search(r"menuentry [^\n]*--id[ =]'?xen-provision[^\n]*\{(.*?)\n\}", cfg, re.S)
    line = re.search(r"^\s*(multiboot2?\s.*)$", block.group(1), re.M) if block else None
    if line is None:
        raise ProvisionError("the root's grub.cfg has no xen-provision entry with a multiboot line "
                             "(did update-grub run?)", exit_code=1)
    return " ".join(shlex.split(line.group(1))[2:])   # GRUB's quoting off, as Xen echoes it


def assemble(scenario: Scenario, inputs: Inputs, final: Path, work: Path, tarball: Path,
             transcript: Transcript, undo: UndoStack) -> Facts:
    """Make ``final`` (the host disk image) for ``scenario``; returns its facts."""
    release = dist_release(inputs.dist)
    hashed, _key, pub = credentials()
    image = work / "host.img"
    root = work / "root"
    transcript.provision(
        "image", "--debootstrap", inputs.suite, "--mirror", inputs.mirror, "--disk", str(image),
        "--size", HOST_DISK_SIZE, "--fstab-by", "uuid", "--hostname", "xenhost",
        "--include", ",".join(HOST_PACKAGES), "--root-password-file", str(hashed),
        *(["--refresh"] if inputs.refresh else []))
    _mounted_partition(image, root, undo)
    # The manual's install: unpack the dist tarball, run its install.sh with DESTDIR.
    unpacked = work / "dist"
    unpacked.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="tar")
    top = next(unpacked.iterdir())
    transcript.run(["sh", "./install.sh", str(root)], cwd=top,
                   shown=f"tar zxf {tarball.name}; cd {top.name}; sh ./install.sh {root}")
    transcript.provision(
        "grub", "install", "--root", str(root), "--dom0-mem", inputs.dom0_mem, "--com1", "115200,8n1",
        "--console", "com1", "--sched", inputs.sched, "--root-device", DOM0_ROOT, "--default",
        "--serial-menu", "--menu-timeout", "1")
    # One guest at a time: under TCG two guests' hotplug scripts at once can outlast
    # libxl's 40 s hotplug timeout (a real host starts them in parallel in seconds).
    transcript.provision("xendomains", "install", "--root", str(root), "--log-consoles", "--parallel", "1")
    transcript.provision("xendomains", "enable", "--root", str(root))
    if scenario.network == "bridge":
        transcript.provision("network", "bridge", "--root", str(root), "--name", scenario.bridge,
                             "--uplink", scenario.uplink, "--ip", scenario.host_ip,
                             "--gateway", scenario.lan_gateway)
    else:
        transcript.provision("network", "routed", "--root", str(root), "--uplink", scenario.uplink,
                             "--ip", scenario.host_ip, "--gateway", scenario.lan_gateway)
    guest_kernel = f"/boot/vmlinuz-{release['xenU']}"
    guests = []
    for g in scenario.guests:
        bridge = ["--bridge", scenario.bridge] if scenario.network == "bridge" else []
        kind = ["--type", g.type] if g.type else []
        common = ["--hostname", g.name, "--ip", g.ip, "--gateway", scenario.gateway, "--ssh-key", str(pub),
                  "--root-password-file", str(hashed), "--include", ",".join(GUEST_PACKAGES)]
        if g.nfs:
            # The manual's NFS root, served by dom0: the tree, then the domain and its export.
            tree = f"{NFS_DIR}/{g.name}"
            transcript.run(["mkdir", "-p", str(root / NFS_DIR.lstrip("/"))],
                           shown=f"mkdir -p {root}{NFS_DIR}")
            transcript.provision("image", "--debootstrap", inputs.suite, "--mirror", inputs.mirror,
                                 "--dir", str(root / tree.lstrip("/")), *common)
            transcript.provision("domain", "create", "--root", str(root), "--name", g.name, "--kernel", guest_kernel,
                                 "--memory", str(g.memory), "--nfs-server", scenario.host_ip.split("/")[0],
                                 "--nfs-root", tree, "--ip", g.ip, "--gateway", scenario.gateway,
                                 "--hostname", g.name, "--exports", *bridge, *kind, "--autostart",
                                 "on_crash=preserve", *g.xl)
            guests.append({**asdict(g), "tree": tree, "sidecar": Target.dir(tree).sidecar})
            continue
        img = root / IMAGES_DIR.lstrip("/") / f"{g.name}.img"
        img.parent.mkdir(parents=True, exist_ok=True)
        access = []
        if g.access:
            first_boot = work / "first-boot.sh"
            first_boot.write_text(FIRST_BOOT)
            first_boot.chmod(0o755)
            access = ["--user", USER, "--role", "sudo-user", "--role", "serial-console",
                      "--first-boot", str(first_boot)]
        transcript.provision(
            "image", "--debootstrap", inputs.suite, "--mirror", inputs.mirror, "--file", str(img),
            "--size", GUEST_SIZE, *(["--guest-kernel"] if g.own_kernel else []), *common, *access)
        # An image with its own kernel is booted by pvgrub2 (the image's facts say so): no --kernel.
        kernel = [] if g.own_kernel else ["--kernel", guest_kernel]
        transcript.provision("domain", "create", "--root", str(root), "--from-image", str(img),
                             *kernel, "--memory", str(g.memory), *bridge, *kind, "--autostart",
                             "on_crash=preserve", *g.xl)
        seen = f"{IMAGES_DIR}/{g.name}.img"   # as dom0 sees it; its JSON holds the host keys
        guests.append({**asdict(g), "image": seen, "sidecar": Target.file(seen, GUEST_SIZE).sidecar})
    if scenario.broken_guest:
        transcript.provision(
            "domain", "create", "--root", str(root), "--name", BROKEN, "--memory", "64",
            "--kernel", guest_kernel, "--root-device", "/dev/xvda ro", "--bridge", scenario.bridge,
            "--disk", f"format=raw, vdev=xvda, access=rw, target={IMAGES_DIR}/missing.img")
    transcript.provision("grub", "bios", str(image), "--root", str(root))
    facts = Facts(scenario=scenario.name, xen=f"/boot/xen-{release['xen']}.gz", xen_version=release["xen"],
                  xen_cmdline=_xen_cmdline(root), dom0_kernel=f"/boot/vmlinuz-{release['xen0']}",
                  dom0_release=release["xen0"], guest_release=release["xenU"], guests=guests,
                  commands=list(transcript.commands))
    return facts


def image_key(scenario: Scenario, inputs: Inputs, tarball_sha: str) -> str:
    hashed, _key, pub = credentials()
    from provision.guest import basecache, resolve
    bases = [basecache.entry_for(resolve(inputs.suite, mirror=inputs.mirror, include=list(pkgs))).key
             for pkgs in (HOST_PACKAGES, ("openssh-server", *GUEST_PACKAGES))]
    return manifest_key({"format": 2, "scenario": asdict(scenario), "suite": inputs.suite, "mirror": inputs.mirror,
                         "sched": inputs.sched, "dom0_mem": inputs.dom0_mem, "dist": tarball_sha,
                         "code": package_digest(), "bases": bases, "password": hashed.read_text(),
                         "ssh": pub.read_text(), "packages": [HOST_PACKAGES, GUEST_PACKAGES], "sizes": [HOST_DISK_SIZE, GUEST_SIZE]})


def host_image(scenario: Scenario, inputs: Inputs, tarball: Path, out: Path) -> tuple[Path, Facts]:
    """The scenario's host image, from the cache when its inputs are unchanged: an entry
    ``host-<scenario>-<key>.img`` stamped by its facts, ``.json``. Each is gigabytes:
    only the two most recently used of a scenario are kept."""
    key = image_key(scenario, inputs, sha256_file(tarball))
    images = cache_dir("boottest", "images")
    this = _entry(images / f"host-{scenario.name}-{key}.img")
    record, hit = cache.obtain(this, lambda path: asdict(_assemble(scenario, inputs, tarball, out, key, path)),
                               refresh=inputs.refresh)
    if hit:
        log.info(f"host image ({scenario.name}): cached {this.path.name}")
    _prune(images, scenario.name, keep=this.path)
    return this.path, Facts(**record)


def _entry(image: Path) -> cache.Entry:
    return cache.Entry(image, stamp=image.with_suffix(".json"))


def _prune(images: Path, scenario: str, keep: Path, newest: int = 2) -> None:
    """All but the ``newest`` recently used images of this scenario go, ``keep`` (the one
    just used) never: each is gigabytes."""
    _entry(keep).use()
    cache.prune(map(_entry, images.glob(f"host-{scenario}-*.img")), keep=newest)


def _assemble(scenario: Scenario, inputs: Inputs, tarball: Path, out: Path, key: str, final: Path) -> Facts:
    """Assemble the image in a work directory and move it to ``final``."""
    transcript = Transcript(out / f"assemble-{scenario.name}.log")
    with UndoStack() as undo:
        work = cache_dir("boottest", "work") / f"{scenario.name}-{key}"
        if work.exists():
            _remove_work(work)
        work.mkdir(parents=True)
        undo.cleanup(f"remove {work}", _remove_work, work)
        with log.step(f"Assembling the {scenario.name} host with the public commands (log: {transcript.log_path})"):
            try:
                with UndoStack() as mounts:
                    facts = assemble(scenario, inputs, final, work, tarball, transcript, mounts)
            finally:
                transcript.close()
        facts.key = key
        os.replace(work / "host.img", final)
    return facts


def _remove_work(work: Path) -> None:
    # A mount left by a killed run would make rmtree descend into the image's files.
    root = work / "root"
    if os.path.ismount(root):
        subprocess.run(["umount", "--lazy", str(root)], check=False)
    shutil.rmtree(work, ignore_errors=True)
