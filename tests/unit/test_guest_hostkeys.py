"""Each guest's own SSH host keys, made with its image by the host's ssh-keygen and
written where the guest has an SSH server; the image's JSON records the public halves."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from provision.guest import hostkeys, suites
from provision.guest.configure import (
    GuestSettings,
    Network,
    Remove,
    Symlink,
    Write,
    apply_to_dir,
    apt_sources,
    dir_reader,
    guest_files,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")


@pytest.fixture(scope="module")
def keys():
    return hostkeys.generate("vm1.example.org")


def _settings(keys=()):
    rel = suites.lookup("bookworm")
    return rel, GuestSettings("vm1.example.org", Network.make(ip="192.0.2.10/24", gateway="192.0.2.1"),
                              apt_sources=apt_sources(rel, "http://deb.debian.org/debian"), host_keys=keys)


def _tree(tmp_path, sshd=True):
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    if sshd:
        (root / "etc/ssh/sshd_config").write_text("")
    # What openssh-server's postinst made in the base: shared by every image of it.
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_dsa_key", "ssh_host_dsa_key.pub"):
        (root / "etc/ssh" / name).write_text("the base's\n")
    return root


def test_keys_of_each_type_that_ssh_keygen_itself_reads(keys, tmp_path):
    assert [k.type for k in keys] == ["rsa", "ecdsa", "ed25519"]
    for key in keys:
        assert key.public.endswith(" root@vm1") and key.public.startswith(("ssh-rsa ", "ecdsa-", "ssh-ed25519 "))
        private = tmp_path / key.type
        private.write_bytes(key.private)
        private.chmod(0o600)
        derived = subprocess.run(["ssh-keygen", "-y", "-f", private], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == key.public.split()[:2], f"{key.type}: private and public differ"
    assert len({k.public for k in hostkeys.generate("vm1")} & {k.public for k in keys}) == 0


def test_a_guest_with_an_ssh_server_gets_its_own_keys(keys, tmp_path):
    rel, settings = _settings(keys)
    root = _tree(tmp_path)
    ops = guest_files(rel, settings, dir_reader(root))
    writes = {op.path: op for op in ops if isinstance(op, Write)}
    for key in keys:
        assert writes[key.path].data == key.private and writes[key.path].mode == 0o600
        assert writes[key.path + ".pub"].data == (key.public + "\n").encode() and writes[key.path + ".pub"].mode == 0o644
        assert Remove(key.path) not in ops
    assert Remove("/etc/ssh/ssh_host_dsa_key") in ops and Remove("/etc/ssh/ssh_host_dsa_key.pub") in ops
    # The first-boot unit stays: it makes keys again only where there are none.
    assert any(isinstance(op, Symlink) and op.path.endswith("regenerate-ssh-host-keys.service") for op in ops)
    if os.geteuid() == 0:
        apply_to_dir(root, ops)
        assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() == keys[2].private
        assert not (root / "etc/ssh/ssh_host_dsa_key").exists()


def test_without_an_ssh_server_no_keys_are_written_and_the_bases_go(keys, tmp_path):
    rel, settings = _settings(keys)
    ops = guest_files(rel, settings, dir_reader(_tree(tmp_path, sshd=False)))
    assert not [op for op in ops if isinstance(op, Write) and op.path.startswith("/etc/ssh/ssh_host_")]
    assert Remove("/etc/ssh/ssh_host_ed25519_key") in ops and Remove("/etc/ssh/ssh_host_ed25519_key.pub") in ops


def test_cloud_init_keeps_the_keys_the_image_made(keys, tmp_path):
    rel, settings = _settings(keys)
    root = _tree(tmp_path)
    (root / "etc/cloud").mkdir(parents=True)
    (root / "etc/cloud/cloud.cfg").write_text("ssh_deletekeys: true\n")
    writes = {op.path: op for op in guest_files(rel, settings, dir_reader(root)) if isinstance(op, Write)}
    cfg = writes["/etc/cloud/cloud.cfg.d/90-xen-provision-ssh-host-keys.cfg"].data.decode()
    assert "ssh_deletekeys: false\n" in cfg and "ssh_genkeytypes: []\n" in cfg
    # Without keys of the image's own, cloud-init is left to make them.
    writes = {op.path for op in guest_files(rel, _settings()[1], dir_reader(root)) if isinstance(op, Write)}
    assert "/etc/cloud/cloud.cfg.d/90-xen-provision-ssh-host-keys.cfg" not in writes


def test_a_host_keys_repr_hides_the_private_key(keys):
    assert "PRIVATE" not in repr(keys) and keys[0].public.split()[1] in repr(keys[0])


def test_the_images_json_has_the_public_keys_only(keys):
    public = _settings(keys)[1].public()
    assert public["ssh_host_keys"] == [k.public for k in keys]
    text = repr(public) + repr(_settings(keys)[1])
    assert not any(k.private.decode() in text or "PRIVATE KEY" in text for k in keys)
    assert "ssh_host_keys" not in _settings()[1].public()
