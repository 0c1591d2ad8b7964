"""GRUB's own grub-mkconfig, run against a test root, picks up our grub.d script and drop-in.

grub-mkconfig reads /etc/grub.d and /etc/default/grub from fixed paths, so it runs in a
private mount namespace (unshare) where the test root's /etc/grub.d, /etc/default and
/boot are bind-mounted over the host's: the host's own files are never touched (checked).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_storage_devices import mounts_matching

pytestmark = pytest.mark.integration

GRUB_SCRIPTS = ("00_header", "10_linux", "20_linux_xen", "40_custom", "41_custom")
ARGS = ["--dom0-mem", "1G,max:1G", "--com1", "115200,8n1", "--console", "com1,vga",
        "--sched", "credit", "--root-device", "/dev/sda4", "--noreboot"]


def host_state() -> str:
    """A fingerprint of the host's GRUB files that the test must leave alone."""
    h = hashlib.sha256()
    for base in (Path("/etc/grub.d"), Path("/etc/default"), Path("/boot")):
        for p in sorted(base.rglob("*")) if base.exists() else []:
            h.update(str(p).encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


def grub_mkconfig_in(root: Path) -> str:
    """Run the real grub-mkconfig with root's /etc/grub.d, /etc/default and /boot."""
    script = root.parent / "mkconfig.sh"
    script.write_text(
        "set -e\n"
        f"mount --bind '{root}/etc/grub.d' /etc/grub.d\n"
        f"mount --bind '{root}/etc/default' /etc/default\n"
        f"mount --bind '{root}/boot' /boot\n"
        "grub-mkconfig -o /boot/grub/grub.cfg\n"
    )
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", str(script)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (root / "boot/grub/grub.cfg").read_text()


@pytest.fixture
def test_root(tmp_path, root_required) -> Path:
    for tool in ("grub-mkconfig", "unshare", "grub-probe"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            pytest.fail(f"{tool} is missing: ./setup-host installs grub2-common")
    root = tmp_path / "root"
    (root / "boot/grub/i386-pc").mkdir(parents=True)
    (root / "boot/grub/i386-pc/multiboot2.mod").write_bytes(b"\x7fELF")
    (root / "boot/xen-4.17.3.gz").write_bytes(gzip.compress(b"xen"))
    (root / "boot/xen-4.17.3.config").write_text("CONFIG_SCHED_CREDIT=y\nCONFIG_SCHED_CREDIT2=y\n")
    (root / "boot/vmlinuz-6.1.0-xen0").write_bytes(b"kernel")
    (root / "etc/grub.d").mkdir(parents=True)
    for name in GRUB_SCRIPTS:
        shutil.copy2(Path("/etc/grub.d") / name, root / "etc/grub.d" / name)
    (root / "etc/default").mkdir()
    (root / "etc/default/grub").write_text(
        'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_DISTRIBUTOR="Test"\nGRUB_CMDLINE_LINUX=""\n')
    return root


def test_grub_mkconfig_includes_our_entry_and_default(test_root, run_cli):
    before = host_state()
    proc = run_cli("grub", "install", "--root", test_root, "--default", "--no-getty", *ARGS)
    assert proc.returncode == 0, proc.stderr
    cfg = grub_mkconfig_in(test_root)

    assert "### BEGIN /etc/grub.d/42_xen_provision ###" in cfg
    assert "menuentry 'Xen 4.17.3 / Linux 6.1.0-xen0' --class xen --class gnu-linux --class os --id xen-provision-4.17.3-6.1.0-xen0 {" in cfg
    assert ("\tmultiboot2 /boot/xen-4.17.3.gz dom0_mem=1G,max:1G com1=115200,8n1 console=com1,vga "
            "sched=credit noreboot\n") in cfg
    assert "\tmodule2 /boot/vmlinuz-6.1.0-xen0 root=/dev/sda4 ro console=hvc0\n" in cfg
    # --default went through GRUB_DEFAULT in our drop-in, read by grub-mkconfig itself.
    assert 'set default="xen-provision-4.17.3-6.1.0-xen0"' in cfg
    # GRUB's own scripts still ran and are unchanged (no renaming, no diversion).
    assert "### BEGIN /etc/grub.d/10_linux ###" in cfg and "### BEGIN /etc/grub.d/41_custom ###" in cfg
    for name in GRUB_SCRIPTS:
        assert (test_root / "etc/grub.d" / name).read_bytes() == (Path("/etc/grub.d") / name).read_bytes()
    check = subprocess.run(["grub-script-check", str(test_root / "boot/grub/grub.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    # Without --default the drop-in goes and GRUB's own default (0) is back.
    assert run_cli("grub", "install", "--root", test_root, "--no-getty", *ARGS).returncode == 0
    cfg = grub_mkconfig_in(test_root)
    assert 'set default="0"' in cfg and "xen-provision-4.17.3-6.1.0-xen0" in cfg

    # Removing takes our entry out of the next grub.cfg.
    assert run_cli("grub", "remove", "--root", test_root).returncode == 0
    cfg = grub_mkconfig_in(test_root)
    assert "42_xen_provision" not in cfg and "xen-provision" not in cfg
    assert host_state() == before


def test_live_install_runs_update_grub(test_root, tmp_path):
    """`--root /` (a live host) runs update-grub itself. It runs in a private mount
    namespace whose /etc/grub.d, /etc/default and /boot are the test root's."""
    before = host_state()
    script = tmp_path / "live.sh"
    script.write_text(
        "set -e\n"
        f"mount --bind '{test_root}/etc/grub.d' /etc/grub.d\n"
        f"mount --bind '{test_root}/etc/default' /etc/default\n"
        f"mount --bind '{test_root}/boot' /boot\n"
        f'"$@"\n'
    )
    provision = [sys.executable, "-m", "provision", "grub"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    def live(*args):
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", str(script), *args],
                              capture_output=True, text=True, timeout=300, env=env)

    proc = live(*provision, "install", "--no-getty", "--default", *ARGS)
    assert proc.returncode == 0, proc.stderr
    cfg = (test_root / "boot/grub/grub.cfg").read_text()  # written by update-grub, not by us
    assert "### BEGIN /etc/grub.d/42_xen_provision ###" in cfg
    assert 'set default="xen-provision-4.17.3-6.1.0-xen0"' in cfg

    # --no-update prints the exact command and leaves grub.cfg alone.
    proc = live(*provision, "install", "--no-getty", "--no-update", *ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "regenerate grub.cfg: update-grub" in proc.stderr
    assert (test_root / "boot/grub/grub.cfg").read_text() == cfg

    # Switching to custom.cfg takes the script away, so update-grub must run again:
    # otherwise grub.cfg would keep a second, stale copy of the entry.
    proc = live(*provision, "install", "--no-getty", "--format", "custom", *ARGS)
    assert proc.returncode == 0, proc.stderr
    cfg = (test_root / "boot/grub/grub.cfg").read_text()
    assert "42_xen_provision" not in cfg and "xen-provision" not in cfg
    assert "source ${config_directory}/custom.cfg" in cfg  # 41_custom, which reads our block at boot
    assert "multiboot2 /boot/xen-4.17.3.gz" in (test_root / "boot/grub/custom.cfg").read_text()

    proc = live(*provision, "remove", "--no-getty")
    assert proc.returncode == 0, proc.stderr
    assert "xen-provision" not in (test_root / "boot/grub/grub.cfg").read_text()
    assert host_state() == before


@pytest.fixture(scope="module")
def system_root(tmp_path_factory):
    """A real Debian root (the host's suite, from the host's mirror, via image --debootstrap)
    with its own GRUB: grub2-common's update-grub and grub-mkconfig."""
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, bind mounts); CI runs as root")
    from tests.integration.test_debootstrap import cli, host_suite
    root = tmp_path_factory.mktemp("grubsys") / "root"
    p, _ = cli("--debootstrap", host_suite(), "--dir", root, "--hostname", "grubsys",
               "--include", "grub2-common,grub-pc-bin", "--no-boot-packages")
    assert p.returncode == 0, p.stderr
    assert (root / "usr/sbin/update-grub").exists()
    (root / "boot/grub").mkdir(parents=True, exist_ok=True)
    (root / "boot/xen-4.17.3.gz").write_bytes(gzip.compress(b"xen"))
    (root / "boot/xen-4.17.3.config").write_text("CONFIG_SCHED_CREDIT=y\nCONFIG_SCHED_CREDIT2=y\n")
    (root / "boot/vmlinuz-6.1.0-xen0").write_bytes(b"kernel")
    return root


def test_offline_root_runs_its_own_update_grub(system_root, run_cli):
    """--root DIR of a whole system: its own update-grub runs in a chroot (with /dev,
    /proc and /sys bind-mounted in a private namespace), so grub.cfg holds our entry;
    no mount is left behind and the host's GRUB files are untouched."""
    root = system_root
    before = host_state()
    proc = run_cli("grub", "install", "--root", root, "--default", "--no-getty", *ARGS)
    assert proc.returncode == 0, proc.stderr
    cfg = (root / "boot/grub/grub.cfg").read_text()   # written by the root's update-grub
    assert "### BEGIN /etc/grub.d/42_xen_provision ###" in cfg
    assert "\tmultiboot2 /boot/xen-4.17.3.gz dom0_mem=1G,max:1G com1=115200,8n1 console=com1,vga " in cfg
    assert 'set default="xen-provision-4.17.3-6.1.0-xen0"' in cfg
    assert mounts_matching(str(root)) == []
    assert host_state() == before
    check = subprocess.run(["grub-script-check", str(root / "boot/grub/grub.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    # --no-update prints the exact command (runnable as shown) and leaves grub.cfg alone.
    proc = run_cli("grub", "install", "--root", root, "--no-getty", "--no-update", *ARGS)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if "regenerate grub.cfg: " in ln)
    assert "unshare --mount --propagation private sh -c " in line and line.endswith(f"{root} /usr/sbin/update-grub")
    assert (root / "boot/grub/grub.cfg").read_text() == cfg
    # Running the printed command does what install would have done.
    cmd = line.split("regenerate grub.cfg: ", 1)[1]
    assert subprocess.run(cmd, shell=True, capture_output=True).returncode == 0
    assert 'set default="0"' in (root / "boot/grub/grub.cfg").read_text()
    assert mounts_matching(str(root)) == []

    # The root's update-grub failing (here: no /proc to mount over) is one line, and our
    # files are taken back.
    snapshot = {p: p.read_bytes() for p in (root / "etc").rglob("*") if p.is_file() and not p.is_symlink()}
    (root / "proc").rename(root / "proc.away")
    try:
        proc = run_cli("grub", "install", "--root", root, "--default", "--no-getty", *ARGS)
    finally:
        (root / "proc.away").rename(root / "proc")
    assert proc.returncode != 0 and "/proc" in proc.stderr
    assert {p: p.read_bytes() for p in (root / "etc").rglob("*") if p.is_file() and not p.is_symlink()} == snapshot


def test_failed_update_grub_is_one_line_and_rolled_back(system_root, run_cli):
    """The root's own update-grub failing (a script in grub.d that prints a broken menu,
    so grub-mkconfig's syntax check refuses it) was the tool's own message plus a long
    unshare command line, and left grub.cfg.new behind. Now: one line saying the boot
    configuration was rolled back; our files back as they were, no grub.cfg.new."""
    root = system_root
    assert run_cli("grub", "remove", "--root", root, "--no-getty").returncode == 0  # whatever ran before
    broken = root / "etc/grub.d/43_broken"
    broken.write_text("#!/bin/sh\necho 'menuentry \"broken\" {'\n")
    broken.chmod(0o755)
    try:
        snapshot = {p: p.read_bytes() for p in (root / "etc").rglob("*") if p.is_file() and not p.is_symlink()}
        cfg = (root / "boot/grub/grub.cfg").read_bytes() if (root / "boot/grub/grub.cfg").exists() else None
        proc = run_cli("grub", "install", "--root", root, "--default", "--no-getty", *ARGS)
        assert proc.returncode != 0
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, proc.stderr
        assert errors[0].startswith("error: update-grub failed, so the boot configuration was rolled back "
                                    "(grub.cfg is unchanged): "), proc.stderr
        assert "unshare" not in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[0] == errors[0], proc.stderr  # nothing before it
        assert not (root / "boot/grub/grub.cfg.new").exists()
        assert {p: p.read_bytes() for p in (root / "etc").rglob("*") if p.is_file() and not p.is_symlink()} == snapshot
        assert ((root / "boot/grub/grub.cfg").read_bytes() if (root / "boot/grub/grub.cfg").exists() else None) == cfg
        assert mounts_matching(str(root)) == []
    finally:
        broken.unlink()
