"""A tiny initramfs around busybox-static that runs a given ``/init`` script: the
quickest proof that a kernel reaches userspace."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from provision import cache
from provision.cache import cache_dir, manifest_key, sha256_file, staging
from provision.errors import ProvisionError
from provision.fsutil import atomic_path
from provision.run import require, run

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def _busybox() -> Path:
    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path):
            return Path(path)
    raise ProvisionError("busybox-static was not found",
                         hint="install it: apt-get install busybox-static")


def busybox_initramfs(init: str, *, files: dict[str, str | bytes | Path] | None = None,
                      out: str | os.PathLike | None = None) -> Path:
    """A gzip'd newc initramfs: busybox-static, its applet links, ``/init`` = ``init``.

    ``files`` maps paths inside the initramfs to contents (text, bytes, or a host Path
    to copy, e.g. kernel modules). Output is deterministic and cached under
    ``initramfs/<key>.cpio.gz`` keyed by the script, the files and busybox itself;
    with ``out`` it is also copied there. The script runs as PID 1: end it with
    ``poweroff -f`` (with ``-no-reboot`` QEMU then exits).
    """
    require("cpio")
    busybox = _busybox()
    files = dict(files or {})
    manifest = {"init": init, "busybox": sha256_file(busybox), "files": {}}
    for name, content in sorted(files.items()):
        if isinstance(content, Path):
            manifest["files"][name] = "sha256:" + sha256_file(content)
        else:
            data = content.encode() if isinstance(content, str) else content
            manifest["files"][name] = "sha256:" + hashlib.sha256(data).hexdigest()
    entry = cache.Entry(cache_dir("initramfs") / f"{manifest_key(manifest)}.cpio.gz")

    def build(path: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="initramfs.") as tmp:
            root = Path(tmp)
            _populate(root, busybox, init, files)
            names = sorted(_walk(root))
            archive = run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
                          input=("\n".join(names) + "\n").encode(), capture=True, cwd=root).stdout
        with staging(path) as tmp_out, open(tmp_out, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(archive)
        return manifest

    cache.obtain(entry, build)
    cached = entry.path
    if out is not None:
        with atomic_path(out) as tmp_out:
            shutil.copyfile(cached, tmp_out)
        return Path(out)
    return cached


def _populate(root: Path, busybox: Path, init: str, files: dict) -> None:
    epoch = 0
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))
    (root / "init").write_text(init if init.startswith("#!") else "#!/bin/sh\n" + init)
    os.chmod(root / "init", 0o755)
    for name, content in files.items():
        dest = root / name.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, dest)
            os.chmod(dest, content.stat().st_mode & 0o777)
        else:
            dest.write_bytes(content.encode() if isinstance(content, str) else content)
    for path in _walk(root):
        os.utime(root / path, (epoch, epoch), follow_symlinks=False)


def _walk(root: Path) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            yield rel
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            yield os.path.normpath(os.path.join(rel, name))
