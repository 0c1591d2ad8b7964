"""Suites, mirrors, backends' command lines, guest configuration and the base cache,
without the network: archived suites (sarge...) are checked through the exact plan."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.guest import basecache, ext4edit, mirror, suites
from provision.guest.bootstrap import PREFETCH, command, resolve
from provision.guest.configure import (
    GuestSettings,
    Network,
    apply_to_dir,
    apt_sources,
    dir_reader,
    guest_files,
    read_root_hash,
    read_ssh_keys,
)
from provision.guest.target import Target

HASH = "$y$j9T$abcdefghijklmnopqrstu.$0123456789abcdefghijklmnopqrstuvwxyzABCD"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyMaterialForTestsOnly0123456789abc test@host"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
REMOVED_KEYRING = "/usr/share/keyrings/debian-archive-removed-keys.gpg"
needs_keyrings = pytest.mark.skipif(not os.path.exists(REMOVED_KEYRING),
                                    reason="debian-archive-keyring is not installed (setup-host installs it)")


# ------------------------------------------------------------------ suites


def test_every_debian_and_ubuntu_suite_debootstrap_knows_is_in_the_table():
    known = {"potato", "woody", "sarge", "etch", "lenny", "squeeze", "wheezy", "jessie", "stretch", "buster",
             "bullseye", "bookworm", "trixie", "sid", "warty", "hoary", "breezy", "dapper", "edgy", "feisty",
             "gutsy", "hardy", "intrepid", "jaunty", "karmic", "lucid", "maverick", "natty", "oneiric",
             "precise", "quantal", "raring", "saucy", "trusty", "utopic", "vivid", "wily", "xenial", "yakkety",
             "zesty", "artful", "bionic", "cosmic", "disco", "eoan", "focal", "groovy", "hirsute", "impish",
             "jammy", "kinetic"}
    assert known <= set(suites.names())


# Scripts of debootstrap that are not Debian or Ubuntu releases: derivatives (Devuan,
# Kali, Tanglu, PureOS), ports and build variants of a release we have.
NOT_DEBIAN_OR_UBUNTU = {"aequorea", "bartholomea", "chromodoris", "dasyatis", "ascii", "beowulf", "ceres",
                        "chimaera", "daedalus", "excalibur", "freia", "amber", "byzantium", "crimson",
                        "landing", "octarine", "kali", "kali-dev", "kali-last-snapshot", "kali-rolling",
                        "debian-common"}
DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")


@pytest.mark.skipif(not DEBOOTSTRAP_SCRIPTS.is_dir(), reason="debootstrap is not installed (setup-host installs it)")
def test_every_suite_of_the_installed_debootstrap_is_in_the_table():
    """Real data: when a newer debootstrap learns a release, this fails until the table has it."""
    known = set(suites.names()) | set(suites.ALIASES)
    missing = sorted(
        name for name in os.listdir(DEBOOTSTRAP_SCRIPTS)
        if not any(mark in name for mark in (".", "-m68k", "-kfreebsd"))
        and name not in NOT_DEBIAN_OR_UBUNTU and name not in known)
    assert missing == [], f"add these releases to provision/guest/suites.py: {missing}"
    # And every alias points at a release of the table.
    assert all(target in suites.names() for target in suites.ALIASES.values())


def test_release_facts():
    sarge = suites.lookup("sarge")
    assert (sarge.distro, sarge.status, sarge.arch, sarge.init, sarge.network) == \
        ("debian", "archived", "i386", "sysvinit", "ifupdown")
    assert sarge.kernel_args == ("vsyscall=emulate",)
    bookworm = suites.lookup("bookworm")
    assert (bookworm.status, bookworm.init, bookworm.network, bookworm.kernel_args) == \
        ("current", "systemd", "networkd", ())
    assert "systemd-sysv" in bookworm.boot  # minbase has no init
    assert suites.lookup("Unstable").name == "sid"
    assert suites.lookup("noble").distro == "ubuntu"


def test_unknown_suite_lists_close_matches():
    with pytest.raises(ProvisionError) as e:
        suites.lookup("bookwrom")
    assert "unknown suite 'bookwrom'" in str(e.value)
    assert "bookworm" in e.value.hint


# ------------------------------------------------------------------ mirrors


def _apt(tmp_path, one_line=None, deb822=None) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    if one_line is not None:
        (etc / "sources.list").write_text(one_line)
    if deb822 is not None:
        (etc / "sources.list.d" / "debian.sources").write_text(deb822)
    return etc


def test_host_mirror_from_deb822(tmp_path):
    etc = _apt(tmp_path, deb822=(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "# a comment\nTypes: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://disabled.example/ubuntu\nSuites: jammy\nComponents: main\n"))
    assert mirror.host_mirror("debian", etc) == "http://mirror.example/debian"
    assert mirror.host_mirror("ubuntu", etc) is None
    assert mirror.default_mirror(suites.lookup("jammy"), etc) == "http://archive.ubuntu.com/ubuntu"


def test_host_mirror_from_one_line_sources(tmp_path):
    etc = _apt(tmp_path, one_line=(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://ftp.example.org/debian/ bookworm main contrib\n"
        "deb http://gb.archive.ubuntu.com/ubuntu jammy main\n"))
    assert mirror.host_mirror("debian", etc) == "http://ftp.example.org/debian"
    assert mirror.default_mirror(suites.lookup("jammy"), etc) == "http://gb.archive.ubuntu.com/ubuntu"
    # Archived releases are not on the live mirror, whatever the host uses.
    assert mirror.default_mirror(suites.lookup("sarge"), etc) == "http://archive.debian.org/debian"
    assert mirror.default_mirror(suites.lookup("precise"), etc) == "http://old-releases.ubuntu.com/ubuntu"


def test_the_hosts_own_mirror_is_the_default():
    spec = resolve("bookworm", check_gpg=False)
    assert spec.mirror == (mirror.host_mirror("debian") or "http://deb.debian.org/debian")


# ------------------------------------------------------------------ backends and plans


@needs_keyrings
def test_sarge_plan_debootstrap_i386_archive_and_removed_keys():
    spec = resolve("sarge")
    argv, env = command(spec, "/target")
    assert argv == ["debootstrap", "--arch=i386", "--variant=minbase", "--components=main",
                    "--include=dhcp-client,ifupdown", f"--keyring={REMOVED_KEYRING}",
                    "sarge", "/target", "http://archive.debian.org/debian"]
    assert env == {}


@needs_keyrings
@pytest.mark.parametrize("name", [r.name for r in suites.RELEASES if r.distro == "debian" and r.archived])
def test_archived_debian_suites_use_the_archive(name):
    spec = resolve(name, mirror=None)
    argv, _ = command(spec, "/t")
    assert spec.mirror == "http://archive.debian.org/debian"
    assert spec.keyring == REMOVED_KEYRING
    if spec.backend == "mmdebstrap":
        assert '--aptopt=Acquire::Check-Valid-Until "false"' in argv
        assert argv[-1] == f"deb http://archive.debian.org/debian {name} main"
        assert not any("prefetch" in a for a in argv)  # never run against an archived suite's apt
    else:
        assert argv[-3:] == [name, "/t", "http://archive.debian.org/debian"]


def test_sarge_without_signature_checks_is_loud(capsys):
    spec = resolve("sarge", check_gpg=False, proxy="http://127.0.0.1:3142")
    argv, env = command(spec, "/t")
    assert "--no-check-gpg" in argv and not any(a.startswith("--keyring") for a in argv)
    assert env["http_proxy"] == "http://127.0.0.1:3142"
    assert "NOT CHECKING SIGNATURES" in capsys.readouterr().err


def test_sarge_refuses_amd64_and_mmdebstrap():
    with pytest.raises(ProvisionError, match="no amd64 packages"):
        resolve("sarge", arch="amd64", check_gpg=False)
    with pytest.raises(ProvisionError, match="mmdebstrap cannot bootstrap"):
        resolve("sarge", backend="mmdebstrap", check_gpg=False)


@needs_keyrings
def test_bookworm_mmdebstrap_command():
    spec = resolve("bookworm", mirror="http://deb.debian.org/debian", include=["less,vim-tiny"], arch="amd64")
    argv, _ = command(spec, "/r")
    assert spec.backend == "mmdebstrap"
    assert argv == ["mmdebstrap", "--mode=root", "--format=directory", "--variant=minbase",
                    "--architectures=amd64", "--components=main", "--include=iproute2,less,systemd-sysv,udev,vim-tiny",
                    f"--keyring={DEBIAN_KEYRING}",
                    f"--extract-hook=sh {PREFETCH} start \"$1\" apt '?priority(required)' iproute2 less systemd-sysv "
                    "udev vim-tiny",
                    f'--essential-hook=sh {PREFETCH} wait "$1"',
                    "bookworm", "/r", "deb http://deb.debian.org/debian bookworm main"]
    assert PREFETCH.is_file()  # shipped beside the module (package data)
    # --exclude is debootstrap's: auto picks it
    spec = resolve("bookworm", exclude=["e2fsprogs"], arch="amd64")
    assert spec.backend == "debootstrap"
    assert "--exclude=e2fsprogs" in command(spec, "/r")[0]


@needs_keyrings
def test_default_variant_and_debootstrap_backend_commands():
    """"default" is debootstrap's own default set (no --variant); mmdebstrap calls it "debootstrap"."""
    spec = resolve("bookworm", variant="default", backend="debootstrap", arch="amd64",
                   mirror="http://deb.debian.org/debian")
    argv, _ = command(spec, "/r")
    assert argv == ["debootstrap", "--arch=amd64", "--components=main", "--include=iproute2,systemd-sysv,udev",
                    f"--keyring={DEBIAN_KEYRING}", "bookworm", "/r", "http://deb.debian.org/debian"]
    spec = resolve("bookworm", variant="default", backend="mmdebstrap", arch="amd64")
    assert "--variant=debootstrap" in command(spec, "/r")[0]
    spec = resolve("bookworm", backend="debootstrap", arch="i386", include=["less"], boot_packages=False)
    assert command(spec, "/r")[0][:4] == ["debootstrap", "--arch=i386", "--variant=minbase", "--components=main"]
    assert "--include=less" in command(spec, "/r")[0]


def test_ubuntu_needs_its_keyring(tmp_path):
    if os.path.exists(mirror.KEYRINGS[("ubuntu", "current")]):
        pytest.skip("Ubuntu's keyring is installed here")
    with pytest.raises(ProvisionError) as e:
        resolve("jammy")
    assert "keyring" in str(e.value) and "--keyring" in e.value.hint
    key = tmp_path / "ubuntu.gpg"
    key.write_bytes(b"x")
    spec = resolve("jammy", keyring=str(key), arch="amd64")
    argv, _ = command(spec, "/r")
    assert argv[-1] == "deb http://archive.ubuntu.com/ubuntu jammy main" and f"--keyring={key}" in argv
    old = resolve("hardy", keyring=str(key), arch="i386")
    assert old.backend == "debootstrap" and old.mirror == "http://old-releases.ubuntu.com/ubuntu"


def test_bad_package_names_and_variants():
    with pytest.raises(ProvisionError, match="package name"):
        resolve("bookworm", include=["foo;rm -rf /"], check_gpg=False)
    with pytest.raises(ProvisionError, match="variant"):
        resolve("bookworm", variant="huge", check_gpg=False)
    with pytest.raises(ProvisionError, match="both included and excluded"):
        resolve("bookworm", include=["vim"], exclude=["vim"], check_gpg=False, backend="debootstrap")


def test_cache_key_follows_the_inputs():
    a = resolve("bookworm", check_gpg=False, include=["bc", "ac"])
    b = resolve("bookworm", check_gpg=False, include=["ac,bc"])
    c = resolve("bookworm", check_gpg=False, include=["ac"])
    assert basecache.entry_for(a, create=False).key == basecache.entry_for(b, create=False).key
    assert basecache.entry_for(a, create=False).key != basecache.entry_for(c, create=False).key
    assert a.manifest()["backend_version"].startswith("mmdebstrap ")


# ------------------------------------------------------------------ guest configuration


def _tree(tmp_path, sysv=False) -> Path:
    root = tmp_path / "root"
    for d in ("etc/ssh", "etc/apt/apt.conf.d", "etc/systemd/system", "var/lib/dbus", "etc/udev/rules.d"):
        (root / d).mkdir(parents=True)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    (root / "etc/group").write_text("root:x:0:\nshadow:x:42:\n")
    (root / "etc/ssh/sshd_config").write_text("")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("pub")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/apt/apt.conf.d/99mmdebstrap").write_text('Acquire::http::Proxy "http://p:3142";\n')
    (root / "etc/udev/rules.d/70-persistent-net.rules").write_text('SUBSYSTEM=="net", NAME="eth0"\n')
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    if sysv:
        (root / "etc/inittab").write_text("id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n")
        (root / "etc/securetty").write_text("console\ntty1\n")
    return root


def _settings(release, **kw) -> GuestSettings:
    base = dict(hostname="vm1.example.org",
                network=Network.make(ip="192.0.2.10/24", gateway="192.0.2.1", dns=["192.0.2.53"]),
                swap=True, root_hash=HASH, ssh_keys=(KEY,),
                apt_sources=apt_sources(release, "http://deb.debian.org/debian"))
    base.update(kw)
    return GuestSettings(**base)


def test_configure_bookworm_tree(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to the shadow group needs root")
    rel = suites.lookup("bookworm")
    root = _tree(tmp_path)
    apply_to_dir(root, guest_files(rel, _settings(rel), dir_reader(root)))
    etc = root / "etc"
    assert (etc / "hostname").read_text() == "vm1\n"
    assert "192.0.2.10\tvm1.example.org vm1\n" in (etc / "hosts").read_text()
    assert not (etc / "resolv.conf").is_symlink()
    assert (etc / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    net = (etc / "systemd/network/50-xen-vif.network").read_text()
    assert "Name=enX* eth*" in net and "Address=192.0.2.10/24" in net and "Gateway=192.0.2.1" in net
    assert os.readlink(etc / "systemd/system/multi-user.target.wants/systemd-networkd.service") == \
        "/lib/systemd/system/systemd-networkd.service"
    assert os.readlink(etc / "systemd/system/getty.target.wants/serial-getty@hvc0.service") == \
        "/lib/systemd/system/serial-getty@.service"
    assert (etc / "fstab").read_text().splitlines()[1:3] == [
        "/dev/xvda1\t/\text4\terrors=remount-ro\t0\t1", "/dev/xvda2\tnone\tswap\tsw\t0\t0"]
    shadow = etc / "shadow"
    assert shadow.read_text().startswith(f"root:{HASH}:19000:")
    assert (stat.S_IMODE(shadow.stat().st_mode), shadow.stat().st_gid) == (0o640, 42)
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "root/.ssh").stat().st_mode) == 0o700
    assert (etc / "machine-id").read_text() == "" and not (root / "var/lib/dbus/machine-id").exists()
    assert not list((etc / "ssh").glob("ssh_host_*"))
    assert (etc / "systemd/system/multi-user.target.wants/regenerate-ssh-host-keys.service").is_symlink()
    assert "ssh-keygen -A" in (etc / "systemd/system/regenerate-ssh-host-keys.service").read_text()
    assert not (etc / "apt/apt.conf.d/99mmdebstrap").exists()
    assert not (etc / "udev/rules.d/70-persistent-net.rules").exists()
    assert (etc / "apt/sources.list").read_text() == (
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb http://deb.debian.org/debian bookworm-updates main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n")


def test_configure_sarge_tree_sysvinit_ifupdown(tmp_path):
    rel = suites.lookup("sarge")
    root = _tree(tmp_path, sysv=True)
    settings = _settings(rel, root_hash=None, ssh_keys=(), devices="sd", fstype="ext3",
                         network=Network.make(), apt_sources=apt_sources(rel, "http://archive.debian.org/debian"))
    apply_to_dir(root, guest_files(rel, settings, dir_reader(root)))
    etc = root / "etc"
    assert "auto eth0\niface eth0 inet dhcp\n" in (etc / "network/interfaces").read_text()
    assert (etc / "inittab").read_text().endswith("hvc0:2345:respawn:/sbin/getty 38400 hvc0\n")
    assert (etc / "securetty").read_text().split()[-1] == "hvc0"
    assert "/dev/sda1\t/\text3" in (etc / "fstab").read_text()
    assert (etc / "apt/sources.list").read_text() == "deb http://archive.debian.org/debian sarge main\n"
    assert "Check-Valid-Until" in (etc / "apt/apt.conf.d/99archived-release").read_text()
    assert "127.0.1.1\tvm1.example.org vm1" in (etc / "hosts").read_text()
    script = etc / "init.d/regenerate-ssh-host-keys"
    assert os.access(script, os.X_OK) and "for type in rsa dsa" in script.read_text()
    # Running it twice changes nothing (templates re-apply it).
    before = (etc / "inittab").read_text()
    apply_to_dir(root, guest_files(rel, settings, dir_reader(root)))
    assert (etc / "inittab").read_text() == before


def test_dhcp_on_networkd_matches_the_xen_nic(tmp_path):
    rel = suites.lookup("trixie")
    root = _tree(tmp_path)
    settings = _settings(rel, network=Network.make(), root_hash=None, ssh_keys=(), swap=False)
    ops = guest_files(rel, settings, dir_reader(root))
    net = next(op for op in ops if getattr(op, "path", "") == "/etc/systemd/network/50-xen-vif.network")
    text = net.data.decode()
    assert "Name=enX* eth*" in text and "DHCP=yes" in text and "Address=" not in text
    fstab = next(op for op in ops if getattr(op, "path", "") == "/etc/fstab").data.decode()
    assert "/dev/xvda1\t/\text4" in fstab and "swap" not in fstab
    assert not any(getattr(op, "path", "") == "/etc/network/interfaces" for op in ops)


def test_an_nfs_root_tree_has_no_root_line_and_keeps_the_kernels_nic(tmp_path):
    """A --dir tree is the manual's NFS root: the kernel mounted / and set up the NIC (ip=)."""
    rel = suites.lookup("bookworm")
    root = _tree(tmp_path)
    settings = _settings(rel, network=Network.make("192.0.2.31/24", gateway="192.0.2.2"), swap=True)
    settings = settings.on(Target.dir(root))
    ops = guest_files(rel, settings, dir_reader(root))
    text = {op.path: op.data.decode() for op in ops if hasattr(op, "data")}
    fstab = text["/etc/fstab"]
    assert not any(line.split()[1:2] == ["/"] for line in fstab.splitlines() if not line.startswith("#"))
    assert "swap" not in fstab.replace("# ", "") and "proc\t/proc" in fstab
    net = text["/etc/systemd/network/50-xen-vif.network"]
    assert "Address=192.0.2.31/24" in net and "\nKeepConfiguration=yes\n" in net
    # An image's NIC is networkd's to manage as usual.
    disk = guest_files(rel, _settings(rel, network=Network.make("192.0.2.31/24")), dir_reader(root))
    assert "KeepConfiguration" not in next(op for op in disk if getattr(op, "path", "") ==
                                           "/etc/systemd/network/50-xen-vif.network").data.decode()


def test_an_nfs_root_tree_on_ifupdown_leaves_eth0_to_the_kernel(tmp_path):
    rel = suites.lookup("sarge")
    root = _tree(tmp_path, sysv=True)
    settings = _settings(rel, root_hash=None, ssh_keys=(), network=Network.make("192.0.2.31/24"),
                         apt_sources=apt_sources(rel, "http://archive.debian.org/debian")).on(Target.dir(root))
    apply_to_dir(root, guest_files(rel, settings, dir_reader(root)))
    interfaces = (root / "etc/network/interfaces").read_text()
    assert "iface lo inet loopback" in interfaces
    assert not [line for line in interfaces.splitlines() if "eth0" in line and not line.startswith("#")]
    assert "\t/\t" not in (root / "etc/fstab").read_text()


def test_same_settings_same_bytes(tmp_path):
    rel = suites.lookup("bookworm")
    a = guest_files(rel, _settings(rel), dir_reader(_tree(tmp_path / "a")))
    b = guest_files(rel, _settings(rel), dir_reader(_tree(tmp_path / "b")))
    assert a == b


@pytest.mark.parametrize("kw,message", [
    (dict(ip="192.0.2.10/24", gateway="198.51.100.1"), "not in the network"),
    (dict(ip="192.0.2.300/24"), "not a valid IP"),
    (dict(ip="192.0.2.10"), "no prefix length"),
    (dict(ip="192.0.2.10", netmask="255.255.0.255"), "netmask"),
    (dict(ip="192.0.2.0/24"), "network address"),
    (dict(gateway="192.0.2.1"), "need a static --ip"),
    (dict(dns=["not-an-ip"]), "DNS server"),
])
def test_bad_network_settings(kw, message):
    with pytest.raises(ProvisionError, match=message):
        Network.make(**kw)


def test_netmask_form():
    net = Network.make(ip="10.1.2.3", netmask="255.255.255.0", gateway="10.1.2.1")
    assert str(net.address) == "10.1.2.3/24"


def test_root_password_must_be_a_hash_and_is_never_echoed(tmp_path):
    f = tmp_path / "pw"
    f.write_text("hunter2\n")
    f.chmod(0o600)
    with pytest.raises(ProvisionError) as e:
        read_root_hash(f)
    assert "hunter2" not in str(e.value) + str(e.value.hint)
    f.write_text(HASH + "\n")
    assert read_root_hash(f) == HASH


def test_ssh_key_file_checks(tmp_path):
    f = tmp_path / "id"
    f.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxxx\n")
    with pytest.raises(ProvisionError, match="private key"):
        read_ssh_keys(f)
    f.write_text(KEY + "\n")
    assert read_ssh_keys(f) == (KEY,)


# ------------------------------------------------------------------ editing an ext4 image (debugfs)


def test_ext4edit_applies_guest_files_without_mounting(tmp_path):
    if not shutil.which("mkfs.ext4", path=os.environ.get("PATH", "") + ":/sbin:/usr/sbin"):
        pytest.skip("e2fsprogs is not installed")
    rel = suites.lookup("bookworm")
    root = _tree(tmp_path)
    img = tmp_path / "root.img"
    subprocess.run(["truncate", "-s", "64M", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", root, img], check=True, env={**os.environ, "PATH": "/usr/sbin:/sbin:/usr/bin:/bin"})
    reader = ext4edit.reader(img)
    assert reader.read("/etc/group").startswith("root:x:0:")
    assert "ssh_host_ed25519_key" in reader.listdir("/etc/ssh")
    ops = guest_files(rel, _settings(rel), reader)
    ext4edit.apply(img, ops)
    ext4edit.apply(img, ops)  # again, as a template clone does: directories now exist
    after = ext4edit.reader(img)
    assert after.read("/etc/hostname") == "vm1\n"
    assert after.read("/etc/shadow").startswith(f"root:{HASH}:")
    assert after.read("/root/.ssh/authorized_keys") == KEY + "\n"
    assert not [n for n in after.listdir("/etc/ssh") if n.startswith("ssh_host_")]
    assert after.read("/etc/machine-id") == ""
    out = subprocess.run(["debugfs", "-R", "stat /etc/shadow", img], capture_output=True, text=True,
                         env={**os.environ, "PATH": "/usr/sbin:/sbin:/usr/bin:/bin"}).stdout
    assert "Mode:  0640" in out and "Group:    42" in out
    fsck = subprocess.run(["e2fsck", "-fn", img], capture_output=True, text=True,
                          env={**os.environ, "PATH": "/usr/sbin:/sbin:/usr/bin:/bin"})
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


# ------------------------------------------------------------------ the base cache


def _cached_base(tmp_path, monkeypatch) -> tuple:
    """A small real cache entry (tar of a tree) in a private cache."""
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "host-cache"))
    spec = resolve("bookworm", check_gpg=False, mirror="http://127.0.0.1:9/debian")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/debian_version").write_text("12.0\n")
    entry = basecache.entry_for(spec)
    basecache.store(entry, spec, tree)
    return spec, entry


def test_broken_cache_entry_is_detected_and_never_used(tmp_path, monkeypatch):
    spec, entry = _cached_base(tmp_path, monkeypatch)
    assert len(entry.info()["sha256"]) == 64
    good = tmp_path / "good"
    good.mkdir()
    assert basecache.unpack(entry, good) is not None
    assert (good / "etc/debian_version").read_text() == "12.0\n"
    # Same size, one byte changed: the checksum catches it.
    data = bytearray(entry.tarball.read_bytes())
    data[600] ^= 0xFF
    entry.tarball.write_bytes(bytes(data))
    bad = tmp_path / "bad"
    bad.mkdir()
    assert basecache.unpack(entry, bad) is None
    # obtain() drops it and rebuilds; here the mirror is unreachable, so the rebuild fails
    # with that URL, and the broken entry is gone rather than used.
    with pytest.raises(ProvisionError, match=r"127\.0\.0\.1:9/debian/dists/bookworm"):
        basecache.obtain(spec, tmp_path / "dest")
    assert not entry.tarball.exists() and not entry.meta.exists()


def test_truncated_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    spec = resolve("bookworm", check_gpg=False, mirror="http://127.0.0.1:9/debian")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(os.urandom(50000))
    entry = basecache.entry_for(spec)
    basecache.store(entry, spec, tree)
    with open(entry.tarball, "r+b") as f:
        f.truncate(10240)
    dest = tmp_path / "d"
    dest.mkdir()
    assert basecache.unpack(entry, dest) is None


def test_extents_checksum_sees_data_not_holes(tmp_path):
    from provision.guest.build import extents_sha256

    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for p in (a, b):
        with open(p, "wb") as f:
            f.truncate(64 << 20)
            f.seek(8 << 20)
            f.write(b"filesystem data" * 1000)
    assert os.stat(a).st_blocks * 512 < 1 << 20  # sparse: the holes are not read
    assert extents_sha256(a) == extents_sha256(b)
    with open(b, "r+b") as f:
        f.seek((8 << 20) + 100)
        f.write(b"X")
    assert extents_sha256(a) != extents_sha256(b)


# ------------------------------------------------------------------ a base seeded on another machine


def test_seeded_base_keeps_its_key_where_the_backend_is_missing(tmp_path, monkeypatch):
    """dom0 has no mmdebstrap: the key must still be the host's, the base must come
    from the seed, and a base that is not there is an error, never a download."""
    spec, entry = _cached_base(tmp_path, monkeypatch)
    seed = tmp_path / "seed"
    files = basecache.export_entry(spec, seed)
    assert sorted(p.name for p in files) == [f"{entry.key}.json", f"{entry.key}.tar"]
    assert (seed / f"{entry.key}.tar").read_bytes() == entry.tarball.read_bytes()
    seed.chmod(0o555)  # the code disk is mounted read-only
    script = f"""
import os, sys
from provision.guest import basecache
from provision.guest.bootstrap import BaseSpec, backend_version
from provision.errors import ProvisionError
assert backend_version("mmdebstrap") == "missing", backend_version("mmdebstrap")
spec = basecache.import_entry({str(seed)!r})
print("key", basecache.entry_for(spec).key)
print("status", basecache.obtain(spec, {str(tmp_path / 'dest')!r}, offline=True)[0])
other = BaseSpec.from_manifest({{**spec.manifest(), "mirror": "http://127.0.0.1:9/other"}})
for kw in ({{"offline": True}}, {{}}):
    try:
        basecache.obtain(other, {str(tmp_path / 'dest2')!r}, **kw)
    except ProvisionError as e:
        print("refused", e.message)
"""
    bin_dir = tmp_path / "bin"  # tar, and no mmdebstrap or dpkg-query to ask its version
    bin_dir.mkdir()
    (bin_dir / "tar").symlink_to(shutil.which("tar"))
    env = {"PATH": str(bin_dir), "XEN_PROVISION_CACHE": str(tmp_path / "dom0-cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    seed.chmod(0o755)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:2] == [f"key {entry.key}", "status hit"], p.stdout
    assert (tmp_path / "dest/etc/debian_version").read_text() == "12.0\n"
    # Offline: refused as such. Not offline, but the backend is missing here: a bootstrap
    # would make another base than the one asked for, so that is refused too.
    assert "this run may not bootstrap (offline)" in lines[2], p.stdout
    assert "this machine has missing" in lines[3] and "mmdebstrap 1." in lines[3], p.stdout


def test_a_broken_base_is_not_exported(tmp_path, monkeypatch):
    spec, entry = _cached_base(tmp_path, monkeypatch)
    data = bytearray(entry.tarball.read_bytes())
    data[600] ^= 0xFF
    entry.tarball.write_bytes(bytes(data))
    seed = tmp_path / "seed"
    assert basecache.export_entry(spec, seed) is None
    assert list(seed.iterdir()) == []  # no copy, not even a temporary one
    assert not entry.tarball.exists() and not entry.meta.exists()
    assert basecache.export_entry(spec, seed) is None  # not cached at all now


def test_bad_seeds_are_one_line(tmp_path, monkeypatch):
    spec, entry = _cached_base(tmp_path, monkeypatch)
    seed = tmp_path / "seed"
    seed.mkdir()
    with pytest.raises(ProvisionError, match="holds 0 base manifests, not one"):
        basecache.import_entry(seed)
    basecache.export_entry(spec, seed)
    meta = json.loads((seed / f"{entry.key}.json").read_text())
    (seed / f"{entry.key}.tar").unlink()
    with pytest.raises(ProvisionError, match=r"the base tarball .* is missing"):
        basecache.import_entry(seed)
    meta["manifest"]["format"] = 9
    (seed / f"{entry.key}.json").write_text(json.dumps(meta))
    with pytest.raises(ProvisionError, match="base manifest format 9 is not known"):
        basecache.import_entry(seed)
    del meta["manifest"]["suite"]
    meta["manifest"]["format"] = 1
    (seed / f"{entry.key}.json").write_text(json.dumps(meta))
    with pytest.raises(ProvisionError, match="base manifest lacks 'suite'"):
        basecache.import_entry(seed)


def test_lvcheck_reads_a_configured_guest_back_and_catches_a_wrong_file(tmp_path):
    """The dom0 check's reader, on an ext4 image instead of an LV."""
    if not shutil.which("mkfs.ext4", path=os.environ.get("PATH", "") + ":/sbin:/usr/sbin"):
        pytest.skip("e2fsprogs is not installed")
    from provision.guest.configure import Write
    from provision.proof.indom0 import lvcheck

    rel = suites.lookup("bookworm")
    root = _tree(tmp_path)
    settings = _settings(rel)
    apply_to_dir(root, guest_files(rel, settings, dir_reader(root)))
    img = tmp_path / "root.img"
    subprocess.run(["truncate", "-s", "64M", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", root, img], check=True,
                   env={**os.environ, "PATH": "/usr/sbin:/sbin:/usr/bin:/bin"})
    assert lvcheck.check_guest(str(img), rel, settings) > 15
    ext4edit.apply(img, [Write("/etc/hosts", b"127.0.0.1 localhost\n")])
    with pytest.raises(AssertionError, match="/etc/hosts in .* is '127.0.0.1 localhost"):
        lvcheck.check_guest(str(img), rel, settings)


def test_lvcheck_runs_on_what_a_minimal_dom0_has(tmp_path):
    """python3 -m provision.proof.indom0.lvcheck imports the standard library and jinja2
    (python3-jinja2) only: no requests, doit or pyparted on its path."""
    script = """
import importlib.abc, json, runpy, sys
at_start = set(sys.modules)  # the interpreter's own start-up (site, .pth files)
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("requests", "urllib3", "doit", "parted", "pytest"):
            raise ImportError(f"{name} is not in dom0")
sys.meta_path.insert(0, Block())
sys.argv = ["lvcheck", "--seed", sys.argv[1], sys.argv[2]]
try:
    runpy.run_module("provision.proof.indom0.lvcheck", run_name="__main__")
except SystemExit as e:
    print("exit", e.code)
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - at_start})))
"""
    p = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "not-a-disk")],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[0] == f"LV-IMAGE-CHECK-FAIL {tmp_path / 'not-a-disk'}: No such file or directory", p.stdout
    assert out[1] == "exit 2"
    outside = set(json.loads(out[2])) - set(sys.stdlib_module_names) - {"provision", "__main__"}
    assert outside <= {"jinja2", "markupsafe"}, outside


def test_lvcheck_command_and_markers():
    import re

    from provision.proof import checks
    from provision.proof.indom0 import lvcheck

    cmd = checks._in_dom0("lvcheck", "--seed", f"{checks.CODE_MOUNT}/{lvcheck.SEED_DIR}", "/dev/vdd")
    assert cmd == ("PYTHONPATH=/opt/xen-provision PYTHONDONTWRITEBYTECODE=1 python3 -m "
                   "provision.proof.indom0.lvcheck --seed /opt/xen-provision/lvcheck-seed /dev/vdd")
    end = re.compile(lvcheck.END, re.M)
    assert end.search("x\nLV-IMAGE-CHECK-OK in 201.5s\n").group(1) == "LV-IMAGE-CHECK-OK in 201.5s"
    assert end.search("LV-IMAGE-CHECK-FAIL lvcreate failed: no room\n")
    assert not end.search(cmd)  # the echoed command line does not end the wait
    assert not end.search("lv-image-check ok: PV and VG xplvcheck on /dev/vde\n")


def test_lvcheck_seed_wants_an_empty_directory(tmp_path):
    from provision.proof.indom0 import lvcheck

    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(ProvisionError, match=f"seed directory {tmp_path} is not empty"):
        lvcheck.seed(tmp_path)


def test_prefetch_wait_returns_when_the_prefetch_died_without_a_word(tmp_path):
    """The essential hook must never hang: a prefetch killed before it wrote its status is
    a warning (apt downloads the packages itself), and the hook's files are removed."""
    (tmp_path / "tmp").mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = tmp_path / "tmp/.xen-provision-prefetch"
    Path(f"{state}.pid").write_text(f"{dead.pid}\n")
    Path(f"{state}.log").write_text("E: Failed to fetch http://192.0.2.1/x.deb\n")
    proc = subprocess.run(["sh", PREFETCH, "wait", tmp_path], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0
    assert "the package prefetch failed (killed)" in proc.stderr and "Failed to fetch" in proc.stderr
    assert not list((tmp_path / "tmp").iterdir())
    # Without a started prefetch (the start hook never ran) it returns at once, silently.
    assert subprocess.run(["sh", PREFETCH, "wait", tmp_path], capture_output=True, text=True).stderr == ""
