"""cloud-init NoCloud seeds: meta-data, the checks of user-data and network-config (one
line, nothing made), the seed's disk in the facts file, and the read-only disk that
``domain create --from-image`` gives the guest (read back by Xen's own parser). The
seed made for real and read back is tests/integration/test_cloudinit_seed.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.guest import cloudinit, suites
from provision.guest.build import Target, sidecar_info
from provision.guest.configure import GuestSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402

KERNEL = "/boot/vmlinuz-xenU"
USER_DATA = b"#cloud-config\nusers:\n  - name: ada\n    sudo: ALL=(ALL) NOPASSWD:ALL\n"
NETWORK = b"network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"


def errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_meta_data_names_the_instance_and_host():
    seed = cloudinit.Seed("web.example.org", USER_DATA)
    text = seed.meta_data.decode()
    assert text == f'instance-id: "{seed.instance_id}"\nlocal-hostname: "web.example.org"\n'
    assert seed.instance_id.startswith("iid-web-") and len(seed.instance_id) == len("iid-web-") + 12
    assert list(seed.files()) == ["meta-data", "user-data"]
    assert cloudinit.Seed("web.example.org", USER_DATA).instance_id == seed.instance_id  # deterministic
    # A changed seed is a new instance to cloud-init: its per-instance modules run again.
    assert cloudinit.Seed("web.example.org", USER_DATA + b"# more\n").instance_id != seed.instance_id
    assert cloudinit.Seed("web.example.org", USER_DATA, NETWORK).instance_id != seed.instance_id
    assert list(cloudinit.Seed("w", USER_DATA, NETWORK).files()) == ["meta-data", "user-data", "network-config"]


@pytest.mark.parametrize("first", [b"#cloud-config", b"#!/bin/sh", b"#cloud-config\r", b"#include"])
def test_user_data_headers(first):
    cloudinit.check_user_data(first + b"\nrest\n")


@pytest.mark.parametrize("data", [b"users: []\n", b"", b" #cloud-config\n", b"\xef\xbb\xbfusers:\n"])
def test_user_data_without_a_header_is_refused(data):
    with pytest.raises(ProvisionError, match="first line must be #cloud-config or #!"):
        cloudinit.check_user_data(data, "ud.yaml")


@pytest.mark.parametrize("data", [NETWORK, b"version: 1\nconfig:\n  - type: physical\n", b"version: 2 # v2\n"])
def test_network_config_versions(data):
    cloudinit.check_network_config(data)


@pytest.mark.parametrize("data", [b"ethernets:\n  eth0: {}\n", b"version: 3\n", b"\xff\xfe", b"# version: 2\n"])
def test_network_config_without_a_version_is_refused(data):
    with pytest.raises(ProvisionError, match="network-config|UTF-8"):
        cloudinit.check_network_config(data, "net.yaml")


def test_seed_disk_follows_the_image_disks():
    rel = suites.lookup("bookworm")
    for target, devices, want in ((Target.file("/x/a.img", "64M", swap="16M"), "xvd", "xvdb"),
                                  (Target.disk("/x/b.img", "64M"), "xvd", "xvdb"),
                                  (Target.file("/x/c.img", "64M"), "sd", "sdb"),
                                  (Target.dir("/x/tree"), "xvd", "xvdb")):
        info = sidecar_info({}, GuestSettings(hostname="h", devices=devices, swap=bool(target.swap)), target, rel)
        disk = cloudinit.seed_disk("/x/seed.iso", info, devices)
        assert disk == {"role": "seed", "path": "/x/seed.iso", "vdev": want, "format": "raw", "readonly": True,
                        "label": "cidata"}
    assert cloudinit.seed_disk("/s", {"disks": [{"vdev": "xvda1"}, {"vdev": "xvdb"}]})["vdev"] == "xvdc"
    assert cloudinit.seed_path("/srv/vm1.img.json") == "/srv/vm1.img.cidata.iso"


def _image_with_seed(tmp_path: Path, target: Target, hostname: str) -> Path:
    info = sidecar_info({"arch": "amd64"}, GuestSettings(hostname=hostname, swap=bool(target.swap)), target,
                        suites.lookup("bookworm"))
    seed = Path(cloudinit.seed_path(target.sidecar))
    seed.write_bytes(b"stand-in: domain create only names it")
    cloudinit.attach(info, str(seed), target.sidecar)
    return seed


def test_domain_create_gives_the_seed_read_only(run_cli, root, tmp_path, checker):
    img = tmp_path / "web.img"
    seed = _image_with_seed(tmp_path, Target.file(img, "64M", swap="16M"), "web")
    run_cli("domain", "create", "--root", root, "--from-image", img, "--memory", "256", "--kernel", KERNEL,
            check=True)
    seen = xlcheck.accept(checker, root / "etc/xen/web.cfg")
    assert f"disk 0: vdev=xvda1 target={img} format=raw access=rw\n" in seen
    assert f"disk 1: vdev=xvda2 target={tmp_path / 'web-swap.img'} format=raw access=rw\n" in seen
    assert f"disk 2: vdev=xvdb target={seed} format=raw access=ro\n" in seen
    assert "root=/dev/xvda1 ro\n" in seen


def test_an_nfs_root_tree_gets_its_seed_too(run_cli, root, tmp_path, checker):
    tree = tmp_path / "vm1root"
    seed = _image_with_seed(tmp_path, Target.dir(tree), "vm1")
    proc = run_cli("domain", "create", "--root", root, "--from-image", tree, "--memory", "128", "--kernel", KERNEL)
    assert proc.returncode != 0 and "is a directory tree, not a disk image" in proc.stderr
    run_cli("domain", "create", "--root", root, "--from-image", tree, "--memory", "128", "--kernel", KERNEL,
            "--nfs-server", "192.0.2.1", "--nfs-root", str(tree), check=True)
    seen = xlcheck.accept(checker, root / "etc/xen/vm1.cfg")
    assert f"disk 0: vdev=xvdb target={seed} format=raw access=ro\n" in seen and "disk 1:" not in seen
    assert "root=/dev/nfs\n" in seen


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ud").write_bytes(USER_DATA)
    (tmp_path / "net").write_bytes(NETWORK)
    (tmp_path / "bad").write_text("users: []\n")
    return tmp_path


def test_image_refusals_are_one_line_and_make_nothing(run_cli, files):
    tmp = files
    env = {"XEN_PROVISION_TEMPLATES": str(tmp / "tpl"), "XEN_PROVISION_CACHE": str(tmp / "cache")}
    img = tmp / "vm1.img"
    base = ["image", "--debootstrap", "bookworm", "--file", img]
    (tmp / "taken.img.cidata.iso").write_bytes(b"old")
    for args, message in (
        (["--cloud-init", tmp / "bad"], "is not cloud-init user-data: its first line must be #cloud-config or #!"),
        (["--cloud-init", tmp / "ud", "--network-config", tmp / "bad"], "has no 'version: 1' or 'version: 2'"),
        (["--network-config", tmp / "net"], "--network-config goes with --cloud-init USER_DATA"),
        (["--cloud-init", tmp / "missing"], "cannot read user-data"),
    ):
        proc = run_cli(*base, *args, env=env)
        assert proc.returncode != 0 and len(errors(proc)) == 1, (args, proc.stderr)
        assert message in errors(proc)[0], (args, proc.stderr)
    proc = run_cli("image", "--debootstrap", "bookworm", "--file", tmp / "taken.img", "--cloud-init", tmp / "ud",
                   "--dry-run", env=env)
    assert errors(proc) == [f"error: seed {tmp / 'taken.img.cidata.iso'} already exists"]
    assert sorted(p.name for p in tmp.iterdir()) == ["bad", "net", "taken.img.cidata.iso", "ud"]


def test_image_dry_run_shows_the_seed(run_cli, files):
    tmp = files
    env = {"XEN_PROVISION_TEMPLATES": str(tmp / "tpl"), "XEN_PROVISION_CACHE": str(tmp / "cache")}
    proc = run_cli("image", "--debootstrap", "bookworm", "--file", tmp / "vm1.img", "--swap", "64M",
                   "--cloud-init", tmp / "ud", "--network-config", tmp / "net", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (f"seed:     {tmp}/vm1.img.cidata.iso (iso9660 cidata: meta-data, user-data, network-config), "
            f"read-only disk xvdb in {tmp}/vm1.img.json") in proc.stdout.splitlines()
    assert not (tmp / "vm1.img.cidata.iso").exists()


def test_seed_action_refusals(run_cli, files):
    tmp = files
    for args, message in (
        (["--cloud-init", tmp / "bad", "--hostname", "h", "--out", tmp / "s.iso"], "not cloud-init user-data"),
        (["--cloud-init", tmp / "ud", "--hostname", "-bad", "--out", tmp / "s.iso"], "hostname"),
        (["--cloud-init", tmp / "ud", "--hostname", "h", "--out", tmp / "ud"], "already exists"),
        (["--cloud-init", tmp / "ud", "--hostname", "h", "--out", tmp / "no/s.iso"], "does not exist"),
    ):
        proc = run_cli("image", "seed", *args)
        assert proc.returncode != 0 and len(errors(proc)) == 1, (args, proc.stderr)
        assert message in errors(proc)[0], (args, proc.stderr)
    proc = run_cli("image", "seed", "--cloud-init", tmp / "ud", "--hostname", "h", "--out", tmp / "s.iso",
                   "--dry-run")
    assert proc.returncode == 0 and "local-hostname h" in proc.stdout
    assert sorted(p.name for p in tmp.iterdir()) == ["bad", "net", "ud"]
