"""``xendomains install``: the files it writes, re-runs, and bad settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402


def test_install_writes_files_once_and_keeps_admin_settings(run_cli, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    proc = run_cli("xendomains", "install", "--root", root, "--save-dir", "/var/lib/xen/save",
                   "--parallel", "3", "--stop-timeout", "120")
    assert proc.returncode == 0, proc.stderr
    script = root / "etc/init.d/xendomains"
    settings = root / "etc/default/xendomains"
    unit = root / "etc/systemd/system/xendomains.service"
    assert (script.stat().st_mode & 0o777) == 0o755
    text = settings.read_text()
    assert "XENDOMAINS_SAVE=/var/lib/xen/save\n" in text and "XENDOMAINS_PARALLEL=3\n" in text
    assert "XENDOMAINS_STOP_MAXWAIT=120\n" in text
    assert "TimeoutStopSec=infinity\n" in unit.read_text()  # the script bounds its waits
    # NFS-root guests served by dom0 start after its NFS server and stop before it.
    assert "\nAfter=nfs-server.service rpcbind.service\n" in unit.read_text()
    mtime = script.stat().st_mtime_ns
    settings.write_text(text.replace("XENDOMAINS_PARALLEL=3", "XENDOMAINS_PARALLEL=8"))
    again = run_cli("xendomains", "install", "--root", root)
    assert again.returncode == 0 and "wrote" not in again.stderr
    assert script.stat().st_mtime_ns == mtime  # unchanged files are not rewritten
    assert "XENDOMAINS_PARALLEL=8\n" in settings.read_text()  # the administrator's edit stays


def test_redhat_flavour_uses_sysconfig(run_cli, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    run_cli("xendomains", "install", "--root", root, "--flavour", "redhat", check=True)
    assert (root / "etc/sysconfig/xendomains").is_file() and not (root / "etc/default").exists()
    assert 'XENDOMAINS_CONFIG="${XENDOMAINS_CONFIG:-/etc/sysconfig/xendomains}"' in (
        root / "etc/init.d/xendomains").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--parallel", "0"), "--parallel 0 must be at least 1"),
        (("--stop-timeout", "0"), "must be at least 1 second"),
        (("--save-dir", "relative/dir"), "must be an absolute path"),
        (("--save-dir", "/var/lib/xen save"), "must be an absolute path without spaces"),
        (("--parallel", "x"), "--parallel 'x' is not a whole number"),
        (("--stop-timeout", "5m"), "--stop-timeout '5m' is not a whole number"),
    ],
)
def test_bad_settings_write_nothing(run_cli, tmp_path, args, message):
    root = tmp_path / "r"
    root.mkdir()
    proc = run_cli("xendomains", "install", "--root", root, *args)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "usage:" not in proc.stderr, proc.stderr
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("service", ["xen commons", "xen;reboot", "$(id)", "xen\nX-Start-Before: all", "../x"])
def test_xen_service_must_be_an_lsb_name(run_cli, tmp_path, service):
    """It goes into the script's LSB header: anything else broke the header (or worse)."""
    root = tmp_path / "r"
    root.mkdir()
    proc = run_cli("xendomains", "install", "--root", root, "--xen-service", service)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--xen-service" in errors[0] and "is not valid" in errors[0], proc.stderr
    assert list(root.iterdir()) == []
    assert run_cli("xendomains", "install", "--root", root, "--xen-service", "xen").returncode == 0
    assert "# Required-Start:    $syslog $remote_fs xen\n" in (root / "etc/init.d/xendomains").read_text()


def test_a_root_that_does_not_exist_is_not_created(run_cli, tmp_path):
    for argv in (("xendomains", "install"), ("xendomains", "enable"), ("domain", "create", "--name", "a",
                 "--memory", "64", "--kernel", "/k", "--no-kernel-check"), ("domain", "list"),
                 ("domain", "autostart", "list")):
        proc = run_cli(*argv, "--root", tmp_path / "typo")
        assert proc.returncode != 0 and f"error: --root {tmp_path / 'typo'} does not exist" in proc.stderr, proc.stderr
        assert not (tmp_path / "typo").exists()


def test_enable_needs_the_script(run_cli, tmp_path):
    proc = run_cli("xendomains", "enable", "--root", tmp_path)
    assert proc.returncode != 0 and "is not installed" in proc.stderr and "xendomains install" in proc.stderr


def test_status_lists_links_and_boot_domains(run_cli, tmp_path):
    """'xendomains status': the rc?.d links chkconfig --add would make, and what starts at boot."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz").write_text("k")
    run_cli("domain", "create", "--root", root, "--name", "web", "--memory", "64", "--kernel", "/boot/vmlinuz",
            "--autostart", check=True)
    run_cli("domain", "create", "--root", root, "--name", "idle", "--memory", "64", "--kernel", "/boot/vmlinuz",
            check=True)
    assert [p.name for p in xlcheck.accept_all(xlcheck.build(), root / "etc/xen")] == ["idle.cfg", "web.cfg"]
    run_cli("xendomains", "install", "--root", root, "--enable", "--method", "chkconfig", check=True)
    out = run_cli("xendomains", "status", "--root", root, check=True).stdout.splitlines()
    assert [line for line in out if line.startswith("rc")] == [
        "rc0.d: K00xendomains", "rc1.d: K00xendomains", "rc2.d: S99xendomains", "rc3.d: S99xendomains",
        "rc4.d: S99xendomains", "rc5.d: S99xendomains", "rc6.d: K00xendomains"]
    assert "systemd: not enabled" in out
    assert [line for line in out if line.startswith("auto:")] == ["auto: web"]
    run_cli("xendomains", "disable", "--root", root, check=True)
    out = run_cli("xendomains", "status", "--root", root, check=True).stdout
    assert "rc2.d" not in out and "auto: web" in out


def test_log_consoles_sets_xencommons_and_enable_brings_xens_own_daemons(run_cli, tmp_path):
    """What install.sh leaves (Xen's units and xencommons settings) plus ours: guest
    consoles logged, and `enable` also enables the daemons xendomains needs."""
    root = tmp_path / "r"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("xenstored.service", "xenconsoled.service", "xen-init-dom0.service"):
        (units / unit).write_text("[Unit]\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n")
    (units / "proc-xen.mount").write_text("[Unit]\n[Mount]\nWhat=xenfs\n")   # no [Install]: pulled in
    (root / "lib/systemd").mkdir(parents=True)
    (root / "lib/systemd/systemd").write_text("")
    (root / "etc/default").mkdir(parents=True)
    xencommons = root / "etc/default/xencommons"
    xencommons.write_text("#XENCONSOLED_TRACE=[none|guest|hv|all]\nXENSTORED_ARGS=\n")
    run_cli("xendomains", "install", "--root", root, "--log-consoles", check=True)
    assert xencommons.read_text() == ("#XENCONSOLED_TRACE=[none|guest|hv|all]\nXENSTORED_ARGS=\n"
                                      "# Keep each guest's console in /var/log/xen/console (xen-provision)\n"
                                      "XENCONSOLED_TRACE=guest\n")
    run_cli("xendomains", "install", "--root", root, "--log-consoles", check=True)   # once only
    assert xencommons.read_text().count("XENCONSOLED_TRACE=guest") == 1
    proc = run_cli("xendomains", "enable", "--root", root, check=True)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("xenstored.service", "xenconsoled.service", "xen-init-dom0.service"):
        assert str((wants / unit).readlink()) == f"/usr/lib/systemd/system/{unit}"
        assert f"enabled {unit} (multi-user.target)" in proc.stderr
    assert str((wants / "xendomains.service").readlink()) == "/etc/systemd/system/xendomains.service"
    assert not (wants / "proc-xen.mount").exists()
    again = run_cli("xendomains", "enable", "--root", root, check=True)
    assert "enabled" not in again.stderr   # nothing to do the second time
