"""install.sh (run for real with sh, dash and bash --posix) and the dist tarball, on a
synthetic dist/install tree in temp directories. No root needed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from provision.build import install as inst
from provision.build import stage
from provision.errors import ProvisionError

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SH = ROOT / "install.sh"
SHELLS = [s for s in (["sh"], ["dash"], ["bash", "--posix"]) if shutil.which(s[0])]


def make_tree(root: Path, version: str = "4.17.5", conf: str = "autoballoon=0\n") -> Path:
    """A small dist/install: files, symlinks, an executable, etc/ files, an empty dir."""
    def put(rel: str, data: bytes | str, mode: int = 0o644):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(mode)

    put(f"boot/xen-{version}.gz", b"\x1f\x8b" + version.encode() * 100)
    for link in (f"xen-{version.rsplit('.', 1)[0]}.gz", f"xen-{version.split('.')[0]}.gz", "xen.gz"):
        (root / "boot" / link).symlink_to(f"xen-{version}.gz")
    put("boot/vmlinuz-6.1.176-xen0", b"kernel" * 50)
    put("usr/sbin/xl", "#!/bin/sh\necho xl\n", 0o755)
    put("usr/lib/libxenlight.so.4.17.0", b"\x7fELF lib", 0o755)
    (root / "usr/lib/libxenlight.so.4.17").symlink_to("libxenlight.so.4.17.0")
    put("usr/share/doc/xen/READ ME.txt", "a name with a space\n")
    put("etc/xen/xl.conf", conf)
    put("etc/xen/secret.conf", "key=1\n", 0o600)
    put("etc/default/xendomains", "XENDOMAINS_SAVE=\n")
    (root / "var/lib/xen").mkdir(parents=True)
    stage.seal(root, {"format": 2, "xen": {"version": version}})
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, content hash or link target, and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("f", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
    return out


def run_sh(*args, shell=("sh",), cwd=None, script=INSTALL_SH):
    return subprocess.run([*shell, str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def record(dest: Path) -> list[list[str]]:
    return [line.split("\t") for line in (dest / inst.RECORD).read_text().splitlines()]


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "dist" / "install")


def test_install_sh_is_posix():
    for shell in ("sh", "dash"):
        assert subprocess.run([shell, "-n", str(INSTALL_SH)]).returncode == 0
    assert INSTALL_SH.read_text().startswith("#!/bin/sh\n")


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_install_preserves_modes_links_and_records(tree, tmp_path, shell):
    dest = tmp_path / "dest"
    proc = run_sh("--from", tree, dest, shell=shell)
    assert proc.returncode == 0, proc.stderr
    assert "installed 13 files and links" in proc.stdout
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree)
        if rel == Path("manifest.json"):
            continue
        d = dest / rel
        if p.is_symlink():
            assert d.is_symlink() and os.readlink(d) == os.readlink(p), rel
        elif p.is_dir():
            assert d.is_dir() and not d.is_symlink(), rel
        else:
            assert d.read_bytes() == p.read_bytes(), rel
            assert stat.S_IMODE(d.stat().st_mode) == stat.S_IMODE(p.stat().st_mode), rel
    assert os.access(dest / "usr/sbin/xl", os.X_OK)
    assert stat.S_IMODE((dest / "etc/xen/secret.conf").stat().st_mode) == 0o600
    # The build manifest is kept beside the record, not dropped at the top of DESTDIR.
    assert not (dest / "manifest.json").exists()
    assert json.loads((dest / "var/lib/xen-provision/manifest.json").read_text())["xen"]["version"] == "4.17.5"
    entries = {r[2]: r for r in record(dest)}
    assert entries["boot/xen.gz"] == ["l", "xen-4.17.5.gz", "boot/xen.gz"]
    assert entries["usr/share/doc/xen/READ ME.txt"][0] == "f"
    for rel, (kind, value, _) in entries.items():
        if kind == "f":
            assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == value, rel
    assert entries["var/lib/xen"][0] == "d"
    # no temporaries left behind
    assert not [p for p in dest.rglob(".xen-new.*")]


def test_reinstall_is_idempotent(tree, tmp_path):
    dest = tmp_path / "dest"
    assert run_sh("--from", tree, dest).returncode == 0
    before = snapshot(dest)
    proc = run_sh("--from", tree, dest)
    assert proc.returncode == 0, proc.stderr
    assert "installed 0 files and links" in proc.stdout and "(13 unchanged)" in proc.stdout
    assert snapshot(dest) == before  # not even an mtime moved


def test_user_changed_etc_file_is_kept(tree, tmp_path):
    dest = tmp_path / "dest"
    assert run_sh("--from", tree, dest).returncode == 0
    (dest / "etc/xen/xl.conf").write_text("autoballoon=1  # mine\n")
    new = make_tree(tmp_path / "v2", "4.17.6", conf="autoballoon=0\nlockfile=/run/xl\n")
    proc = run_sh("--from", new, dest)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "etc/xen/xl.conf").read_text() == "autoballoon=1  # mine\n"
    assert (dest / "etc/xen/xl.conf.xen-new").read_text() == "autoballoon=0\nlockfile=/run/xl\n"
    assert f"note: kept your {dest}/etc/xen/xl.conf; the new version is {dest}/etc/xen/xl.conf.xen-new" in proc.stderr
    # Everything else was upgraded, and the old version's files went away.
    assert (dest / "boot/xen-4.17.6.gz").exists() and not (dest / "boot/xen-4.17.5.gz").exists()
    assert os.readlink(dest / "boot/xen.gz") == "xen-4.17.6.gz"
    paths = [r[2] for r in record(dest)]
    assert "etc/xen/xl.conf.xen-new" in paths and "etc/xen/xl.conf" not in paths
    # Uninstall removes ours (the .xen-new too) and keeps the user's file.
    proc = run_sh("--uninstall", dest)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "etc/xen/xl.conf").read_text() == "autoballoon=1  # mine\n"
    assert not (dest / "etc/xen/xl.conf.xen-new").exists()


def test_preexisting_etc_file_is_never_clobbered(tree, tmp_path):
    dest = tmp_path / "dest"
    (dest / "etc/xen").mkdir(parents=True)
    (dest / "etc/xen/xl.conf").write_text("from the distribution\n")
    proc = run_sh("--from", tree, dest)
    assert proc.returncode == 0
    assert (dest / "etc/xen/xl.conf").read_text() == "from the distribution\n"
    assert (dest / "etc/xen/xl.conf.xen-new").read_text() == "autoballoon=0\n"
    assert run_sh("--uninstall", dest).returncode == 0
    assert (dest / "etc/xen/xl.conf").read_text() == "from the distribution\n"
    assert not (dest / "etc/xen/xl.conf.xen-new").exists()


def test_unchanged_etc_file_is_upgraded(tree, tmp_path):
    dest = tmp_path / "dest"
    assert run_sh("--from", tree, dest).returncode == 0
    new = make_tree(tmp_path / "v2", conf="autoballoon=auto\n")
    proc = run_sh("--from", new, dest)
    assert proc.returncode == 0 and "note:" not in proc.stderr
    assert (dest / "etc/xen/xl.conf").read_text() == "autoballoon=auto\n"
    assert not (dest / "etc/xen/xl.conf.xen-new").exists()


def test_uninstall_removes_exactly_the_record(tree, tmp_path):
    dest = tmp_path / "dest"
    # The user's own files and directories, some beside ours.
    (dest / "boot").mkdir(parents=True)
    (dest / "boot/vmlinuz-6.1.0-debian").write_text("debian kernel")
    (dest / "etc").mkdir()
    (dest / "etc/hostname").write_text("host\n")
    (dest / "var/lib").mkdir(parents=True)
    before = snapshot(dest)
    assert run_sh("--from", tree, dest).returncode == 0
    (dest / "usr/sbin/my-tool").write_text("added by the user later\n")
    proc = run_sh("--uninstall", dest)
    assert proc.returncode == 0, proc.stderr
    assert "removed 13 files and links" in proc.stdout
    after = snapshot(dest)
    assert after.pop("usr/sbin/my-tool")[0] == "f"
    # Directories we made are gone unless they still hold the user's file.
    assert after.pop("usr") and after.pop("usr/sbin")
    assert after == before
    again = run_sh("--uninstall", dest)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [f"install.sh: error: nothing to uninstall: no record at {dest}/{inst.RECORD}"]


def test_changed_binary_is_kept_on_uninstall(tree, tmp_path):
    dest = tmp_path / "dest"
    assert run_sh("--from", tree, dest).returncode == 0
    (dest / "usr/sbin/xl").write_text("#!/bin/sh\necho patched\n")
    proc = run_sh("--uninstall", dest)
    assert proc.returncode == 0
    assert f"kept {dest}/usr/sbin/xl: changed since it was installed" in proc.stdout
    assert (dest / "usr/sbin/xl").exists() and not (dest / "boot/xen.gz").exists()


def test_conflict_midway_changes_nothing(tree, tmp_path):
    """usr/share is a file in DESTDIR: found only after boot/ and etc/ were staged. The run
    fails with one line and every staged file and made directory is taken away again."""
    dest = tmp_path / "dest"
    (dest / "usr").mkdir(parents=True)
    (dest / "usr/share").write_text("in the way\n")
    before = snapshot(dest)
    proc = run_sh("--from", tree, dest)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"install.sh: error: cannot install: {dest}/usr/share exists and is not a directory"]
    assert snapshot(dest) == before


def test_new_destdir_is_removed_again_on_failure(tree, tmp_path):
    (tree / "dev").mkdir()
    os.mkfifo(tree / "dev" / "fifo")
    stage.seal(tree, {"format": 2, "xen": {"version": "4.17.5"}})
    dest = tmp_path / "new-root"
    proc = run_sh("--from", tree, dest)
    assert proc.returncode == 1
    # The fifo is no file the manifest lists: refused before DESTDIR is even made.
    assert "dev/fifo: not in manifest.json" in proc.stderr
    assert not dest.exists()


def test_bad_arguments(tree, tmp_path):
    proc = run_sh("--frobnicate")
    assert proc.returncode == 2 and "unknown option --frobnicate" in proc.stderr
    proc = run_sh("a", "b")
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = run_sh("--from", tmp_path / "nope", tmp_path / "dest")
    assert proc.returncode == 1
    assert "nothing to install" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dest").exists()
    proc = run_sh("--from", tree, tmp_path / "no" / "such" / "root")
    assert proc.returncode == 1 and "does not exist, nor does its parent" in proc.stderr


# ------------------------------------------------------------------ make_dist


def test_dist_version(tree, tmp_path):
    assert inst.dist_version(tree) == "4.17.5"
    (tree / "manifest.json").unlink()
    assert inst.dist_version(tree) == "4.17.5"  # from boot/xen-4.17.5.gz, not its links
    (tree / "boot/xen-4.17.5.gz").unlink()
    with pytest.raises(ProvisionError, match="holds no Xen build"):
        inst.dist_version(tree)


def test_make_dist_layout_and_manual_install_flow(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    tgz = inst.make_dist(tmp_path / "dist")
    assert tgz == tmp_path / "dist" / "xen-4.17.5-install.tgz"
    names = subprocess.run(["tar", "tzf", tgz], capture_output=True, text=True, check=True).stdout.split("\n")
    names = [n for n in names if n]
    assert names[:4] == ["xen-4.17.5-install/", "xen-4.17.5-install/install.sh",
                         "xen-4.17.5-install/install/", "xen-4.17.5-install/install/boot/"]
    assert names[-1] == "xen-4.17.5-install/README"
    assert "xen-4.17.5-install/install/manifest.json" in names
    assert "xen-4.17.5-install/install/usr/share/doc/xen/READ ME.txt" in names
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "root", "root", 1700000000), m.name
        assert tar.getmember("xen-4.17.5-install/install.sh").mode == 0o755
        assert tar.getmember("xen-4.17.5-install/install/etc/xen/secret.conf").mode == 0o600
        assert tar.getmember("xen-4.17.5-install/install/boot/xen.gz").linkname == "xen-4.17.5.gz"
        readme = tar.extractfile("xen-4.17.5-install/README").read().decode()
    assert "tar zxvf xen-4.17.5-install.tgz" in readme and "boot/vmlinuz-6.1.176-xen0" in readme
    # As in the manual: tar zxvf; cd; sh ./install.sh DESTDIR
    work = tmp_path / "unpack"
    work.mkdir()
    subprocess.run(["tar", "zxf", tgz], cwd=work, check=True)
    dest = tmp_path / "dest"
    proc = subprocess.run(["sh", "./install.sh", str(dest)], cwd=work / "xen-4.17.5-install",
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(dest / "boot/xen.gz") == "xen-4.17.5.gz"
    assert os.access(dest / "usr/sbin/xl", os.X_OK)


def test_make_dist_is_deterministic(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first = inst.make_dist(tmp_path / "dist").read_bytes()
    second = inst.make_dist(tmp_path / "dist").read_bytes()
    assert first == second
    # The same tree elsewhere (another checkout, another time) gives the same bytes too.
    other = tmp_path / "elsewhere" / "dist"
    shutil.copytree(tmp_path / "dist" / "install", other / "install", symlinks=True)
    for p in [other / "install", *(other / "install").rglob("*")]:
        os.utime(p, ns=(0, (tmp_path / "dist" / "install" / p.relative_to(other / "install")).lstat().st_mtime_ns),
                 follow_symlinks=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = inst.make_dist(tmp_path / "dist").read_bytes()
    b = inst.make_dist(other).read_bytes()
    assert a == b
    # gzip header carries no name or timestamp
    assert a[4:8] == b"\0\0\0\0" and not (a[3] & 0x08)


def test_make_dist_without_a_build(tmp_path):
    with pytest.raises(ProvisionError, match="does not exist"):
        inst.make_dist(tmp_path / "dist")


# ------------------------------------------------------------------ Python API, CLI, doit tasks


def test_python_install_and_uninstall(tree, tmp_path, capfd):
    dest = tmp_path / "dest"
    inst.install(dest, tree)
    assert (dest / "boot/xen-4.17.5.gz").exists()
    assert "installed 13 files and links" in capfd.readouterr().err
    inst.uninstall(dest)
    assert not (dest / "boot").exists()
    with pytest.raises(ProvisionError) as e:
        inst.uninstall(dest)
    assert str(e.value) == f"nothing to uninstall: no record at {dest}/{inst.RECORD}"


def test_cli_parsers_registered(tree, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    inst.register(parser.add_subparsers())
    args = parser.parse_args(["install", "--from", str(tree), str(tmp_path / "d")])
    assert args.func(args) == 0 and (tmp_path / "d/usr/sbin/xl").exists()
    args = parser.parse_args(["uninstall", str(tmp_path / "d")])
    assert args.func(args) == 0 and not (tmp_path / "d/usr").exists()


def test_doit_tasks(tree, tmp_path):
    """doit dist / install / uninstall for real, on a temp dist directory."""
    (tmp_path / "dodo.py").write_text(
        "from provision.build.install_tasks import task_dist, task_install, task_uninstall  # noqa: F401\n")
    env = {**os.environ, "XEN_PROVISION_DIST": str(tmp_path / "dist"), "SOURCE_DATE_EPOCH": "1700000000",
           "PYTHONPATH": str(ROOT)}

    def doit(command, *args):
        db = [] if command == "list" else ["--db-file", str(tmp_path / ".doit.db")]
        proc = subprocess.run([sys.executable, "-m", "doit", command, *db, *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    listing = doit("list")
    assert "dist" in listing and "Install dist/install into DESTDIR" in listing
    out = doit("run", "dist")
    tgz = tmp_path / "dist" / "xen-4.17.5-install.tgz"
    assert tgz.exists() and ".  dist" in out
    assert "-- dist" in doit("run", "dist")  # up to date
    (tree / "usr/sbin/xl").write_text("#!/bin/sh\necho new\n")
    stage.seal(tree, {"format": 2, "xen": {"version": "4.17.5"}})  # as doit world restages
    assert ".  dist" in doit("run", "dist")  # a changed tree makes a new tarball
    dest = tmp_path / "dest"
    assert "installed 13 files" in doit("run", "install", f"DESTDIR={dest}")
    assert "installed 0 files" in doit("run", "install", f"destdir={dest}")
    doit("run", "uninstall", f"DESTDIR={dest}")
    assert not (dest / "usr").exists()
    doit("clean", "dist")
    assert not tgz.exists()


def test_cli_install_dist_and_bad_input(tree, tmp_path, run_cli):
    dest = tmp_path / "dest"
    proc = run_cli("install", "--from", tree, dest)
    assert proc.returncode == 0, proc.stderr
    assert "installed 13 files and links" in proc.stderr
    proc = run_cli("uninstall", dest)
    assert proc.returncode == 0 and "removed 13 files and links" in proc.stderr
    proc = run_cli("uninstall", dest)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: nothing to uninstall: no record at {dest}/{inst.RECORD}"]
    proc = run_cli("dist", "--dist-dir", tmp_path / "dist", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "dist" / "xen-4.17.5-install.tgz")
    proc = run_cli("dist", "--dist-dir", tmp_path / "empty")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {tmp_path}/empty/install does not exist",
                                        "hint: run doit world first"]


# ------------------------------------------------------------------ issue 14: DESTDIR, integrity


def _one_line(proc, expected: str, prefix: str = "install.sh: error: ") -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error: " in ln]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith(prefix) and expected in errors[0], proc.stderr
    return errors[0]


@pytest.mark.parametrize("blank", ["", " ", "\t \n"])
def test_empty_destdir_is_an_error_never_root(tree, tmp_path, run_cli, blank):
    """'sh install.sh $UNSET' must not install into /: only no DESTDIR at all means /."""
    before = snapshot(tmp_path)
    for shell in SHELLS:
        _one_line(run_sh("--from", tree, blank, shell=shell, cwd=tmp_path), "is empty")
        _one_line(run_sh("--uninstall", blank, shell=shell, cwd=tmp_path), "is empty")
    _one_line(run_cli("install", "--from", tree, blank, cwd=tmp_path), "is empty", prefix="error: ")
    _one_line(run_cli("uninstall", blank, cwd=tmp_path), "is empty", prefix="error: ")
    with pytest.raises(ProvisionError, match="is empty"):
        inst.install(blank, tree)
    assert snapshot(tmp_path) == before
    assert not Path("/", inst.RECORD).exists() or "xen-provision-test" not in Path("/", inst.RECORD).read_text()


def test_doit_install_with_empty_destdir(tree, tmp_path):
    (tmp_path / "dodo.py").write_text("from provision.build.install_tasks import task_install  # noqa: F401\n")
    env = {**os.environ, "XEN_PROVISION_DIST": str(tree.parent), "PYTHONPATH": str(ROOT)}
    before = snapshot(tmp_path)
    for var in ("DESTDIR=", "destdir= "):
        proc = subprocess.run([sys.executable, "-m", "doit", "run", "--db-file", str(tmp_path / "db"), "install", var],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode != 0
        assert "install.sh: error: DESTDIR" in proc.stderr and "is empty" in proc.stderr, proc.stdout + proc.stderr
        assert "installed" not in proc.stdout
    after = snapshot(tmp_path)
    after = {k: v for k, v in after.items() if not k.startswith("db")}
    assert after == before


def _unpacked(tgz: Path, where: Path) -> Path:
    where.mkdir()
    subprocess.run(["tar", "zxf", tgz], cwd=where, capture_output=True)  # a damaged one complains
    return where / tgz.name.removesuffix(".tgz")


def test_truncated_tarball_installs_nothing(tree, tmp_path, run_cli):
    """A tarball cut anywhere unpacks to a tree that install.sh (and python -m provision
    install) refuses before touching DESTDIR, naming the first bad file."""
    tgz = inst.make_dist(tmp_path / "dist")
    data = tgz.read_bytes()
    refused = set()
    for i, cut in enumerate(range(len(data) // 12, len(data) - 64, len(data) // 12)):
        short = tmp_path / f"cut{i}" / tgz.name
        short.parent.mkdir()
        short.write_bytes(data[:cut])
        top = _unpacked(short, tmp_path / f"cut{i}" / "unpacked")
        if not (top / "install.sh").exists():
            continue
        dest = tmp_path / f"cut{i}" / "dest"
        proc = subprocess.run(["sh", top / "install.sh", dest], capture_output=True, text=True)
        line = _one_line(proc, "nothing" if (top / "install").is_dir() else "")
        refused.add(re.sub(r"/tmp/\S+", "PATH", line))
        assert not dest.exists(), line
        proc = run_cli("install", "--from", top / "install", dest)
        _one_line(proc, "", prefix="error: ")
        assert not dest.exists()
    assert len(refused) >= 3, refused  # cut at several places, for several reasons
    whole = _unpacked(tgz, tmp_path / "whole")
    proc = subprocess.run(["sh", whole / "install.sh", tmp_path / "dest"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("damage, expected", [
    (lambda t: (t / "usr/sbin/xl").write_text("#!/bin/sh\necho XL\n"), "usr/sbin/xl: its sha256 differs"),
    (lambda t: os.truncate(t / "boot/vmlinuz-6.1.176-xen0", 7), "boot/vmlinuz-6.1.176-xen0: 7 bytes, manifest.json says 300 (truncated?)"),
    (lambda t: (t / "etc/xen/xl.conf").unlink(), "etc/xen/xl.conf: missing"),
    (lambda t: (t / "var/lib/xen").rmdir(), "var/lib/xen: missing directory"),
    (lambda t: (t / "usr/sbin/extra").write_text("x"), "usr/sbin/extra: not in manifest.json"),
    (lambda t: ((t / "boot/xen.gz").unlink(), (t / "boot/xen.gz").symlink_to("xen-4.gz")),
     "boot/xen.gz: a link to xen-4.gz, manifest.json says xen-4.17.5.gz"),
    (lambda t: (t / "manifest.json").write_text((t / "manifest.json").read_text()[:500]), "manifest.json is incomplete"),
    (lambda t: (t / "manifest.json").unlink(), "has no manifest.json"),
])
def test_damaged_tree_is_refused_naming_the_first_bad_file(tree, tmp_path, damage, expected):
    damage(tree)
    dest = tmp_path / "dest"
    for shell in SHELLS:
        _one_line(run_sh("--from", tree, dest, shell=shell), expected)
        assert not dest.exists()
        _one_line(run_sh("--verify", "--from", tree, shell=shell), expected)
    with pytest.raises(ProvisionError, match="manifest.json"):
        inst.make_dist(tmp_path / "dist") if tree.parent == tmp_path / "dist" else None
    assert not list((tmp_path / "dist").glob("*.tgz")) and not (tmp_path / "dist" / inst.SUMS).exists()


def test_names_json_escapes(tree, tmp_path):
    """manifest.json escapes quotes and non-ASCII (\\uXXXX, surrogate pairs): install.sh's
    reader decodes them."""
    (tree / 'usr/share/doc/xen/caf\u00e9 "q" \U0001F600.txt').write_text("x")
    stage.seal(tree, {"format": 2, "xen": {"version": "4.17.5"}})
    assert "\\u00e9" in (tree / "manifest.json").read_text()
    for shell in SHELLS:
        proc = run_sh("--verify", "--from", tree, shell=shell)
        assert proc.returncode == 0 and "match manifest.json" in proc.stdout, proc.stderr
    (tree / 'usr/share/doc/xen/caf\u00e9 "q" \U0001F600.txt').write_text("xy")
    _one_line(run_sh("--verify", "--from", tree), 'caf\u00e9 "q" \U0001F600.txt: 2 bytes, manifest.json says 1')


def test_stale_scratch_directory_is_skipped_and_kept(tree, tmp_path):
    """A scratch directory left by a killed run whose PID this run now has: install.sh
    makes the next name, and leaves the stale one (not its own) alone."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = (f'mkdir "$TMPDIR/xen-install.$$" "$TMPDIR/xen-install.$$.0"; '
              f'exec sh {INSTALL_SH} --from {tree} -q {tmp_path / "dest"}')
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, TMPDIR=str(scratch)))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dest" / inst.RECORD).is_file()
    stale = sorted(p.name for p in scratch.iterdir())  # ours (.1) is gone, the stale ones stay
    assert len(stale) == 2 and stale[1] == stale[0] + ".0", stale


def test_verify_alone(tree, tmp_path):
    proc = run_sh("--verify", "--from", tree)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{tree}: 25 files, links and directories match manifest.json"
    assert run_sh("--verify", "--from", tree, tmp_path / "dest").returncode == 2  # no DESTDIR with --verify
    assert not (tmp_path / "dest").exists()


def test_dist_writes_sha256sums(tree, tmp_path):
    tgz = inst.make_dist(tmp_path / "dist")
    sums = tmp_path / "dist" / inst.SUMS
    assert sums.read_text() == f"{hashlib.sha256(tgz.read_bytes()).hexdigest()}  {tgz.name}\n"
    proc = subprocess.run(["sha256sum", "-c", inst.SUMS], cwd=tmp_path / "dist", capture_output=True, text=True)
    assert proc.returncode == 0 and f"{tgz.name}: OK" in proc.stdout
    assert not (tmp_path / "dist" / inst.SIGNATURE).exists()


@pytest.fixture
def gnupg(tmp_path, monkeypatch):
    """A throwaway gpg home with one passphrase-less signing key; its agent is stopped after."""
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed (apt-get install gnupg)")
    home = Path(tempfile.mkdtemp(prefix="gpg.", dir="/tmp"))  # the agent's socket path must be short
    home.chmod(0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "xen-provision test <test@example.invalid>",
                    "ed25519", "sign", "never"], check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"],
                             check=True, capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    yield fpr
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def test_dist_signed_for_real(tree, tmp_path, gnupg, run_cli):
    dist = tmp_path / "dist"
    proc = run_cli("dist", "--dist-dir", dist, "--sign", gnupg)
    assert proc.returncode == 0, proc.stderr
    asc = dist / inst.SIGNATURE
    assert asc.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    ok = subprocess.run(["gpg", "--batch", "--verify", asc, dist / inst.SUMS], capture_output=True, text=True)
    assert ok.returncode == 0 and "Good signature" in ok.stderr, ok.stderr
    # The signature really covers SHA256SUMS: a changed checksum fails it.
    (dist / inst.SUMS).write_text("0" * 64 + "  xen-4.17.5-install.tgz\n")
    bad = subprocess.run(["gpg", "--batch", "--verify", asc, dist / inst.SUMS], capture_output=True, text=True)
    assert bad.returncode != 0 and "BAD signature" in bad.stderr
    # An unknown key: one line, and nothing changes (not even the stale SHA256SUMS).
    before = snapshot(dist)
    _one_line(run_cli("dist", "--dist-dir", dist, "--sign", "nobody@example.invalid"), "no secret key", prefix="error: ")
    assert snapshot(dist) == before
    # Unsigned again: the old signature goes, it would not match the new SHA256SUMS.
    assert run_cli("dist", "--dist-dir", dist).returncode == 0
    assert not asc.exists() and (dist / inst.SUMS).exists()


def test_doit_dist_sign(tree, tmp_path, gnupg):
    (tmp_path / "dodo.py").write_text("from provision.build.install_tasks import task_dist  # noqa: F401\n")
    env = {**os.environ, "XEN_PROVISION_DIST": str(tmp_path / "dist"), "PYTHONPATH": str(ROOT)}

    def doit(*args):
        return subprocess.run([sys.executable, "-m", "doit", "run", "--db-file", str(tmp_path / "db"), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True)

    assert doit("dist").returncode == 0
    assert not (tmp_path / "dist" / inst.SIGNATURE).exists()
    proc = doit("dist", "--sign", gnupg)  # a new signature is a change: dist runs again
    assert proc.returncode == 0 and ".  dist" in proc.stdout, proc.stdout + proc.stderr
    assert (tmp_path / "dist" / inst.SIGNATURE).exists()
    assert "-- dist" in doit("dist", "--sign", gnupg).stdout
    proc = doit("dist", "--sign", "nobody@example.invalid")
    assert proc.returncode != 0 and "error: gpg has no secret key 'nobody@example.invalid'" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
