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
                  "console shows the guest kernel booting to userspace", "xl save guest1",
                  "xl restore guest1", "xl mem-set guest1", "LVM path of the storage library",
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
