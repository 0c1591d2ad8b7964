"""xm configs (the manual's examples) converted to xl form, and accepted by Xen's parser."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provision.domain import render, xmconvert
from provision.domain.model import Domain
from provision.errors import ProvisionError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402


@pytest.fixture(scope="module")
def checker():
    return xlcheck.build()


def convert_file(tmp_path, text, name="xm.cfg"):
    src = tmp_path / name
    src.write_text(text)
    values, lines, was_xm = xmconvert.load_any(src)
    dom = Domain.from_config(values, str(src), lines)
    out = tmp_path / f"{dom.name}.xl.cfg"
    out.write_text(render.domain_config(dom, str(out), source=str(src)))
    return was_xm, dom, out


# The manual's ttylinux example (section 3.2), one setting per line.
TTYLINUX = """
kernel = "/boot/vmlinuz-2.6-xenU"
memory = 64
name = "ttylinux"
nics = 1
ip = "1.2.3.4"
disk = ['file:/path/to/ttylinux/rootfs,sda1,w']
root = "/dev/sda1 ro"
"""


def test_manual_ttylinux(tmp_path, checker):
    was_xm, dom, out = convert_file(tmp_path, TTYLINUX)
    assert was_xm
    seen = xlcheck.accept(checker, out)
    # file: became a raw target; sda1 became xvda1 and root= followed it.
    assert "disk 0: vdev=xvda1 target=/path/to/ttylinux/rootfs format=raw access=rw" in seen
    assert "root=/dev/xvda1 ro" in seen
    assert "extra=ip=1.2.3.4:::::eth0:off\n" in seen
    assert "vif 0:\n" in seen  # nics = 1: one interface with xl's defaults
    assert "memory=64" in seen and "kernel=/boot/vmlinuz-2.6-xenU" in seen


@pytest.mark.parametrize(
    "disk, expected",
    [
        ("'phy:hda3,sda1,w'", "vdev=xvda1 target=/dev/hda3 format=raw access=rw"),
        ("'phy:vg/lvm1,sda2,w'", "vdev=xvda2 target=/dev/vg/lvm1 format=raw access=rw"),
        ("'phy:vg/myvmdisk1,sda1,w'", "vdev=xvda1 target=/dev/vg/myvmdisk1 format=raw access=rw"),
        ("'file:/full/path/to/vm1disk,sda1,w'", "vdev=xvda1 target=/full/path/to/vm1disk format=raw access=rw"),
        ("'phy:hda1,sda1,r'", "vdev=xvda1 target=/dev/hda1 format=raw access=ro"),
        ("'tap:qcow2:/img/a.qcow2,xvda,w'", "vdev=xvda target=/img/a.qcow2 format=qcow2 access=rw"),
    ],
)
def test_manual_disks(tmp_path, checker, disk, expected):
    _, _, out = convert_file(tmp_path, f"name = 'd'\nmemory = 64\nkernel = '/k'\ndisk = [ {disk} ]\n")
    assert f"disk 0: {expected}\n" in xlcheck.accept(checker, out)


def test_manual_vifs(tmp_path, checker):
    _, _, out = convert_file(
        tmp_path,
        "name = 'v'\nmemory = 64\nkernel = '/k'\nnics = 2\n"
        "vif = [ 'mac=aa:00:00:00:00:11, bridge=xen-br0', 'bridge=xen-br1' ]\n"
        "disk = [ 'phy:hda3,sda1,w' ]\n",
    )
    seen = xlcheck.accept(checker, out)
    assert "vif 0: mac=aa:00:00:00:00:11 bridge=xen-br0\n" in seen
    assert "vif 1: bridge=xen-br1\n" in seen


def test_manual_two_disks_and_swap(tmp_path, checker):
    _, dom, out = convert_file(
        tmp_path,
        "name = 'deb'\nmemory = 128\nkernel = '/k'\n"
        "disk = [ 'file:/path/diskimage,sda1,w', 'file:/path/swapimage,sda2,w' ]\nroot = \"/dev/sda1 ro\"\n",
    )
    seen = xlcheck.accept(checker, out)
    assert "vdev=xvda1 target=/path/diskimage" in seen and "vdev=xvda2 target=/path/swapimage" in seen
    assert dom.root == "/dev/xvda1 ro"


def test_manual_nfs_root(tmp_path, checker):
    _, dom, out = convert_file(
        tmp_path,
        "name = 'nfsvm'\nmemory = 64\nkernel = '/k'\n"
        "root = '/dev/nfs'\nnfs_server = '2.3.4.5'  # substitute IP address of server\n"
        "nfs_root = '/path/to/root'  # path to root FS on the server\n"
        "ip = '1.2.3.4'\nnetmask = '255.255.255.0'\ngateway = '1.2.3.1'\nhostname = 'vm1'\n",
    )
    seen = xlcheck.accept(checker, out)
    assert "root=/dev/nfs\n" in seen
    assert ("extra=nfsroot=2.3.4.5:/path/to/root ip=1.2.3.4:2.3.4.5:1.2.3.1:255.255.255.0:vm1:eth0:off\n") in seen


def test_dhcp(tmp_path, checker):
    _, dom, out = convert_file(tmp_path, "name = 'd'\nmemory = 64\nkernel = '/k'\ndhcp = 'dhcp'\nextra = 'quiet'\n")
    assert "extra=ip=:::::eth0:dhcp quiet\n" in xlcheck.accept(checker, out)


def test_builder_and_restart(tmp_path, checker):
    _, dom, out = convert_file(tmp_path, "name = 'h'\nmemory = 64\nbuilder = 'hvm'\nrestart = 'always'\n")
    seen = xlcheck.accept(checker, out)
    assert "type=hvm" in seen and "on_poweroff=restart" in seen and "on_crash=restart" in seen


# xmexample2 (Xen 2.0): the vmid variable handled by Python code.
XMEXAMPLE2 = """
kernel = "/boot/vmlinuz-2.6.9-xenU"
memory = 64
vmid = int(vmid)
name = "VM%d" % vmid
disk = ['phy:sda%d,sda1,w' % (7+vmid)]
"""


def test_xmexample2_python_logic_is_a_clear_error(tmp_path):
    src = tmp_path / "xmexample2"
    src.write_text(XMEXAMPLE2)
    with pytest.raises(ProvisionError) as e:
        xmconvert.load_any(src)
    assert e.value.message == f"{src}:4: 'vmid = int(vmid)' is Python logic, not a value; xl cannot read it"
    assert "{{ vmid }}" in e.value.hint and "vmid=1" in e.value.hint


@pytest.mark.parametrize(
    "text, words",
    [
        ("if vmid > 1:\n    memory = 64\n", "an if statement"),
        ("import os\n", "an import"),
        ("for i in range(2):\n    pass\n", "a for loop"),
        ("def f():\n    pass\n", "a function definition"),
    ],
)
def test_other_python_statements(tmp_path, text, words):
    src = tmp_path / "p.cfg"
    src.write_text(f"name = 'p'\n{text}")
    with pytest.raises(ProvisionError) as e:
        xmconvert.load_any(src)
    assert words in e.value.message and ":2:" in e.value.message


def test_nfs_root_without_server(tmp_path):
    with pytest.raises(ProvisionError, match="nfs_root is set but nfs_server is not"):
        xmconvert.convert({"name": "n", "nfs_root": "/x"}, "n.cfg")


def test_xl_config_passes_unchanged(tmp_path, checker):
    text = ("name = 'x'\nmemory = 128\nkernel = '/k'\n"
            "disk = [ 'format=raw, vdev=xvda1, access=rw, target=/dev/vg/x' ]\n")
    was_xm, dom, out = convert_file(tmp_path, text)
    assert not was_xm
    assert "vdev=xvda1 target=/dev/vg/x" in xlcheck.accept(checker, out)


def test_manual_chosen_mac(tmp_path, checker):
    """Section 3.2: "vif = ['mac=00:06:AA:F6:BB:B3']" (a vendor's OUI, upper case)."""
    _, dom, out = convert_file(tmp_path, "name = 'm'\nmemory = 64\nkernel = '/k'\nvif = ['mac=00:06:AA:F6:BB:B3']\n")
    assert "vif 0: mac=00:06:aa:f6:bb:b3\n" in xlcheck.accept(checker, out)
    assert dom.macs() == ["00:06:aa:f6:bb:b3"]  # one spelling, so duplicates compare equal
