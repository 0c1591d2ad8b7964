"""How a guest boots (issues 19 and 20): its type chosen from its kernel's config-RELEASE,
the kernel checks for PV, PVH and NFS roots, pvgrub2 and pygrub, and the NFS export
checks; each config written is read back by Xen's own parser (tests/xlcheck)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provision.domain import boot
from provision.domain.paths import Paths
from provision.errors import ProvisionError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402

RELEASE = "6.1.176-xenU"
KERNEL = f"/boot/vmlinuz-{RELEASE}"
# What our xenU's config says of these options (the rest of a config does not matter here).
XENU = {"XEN_PV": "y", "XEN_PVH": "y", "NFS_FS": "y", "NFS_V3": "y", "ROOT_NFS": "y", "IP_PNP": "y",
        "IP_PNP_DHCP": "y"}


def config_text(values: dict[str, str]) -> str:
    return "#\n# Linux/x86 6.1.176 Kernel Configuration\n#\n" + "".join(
        f"CONFIG_{k}={v}\n" if v != "n" else f"# CONFIG_{k} is not set\n" for k, v in values.items())


def install_kernel(root: Path, release: str = RELEASE, config: dict[str, str] | None = None) -> str:
    """A kernel stand-in at ROOT/boot/vmlinuz-RELEASE, with config-RELEASE beside it."""
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / f"boot/vmlinuz-{release}").write_bytes(b"\x7fELF stand-in")
    if config is not None:
        (root / f"boot/config-{release}").write_text(config_text(config))
    return f"/boot/vmlinuz-{release}"


@pytest.fixture
def domain(run_cli, root):
    def _domain(*args, check=True):
        proc = run_cli("domain", args[0], "--root", root, *args[1:]) if args[0] == "create" \
            else run_cli("domain", *args)
        if check and proc.returncode != 0:
            raise AssertionError(f"domain {args} failed ({proc.returncode}):\n{proc.stderr}")
        return proc
    return _domain


def guest(name: str, kernel: str, *extra: str) -> tuple[str, ...]:
    return ("create", "--name", name, "--memory", "256", "--kernel", kernel,
            "--disk", f"format=raw, vdev=xvda, access=rw, target=/srv/{name}.img", *extra)


def refused(proc, root: Path, *words: str, configs: tuple[str, ...] = ()) -> None:
    """One error line (and its hint), non-zero, no config written but ``configs``."""
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and all(ln.startswith("hint: ") for ln in lines[1:]), proc.stderr
    assert len(lines) <= 2, proc.stderr
    for w in words:
        assert w in lines[0], proc.stderr
    assert tuple(sorted(p.name for p in root.glob("etc/xen/*.cfg"))) == configs


# -- the pure rules --------------------------------------------------------------------------

def test_config_path_is_beside_the_kernel():
    assert boot.config_path("/boot/vmlinuz-6.1.176-xenU") == "/boot/config-6.1.176-xenU"
    assert boot.config_path("/srv/k/vmlinux-6.1.0-57-amd64") == "/srv/k/config-6.1.0-57-amd64"
    assert boot.config_path("/boot/xenU") is None


@pytest.mark.parametrize("asked, bootloader, config, expect", [
    (None, None, XENU, "pvh"),
    (None, None, {**XENU, "XEN_PVH": "n"}, "pv"),
    (None, None, None, "pv"),
    ("pv", None, XENU, "pv"),
    ("hvm", None, None, "hvm"),
    (None, "pvgrub", None, "pvh"),
    (None, "pygrub", None, "pv"),
])
def test_type_choice(asked, bootloader, config, expect):
    cfg = boot.KernelConfig(f"/boot/config-{RELEASE}", config) if config is not None else None
    choice = boot.choose_type(asked, "--type", None if bootloader else KERNEL, bootloader, cfg)
    assert choice.type == expect
    assert choice.reason.startswith(expect.upper() + ":") and "\n" not in choice.reason


def test_kernel_checks_name_every_missing_option():
    cfg = boot.KernelConfig("/boot/config-x", {"XEN_PV": "y"})
    with pytest.raises(ProvisionError) as e:
        boot.check_kernel("/boot/vmlinuz-x", "pvh", cfg)
    assert "cannot boot as PVH: /boot/config-x lacks CONFIG_XEN_PVH=y" in e.value.message
    with pytest.raises(ProvisionError) as e:
        boot.check_kernel("/boot/vmlinuz-x", "pv", cfg, nfs_root=True, dhcp=True)
    assert e.value.message.endswith("lacks CONFIG_NFS_FS=y, CONFIG_ROOT_NFS=y, CONFIG_IP_PNP=y, CONFIG_IP_PNP_DHCP=y")
    with pytest.raises(ProvisionError) as e:
        boot.check_kernel("/boot/vmlinuz-x", "pvh", cfg, nfs_root=True)
    assert e.value.message == ("/boot/vmlinuz-x cannot boot as PVH and from an NFS root: /boot/config-x lacks "
                               "CONFIG_XEN_PVH=y, CONFIG_NFS_FS=y, CONFIG_ROOT_NFS=y, CONFIG_IP_PNP=y")
    assert e.value.hint.endswith("or --type pv")
    boot.check_kernel("/boot/vmlinuz-x", "pv", cfg)  # PV: fine
    boot.check_kernel("/boot/vmlinuz-x", "hvm", None)  # nothing to check


def test_pvgrub_binary_must_be_installed(tmp_path):
    with pytest.raises(ProvisionError) as e:
        boot.pvgrub_kernel(Paths(tmp_path), "pvh")
    assert "grub-i386-xen_pvh.bin" in e.value.message and "grub-xen-host" in e.value.hint
    assert boot.pvgrub_kernel(Paths(tmp_path), "pv", check=False) == "/usr/lib/grub-xen/grub-x86_64-xen.bin"


# -- domain create as a user runs it ---------------------------------------------------------

def test_pvh_by_default_for_a_pvh_kernel(domain, root, checker):
    kernel = install_kernel(root, config=XENU)
    domain(*guest("g1", kernel))
    text = (root / "etc/xen/g1.cfg").read_text()
    assert f"# PVH: /boot/config-{RELEASE} has CONFIG_XEN_PVH=y" in text
    assert "type=pvh\n" in xlcheck.accept(checker, root / "etc/xen/g1.cfg")


@pytest.mark.parametrize("config, why", [
    ({**XENU, "XEN_PVH": "n"}, "has no CONFIG_XEN_PVH=y"),
    (None, f"no /boot/config-{RELEASE} shows"),
])
def test_pv_otherwise_and_said_why(domain, root, checker, config, why):
    kernel = install_kernel(root, config=config)
    domain(*guest("g1", kernel))
    comment = [ln for ln in (root / "etc/xen/g1.cfg").read_text().splitlines() if ln.startswith("# PV")]
    assert len(comment) == 1 and why in comment[0]
    assert "type=pv\n" in xlcheck.accept(checker, root / "etc/xen/g1.cfg")


def test_asked_type_is_kept_and_said(domain, root, checker):
    kernel = install_kernel(root, config=XENU)
    domain(*guest("g1", kernel, "--type", "pv"))
    assert "# PV: as asked by --type\ntype = \"pv\"\n" in (root / "etc/xen/g1.cfg").read_text()
    domain(*guest("g2", kernel, "type=pv"))
    assert "# PV: as asked by type= on the command line\n" in (root / "etc/xen/g2.cfg").read_text()
    assert "type=pv\n" in xlcheck.accept(checker, root / "etc/xen/g2.cfg")


def test_a_kernel_that_cannot_boot_the_asked_type_is_refused(domain, root):
    kernel = install_kernel(root, config={**XENU, "XEN_PVH": "n"})
    refused(domain(*guest("g1", kernel, "--type", "pvh"), check=False), root,
            "cannot boot as PVH", "lacks CONFIG_XEN_PVH=y")
    pvh_only = install_kernel(root, "6.1-pvh", config={**XENU, "XEN_PV": "n"})
    refused(domain(*guest("g1", pvh_only, "--type", "pv"), check=False), root,
            "cannot boot as PV", "lacks CONFIG_XEN_PV=y")


def test_pvgrub_with_a_kernel_or_hvm_is_refused(domain, root):
    kernel = install_kernel(root, config=XENU)
    refused(domain(*guest("g1", kernel, "--bootloader", "pvgrub"), check=False), root,
            "--bootloader pvgrub boots the guest's own kernel; --kernel gives another")
    grub = root / "usr/lib/grub-xen"
    grub.mkdir(parents=True)
    (grub / "grub-i386-xen_pvh.bin").write_text("g")
    refused(domain("create", "--name", "g1", "--memory", "256", "--bootloader", "pvgrub", "--type", "hvm",
                   check=False), root, "boots PV and PVH guests, not HVM")


def test_pygrub_only_when_asked_and_with_its_risk(domain, root, checker):
    proc = domain("create", "--name", "py", "--memory", "256", "--bootloader", "pygrub",
                  "--disk", "vdev=xvda, target=/srv/py.img")
    assert "warning: pygrub" in proc.stderr and "XSA-198" in proc.stderr and "XSA-443" in proc.stderr
    assert "bootloader=pygrub\n" in xlcheck.accept(checker, root / "etc/xen/py.cfg")
    kernel = install_kernel(root, config=XENU)
    proc = domain(*guest("g1", kernel))
    assert "XSA-" not in proc.stderr and "bootloader" not in (root / "etc/xen/g1.cfg").read_text()


def test_convert_writes_the_type_and_why(domain, tmp_path, checker):
    xm = tmp_path / "vm1"
    xm.write_text("kernel = '/boot/vmlinuz-2.6-xenU'\nmemory = 64\nname = 'vm1'\ndisk = ['phy:hda3,sda1,w']\n")
    proc = domain("convert", xm)
    assert "# PV: the type of a config that names none (xl's and xm's default), written out\ntype = \"pv\"\n" \
        in proc.stdout
    out = tmp_path / "vm1.cfg"
    out.write_text(proc.stdout)
    assert "type=pv\n" in xlcheck.accept(checker, out)


# -- NFS roots (issue 20) --------------------------------------------------------------------

def nfs_guest(name: str, kernel: str, *extra: str, path: str = "/export/vm1") -> tuple[str, ...]:
    return ("create", "--name", name, "--memory", "256", "--kernel", kernel, "--nfs-server", "192.0.2.1",
            "--nfs-root", path, *extra)


def test_nfs_root_needs_a_kernel_with_the_nfs_client(domain, root, checker):
    lacking = install_kernel(root, "6.1-old", config={"XEN_PV": "y", "XEN_PVH": "y"})
    refused(domain(*nfs_guest("vm1", lacking, "--ip", "192.0.2.10/24"), check=False), root,
            "cannot boot from an NFS root:",
            "lacks CONFIG_NFS_FS=y, CONFIG_ROOT_NFS=y, CONFIG_IP_PNP=y")
    dhcp_less = install_kernel(root, "6.1-static", config={**XENU, "IP_PNP_DHCP": "n"})
    refused(domain(*nfs_guest("vm1", dhcp_less), check=False), root, "by DHCP", "CONFIG_IP_PNP_DHCP=y")
    kernel = install_kernel(root, config=XENU)
    domain(*nfs_guest("vm1", kernel, "--ip", "192.0.2.10/24", "--gateway", "192.0.2.254"))
    seen = xlcheck.accept(checker, root / "etc/xen/vm1.cfg")
    assert "type=pvh\n" in seen and "root=/dev/nfs\n" in seen
    assert "extra=nfsroot=192.0.2.1:/export/vm1,vers=3,tcp ip=192.0.2.10:192.0.2.1:192.0.2.254:" in seen


@pytest.mark.parametrize("args, words", [
    (("--nfs-root", "export/vm1"), ["must be an absolute path"]),
    (("--nfs-server", "nfs.example"), ["nfs.example", "not"]),
    (("--nfs-server", "192.0.2.300"), ["192.0.2.300"]),
])
def test_nfs_bad_input(domain, root, args, words):
    kernel = install_kernel(root, config=XENU)
    base = dict(zip(["--nfs-server", "--nfs-root"], ["192.0.2.1", "/export/vm1"], strict=True))
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    proc = domain("create", "--name", "vm1", "--memory", "256", "--kernel", kernel,
                  *[w for kv in base.items() for w in kv], check=False)
    refused(proc, root, *words)


def test_exports_checks_write_nothing(domain, root):
    kernel = install_kernel(root, config=XENU)
    # The tree must exist: it is what the line exports.
    refused(domain(*nfs_guest("vm1", kernel, "--ip", "192.0.2.10/24", "--exports"), check=False), root,
            "the NFS root", "/export/vm1 does not exist")
    (root / "export/vm1").mkdir(parents=True)
    # Without the guest's address the line could only export to everyone.
    refused(domain(*nfs_guest("vm1", kernel, "--exports"), check=False), root,
            "--exports needs the guest's address")
    # Another client already writes the tree.
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/exports").write_text("# ours\n/export/vm1 192.0.2.11(rw,sync,no_root_squash)\n")
    refused(domain(*nfs_guest("vm1", kernel, "--ip", "192.0.2.10/24", "--exports"), check=False), root,
            "already exports /export/vm1 read-write to 192.0.2.11")
    assert (root / "etc/exports").read_text() == "# ours\n/export/vm1 192.0.2.11(rw,sync,no_root_squash)\n"


def test_a_second_guest_on_the_same_root_is_refused(domain, root, checker):
    kernel = install_kernel(root, config=XENU)
    (root / "export/vm1").mkdir(parents=True)
    domain(*nfs_guest("vm1", kernel, "--ip", "192.0.2.10/24", "--exports"))
    exports = (root / "etc/exports").read_text()
    assert exports == "/export/vm1 192.0.2.10(rw,sync,no_root_squash,no_subtree_check)\n"
    proc = domain(*nfs_guest("vm2", kernel, "--ip", "192.0.2.11/24"), check=False)
    refused(proc, root, "'vm1'", "already has its root at 192.0.2.1:/export/vm1", configs=("vm1.cfg",))
    assert (root / "etc/exports").read_text() == exports
    # Replacing vm1 itself is no second guest.
    domain(*nfs_guest("vm1", kernel, "--ip", "192.0.2.10/24", "--exports", "--force"))
    assert (root / "etc/exports").read_text() == exports
    xlcheck.accept(checker, root / "etc/xen/vm1.cfg")


def _own_kernel_image(root: Path, name: str, pvh: bool) -> Path:
    """An image made with `image --guest-kernel`, as its sidecar describes it."""
    import json
    img = root / f"srv/{name}.img"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(b"")
    facts = {"format": "xen-provision-image/1", "name": name, "root": "/dev/xvda1", "console": "hvc0",
             "kernel_args": [], "target": "file",
             "disks": [{"role": "root", "path": str(img), "vdev": "xvda1", "format": "raw"}],
             "guest_kernel": {"package": "linux-image-amd64" if pvh else "linux-image-2.6-amd64", "pvh": pvh,
                              "config": "/boot/grub/grub.cfg"}}
    (root / f"srv/{name}.img.json").write_text(json.dumps(facts))
    return img


def test_an_image_with_its_own_kernel_boots_it_through_pvgrub(domain, root, checker):
    grub = root / "usr/lib/grub-xen"
    grub.mkdir(parents=True)
    (grub / "grub-x86_64-xen.bin").write_text("g")
    (grub / "grub-i386-xen_pvh.bin").write_text("g")
    domain("create", "--from-image", _own_kernel_image(root, "own", pvh=True), "--memory", "384")
    seen = xlcheck.accept(checker, root / "etc/xen/own.cfg")
    assert "type=pvh\n" in seen and "kernel=/usr/lib/grub-xen/grub-i386-xen_pvh.bin\n" in seen
    # A kernel older than 4.11 (squeeze's) boots as PV, with the reason written down.
    domain("create", "--from-image", _own_kernel_image(root, "old", pvh=False), "--memory", "384")
    text = (root / "etc/xen/old.cfg").read_text()
    assert "# PV: the image's own kernel (linux-image-2.6-amd64) is older than Linux 4.11" in text
    assert "kernel=/usr/lib/grub-xen/grub-x86_64-xen.bin\n" in xlcheck.accept(checker, root / "etc/xen/old.cfg")
    refused(domain("create", "--from-image", root / "srv/old.img", "--name", "old2", "--memory", "384",
                   "--type", "pvh", check=False), root, "cannot boot as PVH",
            configs=("old.cfg", "own.cfg"))
