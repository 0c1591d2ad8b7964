"""First-boot access and customisation for real: images of the host's suite from the
host's mirror with --user, --genpass, --timezone, --locale, --copy-hosts, roles and a
first-boot script, read back with debugfs (no mount); a failing role leaves nothing;
the same from a saved template (apt in the chroot) and into a partitioned disk."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_debootstrap import (
    KEY,
    SBIN_PATH,
    cli,
    debugfs,
    debugfs_cat,
    fsck_clean,
    host_suite,
)

pytestmark = pytest.mark.integration

ENV_ROLE = """#!/bin/sh
set -e
env | grep '^XP_' | sort >/root/role-env
rc=0; /usr/sbin/policy-rc.d || rc=$?
echo "policy-rc.d exit $rc" >>/root/role-env
echo "env-role: done for $XP_HOSTNAME"
"""
BAD_ROLE = """#!/bin/sh
echo "bad-role: cannot go on for $XP_HOSTNAME"
exit 3
"""
FIRST_BOOT = "#!/bin/sh\necho first boot of $(hostname) >>/root/first-boot.txt\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (mount, chroot, loop devices); CI runs as root")
    d = tmp_path_factory.mktemp("firstboot")
    (d / "key.pub").write_text(KEY + "\n")
    for name, text in (("env-role", ENV_ROLE), ("bad-role", BAD_ROLE), ("first-boot.sh", FIRST_BOOT)):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    return d


@pytest.fixture(scope="module")
def env(work):
    return {"XEN_PROVISION_TEMPLATES": str(work / "templates")}


def access(work, user="alice"):
    return ["--user", user, "--ssh-key", work / "key.pub", "--genpass", "--timezone", "Europe/Paris",
            "--locale", "en_GB.UTF-8", "--copy-hosts", "--role", "sudo-user", "--role", work / "env-role",
            "--first-boot", work / "first-boot.sh"]


def _password(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "shown once" in line]
    assert len(lines) == 1, stdout
    return lines[0].rsplit(": ", 1)[1]


def _root_hash_matches(img, password: str) -> None:
    shadow = debugfs_cat(img, "/etc/shadow")
    root = next(line for line in shadow.splitlines() if line.startswith("root:")).split(":")[1]
    assert root.startswith("$6$")
    salt = root.split("$")[2]
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password + "\n",
                           capture_output=True, text=True).stdout.strip()
    assert again == root


def _locales(img, tmp: Path) -> str:
    archive = tmp / "locale-archive"
    subprocess.run(["debugfs", "-R", f"dump /usr/lib/locale/locale-archive {archive}", str(img)],
                   capture_output=True, env={**os.environ, "PATH": SBIN_PATH}, check=True)
    return subprocess.run(["localedef", "--list-archive", str(archive)], capture_output=True, text=True).stdout


def check_access(img, work, user, hostname, password) -> None:
    """What every image made with access(work, user) holds."""
    passwd = debugfs_cat(img, "/etc/passwd")
    line = next(x for x in passwd.splitlines() if x.startswith(f"{user}:"))
    uid = line.split(":")[2]
    assert line == f"{user}:x:{uid}:{uid}:{user},,,:/home/{user}:/bin/bash"
    assert f"\n{user}:*:" in "\n" + debugfs_cat(img, "/etc/shadow")
    sudo = next(x for x in debugfs_cat(img, "/etc/group").splitlines() if x.startswith("sudo:"))
    assert user in sudo.split(":")[3].split(",")
    assert debugfs_cat(img, f"/etc/sudoers.d/{user}").endswith(f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    assert "Mode:  0440" in debugfs(img, f"stat /etc/sudoers.d/{user}")
    assert debugfs_cat(img, f"/home/{user}/.ssh/authorized_keys") == KEY + "\n"
    st = debugfs(img, f"stat /home/{user}/.ssh/authorized_keys")
    assert "Mode:  0600" in st and f"User:  {uid}" in st
    assert f"User:  {uid}" in debugfs(img, f"stat /home/{user}")
    assert "sudo" in debugfs(img, "ls /usr/bin")
    _root_hash_matches(img, password)
    assert debugfs_cat(img, "/etc/timezone") == "Europe/Paris\n"
    assert 'Fast link dest: "/usr/share/zoneinfo/Europe/Paris"' in debugfs(img, "stat /etc/localtime")
    assert "Paris" in debugfs(img, "ls /usr/share/zoneinfo/Europe")
    assert debugfs_cat(img, "/etc/default/locale") == "LANG=en_GB.UTF-8\n"
    assert "\nen_GB.UTF-8 UTF-8\n" in "\n" + debugfs_cat(img, "/etc/locale.gen")
    assert "en_GB.utf8" in _locales(img, work)
    from provision.guest.firstboot import host_entries

    hosts = debugfs_cat(img, "/etc/hosts")
    for entry in host_entries():
        if hostname not in entry.split()[1:]:
            assert entry + "\n" in hosts
    # The first-boot script, its runner and its enabled one-shot unit.
    assert debugfs_cat(img, "/usr/local/sbin/xp-first-boot") == FIRST_BOOT
    assert "Mode:  0755" in debugfs(img, "stat /usr/local/sbin/xp-first-boot-run")
    assert "ExecStart=/usr/local/sbin/xp-first-boot-run start" in debugfs_cat(
        img, "/etc/systemd/system/xp-first-boot.service")
    assert "xp-first-boot.service" in debugfs(img, "ls /etc/systemd/system/multi-user.target.wants")
    assert debugfs_cat(img, "/var/lib/xen-provision/first-boot.done") is None
    # The roles ran in the chroot, with their environment, and left no trace of the chroot.
    role_env = debugfs_cat(img, "/root/role-env")
    assert f"XP_HOSTNAME={hostname}\n" in role_env and f"XP_USER={user}\n" in role_env
    assert f"XP_SUITE={host_suite()}\n" in role_env and f"XP_TARGET={img}\n" in role_env
    assert "XP_TIMEZONE=Europe/Paris\n" in role_env and "policy-rc.d exit 101" in role_env
    assert debugfs_cat(img, "/usr/sbin/policy-rc.d") is None
    assert debugfs_cat(img, "/tmp/xen-provision-role") is None
    assert "self" not in debugfs(img, "ls /proc")  # nothing stayed mounted in the image
    fsck_clean(img)
    info = json.loads(Path(f"{img}.json").read_text())
    fb = info["guest"]["firstboot"]
    assert fb["user"] == user and fb["roles"] == ["sudo-user", "env-role"] and fb["first_boot"] is True
    assert info["guest"]["root_password"] is True and password not in json.dumps(info)


def _nothing_left(work, name) -> None:
    left = [p.name for p in work.iterdir() if name in p.name]
    assert left == [], left
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "xen-provision-mnt" not in mounts
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, env={**os.environ, "PATH": SBIN_PATH})
    assert name not in loops.stdout


def test_image_with_user_password_timezone_locale_roles_first_boot(work, env):
    img = work / "fb1.img"
    p, took = cli("--debootstrap", host_suite(), "--file", img, "--hostname", "fb1", *access(work), env=env)
    assert p.returncode == 0, p.stderr
    print(f"image with first-boot options: {took:.1f}s")
    assert "sudo-user: alice may use sudo without a password" in p.stderr
    assert "env-role: done for fb1" in p.stderr and "env-role" not in p.stdout  # role output on stderr
    check_access(img, work, "alice", "fb1", _password(p.stdout))


def test_failing_role_leaves_no_image(work, env):
    img = work / "fbbad.img"
    p, _ = cli("--debootstrap", host_suite(), "--file", img, *access(work, "dave"), "--role", work / "bad-role",
               env=env)
    assert p.returncode != 0
    assert "bad-role: cannot go on for fbbad" in p.stderr  # its output shown
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: role bad-role failed (exit 3); the image was not made"], p.stderr
    assert "shown once" not in p.stdout  # no password for an image that is not there
    _nothing_left(work, "fbbad")


@pytest.fixture(scope="module")
def template(work, env):
    """A plain template (no sudo, no locales): the options' packages come from apt."""
    p, _ = cli("--debootstrap", host_suite(), "--file", work / "plain.img", "--ssh-key", work / "key.pub",
               "--save-template", "fbplain", env=env)
    assert p.returncode == 0, p.stderr
    return "fbplain"


def test_from_template_with_the_same_options(work, env, template):
    img = work / "fbt1.img"
    p, took = cli("--from-template", template, "--file", img, "--hostname", "fbt1", *access(work, "bob"), env=env)
    assert p.returncode == 0, p.stderr
    print(f"from a template, with apt in the chroot: {took:.1f}s")
    assert "installing locales sudo in the guest" in p.stderr
    check_access(img, work, "bob", "fbt1", _password(p.stdout))


def test_from_template_failing_role_leaves_no_image(work, env, template):
    p, _ = cli("--from-template", template, "--file", work / "fbtbad.img", "--role", work / "bad-role", env=env)
    assert p.returncode != 0 and "bad-role: cannot go on for fbtbad" in p.stderr
    assert "error: role bad-role failed (exit 3)" in p.stderr
    _nothing_left(work, "fbtbad")
    assert (work / "templates" / "fbplain.img").is_file()  # the template is untouched


def test_partitioned_disk_gets_its_roles_in_partition_one(work, env):
    img = work / "fbdisk.img"
    p, _ = cli("--debootstrap", host_suite(), "--disk", img, "--swap", "64M", "--hostname", "fbdisk",
               "--role", work / "env-role", "--role", "serial-console", "--timezone", "UTC", env=env)
    assert p.returncode == 0, p.stderr
    fdisk = subprocess.run(["sfdisk", "-J", str(img)], capture_output=True, text=True,
                           env={**os.environ, "PATH": SBIN_PATH}).stdout
    start = json.loads(fdisk)["partitiontable"]["partitions"][0]["start"] * 512
    role_env = debugfs_cat(img, "/root/role-env", offset=start)
    assert "XP_HOSTNAME=fbdisk\n" in role_env and "XP_TIMEZONE=UTC\n" in role_env
    assert "SYSTEMD_PAGER=cat" in debugfs_cat(img, "/etc/profile.d/xp-serial-console.sh", offset=start)
    assert debugfs_cat(img, "/usr/sbin/policy-rc.d", offset=start) is None
