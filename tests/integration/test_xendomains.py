"""xendomains files judged by the real tools: sh -n, insserv, systemd-analyze, systemctl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

XENCOMMONS = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          xencommons
# Required-Start:    $remote_fs $syslog
# Required-Stop:     $remote_fs $syslog
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: Xen daemons (the image's own script in a real root)
### END INIT INFO
"""


def need(tool):
    if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
        pytest.fail(f"{tool} is missing: ./setup-host installs it")


@pytest.fixture
def image(tmp_path):
    """A Debian-like root with the Xen daemons' script enabled, as in an image with Xen."""
    need("insserv")
    root = tmp_path / "image"
    (root / "etc/init.d").mkdir(parents=True)
    script = root / "etc/init.d/xencommons"
    script.write_text(XENCOMMONS)
    script.chmod(0o755)
    subprocess.run(["insserv", "-p", str(root / "etc/init.d"), "-c", "/etc/insserv.conf", "xencommons"],
                   check=True, capture_output=True)
    return root


def links(root: Path, level: str) -> dict[str, str]:
    d = root / "etc" / f"rc{level}.d"
    return {p.name: os.readlink(p) for p in sorted(d.iterdir())} if d.exists() else {}


def test_script_is_valid_sh(run_cli, image):
    run_cli("xendomains", "install", "--root", image, check=True)
    script = image / "etc/init.d/xendomains"
    assert os.access(script, os.X_OK)
    for sh in ("sh", "dash", "bash"):
        if shutil.which(sh):
            argv = [sh, "-n", str(script)] if sh != "bash" else [sh, "--posix", "-n", str(script)]
            proc = subprocess.run(argv, capture_output=True, text=True)
            assert proc.returncode == 0, f"{sh} -n: {proc.stderr}"
    text = script.read_text()
    assert "# chkconfig: 2345 99 00\n" in text
    assert "# Required-Start:    $syslog $remote_fs xencommons\n" in text
    assert "# Default-Start:     2 3 4 5\n" in text
    settings = (image / "etc/default/xendomains").read_text()
    assert "XENDOMAINS_AUTO=/etc/xen/auto\n" in settings and "XENDOMAINS_SAVE=\n" in settings
    proc = subprocess.run(["sh", "-n", str(image / "etc/default/xendomains")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_insserv_accepts_the_header_and_orders_it_after_xen(run_cli, image):
    proc = run_cli("xendomains", "install", "--root", image, "--enable", "--method", "insserv")
    assert proc.returncode == 0, proc.stderr
    for level in "2345":
        found = links(image, level)
        starts = sorted(n for n in found if n.startswith("S"))
        assert [n[3:] for n in starts] == ["xencommons", "xendomains"], found  # after the daemons
        assert found[starts[1]] == "../init.d/xendomains"
    for level in "016":
        kills = sorted(n for n in links(image, level) if n.startswith("K"))
        assert [n[3:] for n in kills] == ["xendomains", "xencommons"]  # domains stop first
    # The same links insserv makes when run by hand on that root: nothing of our own.
    by_hand = image.parent / "by-hand"
    shutil.copytree(image, by_hand, symlinks=True)
    for level in "0123456S":
        for p in (by_hand / "etc" / f"rc{level}.d").glob("*xendomains"):
            p.unlink()
    subprocess.run(["insserv", "-p", str(by_hand / "etc/init.d"), "-c", "/etc/insserv.conf", "xendomains"],
                   check=True, capture_output=True)
    for level in "0123456":
        assert links(by_hand, level) == links(image, level)
    # And disable takes them away again.
    run_cli("xendomains", "disable", "--root", image, check=True)
    assert not any("xendomains" in n for level in "0123456" for n in links(image, level))


def test_insserv_refuses_without_the_xen_daemons(run_cli, tmp_path):
    need("insserv")
    root = tmp_path / "bare"
    root.mkdir()
    proc = run_cli("xendomains", "install", "--root", root, "--enable", "--method", "insserv")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "service xencommons has to be enabled" in errors[0]
    # Rolled back: not the files, nor the directories made for them or for insserv.
    assert list(root.iterdir()) == []
    proc = run_cli("xendomains", "install", "--root", tmp_path / "new", "--enable", "--method", "insserv")
    assert proc.returncode != 0 and not (tmp_path / "new").exists()
    # enable on its own, after a successful install: the refusal leaves no rc?.d behind.
    run_cli("xendomains", "install", "--root", root, check=True)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    proc = run_cli("xendomains", "enable", "--root", root, "--method", "insserv")
    assert proc.returncode != 0 and "service xencommons has to be enabled" in proc.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_chkconfig_links(run_cli, image):
    run_cli("xendomains", "install", "--root", image, "--enable", "--method", "chkconfig", check=True)
    for level in "2345":
        assert links(image, level).get("S99xendomains") == "../init.d/xendomains"
    for level in "016":
        assert links(image, level).get("K00xendomains") == "../init.d/xendomains"


def test_redhat_layout(run_cli, tmp_path):
    root = tmp_path / "rh"
    (root / "etc/rc.d/init.d").mkdir(parents=True)
    (root / "etc/sysconfig").mkdir()
    (root / "etc/init.d").symlink_to("rc.d/init.d")
    run_cli("xendomains", "install", "--root", root, "--enable", check=True)
    assert (root / "etc/sysconfig/xendomains").is_file() and not (root / "etc/default").exists()
    assert (root / "etc/rc.d/init.d/xendomains").is_file()
    link = root / "etc/rc.d/rc3.d/S99xendomains"
    assert os.readlink(link) == "../init.d/xendomains" and link.is_file()


def test_systemd_unit_verifies(run_cli, image):
    need("systemd-analyze")
    run_cli("xendomains", "install", "--root", image, check=True)
    unit = image / "etc/systemd/system/xendomains.service"
    script = image / "etc/init.d/xendomains"
    # systemd-analyze checks that ExecStart exists on this machine: point it at the
    # installed script (in the image it is /etc/init.d/xendomains).
    text = unit.read_text()
    assert "ExecStart=/etc/init.d/xendomains start\n" in text
    unit.write_text(text.replace("/etc/init.d/xendomains", str(script)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "xendomains.service" not in proc.stderr, proc.stderr  # no warnings about our unit


def test_systemd_enable_matches_systemctl(run_cli, image, tmp_path):
    need("systemctl")
    (image / "lib/systemd").mkdir(parents=True)
    (image / "lib/systemd/systemd").write_text("")  # marks the image as booting systemd
    run_cli("xendomains", "install", "--root", image, "--enable", check=True)
    ours = image / "etc/systemd/system/multi-user.target.wants/xendomains.service"
    # systemctl itself, on a root holding just the unit (with the SysV script present it
    # calls the image's update-rc.d in a chroot, which this test root does not have).
    ref = tmp_path / "ref"
    (ref / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(image / "etc/systemd/system/xendomains.service", ref / "etc/systemd/system/")
    subprocess.run(["systemctl", f"--root={ref}", "enable", "xendomains.service"], check=True, capture_output=True)
    theirs = ref / "etc/systemd/system/multi-user.target.wants/xendomains.service"
    assert os.readlink(ours) == os.readlink(theirs)
    assert not links(image, "2").get("S02xendomains")  # systemd only: no rc?.d links needed
    # Both, when asked for one after the other.
    run_cli("xendomains", "enable", "--root", image, "--method", "insserv", check=True)
    assert "S02xendomains" in links(image, "2") and ours.is_symlink()
    run_cli("xendomains", "disable", "--root", image, check=True)
    assert not ours.is_symlink()


def test_live_host_enable_uses_update_rc_d(run_cli, tmp_path, root_required):
    """The live-host path (no --root): ``xendomains install --enable`` runs the host's own
    update-rc.d (this Debian host has no chkconfig and no running systemd). It runs in a
    private mount namespace over a copy of /etc, so the host's /etc is never touched."""
    need("update-rc.d")
    need("unshare")
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs here: the live path would use systemctl, not update-rc.d")
    etc = tmp_path / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
    (etc / "init.d/xencommons").write_text(XENCOMMONS)
    (etc / "init.d/xencommons").chmod(0o755)
    for p in etc.glob("rc?.d/*xendomains"):
        p.unlink()
    repo = Path(__file__).resolve().parents[2]
    script = (
        "set -e\n"
        f"mount --bind {etc} /etc\n"
        "update-rc.d xencommons defaults\n"
        f"cd {repo}\n"
        f"{sys.executable} -m provision xendomains install --enable\n"
    )
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "update-rc.d xendomains defaults" in proc.stderr
    assert (etc / "init.d/xendomains").is_file() and (etc / "default/xendomains").is_file()
    for level in "2345":
        starts = sorted(n for n in links(etc.parent, level) if n.startswith("S") and n[3:].startswith("xen"))
        assert [n[3:] for n in starts] == ["xencommons", "xendomains"]
    for level in "016":
        kills = sorted(n for n in links(etc.parent, level) if n.startswith("K") and n[3:].startswith("xen"))
        assert [n[3:] for n in kills] == ["xendomains", "xencommons"]
    assert not Path("/etc/init.d/xendomains").exists()  # the host's own /etc is untouched
