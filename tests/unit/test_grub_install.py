"""Installing into offline roots: managed blocks, backups, idempotency, --default, getty, bad input."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.grub.install import BEGIN, END, merge_block

USER_CUSTOM = b"# my own entries\nmenuentry 'Memtest' {\n\tlinux16 /boot/memtest86+.bin\n}\n"
XEN = "/boot/xen-4.17.3.gz"
KERNEL = "/boot/vmlinuz-6.1.0-xen0"
ARGS = ["--dom0-mem", "1G", "--com1", "115200,8n1", "--sched", "credit2", "--root-device", "/dev/sda4"]


@pytest.fixture
def target(tmp_path) -> Path:
    """An offline root as `doit install` + debootstrap leave it: /boot staged, systemd, securetty."""
    root = tmp_path / "root"
    boot = root / "boot"
    (boot / "grub" / "i386-pc").mkdir(parents=True)
    (boot / "grub" / "i386-pc" / "multiboot2.mod").write_bytes(b"\x7fELF")
    (boot / "xen-4.17.3.gz").write_bytes(gzip.compress(b"xen"))
    (boot / "xen.gz").symlink_to("xen-4.17.3.gz")
    (boot / "xen-4.17.3.config").write_text("CONFIG_SCHED_CREDIT=y\nCONFIG_SCHED_CREDIT2=y\n")
    (boot / "vmlinuz-6.1.0-xen0").write_bytes(b"kernel")
    (boot / "initrd.img-6.1.0-xen0").write_bytes(b"initrd")
    (boot / "grub" / "custom.cfg").write_bytes(USER_CUSTOM)
    (root / "etc" / "grub.d").mkdir(parents=True)
    (root / "etc" / "default").mkdir()
    (root / "etc" / "default" / "grub").write_text('GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n')
    (root / "etc" / "securetty").write_text("console\ntty1\n")
    (root / "lib" / "systemd" / "system").mkdir(parents=True)
    (root / "lib" / "systemd" / "system" / "serial-getty@.service").write_text("[Unit]\n")
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


def backups(root: Path) -> list[str]:
    return sorted(k for k in snapshot(root) if k.endswith(".xen-provision.bak"))


# -- merge_block -----------------------------------------------------------------------------

def test_merge_block_keeps_user_bytes():
    user = b"a\r\nb\n"
    merged = merge_block(user, "x")
    assert merged == user + f"{BEGIN}\nx\n{END}\n".encode()
    assert merge_block(merged, "y") == user + f"{BEGIN}\ny\n{END}\n".encode()
    assert merge_block(merged, None) == user
    # Our block in the middle: the lines after it stay where they are.
    middle = b"top\n" + f"{BEGIN}\nold\n{END}\n".encode() + b"bottom\n"
    assert merge_block(middle, "new") == b"top\n" + f"{BEGIN}\nnew\n{END}\n".encode() + b"bottom\n"
    assert merge_block(None, None) is None
    assert merge_block(merge_block(None, "x"), None) is None


@pytest.mark.parametrize("broken", [
    f"{BEGIN}\nx\n", f"x\n{END}\n", f"{END}\n{BEGIN}\n", f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n",
])
def test_merge_block_refuses_broken_markers(broken):
    with pytest.raises(ProvisionError, match="markers"):
        merge_block(broken.encode(), "y")


# -- install through the command line -------------------------------------------------------------

def test_install_twice_is_identical_and_user_entries_untouched(target, run_cli):
    first = run_cli("grub", "install", "--root", target, "--format", "custom", "--initrd",
                    "/boot/initrd.img-6.1.0-xen0", *ARGS)
    assert first.returncode == 0, first.stderr
    custom = (target / "boot/grub/custom.cfg").read_bytes()
    assert custom.startswith(USER_CUSTOM)  # the user's bytes, unchanged, first
    assert b"multiboot2 /boot/xen-4.17.3.gz dom0_mem=1G com1=115200,8n1 sched=credit2\n" in custom
    assert b"module2 /boot/vmlinuz-6.1.0-xen0 root=/dev/sda4 ro console=hvc0\n" in custom
    assert b"module2 --nounzip /boot/initrd.img-6.1.0-xen0\n" in custom
    assert len(backups(target)) == 2  # custom.cfg and securetty were replaced
    before = snapshot(target)

    second = run_cli("grub", "install", "--root", target, "--format", "custom", "--initrd",
                     "/boot/initrd.img-6.1.0-xen0", *ARGS)
    assert second.returncode == 0, second.stderr
    assert "already up to date" in second.stderr
    assert snapshot(target) == before

    # The backup holds exactly what was replaced.
    bak = [b for b in backups(target) if b.startswith("boot/grub/custom.cfg.")]
    assert (target / bak[0]).read_bytes() == USER_CUSTOM


def test_changed_request_replaces_only_our_block(target, run_cli):
    assert run_cli("grub", "install", "--root", target, "--format", "custom", *ARGS).returncode == 0
    args = [a if a != "1G" else "2G" for a in ARGS]
    assert run_cli("grub", "install", "--root", target, "--format", "custom", *args).returncode == 0
    custom = (target / "boot/grub/custom.cfg").read_bytes()
    assert custom.startswith(USER_CUSTOM)
    assert custom.count(BEGIN.encode()) == 1 and b"dom0_mem=2G" in custom and b"dom0_mem=1G" not in custom
    assert len([b for b in backups(target) if "custom.cfg" in b]) == 2


def test_grubd_install_default_and_remove(target, run_cli):
    proc = run_cli("grub", "install", "--root", target, "--default", "--menu-lst", "--efi-dir", "/boot/efi/EFI/xen", *ARGS)
    assert proc.returncode == 0, proc.stderr
    script = target / "etc/grub.d/42_xen_provision"
    assert script.stat().st_mode & 0o777 == 0o755
    assert "exec tail -n +5" in script.read_text()
    dropin = (target / "etc/default/grub.d/xen-provision.cfg").read_text()
    assert "GRUB_DEFAULT=xen-provision-4.17.3-6.1.0-xen0\n" in dropin
    assert (target / "etc/default/grub").read_text() == "GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n"
    assert (target / "boot/grub/custom.cfg").read_bytes() == USER_CUSTOM
    menu = (target / "boot/grub/menu.lst").read_text()
    assert "\tkernel /boot/xen-4.17.3.gz dom0_mem=1G com1=115200,8n1 sched=credit2\n" in menu
    assert "default=xen-provision-4.17.3-6.1.0-xen0" in (target / "boot/efi/EFI/xen/xen.cfg").read_text()
    # This offline root has no GRUB tools of its own to regenerate grub.cfg: we say so.
    assert "no update-grub/grub-mkconfig for this target" in proc.stderr
    # getty on hvc0 for systemd, and hvc0 in securetty for root logins.
    link = target / "etc/systemd/system/getty.target.wants/serial-getty@hvc0.service"
    assert os.readlink(link) == "/lib/systemd/system/serial-getty@.service"
    assert (target / "etc/securetty").read_text() == f"console\ntty1\n{BEGIN}\nhvc0\n{END}\n"

    # The same request again: every file (script, drop-in, xen.cfg, link, marker) as it was.
    before = snapshot(target)
    again = run_cli("grub", "install", "--root", target, "--default", "--menu-lst", "--efi-dir", "/boot/efi/EFI/xen", *ARGS)
    assert again.returncode == 0 and "already up to date" in again.stderr, again.stderr
    assert snapshot(target) == before

    # Switching to custom.cfg leaves no second copy; dropping --default removes the drop-in.
    assert run_cli("grub", "install", "--root", target, "--format", "custom", *ARGS).returncode == 0
    assert not script.exists() and not (target / "etc/default/grub.d/xen-provision.cfg").exists()
    assert not (target / "boot/grub/menu.lst").exists()  # it held only our block

    proc = run_cli("grub", "remove", "--root", target)
    assert proc.returncode == 0, proc.stderr
    assert (target / "boot/grub/custom.cfg").read_bytes() == USER_CUSTOM
    assert (target / "etc/securetty").read_text() == "console\ntty1\n"
    assert not link.is_symlink()


def test_sysvinit_inittab_line(target, run_cli):
    (target / "lib/systemd/system/serial-getty@.service").unlink()
    (target / "etc/inittab").write_text("id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n")
    assert run_cli("grub", "install", "--root", target, *ARGS).returncode == 0
    inittab = (target / "etc/inittab").read_text()
    assert inittab.startswith("id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n")
    assert "hvc0:2345:respawn:/sbin/getty -L 115200 hvc0 vt102\n" in inittab


def test_missing_root_device_warns(target, run_cli):
    args = [a for a in ARGS if a not in ("--root-device", "/dev/sda4")]
    proc = run_cli("grub", "render", "--root", target, *args)
    assert proc.returncode == 0, proc.stderr
    assert "\tmodule2 /boot/vmlinuz-6.1.0-xen0 console=hvc0\n" in proc.stdout
    assert "warning: dom0's command line has no root=" in proc.stderr and "--root-device" in proc.stderr
    proc = run_cli("grub", "render", "--root", target, *ARGS)
    assert proc.returncode == 0 and "no root=" not in proc.stderr, proc.stderr


def test_multiboot_fallback_when_grub_lacks_multiboot2(target, run_cli):
    (target / "boot/grub/i386-pc/multiboot2.mod").unlink()
    (target / "boot/grub/i386-pc/multiboot.mod").write_bytes(b"\x7fELF")
    proc = run_cli("grub", "render", "--root", target, *ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "\tmultiboot /boot/xen-4.17.3.gz dom0_mem=1G" in proc.stdout
    assert "\tmodule /boot/vmlinuz-6.1.0-xen0" in proc.stdout


def test_render_formats(target, run_cli):
    for fmt, needle in (("grub2", "multiboot2 /boot/xen-4.17.3.gz"), ("grubd", "#!/bin/sh"),
                        ("menu.lst", "\tkernel /boot/xen-4.17.3.gz"), ("xen.cfg", "[global]")):
        proc = run_cli("grub", "render", "--root", target, "--format", fmt, *ARGS)
        assert proc.returncode == 0 and needle in proc.stdout, proc.stderr


# -- bad input: one line naming the option, non-zero exit, nothing touched -------------------------

@pytest.mark.parametrize("args,needle", [
    (["--dom0-mem", "12X"], "dom0_mem=12X is not valid"),
    (["--dom0-mem", "min:2G,max:1G"], "min:2G is above max:1G"),
    (["--dom0-mem", "8G", "--machine-memory", "4G"], "more than the machine's memory"),
    (["--com1", "115201,8n1"], "com1=115201,8n1 is not valid: baud"),
    (["--com1", "115200,9z1"], "DPS"),
    (["--console", "serial"], "console=serial is not valid"),
    (["--sched", "rtds"], "sched=rtds is not built into this hypervisor (it has: credit, credit2)"),
    (["--sched", "bvt"], "sched=bvt is a Xen 2.0 scheduler"),
    (["--kernel", "/boot/vmlinuz-missing"], "--kernel /boot/vmlinuz-missing does not exist"),
    (["--initrd", "/boot/initrd-missing"], "--initrd /boot/initrd-missing does not exist"),
    (["--xen", "/boot/xen-9.gz"], "--xen /boot/xen-9.gz does not exist"),
    (["--xen-config", "/boot/xen-9.config", "--sched", "credit"], "--xen-config /boot/xen-9.config does not exist"),
    # A file outside the target: GRUB booting the target could never load it.
    (["--kernel", "/../../../../../../../../../../../../../../bin/sh"], "--kernel /../../"),
    (["--initrd", "/boot/../../initrd"], "--initrd /boot/../../initrd is not valid: give the absolute path inside"),
    (["--root-device", "sda4"], "root=sda4 is not valid"),
    (["--efi-dir", "boot/efi/EFI/xen"], "--efi-dir boot/efi/EFI/xen is not valid"),
    (["--efi-dir", "/boot/efi/../../etc"], "--efi-dir /boot/efi/../../etc is not valid"),
    (["--dom0-mem", "1G,"], "dom0_mem=1G, is not valid: an item is empty"),
    (["--dom0-mem", "0512M"], "dom0_mem=0512M is not valid: '0512' starts with 0, which Xen reads as octal"),
])
def test_bad_input_changes_nothing(target, run_cli, args, needle):
    (target / "etc/inittab").write_text("id:2:initdefault:\n")
    before = snapshot(target)
    base = {a: b for a, b in zip(ARGS[::2], ARGS[1::2], strict=True)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    proc = run_cli("grub", "install", "--root", target, "--default", "--menu-lst",
                   *[x for kv in base.items() for x in kv])
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(target) == before


def test_failure_midway_restores_everything(target):
    """A write that fails after others succeeded: the earlier files and their backups are undone."""
    from provision.grub.install import Change, apply
    from provision.undo import UndoStack

    (target / "blocker").write_text("a file where a directory is needed")
    before = snapshot(target)
    changes = [
        Change("/boot/grub/custom.cfg", USER_CUSTOM + b"# changed\n", None),
        Change("/etc/securetty", b"console\n", None),
        Change("/blocker/inside.cfg", b"cannot be written\n"),
    ]
    with pytest.raises(OSError), UndoStack(handle_signals=False) as undo:
        apply(target, changes, undo)
    assert snapshot(target) == before


def test_securetty_already_listing_the_console_is_left_alone(target, run_cli):
    (target / "etc/securetty").write_text("console\nhvc0\n")
    assert run_cli("grub", "install", "--root", target, *ARGS).returncode == 0
    assert (target / "etc/securetty").read_text() == "console\nhvc0\n"
    assert not [b for b in backups(target) if "securetty" in b]


def test_menu_lst_user_stanzas_kept_byte_for_byte(target, run_cli):
    # A legacy menu.lst as users keep it: CRLF line ends, no newline after the last line.
    user = b"default 0\r\ntimeout 5\r\n\r\ntitle Linux\r\n\tkernel /boot/vmlinuz root=/dev/sda1 ro"
    menu = target / "boot/grub/menu.lst"
    menu.write_bytes(user)
    assert run_cli("grub", "install", "--root", target, "--menu-lst", *ARGS).returncode == 0
    text = menu.read_bytes()
    assert text.startswith(user + b"\n" + BEGIN.encode())
    assert b"title Xen 4.17.3 / Linux 6.1.0-xen0\n\tkernel /boot/xen-4.17.3.gz dom0_mem=1G" in text
    bak = [b for b in backups(target) if "menu.lst" in b]
    assert len(bak) == 1 and (target / bak[0]).read_bytes() == user
    assert run_cli("grub", "remove", "--root", target).returncode == 0
    # Only the newline we had to add after the user's last line remains.
    assert menu.read_bytes() == user + b"\n"


def test_xen_cfg_names_files_missing_beside_it(target, run_cli):
    efi = target / "boot/efi/EFI/xen"
    args = ["--efi-dir", "/boot/efi/EFI/xen", "--initrd", "/boot/initrd.img-6.1.0-xen0", *ARGS]
    proc = run_cli("grub", "install", "--root", target, *args)
    assert proc.returncode == 0, proc.stderr
    assert ("xen.cfg names initrd.img-6.1.0-xen0, vmlinuz-6.1.0-xen0: copy them into "
            "/boot/efi/EFI/xen beside xen.efi") in proc.stderr
    cfg = (efi / "xen.cfg").read_text()
    assert "kernel=vmlinuz-6.1.0-xen0 root=/dev/sda4 ro console=hvc0\nramdisk=initrd.img-6.1.0-xen0\n" in cfg
    for name in ("vmlinuz-6.1.0-xen0", "initrd.img-6.1.0-xen0"):
        (efi / name).write_bytes((target / "boot" / name).read_bytes())
    proc = run_cli("grub", "install", "--root", target, *args)
    assert proc.returncode == 0 and "copy them" not in proc.stderr, proc.stderr


def test_machine_memory_read_on_a_live_host_only(target):
    """--root / reads MemTotal (the dom0_mem bound); an offline root's machine is unknown."""
    from argparse import Namespace

    from provision.grub.cli import machine_memory

    if Path("/proc/xen").exists():
        pytest.skip("this host is a Xen domain: its MemTotal is not the machine's memory")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    live = machine_memory(Namespace(machine_memory=None), Path("/"))
    assert live is not None and abs(live - total) < 4096
    assert machine_memory(Namespace(machine_memory=None), target) is None
    assert machine_memory(Namespace(machine_memory="4G"), Path("/")) == 4 * 1024**3


def test_menu_lst_default_puts_our_stanza_first_behind_our_own_default(target, run_cli):
    """Legacy GRUB counts stanzas and the last 'default' before the first title wins:
    --default puts our block (with 'default 0') right before the user's first title."""
    user = (b"# menu.lst by hand\ndefault 1\ntimeout 5\nfallback 0\n\n"
            b"title Debian\n\tkernel /boot/vmlinuz root=/dev/sda1 ro\n\n"
            b"title Debian (single)\n\tkernel /boot/vmlinuz root=/dev/sda1 ro single\n")
    menu = target / "boot/grub/menu.lst"
    menu.write_bytes(user)
    proc = run_cli("grub", "install", "--root", target, "--menu-lst", "--default", "--no-getty", *ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "'fallback' counts them too" in proc.stderr
    text = menu.read_text()
    head, _, rest = text.partition(BEGIN + "\n")
    ours, _, tail = rest.partition(END + "\n")
    assert head == "# menu.lst by hand\ndefault 1\ntimeout 5\nfallback 0\n\n"
    assert tail == "title Debian\n\tkernel /boot/vmlinuz root=/dev/sda1 ro\n\ntitle Debian (single)\n" \
                   "\tkernel /boot/vmlinuz root=/dev/sda1 ro single\n"
    assert ours.startswith("default 0\n\ntitle Xen 4.17.3 / Linux 6.1.0-xen0\n\tkernel /boot/xen-4.17.3.gz")
    # Stanza 0 as legacy GRUB counts them (titles in file order) is ours.
    titles = [ln for ln in text.splitlines() if ln.startswith("title ")]
    assert titles[0] == "title Xen 4.17.3 / Linux 6.1.0-xen0"
    # Globals as GRUB reads them: everything before the first title; the last default wins.
    defaults = [ln for ln in text[: text.index("\ntitle ")].splitlines() if ln.startswith("default")]
    assert defaults[-1] == "default 0"

    before = snapshot(target)
    again = run_cli("grub", "install", "--root", target, "--menu-lst", "--default", "--no-getty", *ARGS)
    assert again.returncode == 0 and "already up to date" in again.stderr, again.stderr
    assert snapshot(target) == before

    # Without --default our stanzas go back after the user's: their 'default 1' counts as before.
    assert run_cli("grub", "install", "--root", target, "--menu-lst", "--no-getty", *ARGS).returncode == 0
    text = menu.read_bytes()
    assert text.startswith(user + BEGIN.encode()) and b"default 0" not in text
    assert run_cli("grub", "remove", "--root", target).returncode == 0
    assert menu.read_bytes() == user


def test_menu_lst_default_without_user_stanzas(target, run_cli):
    assert run_cli("grub", "install", "--root", target, "--menu-lst", "--default", "--no-getty", *ARGS).returncode == 0
    text = (target / "boot/grub/menu.lst").read_text()
    assert text.startswith(f"{BEGIN}\ndefault 0\n\ntitle Xen 4.17.3") and text.endswith(f"{END}\n")
    assert run_cli("grub", "remove", "--root", target).returncode == 0
    assert not (target / "boot/grub/menu.lst").exists()


def test_an_absolute_kernel_link_in_an_offline_root_is_read_there(target, run_cli):
    """/boot/vmlinuz -> /boot/vmlinuz-6.1.0-xen0 names the target's file, not the host's."""
    os.symlink("/boot/vmlinuz-6.1.0-xen0", target / "boot/vmlinuz-xen0")
    proc = run_cli("grub", "render", "--root", target, "--kernel", "/boot/vmlinuz-xen0", *ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "module2 /boot/vmlinuz-xen0 " in proc.stdout
    os.symlink("/boot/no-such-kernel", target / "boot/vmlinuz-dangling")
    proc = run_cli("grub", "render", "--root", target, "--kernel", "/boot/vmlinuz-dangling", *ARGS)
    assert proc.returncode != 0 and "--kernel /boot/vmlinuz-dangling does not exist" in proc.stderr


def test_serial_menu_and_timeout_for_a_headless_host(target, run_cli):
    """GRUB's own menu on the serial port Xen's console uses, with its speed and framing,
    in the same drop-in as GRUB_DEFAULT (GRUB's own /etc/default/grub is not touched)."""
    args = [a if a != "115200,8n1" else "38400,7e1" for a in ARGS]
    proc = run_cli("grub", "install", "--root", target, "--default", "--serial-menu", "--menu-timeout", "2",
                   "--console", "com1", *args)
    assert proc.returncode == 0, proc.stderr
    dropin = (target / "etc/default/grub.d/xen-provision.cfg").read_text()
    assert "GRUB_DEFAULT=xen-provision-4.17.3-6.1.0-xen0\n" in dropin
    assert 'GRUB_TERMINAL="console serial"\n' in dropin
    assert "GRUB_SERIAL_COMMAND='serial --unit=0 --speed=38400 --word=7 --parity=even --stop=1'\n" in dropin
    assert "GRUB_TIMEOUT=2\n" in dropin
    assert (target / "etc/default/grub").read_text() == "GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n"
    # The drop-in is shell read by grub-mkconfig: it must parse as such.
    subprocess.run(["sh", "-n", str(target / "etc/default/grub.d/xen-provision.cfg")], check=True)
    # com2 only: unit 1. A parity GRUB's serial terminal lacks, and a bad timeout: refused.
    proc = run_cli("grub", "install", "--root", target, "--serial-menu", "--com2", "9600,8n1", "--console", "com2",
                   *[a for a in ARGS if not a.startswith(("--com1", "115200"))])
    assert proc.returncode == 0, proc.stderr
    assert "serial --unit=1 --speed=9600 --word=8 --parity=no --stop=1" in \
        (target / "etc/default/grub.d/xen-provision.cfg").read_text()
    before = snapshot(target)
    for bad, message in ((["--com1", "115200,8m1"], "GRUB's serial terminal has no parity 'm'"),
                         (["--menu-timeout", "soon"], "--menu-timeout 'soon' is not a number of seconds")):
        proc = run_cli("grub", "install", "--root", target, "--serial-menu",
                       *[a for a in ARGS if not a.startswith(("--com1", "115200"))], *bad)
        assert proc.returncode == 2 and message in proc.stderr.splitlines()[0], proc.stderr
    assert snapshot(target) == before


def test_the_hardware_dom0_installed_alone_is_found_and_xen0_wins_beside_it(target, run_cli):
    """`doit world kernels=mk.linux-6.1-xen0-hw,...` installs vmlinuz-*-xen0-hw only: grub
    render/install take it without --kernel (as doit grub does); next to a tinyconfig
    xen0, xen0 stays dom0's kernel."""
    (target / "boot/vmlinuz-6.1.0-xen0").rename(target / "boot/vmlinuz-6.1.0-xen0-hw")
    proc = run_cli("grub", "render", "--root", target, *ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "module2 /boot/vmlinuz-6.1.0-xen0-hw " in proc.stdout
    (target / "boot/vmlinuz-6.1.0-xen0").write_bytes(b"kernel")
    proc = run_cli("grub", "render", "--root", target, *ARGS)
    assert proc.returncode == 0 and "module2 /boot/vmlinuz-6.1.0-xen0 " in proc.stdout, proc.stderr
    for k in ("vmlinuz-6.1.0-xen0", "vmlinuz-6.1.0-xen0-hw"):
        (target / "boot" / k).unlink()
    proc = run_cli("grub", "render", "--root", target, *ARGS)
    assert proc.returncode != 0 and "has no vmlinuz-*-xen0 (or -xen0-*)" in proc.stderr
