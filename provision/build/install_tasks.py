"""doit tasks for the install half of ``make world``: dist, install, uninstall.

    doit dist                         # dist/xen-<version>-install.tgz
    doit install [DESTDIR=/mnt/root]  # install dist/install, recorded (destdir= works too)
    doit uninstall [DESTDIR=...]      # remove exactly what the record lists

``dist=DIR`` moves dist/ as it does for ``doit world``.

dodo.py imports these; the logic is in :mod:`provision.build.install` and install.sh.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from doit import get_var

from provision.build import install as inst

_CODE = [inst.INSTALL_SH, Path(inst.__file__), Path(inst.__file__).with_name("install_readme.txt.j2")]


def _dist() -> Path:
    return Path(get_var("dist", None) or inst.DIST).resolve()


def _install_dir() -> Path:
    return _dist() / "install"


def _manifest() -> Path:
    return _install_dir() / "manifest.json"


def _destdir() -> str:
    return get_var("DESTDIR", None) or get_var("destdir", None) or "/"


def _tree_digest() -> str:
    """Names, modes, sizes, mtimes and link targets of dist/install: what the tarball holds."""
    h = hashlib.sha256()
    top = _install_dir()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else ""
            h.update(f"{os.path.relpath(path, top)}\0{st.st_mode}\0{st.st_size}\0"
                     f"{st.st_mtime_ns}\0{link}\n".encode())
    return h.hexdigest()


def _tree_unchanged(task, values) -> bool:
    tarball = values.get("tarball")
    return bool(tarball) and Path(tarball).exists() and values.get("tree") == _tree_digest()


def _make_dist() -> dict:
    tarball = inst.make_dist(_dist())
    return {"tarball": str(tarball), "tree": _tree_digest()}


def clean_dist() -> None:
    for tarball in _dist().glob("xen-*-install.tgz"):
        tarball.unlink()
        print(f"removed {tarball}")


def task_dist():
    """Make dist/xen-<version>-install.tgz (install tree, install.sh, README) from dist/install."""
    return {
        "actions": [_make_dist],
        "file_dep": [str(_manifest()), *map(str, _CODE)],
        "uptodate": [_tree_unchanged],
        "clean": [clean_dist],
        "verbosity": 2,
    }


def task_install():
    """Install dist/install into DESTDIR (default /; doit install DESTDIR=/mnt/root), recorded."""
    destdir = _destdir()
    return {
        "actions": [["sh", str(inst.INSTALL_SH), "--from", str(_install_dir()), destdir]],
        "file_dep": [str(_manifest()), str(inst.INSTALL_SH)],
        # install.sh compares every file itself (and is quick when nothing changed); the
        # target may have changed under us, so always let it look.
        "uptodate": [False],
        "verbosity": 2,
    }


def task_uninstall():
    """Remove from DESTDIR (default /) exactly what the last install recorded there."""
    return {
        "actions": [["sh", str(inst.INSTALL_SH), "--uninstall", _destdir()]],
        "uptodate": [False],
        "verbosity": 2,
    }
