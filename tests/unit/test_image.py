"""``python -m provision image``: the plan (--dry-run) for any suite without the network,
and bad input: one line, a non-zero exit, nothing left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REMOVED_KEYRING = "/usr/share/keyrings/debian-archive-removed-keys.gpg"


@pytest.fixture
def clean_env(tmp_path):
    """A private cache and template dir, so 'nothing left behind' can be checked."""
    return {"XEN_PROVISION_CACHE": str(tmp_path / "cache"), "XEN_PROVISION_TEMPLATES": str(tmp_path / "tpl")}


def _nothing_made(tmp_path, *keep):
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)
    assert made == [], made


@pytest.mark.skipif(not os.path.exists(REMOVED_KEYRING), reason="debian-archive-keyring is not installed")
def test_sarge_dry_run_shows_the_whole_plan(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "sarge", "--file", tmp_path / "sarge.img", "--swap", "256M",
                "--hostname", "sarge1", "--ip", "10.0.0.5/24", "--gateway", "10.0.0.1", "--dry-run", env=clean_env)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "release:  Debian 3.1 (sarge) [archived], init sysvinit, network ifupdown" in out
    assert "arch:     i386" in out
    assert "mirror:   http://archive.debian.org/debian" in out
    assert f"keyring:  {REMOVED_KEYRING}" in out
    assert ("run:      debootstrap --arch=i386 --variant=minbase --components=main --include=dhcp-client,ifupdown "
            f"--keyring={REMOVED_KEYRING} sarge ROOT http://archive.debian.org/debian") in out
    assert "vsyscall=emulate" in out
    assert "config:   write /etc/network/interfaces" in out and "config:   write /etc/inittab" in out
    assert "mkfs.ext3 -F -q -d ROOT" in out  # sarge's fsck predates ext4
    assert f"mkswap {tmp_path / 'sarge-swap.img'}" in out
    _nothing_made(tmp_path)


def test_no_check_gpg_is_warned_in_the_plan(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "etch", "--file", tmp_path / "e.img", "--no-check-gpg", "--dry-run",
                env=clean_env)
    assert p.returncode == 0, p.stderr
    assert "NOT CHECKING SIGNATURES" in p.stderr
    assert "keyring:  NONE" in p.stdout and "--no-check-gpg etch ROOT http://archive.debian.org/debian" in p.stdout


def test_ubuntu_archived_plan(run_cli, tmp_path, clean_env):
    key = tmp_path / "ubuntu.gpg"
    key.write_bytes(b"key")
    p = run_cli("image", "--debootstrap", "dapper", "--dir", tmp_path / "d", "--keyring", key, "--dry-run",
                env=clean_env)
    assert p.returncode == 0, p.stderr
    assert "mirror:   http://old-releases.ubuntu.com/ubuntu" in p.stdout
    assert "debootstrap --arch=" in p.stdout and f"--keyring={key} dapper ROOT" in p.stdout
    _nothing_made(tmp_path, "ubuntu.gpg")


def test_list_suites(run_cli):
    p = run_cli("image", "--list-suites")
    assert p.returncode == 0
    assert any(line.split()[:4] == ["sarge", "debian", "3.1", "archived"] for line in p.stdout.splitlines())


@pytest.mark.parametrize("args,message", [
    (["--debootstrap", "bookwrom"], "unknown suite 'bookwrom'"),
    (["--debootstrap", "bookworm", "--hostname", "bad_host!"], "hostname 'bad_host!' is not a valid hostname"),
    (["--debootstrap", "bookworm", "--ip", "10.0.0.300/24"], "not a valid IP"),
    (["--debootstrap", "bookworm", "--ip", "10.0.0.5", "--netmask", "255.0.255.0"], "netmask '255.0.255.0' is not valid"),
    (["--debootstrap", "bookworm", "--ip", "10.0.0.5/24", "--gateway", "10.9.9.1"], "not in the network"),
    (["--debootstrap", "bookworm", "--size", "lots"], "image size 'lots' is not a size"),
    (["--debootstrap", "bookworm", "--mirror", "not a url"], "is not a URL"),
    (["--debootstrap", "sarge", "--arch", "amd64"], "no amd64 packages"),
    (["--debootstrap", "bookworm", "--from-template", "x"], "give --debootstrap SUITE or --from-template NAME"),
    (["--from-template", "nosuch"], "template 'nosuch' does not exist"),
    (["--debootstrap", "bookworm", "--keyring", "/nonexistent/archive.gpg"],
     "keyring /nonexistent/archive.gpg for Debian 12 (bookworm) is missing"),
    (["--debootstrap", "bookworm", "--ip", "10.0.0.5/24", "--gateway", "10.0.0.999"],
     "gateway '10.0.0.999' is not a valid IP address"),
    (["--debootstrap", "bookworm", "--dns", "8.8.8"], "DNS server '8.8.8' is not a valid IP address"),
    (["--debootstrap", "bookworm", "--proxy", "3142"], "proxy '3142' is not a proxy URL"),
    (["--debootstrap", "bookworm", "--include", "Bad_Name"], "package name 'Bad_Name' is not valid"),
])
def test_bad_input_is_one_line(run_cli, tmp_path, clean_env, args, message):
    p = run_cli("image", *args, "--file", tmp_path / "vm.img", env=clean_env)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], p.stderr
    assert "Traceback" not in p.stderr
    _nothing_made(tmp_path)


def test_two_targets_or_none(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "a.img", "--dir", tmp_path / "d",
                env=clean_env)
    assert p.returncode != 0 and "exactly one target" in p.stderr
    p = run_cli("image", "--debootstrap", "bookworm", env=clean_env)
    assert p.returncode != 0 and "exactly one target" in p.stderr


def test_existing_target_is_refused_and_kept(run_cli, tmp_path, clean_env):
    img = tmp_path / "vm.img"
    img.write_bytes(b"precious")
    p = run_cli("image", "--debootstrap", "bookworm", "--file", img, env=clean_env)
    assert p.returncode != 0 and f"target {img} already exists" in p.stderr
    assert img.read_bytes() == b"precious"


def test_unreachable_mirror_names_the_url(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm.img",
                "--mirror", "http://127.0.0.1:9/debian", env=clean_env)
    assert p.returncode != 0
    assert "error: mirror unreachable: http://127.0.0.1:9/debian/dists/bookworm/InRelease failed" in p.stderr
    _nothing_made(tmp_path, "cache")
    assert not [p for p in Path(clean_env["XEN_PROVISION_CACHE"]).rglob("*.tar")]
    assert not list(Path("/dev/shm").glob(".xen-provision-root.*"))


def test_image_too_small_for_the_tree_is_refused_before_mkfs(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm.img", "--size", "16M",
                "--dry-run", env=clean_env)
    assert p.returncode != 0 and "too small" in p.stderr


def test_private_key_is_refused(run_cli, tmp_path, clean_env):
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm.img", "--ssh-key", key,
                "--dry-run", env=clean_env)
    assert p.returncode != 0 and "is a private key" in p.stderr


def test_hostname_taken_from_a_bad_file_name_is_refused(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm_1.img", env=clean_env)
    assert p.returncode != 0 and "error: cannot use 'vm_1' (the target's name) as the hostname" in p.stderr
    assert "--hostname" in p.stderr
    _nothing_made(tmp_path)


def test_existing_directory_target_is_refused_and_kept(run_cli, tmp_path, clean_env):
    d = tmp_path / "root"
    d.mkdir()
    (d / "keep").write_text("mine")
    p = run_cli("image", "--debootstrap", "bookworm", "--dir", d, "--no-check-gpg", env=clean_env)
    assert p.returncode != 0 and f"error: target {d} already exists" in p.stderr
    assert [x.name for x in d.iterdir()] == ["keep"]
    _nothing_made(tmp_path, "root")


def test_taken_template_name_is_refused_before_anything_is_built(run_cli, tmp_path, clean_env):
    """Not after a bootstrap: the image would be left behind without its template."""
    tpl = Path(clean_env["XEN_PROVISION_TEMPLATES"])
    tpl.mkdir()
    (tpl / "web.img").write_bytes(b"")
    (tpl / "web.json").write_text("{}")
    for extra in ([], ["--dry-run"]):
        p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm.img", "--save-template", "web",
                    "--no-check-gpg", "--mirror", "http://127.0.0.1:9/debian", *extra, env=clean_env)
        assert p.returncode != 0
        errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
        assert errors == ["error: template 'web' already exists"], p.stderr
        _nothing_made(tmp_path, "tpl")
    assert sorted(x.name for x in tpl.iterdir()) == ["web.img", "web.json"]


# ------------------------------------------------------------------ offline, and LVM templates


def _errors(p) -> list[str]:
    assert "Traceback" not in p.stderr, p.stderr
    return [line for line in p.stderr.splitlines() if line.startswith("error: ")]


def test_offline_refuses_a_base_that_is_not_cached(run_cli, tmp_path, clean_env):
    """Not the mirror error: --offline never goes near the network."""
    for extra in ([], ["--dry-run"]):
        p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm.img", "--offline",
                    "--mirror", "http://127.0.0.1:9/debian", *extra, env=clean_env)
        assert p.returncode != 0
        errors = _errors(p)
        assert len(errors) == 1 and "base is not in the cache" in errors[0], p.stderr
        assert "this run may not bootstrap (offline)" in errors[0]
        _nothing_made(tmp_path, "cache")
    assert not list(Path(clean_env["XEN_PROVISION_CACHE"]).rglob("*.tar"))


def _lv_template(clean_env, name="web", vg="xpnovg") -> Path:
    tpl = Path(clean_env["XEN_PROVISION_TEMPLATES"])
    tpl.mkdir(exist_ok=True)
    info = {"format": "xen-provision-image/1", "template": name, "store": "lv", "lv": f"{vg}/template-{name}",
            "size": 1 << 30, "suite": "bookworm", "distro": "debian", "fstype": "ext4", "target": "lv",
            "base": {"mirror": "http://deb.debian.org/debian", "components": ["main"]},
            "disks": [{"role": "root", "path": f"/dev/{vg}/template-{name}"}]}
    (tpl / f"{name}.json").write_text(json.dumps(info))
    return tpl


needs_lvm = pytest.mark.skipif(not any(os.path.exists(d + "/lvs") for d in ("/sbin", "/usr/sbin")),
                               reason="lvm2 is not installed (setup-host installs it)")


@pytest.mark.parametrize("args,message", [
    (["--file", "IMG"], "template 'web' is an LVM template (xpnovg/template-web): a new guest is a snapshot of it"),
    (["--lv", "othervg/vm2", "--snapshot-size", "64M"],
     "a snapshot lives in its origin's volume group: template 'web' is in 'xpnovg', not 'othervg'"),
    (["--lv", "xpnovg/vm2"], "a snapshot of template 'web' needs --snapshot-size (room for the guest's changes)"),
    (["--lv", "xpnovg/vm2", "--snapshot-size", "lots"], "snapshot size 'lots' is not a size"),
    (["--lv", "xpnovg/vm2", "--snapshot-size", "1M"], "snapshot size '1M' is too small"),
    (["--lv", "xpnovg/vm2", "--snapshot-size", "64M", "--size", "4G"],
     "a snapshot of template 'web' has its size (1GiB): --size does not apply"),
    (["--lv", "xpnovg/template-web", "--snapshot-size", "64M"],
     "logical volume xpnovg/template-web is template 'web' itself"),
    (["--lv", "xpnovg/snapshot1", "--snapshot-size", "64M"], "logical volume name 'snapshot1' is reserved by LVM"),
    (["--lv", "xpnovg/vm2", "--snapshot-size", "64M", "--offline"], "--offline is about the bootstrapped base"),
])
def test_bad_snapshot_guests_are_refused_before_lvm_runs(run_cli, tmp_path, clean_env, args, message):
    _lv_template(clean_env)
    args = [str(tmp_path / "vm2.img") if a == "IMG" else a for a in args]
    for extra in ([], ["--dry-run"]):
        p = run_cli("image", "--from-template", "web", *args, *extra, env=clean_env)
        assert p.returncode != 0
        errors = _errors(p)
        assert len(errors) == 1 and message in errors[0], p.stderr
        _nothing_made(tmp_path, "tpl")


@needs_lvm
def test_snapshot_of_a_template_whose_lv_is_gone(run_cli, tmp_path, clean_env):
    """lvs, for real: the VG is not there, so neither is the template's LV."""
    tpl = _lv_template(clean_env)
    p = run_cli("image", "--from-template", "web", "--lv", "xpnovg/vm2", "--snapshot-size", "64M", env=clean_env)
    assert p.returncode != 0
    assert _errors(p) == ["error: template 'web' is LV xpnovg/template-web, which does not exist"], p.stderr
    assert f"rm {tpl / 'web.json'}" in p.stderr
    _nothing_made(tmp_path, "tpl")


def test_file_templates_are_not_snapshotted(run_cli, tmp_path, clean_env):
    tpl = Path(clean_env["XEN_PROVISION_TEMPLATES"])
    tpl.mkdir()
    (tpl / "plain.img").write_bytes(b"")
    (tpl / "plain.json").write_text(json.dumps({"suite": "bookworm", "fstype": "ext4", "base": {}}))
    p = run_cli("image", "--from-template", "plain", "--lv", "vg0/vm2", "--snapshot-size", "64M", env=clean_env)
    assert _errors(p) == ["error: template 'plain' is a file template: it is cloned into a file image"], p.stderr
    p = run_cli("image", "--from-template", "plain", "--file", tmp_path / "vm2.img", "--snapshot-size", "64M",
                env=clean_env)
    assert _errors(p) == ["error: --snapshot-size is for LVM templates; 'plain' is a file template"], p.stderr
    _nothing_made(tmp_path, "tpl")


@pytest.mark.parametrize("args,message", [
    (["--file", "IMG", "--snapshot-size", "64M"], "--snapshot-size goes with --from-template (an LVM template)"),
    (["--file", "IMG", "--template-vg", "vg0"], "--template-vg goes with --save-template"),
    (["--disk", "IMG", "--save-template", "web"], "only a --file image or an --lv can be saved as a template"),
    (["--file", "IMG", "--save-template", "web", "--template-vg", "bad/vg"], "volume group name 'bad/vg' is not valid"),
    (["--file", "IMG", "--save-template", "web_tmeta", "--template-vg", "vg0"],
     "logical volume name 'template-web_tmeta' is reserved by LVM"),
    (["--file", "IMG", "--refresh", "--offline"], "--refresh bootstraps again, which --offline forbids"),
])
def test_bad_template_options_are_one_line(run_cli, tmp_path, clean_env, args, message):
    args = [str(tmp_path / "vm.img") if a == "IMG" else a for a in args]
    p = run_cli("image", "--debootstrap", "bookworm", *args, "--mirror", "http://127.0.0.1:9/debian", env=clean_env)
    assert p.returncode != 0
    errors = _errors(p)
    assert len(errors) == 1 and message in errors[0], p.stderr
    _nothing_made(tmp_path)


@needs_lvm
@pytest.mark.parametrize("target", [["--lv", "xpnovg/vm1"],
                                    ["--file", "IMG", "--save-template", "web", "--template-vg", "xpnovg"]])
def test_missing_vg_is_refused_before_the_bootstrap(run_cli, tmp_path, clean_env, target):
    """Not the mirror's error: the VG is checked (with vgs, for real) before anything is fetched."""
    target = [str(tmp_path / "vm.img") if a == "IMG" else a for a in target]
    p = run_cli("image", "--debootstrap", "bookworm", *target, "--mirror", "http://127.0.0.1:9/debian",
                env=clean_env)
    assert p.returncode != 0
    assert _errors(p) == ["error: volume group 'xpnovg' does not exist"], p.stderr
    _nothing_made(tmp_path, "cache")


def test_taken_template_name_is_refused_for_an_lv_guest_too(run_cli, tmp_path, clean_env):
    _lv_template(clean_env)
    for extra in ([], ["--dry-run"]):
        p = run_cli("image", "--debootstrap", "bookworm", "--lv", "vg0/vm1", "--save-template", "web",
                    "--mirror", "http://127.0.0.1:9/debian", *extra, env=clean_env)
        assert _errors(p) == ["error: template 'web' already exists"], p.stderr
    _nothing_made(tmp_path, "tpl")


def test_lv_guest_saved_as_an_lv_template_plan(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "bookworm", "--lv", "vg0/vm1", "--size", "1G", "--swap", "64M",
                "--save-template", "web", "--no-check-gpg", "--dry-run", env=clean_env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-8:] == [
        "target:   lvcreate -L 1GiB -n vm1 vg0",
        "target:   mkfs.ext4 -F -q -d ROOT /dev/vg0/vm1",
        "target:   lvcreate -L 64MiB -n vm1-swap vg0",
        "target:   mkswap /dev/vg0/vm1-swap",
        f"write:    {clean_env['XEN_PROVISION_CACHE']}/images/vg0/vm1.json",
        "template: lvcreate -L 1GiB -n template-web vg0",
        "template: e2image -ra /dev/vg0/vm1 /dev/vg0/template-web",
        f"template: write {clean_env['XEN_PROVISION_TEMPLATES']}/web.json",
    ]
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm1.img", "--save-template", "web",
                "--template-vg", "vg1", "--no-check-gpg", "--dry-run", env=clean_env)
    assert p.returncode == 0, p.stderr
    assert f"template: e2image -ra {tmp_path / 'vm1.img'} /dev/vg1/template-web" in p.stdout
    _nothing_made(tmp_path)


def test_snapshot_commands():
    from provision.guest import templates
    from provision.guest.build import Target

    info = {"lv": "vg0/template-web", "size": 2 << 30, "fstype": "ext4"}
    assert templates.snapshot_commands("web", info, Target.lv("vg0/vm2", None, swap="64M"), "512M") == [
        "lvcreate -y -s -L 536870912b -n vm2 vg0/template-web",
        "lvcreate -L 64MiB -n vm2-swap vg0",
        "mkswap /dev/vg0/vm2-swap",
    ]
    assert templates.snapshot_commands("web", info, Target.lv("vg0/vm3", None), 64 << 20) == [
        "lvcreate -y -s -L 67108864b -n vm3 vg0/template-web"]


def test_list_templates_says_where_each_lives(run_cli, tmp_path, clean_env):
    tpl = _lv_template(clean_env)
    (tpl / "plain.img").write_bytes(b"")
    (tpl / "plain.json").write_text(json.dumps({"suite": "bookworm"}))
    p = run_cli("image", "--list-templates", env=clean_env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"plain            file {tpl / 'plain.img'}", "web              lv xpnovg/template-web"]


@pytest.mark.parametrize("args,message", [
    (("--debootstrap", "sarge"), "Debian 3.1 (sarge)'s kernel cannot boot as a Xen guest"),
    (("--debootstrap", "dapper"), "Ubuntu 6.06 (dapper)'s kernel cannot boot as a Xen guest"),
    (("--from-template", "web"), "--guest-kernel goes with --debootstrap"),
])
def test_guest_kernel_refused_where_it_cannot_boot(run_cli, tmp_path, clean_env, args, message):
    p = run_cli("image", *args, "--guest-kernel", "--file", tmp_path / "vm.img", env=clean_env)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode != 0 and len(errors) == 1 and message in errors[0], p.stderr
    _nothing_made(tmp_path)


def test_guest_kernel_needs_a_disk(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "bookworm", "--guest-kernel", "--dir", tmp_path / "d", env=clean_env)
    assert p.returncode != 0 and "a --dir tree has none" in p.stderr
    _nothing_made(tmp_path)


def test_guest_kernel_plan_installs_the_kernel_and_pvgrubs_menu(run_cli, tmp_path, clean_env):
    p = run_cli("image", "--debootstrap", "bookworm", "--guest-kernel", "--file", tmp_path / "vm.img",
                "--dry-run", env=clean_env)
    assert p.returncode == 0, p.stderr
    assert "--include=iproute2,linux-image-amd64," in p.stdout
    assert "config:   write /boot/grub/grub.cfg" in p.stdout
    _nothing_made(tmp_path)


def test_guest_kernels_of_the_release_table():
    from provision.guest import suites

    def k(name):
        return suites.guest_kernel(suites.lookup(name), "amd64")
    assert k("bookworm") == suites.GuestKernel("linux-image-amd64", True)
    assert k("stretch") == suites.GuestKernel("linux-image-amd64", False)        # 4.9: PV only
    assert k("squeeze") == suites.GuestKernel("linux-image-2.6-amd64", False)
    assert k("noble") == suites.GuestKernel("linux-image-virtual", True)
    assert k("xenial").pvh is False
    assert suites.guest_kernel(suites.lookup("bookworm"), "i386").package == "linux-image-686-pae"


def test_grub_cfg_for_pvgrub_follows_the_kernel_links(tmp_path):
    from provision.guest import suites
    from provision.guest.configure import GuestSettings, TreeReader, guest_files

    rel = suites.lookup("bookworm")
    s = GuestSettings("vm1", guest_kernel=suites.GuestKernel("linux-image-amd64", True), root_uuid="0f6c1f43-4c0a-4c54-9a4b-0a1b2c3d4e5f")
    ops = guest_files(rel, s, TreeReader(lambda p: None, lambda p: []))
    cfg = next(op for op in ops if getattr(op, "path", "") == "/boot/grub/grub.cfg").data.decode()
    assert "linux /vmlinuz root=UUID=0f6c1f43-4c0a-4c54-9a4b-0a1b2c3d4e5f ro console=hvc0\n" in cfg
    assert "initrd /initrd.img\n" in cfg and "linux /vmlinuz.old " in cfg
    # GRUB's own parser accepts it.
    import shutil
    import subprocess
    if shutil.which("grub-script-check"):
        f = tmp_path / "grub.cfg"
        f.write_text(cfg)
        assert subprocess.run(["grub-script-check", str(f)]).returncode == 0


@pytest.mark.parametrize("argv", [
    ["image", "--dry-run", "resize", "x.img", "--size", "2G"],
    ["image", "resize", "x.img", "--size", "2G", "--dry-run"],
    ["image", "--dry-run", "update", "x.img"],
    ["image", "--dry-run", "seed", "--cloud-init", "u", "--hostname", "h", "--out", "o.iso"],
])
def test_dry_run_before_or_after_an_image_action_is_kept(argv):
    """argparse lets an action's own defaults overwrite what the image parser read: a
    --dry-run given before the action must not turn into a real run."""
    from provision.cli import build_parser

    assert build_parser().parse_args(argv).dry_run is True
    assert build_parser().parse_args([a for a in argv if a != "--dry-run"]).dry_run is False
