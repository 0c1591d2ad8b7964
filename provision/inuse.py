"""Who uses this disk, and how: the one answer for every command that writes a disk, reads
one whole or gives one to a domain (storage, image, domain, clone, resize, remove).

    users("/srv/xen/vm1.img")                       # [Use(...)], nothing raised
    refuse("/srv/xen/vm1.img", writing=True)        # one line naming the first conflict

A disk's users are

- domains: every domain config under /etc/xen (or ``XEN_PROVISION_XEN_DIR``, or a
  command's ``--root``/``--config-dir``): xl ``*.cfg``, Xen 2.0-style configs without an
  extension (``/etc/xen/vm1``) and what ``auto/`` holds, read with the real parser
  (:func:`provision.domain.xmconvert.load_any`: xl syntax, or xm syntax converted), each
  disk with its access;
- dom0: mounts (read-write or read-only), swap, and loop devices attached to an image.

Two users of one disk conflict when either writes it. dom0 writes a disk when a command
makes a filesystem, a partition table, an image or a clone on it; it reads one whole when
it clones it. A loop device attached to an image counts for dom0's own work (someone may
be using the loop device), but not when the disk is given to a domain: a loop device is
just one more name for the image there (the Xen 2.0 way to give a domain a file).

Disks are compared by identity, not by spelling: a block device by its device number
(/dev/vg/lv and /dev/mapper/vg-lv are one disk), a file by device and inode; a loop
device is the same disk as its file, and a whole disk overlaps its partitions and the
LVM/device-mapper volumes built on them (two partitions of one disk do not).

Only the standard library: the storage command runs in a minimal guest.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from provision import log
from provision.errors import ProvisionError

XEN_CONFIG_DIR = "/etc/xen"
# Files in /etc/xen that are not domain configs (Xen's own settings and examples).
NOT_DOMAINS = {"xl.conf", "xend-config.sxp", "cpupool", "oxenstored.conf", "README",
               "README.incompatibilities", "xlexample.hvm", "xlexample.pvlinux", "xlexample.pvhlinux"}
_NOT_DOMAIN_SUFFIXES = (".sh", ".sxp", ".conf", ".bak", ".orig", ".old", ".xen-new", ".dpkg-dist",
                        ".dpkg-old", ".dpkg-new", ".rpmnew", ".rpmsave", "~", ".swp", ".tmp", ".json")


# -- identities ---------------------------------------------------------------------------

def identity(path: str | os.PathLike) -> tuple:
    """What makes two paths the same disk: ("blk", rdev), ("file", dev, inode), or
    ("path", normalised path) for a path that does not exist (yet)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.normpath(path) if path else "")
    if stat.S_ISBLK(st.st_mode):
        return ("blk", st.st_rdev)
    return ("file", st.st_dev, st.st_ino)


def _devnum(entry: Path) -> tuple | None:
    try:
        ma, mi = (entry / "dev").read_text().strip().split(":")
        return ("blk", os.makedev(int(ma), int(mi)))
    except (OSError, ValueError):
        return None


def _block_dir(dev: str, sys: Path) -> Path | None:
    """The sysfs directory of block device ``dev`` (a partition's lies inside its disk's)."""
    d = sys / "class" / "block" / os.path.basename(os.path.realpath(dev))
    return Path(os.path.realpath(d)) if d.exists() else None


def loop_backing(dev: str, sys: Path = Path("/sys"), partitions: bool = False) -> str | None:
    """The file behind loop device ``dev``; with ``partitions``, also behind /dev/loopNpM
    (mounting a partition of an image file uses that file)."""
    name = os.path.basename(os.path.realpath(dev))
    try:
        return (sys / "block" / name / "loop" / "backing_file").read_text().strip()
    except OSError:
        pass
    d = _block_dir(dev, sys) if partitions else None
    if d and (d / "partition").exists():
        try:
            return (d.parent / "loop" / "backing_file").read_text().strip()
        except OSError:
            return None
    return None


def _parent_disk(ident: tuple, sys: Path) -> set[tuple]:
    """A partition's whole disk, and the file behind it if it is a loop device."""
    if ident[0] != "blk":
        return set()
    part = sys / "dev" / "block" / f"{os.major(ident[1])}:{os.minor(ident[1])}"
    try:
        if not (part / "partition").exists():
            return set()
        disk = Path(os.path.realpath(part)).parent
        ma, mi = (disk / "dev").read_text().strip().split(":")
    except (OSError, ValueError):
        return set()
    found = {("blk", os.makedev(int(ma), int(mi)))}
    try:
        found.add(identity((disk / "loop" / "backing_file").read_text().strip()))
    except OSError:
        pass
    return found


def _parts_and_holders(ident: tuple, sys: Path) -> set[tuple]:
    """What sits on a disk (as identities): its partitions (mounting sdb1 uses sdb) and,
    through holders/, the device-mapper volumes built on it or on them (an LV on the PV
    sdb2 uses sdb2 and sdb), to any depth."""
    if ident[0] != "blk":
        return set()
    found: set[tuple] = set()
    todo = [sys / "dev" / "block" / f"{os.major(ident[1])}:{os.minor(ident[1])}"]
    while todo:
        base = Path(os.path.realpath(todo.pop()))
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        subs = [e for e in entries if (e / "partition").exists()]
        holders = base / "holders"
        if holders.is_dir():
            subs += [Path(os.path.realpath(h)) for h in holders.iterdir()]
        for sub in subs:
            num = _devnum(sub)
            if num and num not in found:
                found.add(num)
                todo.append(sub)
    return found


def below(path: str, sys: Path = Path("/sys")) -> list[tuple]:
    """The identities a writer of ``path`` writes: itself first, its partitions and the
    volumes built on it, and the file behind it if it is a loop device."""
    ident = identity(path)
    found = [ident, *sorted(_parts_and_holders(ident, sys) - {ident})]
    if ident[0] == "blk" and (backing := loop_backing(path, sys)) and identity(backing) not in found:
        found.append(identity(backing))
    return found


def same_disk(a: str, b: str, sys: Path = Path("/sys")) -> bool:
    """Whether ``a`` and ``b`` share blocks: one path, a loop device and its file, a whole
    disk and its partition. Two partitions of one disk do not."""
    ia, ib = identity(a), identity(b)
    return (bool(set(below(a, sys)) & set(below(b, sys)))
            or ia in _parent_disk(ib, sys) or ib in _parent_disk(ia, sys))


# -- dom0 -------------------------------------------------------------------------------------

def _unescape(field_: str) -> str:
    # /proc/mounts and /proc/swaps write space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mounts(proc: Path = Path("/proc")) -> list[tuple[str, str, set[str]]]:
    """(source, mountpoint, options) of each mount dom0 has."""
    out = []
    try:
        text = (proc / "mounts").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            out.append((_unescape(fields[0]), _unescape(fields[1]), set(fields[3].split(","))))
    return out


@dataclass(frozen=True)
class Use:
    """One user of a disk: dom0 (a mount, swap, a loop device) or a domain config."""

    kind: str                    # "mount" | "swap" | "loop" | "domain"
    source: str                  # the path this user names the disk by
    writes: bool
    where: str = ""              # the mountpoint, the loop device
    domain: str | None = None    # a domain's name
    config: Path | None = None   # its config file

    def describe(self, target: str) -> str:
        """What the conflict is, after '<target> is ...'."""
        mode = "read-write" if self.writes else "read-only"
        if self.kind == "mount":
            return f"in use in dom0: {self.source} is mounted on {self.where} {mode}"
        if self.kind == "swap":
            return f"in use in dom0: {self.source} is used as swap"
        if self.kind == "loop":
            return f"in use in dom0: {self.source} is attached to {self.where}"
        alias = "" if self.source == target else f" as {self.source}"
        return f"used {mode} by domain {self.domain or '?'}{alias} ({self.config})"

    def hint(self) -> str:
        if self.kind == "loop":
            return f"detach it first (losetup -d {self.where}) or choose another target"
        if self.kind in ("mount", "swap"):
            return "unmount it (or swapoff) in dom0 first; a disk used by two kernels at once is corrupted"
        return ("a disk written while another kernel uses it is destroyed: share one only read-only "
                "(access=ro) everywhere, or choose another")


def dom0_uses(proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> dict[tuple, list[Use]]:
    """Disk identity -> how dom0 uses it: mounts, swap, loop devices (resolved to the file
    behind them, so a mounted /dev/loop3p1 marks its image)."""
    uses: dict[tuple, list[Use]] = {}

    def add(use: Use, through: str | None = None) -> None:
        targets = [use.source]
        if use.source.startswith("/dev/loop") and (backing := loop_backing(use.source, sys, partitions=True)):
            targets.append(backing)
        for t in targets:
            ident = identity(t)
            if ident[0] != "path":
                uses.setdefault(ident, []).append(Use(use.kind, t, use.writes, use.where))

    for src, mnt, opts in mounts(proc):
        if src.startswith("/"):
            add(Use("mount", src, "rw" in opts, mnt))
    try:
        for line in (proc / "swaps").read_text().splitlines()[1:]:
            fields = line.split()
            if fields:
                add(Use("swap", _unescape(fields[0]), True))
    except OSError:
        pass
    for backing in sorted(sys.glob("block/loop*/loop/backing_file")):
        try:
            name = backing.read_text().strip()
            readonly = (backing.parent.parent / "ro").read_text().strip() == "1"
        except OSError:
            continue
        if name.endswith(" (deleted)"):
            continue
        ident = identity(name)
        if ident[0] != "path":
            loop = "/dev/" + backing.parent.parent.name
            uses.setdefault(ident, []).append(Use("loop", name, not readonly, loop))
    return uses


# -- domains ----------------------------------------------------------------------------------

@dataclass
class DomainConfig:
    """What the checks need of one domain config: its name, disks, MACs and NFS root."""

    path: Path
    name: str | None
    disks: list = field(default_factory=list)   # provision.domain.model.Disk
    macs: list[str] = field(default_factory=list)
    nfs_root: tuple[str | None, str] | None = None  # (server, path), provision.domain.nfs.root_of


def config_dir(xen_dir: str | os.PathLike | None = None) -> Path:
    return Path(xen_dir or os.environ.get("XEN_PROVISION_XEN_DIR") or XEN_CONFIG_DIR)


def config_files(xen_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every domain config in the config directory and whatever auto/ links to, each once:
    ``*.cfg``, Xen 2.0-style names without an extension, not Xen's own files, scripts,
    backups or hidden files."""
    base = config_dir(xen_dir)
    seen: dict[str, Path] = {}
    for folder in (base, base / "auto"):
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            name = p.name
            if name.startswith(".") or name in NOT_DOMAINS or name.endswith(_NOT_DOMAIN_SUFFIXES):
                continue
            try:
                if not p.is_file():  # directories (scripts/, auto/) and dangling links
                    continue
            except OSError:
                continue
            seen.setdefault(os.path.realpath(p), p)
    return list(seen.values())


def read_config(path: Path, quiet: bool = False) -> DomainConfig | None:
    """The name, disks and MACs of one config, read with the real parser; None (and a
    warning unless ``quiet``) when it cannot be read as xl or xm."""
    from provision.domain import nfs, xmconvert
    from provision.domain.model import parse_disk, parse_vif

    try:
        values, _, _ = xmconvert.load_any(path, notes=False, strict=False)
    except ProvisionError as e:
        if not quiet:
            log.warn(f"skipping {path} in the in-use checks: {e.message}")
        return None
    name = values.get("name")
    found = DomainConfig(path, str(name) if isinstance(name, (str, int)) else None, nfs_root=nfs.root_of(values))
    for key, parse, out in (("disk", parse_disk, found.disks), ("vif", parse_vif, found.macs)):
        specs = values.get(key) or []
        for spec in specs if isinstance(specs, list) else [specs]:
            try:
                item = parse(spec)
            except ProvisionError as e:
                if not quiet:
                    log.warn(f"skipping a {key} of {path} in the in-use checks: {e.message}")
                continue
            if key == "disk":
                out.append(item)
            elif item.mac:
                out.append(item.mac)
    return found


def domain_configs(xen_dir: str | os.PathLike | None = None, exclude: str | os.PathLike | None = None,
                   quiet: bool = False) -> list[DomainConfig]:
    """Every readable domain config but ``exclude`` (one being replaced)."""
    skip = os.path.realpath(exclude) if exclude else None
    out = []
    for path in config_files(xen_dir):
        if os.path.realpath(path) == skip:
            continue
        cfg = read_config(path, quiet)
        if cfg is not None:
            out.append(cfg)
    return out


# -- the answer ---------------------------------------------------------------------------------

def users(target: str | os.PathLike, *, configs: list[DomainConfig] | None = None,
          xen_dir: str | os.PathLike | None = None, dom0: bool = True, quiet: bool = False,
          proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> list[Use]:
    """Everyone who uses ``target`` (a block device or an image file), dom0 first (mounts,
    swap, loop devices), then the domain configs (``configs``, else those in ``xen_dir``);
    ``dom0=False`` (an offline root: this machine's mounts say nothing about it) skips dom0."""
    target = os.fspath(target)
    found: list[Use] = []
    if dom0:
        uses = dom0_uses(proc, sys)
        # The loop device that is the target (or holds it as a partition) is no user of it.
        itself = {identity(target), *_parent_disk(identity(target), sys)}
        for ident in below(target, sys):
            found += [u for u in uses.get(ident, []) if not (u.kind == "loop" and identity(u.where) in itself)]
        order = {"mount": 0, "swap": 1, "loop": 2}
        found.sort(key=lambda u: (order[u.kind], not u.writes))
    for cfg in configs if configs is not None else domain_configs(xen_dir, quiet=quiet):
        for disk in cfg.disks:
            if same_disk(target, disk.target, sys):
                found.append(Use("domain", disk.target, disk.writable, domain=cfg.name, config=cfg.path))
    return found


def conflicts(target: str | os.PathLike, *, writing: bool, for_domain: bool = False, **kw) -> list[Use]:
    """The users of ``target`` that clash with someone ``writing`` it or reading it whole:
    any user when writing, the writers when reading. ``for_domain``: the disk is given to a
    domain, for which a loop device is one more name of its file, not a user."""
    return [u for u in users(target, **kw)
            if (writing or u.writes) and not (for_domain and u.kind == "loop")]


def refuse(target: str | os.PathLike, *, writing: bool = True, what: str | None = None,
           for_domain: bool = False, **kw) -> None:
    """One ProvisionError naming the first user of ``target`` that clashes (see
    :func:`conflicts`); ``what`` names the target in it (default: the path).

    When dom0 only reads (``writing=False``), a domain config that has the disk read-write
    is a warning, not an error: a config is not a running domain, and cloning a stopped
    guest's disk is what the manual's templates do."""
    target = os.fspath(target)
    found = conflicts(target, writing=writing, for_domain=for_domain, **kw)
    now = [u for u in found if writing or for_domain or u.kind != "domain"]
    if now:
        use = now[0]
        raise ProvisionError(f"{what or target} is {use.describe(target)}", hint=use.hint())
    for use in found:
        log.warn(f"{what or target} is {use.describe(target)}: if that domain is running, "
                 "the copy may be torn")


# -- running domains ------------------------------------------------------------------------------

@dataclass(frozen=True)
class XlState:
    """What ``xl list`` says: "ok" with {name: domid} (Domain-0 included), "absent" where
    xl is not installed, "failed" where it cannot say (not a running Xen host, no
    permission), "offline" for a root that is not this host (set by the caller)."""

    status: str
    domids: dict[str, int] = field(default_factory=dict)
    why: str = ""

    def state(self, name: str | None) -> tuple[str, int | None]:
        """("running", domid), ("stopped", None) or ("unknown", None) for ``name``."""
        if self.status != "ok":
            return "unknown", None
        if name in self.domids:
            return "running", self.domids[name]
        return "stopped", None


def xl_list() -> XlState:
    """The domains running on this host: the one place ``xl list`` is run and read."""
    import subprocess

    from provision.run import which

    xl = which("xl")
    if xl is None:
        return XlState("absent", why="xl is not installed")
    try:
        proc = subprocess.run([xl, "list"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return XlState("failed", why=f"xl list: {e}")
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout or "").strip().splitlines()
        log.debug(f"xl list failed: {said[-1] if said else proc.returncode}")
        return XlState("failed", why=f"xl list failed: {said[-1] if said else f'exit {proc.returncode}'}")
    return XlState("ok", parse_xl_list(proc.stdout))


def parse_xl_list(text: str) -> dict[str, int]:
    """{name: domid} from ``xl list``: a header, then NAME ID MEM VCPUS STATE TIME per
    domain (the name is what comes before the last five fields). Domain-0 included."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[-5].isdigit():
            continue  # the header, a blank line
        name = " ".join(parts[:-5])
        if name and name != "(null)":
            out[name] = int(parts[-5])
    return out


def running_domains() -> set[str] | None:
    """The names of the domains running here (Domain-0 left out); an empty set where xl is
    not installed (no domain can run), None where xl is there but cannot say: then any
    domain may be running."""
    xl = xl_list()
    if xl.status == "absent":
        return set()
    if xl.status != "ok":
        return None
    return {name for name in xl.domids if name != "Domain-0"}


def refuse_busy(target: str | os.PathLike, *, running: set[str] | None, what: str | None = None,
                but: str | None = None) -> None:
    """Refuse, in one line, to change ``target`` while anyone else may write or read it:
    dom0 (mounts, swap, loop devices) and running domains. A config of a domain that is
    not ``running`` is no user; where xl cannot say which run (``running`` None) every
    config counts. ``but``: a running domain whose own disk is changed online."""
    target = os.fspath(target)
    for use in users(target, quiet=True):
        if use.kind == "domain":
            if but is not None and use.domain == but:
                continue
            if running is not None and use.domain not in running:
                log.debug(f"{target} is in the config of {use.domain}, which is not running")
                continue
            state = "running" if running is not None else "perhaps running (xl cannot tell)"
            raise ProvisionError(f"{what or target} is {use.describe(target)}, {state}",
                                 hint=f"shut it down first: xl shutdown -w {use.domain}"
                                      + ("" if running is not None else "; xl list says which domains run"))
        raise ProvisionError(f"{what or target} is {use.describe(target)}", hint=use.hint())
