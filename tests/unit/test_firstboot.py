"""First-boot access and customisation (``image --user --genpass --role ...``): every
option's bad input is one line and changes nothing; the files the options write, the
shipped roles, the first-boot runner run for real in a scratch directory, and the
chroot runner's command line. No root needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.guest import firstboot
from provision.guest.configure import (
    GuestSettings,
    Mkdir,
    Symlink,
    TreeReader,
    Write,
    guest_files,
    render,
)
from provision.guest.suites import lookup

HASH = "$y$j9T$abcdefghijklmnopqrstu.$0123456789abcdefghijklmnopqrstuvwxyzABCD"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyMaterialForTestsOnly0123456789abc test@host"


@pytest.fixture
def clean_env(tmp_path):
    return {"XEN_PROVISION_CACHE": str(tmp_path / "cache"), "XEN_PROVISION_TEMPLATES": str(tmp_path / "tpl")}


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "plain").write_text("hunter2\n")
    (d / "hash").write_text(HASH + "\n")
    (d / "hash").chmod(0o600)
    (d / "badpkgs").write_text("# tools\ncurl\nVim_Bad\n")
    (d / "noexec").write_text("#!/bin/sh\ntrue\n")
    (d / "noshebang").write_text("echo hi\n")
    (d / "noshebang").chmod(0o755)
    (d / "key.pub").write_text(KEY + "\n")
    return d


@pytest.mark.parametrize("args,message", [
    (["--user", "Alice!"], "user name 'Alice!' is not valid"),
    (["--user", "root"], "user name 'root' is a system account's"),
    (["--user", "a.b"], "user name 'a.b' is not valid"),
    (["--timezone", "Mars/Olympus"], "time zone 'Mars/Olympus' is not in /usr/share/zoneinfo"),
    (["--timezone", "../../etc/passwd"], "is not in /usr/share/zoneinfo"),
    (["--user", "alice", "--password-file", "{d}/plain"], "password file {d}/plain does not hold a crypt hash"),
    (["--password-file", "{d}/hash"], "--password-file is the --user's password hash"),
    (["--packages", "{d}/badpkgs"], "packages file {d}/badpkgs line 3: 'Vim_Bad' is not a package name"),
    (["--packages", "{d}/missing"], "cannot read packages file {d}/missing"),
    (["--role", "no-such-role"], "role 'no-such-role' is neither a shipped role nor a file"),
    (["--role", "{d}/missing.sh"], "role '{d}/missing.sh' is neither a shipped role nor a file"),
    (["--role", "{d}/noexec"], "role script {d}/noexec is not executable"),
    (["--role", "{d}/noshebang"], "role script {d}/noshebang has no #! line"),
    (["--genpass", "--root-password-file", "{d}/hash"], "--genpass and --root-password-file both set root's password"),
    (["--locale", "english"], "locale 'english' is not"),
    (["--first-boot", "{d}/noshebang"], "first-boot script {d}/noshebang has no #! line"),
    (["--first-boot", "{d}/missing"], "cannot read first-boot script {d}/missing"),
])
def test_bad_first_boot_options_are_one_line(run_cli, tmp_path, clean_env, files, args, message):
    args = [a.replace("{d}", str(files)) for a in args]
    target = tmp_path / "vm.img"
    p = run_cli("image", "--debootstrap", "bookworm", "--file", target, *args, env=clean_env)
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message.replace("{d}", str(files)) in errors[0], p.stderr
    assert "Traceback" not in p.stderr
    assert "hunter2" not in p.stderr + p.stdout  # a plain password is never echoed
    assert not target.exists() and not (tmp_path / "cache").exists()


def test_plaintext_password_file_hints_mkpasswd(run_cli, tmp_path, clean_env, files):
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm.img", "--user", "alice",
                "--password-file", files / "plain", env=clean_env)
    assert "hint: " in p.stderr and "mkpasswd -m yescrypt" in p.stderr


def test_dry_run_adds_the_packages_and_shows_the_chroot_steps(run_cli, tmp_path, clean_env, files):
    (files / "pkgs").write_text("# editors\nvim-tiny  # small\n\ncurl\n")
    fb = files / "fb.sh"
    fb.write_text("#!/bin/sh\ntouch /root/done\n")
    p = run_cli("image", "--debootstrap", "bookworm", "--file", tmp_path / "vm.img", "--user", "alice",
                "--ssh-key", files / "key.pub", "--genpass", "--timezone", "Europe/Paris", "--locale", "en_GB.UTF-8",
                "--packages", files / "pkgs", "--role", "sudo-user", "--first-boot", fb, "--dry-run", env=clean_env)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    packages = next(line for line in out.splitlines() if line.startswith("packages:")).split()
    assert {"sudo", "locales", "tzdata", "curl", "vim-tiny", "openssh-server"} <= set(packages)
    for line in ["write /etc/sudoers.d/alice (mode 0440", "mkdir /home/alice/.ssh (mode 0700)",
                 "write /home/alice/.ssh/authorized_keys (mode 0600", "link  /etc/localtime -> "
                 "/usr/share/zoneinfo/Europe/Paris", "write /etc/default/locale", "write /usr/local/sbin/xp-first-boot ",
                 "link  /etc/systemd/system/multi-user.target.wants/xp-first-boot.service", "chroot:   locale-gen",
                 "role:     sudo-user (shipped)"]:
        assert line in out, line
    assert out.count("write /etc/shadow") == 1  # root's generated hash and alice's line: one write
    assert "root password" not in out  # shown only after a real run
    assert not (tmp_path / "vm.img").exists()


# ------------------------------------------------------------------ the files


def _tree(files: dict[str, str], dirs: dict[str, list[str]] | None = None) -> TreeReader:
    return TreeReader(files.get, lambda path: (dirs or {}).get(path, []))


BASE = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "/etc/group": "root:x:0:\nsudo:x:27:\nshadow:x:42:\nusers:x:100:\nnogroup:x:65534:\n",
    "/etc/shadow": "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
    "/etc/gshadow": "root:*::\nsudo:*::\nshadow:*::\n",
    "/etc/skel/.profile": "# profile\n",
    "/etc/locale.gen": "# en_GB ISO-8859-1\n# en_GB.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n",
    "/etc/hosts": "",
}


def _settings(fb: firstboot.FirstBoot, **kw) -> GuestSettings:
    return GuestSettings("vm1.example.org", ssh_keys=(KEY,), firstboot=fb, **kw)


def _writes(ops) -> dict[str, Write]:
    out = {}
    for op in ops:
        if isinstance(op, Write):
            assert op.path not in out, f"{op.path} written twice"
            out[op.path] = op
    return out


def test_user_lines_home_keys_and_sudoers():
    fb = firstboot.FirstBoot(user="alice", user_hash=HASH)
    ops = guest_files(lookup("bookworm"), _settings(fb, root_hash="$6$salt$roothash"),
                      _tree(BASE, {"/etc/skel": [".profile"]}))
    w = _writes(ops)
    assert w["/etc/passwd"].data.decode().endswith("alice:x:1000:1000:alice,,,:/home/alice:/bin/bash\n")
    group = w["/etc/group"].data.decode()
    assert "sudo:x:27:alice\n" in group and group.endswith("alice:x:1000:\n")
    shadow = w["/etc/shadow"].data.decode()
    assert shadow.startswith("root:$6$salt$roothash:") and f"\nalice:{HASH}:" in shadow
    assert (w["/etc/shadow"].mode, w["/etc/shadow"].gid) == (0o640, 42)
    assert "sudo:*::alice\n" in w["/etc/gshadow"].data.decode()
    assert w["/etc/sudoers.d/alice"].data.decode().endswith("alice ALL=(ALL:ALL) NOPASSWD: ALL\n")
    assert w["/etc/sudoers.d/alice"].mode == 0o440
    keys = w["/home/alice/.ssh/authorized_keys"]
    assert keys.data.decode() == KEY + "\n" and (keys.mode, keys.uid, keys.gid) == (0o600, 1000, 1000)
    assert (w["/home/alice/.profile"].uid, w["/home/alice/.profile"].data) == (1000, b"# profile\n")
    assert Mkdir("/home/alice", 0o700, 1000, 1000) in ops and Mkdir("/home/alice/.ssh", 0o700, 1000, 1000) in ops


def test_user_without_password_may_use_keys_only():
    ops = guest_files(lookup("bookworm"), _settings(firstboot.FirstBoot(user="bob")), _tree(BASE))
    assert "\nbob:*:" in _writes(ops)["/etc/shadow"].data.decode()  # '*': no password, yet not locked


def test_user_taken_in_the_image_is_refused():
    tree = _tree({**BASE, "/etc/passwd": BASE["/etc/passwd"] + "alice:x:1000:1000::/home/alice:/bin/sh\n"})
    with pytest.raises(ProvisionError, match="user or group 'alice' already exists in the image"):
        guest_files(lookup("bookworm"), _settings(firstboot.FirstBoot(user="alice")), tree)


def test_timezone_locale_and_hosts(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdom0.example.org dom0\n::1 localhost ip6-localhost\n"
                     "ff02::1 ip6-allnodes\n192.0.2.7\tnas.example.org nas # the NAS\n"
                     "192.0.2.10\tvm1.example.org vm1\n2001:db8::7 nas6\n")
    entries = firstboot.host_entries(str(hosts))
    assert entries == ("192.0.2.7\tnas.example.org nas", "192.0.2.10\tvm1.example.org vm1", "2001:db8::7\tnas6")
    fb = firstboot.FirstBoot(hosts=entries, timezone="Europe/Paris", locale="en_GB.UTF-8", charset="UTF-8")
    ops = guest_files(lookup("bookworm"), _settings(fb), _tree(BASE))
    w = _writes(ops)
    text = w["/etc/hosts"].data.decode()
    assert "192.0.2.7\tnas.example.org nas\n" in text and "2001:db8::7\tnas6\n" in text
    assert "vm1.example.org vm1\n" not in text.split("--copy-hosts")[1]  # the guest's own line stays ours
    assert w["/etc/timezone"].data == b"Europe/Paris\n"
    assert Symlink("/etc/localtime", "/usr/share/zoneinfo/Europe/Paris") in ops
    assert w["/etc/locale.gen"].data.decode() == "# en_GB ISO-8859-1\nen_GB.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n"
    assert w["/etc/default/locale"].data == b"LANG=en_GB.UTF-8\n"


def test_locale_and_timezone_checks(tmp_path):
    supported = tmp_path / "SUPPORTED"
    supported.write_text("en_GB.UTF-8 UTF-8\nen_GB ISO-8859-1\n")
    assert firstboot.locale("en_GB", str(supported)) == ("en_GB", "ISO-8859-1")
    with pytest.raises(ProvisionError, match="not a supported locale"):
        firstboot.locale("xx_XX.UTF-8", str(supported))
    assert firstboot.locale("de_DE.UTF-8", str(tmp_path / "none")) == ("de_DE.UTF-8", "UTF-8")
    zi = tmp_path / "zoneinfo"
    (zi / "Europe").mkdir(parents=True)
    (zi / "Europe/Paris").write_bytes(b"TZif")
    assert firstboot.timezone("Europe/Paris", str(zi)) == "Europe/Paris"
    for bad in ("Europe", "Europe/Nowhere", "/etc/passwd", "../zoneinfo/Europe/Paris"):
        with pytest.raises(ProvisionError):
            firstboot.timezone(bad, str(zi))


def test_packages_file_allows_comments(tmp_path):
    f = tmp_path / "p"
    f.write_text("# base\ncurl # fetch\n\nvim-tiny libc6-dev\ncurl\n")
    assert firstboot.read_packages(f) == ("curl", "libc6-dev", "vim-tiny")
    f.write_text("# nothing\n")
    with pytest.raises(ProvisionError, match="names no package"):
        firstboot.read_packages(f)


def test_template_packages_are_what_the_template_lacks():
    fb = firstboot.FirstBoot(user="a", locale="en_GB.UTF-8", charset="UTF-8", timezone="Europe/Paris",
                             packages=("curl",))
    bare = _tree({}, {"/usr/bin": ["apt-get"], "/usr/share/zoneinfo/Europe": []})
    assert firstboot.template_packages(fb, bare) == ("curl", "locales", "sudo", "tzdata")
    full = _tree({}, {"/usr/bin": ["sudo"], "/usr/sbin": ["locale-gen"], "/usr/share/zoneinfo/Europe": ["Paris"]})
    assert firstboot.template_packages(fb, full) == ("curl",)


def test_generated_password_is_hashed_and_never_repr():
    password, hashed = firstboot.generate_password()
    assert len(password) == 20 and hashed.startswith("$6$") and password not in hashed
    old_password, old = firstboot.generate_password(old=True)
    assert old.startswith("$1$")
    fb = firstboot.FirstBoot(generated_password=password)
    assert password not in repr(fb) and password not in repr(fb.public())
    assert fb.public()["root_password_generated"] is True


# ------------------------------------------------------------------ first boot


def test_first_boot_unit_systemd_and_rc_links_for_sysvinit():
    fb = firstboot.FirstBoot(first_boot=b"#!/bin/sh\necho hi\n")
    ops = guest_files(lookup("bookworm"), _settings(fb), _tree(BASE))
    w = _writes(ops)
    assert w["/usr/local/sbin/xp-first-boot"].mode == 0o755
    unit = w["/etc/systemd/system/xp-first-boot.service"].data.decode()
    assert "ConditionPathExists=!/var/lib/xen-provision/first-boot.done" in unit
    assert "ExecStart=/usr/local/sbin/xp-first-boot-run start" in unit and "Type=oneshot" in unit
    assert Symlink("/etc/systemd/system/multi-user.target.wants/xp-first-boot.service",
                   "/etc/systemd/system/xp-first-boot.service") in ops
    old = guest_files(lookup("wheezy"), _settings(fb), _tree({**BASE, "/etc/inittab": "id:2:initdefault:\n"}))
    assert Symlink("/etc/rc2.d/S99xp-first-boot", "/usr/local/sbin/xp-first-boot-run") in old
    assert not any("systemd/system/xp-first-boot" in op.path for op in old)


@pytest.mark.parametrize("systemd", [True, False])
def test_first_boot_runner_runs_once_logs_marks_and_removes_itself(tmp_path, systemd):
    """The runner, rendered with paths in a scratch directory, run twice by sh."""
    p = {k: tmp_path / k for k in ("script", "runner", "mark", "log", "unit", "wants", "rc2", "rc3")}
    counter = tmp_path / "count"
    p["script"].write_text(f"#!/bin/sh\necho ran >>{counter}\necho to the log\nexit 4\n")
    p["script"].chmod(0o755)
    text = render("first-boot-run.sh.j2", systemd=systemd, mark=p["mark"], log=p["log"], script=p["script"],
                  runner=p["runner"], unit=p["unit"], rc_links=(p["rc2"], p["rc3"]))
    text = text.replace("/etc/systemd/system/multi-user.target.wants/xp-first-boot.service", str(p["wants"]))
    p["runner"].write_text(text)
    p["runner"].chmod(0o755)
    for f in ("unit", "wants", "rc2", "rc3"):
        p[f].write_text("")
    first = subprocess.run(["sh", p["runner"], "start"], capture_output=True, text=True)
    assert first.returncode == 4  # the script's status, for systemctl status
    assert counter.read_text() == "ran\n"
    assert p["mark"].read_text().startswith("exit 4 ")
    log = p["log"].read_text()
    assert "xp-first-boot: start" in log and "to the log" in log and "xp-first-boot: exit 4" in log
    assert not p["script"].exists() and not p["runner"].exists()
    gone = ("unit", "wants") if systemd else ("rc2", "rc3")
    assert not any(p[f].exists() for f in gone)
    p["runner"].write_text(text)  # even if it came back, it would not run the script again
    p["script"].write_text(f"#!/bin/sh\necho ran >>{counter}\n")
    p["script"].chmod(0o755)
    assert subprocess.run(["sh", p["runner"], "start"]).returncode == 0
    assert counter.read_text() == "ran\n"


# ------------------------------------------------------------------ roles and the chroot


def test_shipped_roles_are_executable_shell_scripts():
    names = firstboot.shipped_roles()
    assert names == ["serial-console", "sudo-user", "unattended-upgrades"]
    for name in names:
        path = firstboot.ROLES_DIR / name
        assert os.access(path, os.X_OK) and path.read_bytes().startswith(b"#!/bin/sh\n")
        assert subprocess.run(["sh", "-n", path]).returncode == 0, name
        assert firstboot.role(name).source == "shipped"


def test_role_by_path(tmp_path):
    script = tmp_path / "web"
    script.write_text("#!/bin/sh\napt-get install -y nginx\n")
    script.chmod(0o755)
    r = firstboot.role(str(script))
    assert (r.name, r.source, r.script) == ("web", str(script), script.read_bytes())


def test_role_environment():
    from provision.guest.configure import Network

    fb = firstboot.FirstBoot(user="alice", timezone="UTC")
    s = GuestSettings("vm1.example.org", Network.make(ip="192.0.2.10/24", gateway="192.0.2.1", dns=["192.0.2.53"]),
                      firstboot=fb)
    env = firstboot.role_env(lookup("bookworm"), s, "/srv/vm1.img", "web")
    assert env == {"XP_ROLE": "web", "XP_HOSTNAME": "vm1.example.org", "XP_SUITE": "bookworm", "XP_DISTRO": "debian",
                   "XP_INIT": "systemd", "XP_TARGET": "/srv/vm1.img", "XP_IP": "192.0.2.10", "XP_PREFIX": "24",
                   "XP_GATEWAY": "192.0.2.1", "XP_DNS": "192.0.2.53", "XP_USER": "alice", "XP_TIMEZONE": "UTC",
                   "XP_LOCALE": ""}


def test_chroot_command_line():
    from provision.guest.chroot import Chroot

    argv = Chroot(Path("/mnt/x")).argv(["locale-gen"], {"XP_A": "1"}, network=True)
    assert argv[:7] == ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--"]
    assert argv[7:9] == ["sh", "-c"] and 'exec chroot "$root" /usr/bin/env -i "$@"' in argv[9]
    assert argv[10:13] == ["xen-provision-chroot", "/mnt/x", "1"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in argv
    assert "DEBIAN_FRONTEND=noninteractive" in argv and argv[-2:] == ["XP_A=1", "locale-gen"]
