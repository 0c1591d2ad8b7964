"""``python -m provision domain ...`` as a user runs it, in a throw-away root.

Every config written here is also read by Xen's own parser (tests/xlcheck): the tests
check what they expect in its reading, and the ``root`` fixture passes whatever else a
test left in ROOT/etc/xen through it afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "xlcheck"))
import xlcheck  # noqa: E402

KERNEL = "/boot/vmlinuz-xenU"


@pytest.fixture
def domain(run_cli, root):
    def _domain(*args, check=True):
        proc = run_cli("domain", *args[:1], "--root", root, *args[1:]) if args[0] in (
            "create", "list", "remove", "autostart") else run_cli("domain", *args)
        if check and proc.returncode != 0:
            raise AssertionError(f"domain {args} failed ({proc.returncode}):\n{proc.stderr}")
        return proc
    return _domain


def configs(root: Path) -> list[str]:
    d = root / "etc" / "xen"
    return sorted(p.name for p in d.glob("*.cfg")) if d.exists() else []


def basic(name="web1", *extra):
    return ("create", "--name", name, "--memory", "256", "--kernel", KERNEL,
            "--root-device", "/dev/xvda1 ro",
            "--disk", f"format=raw, vdev=xvda1, access=rw, target=/srv/{name}.img", *extra)


def test_create_writes_a_config_xen_accepts(domain, root, checker):
    domain(*basic("web1", "--vif", "bridge=xenbr0"))
    cfg = root / "etc/xen/web1.cfg"
    assert (cfg.stat().st_mode & 0o777) == 0o644
    seen = xlcheck.accept(checker, cfg)
    assert "name=web1\n" in seen and "memory=256\n" in seen and "root=/dev/xvda1 ro\n" in seen
    assert "disk 0: vdev=xvda1 target=/srv/web1.img format=raw access=rw\n" in seen
    vif = [line for line in seen.splitlines() if line.startswith("vif 0:")][0]
    assert " mac=00:16:3e:" in vif and " bridge=xenbr0" in vif  # generated, Xen's prefix
    assert not list((root / "etc/xen").glob(".*.tmp"))


def test_same_input_same_bytes(run_cli, tmp_path, checker):
    texts = []
    for n in (1, 2):
        r = tmp_path / f"r{n}"
        (r / "boot").mkdir(parents=True)
        (r / "boot/vmlinuz-xenU").write_text("k")
        run_cli("domain", "create", "--root", r, *basic()[1:], check=True)
        texts.append((r / "etc/xen/web1.cfg").read_bytes())
    assert texts[0] == texts[1]
    xlcheck.accept(checker, tmp_path / "r1/etc/xen/web1.cfg")


TEMPLATE = """\
# The manual's xmexample2 idea, as a template: one file, many domains.
name = "vm{{ vmid }}"
memory = 64
kernel = "/boot/vmlinuz-xenU"
root = "/dev/xvda1 ro"
disk = [ "format=raw, vdev=xvda1, access=rw, target=/srv/vm{{ vmid }}.img" ]
vif = [ "mac=00:16:3e:00:00:{{ '%02x' % (vmid | int) }}, bridge=xenbr0, ip=10.0.0.{{ vmid }}" ]
"""


def test_template_with_vmid_and_overrides(domain, root, tmp_path, checker):
    tpl = tmp_path / "myvmconf"
    tpl.write_text(TEMPLATE)
    domain("create", "-f", tpl, "vmid=1")
    domain("create", "-f", tpl, "vmid=2", "memory=128", "vcpus=2")
    one = xlcheck.accept(checker, root / "etc/xen/vm1.cfg")
    two = xlcheck.accept(checker, root / "etc/xen/vm2.cfg")
    assert "target=/srv/vm1.img" in one and "mac=00:16:3e:00:00:01" in one and "ip=10.0.0.1" in one
    assert "memory=64\n" in one
    assert "target=/srv/vm2.img" in two and "mac=00:16:3e:00:00:02" in two
    assert "memory=128\n" in two and "vcpus=2\n" in two  # the command line wins over the file


def test_template_variable_missing(domain, root, tmp_path):
    tpl = tmp_path / "myvmconf"
    tpl.write_text(TEMPLATE)
    proc = domain("create", "-f", tpl, check=False)
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[0].startswith("error: ") and "vmid" in proc.stderr
    assert "vmid=VALUE" in proc.stderr
    assert configs(root) == []


def test_template_variable_typo(domain, root, tmp_path):
    tpl = tmp_path / "myvmconf"
    tpl.write_text(TEMPLATE)
    proc = domain("create", "-f", tpl, "vmid=1", "vmdi=2", check=False)
    assert proc.returncode != 0
    assert "'vmdi' is neither a variable of" in proc.stderr and "did you mean 'vmid'" in proc.stderr
    assert configs(root) == []


def test_xm_file_is_converted_on_create(domain, root, tmp_path, checker):
    xm = tmp_path / "ttylinux"
    xm.write_text('kernel = "/boot/vmlinuz-xenU"\nmemory = 64\nname = "ttylinux"\nnics = 1\n'
                  'ip = "1.2.3.4"\ndisk = [\'file:/path/to/ttylinux/rootfs,sda1,w\']\nroot = "/dev/sda1 ro"\n')
    proc = domain("create", "-f", xm)
    assert "converted to xl form" in proc.stderr
    seen = xlcheck.accept(checker, root / "etc/xen/ttylinux.cfg")
    assert "vdev=xvda1 target=/path/to/ttylinux/rootfs" in seen and "vif 0: mac=00:16:3e:" in seen


BAD = [
    (("memroy=64",), "unknown key 'memroy'", "did you mean 'memory'"),
    (("--vif", "mac=01:16:3e:00:00:01"), "multicast", None),
    (("--vif", "mac=00:16:3e:00:01"), "is not valid", None),
    (("memory=lots",), "memory 'lots' is not a number", None),
    (("--memory", "1e5"), "memory '1e5' is not a number", None),
    (("kernel=/boot/missing",), "kernel file", "does not exist"),
    (("--disk", "vdev=xvdb, access=maybe, target=/x"), "access 'maybe'", None),
    (("--disk", "format=raw, vdev=floppy, target=/x"), "not a virtual device name", None),
    (("nics=1",), "'nics' is an xm setting", "domain convert"),
    (("on_crash=reboot",), "on_crash 'reboot' is not an action", None),
    (("tsc_mode=nativ",), "tsc_mode 'nativ' is not one of xl's values", "did you mean 'native'"),
    (("tsc_mode=7",), "tsc_mode '7' is not one of xl's values", "native_paravirt"),
    (("--name", "../evil"), "domain name '../evil' is not valid", None),
    (("--vcpus", "two"), "vcpus 'two' is not a number", None),
    (("--vif", "bridge=xenbr0", "--mac-prefix", "00:11:22"), "MAC prefix '00:11:22' is a vendor's OUI", "02:00:00"),
    (("--vif", "bridge=xenbr0", "--mac-prefix", "03:00:00"), "multicast prefix", None),
]


@pytest.mark.parametrize("extra, message, more", BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(domain, root, extra, message, more):
    proc = domain(*basic("bad"), *extra, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    if more:
        assert more in proc.stderr
    assert not (root / "etc/xen").exists()  # nothing at all was written


def test_tsc_mode_words_and_xls_old_numbers_pass(domain, root, checker):
    domain(*basic("web1", "tsc_mode=native"))
    domain(*basic("web2", "tsc_mode=2"))
    assert 'tsc_mode = "native"' in (root / "etc/xen/web1.cfg").read_text()
    assert "tsc_mode = 2" in (root / "etc/xen/web2.cfg").read_text()
    for name in ("web1", "web2"):
        xlcheck.accept(checker, root / f"etc/xen/{name}.cfg")


def test_locally_administered_mac_prefix(domain, root, checker):
    domain(*basic("web1", "--vif", "bridge=xenbr0", "--mac-prefix", "0A-00-00"))
    seen = xlcheck.accept(checker, root / "etc/xen/web1.cfg")
    assert " mac=0a:00:00:" in seen, seen


def test_duplicate_name(domain, root):
    domain(*basic("web1"))
    before = (root / "etc/xen/web1.cfg").read_bytes()
    proc = domain(*basic("web1"), check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    # Another file that claims the same name inside is caught too.
    (root / "etc/xen/other.cfg").write_text('name = "web2"\nmemory = 64\nkernel = "/k"\n')
    proc = domain(*basic("web2"), check=False)
    assert proc.returncode != 0 and "a domain named 'web2' already exists" in proc.stderr
    assert (root / "etc/xen/web1.cfg").read_bytes() == before
    assert configs(root) == ["other.cfg", "web1.cfg"]


def test_duplicate_mac(domain, root):
    domain(*basic("web1", "--vif", "mac=00:16:3e:aa:bb:cc"))
    proc = domain(*basic("web2", "--vif", "mac=00:16:3E:AA:BB:CC"), check=False)
    assert proc.returncode != 0
    assert "MAC 00:16:3e:aa:bb:cc is already used by" in proc.stderr
    assert configs(root) == ["web1.cfg"]


def test_disk_writable_elsewhere_and_read_only_sharing(domain, root, tmp_path):
    shared = tmp_path / "shared.img"
    shared.write_bytes(b"\0" * 4096)
    link = tmp_path / "alias.img"
    link.symlink_to(shared)  # another spelling of the same file
    domain("create", "--name", "a", "--memory", "64", "--kernel", KERNEL,
           "--disk", f"vdev=xvda, access=rw, target={shared}")
    proc = domain("create", "--name", "b", "--memory", "64", "--kernel", KERNEL,
                  "--disk", f"vdev=xvda, access=ro, target={link}", check=False)
    assert proc.returncode != 0 and f"disk {link} is used read-write by domain a" in proc.stderr
    # Read-only in every domain is fine.
    ro = tmp_path / "ro.img"
    ro.write_bytes(b"\0" * 4096)
    for n in ("c", "d"):
        domain("create", "--name", n, "--memory", "64", "--kernel", KERNEL,
               "--disk", f"vdev=xvda, access=ro, target={ro}")
    proc = domain("create", "--name", "e", "--memory", "64", "--kernel", KERNEL,
                  "--disk", f"vdev=xvda, access=rw, target={ro}", check=False)
    assert proc.returncode != 0 and "is used read-only by domain c" in proc.stderr
    assert configs(root) == ["a.cfg", "c.cfg", "d.cfg"]


def test_dry_run_writes_nothing(domain, root, checker, tmp_path):
    proc = domain(*basic("web1"), "--dry-run")
    assert not (root / "etc/xen").exists()
    out = tmp_path / "out.cfg"
    out.write_text(proc.stdout)
    assert "name=web1" in xlcheck.accept(checker, out)


def test_autostart_links(domain, root):
    domain(*basic("web1"), "--autostart")
    link = root / "etc/xen/auto/web1.cfg"
    assert link.is_symlink() and os.readlink(link) == "../web1.cfg" and link.is_file()
    assert domain("autostart", "list").stdout.startswith("web1\t")
    domain("autostart", "off", "web1")
    assert not link.is_symlink()
    domain("autostart", "on", "web1")
    domain("autostart", "on", "web1")  # idempotent
    assert link.is_file()
    proc = domain("autostart", "on", "nosuch", check=False)
    assert proc.returncode != 0 and "no domain config" in proc.stderr
    assert not (root / "etc/xen/auto/nosuch.cfg").is_symlink()
    domain("remove", "web1")
    assert not link.is_symlink() and configs(root) == []  # no dangling link left behind
    # Someone else's dangling link is reported in the listing.
    (root / "etc/xen/auto/ghost.cfg").symlink_to("../ghost.cfg")
    proc = domain("autostart", "list")
    assert "ghost" in proc.stdout and "dangling" in proc.stdout


def test_from_image_facts(domain, root, tmp_path, checker):
    img = tmp_path / "sarge.img"
    img.write_bytes(b"\0" * 4096)
    swap = tmp_path / "sarge-swap.img"
    swap.write_bytes(b"\0" * 4096)
    # The sidecar as provision/guest writes it (format xen-provision-image/1).
    (tmp_path / "sarge.img.json").write_text(json.dumps({
        "format": "xen-provision-image/1", "name": "sarge", "suite": "sarge", "target": "file",
        "root": "/dev/xvda1", "fstype": "ext3", "console": "hvc0", "kernel_args": ["vsyscall=emulate"],
        "disks": [{"role": "root", "path": str(img), "vdev": "xvda1", "format": "raw"},
                  {"role": "swap", "path": str(swap), "vdev": "xvda2", "format": "raw"}],
    }))
    domain("create", "--from-image", img, "--memory", "128", "--kernel", KERNEL)
    seen = xlcheck.accept(checker, root / "etc/xen/sarge.cfg")
    assert f"disk 0: vdev=xvda1 target={img} format=raw access=rw" in seen
    assert f"disk 1: vdev=xvda2 target={swap} format=raw access=rw" in seen
    assert "root=/dev/xvda1 ro\n" in seen and "extra=console=hvc0 vsyscall=emulate\n" in seen


def test_from_partitioned_disk_image(domain, root, tmp_path, checker):
    img = tmp_path / "whole.img"
    img.write_bytes(b"\0" * 4096)
    (tmp_path / "whole.img.json").write_text(json.dumps({
        "format": "xen-provision-image/1", "name": "whole", "target": "disk", "root": "/dev/xvda1",
        "disks": [{"role": "disk", "path": str(img), "vdev": "xvda", "format": "raw"}],
    }))
    domain("create", "--from-image", tmp_path / "whole.img.json", "--memory", "128", "--kernel", KERNEL,
           "--name", "other")  # options win over the image's facts
    seen = xlcheck.accept(checker, root / "etc/xen/other.cfg")
    assert f"disk 0: vdev=xvda target={img} format=raw access=rw" in seen and "root=/dev/xvda1 ro" in seen


def test_from_image_without_facts(domain, root, tmp_path):
    img = tmp_path / "plain.img"
    img.write_bytes(b"")
    proc = domain("create", "--from-image", img, "--name", "p", "--memory", "64", "--kernel", KERNEL, check=False)
    assert proc.returncode != 0 and "no image facts at" in proc.stderr and configs(root) == []


def test_nfs_root_and_exports(domain, root, checker):
    (root / "export/vm1root").mkdir(parents=True)
    args = ("create", "--name", "vm1", "--memory", "64", "--kernel", KERNEL,
            "--nfs-server", "2.3.4.5", "--nfs-root", "/export/vm1root", "--ip", "1.2.3.4/24",
            "--gateway", "1.2.3.1", "--hostname", "vm1", "--exports")
    domain(*args)
    seen = xlcheck.accept(checker, root / "etc/xen/vm1.cfg")
    assert "root=/dev/nfs\n" in seen
    assert ("extra=nfsroot=2.3.4.5:/export/vm1root,vers=3,tcp "
            "ip=1.2.3.4:2.3.4.5:1.2.3.1:255.255.255.0:vm1:eth0:off\n") in seen
    exports = (root / "etc/exports").read_text()
    # The manual's line, without its stray space before '(' (which would export to everyone).
    assert exports == "/export/vm1root 1.2.3.4(rw,sync,no_root_squash,no_subtree_check)\n"
    domain(*args, "--force")
    assert (root / "etc/exports").read_text() == exports  # not added twice


def test_nfs_needs_both(domain, root):
    proc = domain("create", "--name", "n", "--memory", "64", "--kernel", KERNEL, "--nfs-server", "2.3.4.5", check=False)
    assert proc.returncode != 0 and "--nfs-server and --nfs-root" in proc.stderr


def test_convert_and_check_commands(domain, tmp_path, checker):
    xm = tmp_path / "xm.cfg"
    xm.write_text("name = 'x'\nmemory = 64\nkernel = '/k'\ndisk = ['phy:vg/lvm1,sda2,w']\n")
    proc = domain("convert", xm)
    out = tmp_path / "x.cfg"
    out.write_text(proc.stdout)
    assert "disk 0: vdev=xvda2 target=/dev/vg/lvm1 format=raw access=rw" in xlcheck.accept(checker, out)
    assert domain("check", out).stdout.startswith(f"{out}: ok")
    bad = tmp_path / "bad.cfg"
    bad.write_text("name = 'x'\nmemory = 64\nkernel = '/k'\nvcpu = 2\n")
    proc = domain("check", out, bad, check=False)
    assert proc.returncode == 1 and "unknown key 'vcpu' (did you mean 'vcpus'?)" in proc.stderr


def test_concurrent_creates_never_share_a_mac(root, checker):
    """Separate processes at once, all with generated MACs: the lock keeps them apart.

    Generation is "first free address from a per-host start", so without the lock every
    process would pick the same first address.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "provision", "domain", "create", "--root", str(root), *basic(f"c{i}")[1:],
             "--vif", "bridge=xenbr0", "--vif", "bridge=xenbr1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    macs = []
    for i in range(8):
        seen = xlcheck.accept(checker, root / f"etc/xen/c{i}.cfg")
        macs += [w.split("=", 1)[1] for w in seen.split() if w.startswith("mac=")]
    assert len(macs) == 16 and len(set(macs)) == 16, macs


def test_every_modelled_setting_as_xen_reads_it(domain, root, checker):
    """Issue 6, Build 1: each setting we model, written by us and read back by libxlutil."""
    (root / "boot/initrd-xenU").write_text("i")
    domain("create", "--name", "full", "--type", "pvh", "--memory", "512M", "--maxmem", "1G", "--vcpus", "2",
           "--kernel", KERNEL, "--ramdisk", "/boot/initrd-xenU", "--root-device", "/dev/xvda1 ro",
           "--extra", "console=hvc0 quiet",
           "--disk", "format=qcow2, vdev=xvda, access=rw, target=/srv/full.qcow2",
           "--disk", "vdev=xvdb, access=ro, devtype=cdrom, target=/srv/install.iso",
           "--vif", "mac=00:16:3e:01:02:03, bridge=xenbr0, ip=192.0.2.5, vifname=full-eth0",
           "on_poweroff=destroy", "on_reboot=restart", "on_crash=coredump-restart")
    seen = xlcheck.accept(checker, root / "etc/xen/full.cfg")
    for line in ("type=pvh", "memory=512", "maxmem=1024", "vcpus=2", f"kernel={KERNEL}",
                 "ramdisk=/boot/initrd-xenU", "root=/dev/xvda1 ro", "extra=console=hvc0 quiet",
                 "disk 0: vdev=xvda target=/srv/full.qcow2 format=qcow2 access=rw",
                 "disk 1: vdev=xvdb target=/srv/install.iso format=raw access=ro cdrom",
                 "vif 0: mac=00:16:3e:01:02:03 bridge=xenbr0 ip=192.0.2.5 vifname=full-eth0",
                 "on_poweroff=destroy", "on_reboot=restart", "on_crash=coredump-restart"):
        assert f"{line}\n" in seen, f"{line!r} not in Xen's reading:\n{seen}"


def test_bootloaders(domain, root, checker):
    domain("create", "--name", "py", "--memory", "256", "--bootloader", "pygrub",
           "--disk", "vdev=xvda, target=/srv/py.img")
    seen = xlcheck.accept(checker, root / "etc/xen/py.cfg")
    assert "bootloader=pygrub\n" in seen and "kernel=" not in seen
    assert "type=pv\n" in seen
    # pvgrub2 is Debian's grub-xen-host image, booted as the domain's kernel; it must exist.
    proc = domain("create", "--name", "pvh", "--memory", "256", "--bootloader", "pvgrub",
                  "--disk", "vdev=xvda, target=/srv/pvh.img", check=False)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 2 and configs(root) == ["py.cfg"]
    assert "grub-i386-xen_pvh.bin, is not installed" in proc.stderr
    assert "apt-get install grub-xen-host" in proc.stderr
    grub = root / "usr/lib/grub-xen"
    grub.mkdir(parents=True)
    (grub / "grub-x86_64-xen.bin").write_text("g")
    (grub / "grub-i386-xen_pvh.bin").write_text("g")
    # PVH unless asked otherwise: pvgrub2's PVH build.
    domain("create", "--name", "pvh", "--memory", "256", "--bootloader", "pvgrub",
           "--disk", "vdev=xvdb, target=/srv/pvh.img")
    domain("create", "--name", "pv", "--type", "pv", "--memory", "256", "--bootloader", "pvgrub",
           "--disk", "vdev=xvda, target=/srv/pv.img")
    seen = xlcheck.accept(checker, root / "etc/xen/pv.cfg")
    assert "type=pv\n" in seen and "kernel=/usr/lib/grub-xen/grub-x86_64-xen.bin\n" in seen
    seen = xlcheck.accept(checker, root / "etc/xen/pvh.cfg")
    assert "type=pvh\n" in seen and "kernel=/usr/lib/grub-xen/grub-i386-xen_pvh.bin\n" in seen
    assert "# PVH: pvgrub2's PVH build" in (root / "etc/xen/pvh.cfg").read_text()


def test_a_late_failure_takes_back_the_config_and_the_export(domain, root):
    """The export line and the config are written before the autostart link; when the
    link cannot be made, both are taken back."""
    (root / "etc/xen/auto").mkdir(parents=True)
    (root / "etc/xen/auto/vm1.cfg").write_text("a copied file, not a link\n")
    (root / "etc/exports").write_text("/srv/other 192.0.2.9(ro)\n")
    (root / "export/vm1root").mkdir(parents=True)
    proc = domain("create", "--name", "vm1", "--memory", "64", "--kernel", KERNEL, "--nfs-server", "2.3.4.5",
                  "--nfs-root", "/export/vm1root", "--ip", "192.0.2.10/24", "--exports", "--autostart",
                  check=False)
    assert proc.returncode != 0 and "is a file, not a link" in proc.stderr
    assert configs(root) == []
    assert (root / "etc/exports").read_text() == "/srv/other 192.0.2.9(ro)\n"


def test_xm_file_takes_xm_settings_on_the_command_line(domain, root, tmp_path, checker):
    """'xm create ttylinux ip=1.2.3.5 nics=2': the command line's xm settings are converted
    with the file's, and still win over options (--memory) as with any file."""
    xm = tmp_path / "ttylinux"
    xm.write_text('kernel = "/boot/vmlinuz-xenU"\nmemory = 64\nname = "ttylinux"\nnics = 1\n'
                  'ip = "1.2.3.4"\ndisk = [\'file:/path/to/ttylinux/rootfs,sda1,w\']\nroot = "/dev/sda1 ro"\n')
    domain("create", "-f", xm, "--memory", "256", "ip=1.2.3.5", "nics=2", "memory=128")
    seen = xlcheck.accept(checker, root / "etc/xen/ttylinux.cfg")
    assert "extra=ip=1.2.3.5:::::eth0:off\n" in seen and "memory=128\n" in seen
    assert "vif 1: mac=00:16:3e:" in seen and "vif 2:" not in seen
    assert "disk 0: vdev=xvda1 target=/path/to/ttylinux/rootfs format=raw access=rw\n" in seen
    proc = domain("create", "-f", xm, "name=other", "ipp=1.2.3.6", check=False)
    assert proc.returncode != 0 and "'ipp' is neither a variable of" in proc.stderr


def _image_in(root: Path, name: str, address: str | None) -> Path:
    """An image made into the host root (as `image --file ROOT/var/lib/xen/images/...`),
    with the sidecar `image` writes: its disks by the paths of this machine."""
    img = root / "var/lib/xen/images" / f"{name}.img"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(b"\0" * 4096)
    network = {"dhcp": address is None, "address": address}
    (img.parent / f"{name}.img.json").write_text(json.dumps({
        "format": "xen-provision-image/1", "name": name, "target": "file", "root": "/dev/xvda1",
        "console": "hvc0", "disks": [{"role": "root", "path": str(img), "vdev": "xvda1", "format": "raw"}],
        "guest": {"hostname": name, "network": network}}))
    return img


def test_from_image_into_a_root_gives_a_bridged_nic_and_the_roots_own_paths(domain, root, checker):
    img = _image_in(root, "web", "192.0.2.30/24")
    domain("create", "--from-image", img, "--memory", "128", "--kernel", KERNEL, "--bridge", "xenbr1")
    seen = xlcheck.accept(checker, root / "etc/xen/web.cfg")
    # The disk as the host will see it, not by this machine's path to the root.
    assert "disk 0: vdev=xvda1 target=/var/lib/xen/images/web.img format=raw access=rw\n" in seen
    vif = next(line for line in seen.splitlines() if line.startswith("vif 0:"))
    assert " mac=00:16:3e:" in vif and " bridge=xenbr1" in vif and "script" not in vif
    # Without --bridge, xl's default bridge (xenbr0 here) must exist too.
    domain("create", "--from-image", _image_in(root, "web2", None), "--memory", "128", "--kernel", KERNEL)
    assert " bridge=" not in next(line for line in xlcheck.accept(checker, root / "etc/xen/web2.cfg").splitlines()
                                  if line.startswith("vif 0:"))


def test_a_vif_on_a_bridge_the_root_lacks_is_refused(domain, root):
    proc = domain(*basic("web1", "--bridge", "xenbr9"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: bridge xenbr9 (vif 0 of web1) does not exist in {root}'s network configuration "
        "(bridges: xenbr0, xenbr1)",
        f"hint: make it: python -m provision network bridge --name xenbr9 --root {root}, or give --bridge NAME"]
    (root / "etc/xen").mkdir(parents=True)
    (root / "etc/xen/xl.conf").write_text('vif.default.bridge="br-lan"\n')
    proc = domain(*basic("web1", "--vif", "mac=00:16:3e:00:00:01"), check=False)
    assert proc.returncode == 2 and "bridge br-lan (vif 0 of web1) does not exist" in proc.stderr
    assert configs(root) == []


def test_routed_host_gives_vif_route_with_the_guests_address(domain, root, checker):
    (root / "etc/xen").mkdir(parents=True)
    (root / "etc/xen/xl.conf").write_text('vif.default.script="vif-route"\nvif.default.gatewaydev="enp1s0"\n')
    img = _image_in(root, "shop", "203.0.113.20/24")
    domain("create", "--from-image", img, "--memory", "128", "--kernel", KERNEL)
    seen = xlcheck.accept(checker, root / "etc/xen/shop.cfg")
    vif = next(line for line in seen.splitlines() if line.startswith("vif 0:"))
    assert " ip=203.0.113.20" in vif and " script=vif-route" in vif and " gatewaydev=enp1s0" in vif
    # --ip wins over the image; a DHCP guest cannot be routed; --bridge still bridges.
    dhcp = _image_in(root, "dyn", None)
    proc = domain("create", "--from-image", dhcp, "--memory", "128", "--kernel", KERNEL, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == \
        "error: dyn's vif 0 is routed (vif-route) but has no address"
    domain("create", "--from-image", dhcp, "--memory", "128", "--kernel", KERNEL, "--ip", "203.0.113.21")
    assert " ip=203.0.113.21" in xlcheck.accept(checker, root / "etc/xen/dyn.cfg")
    domain("create", "--from-image", _image_in(root, "lan", None), "--memory", "128", "--kernel", KERNEL,
           "--bridge", "xenbr0")
    vif = next(line for line in xlcheck.accept(checker, root / "etc/xen/lan.cfg").splitlines()
               if line.startswith("vif 0:"))
    assert " bridge=xenbr0" in vif and " script=vif-bridge" in vif
    for bad, message in ((("--ip", "203.0.113.0/24"), "is the network address"),
                         (("--ip", "300.1.1.1"), "is not a valid IP address"),
                         (("--bridge", "a/b"), "bridge name 'a/b' is not a valid interface name")):
        proc = domain("create", "--from-image", _image_in(root, "bad", None), "--memory", "128",
                      "--kernel", KERNEL, *bad, check=False)
        assert proc.returncode == 2 and message in proc.stderr.splitlines()[0], proc.stderr
    assert "bad.cfg" not in configs(root)
