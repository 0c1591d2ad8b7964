"""The boot test's pieces that need no root and no boot: what the image key covers, the
command line read back from the grub.cfg, the code disk, the QEMU LAN, bad input caught
before anything is built. (The boot itself: tests/integration/test_boottest.py.)"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.grub import cmdline, render
from provision.proof import assemble, checks
from provision.proof.machine import Lan, Machine


def test_xen_cmdline_is_read_back_from_our_grub_entry(tmp_path):
    xen = cmdline.parse_xen_options(["dom0_mem=1024M,max:1024M", "com1=115200,8n1", "console=com1",
                                     "sched=credit"])
    dom0 = cmdline.parse_dom0_options(["root=/dev/vda1", "ro"], xen=xen)
    entry = render.make_entry("/boot/xen-4.17.5.gz", "/boot/vmlinuz-6.1.176-xen0", xen, dom0)
    grub = tmp_path / "boot/grub"
    grub.mkdir(parents=True)
    # As grub-mkconfig prints it: Debian's own entries first, then ours from 42_xen_provision.
    (grub / "grub.cfg").write_text("menuentry 'Debian GNU/Linux' --id gnulinux-simple {\n\tlinux /vmlinuz\n}\n"
                                   + render.render_grub2([entry], "multiboot2"))
    # As Xen will echo it: the model writes 1024M as 1G.
    assert assemble._xen_cmdline(tmp_path) == "dom0_mem=1G,max:1G com1=115200,8n1 console=com1 sched=credit"
    (grub / "grub.cfg").write_text("menuentry 'Debian GNU/Linux' {\n}\n")
    with pytest.raises(Exception, match="no xen-provision entry"):
        assemble._xen_cmdline(tmp_path)


def test_image_key_follows_the_inputs_not_the_proofs_own_code(tmp_path, monkeypatch):
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    if not (shutil.which("ssh-keygen") and shutil.which("openssl")):
        pytest.skip("needs openssh-client and openssl (setup-host)")
    inputs = assemble.Inputs(dist=tmp_path, suite="bookworm", mirror="http://deb.debian.org/debian",
                             sched="credit", dom0_mem="1G")
    bridged = assemble.SCENARIOS["bridged"]
    key = assemble.image_key(bridged, inputs, "0" * 64)
    assert key == assemble.image_key(bridged, inputs, "0" * 64)
    assert key != assemble.image_key(bridged, inputs, "1" * 64)                       # another dist
    assert key != assemble.image_key(bridged, dataclasses.replace(inputs, sched="credit2"), "0" * 64)
    assert key != assemble.image_key(assemble.SCENARIOS["routed"], inputs, "0" * 64)
    assert key != assemble.image_key(dataclasses.replace(bridged, host_ip="192.0.2.3/24"), inputs, "0" * 64)
    # The package's code shapes the image; the proof's own (checks, console) does not.
    digest = assemble.package_digest()
    files = [p.relative_to(assemble.PACKAGE).parts[0] for p in assemble.PACKAGE.rglob("*.py")]
    assert "proof" in files and "network" in files
    proof = assemble.PACKAGE / "proof" / "checks.py"
    original = proof.read_bytes()
    try:
        proof.write_bytes(original + b"\n# a changed check\n")
        assert assemble.package_digest() == digest
    finally:
        proof.write_bytes(original)
    # The credentials are made once and reused: the key stays.
    hashed, key_file, pub = assemble.credentials()
    assert hashed.read_text().startswith("$6$xenprovisionboot$") and oct(hashed.stat().st_mode)[-3:] == "600"
    assert pub.read_text().startswith("ssh-ed25519 ") and key_file.is_file()
    assert assemble.credentials() == (hashed, key_file, pub)


def test_scenarios_use_documentation_addresses_only():
    import ipaddress
    net = ipaddress.ip_network("192.0.2.0/24")
    for s in assemble.SCENARIOS.values():
        assert ipaddress.ip_interface(s.host_ip).ip in net
        for g in s.guests:
            assert ipaddress.ip_interface(g.ip).ip in net
    lan = Lan()
    argv = lan.argv()
    assert argv[1].startswith("user,id=lan,restrict=on,net=192.0.2.0/24,host=192.0.2.2")
    assert argv[3].endswith(f"addr={lan.slot:#x}") and assemble.SCENARIOS["bridged"].uplink == f"enp0s{lan.slot}"


def test_a_machine_without_a_lan_has_no_nic_and_one_with_a_lan_no_way_out(tmp_path):
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86 is not installed (setup-host)")
    plain = Machine(log_path=tmp_path / "a.log").argv
    assert plain[plain.index("-nic") + 1] == "none"
    networked = " ".join(Machine(log_path=tmp_path / "b.log", lan=Lan()).argv)
    assert "restrict=on" in networked and "-nic user" not in networked


@pytest.mark.skipif(not (shutil.which("mkfs.ext4") or Path("/sbin/mkfs.ext4").exists())
                    or not (shutil.which("debugfs") or Path("/sbin/debugfs").exists())
                    or not shutil.which("ssh-keygen"),
                    reason="needs e2fsprogs and openssh-client (setup-host)")
def test_code_disk_holds_the_package_and_the_guests_key(tmp_path, monkeypatch):
    from provision.proof import cli
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    inputs = assemble.Inputs(dist=tmp_path, suite="bookworm", mirror="http://deb.debian.org/debian",
                             sched="credit", dom0_mem="1G")
    settings = cli.Settings(inputs=inputs, out=tmp_path / "out", lvmcheck=False)
    disk = cli.code_disk(settings.out, settings, assemble.SCENARIOS["routed"])
    debugfs = shutil.which("debugfs") or "/sbin/debugfs"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert len(table["partitions"]) == 1     # no LVM checks: no scratch partitions
    fs = f"{disk}?offset={table['partitions'][0]['start'] * 512}"   # e2fsprogs' io option

    def cat(path: str) -> bytes:
        return subprocess.run([debugfs, "-R", f"cat {path}", fs], capture_output=True, check=True).stdout

    assert cat("/provision/proof/indom0/lvmcheck.py") == \
        (assemble.PACKAGE / "proof/indom0/lvmcheck.py").read_bytes()
    assert cat("/id_ed25519") == assemble.credentials()[1].read_bytes()
    listing = subprocess.run([debugfs, "-R", "ls -p /provision", fs], capture_output=True, text=True,
                             check=True).stdout
    assert "/__init__.py/" in listing and "/__pycache__/" in listing
    # Compiled for dom0's python3, hash-based and not checked against the source (the disk
    # is made from these sources for every boot): flags 0b01, not 0b11 or a timestamp's 0.
    tag = sys.implementation.cache_tag
    pyc = cat(f"/provision/__pycache__/__init__.{tag}.pyc")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(pyc[4:8], "little") == 0b01
    assert sorted(p.name for p in settings.out.iterdir()) == ["code-routed.img"]   # no staging left


def test_lvm_check_ends_on_its_verdict_or_a_kernel_failure_not_on_the_echo():
    end = re.compile(checks.LVM_CHECK_END, re.M)
    echo = "# " + checks._in_dom0("lvmcheck", "/dev/vdc") + "\nlvm-check ok: LV with ext4\n"
    assert end.search(echo) is None
    for line, ok in (("LVM-CHECK-OK in 81.3s", True), ("lvm-check FAILED: rollback left the LV", False),
                     ("BUG: unable to handle page fault for address: ffff88800ea77ff8", False),
                     ("Traceback (most recent call last):", False)):
        m = end.search(echo + line + "\n")
        assert m is not None and m.group(1) == line
        assert m.group(1).startswith("LVM-CHECK-OK") == ok


def test_prune_keeps_the_most_recently_used_images_of_one_scenario(tmp_path):
    for i, name in enumerate(["bridged-a", "bridged-b", "bridged-c", "routed-a"]):
        (tmp_path / f"host-{name}.img").write_bytes(b"")
        (tmp_path / f"host-{name}.json").write_text("{}")
        os.utime(tmp_path / f"host-{name}.json", (1000 + i, 1000 + i))  # its last use
    assemble._prune(tmp_path, "bridged", keep=tmp_path / "host-bridged-a.img")
    assert sorted(p.name for p in tmp_path.glob("*.img")) == \
        ["host-bridged-a.img", "host-bridged-c.img", "host-routed-a.img"]


def test_bad_input_is_one_line_and_builds_nothing(run_cli, tmp_path):
    out = tmp_path / "o"
    proc = run_cli("boottest", "--dist", tmp_path / "nowhere", "--out", out)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0].endswith("holds no staged build (no manifest.json)")
    dist = tmp_path / "dist"
    (dist / "boot").mkdir(parents=True)
    (dist / "manifest.json").write_text(json.dumps({
        "xen": {"version": "4.17.5"}, "kernels": {"mk.linux-6.1-xen0": {"release": "6.1.176-xen0"},
                                                  "mk.linux-6.1-xenU": {"release": "6.1.176-xenU"}}}))
    (dist / "boot/xen-4.17.5.config").write_text("CONFIG_SCHED_CREDIT=y\nCONFIG_SCHED_CREDIT2=y\n")
    for sched, message in (("bvt", "error: sched=bvt is a Xen 2.0 scheduler"),
                           ("rtds", "error: sched=rtds is not built into this hypervisor (it has: credit, credit2)")):
        proc = run_cli("boottest", "--dist", dist, "--sched", sched, "--out", out)
        assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    proc = run_cli("boottest", "--dist", dist, "--timeout", "0", "--out", out)
    assert proc.returncode == 2 and "--timeout 0.0 must be positive" in proc.stderr
    assert not out.exists()


def test_scenarios_boot_at_once_and_a_failure_is_raised_after_both_end(tmp_path, monkeypatch):
    """Both machines run at the same time; each one's checks are kept in scenario order;
    a failing scenario does not cut the other short, and its error is raised at the end."""
    import threading
    import time

    from provision.errors import ProvisionError
    from provision.proof import cli

    inputs = assemble.Inputs(dist=tmp_path, suite="bookworm", mirror="http://deb.debian.org/debian",
                             sched="credit", dom0_mem="1G")
    settings = cli.Settings(inputs=inputs, out=tmp_path, parallel=True)
    both_running = threading.Barrier(2, timeout=10)   # times out unless both run at once
    finished = []

    def boot(settings, scenario, image, facts, result, machines=None):
        both_running.wait()
        if scenario.name == "bridged":
            result.checks.append(f"[{scenario.name}] FAIL x")
            raise ProvisionError("bridged: a check failed")
        time.sleep(0.5)
        result.checks.append(f"[{scenario.name}] PASS y")
        finished.append(scenario.name)

    monkeypatch.setattr(cli, "boot", boot)
    result = cli.Result(out=tmp_path)
    images = {name: (tmp_path / f"{name}.img", None) for name in settings.scenarios}
    with pytest.raises(ProvisionError, match="bridged: a check failed"):
        cli._boot_together(settings, images, result)
    assert finished == ["routed"]
    assert result.checks == ["[bridged] FAIL x", "[routed] PASS y"]
    assert {"boot-bridged", "boot-routed", "boot-all"} <= set(result.stages)


def _manifest(tmp_path, *flavours):
    kernels = {f"mk.linux-6.1-{f}": {"flavour": f, "release": f"6.1.176-{f}"} for f in flavours}
    (tmp_path / "manifest.json").write_text(json.dumps({"xen": {"version": "4.17.5"}, "kernels": kernels}))
    return tmp_path


@pytest.mark.parametrize("flavours, dom0", [
    (("xen0", "xenU"), "6.1.176-xen0"),
    (("xen0-hw", "xenU"), "6.1.176-xen0-hw"),           # doit world kernels=...-xen0-hw,...-xenU
    (("xen0", "xen0-hw", "xenU"), "6.1.176-xen0"),     # both: the default's
])
def test_the_dom0_kernel_is_xen0_or_the_one_xen0_variant(tmp_path, flavours, dom0):
    release = assemble.dist_release(_manifest(tmp_path, *flavours))
    assert release == {"xen": "4.17.5", "xen0": dom0, "xenU": "6.1.176-xenU"}


@pytest.mark.parametrize("flavours", [("xenU",), ("xen0",), ("xen0-hw", "xen0-big", "xenU")])
def test_a_dist_without_one_dom0_and_one_guest_kernel_is_one_line(tmp_path, flavours):
    with pytest.raises(ProvisionError, match=r"has no xen0 .* \(it has: ") as e:
        assemble.dist_release(_manifest(tmp_path, *flavours))
    assert "doit world" in e.value.hint


def test_network_status_check_takes_the_uplink_by_either_udev_name(monkeypatch):
    """udev names QEMU's NIC enp0s16 (PCI path) on our xen0 and ens16 (hotplug slot) on
    Debian's config (the hardware dom0): the bridge's port is either; every guest's vif
    must be there."""
    seen = {}
    monkeypatch.setattr(checks, "shell_check",
                        lambda vm, what, cmd, timeout, expect=None: seen.update(e=expect, cmd=cmd))
    facts = dataclasses.make_dataclass("F", ["guests"])([{"name": "guest1"}, {"name": "guest4"}])
    scenario = assemble.SCENARIOS["bridged"]
    checks.network_status(None, facts, "xenbr0", "192.0.2.1/24", scenario.uplink, scenario.uplink_slot_name)
    out = ("bridge xenbr0: 192.0.2.1/24; up\n  port {}\n  port vif1.0  (domain guest1, vif 0)\n"
           "  port vif3.0  (domain guest4, vif 0)\nip_forward: 0\n")
    for name in ("enp0s16", "ens16"):
        assert re.search(seen["e"], out.format(name), re.M), name
    assert not re.search(seen["e"], out.format("ens17"), re.M)
    assert not re.search(seen["e"], out.format("ens16").replace("guest4", "guest9"), re.M)


def test_network_status_check_waits_for_a_guest_being_created_again(monkeypatch, tmp_path):
    """The check's shell loop (run here by sh, `network status` played by a file that a
    background writer completes): it returns once every guest has a vif, and gives up at
    its deadline printing what it saw."""
    seen = {}
    monkeypatch.setattr(checks, "shell_check",
                        lambda vm, what, cmd, timeout, expect=None: seen.update(cmd=cmd))
    monkeypatch.setattr(checks, "_provision", lambda args: f"cat {tmp_path / 'status'}")
    monkeypatch.setattr(checks, "until", lambda s: "e=$(($(date +%s) + 4)); while [ $(date +%s) -lt $e ]; do")
    facts = dataclasses.make_dataclass("F", ["guests"])([{"name": "guest1"}, {"name": "guest2"}])
    checks.network_status(None, facts, "xenbr0", "192.0.2.1/24", "enp0s16", "ens16")
    status = tmp_path / "status"
    status.write_text("  port vif1.0  (domain guest1, vif 0)\n")
    late = subprocess.Popen(["sh", "-c", f"sleep 1; echo '  port vif4.0  (domain guest2, vif 0)' >> {status}"])
    proc = subprocess.run(["sh", "-c", seen["cmd"]], capture_output=True, text=True, timeout=30)
    late.wait()
    assert proc.returncode == 0 and "(domain guest2, vif 0)" in proc.stdout
    status.write_text("  port vif1.0  (domain guest1, vif 0)\n")  # guest2 never comes back
    proc = subprocess.run(["sh", "-c", seen["cmd"]], capture_output=True, text=True, timeout=30)
    assert "guest2" not in proc.stdout and "(domain guest1, vif 0)" in proc.stdout


def test_known_hosts_for_a_guest_come_from_its_images_json(tmp_path):
    """The boot test's dom0 command that makes a guest's known_hosts from image's JSON
    (run here with sh and python3 as dom0 runs it); no keys listed: it fails."""
    from provision.proof.checks import _known_hosts

    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ root@guest1", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB root@guest1"]
    sidecar, known = tmp_path / "guest1.img.json", tmp_path / "known"
    sidecar.write_text(json.dumps({"guest": {"hostname": "guest1", "ssh_host_keys": keys}}))
    proc = subprocess.run(["sh", "-c", _known_hosts(str(sidecar), "192.0.2.11", str(known))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert known.read_text() == ("192.0.2.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ\n"
                                 "192.0.2.11 ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\n")
    sidecar.write_text(json.dumps({"guest": {"hostname": "guest1"}}))
    assert subprocess.run(["sh", "-c", _known_hosts(str(sidecar), "192.0.2.11", str(known))]).returncode != 0


def test_steal_is_read_from_the_cpu_line_of_proc_stat(tmp_path):
    from provision.proof.cli import steal_seconds

    stat = tmp_path / "stat"
    stat.write_text("cpu  3120807 982304 911464 2756775 59226 0 8193 68167 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert steal_seconds(str(stat)) == pytest.approx(68167 / os.sysconf("SC_CLK_TCK"))
    stat.write_text("intr 1 2 3\n")
    assert steal_seconds(str(stat)) is None
    assert steal_seconds(str(tmp_path / "missing")) is None
    assert steal_seconds() is not None   # this machine's own


def test_guest_types_check_reads_the_xl_settings_back(monkeypatch, tmp_path):
    """A guest made with KEY=VALUE words (guest2's tsc_mode=native) is checked for them in
    what xl list -l reports, beside its type; the shell part runs for real (sh, with an
    xl that prints a running guest's JSON)."""
    seen = []
    monkeypatch.setattr(checks, "shell_check",
                        lambda vm, what, cmd, timeout, expect=None: seen.append((what, cmd, expect)))
    facts = dataclasses.make_dataclass("F", ["guests"])(
        [{"name": "guest1", "type": "pv"}, {"name": "guest2", "xl": ["tsc_mode=native"]}])
    checks.guest_types(None, facts)
    (what1, cmd1, expect1), (what2, cmd2, expect2) = seen
    assert what1 == "xl list -l: guest1 runs as pv" and "tsc_mode" not in cmd1
    assert what2 == "xl list -l: guest2 runs as pvh, tsc_mode native"
    xl = tmp_path / "xl"
    for mode in ("native", "default"):
        xl.write_text("#!/bin/sh\ncat <<'J'\n[\n    {\n        \"domid\": 2,\n        \"config\": {\n"
                      "            \"c_info\": {\n                \"type\": \"pvh\",\n"
                      "                \"name\": \"guest2\"\n            },\n            \"b_info\": {\n"
                      f"                \"tsc_mode\": \"{mode}\",\n                \"max_memkb\": 262144\n"
                      "            }\n        }\n    }\n]\nJ\n")
        xl.chmod(0o755)
        out = subprocess.run(["sh", "-c", cmd2], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}).stdout
        assert bool(re.search(expect2, out, re.M)) == (mode == "native"), out
