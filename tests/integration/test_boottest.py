"""The boot test for real: a whole Xen host assembled from our outputs (dist/install from
`doit world`) boots under QEMU (TCG) and xendomains starts its guest. Minutes; root
filesystems and images are cached by their inputs under $XEN_PROVISION_CACHE/boottest,
so a rerun with nothing changed only boots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dist(world):
    """dist/install, as the build's `world` fixture staged it (`doit world`)."""
    for tool in ("qemu-system-x86_64", "mmdebstrap", "grub-mkimage"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"{tool} is not installed (./setup-host installs it)")
    return Path(world)


def _args(dist: Path) -> list[str]:
    return ["--dist", str(dist)]


def test_root_trees_are_the_debootstrap_librarys_adapted_to_their_roles(tmp_path):
    """What stage 1 makes, without booting: trees as `image --debootstrap` configures
    them (provision.debootstrap), with the boot test's changes for dom0 and the guest."""
    from provision import boottest
    from provision.debootstrap.mirror import host_mirror

    settings = boottest.Settings(dist=None, out=tmp_path / "out",
                                 mirror=host_mirror("debian") or "http://deb.debian.org/debian")
    # The guest's base for both trees: the host's packages change nothing checked here.
    spec = boottest.base_spec(settings, boottest.GUEST_PACKAGES)
    guest, host = tmp_path / "guest", tmp_path / "host"
    try:
        boottest.bootstrap_root(spec, boottest.GUEST, guest)
        boottest.configure_guest(guest)
        files = boottest.BootFiles("/boot/xen-4.17.5.gz", None, "/boot/vmlinuz-6.1.0-xen0", None,
                                   "/boot/vmlinuz-6.1.0-xenU", None, "dist/install")
        boottest.bootstrap_root(spec, boottest.HOSTNAME, host)
        xen_cmdline = boottest.configure_host(settings, host, files)

        def link(root: Path, path: str) -> str:
            return os.readlink(root / path.lstrip("/"))

        # The library's configuration, in both.
        for root, name in ((guest, "guest1"), (host, "xenhost")):
            assert (root / "etc/hostname").read_text() == f"{name}\n"
            assert f"127.0.1.1\t{name}" in (root / "etc/hosts").read_text()
            assert (root / "etc/machine-id").read_text() == ""
            assert f"deb {spec.mirror} bookworm main" in (root / "etc/apt/sources.list").read_text()
            assert link(root, "/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service") \
                == "/lib/systemd/system/serial-getty@.service"
            assert "\nroot::" in "\n" + (root / "etc/shadow").read_text()   # the test's login
            assert link(root, "/etc/systemd/system/apt-daily.timer") == "/dev/null"
        # The guest: its root is xvda1, as the library's fstab says; networkd as configured.
        assert (guest / "etc/fstab").read_text().splitlines()[1].split() == \
            ["/dev/xvda1", "/", "ext4", "errors=remount-ro", "0", "1"]
        assert link(guest, "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service") \
            == "/lib/systemd/system/systemd-networkd.service"
        # dom0: root by label on the host disk; no networkd (no NIC), so no 2-minute wait
        # for network-online.target, which xendomains wants.
        assert (host / "etc/fstab").read_text() == "LABEL=xenroot / ext4 errors=remount-ro 0 1\n"
        for unit in ("systemd-networkd.service", "systemd-networkd.socket",
                     "systemd-networkd-wait-online.service"):
            assert link(host, f"/etc/systemd/system/{unit}") == "/dev/null"
        cfg = (host / "etc/xen/guest1.cfg").read_text()
        assert "vdev=xvda1, access=rw, target=/dev/vdc" in cfg and 'root = "/dev/xvda1 ro"' in cfg
        assert (host / "etc/xen/auto/guest1.cfg").is_symlink()
        assert f"multiboot2 /boot/xen-4.17.5.gz {xen_cmdline}" in (host / "boot/grub/grub.cfg").read_text()
    finally:
        for root in (guest, host):
            shutil.rmtree(root, ignore_errors=True)


def test_boottest_boots_our_host_and_its_guest(run_cli, dist, tmp_path):
    out = tmp_path / "boottest"
    proc = run_cli("boottest", *_args(dist), "--out", out, timeout=3600)
    report = (out / "report.txt").read_text() if (out / "report.txt").exists() else ""
    print(report)   # times per stage and per check, kept in the pytest log
    assert proc.returncode == 0, f"boot test failed:\n{proc.stderr[-6000:]}"
    assert report.startswith("boot test: PASS")
    for check in ("GRUB started our entry", "Xen version is our build",
                  "Xen command line is the one we generated", "scheduler is credit",
                  "dom0 runs our kernel", "dom0 reached multi-user", "xendomains started guest1",
                  "console shows the guest kernel booting to userspace", "xendomains stop saves guest1",
                  "xendomains start restores guest1", "xl mem-set guest1", "LVM path of the storage library",
                  "xendomains reports a guest with a bad disk path"):
        assert any(line.strip().startswith("PASS") and check in line for line in report.splitlines()), \
            f"no PASS for {check!r} in:\n{report}"
    assert "FAIL" not in report
    log = (out / "serial.log").read_bytes()
    assert b"Xen version" in log and b"Command line:" in log
    # The storage library's lvmcheck ran from the code disk (this checkout's package).
    assert b"EXT4-fs (vdd): mounted" in log and b"LVM-CHECK-OK" in log
    assert report.splitlines()[0].startswith("boot test: PASS (dist/install: xen-")


def test_a_scheduler_the_hypervisor_lacks_is_caught_before_booting(run_cli, dist, tmp_path):
    proc = run_cli("boottest", *_args(dist), "--sched", "rtds", "--out", tmp_path, timeout=1800)
    assert proc.returncode != 0
    assert "rtds" in proc.stderr and "sched" in proc.stderr
    assert not (tmp_path / "serial.log").exists()   # failed at generation time: nothing booted


def test_sigterm_during_the_boot_leaves_no_qemu_behind(dist, tmp_path):
    """An interrupted boot test kills its QEMU (it runs in its own session, so only our
    undo handling can end it)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "boottest"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "provision", "boottest", *_args(dist),
                             "--out", str(out)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    mine = str(out)   # the code disk QEMU gets lives under --out
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, "boottest ended before it booted"
        if "Booting under QEMU" in line:
            break
    time.sleep(3)   # QEMU is up

    def qemus() -> list[str]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in text and mine in text:
                found.append(text)
        return found

    assert qemus(), "QEMU did not start"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    time.sleep(1)
    assert not qemus(), "QEMU outlived the interrupted boot test"
