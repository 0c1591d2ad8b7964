"""``image update``: what it resolves a TARGET to from the facts `image` wrote, when it
refuses (one line, nothing changed), its plan, and the identity it puts back after apt.
The real upgrade is tests/integration/test_guest_update.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.guest import suites, update
from provision.guest.build import Target, sidecar_info
from provision.guest.configure import GuestSettings


def write_sidecar(target: Target, hostname: str = "vm1", swap: bool = False) -> dict:
    info = sidecar_info({"arch": "amd64"}, GuestSettings(hostname=hostname, swap=swap), target,
                        suites.lookup("bookworm"))
    path = Path(target.sidecar)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = {"XEN_PROVISION_CACHE": str(tmp_path / "cache"), "XEN_PROVISION_TEMPLATES": str(tmp_path / "tpl"),
         "XEN_PROVISION_XEN_DIR": str(tmp_path / "xen")}
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "xen").mkdir()
    return e


def errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_file_image_resolves_to_its_root(tmp_path, env):
    img = tmp_path / "vm1.img"
    img.write_bytes(b"")
    write_sidecar(Target.file(img, "64M", swap="16M"), swap=True)
    item = update.resolve(str(img))
    assert (item.kind, item.path, item.partition, item.fstype) == ("file", str(img), None, "ext4")
    assert update.resolve(str(img) + ".json") == item  # the facts file names it too


def test_disk_image_resolves_to_its_root_partition(tmp_path, env):
    img = tmp_path / "whole.img"
    img.write_bytes(b"")
    write_sidecar(Target.disk(img, "64M", swap="16M"), swap=True)
    item = update.resolve(str(img))
    assert (item.kind, item.path, item.partition) == ("disk", str(img), 1)


@pytest.mark.parametrize("spelling", ["vg0/guest", "/dev/vg0/guest"])
def test_lv_resolves_through_its_facts_in_the_cache(tmp_path, env, spelling):
    write_sidecar(Target.lv("vg0/guest", "64M"), hostname="guest")
    item = update.resolve(spelling)
    assert (item.kind, item.path) == ("lv", "/dev/vg0/guest")
    assert item.sidecar == tmp_path / "cache/images/vg0/guest.json"


def test_directory_tree(tmp_path, env):
    tree = tmp_path / "root"
    tree.mkdir()
    write_sidecar(Target.dir(tree))
    item = update.resolve(str(tree) + "/")
    assert (item.kind, item.path, item.fstype) == ("dir", str(tree), None)
    assert update.plan(item)[-1] == f"write:    {tree}.json (updated: when, how many packages)"
    assert not any(line.startswith(("mount:", "run:      e2fsck")) for line in update.plan(item))


def test_template_by_name(tmp_path, env):
    from provision.guest import templates

    img = tmp_path / "vm1.img"
    img.write_bytes(b"x")
    info = write_sidecar(Target.file(img, "64M"))
    templates.save("web", info)
    for item in (update.resolve("web"), update.template_item("web")):
        assert (item.label, item.kind, item.path) == ("template 'web'", "file", str(tmp_path / "tpl/web.img"))
        assert item.sidecar == tmp_path / "tpl/web.json"


def test_not_ours_is_refused(tmp_path, env):
    img = tmp_path / "other.img"
    img.write_bytes(b"")
    with pytest.raises(ProvisionError, match="is not an image made by xen-provision: no facts file"):
        update.resolve(str(img))
    with pytest.raises(ProvisionError, match="does not exist"):
        update.resolve(str(tmp_path / "missing.img"))
    with pytest.raises(ProvisionError, match="not an image made by xen-provision"):
        update.resolve("vg0/nothing")


def test_facts_of_another_image_are_refused(tmp_path, env):
    img, other = tmp_path / "a.img", tmp_path / "b.img"
    img.write_bytes(b"")
    other.write_bytes(b"")
    write_sidecar(Target.file(other, "64M"))
    Path(str(img) + ".json").write_text(Path(str(other) + ".json").read_text())
    with pytest.raises(ProvisionError, match=f"describes {other}, not {img}"):
        update.resolve(str(img))


def _domain(env, name: str, disk: str, access: str = "w") -> None:
    Path(env["XEN_PROVISION_XEN_DIR"], f"{name}.cfg").write_text(
        f'name = "{name}"\nkernel = "/boot/vmlinuz"\nmemory = 128\ndisk = [ "file:{disk},xvda1,{access}" ]\n')


def test_running_domain_refuses_a_stopped_one_does_not(tmp_path, env):
    img = tmp_path / "vm1.img"
    img.write_bytes(b"")
    write_sidecar(Target.file(img, "64M"))
    _domain(env, "vm1", img)
    item = update.resolve(str(img))
    update.refuse_busy(item, running=set())         # a config alone: the guest is off
    update.refuse_busy(item, running={"other"})
    with pytest.raises(ProvisionError, match=r"used read-write by domain vm1 \(.*vm1\.cfg\), running"):
        update.refuse_busy(item, running={"vm1"})


def test_running_nfs_root_refuses_a_tree(tmp_path, env):
    tree = tmp_path / "root"
    tree.mkdir()
    write_sidecar(Target.dir(tree))
    Path(env["XEN_PROVISION_XEN_DIR"], "nfs1.cfg").write_text(
        f'name = "nfs1"\nkernel = "/boot/vmlinuz"\nmemory = 128\nroot = "/dev/nfs"\n'
        f'extra = "nfsroot=192.0.2.1:{tree},vers=3 ip=dhcp"\n')
    item = update.resolve(str(tree))
    update.refuse_busy(item, running=set())
    with pytest.raises(ProvisionError, match="is the root of domain nfs1, which is running"):
        update.refuse_busy(item, running={"nfs1"})


def test_cli_refusals_are_one_line(run_cli, tmp_path, env):
    img = tmp_path / "other.img"
    img.write_bytes(b"data")
    for args, message in (
        ((), "give a TARGET, --template NAME or --all-templates"),
        ((img,), "is not an image made by xen-provision"),
        (("--template", "nope"), "template 'nope' does not exist"),
        (("--all-templates",), "there are no saved templates"),
        ((img, "--dry-run"), "is not an image made by xen-provision"),
    ):
        proc = run_cli("image", "update", *args, env=env)
        assert proc.returncode != 0 and len(errors(proc)) == 1, (args, proc.stderr)
        assert message in errors(proc)[0], (args, proc.stderr)
        assert proc.stdout == ""
    assert img.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == ["other.img", "xen"]


def test_image_options_are_not_update_options(run_cli, tmp_path, env):
    proc = run_cli("image", "--file", tmp_path / "x.img", "update", tmp_path / "y.img", env=env)
    assert proc.returncode != 0 and errors(proc) == ["error: --file is not an option of image update"]


def test_dry_run_plan_changes_nothing(run_cli, tmp_path, env):
    img = tmp_path / "vm1.img"
    img.write_bytes(b"")
    write_sidecar(Target.file(img, "64M"))
    before = Path(str(img) + ".json").read_text()
    proc = run_cli("image", "update", img, "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == f"update:   {img} (file {img}; facts {img}.json)"
    assert "write:    ROOT/usr/sbin/policy-rc.d (exit 101: no service starts)" in out
    assert ("chroot:   DEBIAN_FRONTEND=noninteractive APT_LISTCHANGES_FRONTEND=none apt-get -y "
            "-o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef dist-upgrade") in out
    assert f"run:      e2fsck -fn {img}" in out
    assert Path(str(img) + ".json").read_text() == before


def test_image_command_without_an_action_still_builds_its_plan(run_cli, tmp_path, env):
    proc = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "x.img", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"write:    {tmp_path / 'x.img'}.json" in proc.stdout


def test_installed_reads_dpkg_status(tmp_path):
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: tzdata\nStatus: install ok installed\nVersion: 2025b-0+deb12u1\n"
                      "Description: time zones\n more text\n\n"
                      "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
                      "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n")
    assert update._installed(tmp_path) == {"tzdata": "2025b-0+deb12u1", "libc6": "2.36-9"}


def test_identity_apt_made_is_taken_away(tmp_path):
    """A never-booted image or template: no SSH host keys, an empty machine-id. An upgraded
    openssh-server or systemd would make them, and every clone would share them."""
    root = tmp_path
    for d in ("etc/ssh", "var/lib/dbus", "var/lib/apt/lists/partial", "var/cache/apt/archives"):
        (root / d).mkdir(parents=True)
    (root / "etc/machine-id").write_bytes(b"")
    (root / "var/lib/apt/lists/lock").write_bytes(b"")
    state = update._State.read(root)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("x\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("key")
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    state.restore(root)
    assert (root / "etc/machine-id").read_bytes() == b""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert list((root / "etc/ssh").iterdir()) == []
    assert sorted(p.name for p in (root / "var/lib/apt/lists").iterdir()) == ["lock", "partial"]


def test_identity_of_a_booted_guest_stays(tmp_path):
    root = tmp_path
    (root / "etc/ssh").mkdir(parents=True)
    (root / "var/lib/apt/lists").mkdir(parents=True)
    (root / "etc/machine-id").write_text("m\n")
    (root / "etc/ssh/ssh_host_rsa_key").write_text("mine")
    (root / "var/lib/apt/lists/x_InRelease").write_text("x")
    state = update._State.read(root)
    assert state.restore(root) == []
    assert (root / "etc/machine-id").read_text() == "m\n" and (root / "etc/ssh/ssh_host_rsa_key").exists()
    assert (root / "var/lib/apt/lists/x_InRelease").exists()


def test_policy_rc_d_is_put_back(tmp_path):
    from provision.guest import chroot

    (tmp_path / "usr/sbin").mkdir(parents=True)
    mine = tmp_path / "usr/sbin/policy-rc.d"
    restore = chroot.install_policy(tmp_path)
    assert mine.read_bytes() == chroot.POLICY and os.access(mine, os.X_OK)
    restore()
    assert not mine.exists()
    mine.write_text("#!/bin/sh\nexit 0\n")
    restore = chroot.install_policy(tmp_path)
    assert mine.read_bytes() == chroot.POLICY
    restore()
    assert mine.read_text() == "#!/bin/sh\nexit 0\n"
    assert sorted(p.name for p in mine.parent.iterdir()) == ["policy-rc.d"]


def test_apt_runs_in_a_private_namespace_with_the_hosts_resolver():
    from provision.guest.chroot import Chroot

    argv = Chroot(Path("/mnt/x")).argv(["apt-get", "update"], update.APT_ENV, network=True)
    assert argv[:7] == ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--"]
    assert argv[-2:] == ["apt-get", "update"] and "/mnt/x" in argv and "DEBIAN_FRONTEND=noninteractive" in argv
    assert argv[argv.index("/mnt/x") + 1] == "1"   # network: dom0's resolv.conf bound in
