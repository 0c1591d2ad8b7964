"""``image update`` for real: an image made by `image` (the host's suite, its base from the
cache), an OLDER version of a package installed in it from the host's mirror, then
``image update``, then the version in the image's dpkg database compared: newer, the
mirror's candidate. Also a partitioned disk image, a template by name, and the refusals
(an image loop-attached or mounted in dom0): one line, nothing changed.

Which package: the first of CANDIDATES the image has installed for which the guest's own
sources (the suite, -updates, -security; `apt-cache madison` in the image) offer two
versions or more; its oldest is installed with --allow-downgrades. On this host's mirror
that is tzdata (bookworm, bookworm-updates and bookworm-security carry three versions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_debootstrap import SBIN_PATH, fsck_clean, host_suite

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = ("tzdata", "libssl3", "libpam0g", "libpcre2-8-0", "base-files", "perl-base", "libc6")


def cli(*args, env=None, timeout=1800):
    full = dict(os.environ)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "provision", "image", *map(str, args)], capture_output=True,
                          text=True, env=full, cwd=ROOT, timeout=timeout)


def sh(*argv, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, check=check,
                          env={**os.environ, "PATH": SBIN_PATH})


def in_chroot(root: Path, *argv) -> str:
    """A command in the mounted image, through the same private-namespace helper."""
    from provision.guest.chroot import Chroot

    proc = Chroot(Path(root)).run(list(map(str, argv)), network=True, check=False, capture=True)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def installed(image, offset: int = 0) -> dict[str, str]:
    """package -> version from the image's dpkg status, read with debugfs (no mount)."""
    from provision.guest.update import _installed

    dev = f"{image}?offset={offset}" if offset else str(image)
    status = sh("debugfs", "-R", "cat /var/lib/dpkg/status", dev).stdout
    tmp = Path(str(image) + ".status.d")
    (tmp / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (tmp / "var/lib/dpkg/status").write_text(status)
    return _installed(tmp)


def debugfs_ls(image, path, offset: int = 0) -> list[str]:
    dev = f"{image}?offset={offset}" if offset else str(image)
    return sh("debugfs", "-R", f"ls -l {path}", dev).stdout.split()


def nothing_attached(image) -> None:
    assert sh("losetup", "-j", image).stdout == ""
    assert "xen-provision-update." not in Path("/proc/mounts").read_text()


def errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount, chroot); CI runs as root")
    return tmp_path_factory.mktemp("update")


@pytest.fixture(scope="module")
def env(workdir):
    return {"XEN_PROVISION_TEMPLATES": str(workdir / "templates"), "XEN_PROVISION_XEN_DIR": str(workdir / "xen")}


@pytest.fixture(scope="module")
def older(workdir, env):
    """An image holding the oldest version the mirror has of one package: (image, package,
    old version, the newest version the guest's sources offer)."""
    from debian.debian_support import Version

    from provision.storage.mount import mounted

    img = workdir / "old.img"
    p = cli("--debootstrap", host_suite(), "--file", img, "--size", "2G", "--hostname", "old",
            "--save-template", "upd", env=env)
    assert p.returncode == 0, p.stderr
    with mounted(img) as root:
        # The image's resolv.conf names the host's servers; the helper binds the host's over it anyway.
        in_chroot(root, "apt-get", "update")
        have = {}
        for line in in_chroot(root, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n").splitlines():
            name, version = line.split()
            have[name] = version
        chosen = None
        for pkg in CANDIDATES:
            if pkg not in have:
                continue
            rows = [line.split("|") for line in in_chroot(root, "apt-cache", "madison", pkg).splitlines()]
            versions = sorted({Version(r[1].strip()) for r in rows if len(r) >= 3 and r[0].strip() == pkg})
            if len(versions) >= 2:
                chosen = (pkg, str(versions[0]), str(versions[-1]))
                break
        assert chosen, f"no package of {CANDIDATES} has two versions in the guest's sources"
        pkg, old, new = chosen
        in_chroot(root, "apt-get", "install", "-y", "--allow-downgrades", "-o", "Dpkg::Options::=--force-confold",
                  f"{pkg}={old}")
        in_chroot(root, "apt-get", "clean")
        for p in (root / "var/lib/apt/lists").iterdir():
            if p.is_file() and p.name != "lock":
                p.unlink()  # as the image came: no lists, so update must take its own away again
    assert installed(img)[pkg] == old
    print(f"{pkg}: installed {old}, the mirror's newest {new}")
    return img, pkg, old, new


def test_update_installs_the_newer_version(older, env):
    from debian.debian_support import Version

    img, pkg, old, new = older
    before = Path(str(img) + ".json").read_text()
    p = cli("update", img, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"==> {img}: apt-get update" in p.stderr and f"==> {img}: apt-get -y dist-upgrade" in p.stderr
    assert f"  {pkg} {old} -> {new}" in p.stderr  # the change, said in one line
    now = installed(img)[pkg]
    assert Version(now) > Version(old) and now == new
    fsck_clean(img)
    nothing_attached(img)
    assert "policy-rc.d" not in debugfs_ls(img, "/usr/sbin")
    assert set(debugfs_ls(img, "/var/lib/apt/lists")) & {"lock", "partial"}
    assert not any(name.endswith(("_InRelease", "_Packages", ".lz4")) for name in debugfs_ls(img, "/var/lib/apt/lists"))
    assert not any(name.endswith(".deb") for name in debugfs_ls(img, "/var/cache/apt/archives"))
    assert sh("debugfs", "-R", "cat /etc/machine-id", img).stdout == ""  # still made at first boot
    info = json.loads(Path(str(img) + ".json").read_text())
    assert info["updated"]["upgraded"] >= 1
    assert {k: v for k, v in info.items() if k != "updated"} == json.loads(before)


def test_template_by_name(older, env, workdir):
    img, pkg, old, _ = older
    p = cli("update", "--all-templates", "--dry-run", env=env)
    assert p.returncode == 0 and f"update:   template 'upd' (file {workdir}/templates/upd.img;" in p.stdout
    p = cli("update", "upd", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    tpl = workdir / "templates/upd.img"
    fsck_clean(tpl)
    nothing_attached(tpl)
    assert json.loads((workdir / "templates/upd.json").read_text())["updated"]["at"]
    # A guest made from it afterwards has the upgraded packages.
    new = workdir / "fromtpl.img"
    p = cli("--from-template", "upd", "--file", new, "--hostname", "fromtpl", env=env)
    assert p.returncode == 0, p.stderr
    assert installed(new) == installed(tpl)


def test_partitioned_disk_image(workdir, env):
    img = workdir / "whole.img"
    p = cli("--debootstrap", host_suite(), "--disk", img, "--size", "1G", "--swap", "64M", "--hostname", "whole",
            env=env)
    assert p.returncode == 0, p.stderr
    offset = 2048 * 512  # partition 1 of the msdos table
    before = installed(img, offset)
    p = cli("update", img, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    nothing_attached(img)
    # A disk image: its root partition is checked through a loop device of our own.
    loop = sh("losetup", "--find", "--show", "--partscan", "--read-only", img).stdout.strip()
    try:
        sh("partx", "-u", loop, check=False)
        fsck_clean(f"{loop}p1")
    finally:
        sh("losetup", "-d", loop)
    after = installed(img, offset)
    info = json.loads(Path(str(img) + ".json").read_text())
    assert info["updated"]["upgraded"] == sum(1 for k, v in after.items() if k in before and before[k] != v)
    assert "policy-rc.d" not in debugfs_ls(img, "/usr/sbin", offset)


def test_refused_while_dom0_uses_it(older, env):
    img = older[0]
    sidecar = Path(str(img) + ".json")
    before = sidecar.read_text(), os.stat(img).st_mtime_ns
    loop = sh("losetup", "--find", "--show", img).stdout.strip()
    try:
        p = cli("update", img, env=env)
        assert p.returncode != 0 and errors(p) == [f"error: {img} is in use in dom0: {img} is attached to {loop}"]
        mnt = Path(str(img) + ".mnt")
        mnt.mkdir(exist_ok=True)
        sh("mount", "-o", "ro", loop, mnt)
        try:
            p = cli("update", img, env=env)
            assert p.returncode != 0 and len(errors(p)) == 1 and "is mounted on" in errors(p)[0], p.stderr
        finally:
            sh("umount", mnt)
            mnt.rmdir()
    finally:
        sh("losetup", "-d", loop)
    assert (sidecar.read_text(), os.stat(img).st_mtime_ns) == before
    assert "apt-get" not in p.stderr


def test_a_stopped_guest_config_does_not_refuse(older, env, workdir):
    """A domain config naming the image is no refusal by itself (xl absent here: nothing
    runs; where xl runs, `xl list` decides, see tests/unit/test_guest_update.py)."""
    img = older[0]
    xen = Path(env["XEN_PROVISION_XEN_DIR"])
    xen.mkdir(exist_ok=True)
    (xen / "old.cfg").write_text(f'name = "old"\nkernel = "/boot/vmlinuz"\nmemory = 128\n'
                                 f'disk = [ "file:{img},xvda1,w" ]\n')
    try:
        p = cli("update", img, "--dry-run", env=env)
        assert p.returncode == 0, p.stderr
    finally:
        (xen / "old.cfg").unlink()


def _interrupt_at(img, env, mark: str) -> tuple[int, str]:
    """Run image update on ``img`` and send SIGINT (Ctrl-C) once ``mark`` shows in its
    output (apt's goes to stdout, ours to stderr: both read here); (exit code, output)."""
    import signal
    import time

    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.Popen([sys.executable, "-m", "provision", "image", "update", str(img)], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.monotonic() + 600
    while mark not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    if mark in seen:
        proc.send_signal(signal.SIGINT)
    seen += proc.stdout.read()
    return proc.wait(120), seen


def test_interrupted_update_leaves_no_mount_and_no_policy(older, env):
    """Ctrl-C while apt runs: apt's process group is ended, policy-rc.d goes, the image is
    unmounted and detached, and its filesystem is clean (the namespace's own mounts died
    with it)."""
    img = older[0]
    code, out = _interrupt_at(img, env, "apt-get update")
    assert code == 130, out
    nothing_attached(img)
    fsck_clean(img)
    assert "policy-rc.d" not in debugfs_ls(img, "/usr/sbin")
    assert not any(name.endswith("_InRelease") for name in debugfs_ls(img, "/var/lib/apt/lists"))


def test_interrupted_dist_upgrade_is_finished_by_the_next_update(workdir, env):
    """Ctrl-C while dpkg unpacks: said in a warning; the next update configures what was
    left and completes the upgrade."""
    img = workdir / "cut.img"
    p = cli("--debootstrap", host_suite(), "--file", img, "--hostname", "cut", env=env)
    assert p.returncode == 0, p.stderr
    code, out = _interrupt_at(img, env, "Unpacking ")
    if "Unpacking " not in out:
        pytest.skip("a fresh image has nothing to upgrade on this mirror today")
    assert code == 130, out
    assert "apt stopped part-way: the packages it changed stay; the next image update finishes them" in out
    nothing_attached(img)
    fsck_clean(img)
    p = cli("update", img, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    status = sh("debugfs", "-R", "cat /var/lib/dpkg/status", img).stdout
    states = {line for line in status.splitlines() if line.startswith("Status: ")}
    assert states == {"Status: install ok installed"}, states


def test_lv_guest(workdir, env, device_mapper_required):
    """An --lv guest: its facts are in the cache, TARGET is VG/LV. Runs where the kernel
    has device-mapper (the boot test's dom0); skips here saying so."""
    vg = f"xpu{os.getpid()}"
    pv = workdir / "pv.img"
    sh("truncate", "-s", "1536M", pv)
    loop = sh("losetup", "--find", "--show", pv).stdout.strip()
    cache = {**env, "XEN_PROVISION_CACHE": str(workdir / "cache")}
    try:
        sh("pvcreate", "-y", loop)
        sh("vgcreate", vg, loop)
        p = cli("--debootstrap", host_suite(), "--lv", f"{vg}/guest", "--size", "1G", "--hostname", "lvguest",
                env=cache)
        assert p.returncode == 0, p.stderr
        p = cli("update", f"{vg}/guest", env=cache)
        assert p.returncode == 0, p.stderr[-3000:]
        fsck_clean(f"/dev/{vg}/guest")
        assert json.loads((workdir / f"cache/images/{vg}/guest.json").read_text())["updated"]["at"]
        assert "xen-provision-update." not in Path("/proc/mounts").read_text()
    finally:
        sh("vgremove", "-y", "-f", vg, check=False)
        sh("pvremove", "-y", "-ff", loop, check=False)
        sh("losetup", "-d", loop)


def test_directory_tree(workdir, env):
    """A --dir tree (an NFS root): nothing to mount; the namespace's mounts never show in dom0."""
    tree = workdir / "tree"
    p = cli("--debootstrap", host_suite(), "--dir", tree, "--hostname", "tree", env=env)
    assert p.returncode == 0, p.stderr
    p = cli("update", tree, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{tree}: " in p.stderr and " upgraded, " in p.stderr
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    assert str(tree) not in Path("/proc/mounts").read_text()
    assert sorted(p.name for p in (tree / "var/lib/apt/lists").iterdir() if p.is_file()) == ["lock"]
    assert (tree / "etc/machine-id").read_bytes() == b""
    assert json.loads(Path(f"{tree}.json").read_text())["updated"]["at"]
