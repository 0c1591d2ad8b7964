"""``network bridge|routed|status`` on offline roots, as a user runs them: the files
written for ifupdown and systemd-networkd, a second run changing nothing, the dry run,
and bad input refused in one line with the root left as it was. (The live ``--apply``
runs for real in network namespaces: tests/integration/test_network_live.py.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

IFUPDOWN_INTERFACES = """\
# interfaces(5) file used by ifup(8) and ifdown(8)
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet static
    address 192.0.2.5
    netmask 255.255.255.0
    gateway 192.0.2.254
    mtu 9000
iface eth0 inet6 auto
"""


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = f"-> {p.readlink()}" if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


@pytest.fixture
def ifupdown_root(tmp_path) -> Path:
    r = tmp_path / "ifupdown"
    (r / "etc/network/interfaces.d").mkdir(parents=True)
    (r / "etc/network/if-pre-up.d").mkdir()
    (r / "etc/network/if-pre-up.d/bridge").write_text("#!/bin/sh\n")   # bridge-utils' hook
    (r / "sbin").mkdir()
    (r / "sbin/ifup").write_text("")
    (r / "etc/network/interfaces").write_text(IFUPDOWN_INTERFACES)
    return r


@pytest.fixture
def networkd_root(tmp_path) -> Path:
    """A root as `image --debootstrap` leaves it (its guest-style wildcard file) plus an
    administrator's file for the NIC."""
    r = tmp_path / "networkd"
    wants = r / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
    net = r / "etc/systemd/network"
    net.mkdir(parents=True)
    (net / "50-xen-vif.network").write_text("[Match]\nName=enX* eth*\n\n[Network]\nDHCP=yes\n")
    (net / "10-enp1s0.network").write_text(
        "[Match]\nName=enp1s0\n\n[Network]\nAddress=198.51.100.7/24\nGateway=198.51.100.1\nDNS=198.51.100.53\n"
        "LLDP=yes\n\n[Route]\nDestination=203.0.113.0/24\nGateway=198.51.100.254\n")
    (r / "etc/resolv.conf").write_text("search example.org\nnameserver 198.51.100.9\n")
    return r


def net(run_cli, *args):
    return run_cli("network", *map(str, args))


def one_error(proc, message: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), proc.stderr
    assert "Traceback" not in proc.stderr


def test_ifupdown_bridge_takes_over_the_uplinks_stanzas(run_cli, ifupdown_root):
    r = ifupdown_root
    before = snapshot(r)
    dry = net(run_cli, "bridge", "--root", r, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("# xenbr0 takes over eth0 (ifupdown), addressing: 192.0.2.5/24 via 192.0.2.254")
    assert snapshot(r) == before      # the dry run wrote nothing
    proc = net(run_cli, "bridge", "--root", r)
    assert proc.returncode == 0, proc.stderr
    stanza = (r / "etc/network/interfaces.d/xenbr0").read_text()
    assert "auto xenbr0\niface xenbr0 inet static\n\tbridge_ports eth0\n\tbridge_stp off\n" in stanza
    assert "\taddress 192.0.2.5/24\n\tgateway 192.0.2.254\n\tmtu 9000\n" in stanza
    assert "iface xenbr0 inet6 auto" in stanza and "iface eth0 inet manual" in stanza
    interfaces = (r / "etc/network/interfaces").read_text()
    assert "#xen-provision# allow-hotplug eth0\n#xen-provision# iface eth0 inet static\n" in interfaces
    assert "#xen-provision#     mtu 9000\n#xen-provision# iface eth0 inet6 auto\n" in interfaces
    # Every other byte as it was; the old file kept outside interfaces.d (which is all read).
    assert interfaces.replace("#xen-provision# ", "") == IFUPDOWN_INTERFACES
    backups = list((r / "var/backups/xen-provision/etc/network").glob("interfaces.*.xen-provision.bak"))
    assert len(backups) == 1 and backups[0].read_text() == IFUPDOWN_INTERFACES
    assert (r / "etc/xen/xl.conf").read_text().splitlines()[-1] == 'vif.default.bridge="xenbr0"'
    # A second run finds everything in place.
    after = snapshot(r)
    again = net(run_cli, "bridge", "--root", r)
    assert again.returncode == 0 and "nothing to change" in again.stderr
    assert snapshot(r) == after
    status = net(run_cli, "status", "--root", r)
    assert "bridge xenbr0: ports eth0" in status.stdout and "xl.conf vif.default.bridge=xenbr0" in status.stdout


def test_ifupdown_uplink_named_on_a_shared_auto_line_and_given_a_new_address(run_cli, ifupdown_root):
    r = ifupdown_root
    (r / "etc/network/interfaces").write_text(
        "source /etc/network/interfaces.d/*\nauto lo eth0 eth1\niface lo inet loopback\n"
        "iface eth0 inet dhcp\niface eth1 inet dhcp\n")
    (r / "etc/resolv.conf").write_text("nameserver 192.0.2.99\noptions edns0\n")
    proc = net(run_cli, "bridge", "--root", r, "--uplink", "eth0", "--ip", "192.0.2.10/24",
               "--gateway", "192.0.2.1", "--dns", "192.0.2.53")
    assert proc.returncode == 0, proc.stderr
    interfaces = (r / "etc/network/interfaces").read_text()
    assert "#xen-provision# auto lo eth0 eth1\nauto lo eth1\n" in interfaces
    assert "#xen-provision# iface eth0 inet dhcp\niface eth1 inet dhcp\n" in interfaces
    stanza = (r / "etc/network/interfaces.d/xenbr0").read_text()
    assert "\taddress 192.0.2.10/24\n\tgateway 192.0.2.1\n\tdns-nameservers 192.0.2.53\n" in stanza
    assert (r / "etc/resolv.conf").read_text() == "options edns0\nnameserver 192.0.2.53\n"


def test_networkd_bridge_keeps_the_nics_addressing_and_sorts_first(run_cli, networkd_root):
    r = networkd_root
    proc = net(run_cli, "bridge", "--root", r, "--uplink", "enp1s0")
    assert proc.returncode == 0, proc.stderr
    d = r / "etc/systemd/network"
    netdev = (d / "05-xen-provision-xenbr0.netdev").read_text()
    assert "[NetDev]\nName=xenbr0\nKind=bridge\n" in netdev and "STP=no" in netdev
    port = (d / "05-xen-provision-xenbr0-enp1s0.network").read_text()
    assert "[Match]\nName=enp1s0\n\n[Network]\nBridge=xenbr0\n" in port
    bridge = (d / "05-xen-provision-xenbr0.network").read_text()
    assert ("[Match]\nName=xenbr0\n\n[Network]\nAddress=198.51.100.7/24\nGateway=198.51.100.1\n"
            "DNS=198.51.100.53\nConfigureWithoutCarrier=yes\nLLDP=yes\n") in bridge
    assert "[Route]\nDestination=203.0.113.0/24\nGateway=198.51.100.254\n" in bridge
    # The administrator's own file stays: ours come first, and networkd uses the first match.
    assert (d / "10-enp1s0.network").read_text().startswith("[Match]\nName=enp1s0\n")
    assert sorted(p.name for p in d.iterdir())[0].startswith("05-xen-provision-")
    again = snapshot(r)
    assert net(run_cli, "bridge", "--root", r).returncode == 0    # the uplink is found again
    assert snapshot(r) == again


def test_networkd_file_that_sorts_before_ours_is_named(run_cli, networkd_root):
    d = networkd_root / "etc/systemd/network"
    (d / "00-all.network").write_text("[Match]\nName=en*\n\n[Network]\nDHCP=yes\n")
    before = snapshot(networkd_root)
    proc = net(run_cli, "bridge", "--root", networkd_root, "--uplink", "enp1s0")
    one_error(proc, "/etc/systemd/network/00-all.network configures enp1s0 or xenbr0 and sorts before")
    assert snapshot(networkd_root) == before


def test_routed_host_forwarding_proxy_arp_and_xl_defaults(run_cli, networkd_root):
    r = networkd_root
    (r / "sbin").mkdir()
    before = snapshot(r)
    one_error(net(run_cli, "routed", "--root", r, "--uplink", "enp1s0"), "has no ifconfig, which Xen's vif-route")
    (r / "sbin/ifconfig").write_text("")
    one_error(net(run_cli, "routed", "--root", r, "--uplink", "enp1s0"), "has no /etc/xen/scripts/vif-route")
    assert snapshot(r) == {**before, "sbin/ifconfig": b""}
    (r / "etc/xen/scripts").mkdir(parents=True)
    (r / "etc/xen/scripts/vif-route").write_text("#!/bin/sh\n")
    proc = net(run_cli, "routed", "--root", r, "--uplink", "enp1s0")
    assert proc.returncode == 0, proc.stderr
    assert (r / "etc/sysctl.d/60-xen-provision-routed.conf").read_text().endswith(
        "net.ipv4.ip_forward = 1\nnet.ipv4.conf.enp1s0.proxy_arp = 1\n")
    assert (r / "etc/xen/xl.conf").read_text().endswith(
        'vif.default.script="vif-route"\nvif.default.gatewaydev="enp1s0"\n')
    assert "192.0.2" not in proc.stderr and "--gateway 198.51.100.7" in proc.stderr   # the note for guests
    # A routed host whose NIC is to be addressed here: its own file, first in order.
    proc = net(run_cli, "routed", "--root", r, "--uplink", "enp2s0", "--ip", "203.0.113.10/24",
               "--gateway", "203.0.113.1")
    assert proc.returncode == 0, proc.stderr
    own = (r / "etc/systemd/network/05-xen-provision-enp2s0.network").read_text()
    assert "Name=enp2s0" in own and "Address=203.0.113.10/24\nGateway=203.0.113.1\n" in own
    assert "ConfigureWithoutCarrier" not in own
    assert "net.ipv4.conf.enp2s0.proxy_arp = 1" in (r / "etc/sysctl.d/60-xen-provision-routed.conf").read_text()


@pytest.mark.parametrize("args, message", [
    (["--name", "xenbr0123456789ab"], "bridge name 'xenbr0123456789ab' is not a valid interface name"),
    (["--name", "xen/br0"], "bridge name 'xen/br0' is not a valid interface name"),
    (["--name", ""], "--name '' is empty"),
    (["--uplink", "eth0", "--ip", "192.0.2.9/24", "--gateway", "198.51.100.1"], "gateway 198.51.100.1 is not in 192.0.2.0/24"),
    (["--uplink", "eth0", "--ip", "192.0.2.9/24", "--gateway", "192.0.2.9"], "gateway 192.0.2.9 is the host's own address"),
    (["--uplink", "eth0", "--ip", "198.51.100.9/24"], "--ip 198.51.100.9/24 is outside 192.0.2.0/24, the network eth0 is on now"),
    (["--ip", "192.0.2.0/24"], "is the network address of 192.0.2.0/24"),
    (["--ip", "192.0.2.255/24"], "is the broadcast address of 192.0.2.0/24"),
    (["--ip", "127.0.0.2/8"], "is a loopback address"),
    (["--ip", "224.0.0.5/24"], "is a multicast address"),
    (["--ip", "256.1.1.1/24"], "is not a valid IP address with prefix"),
    (["--ip", "192.0.2.9"], "has no prefix length"),
    (["--dhcp", "--ip", "192.0.2.9/24"], "--dhcp and --ip/--gateway exclude each other"),
    (["--gateway", "192.0.2.1"], "--gateway needs --ip"),
    (["--dns", "192.0.2.53"], "--dns goes with --dhcp or --ip"),
    (["--uplink", "eth0", "--name", "eth0"], "the bridge and the uplink are both 'eth0'"),
    (["--apply"], "--apply changes this host's live network, not"),
    (["--confirm-timeout", "1"], "--confirm-timeout 1 is out of range"),
    (["--backend", "ifupdown", "--dhcp", "--uplink", "eth0", "--name", "br1", "--stp", "--confirm-timeout", "x"],
     "--confirm-timeout 'x' is not a number of seconds"),
])
def test_bad_bridge_input_is_one_line_and_changes_nothing(run_cli, ifupdown_root, args, message):
    before = snapshot(ifupdown_root)
    one_error(net(run_cli, "bridge", "--root", ifupdown_root, *args), message)
    assert snapshot(ifupdown_root) == before


def test_a_second_bridge_over_the_same_uplink_and_a_bridge_as_uplink(run_cli, ifupdown_root):
    assert net(run_cli, "bridge", "--root", ifupdown_root).returncode == 0
    before = snapshot(ifupdown_root)
    one_error(net(run_cli, "bridge", "--root", ifupdown_root, "--name", "xenbr1", "--uplink", "eth0"),
              "eth0 is already a port of bridge xenbr0")
    one_error(net(run_cli, "bridge", "--root", ifupdown_root, "--name", "xenbr1", "--uplink", "xenbr0"),
              "xenbr0 is itself a bridge")
    assert snapshot(ifupdown_root) == before


def test_roots_that_cannot_be_configured(run_cli, tmp_path, ifupdown_root):
    one_error(net(run_cli, "bridge", "--root", tmp_path / "missing"), "does not exist or is not a directory")
    assert not (tmp_path / "missing").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error(net(run_cli, "bridge", "--root", empty, "--uplink", "eth0"), "cannot tell which network stack")
    one_error(net(run_cli, "bridge", "--root", empty), "cannot tell which interface is the uplink")
    (ifupdown_root / "etc/network/if-pre-up.d/bridge").unlink()
    one_error(net(run_cli, "bridge", "--root", ifupdown_root), "ifupdown cannot make bridges (no bridge-utils hook)")
    assert list(empty.iterdir()) == []


def test_confirm_and_rollback_with_nothing_pending(run_cli):
    for action in ("confirm", "rollback"):
        proc = net(run_cli, action)
        assert proc.returncode == 2 and proc.stderr.strip() == \
            "error: no network change is waiting for confirmation"


def test_a_bridge_over_a_routed_hosts_uplink_sorts_before_its_file(run_cli, networkd_root):
    """Our own file for another purpose (the routed uplink's) is a rival like any other:
    the bridge's files take the 00 prefix to come first."""
    r = networkd_root
    d = r / "etc/systemd/network"
    (d / "05-xen-provision-enp2s0.network").write_text("[Match]\nName=enp2s0\n\n[Network]\nAddress=203.0.113.10/24\n")
    proc = net(run_cli, "bridge", "--root", r, "--name", "xenbr9", "--uplink", "enp2s0")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in d.iterdir())
    assert names[:3] == ["00-xen-provision-xenbr9-enp2s0.network", "00-xen-provision-xenbr9.netdev",
                         "00-xen-provision-xenbr9.network"]
    assert "Address=203.0.113.10/24" in (d / "00-xen-provision-xenbr9.network").read_text()
    assert net(run_cli, "bridge", "--root", r, "--name", "xenbr9").returncode == 0   # and again: no change
    assert sorted(p.name for p in d.iterdir()) == names


def test_enter_confirms_only_for_the_terminals_foreground_job():
    """On a real pty: the foreground job may read Enter; the same command put in the
    background (its own process group) must not, or SIGTTIN would stop it and its rollback."""
    import pty

    code = ("import os, sys; from provision.network.apply import _tty; print('fg', _tty(), flush=True); "
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.setpgid(0, 0); print('bg', _tty(), flush=True); os._exit(0)\n"
            "os.waitpid(pid, 0)\n")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(sys.executable, [sys.executable, "-c", code])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    assert out.decode().split() == ["fg", "True", "bg", "False"], out


def test_an_uplink_given_by_its_altname(tmp_path):
    """The hardware dom0 names QEMU's NIC ens16 and keeps enp0s16 as an altname. Given
    enp0s16: kept where the root's files already name it (networkd's Name= takes altnames,
    and those are the files to replace), else the kernel's name; an unknown name is an error."""
    from provision.errors import ProvisionError
    from provision.network.discover import Config, Link, choose_uplink
    live = {"lo": Link("lo", None, None, None, True, ()),
            "ens16": Link("ens16", "52:54:00:12:34:56", None, None, True, (), ("enp0s16",))}
    root = tmp_path / "root"
    (root / "etc/systemd/network").mkdir(parents=True)
    assert choose_uplink(Config.read(root), "enp0s16", live) == "ens16"
    assert choose_uplink(Config.read(root), "ens16", live) == "ens16"
    (root / "etc/systemd/network/05-xen-provision-enp0s16.network").write_text(
        "[Match]\nName=enp0s16\n\n[Network]\nAddress=192.0.2.1/24\nGateway=192.0.2.2\n")
    assert choose_uplink(Config.read(root), "enp0s16", live) == "enp0s16"
    with pytest.raises(ProvisionError, match="there is no interface 'enp0s17' on this host"):
        choose_uplink(Config.read(root), "enp0s17", live)
