"""install.sh against DESTDIRs it cannot write: a read-only bind mount, and an unprivileged
user (setpriv). One line, non-zero exit, nothing changed. Needs root."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from provision.build import install as inst
from provision.errors import ProvisionError


def _unit_helpers():
    # The synthetic tree and snapshot helpers live with the unit tests (tests/ is no package).
    spec = importlib.util.spec_from_file_location(
        "install_unit_helpers", Path(__file__).resolve().parents[1] / "unit" / "test_install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_h = _unit_helpers()
INSTALL_SH, make_tree, snapshot = _h.INSTALL_SH, _h.make_tree, _h.snapshot

pytestmark = pytest.mark.integration
NOBODY = 65534


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "dist" / "install")


@pytest.fixture
def readonly_dest(tmp_path, root_required):
    dest = tmp_path / "ro"
    (dest / "boot").mkdir(parents=True)
    (dest / "boot" / "vmlinuz-debian").write_text("theirs")
    subprocess.run(["mount", "--bind", dest, dest], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", dest], check=True)
        yield dest
    finally:
        subprocess.run(["umount", dest], check=True)


def test_readonly_destdir_is_one_line_and_changes_nothing(tree, readonly_dest):
    before = snapshot(readonly_dest)
    proc = subprocess.run(["sh", INSTALL_SH, "--from", tree, readonly_dest], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"install.sh: error: DESTDIR {readonly_dest} is not writable "
        "(run as root, or choose a DESTDIR you can write)"]
    assert snapshot(readonly_dest) == before
    with pytest.raises(ProvisionError, match="is not writable"):
        inst.install(readonly_dest, tree)


def test_readonly_destdir_uninstall(tree, tmp_path, root_required):
    dest = tmp_path / "ro"
    dest.mkdir()
    inst.install(dest, tree)
    before = snapshot(dest)
    subprocess.run(["mount", "--bind", dest, dest], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", dest], check=True)
        proc = subprocess.run(["sh", INSTALL_SH, "--uninstall", dest], capture_output=True, text=True)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
        assert "is not writable" in proc.stderr
        assert snapshot(dest) == before
    finally:
        subprocess.run(["umount", dest], check=True)


def as_nobody(*argv, cwd="/"):
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, env={"PATH": os.environ["PATH"], "TMPDIR": "/tmp"})


@pytest.fixture
def public_tmp(root_required):
    """A temp dir an unprivileged user can reach (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="xen-install-test."))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def shared_tree(public_tmp):
    """The tree and install.sh where an unprivileged user can read them."""
    tree = make_tree(public_tmp / "pub" / "install")
    script = public_tmp / "pub" / "install.sh"
    shutil.copy(INSTALL_SH, script)
    for p in [public_tmp / "pub", *(public_tmp / "pub").rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, os.stat(p).st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    return tree, script


def test_unprivileged_user_and_root_owned_destdir(shared_tree, public_tmp):
    tree, script = shared_tree
    dest = public_tmp / "rootfs"
    dest.mkdir(mode=0o755)
    (dest / "etc").mkdir()
    before = snapshot(dest)
    proc = as_nobody("sh", script, dest)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"install.sh: error: DESTDIR {dest} is not writable (run as root, or choose a DESTDIR you can write)"]
    assert snapshot(dest) == before


def test_unwritable_subdirectory_rolls_back_everything(shared_tree, public_tmp):
    """DESTDIR is the user's, but usr/ (sorted after boot/ and etc/) belongs to root: the
    copies made so far and the directories made for them are all taken away again."""
    tree, script = shared_tree
    dest = public_tmp / "mine"
    dest.mkdir()
    (dest / "usr").mkdir(mode=0o755)
    (dest / "etc").mkdir()
    os.chown(dest, NOBODY, NOBODY)
    os.chown(dest / "etc", NOBODY, NOBODY)
    before = snapshot(dest)
    proc = as_nobody("sh", script, dest)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"install.sh: error: cannot write in {dest}/usr (not writable: run as root?)"]
    assert snapshot(dest) == before
    assert not list(dest.rglob(".xen-new.*"))


def test_unprivileged_user_installs_into_their_own_destdir(shared_tree, public_tmp):
    tree, script = shared_tree
    dest = public_tmp / "home-root"
    dest.mkdir()
    os.chown(dest, NOBODY, NOBODY)
    proc = as_nobody("sh", script, dest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert os.readlink(dest / "boot/xen.gz") == "xen-4.17.5.gz"
    assert (dest / "usr/sbin/xl").stat().st_uid == NOBODY
    proc = as_nobody("sh", script, "--uninstall", dest)
    assert proc.returncode == 0, proc.stderr
    assert list(dest.iterdir()) == []


def test_cli_readonly_destdir(tree, readonly_dest, run_cli):
    proc = run_cli("install", "--from", tree, readonly_dest)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: DESTDIR {readonly_dest} is not writable (run as root, or choose a DESTDIR you can write)"]


def test_full_filesystem_midway_rolls_back_everything(tree, tmp_path, root_required):
    """DESTDIR is a 256 KiB tmpfs and usr/ (copied after boot/ and etc/) holds a 400 KiB
    library: the copy fails half-way, and every staged file and directory goes away."""
    (tree / "usr/lib/libbig.so").write_bytes(os.urandom(400 * 1024))
    _h.stage.seal(tree, {"format": 2, "xen": {"version": "4.17.5"}})  # as doit world would
    dest = tmp_path / "small"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dest], check=True)
    try:
        (dest / "boot").mkdir()
        (dest / "boot/vmlinuz-debian").write_text("theirs")
        before = snapshot(dest)
        proc = subprocess.run(["sh", INSTALL_SH, "--from", tree, dest], capture_output=True, text=True)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [f"install.sh: error: cannot write in {dest} (full?)"]
        assert snapshot(dest) == before
        assert not list(dest.rglob(".xen-new.*"))
    finally:
        subprocess.run(["umount", dest], check=True)
