"""Storage library, no root: file images, clones, partition tables on image files,
filesystems made with the real mkfs tools, safety checks and bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from provision import inuse
from provision.domain.model import parse_disk
from provision.errors import ProvisionError
from provision.sizes import GiB, MiB, format_approx
from provision.storage import (
    PartSpec,
    allocated_bytes,
    clone_file,
    copy_into,
    create_image,
    make_fs,
    partition_image,
    validate_lv_name,
    validate_vg_name,
)
from provision.storage.cli import parse_part


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_sparse_image_is_fast_and_unallocated(tmp_path):
    img = tmp_path / "vm1disk"
    start = time.perf_counter()
    create_image(img, "2G")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"2 GiB sparse image took {elapsed:.3f}s"
    assert img.stat().st_size == 2 * GiB
    assert allocated_bytes(img) <= MiB
    assert _listing(tmp_path) == ["vm1disk"]  # no temporary left beside it


def test_preallocated_image_has_all_blocks(tmp_path):
    img = tmp_path / "pre.img"
    create_image(img, "64M", preallocate=True)
    assert img.stat().st_size == 64 * MiB
    assert allocated_bytes(img) >= 64 * MiB


@pytest.mark.parametrize("size", ["0", "-1G", "1Q", "", "G"])
def test_bad_sizes_change_nothing(tmp_path, size):
    with pytest.raises(ProvisionError):
        create_image(tmp_path / "x.img", size)
    assert _listing(tmp_path) == []


def test_existing_image_needs_force(tmp_path):
    img = tmp_path / "a.img"
    img.write_bytes(b"precious")
    with pytest.raises(ProvisionError, match="already exists"):
        create_image(img, "1M")
    assert img.read_bytes() == b"precious"
    create_image(img, "1M", force=True)
    assert img.stat().st_size == MiB


def test_preallocated_image_that_does_not_fit_is_refused(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(ProvisionError, match="does not fit") as e:
        create_image(tmp_path / "big.img", free + GiB, preallocate=True)
    assert _listing(tmp_path) == []
    # Free space is measured, not a size the user gave: readable, not 66371952KiB.
    assert re.search(r"only \d+(\.\d)?[KMGT]iB free$", e.value.message), e.value.message


def test_format_approx():
    assert format_approx(67963592704) == "63.3GiB"
    assert format_approx(2 * GiB) == "2GiB"
    assert format_approx(1536 * MiB) == "1.5GiB"
    assert format_approx(1000) == "1000B"


def test_sparse_overcommit_warns(tmp_path, capsys):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    create_image(tmp_path / "over.img", free + GiB)
    assert "may grow to" in capsys.readouterr().err


def _write_pattern(path, offsets):
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(os.urandom(MiB))


def test_clone_keeps_holes_and_data(tmp_path):
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    create_image(src, "256M")
    _write_pattern(src, [0, 100 * MiB, 255 * MiB])
    method = clone_file(src, dst)
    assert method in ("reflink", "sparse-copy")
    assert dst.stat().st_size == src.stat().st_size
    assert dst.read_bytes() == src.read_bytes()
    # Holes stay holes: the copy holds about the 3 MiB of data, not 256 MiB.
    assert allocated_bytes(dst) <= allocated_bytes(src) + MiB
    assert allocated_bytes(dst) < 8 * MiB
    assert _listing(tmp_path) == ["dst.img", "src.img"]



def test_copy_into_writes_the_data_at_an_offset_and_keeps_holes(tmp_path):
    """A filesystem image into a partition of a disk image (the boot test's code disk)."""
    src, disk = tmp_path / "fs.img", tmp_path / "disk.img"
    create_image(src, "64M")
    _write_pattern(src, [0, 40 * MiB])
    create_image(disk, "80M")
    copy_into(src, disk, MiB)
    data = disk.read_bytes()
    assert data[:MiB] == bytes(MiB) and data[MiB:65 * MiB] == src.read_bytes() and data[65 * MiB:] == bytes(15 * MiB)
    assert allocated_bytes(disk) < 8 * MiB
    with pytest.raises(ProvisionError, match="does not fit"):
        copy_into(src, disk, 17 * MiB)

def test_clone_matches_cp_sparse_always(tmp_path):
    src = tmp_path / "src.img"
    create_image(src, "128M")
    _write_pattern(src, [3 * MiB, 64 * MiB])
    clone_file(src, tmp_path / "ours.img")
    subprocess.run(["cp", "--sparse=always", src, tmp_path / "cp.img"], check=True)
    assert abs(allocated_bytes(tmp_path / "ours.img") - allocated_bytes(tmp_path / "cp.img")) <= 64 * 1024


def test_clone_refuses_existing_target(tmp_path):
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    create_image(src, "1M")
    dst.write_bytes(b"keep")
    with pytest.raises(ProvisionError, match="already exists"):
        clone_file(src, dst)
    assert dst.read_bytes() == b"keep"
    with pytest.raises(ProvisionError, match="same file"):
        clone_file(src, src, force=True)
    assert clone_file(src, dst, force=True)
    assert dst.stat().st_size == MiB


def _blkid(path, tag):
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", tag, str(path)],
                          capture_output=True, text=True).stdout.strip()


def _no_mount(monkeypatch, how: str) -> None:
    """Make any mount in provision.storage.fs fail the test: ``how`` populates without one."""
    from provision.storage import fs as fsmod

    def no_mount(*args, **kwargs):
        raise AssertionError(f"populated through a mount, not {how}")

    monkeypatch.setattr(fsmod, "mounted", no_mount)


def test_make_ext4_populated_without_mounting(tmp_path, monkeypatch):
    _no_mount(monkeypatch, "by mkfs.ext4 -d")
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("vm1\n")
    img = tmp_path / "root.img"
    create_image(img, "64M")
    make_fs(img, "ext4", label="root", uuid="0e6a7a4c-5d7b-4a3e-9a0c-1d2e3f405060", populate=src)
    assert _blkid(img, "TYPE") == "ext4"
    assert _blkid(img, "LABEL") == "root"
    assert _blkid(img, "UUID") == "0e6a7a4c-5d7b-4a3e-9a0c-1d2e3f405060"
    out = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(img)], capture_output=True, text=True)
    assert out.stdout == "vm1\n"


def test_make_ext4_from_tarball(tmp_path, monkeypatch):
    _no_mount(monkeypatch, "unpacked and given to mkfs.ext4 -d")
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hello\n")
    tarball = tmp_path / "root.tar"
    subprocess.run(["tar", "-C", src, "-cf", tarball, "."], check=True)
    img = tmp_path / "root.img"
    create_image(img, "64M")
    make_fs(img, "ext4", populate=tarball)
    out = subprocess.run(["debugfs", "-R", "cat /etc/motd", str(img)], capture_output=True, text=True)
    assert out.stdout == "hello\n"
    assert _listing(tmp_path) == ["root", "root.img", "root.tar"]  # the unpacked temp dir is gone


@pytest.mark.parametrize("fstype", ["xfs", "btrfs", "vfat", "ext2"])
def test_other_filesystems(tmp_path, fstype):
    img = tmp_path / "fs.img"
    create_image(img, "300M")
    make_fs(img, fstype, label="data")
    assert _blkid(img, "TYPE") == fstype
    assert _blkid(img, "LABEL") == "data"


def test_make_fs_bad_input(tmp_path):
    img = tmp_path / "a.img"
    create_image(img, "16M")
    with pytest.raises(ProvisionError, match="not supported"):
        make_fs(img, "ntfs")
    with pytest.raises(ProvisionError, match="label"):
        make_fs(img, "ext4", label="a-label-far-too-long-for-ext4")
    with pytest.raises(ProvisionError, match="populate source"):
        make_fs(img, "ext4", populate=tmp_path / "missing")
    assert _blkid(img, "TYPE") == ""


def test_partition_image_read_back(tmp_path):
    img = tmp_path / "disk.img"
    create_image(img, "1G")
    parts = partition_image(img, "gpt", [
        PartSpec("1M", type="bios_grub"),
        PartSpec("256M", fs="ext4", bootable=True, label="boot"),
        PartSpec("128M", fs="swap"),
        PartSpec(None, fs="ext4", label="root"),
    ])
    assert [p.number for p in parts] == [1, 2, 3, 4]
    assert all(p.start % MiB == 0 for p in parts)
    assert parts[1].size == 256 * MiB and parts[2].size == 128 * MiB
    assert parts[3].end <= GiB - 33 * 512

    printed = subprocess.run(["parted", "-s", str(img), "unit", "s", "print"],
                             capture_output=True, text=True, check=True).stdout
    assert "Partition Table: gpt" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == [f"{p.start // 512}s" for p in parts]
    assert "bios_grub" in rows[0] and "legacy_boot" in rows[1] and "swap" in rows[2]

    dump = subprocess.run(["sfdisk", "-d", str(img)], capture_output=True, text=True, check=True).stdout
    entries = [line for line in dump.splitlines() if ": start=" in line]
    assert len(entries) == 4
    for line, p in zip(entries, parts, strict=True):
        assert f"start={p.start // 512:>12}" in line
        assert f"size={p.size // 512:>12}" in line
    assert "21686148-6449-6E6F-744E-656564454649" in entries[0]   # BIOS boot partition
    assert "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" in entries[2]   # Linux swap
    assert 'name="root"' in entries[3]


def test_partition_msdos(tmp_path):
    img = tmp_path / "disk.img"
    create_image(img, "300M")
    parts = partition_image(img, "msdos", [PartSpec("100M", fs="vfat", type="esp"),
                                           PartSpec(None, fs="ext4", bootable=True)])
    dump = subprocess.run(["sfdisk", "-d", str(img)], capture_output=True, text=True, check=True).stdout
    entries = [line for line in dump.splitlines() if ": start=" in line]
    assert "type=ef" in entries[0]
    assert "type=83" in entries[1] and "bootable" in entries[1]
    assert parts[1].end == 300 * MiB


def test_partition_bad_input_changes_nothing(tmp_path):
    img = tmp_path / "disk.img"
    create_image(img, "100M")
    before = img.read_bytes()
    with pytest.raises(ProvisionError, match="need"):
        partition_image(img, "gpt", [PartSpec("200M")])
    with pytest.raises(ProvisionError, match="not the last"):
        partition_image(img, "gpt", [PartSpec(None), PartSpec("10M")])
    with pytest.raises(ProvisionError, match="4 primary"):
        partition_image(img, "msdos", [PartSpec("10M")] * 5)
    with pytest.raises(ProvisionError, match="gpt"):
        partition_image(img, "msdos", [PartSpec("1M", type="bios_grub")])
    with pytest.raises(ProvisionError, match="not known"):
        partition_image(img, "sun", [PartSpec("1M")])
    assert img.read_bytes() == before
    partition_image(img, "msdos", [PartSpec(None)])
    with pytest.raises(ProvisionError, match="already holds"):
        partition_image(img, "gpt", [PartSpec(None)])


def test_parse_part():
    spec = parse_part("512M,fs=ext4,boot,label=root")
    assert spec == PartSpec(512 << 20, fs="ext4", bootable=True, label="root")   # bytes, parsed once
    assert parse_part("rest,fs=swap").size is None
    for bad in ["1Q", "10M,colour=blue", "10M,fs="]:
        with pytest.raises(ProvisionError):
            parse_part(bad)


@pytest.mark.parametrize("spec,expected", [
    ("phy:hda3,sda1,w", ("/dev/hda3", True)),
    ("phy:/dev/vg/vm1,xvda,r", ("/dev/vg/vm1", False)),
    ("file:/srv/xen/vm1.img,xvda1,w", ("/srv/xen/vm1.img", True)),
    ("tap:aio:/srv/xen/vm2.img,xvda,w!", ("/srv/xen/vm2.img", True)),
    ("/srv/xen/a.img,raw,xvda,rw", ("/srv/xen/a.img", True)),
    ("/srv/xen/b.img,raw,xvda,ro", ("/srv/xen/b.img", False)),
    ("format=raw, vdev=xvda, access=ro, target=/srv/xen/c,d.img", ("/srv/xen/c,d.img", False)),
    ("vdev=xvdb, target=/dev/vg/data", ("/dev/vg/data", True)),
])
def test_disk_specs_read_by_the_in_use_scan(spec, expected):
    disk = parse_disk(spec)
    assert (disk.target, disk.writable) == expected


def test_domain_config_users(tmp_path):
    xen = tmp_path / "xen"
    (xen / "auto").mkdir(parents=True)
    img = tmp_path / "vm1.img"
    ro = tmp_path / "shared.img"
    img.write_bytes(b"")
    ro.write_bytes(b"")
    (xen / "vm1.cfg").write_text(
        f"name = 'vm1'\ndisk = [ 'file:{img},xvda1,w',\n         '{ro},raw,xvdb,ro' ]\n")
    (xen / "auto" / "vm1.cfg").symlink_to(xen / "vm1.cfg")  # counted once
    (xen / "xl.conf").write_text(f"disk = ['{ro},raw,xvda,w']\n")  # not a domain config
    users = inuse.users(img, xen_dir=xen)
    assert [(u.config.name, u.writes) for u in users] == [("vm1.cfg", True)]
    with pytest.raises(ProvisionError, match="used read-write by domain vm1 "):
        inuse.refuse(img, writing=True, xen_dir=xen)
    # A disk a domain reads is not written by dom0 either, but may be read (cloned).
    with pytest.raises(ProvisionError, match="used read-only by domain vm1"):
        inuse.refuse(ro, writing=True, xen_dir=xen)
    inuse.refuse(ro, writing=False, xen_dir=xen)


@pytest.mark.parametrize("name", ["a/b", "..", ".", "-x", "a b", "a;b", "$x", "", "x" * 128])
def test_bad_lvm_names(name):
    with pytest.raises(ProvisionError):
        validate_vg_name(name)
    with pytest.raises(ProvisionError):
        validate_lv_name(name)


@pytest.mark.parametrize("name", ["snapshot1", "pvmove0", "vm_tmeta", "a_cdata", "x_rimage_1"])
def test_reserved_lv_names(name):
    with pytest.raises(ProvisionError, match="reserved"):
        validate_lv_name(name)


def test_good_lvm_names():
    assert validate_vg_name("vg0") == "vg0"
    assert validate_lv_name("myvmdisk1") == "myvmdisk1"
    assert validate_lv_name("guest.2+b_c") == "guest.2+b_c"


def test_cli_bad_input_one_line(run_cli, tmp_path):
    existing = tmp_path / "exists.img"
    existing.write_bytes(b"x")
    cases = [
        ("storage", "create", tmp_path / "a.img", "--size", "0"),
        ("storage", "create", tmp_path / "a.img", "--size=-1G"),
        ("storage", "create", tmp_path / "a.img", "--size", "1Q"),
        ("storage", "create", existing, "--size", "1M"),
        ("storage", "create", tmp_path / "a.img", "--size", "1M", "--fs", "ntfs"),
        ("storage", "lvm", "vg", "bad/name", "/dev/null"),
        ("storage", "lvm", "lv", "vg0", "a/b", "--size", "1G"),
        ("storage", "clone", existing, tmp_path / "missing" / "b.img"),
    ]
    for args in cases:
        proc = run_cli(*args)
        assert proc.returncode != 0, args
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert _listing(tmp_path) == ["exists.img"]
    assert existing.read_bytes() == b"x"


def test_cli_create_and_clone(run_cli, tmp_path):
    img = tmp_path / "vm1.img"
    run_cli("storage", "create", img, "--size", "64M", "--fs", "ext4", "--label", "root", check=True)
    assert _blkid(img, "LABEL") == "root"
    proc = run_cli("storage", "clone", img, tmp_path / "vm2.img", check=True)
    assert proc.stdout.strip() in ("reflink", "sparse-copy")
    assert (tmp_path / "vm2.img").read_bytes() == img.read_bytes()


def test_storage_runs_without_pyparted_or_other_deps(tmp_path):
    """The boot test's guest has only the standard library and lvm2: the storage command
    and the LVM check must import there; only partition_image needs pyparted."""
    code = (
        "import sys\n"
        "for m in ('parted', '_ped', 'jinja2', 'requests', 'doit'):\n"
        "    sys.modules[m] = None  # importing any of them now fails\n"
        "import provision.storage, provision.proof.indom0.lvmcheck\n"
        "from provision.storage.cli import main\n"
        f"sys.exit(main(['create', '{tmp_path}/a.img', '--size', '8M']))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=root))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.img").stat().st_size == 8 * MiB


def test_cli_check_reads_domain_configs(run_cli, tmp_path):
    xen = tmp_path / "xen"
    xen.mkdir()
    img = tmp_path / "vm1.img"
    create_image(img, "1M")
    env = {"XEN_PROVISION_XEN_DIR": str(xen)}
    assert run_cli("storage", "check", img, env=env).returncode == 0
    (xen / "vm1").write_text(f"disk = ['format=raw, vdev=xvda, access=rw, target={img}']\n")
    proc = run_cli("storage", "check", img, env=env)
    assert proc.returncode != 0
    assert f"error: {img} is used read-write by domain ? ({xen / 'vm1'})" in proc.stderr
    proc = run_cli("storage", "create", img, "--size", "2M", "--force", env=env)
    assert proc.returncode != 0 and "used read-write by domain" in proc.stderr
    assert img.stat().st_size == MiB


# --- review of issue 4: the gaps closed ---------------------------------------------

def test_populate_vfat_with_mtools_without_mounting(tmp_path, monkeypatch):
    _no_mount(monkeypatch, "with mcopy")
    src = tmp_path / "esp"
    (src / "EFI" / "xen").mkdir(parents=True)
    (src / "EFI" / "xen" / "xen.cfg").write_text("[global]\ndefault=xen\n")
    img = tmp_path / "esp.img"
    create_image(img, "64M")
    make_fs(img, "vfat", label="ESP", populate=src)
    assert _blkid(img, "TYPE") == "vfat" and _blkid(img, "LABEL") == "ESP"
    out = subprocess.run(["mtype", "-i", str(img), "::/EFI/xen/xen.cfg"], capture_output=True, text=True,
                         env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    assert out.stdout.replace("\r\n", "\n") == "[global]\ndefault=xen\n", out.stderr


def test_ext3_and_swap_images(tmp_path, run_cli):
    make_fs(create_image(tmp_path / "e3.img", "32M"), "ext3", label="old")
    assert _blkid(tmp_path / "e3.img", "TYPE") == "ext3"
    run_cli("storage", "create", tmp_path / "swap.img", "--size", "64M", "--fs", "swap", "--label", "sw",
            check=True)
    assert _blkid(tmp_path / "swap.img", "TYPE") == "swap"
    assert _blkid(tmp_path / "swap.img", "LABEL") == "sw"


def _one_error(proc, expected: str) -> None:
    assert proc.returncode != 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in errors[0], proc.stderr


@pytest.mark.parametrize("name", ["a b.img", "a;b.img", "a,b.img", "$(x).img", "-x.img", "a..img"])
def test_cli_refuses_bad_image_names(run_cli, tmp_path, name):
    """Commas break xl disk specs, spaces and shell characters break scripts: refused at the edge."""
    src = tmp_path / "src.img"
    create_image(src, "1M")
    _one_error(run_cli("storage", "create", tmp_path / name, "--size", "1M"), "image name")
    _one_error(run_cli("storage", "clone", src, tmp_path / name), "image name")
    _one_error(run_cli("storage", "partition", tmp_path / name, "--size", "8M", "--part", "rest"), "image name")
    assert _listing(tmp_path) == ["src.img"]


def test_cli_mkfs_failure_is_one_line_naming_the_image(run_cli, tmp_path):
    for fs in ("ext4", "xfs", "swap"):
        proc = run_cli("storage", "create", tmp_path / "tiny.img", "--size", "1K", "--fs", fs)
        _one_error(proc, f"could not make {fs} on {tmp_path / 'tiny.img'}: ")
        assert ".tmp" not in proc.stderr and "Usage" not in proc.stderr
    assert _listing(tmp_path) == []


def test_unwritable_directory_is_one_line():
    # /proc takes no new files, for root too.
    with pytest.raises(ProvisionError, match="cannot create a file in /proc"):
        create_image("/proc/xen-provision-test.img", "1M")
    with pytest.raises(ProvisionError, match="cannot create a file in /proc"):
        clone_file("/proc/self/status", "/proc/xen-provision-test.img")


def test_existing_non_file_target_is_never_replaced(tmp_path, run_cli):
    """--force replaces an image, never a device node or fifo by renaming a file over it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    src = tmp_path / "src.img"
    create_image(src, "1M")
    with pytest.raises(ProvisionError, match="not a regular file"):
        create_image(fifo, "1M", force=True)
    with pytest.raises(ProvisionError, match="not a regular file"):
        clone_file(src, fifo, force=True)
    _one_error(run_cli("storage", "create", fifo, "--size", "1M", "--force"), "not a regular file")
    assert fifo.is_fifo() and _listing(tmp_path) == ["fifo", "src.img"]


def test_cli_fill_watch_bad_numbers(run_cli):
    """Checked before lvm2 is asked anything (so this needs neither root nor a VG)."""
    _one_error(run_cli("storage", "fill", "vg0", "snap", "--watch", "--threshold", "150"), "threshold")
    _one_error(run_cli("storage", "fill", "vg0", "snap", "--watch", "--interval", "-1"), "interval")
    _one_error(run_cli("storage", "fill", "vg0", "snap", "--watch", "--extend-by", "0"), "extend-by")


def test_cli_lvm_names_checked_first(run_cli):
    """Every LVM command names a bad VG or LV name before lvm2 is asked anything."""
    _one_error(run_cli("storage", "lvm", "snapshot", "bad/vg", "base", "clone1", "--size", "1M"),
               "volume group name 'bad/vg'")
    _one_error(run_cli("storage", "lvm", "snapshot", "vg0", "base", "a;b", "--size", "1M"),
               "logical volume name 'a;b'")
    _one_error(run_cli("storage", "fill", "vg0", "../x"), "logical volume name '../x'")
    _one_error(run_cli("storage", "lvm", "pool", "vg0", "snapshot1", "--size", "1G"), "reserved by LVM")
    _one_error(run_cli("storage", "lvm", "extend", "vg 0", "lv", "--size", "+1G"), "volume group name")


def test_signature_names_what_writing_would_destroy(tmp_path):
    """What pvcreate, vgcreate and partition refuse to write over: a filesystem, swap or a
    partition table, and nothing else (an empty partition's own table entry, which
    ``blkid -p`` prints with exit code 0, is not content; the boot test's lvmcheck
    runs pvcreate on an empty partition of a real disk in dom0)."""
    from provision.storage.fs import signature
    img = tmp_path / "a.img"
    create_image(img, "16M")
    assert signature(img) is None
    partition_image(img, "msdos", [PartSpec("4M", type="lvm"), PartSpec(None, type="linux")])
    assert signature(img) == "dos partition table"
    fs = tmp_path / "fs.img"
    create_image(fs, "16M")
    make_fs(fs, "ext4")
    assert signature(fs) == "ext4"
    assert signature(tmp_path / "missing.img") is None
