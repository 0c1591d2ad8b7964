"""``domain list``: what it says of each guest, as text and as --json, in a throw-away root.

Guests are made as a user makes them: the image's facts file by `image`'s own writer
(tests/unit/guests.py), the config by ``domain create``. Running state needs ``xl
list``; this machine has no Xen, so an ``xl`` stub on PATH stands in for it (it is no
tool under test: our parsing of its output is).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from provision import inuse
from provision.domain import list as lister
from tests.unit import guests

KERNEL = "/boot/vmlinuz-xenU"
MiB = 1 << 20


def listing(run_cli, *args, env=None) -> dict:
    proc = run_cli("domain", "list", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "xen-provision-domain-list/1"
    return data


def test_image_made_guest_and_hand_made_ones(run_cli, root, tmp_path):
    images = root / "var/lib/xen/images"
    img = guests.image(images, "web1", size=64 * MiB, data=3 * MiB, swap=16 * MiB)
    run_cli("domain", "create", "--root", root, "--from-image", img, "--memory", "256", "--vcpus", "2",
            "--kernel", KERNEL, "--autostart", "--bridge", "xenbr1", check=True)
    # A hand-made guest on an LV and a block device (not on this machine: an offline root).
    run_cli("domain", "create", "--root", root, "--name", "db", "--memory", "512", "--kernel", KERNEL,
            "--type", "pvh", "--no-kernel-check", "--disk", "format=raw, vdev=xvda1, access=rw, target=/dev/vg0/db",
            "--disk", "format=raw, vdev=xvdb, access=ro, target=/dev/sdz1", "--vif", "bridge=xenbr0", check=True)
    # A config our reader cannot take in full is listed with its error.
    (root / "etc/xen/odd.cfg").write_text('name = "odd"\nmemory = 64\nmemroy = 1\n')
    data = listing(run_cli, "--root", root)
    assert data["xl"] == "offline"
    by = {d["name"]: d for d in data["domains"]}
    assert sorted(by) == ["db", "odd", "web1"]
    web = by["web1"]
    assert (web["type"], web["memory_mib"], web["vcpus"], web["autostart"]) == ("pv", 256, 2, True)
    assert web["state"] == "unknown" and web["domid"] is None
    assert web["config"] == str(root / "etc/xen/web1.cfg")
    root_disk, swap = web["disks"]
    assert root_disk["target"] == "/var/lib/xen/images/web1.img" and root_disk["path"] == str(img)
    assert (root_disk["backing"], root_disk["size"], root_disk["role"], root_disk["owned"]) == ("file", 64 * MiB, "root", True)
    assert root_disk["allocated"] == os.stat(img).st_blocks * 512 and 3 * MiB <= root_disk["allocated"] < 8 * MiB
    assert (swap["role"], swap["size"], swap["owned"], swap["vdev"]) == ("swap", 16 * MiB, True, "xvda2")
    assert swap["allocated"] < MiB   # sparse
    assert web["ips"] == ["192.0.2.10"] and web["bridges"] == ["xenbr1"]
    assert len(web["macs"]) == 1 and web["macs"][0].startswith("00:16:3e:") and web["vifs"][0]["mac"] == web["macs"][0]
    assert web["image"]["facts"] == f"{img}.json" and web["image"]["suite"] == "bookworm"
    db = by["db"]
    assert (db["type"], db["memory_mib"], db["autostart"], db["image"]) == ("pvh", 512, False, None)
    assert [(d["backing"], d["access"], d["owned"]) for d in db["disks"]] == [("lv", "rw", False), ("missing", "ro", False)]
    assert db["bridges"] == ["xenbr0"] and db["ips"] == []
    assert by["odd"]["error"] and "memroy" in by["odd"]["error"] and by["odd"]["memory_mib"] is None
    # The same as text: a block per domain.
    text = run_cli("domain", "list", "--root", root, check=True).stdout
    assert "web1  pv  256 MiB  2 vcpus  unknown  autostart\n" in text
    assert f"  disk    xvda1 rw  file /var/lib/xen/images/web1.img  64MiB, {lister.size_text(root_disk['allocated'])} allocated, root made by image\n" in text
    assert "  ip      192.0.2.10\n" in text and f"  image   {img}.json (debian bookworm)\n" in text
    assert "(running state unknown: " in text and "is an offline root)" in text


def test_nfs_root_guest(run_cli, root):
    tree = guests.tree(root / "export", "nfs1")
    run_cli("domain", "create", "--root", root, "--name", "nfs1", "--memory", "256", "--kernel", KERNEL,
            "--nfs-server", "192.0.2.1", "--nfs-root", "/export/nfs1", "--ip", "192.0.2.20/24", "--exports",
            "--bridge", "xenbr0", check=True)
    (d,) = listing(run_cli, "--root", root)["domains"]
    assert d["disks"] == [] and d["nfs_root"] == {"server": "192.0.2.1", "path": "/export/nfs1",
                                                  "tree": str(tree), "owned": True}
    assert d["ips"] == ["192.0.2.20"] and d["image"]["target"] == "dir"


def test_no_domains(run_cli, tmp_path):
    assert listing(run_cli, "--root", tmp_path)["domains"] == []
    assert run_cli("domain", "list", "--root", tmp_path, check=True).stdout == ""


def _config(d: Path, name: str, disk: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.cfg").write_text(f'name = "{name}"\nmemory = 128\nkernel = "/k"\n'
                                   f'disk = [ "format=raw, vdev=xvda1, access=rw, target={disk}" ]\n')


def test_running_state_from_xl_on_the_live_host(run_cli, tmp_path):
    """--root / (the default) with the configs in --config-dir: xl list says who runs."""
    xen = tmp_path / "xen"
    for n in ("up", "down"):
        _config(xen, n, tmp_path / f"{n}.img")
    env = guests.xl_stub(tmp_path / "bin", {"up": 7, "a name with spaces": 9})
    data = listing(run_cli, "--config-dir", xen, env=env)
    assert data["xl"] == "ok"
    assert {d["name"]: (d["state"], d["domid"]) for d in data["domains"]} == {"up": ("running", 7),
                                                                            "down": ("stopped", None)}
    text = run_cli("domain", "list", "--config-dir", xen, env=env, check=True).stdout
    assert "up  pv  128 MiB  1 vcpu  running (domid 7)  no autostart\n" in text and "unknown" not in text
    # xl that fails (not dom0, xencommons down): unknown, and why.
    env = guests.xl_stub(tmp_path / "bad", None, fail=True)
    data = listing(run_cli, "--config-dir", xen, env=env)
    assert data["xl"] == "failed" and {d["state"] for d in data["domains"]} == {"unknown"}
    text = run_cli("domain", "list", "--config-dir", xen, env=env, check=True).stdout
    assert "(running state unknown: xl list failed: xencall: error: Could not obtain handle" in text


@pytest.mark.skipif(shutil.which("xl", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None,
                    reason="this machine has xl")
def test_no_xl_is_unknown(run_cli, tmp_path):
    _config(tmp_path / "xen", "vm", tmp_path / "vm.img")
    data = listing(run_cli, "--config-dir", tmp_path / "xen")
    assert data["xl"] == "absent" and data["domains"][0]["state"] == "unknown"


def test_parse_xl_list():
    text = ("Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
            "Domain-0                                     0  1024     2     r-----      42.0\n"
            "web 1                                        3   256     1     -b----       1.0\n"
            "(null)                                       4     0     1     --p--d       0.1\n")
    assert inuse.parse_xl_list(text) == {"Domain-0": 0, "web 1": 3}
    assert inuse.parse_xl_list("") == {}


def test_bad_root_is_one_line(run_cli, tmp_path):
    proc = run_cli("domain", "list", "--root", tmp_path / "typo", "--json")
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: --root {tmp_path / 'typo'} does not exist\n")
