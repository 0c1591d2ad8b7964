"""doit tasks for the install half of ``make world``: dist, install, uninstall.

    doit dist [--sign KEYID]          # dist/xen-<version>-install.tgz, SHA256SUMS(.asc)
    doit install [DESTDIR=/mnt/root]  # install dist/install, recorded (destdir= works too)
    doit uninstall [DESTDIR=...]      # remove exactly what the record lists

``dist=DIR`` moves dist/ as it does for ``doit world`` (provision/paths.py).

dodo.py imports these; the logic is in :mod:`provision.build.install` and install.sh.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from doit import get_var
from doit.exceptions import TaskFailed

from provision import paths
from provision.build import install as inst
from provision.errors import ProvisionError
from provision.tasks import variables

_CODE = [paths.install_sh(), Path(inst.__file__), Path(inst.__file__).with_name("install_readme.txt.j2")]


def _dist() -> Path:
    return variables().dist


def _install_dir() -> Path:
    return _dist() / "install"


def _manifest() -> Path:
    return _install_dir() / "manifest.json"


def _destdir() -> list[str]:
    """install.sh's DESTDIR argument: none when DESTDIR= was not given (install.sh then
    installs into /, as in the manual); an empty DESTDIR= is passed on, and refused."""
    for name in ("DESTDIR", "destdir"):
        value = get_var(name, None)
        if value is not None:
            return [value]
    return []


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
    sign = task.options.get("sign")
    return (bool(tarball) and Path(tarball).exists() and (_dist() / inst.SUMS).exists()
            and values.get("sign") == sign and (sign is None or (_dist() / inst.SIGNATURE).exists())
            and values.get("tree") == _tree_digest())


def _make_dist(sign):
    try:
        tarball = inst.make_dist(_dist(), sign=sign)
    except ProvisionError as e:  # one line, as from python -m provision dist; no traceback
        return TaskFailed(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""))
    return {"tarball": str(tarball), "tree": _tree_digest(), "sign": sign}


def clean_dist() -> None:
    for path in [*_dist().glob("xen-*-install.tgz"), _dist() / inst.SUMS, _dist() / inst.SIGNATURE]:
        if path.exists():
            path.unlink()
            print(f"removed {path}")


def task_dist():
    """Make dist/xen-<version>-install.tgz (install tree, install.sh, README) and SHA256SUMS; --sign KEYID signs it."""
    return {
        "actions": [_make_dist],
        "params": [{"name": "sign", "long": "sign", "type": str, "default": None,
                    "help": "gpg key to sign SHA256SUMS with (writes SHA256SUMS.asc)"}],
        "file_dep": [str(_manifest()), *map(str, _CODE)],
        "uptodate": [_tree_unchanged],
        "clean": [clean_dist],
        "verbosity": 2,
    }


def task_install():
    """Install dist/install into DESTDIR (default /; doit install DESTDIR=/mnt/root), recorded."""
    return {
        "actions": [["sh", str(paths.install_sh()), "--from", str(_install_dir()), *_destdir()]],
        "file_dep": [str(_manifest()), str(paths.install_sh())],
        # install.sh compares every file itself (and is quick when nothing changed); the
        # target may have changed under us, so always let it look.
        "uptodate": [False],
        "verbosity": 2,
    }


def task_uninstall():
    """Remove from DESTDIR (default /) exactly what the last install recorded there."""
    return {
        "actions": [["sh", str(paths.install_sh()), "--uninstall", *_destdir()]],
        "uptodate": [False],
        "verbosity": 2,
    }
