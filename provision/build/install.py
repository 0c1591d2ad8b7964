"""``doit dist`` and ``doit install``: the manual's install tarball and install.sh.

    make_dist(Path("dist"))          # -> dist/xen-4.17.5-install.tgz
    install("/mnt/root")             # sh install.sh --from dist/install /mnt/root
    uninstall("/mnt/root")           # sh install.sh --uninstall /mnt/root

The tarball holds ``xen-<version>-install/{install/, install.sh, README}`` and is
deterministic: sorted entries, owner root, mtimes from
SOURCE_DATE_EPOCH (else the newest input's mtime), no timestamp in the gzip header.
Installing is install.sh's job in both cases, so `doit install` and an unpacked tarball
behave the same.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path

import jinja2

from provision import log
from provision.errors import ProvisionError
from provision.fsutil import atomic_path, source_date_epoch
from provision.run import run

ROOT = Path(__file__).resolve().parent.parent.parent
INSTALL_SH = ROOT / "install.sh"
# $XEN_PROVISION_DIST moves dist/ (tests, out-of-checkout builds).
DIST = Path(os.environ.get("XEN_PROVISION_DIST") or ROOT / "dist")
RECORD = "var/lib/xen-provision/installed.list"
_XEN_GZ = re.compile(r"^xen-(\d+\.\d+\.\d+[^/]*)\.gz$")


def dist_version(install_dir: str | os.PathLike) -> str:
    """The Xen version of a staged tree: manifest.json's ``xen.version``, else the name of
    ``boot/xen-<version>.gz`` (the real file, not the shorter links)."""
    install_dir = Path(install_dir)
    manifest = install_dir / "manifest.json"
    if manifest.is_file():
        try:
            version = json.loads(manifest.read_text()).get("xen", {}).get("version")
        except (ValueError, AttributeError) as e:
            raise ProvisionError(f"{manifest} is not valid JSON: {e}", hint="run doit world again") from None
        if version:
            return str(version)
    boot = install_dir / "boot"
    found = sorted(
        m.group(1) for p in (boot.iterdir() if boot.is_dir() else [])
        if (m := _XEN_GZ.match(p.name)) and p.is_file() and not p.is_symlink()
    )
    if not found:
        raise ProvisionError(f"{install_dir} holds no Xen build (no manifest.json, no boot/xen-<version>.gz)",
                             hint="run doit world first")
    if len(found) > 1:
        raise ProvisionError(f"{install_dir}/boot holds several Xen versions ({', '.join(found)}) and no manifest.json",
                             hint="run doit clean and doit world")
    return found[0]


def _entries(install_dir: Path) -> list[tuple[str, Path]]:
    """(name in the archive relative to the top dir, path on disk), in sorted order."""
    out: list[tuple[str, Path]] = []

    def visit(directory: Path, rel: str):
        for child in sorted(directory.iterdir(), key=lambda p: p.name):
            name = f"{rel}/{child.name}"
            out.append((name, child))
            if child.is_dir() and not child.is_symlink():
                visit(child, name)

    out.append(("install", install_dir))
    visit(install_dir, "install")
    return out


def _readme(version: str, install_dir: Path) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    boot = sorted(p.name for p in (install_dir / "boot").iterdir()) if (install_dir / "boot").is_dir() else []
    others = sorted(p.name for p in install_dir.iterdir() if p.is_dir() and p.name != "boot")
    return env.get_template("install_readme.txt.j2").render(version=version, boot=boot, others=others)


def make_dist(dist_dir: str | os.PathLike = DIST) -> Path:
    """Build ``dist_dir/xen-<version>-install.tgz`` from ``dist_dir/install`` and return it."""
    dist_dir = Path(dist_dir)
    install_dir = dist_dir / "install"
    if not install_dir.is_dir():
        raise ProvisionError(f"{install_dir} does not exist", hint="run doit world first")
    if not INSTALL_SH.is_file():
        raise ProvisionError(f"{INSTALL_SH} is missing from this checkout")
    version = dist_version(install_dir)
    top = f"xen-{version}-install"
    entries = _entries(install_dir)
    if "SOURCE_DATE_EPOCH" in os.environ:
        mtime = source_date_epoch()
    else:  # same inputs, same bytes: the newest input decides
        mtime = int(max([p.lstat().st_mtime for _, p in entries] + [INSTALL_SH.stat().st_mtime]))
    readme = _readme(version, install_dir).encode()

    def info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(f"{top}/{name}" if name else top)
        ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    target = dist_dir / f"{top}.tgz"
    with log.step(f"Making {target.name}"), atomic_path(target) as tmp:
        with open(tmp, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(info("", tarfile.DIRTYPE, 0o755))
            with open(INSTALL_SH, "rb") as f:
                tar.addfile(info("install.sh", tarfile.REGTYPE, 0o755, INSTALL_SH.stat().st_size), f)
            for name, path in entries:
                st = path.lstat()
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    ti = info(name, tarfile.SYMTYPE, 0o777)
                    ti.linkname = os.readlink(path)
                    tar.addfile(ti)
                elif stat.S_ISDIR(st.st_mode):
                    tar.addfile(info(name, tarfile.DIRTYPE, mode))
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        tar.addfile(info(name, tarfile.REGTYPE, mode, st.st_size), f)
                else:
                    raise ProvisionError(f"{path}: only files, directories and symlinks can go in the tarball")
            tar.addfile(info("README", tarfile.REGTYPE, 0o644, len(readme)), io.BytesIO(readme))
        os.chmod(tmp, 0o644)
    log.info(f"{target} ({target.stat().st_size / 2**20:.1f} MiB): tar zxvf {target.name}; cd {top}; sh ./install.sh")
    return target


def _install_sh(args: list[str]) -> None:
    """Run install.sh; its one-line error becomes ours, its notes and summary are logged."""
    proc = run(["sh", INSTALL_SH, *args], check=False, quiet=True)
    for line in (proc.stderr or "").splitlines():
        if line.startswith("install.sh: note: "):
            log.note(line.removeprefix("install.sh: note: "))
    if proc.returncode != 0:
        errors = [line for line in (proc.stderr or "").splitlines() if "error: " in line]
        message = errors[0].split("error: ", 1)[1] if errors else (proc.stderr or "").strip() or "install.sh failed"
        raise ProvisionError(message, exit_code=proc.returncode if 0 < proc.returncode < 126 else 1)
    for line in (proc.stdout or "").splitlines():
        log.info(line)


def install(destdir: str | os.PathLike = "/", tree: str | os.PathLike | None = None) -> None:
    """Install ``tree`` (default dist/install) into ``destdir`` with install.sh."""
    tree = Path(tree) if tree else DIST / "install"
    if not tree.is_dir():
        raise ProvisionError(f"{tree} does not exist", hint="run doit world first")
    _install_sh(["--from", str(tree), str(destdir)])


def uninstall(destdir: str | os.PathLike = "/") -> None:
    """Remove what the record in ``destdir`` lists (install.sh --uninstall)."""
    _install_sh(["--uninstall", str(destdir)])


def register(subparsers) -> None:
    """Add ``dist``, ``install`` and ``uninstall`` to ``python -m provision`` (called from
    provision.build.cli, which owns the command list)."""
    p = subparsers.add_parser("dist", help="make dist/xen-<version>-install.tgz from dist/install")
    p.add_argument("--dist-dir", default=str(DIST), help="the dist directory (default: %(default)s)")
    p.set_defaults(func=lambda a: print(make_dist(a.dist_dir)) or 0)
    p = subparsers.add_parser("install", help="install dist/install into DESTDIR (default /), recorded")
    p.add_argument("destdir", nargs="?", default="/", metavar="DESTDIR")
    p.add_argument("--from", dest="tree", default=None, help="the tree to install (default: dist/install)")
    p.set_defaults(func=lambda a: install(a.destdir, a.tree) or 0)
    p = subparsers.add_parser("uninstall", help="remove what the last install into DESTDIR recorded")
    p.add_argument("destdir", nargs="?", default="/", metavar="DESTDIR")
    p.set_defaults(func=lambda a: uninstall(a.destdir) or 0)
