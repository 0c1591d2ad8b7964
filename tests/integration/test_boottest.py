"""The boot test for real: the hosts the README's commands make (the dist tarball's
install.sh, grub install, xendomains, network, image, domain create, run on the images'
mounted roots) boot under QEMU (TCG); their networked guests answer ping and ssh.
Minutes; bases and host images are cached by their inputs under
$XEN_PROVISION_CACHE/boottest, so a rerun with nothing changed only boots."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

BRIDGED = ("GRUB started our entry", "Xen version is our build",
           "Xen command line is the one grub install generated", "scheduler is credit", "dom0 runs our kernel",
           "dom0 reached multi-user", "dom0 has no failed units", "xendomains started guest1",
           "xendomains started guest2", "guest1's console shows its kernel booting to userspace",
           "dom0 pings guest1 (192.0.2.11)", "dom0 pings guest2 (192.0.2.12)",
           "guest1: hostname guest1, 192.0.2.11/24 on enX0, kernel", "guest2: hostname guest2, 192.0.2.12/24 on enX0",
           "guest1 has no failed units", "guest1 pings guest2 through the bridge",
           "guest1's image recorded its own SSH host keys", "guest4's image recorded its own SSH host keys",
           "xl console guest1 shows its login prompt on hvc0", "xendomains stop saves guest1", "xendomains start restores guest1",
           "xl mem-set guest1", "xendomains reports a guest with a bad disk path",
           "guest2 shut down and out of /etc/xen/auto after its checks",
           "xendomains stop shuts guest1, guest4 down",
           "network status shows the bridge, the uplink and each guest's vif",
           "xl list -l: guest1 runs as pv", "xl list -l: guest2 runs as pvh",
           # The manual's NFS root, served by dom0 (issue 20).
           "xendomains started guest4", "dom0 pings guest4 (192.0.2.14)",
           "guest4: hostname guest4, 192.0.2.14/24 on eth0, kernel", "guest4 has no failed units",
           "guest4's root is 192.0.2.1:/srv/nfs/guest4 over NFS",
           "guest4 writes a file that dom0 sees in /srv/nfs/guest4", "xl list -l: guest4 runs as pv",
           "guest4 (NFS root) shut down cleanly through xendomains")
ROUTED = ("dom0 reached multi-user", "dom0 has no failed units", "xendomains started guest3",
          "dom0 pings guest3 (192.0.2.21)", "guest3: hostname guest3, 192.0.2.21/24 on enX0",
          "guest3 pings dom0 (192.0.2.1) through its routed vif", "dom0 routes 192.0.2.21 to guest3's vif",
          "xl list -l: guest3 runs as pv", "network bridge --apply: xenbr9 takes over enp0s16 live (networkd)",
          "unconfirmed, the change is rolled back: enp0s16 has 192.0.2.1/24 again, no xenbr9",
          # pvgrub2 and the Debian kernel in the guest's own image (issue 19).
          "xendomains started guest5", "dom0 pings guest5 (192.0.2.25)",
          "guest5: hostname guest5, 192.0.2.25/24 on enX0, kernel its own (Debian's)",
          "xl list -l: guest5 runs as pv", "guest5: pvgrub2 booted the Debian kernel in its own image",
          "guest3's image recorded its own SSH host keys", "guest5's image recorded its own SSH host keys",
          # LVM in dom0 on the host whose other checks end first (the two boot at once).
          "xendomains stop shuts guest3, guest5 down", "LVM path of the storage library",
          "image --debootstrap into LVM in dom0")


@pytest.fixture(scope="module")
def dist(world):
    """dist/install, as the build's `world` fixture staged it (`doit world`)."""
    for tool in ("qemu-system-x86_64", "mmdebstrap", "grub-mkimage", "ssh-keygen", "openssl"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"{tool} is not installed (./setup-host installs it)")
    return Path(world)


def _passed(report: str, scenario: str, check: str) -> bool:
    return any(line.strip().startswith(f"[{scenario}] PASS") and check in line for line in report.splitlines())


def test_the_readmes_hosts_boot_and_their_guests_answer(run_cli, dist, tmp_path, capsys):
    out = tmp_path / "boottest"
    proc = run_cli("boottest", "--dist", dist, "--out", out, timeout=3600)
    report = (out / "report.txt").read_text() if (out / "report.txt").exists() else ""
    with capsys.disabled():  # times per stage and per check, in CI's log also when it passes
        print(f"\n{report}", flush=True)
    assert proc.returncode == 0, f"boot test failed:\n{proc.stderr[-6000:]}"
    assert report.startswith("boot test: PASS (dist/install: xen-")
    for scenario, names in (("bridged", BRIDGED), ("routed", ROUTED)):
        for check in names:
            assert _passed(report, scenario, check), f"no PASS for [{scenario}] {check!r} in:\n{report}"
    assert "FAIL" not in report
    for scenario in ("bridged", "routed"):
        assert re.search(rf"\[{scenario}\] power-on to first guest userspace: \d+\.\d+s", report)
        assert re.search(rf"\[{scenario}\] power-on to all guests pingable: \d+\.\d+s", report)
        assert re.search(rf"\[{scenario}\] CPU time the hypervisor gave others during the boot \(steal\): "
                         r"\d+\.\ds", report)
    assert re.search(r"^  host speed \(.*\): \d+\.\d+s before, \d+\.\d+s after$", report, re.M)
    assert b"Xen version" in (out / "serial-bridged.log").read_bytes()
    assert b"LVM-CHECK-OK" in (out / "serial-routed.log").read_bytes()   # the LVM checks run there
    # No packet left QEMU: user-mode networking with restrict=on (checked in its argv).
    facts = _facts("bridged")
    assert facts["commands"], "the assembly recorded no commands"
    _readme_commands_are_what_the_boot_test_ran(facts["commands"])


def _facts(scenario: str) -> dict:
    cache = Path(os.environ["XEN_PROVISION_CACHE"]) / "boottest" / "images"
    found = sorted(cache.glob(f"host-{scenario}-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text())


def _readme_commands_are_what_the_boot_test_ran(commands: list[str]) -> None:
    """Each `python3 -m provision` line of the README's quick start was run by the boot
    test with the same subcommand and at least the README's options (plus --root)."""
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0].replace("\\\n", " ")
    readme = [shlex.split(line.strip())[3:] for line in quick.splitlines()
              if line.strip().startswith("python3 -m provision ")]
    assert len(readme) >= 5, quick
    ran = [shlex.split(c)[3:] for c in commands if c.startswith("python3 -m provision ")]
    for words in readme:
        sub = [w for w in words[:2] if not w.startswith("-")]
        options = {w for w in words if w.startswith("--")}
        match = [r for r in ran if r[:len(sub)] == sub and options <= {w for w in r if w.startswith("--")}]
        assert match, f"the boot test never ran `{' '.join(words)}` (or with fewer options); it ran:\n" \
                      + "\n".join(commands)


def test_a_scheduler_the_hypervisor_lacks_is_caught_before_booting(run_cli, dist, tmp_path):
    proc = run_cli("boottest", "--dist", dist, "--sched", "rtds", "--out", tmp_path, timeout=1800)
    assert proc.returncode != 0
    assert "rtds" in proc.stderr and "sched" in proc.stderr
    assert not list(tmp_path.glob("serial-*.log"))   # failed before anything was built or booted


def test_sigterm_during_the_boot_leaves_no_qemu_behind(dist, tmp_path):
    """An interrupted boot test kills its QEMU (it runs in its own session, so only our
    undo handling can end it)."""
    out = tmp_path / "boottest"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "provision", "boottest", "--dist", str(dist),
                             "--scenario", "routed", "--out", str(out)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    mine = str(out)   # the code disk QEMU gets lives under --out
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, "boottest ended before it booted"
        # Machine.start's own line, right before QEMU starts (the stage's title comes
        # before the code disk, which for the routed host holds the LVM checks' base).
        if "booting xen-host-" in line:
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

    running = qemus()
    assert running, "QEMU did not start"
    assert "restrict=on" in running[0] and "-nic user" not in running[0]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    time.sleep(1)
    assert not qemus(), "QEMU outlived the interrupted boot test"
