"""lsmod files (issue 17): only lsmod output is taken, anything else is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.build import lsmod
from provision.errors import ProvisionError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """Module                  Size  Used by
ext4                  999424  1
crc16                  16384  1 ext4
mbcache                16384  1 ext4
jbd2                  167936  1 ext4
virtio_net             61440  0
net_failover           24576  1 virtio_net
failover               16384  1 net_failover
virtio_blk             24576  2
crc32c_generic         16384  2
button                 24576  0
"""


def test_lsmod_output_gives_its_module_names():
    assert lsmod.validate(GOOD, "host.lsmod") == [
        "ext4", "crc16", "mbcache", "jbd2", "virtio_net", "net_failover", "failover", "virtio_blk",
        "crc32c_generic", "button"]


def test_the_shipped_qemu_lsmod_is_lsmod_output():
    names = lsmod.validate((ROOT / "buildconfigs/qemu-pc.lsmod").read_text(), "qemu-pc.lsmod")
    assert "virtio_net" in names or "virtio_blk" in names


def test_permanent_and_unloading_rows_are_lsmod_too():
    text = GOOD + "nvidia               1234  0 [permanent]\nfoo 1 -\n"
    assert lsmod.validate(text, "x")[-2:] == ["nvidia", "foo"]


@pytest.mark.parametrize("text, says", [
    ("", "is not lsmod output: its first line is not 'Module  Size  Used by' but 'an empty file'"),
    ("CONFIG_EXT4_FS=m\nCONFIG_XEN=y\n", "its first line is not 'Module  Size  Used by' but 'CONFIG_EXT4_FS=m'"),
    ("ext4\nvirtio_net\n", "but 'ext4'"),
    ("ext4                  999424  1\n", "but 'ext4                  999424  1'"),
    ("Module                  Size  Used by\n", "lsmod output with no modules"),
    ("Module                  Size  Used by\next4 big 1\n", "host.lsmod:2: not an lsmod row"),
    (GOOD + "some trailing words here and more\n", "host.lsmod:12: not an lsmod row"),
    (GOOD + "\nvirtio_blk 1 0\n", "host.lsmod:12: not an lsmod row"),
])
def test_not_lsmod_output_is_one_line(text, says):
    with pytest.raises(ProvisionError) as e:
        lsmod.validate(text, "host.lsmod")
    assert says in e.value.message
    assert "\n" not in e.value.message
    assert "lsmod > host.lsmod" in e.value.hint


def test_read_refuses_a_missing_directory_or_binary_file(tmp_path):
    with pytest.raises(ProvisionError, match="does not exist"):
        lsmod.read(tmp_path / "nope.lsmod")
    with pytest.raises(ProvisionError, match="is a directory"):
        lsmod.read(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    with pytest.raises(ProvisionError, match="not lsmod output \\(not text\\)"):
        lsmod.read(blob)
    good = tmp_path / "host.lsmod"
    good.write_text(GOOD)
    assert lsmod.read(good) == GOOD


def test_world_with_a_file_that_is_not_lsmod_output_changes_nothing(run_cli, tmp_path):
    bad = tmp_path / "host.lsmod"
    bad.write_text("CONFIG_E1000E=m\n")
    proc = run_cli("world", "--kernels", "mk.linux-6.1-xen0-hw", "--lsmod", bad, "--dist", tmp_path / "dist",
                   "--db-file", tmp_path / ".doit.db")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {bad} is not lsmod output: its first line is not 'Module  Size  Used by' "
                     "but 'CONFIG_E1000E=m'"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "dist").exists()


def test_doit_lsmod_for_tinyconfig_kernels_only_is_refused(tmp_path):
    import subprocess
    import sys
    good = tmp_path / "host.lsmod"
    good.write_text(GOOD)
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "--db-file", str(tmp_path / ".doit.db"), "world",
         f"lsmod={good}", f"dist={tmp_path / 'dist'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "none of the kernels (mk.linux-6.1-xen0, mk.linux-6.1-xenU) has modules to trim" in line
    assert not (tmp_path / "dist").exists()
