"""``doit dist`` and ``doit install``: the manual's install tarball and install.sh.

    make_dist(Path("dist"))          # -> dist/xen-4.17.5-install.tgz, dist/SHA256SUMS
    make_dist(Path("dist"), sign="KEYID")   # and dist/SHA256SUMS.asc (gpg --detach-sign)
    install("/mnt/root")             # sh install.sh --from dist/install /mnt/root
    uninstall("/mnt/root")           # sh install.sh --uninstall /mnt/root

The tarball holds ``xen-<version>-install/{install/, install.sh, README}`` and is
deterministic: sorted entries, owner root, mtimes from
$SOURCE_DATE_EPOCH, else manifest.json's pinned SOURCE_DATE_EPOCH (else the newest
input's mtime), no timestamp in the gzip header.
Installing is install.sh's job in both cases, so `doit install` and an unpacked tarball
behave the same; install.sh is also the one check of a tree against its manifest.json
(``install.sh --verify``), which make_dist runs before packing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import tarfile
from pathlib import Path

import jinja2

from provision import log, paths
from provision.cache import sha256_file
from provision.errors import ProvisionError
from provision.fsutil import atomic_path, source_date_epoch
from provision.run import CommandError, run
from provision.undo import critical, keep

RECORD = "var/lib/xen-provision/installed.list"
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.asc"
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


def _pinned_epoch(install_dir: Path) -> int | None:
    """The SOURCE_DATE_EPOCH the staged builds were pinned to (manifest.json), if any."""
    try:
        section = json.loads((install_dir / "manifest.json").read_text()).get("reproducible") or {}
    except (OSError, ValueError):
        return None
    value = section.get("SOURCE_DATE_EPOCH")
    return int(value) if isinstance(value, int) else None


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


def _check_key(key: str) -> None:
    """A --sign key gpg can sign with, checked before anything is made."""
    if not key.strip() or key.startswith("-"):
        raise ProvisionError(f"--sign '{key}' is not a gpg key id", hint="give a key id, fingerprint or e-mail address")
    try:
        run(["gpg", "--batch", "--list-secret-keys", "--", key], quiet=True)
    except CommandError:
        raise ProvisionError(f"gpg has no secret key '{key}' to sign with",
                             hint="list yours with: gpg --list-secret-keys") from None


def _sign(key: str, sums: Path, out: Path) -> None:
    try:
        run(["gpg", "--batch", "--yes", "--local-user", key, "--armor", "--detach-sign",
             "--output", out, sums], quiet=True)
    except CommandError as e:
        last = [ln for ln in e.output.splitlines() if ln.strip()][-1:] or [f"exit code {e.returncode}"]
        raise ProvisionError(f"gpg could not sign with key '{key}': {last[0].strip()}",
                             hint="a key with a passphrase needs a running gpg-agent that has it") from None


def make_dist(dist_dir: str | os.PathLike | None = None, sign: str | None = None) -> Path:
    """Build ``dist_dir/xen-<version>-install.tgz`` from ``dist_dir/install`` and return it.

    The tree is checked against its manifest.json first (install.sh --verify): a tarball
    is never made from a tree that would not install. ``SHA256SUMS`` is written beside
    it and, with ``sign`` (a gpg key), ``SHA256SUMS.asc``, its detached signature. The
    three files are renamed into place together, at the end. ``dist_dir``: as
    :func:`provision.paths.dist` says."""
    dist_dir = paths.dist(dist_dir)
    install_dir = dist_dir / "install"
    if not install_dir.is_dir():
        raise ProvisionError(f"{install_dir} does not exist", hint="run doit world first")
    install_sh = paths.install_sh()
    if not install_sh.is_file():
        raise ProvisionError(f"{install_sh} is missing", hint="reinstall xen-provision, or run from its checkout")
    if sign is not None:
        _check_key(sign)
    version = dist_version(install_dir)
    _install_sh(["--verify", "-q", "--from", str(install_dir)])
    top = f"xen-{version}-install"
    entries = _entries(install_dir)
    pinned = _pinned_epoch(install_dir)
    if "SOURCE_DATE_EPOCH" in os.environ:
        mtime = source_date_epoch()
    elif pinned is not None:  # what the builds were pinned to (manifest.json)
        mtime = pinned
    else:  # same inputs, same bytes: the newest input decides
        mtime = int(max([p.lstat().st_mtime for _, p in entries] + [install_sh.stat().st_mtime]))
    readme = _readme(version, install_dir).encode()

    def info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(f"{top}/{name}" if name else top)
        ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    target = dist_dir / f"{top}.tgz"
    signature = dist_dir / SIGNATURE
    with log.step(f"Making {target.name}"), atomic_path(target) as tmp, \
            atomic_path(dist_dir / SUMS) as sums_tmp, \
            (atomic_path(signature) if sign is not None else contextlib.nullcontext()) as sig_tmp:
        with open(tmp, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(info("", tarfile.DIRTYPE, 0o755))
            with open(install_sh, "rb") as f:
                tar.addfile(info("install.sh", tarfile.REGTYPE, 0o755, install_sh.stat().st_size), f)
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
        # sha256sum -c SHA256SUMS, in the directory of the tarball
        sums_tmp.write_text(f"{sha256_file(tmp)}  {target.name}\n")
        os.chmod(sums_tmp, 0o644)
        if sig_tmp is not None:
            _sign(sign, sums_tmp, sig_tmp)
            os.chmod(sig_tmp, 0o644)
    if sign is None:
        signature.unlink(missing_ok=True)  # it signed the SHA256SUMS this one replaced
    log.info(f"{target} ({target.stat().st_size / 2**20:.1f} MiB): tar zxvf {target.name}; cd {top}; sh ./install.sh")
    log.info(f"checksums in {dist_dir / SUMS}" + (f", signed by {sign} in {signature}" if sign else "")
             + ": sha256sum -c " + SUMS + (f"; gpg --verify {SIGNATURE} {SUMS}" if sign else ""))
    return target


def _install_sh(args: list[str], done: str | None = None) -> None:
    """Run install.sh; its one-line error becomes ours, its notes and summary are logged.

    It runs in a session of its own. On SIGINT/SIGTERM it gets SIGTERM and we wait for it
    to end: before its commit it rolls back, once in it it finishes (it ignores signals
    there). Then the interrupt goes on, and if install.sh finished, ``done`` (what it
    did) is recorded as kept, so the message of the interrupted run is true."""
    argv = ["sh", str(paths.install_sh()), *args]
    log.debug(shlex.join(argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate()
    except BaseException:
        with critical():  # a second Ctrl-C must not leave install.sh running behind us
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate()
        if proc.returncode == 0 and done:
            keep(done)
        raise
    if proc.returncode == 0 and done:
        keep(done)  # at once: an interrupt while we report must not call it undone
    for line in (err or "").splitlines():
        if line.startswith("install.sh: note: "):
            log.note(line.removeprefix("install.sh: note: "))
    if proc.returncode != 0:
        errors = [line for line in (err or "").splitlines() if "error: " in line]
        message = errors[0].split("error: ", 1)[1] if errors else (err or "").strip() or "install.sh failed"
        raise ProvisionError(message, exit_code=proc.returncode if 0 < proc.returncode < 126 else 1)
    for line in (out or "").splitlines():
        log.info(line)


def install(destdir: str | os.PathLike | None = None, tree: str | os.PathLike | None = None) -> None:
    """Install ``tree`` (default dist/install) into ``destdir`` (default /) with install.sh,
    which checks the tree against its manifest.json first; an empty ``destdir`` is refused."""
    if tree is not None and not str(tree).strip():
        raise ProvisionError("--from '' names no tree", hint="leave --from out to install dist/install")
    tree = Path(tree) if tree is not None else paths.dist() / "install"
    if not tree.is_dir():
        raise ProvisionError(f"{tree} does not exist", hint="run doit world first")
    _install_sh(["--from", str(tree), *([] if destdir is None else [str(destdir)])],
                done=f"the install of {tree} into {destdir if destdir is not None else '/'}")


def uninstall(destdir: str | os.PathLike | None = None) -> None:
    """Remove what the record in ``destdir`` (default /) lists (install.sh --uninstall)."""
    _install_sh(["--uninstall", *([] if destdir is None else [str(destdir)])],
                done=f"the uninstall from {destdir if destdir is not None else '/'}")


def register(subparsers) -> None:
    """Add ``dist``, ``install`` and ``uninstall`` to ``python -m provision`` (called from
    provision.build.cli, which owns the command list)."""
    p = subparsers.add_parser("dist", help="make dist/xen-<version>-install.tgz and SHA256SUMS from dist/install")
    p.add_argument("--dist-dir", help="the dist directory (default: $XEN_PROVISION_DIST, else ./dist)")
    p.add_argument("--sign", metavar="KEYID", help="also sign SHA256SUMS with this gpg key (SHA256SUMS.asc)")
    p.set_defaults(func=_cmd_dist)
    p = subparsers.add_parser("install", help="install dist/install into DESTDIR (default /), checked and recorded")
    p.add_argument("destdir", nargs="?", default=None, metavar="DESTDIR")
    p.add_argument("--from", dest="tree", default=None, help="the tree to install (default: dist/install)")
    p.set_defaults(func=lambda a: install(a.destdir, a.tree) or 0)
    p = subparsers.add_parser("uninstall", help="remove what the last install into DESTDIR recorded")
    p.add_argument("destdir", nargs="?", default=None, metavar="DESTDIR")
    p.set_defaults(func=lambda a: uninstall(a.destdir) or 0)


def _cmd_dist(args) -> int:
    if args.dist_dir is not None and not args.dist_dir.strip():
        raise ProvisionError("--dist-dir '' names no directory", hint="leave --dist-dir out for dist/")
    print(make_dist(args.dist_dir, sign=args.sign))
    return 0
