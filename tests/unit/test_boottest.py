"""Boot-test pieces that need no root: the GRUB config we boot, GRUB written into an
image's MBR (and really booted by QEMU), picking the staged files, bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provision import boottest
from provision.errors import ProvisionError
from provision.qemu import Machine


def settings(tmp_path, **kw) -> boottest.Settings:
    return boottest.Settings(dist=None, out=tmp_path / "out", **kw)


def staged_root(tmp_path: Path, schedulers=("CREDIT", "CREDIT2")) -> Path:
    root = tmp_path / "root"
    boot = root / "boot"
    boot.mkdir(parents=True)
    for name in ("xen-4.17.5.gz", "vmlinuz-6.1.176-xen0", "vmlinuz-6.1.176-xenU",
                 "vmlinuz-6.1.99-xen0"):
        (boot / name).write_bytes(b"")
    (boot / "xen-4.17.gz").symlink_to("xen-4.17.5.gz")
    (boot / "xen-4.17.5.config").write_text(
        "".join(f"CONFIG_SCHED_{s}=y\n" for s in schedulers) + "# CONFIG_SCHED_RTDS is not set\n")
    return root


def test_boot_files_are_the_newest_staged_ones(tmp_path):
    root = staged_root(tmp_path)
    files = boottest.find_boot_files(root, tmp_path)
    assert (files.xen, files.xen_config) == ("/boot/xen-4.17.5.gz", "/boot/xen-4.17.5.config")
    assert files.dom0_kernel == "/boot/vmlinuz-6.1.176-xen0"
    assert files.guest_kernel == "/boot/vmlinuz-6.1.176-xenU"
    assert files.dom0_initrd is None and files.origin == "dist/install"


def test_missing_kernel_in_dist_is_one_clear_error(tmp_path):
    root = staged_root(tmp_path)
    for p in (root / "boot").glob("vmlinuz-*-xenU"):
        p.unlink()
    with pytest.raises(ProvisionError, match=r"has no vmlinuz-\*-xenU in boot/") as err:
        boottest.find_boot_files(root, tmp_path)
    assert "doit world" in err.value.hint


def test_grub_config_is_valid_and_carries_our_command_line(tmp_path):
    root = staged_root(tmp_path)
    files = boottest.find_boot_files(root, tmp_path)
    text, xen_cmdline = boottest.grub_config(settings(tmp_path), root, files)
    assert xen_cmdline == "dom0_mem=1G,max:1G com1=115200,8n1 console=com1 sched=credit"
    assert text.startswith("serial --unit=0 --speed=115200")
    assert "terminal_output serial" in text and "set timeout=1" in text
    assert f"multiboot2 /boot/xen-4.17.5.gz {xen_cmdline}" in text
    assert "module2 /boot/vmlinuz-6.1.176-xen0 root=/dev/vda1 ro console=hvc0" in text
    assert "set default=xen-provision-boottest" in text
    if shutil.which("grub-script-check"):
        subprocess.run(["grub-script-check"], input=text, text=True, check=True)


def test_a_scheduler_the_hypervisor_lacks_fails_at_generation(tmp_path):
    root = staged_root(tmp_path)
    files = boottest.find_boot_files(root, tmp_path)
    with pytest.raises(ProvisionError, match=r"sched=rtds is not built into this hypervisor"):
        boottest.grub_config(settings(tmp_path, sched="rtds"), root, files)


def test_guest_config_is_xl_syntax_with_the_xenu_kernel(tmp_path):
    files = boottest.find_boot_files(staged_root(tmp_path), tmp_path)
    text = boottest.guest_domain(settings(tmp_path), files)
    assert 'name = "guest1"' in text and "memory = 256" in text
    assert 'kernel = "/boot/vmlinuz-6.1.176-xenU"' in text and 'root = "/dev/xvda1 ro"' in text
    # xvda1, as `image --debootstrap` names the root in the guest's fstab.
    assert "vdev=xvda1, access=rw, target=/dev/vdc" in text


def test_enable_unit_links_into_its_wanted_by_targets(tmp_path):
    unit = tmp_path / "lib/systemd/system/xenstored.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\n[Service]\n[Install]\nWantedBy=multi-user.target\n")
    boottest.enable_unit(tmp_path, "xenstored.service")
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/xenstored.service"
    assert link.is_symlink() and str(link.readlink()) == "/lib/systemd/system/xenstored.service"
    with pytest.raises(ProvisionError, match="not in the image"):
        boottest.enable_unit(tmp_path, "nothing.service")


def test_bad_input_is_one_line_and_builds_nothing(run_cli, tmp_path):
    proc = run_cli("boottest", "--dist", "none", "--sched", "bvt", "--out", tmp_path / "o")
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: sched=bvt is a Xen 2.0 scheduler")
    proc = run_cli("boottest", "--dist", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert proc.returncode != 0 and "has no boot/ directory" in proc.stderr
    dist = tmp_path / "dist"
    staged_root(tmp_path)
    shutil.copytree(tmp_path / "root", dist)
    proc = run_cli("boottest", "--dist", dist, "--sched", "rtds", "--out", tmp_path / "o")
    assert proc.returncode != 0
    assert "error: sched=rtds is not built into this hypervisor (it has: credit, credit2)" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not (shutil.which("grub-mkimage") and shutil.which("qemu-system-x86_64")
                         and shutil.which("sfdisk")),
                    reason="needs grub-common, grub-pc-bin, fdisk and qemu-system-x86 (setup-host)")
def test_grub_written_into_the_mbr_really_boots(tmp_path):
    # No loop device, no root: the filesystem is made inside the image at the partition's
    # offset, and the MBR and core.img are written into the file itself.
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], input="label: dos\n2048,,83,*\n", text=True,
                   check=True)
    root = tmp_path / "fsroot"
    (root / "boot/grub").mkdir(parents=True)
    boottest.stage_grub_modules(root)
    (root / "boot/grub/grub.cfg").write_text(
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
        "echo GRUB-BOOTED-FROM-OUR-MBR\nhalt\n")
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    subprocess.run([mkfs, "-q", "-F", "-E", "offset=1048576", "-d", str(root), str(image), "63M"],
                   check=True)
    before = image.read_bytes()[0x1B8:0x200]
    boottest.install_grub_bios(image)
    data = image.read_bytes()
    assert data[0x1B8:0x200] == before   # disk signature and partition table kept
    assert data[0x5C:0x64] == (1).to_bytes(8, "little")
    with Machine(log_path=tmp_path / "serial.log", disks=[image], memory="128M", smp=1) as vm:
        vm.wait_for("GRUB-BOOTED-FROM-OUR-MBR", 120, what="GRUB from our MBR")
    assert vm.checks[0].ok


def test_install_grub_refuses_a_disk_without_room(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with pytest.raises(ProvisionError, match="no msdos partition table"):
        boottest.install_grub_bios(image)


@pytest.mark.skipif(not (shutil.which("mkfs.ext4") or Path("/sbin/mkfs.ext4").exists())
                    or not (shutil.which("debugfs") or Path("/sbin/debugfs").exists()),
                    reason="needs e2fsprogs (setup-host)")
def test_code_disk_holds_this_checkouts_package_for_lvmcheck(tmp_path):
    disk = boottest.code_disk(tmp_path)
    assert disk == tmp_path / "code.img" and disk.stat().st_size == 64 << 20
    debugfs = shutil.which("debugfs") or "/sbin/debugfs"
    lvmcheck = subprocess.run([debugfs, "-R", "cat /provision/storage/lvmcheck.py", str(disk)],
                              capture_output=True, check=True).stdout
    source = Path(boottest.__file__).parent / "storage" / "lvmcheck.py"
    assert lvmcheck == source.read_bytes()
    listing = subprocess.run([debugfs, "-R", "ls -p /provision", str(disk)], capture_output=True,
                             text=True, check=True).stdout
    assert "/__init__.py/" in listing and "__pycache__" not in listing
    assert list(tmp_path.iterdir()) == [disk]   # no staging left behind
    # What dom0 runs: that package, from the disk QEMU gives it after the guest's.
    command = boottest.lvm_check_command()
    assert f"mount -o ro {boottest.CODE_DEVICE} {boottest.CODE_MOUNT}" in command
    assert f"PYTHONPATH={boottest.CODE_MOUNT} " in command
    assert "python3 -m provision.storage.lvmcheck /dev/vdb;" in command
    short = subprocess.run([debugfs, "-R", f"cat /{boottest.LVM_PATH}", str(disk)],
                           capture_output=True, text=True, check=True).stdout
    assert short == boottest.LVM_SCRIPT
    assert f"python3 {boottest.CODE_MOUNT}/{boottest.LVM_PATH};" in boottest.lvm_check_command(full=False)
    # ...with what lvmcheck needs besides the standard library in dom0's package list.
    assert {"python3", "lvm2", "thin-provisioning-tools", "e2fsprogs"} <= \
        set(boottest.host_packages(settings(tmp_path)))


def test_lvm_check_ends_on_its_verdict_or_a_kernel_failure_not_on_the_echo():
    import re
    end = re.compile(boottest.LVM_CHECK_END, re.M)
    echo = "# " + boottest.lvm_check_command() + "\nlvm-check ok: LV with ext4\n"
    assert end.search(echo) is None
    for line, ok in (("LVM-CHECK-OK in 81.3s", True), ("lvm-check FAILED: rollback left the LV", False),
                     ("BUG: unable to handle page fault for address: ffff88800ea77ff8", False),
                     ("Traceback (most recent call last):", False)):
        m = end.search(echo + line + "\n")
        assert m is not None and m.group(1) == line
        assert m.group(1).startswith("LVM-CHECK-OK") == ok


def test_prune_keeps_the_most_recently_used_images_of_one_kind(tmp_path):
    import os
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(["host-a", "host-b", "host-c", "host-d", "guest-a", "guest-b"]):
        (images / f"{name}.img").write_bytes(b"")
        (images / f"{name}.json").write_text("{}")
        os.utime(images / f"{name}.img", (1000 + i, 1000 + i))
    boottest._use(images / "host-a.img")     # a cache hit: now the most recently used
    boottest._prune(images, keep=images / "host-b.img")
    assert sorted(p.name for p in images.glob("host-*")) == \
        ["host-a.img", "host-a.json", "host-b.img", "host-b.json"]
    boottest._prune(images, keep=images / "guest-a.img", newest=3)
    assert len(list(images.glob("guest-*.img"))) == 2   # the other kind was left alone


def test_image_key_covers_the_image_code_but_not_the_checks():
    code = boottest._image_code()
    for name in ("def configure_host(", "def enable_xen_services(", "def guest_image(",
                 "def host_image(", "DOM0_MASKED = "):
        assert name in code
    assert "def boot_and_check(" not in code and "def extra_checks(" not in code
