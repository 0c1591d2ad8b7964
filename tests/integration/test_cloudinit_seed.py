"""cloud-init NoCloud seeds made for real with xorriso and read back: the volume label
``cidata`` as blkid (and so cloud-init's ds-identify) sees it, the files' bytes; the seed
beside an image made by ``image --debootstrap`` and ``--from-template``, recorded in its
facts, and the domain config ``domain create --from-image`` writes, read by Xen's own
parser (tests/xlcheck)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "xlcheck"))
import xlcheck  # noqa: E402

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_DATA = b"#cloud-config\nusers:\n  - name: ada\n    ssh_authorized_keys: [ssh-ed25519 AAAA test]\n"
NETWORK = b"network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"


def cli(*args, env=None):
    full = dict(os.environ)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "provision", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=1800)


def host_suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "bookworm"


def read_seed(iso: Path, out: Path) -> dict[str, bytes]:
    """The seed's label and files, as a guest would read them."""
    label = subprocess.run(["blkid", "-o", "export", str(iso)], capture_output=True, text=True,
                           env={**os.environ, "PATH": SBIN_PATH}).stdout
    assert "LABEL=cidata\n" in label and "TYPE=iso9660\n" in label, label
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)], check=True,
                   capture_output=True)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "user-data.yaml").write_bytes(USER_DATA)
    (tmp_path / "net.yaml").write_bytes(NETWORK)
    return tmp_path


def test_seed_action_for_a_cloud_image(files, tmp_path):
    """``image seed``: no root needed; the same input gives the same bytes under SOURCE_DATE_EPOCH."""
    outs = []
    for n in (1, 2):
        out = tmp_path / f"s{n}.iso"
        p = cli("image", "seed", "--cloud-init", files / "user-data.yaml", "--network-config", files / "net.yaml",
                "--hostname", "cloud1.example.org", "--out", out, env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert p.returncode == 0, p.stderr
        assert f"'format=raw, vdev=xvdb, access=ro, target={out}'" in p.stderr
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert os.path.getsize(outs[0]) < 1 << 20
    got = read_seed(outs[0], tmp_path / "x")
    assert got["user-data"] == USER_DATA and got["network-config"] == NETWORK
    meta = got["meta-data"].decode()
    assert 'local-hostname: "cloud1.example.org"\n' in meta and meta.startswith('instance-id: "iid-cloud1-')
    assert sorted(got) == ["meta-data", "network-config", "user-data"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (image builds use debugfs on files we own, domain create a root); CI runs as root")
    d = tmp_path_factory.mktemp("seed")
    (d / "ud").write_bytes(USER_DATA)
    env = {"XEN_PROVISION_TEMPLATES": str(d / "tpl")}
    img = d / "web.img"
    p = cli("image", "--debootstrap", host_suite(), "--file", img, "--swap", "64M", "--hostname", "web",
            "--cloud-init", d / "ud", "--save-template", "seeded", env=env)
    assert p.returncode == 0, p.stderr
    return d, img, env


def test_image_writes_and_records_the_seed(made):
    d, img, _ = made
    seed = d / "web.img.cidata.iso"
    got = read_seed(seed, d / "out")
    assert got["user-data"] == USER_DATA and "network-config" not in got
    assert b'local-hostname: "web"\n' in got["meta-data"]
    info = json.loads((d / "web.img.json").read_text())
    assert [x["role"] for x in info["disks"]] == ["root", "swap", "seed"]
    assert info["disks"][-1] == {"role": "seed", "path": str(seed), "vdev": "xvdb", "format": "raw",
                                 "readonly": True, "label": "cidata"}


def test_domain_create_attaches_it_read_only(made):
    d, img, _ = made
    host = d / "host"
    (host / "boot").mkdir(parents=True)
    (host / "boot/vmlinuz-xenU").write_bytes(b"\x7fELF stand-in")
    (host / "etc/network").mkdir(parents=True)
    (host / "etc/network/interfaces").write_text("auto xenbr0\niface xenbr0 inet dhcp\n    bridge_ports eth0\n")
    p = cli("domain", "create", "--root", host, "--from-image", img, "--memory", "256", "--kernel",
            "/boot/vmlinuz-xenU")
    assert p.returncode == 0, p.stderr
    cfg = host / "etc/xen/web.cfg"
    text = cfg.read_text()
    assert f"access=ro, target={d / 'web.img.cidata.iso'}" in text
    seen = xlcheck.accept(xlcheck.build(), cfg)
    assert f"disk 2: vdev=xvdb target={d / 'web.img.cidata.iso'} format=raw access=ro\n" in seen
    assert f"disk 0: vdev=xvda1 target={img} format=raw access=rw\n" in seen


def test_from_template_gets_its_own_seed(made):
    d, _, env = made
    (d / "ud2").write_bytes(b"#!/bin/sh\necho hello > /root/mark\n")
    img = d / "clone.img"
    p = cli("image", "--from-template", "seeded", "--file", img, "--hostname", "clone", "--cloud-init", d / "ud2",
            env=env)
    assert p.returncode == 0, p.stderr
    got = read_seed(d / "clone.img.cidata.iso", d / "out2")
    assert got["user-data"].startswith(b"#!/bin/sh") and b'local-hostname: "clone"\n' in got["meta-data"]
    info = json.loads((d / "clone.img.json").read_text())
    assert info["disks"][-1]["role"] == "seed" and info["disks"][-1]["vdev"] == "xvdb"
    assert [x["role"] for x in info["disks"]] == ["root", "seed"]
    # The template's facts do not carry the first guest's seed.
    tpl = json.loads((d / "tpl/seeded.json").read_text())
    assert [x["role"] for x in tpl["disks"]] == ["root", "swap"]


def test_a_failed_build_takes_its_seed_away(made):
    d, _, env = made
    img = d / "sub" / "nodir.img"  # its directory does not exist: refused before anything is made
    p = cli("image", "--debootstrap", host_suite(), "--file", img, "--cloud-init", d / "ud", env=env)
    assert p.returncode != 0 and not (d / "sub").exists()
    # A build that fails after the seed was written: the target's filesystem is too small.
    img = d / "small.img"
    p = cli("image", "--debootstrap", host_suite(), "--file", img, "--size", "40M", "--cloud-init", d / "ud",
            env=env)
    assert p.returncode != 0, p.stderr
    assert not (d / "small.img.cidata.iso").exists() and not img.exists()
