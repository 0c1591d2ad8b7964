"""Reproducible builds without building: the pinned settings, their manifest section, the
staged mtimes, the tarball's, and verify's comparison and part selection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from provision.build import install as inst
from provision.build import reproducible, stage, verify
from provision.build.config import load
from provision.build.sources import Source, SourceSpec
from provision.errors import ProvisionError
from tests.unit.test_build_stage import records  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = """xen (4.17.5+72-g01140da4e8-1) bookworm-security; urgency=medium

  * New upstream version.

 -- Maintainer <m@example.org>  Sat, 29 Nov 2025 14:52:25 +0100

xen (4.17.5-1) bookworm; urgency=medium

  * Older.

 -- Maintainer <m@example.org>  Mon, 01 Jan 2024 00:00:00 +0000
"""


def _source(tree: Path) -> Source:
    return Source(tree=tree, version="4.17.5", identity="x", spec=SourceSpec("local", path=str(tree)))


def test_epoch_from_the_newest_changelog_entry_as_dpkg_says(tmp_path, monkeypatch):
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian/changelog").write_text(CHANGELOG)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")  # the changelog of the source wins
    epoch = reproducible.source_date_epoch(_source(tmp_path))
    assert epoch == 1764424345
    if shutil.which("dpkg-parsechangelog"):
        dpkg = subprocess.run(["dpkg-parsechangelog", "-l", tmp_path / "debian/changelog", "-STimestamp"],
                              capture_output=True, text=True, check=True).stdout
        assert epoch == int(dpkg)


def test_epoch_without_a_changelog(tmp_path, monkeypatch):
    (tmp_path / "Makefile").write_text("all:\n")
    os.utime(tmp_path / "Makefile", (1600000000, 1600000000))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert reproducible.source_date_epoch(_source(tmp_path)) == 1700000000
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert reproducible.source_date_epoch(_source(tmp_path)) == 1600000000


def test_a_changelog_without_a_date_is_one_clear_error(tmp_path):
    (tmp_path / "changelog").write_text("xen (1-1) unstable; urgency=low\n\n  * x\n\n -- M <m@e.org>  not a date\n")
    with pytest.raises(ProvisionError, match="no valid date"):
        reproducible.changelog_epoch(tmp_path / "changelog")


def test_pinned_identities():
    xen = reproducible.xen_env(1764424345)
    assert xen == {"SOURCE_DATE_EPOCH": "1764424345", "XEN_BUILD_DATE": "Sat Nov 29 13:52:25 UTC 2025",
                   "XEN_BUILD_TIME": "13:52:25", "XEN_BUILD_HOST": "xen-provision",
                   "XEN_WHOAMI": "xen-provision", "XEN_DOMAIN": "xen-provision"}
    # What `LC_ALL=C date -u -d @EPOCH` prints, as Xen's Makefile would have.
    date = subprocess.run(["date", "-u", "-d", "@1764424345"], capture_output=True, text=True,
                          env={"LC_ALL": "C", "PATH": os.environ["PATH"]}).stdout.strip()
    assert xen["XEN_BUILD_DATE"] == date
    linux = reproducible.linux_env(1764424345)
    assert linux["KBUILD_BUILD_TIMESTAMP"] == date
    assert linux["KBUILD_BUILD_VERSION"] == "1"  # not the work tree's build counter
    assert {linux["KBUILD_BUILD_USER"], linux["KBUILD_BUILD_HOST"]} == {"xen-provision"}


def test_prefix_maps():
    flags = reproducible.prefix_map({Path("/var/cache/x/src/xen-4.17.5/"): "/usr/src/xen-4.17.5",
                                     Path("/var/cache/x/build/xen.work"): "/usr/src/xen-4.17.5-build"})
    assert flags == ("-fdebug-prefix-map=/var/cache/x/src/xen-4.17.5=/usr/src/xen-4.17.5 "
                     "-fdebug-prefix-map=/var/cache/x/build/xen.work=/usr/src/xen-4.17.5-build")
    assert reproducible.macro_map(Path("/c/src/xen/")) == "-fmacro-prefix-map=/c/src/xen/= -idirafter /c/src/xen"


def test_macro_map_keeps_a_file_that_includes_itself_by_its_name(tmp_path):
    """Xen's usercopy.c does ``#include __FILE__``: with __FILE__ made relative it must still
    be found (-idirafter the tree), and the object must not name the tree."""
    src = tmp_path / "tree" / "arch"
    src.mkdir(parents=True)
    (src / "self.c").write_text('#ifndef AGAIN\n#define AGAIN\nconst char *f = __FILE__;\n#include __FILE__\n'
                                '#else\nint again;\n#endif\n')
    if not shutil.which("gcc"):
        pytest.skip("no gcc")
    flags = reproducible.macro_map(tmp_path / "tree").split()
    subprocess.run(["gcc", *flags, "-c", src / "self.c", "-o", tmp_path / "self.o"], check=True, cwd=tmp_path)
    data = (tmp_path / "self.o").read_bytes()
    assert b"arch/self.c" in data and str(tmp_path).encode() not in data


def _f(sha: str, mode: str = "0644") -> dict:
    return {"sha256": sha * 64, "size": 1, "mode": mode}


def test_compare_names_the_first_difference_in_sorted_order():
    a = {"boot/a": _f("1"), "boot/b": _f("2"), "usr/c": _f("3"), "boot/l": {"link": "a"}}
    assert reproducible.compare(a, dict(a)) is None
    b = {**a, "usr/c": _f("9"), "boot/b": _f("8")}
    d = reproducible.compare(a, b)
    assert (d.path, d.expected, d.actual) == ("boot/b", f"{'2' * 64} (mode 0644)", f"{'8' * 64} (mode 0644)")
    assert d.describe().startswith("boot/b differs: expected 2222")
    assert reproducible.compare(a, {**a, "boot/a": _f("1", "0755")}).path == "boot/a"  # mode
    assert reproducible.compare(a, {**a, "boot/l": {"link": "b"}}).actual == "-> b"
    missing = reproducible.compare(a, {k: v for k, v in a.items() if k != "boot/a"})
    assert (missing.path, missing.actual) == ("boot/a", None)
    assert "rebuilt nothing" in missing.describe()
    extra = reproducible.compare(a, {**a, "boot/0": _f("4")})
    assert (extra.path, extra.expected) == ("boot/0", None)
    # A rebuild of some parts: only its own paths count.
    assert reproducible.compare(a, {"usr/c": _f("3")}, subset=True) is None
    assert reproducible.compare(a, {"usr/c": _f("4")}, subset=True).path == "usr/c"


def _pin(recs: dict, epoch: int) -> None:
    recs["xen"]["reproducible"] = reproducible.xen_env(epoch)
    recs["tools"]["reproducible"] = reproducible.xen_env(epoch)
    for rec in recs["kernels"].values():
        rec["reproducible"] = reproducible.linux_env(epoch + 100)


def test_manifest_records_the_pinned_settings_and_mtimes(tmp_path, records):  # noqa: F811
    _pin(records, 1700000000)
    dest = tmp_path / "a" / "install"
    manifest = stage.stage(dest, records["xen"], records["tools"], records["kernels"])
    section = manifest["reproducible"]
    assert section["SOURCE_DATE_EPOCH"] == 1700000100  # the newest source's
    assert section["builds"]["xen"]["XEN_BUILD_HOST"] == "xen-provision"
    assert section["builds"]["kernel:mk.linux-6.1-xenU"]["KBUILD_BUILD_TIMESTAMP"].endswith("2023")
    assert set(section["builds"]) == {"xen", "tools", "kernel:mk.linux-6.1-xenU"}
    everything = [dest, *dest.rglob("*"), tmp_path / "a" / "xen-4.17.5.elf"]
    assert {p.lstat().st_mtime for p in everything} == {1700000100}
    # Staged again elsewhere from the same records (a later time, another directory): the same tree.
    other = tmp_path / "b" / "install"
    again = stage.stage(other, records["xen"], records["tools"], records["kernels"])
    assert again == manifest
    assert (other / "manifest.json").read_bytes() == (dest / "manifest.json").read_bytes()
    # The tarball's members carry the pinned epoch, not the newest file's mtime or now.
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    a = inst.make_dist(tmp_path / "a").read_bytes()
    b = inst.make_dist(tmp_path / "b").read_bytes()
    assert a == b
    with tarfile.open(tmp_path / "a" / "xen-4.17.5-install.tgz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000100}


def test_records_from_before_pinning_have_no_section(tmp_path, records):  # noqa: F811
    manifest = stage.stage(tmp_path / "install", records["xen"], None, records["kernels"])
    assert manifest["reproducible"] is None


def test_parts(tmp_path):
    w = load(ROOT / "buildconfigs")
    everything = ("xen", "tools", "mk.linux-6.1-xen0", "mk.linux-6.1-xenU")
    assert verify.parse_parts(None, w) == everything
    assert verify.parse_parts("", w) == everything
    assert verify.parse_parts("xen,xenU", w) == ("xen", "mk.linux-6.1-xenU")
    assert verify.parse_parts("xen mk.linux-6.1-xenU xenU", w) == ("xen", "mk.linux-6.1-xenU")
    with pytest.raises(ProvisionError, match=r"'xenX' is not a part.*") as e:
        verify.parse_parts("xen,xenX", w)
    assert "xen, tools, mk.linux-6.1-xen0" in e.value.hint


def test_owned_splits_the_tree_by_part(tmp_path, records):  # noqa: F811
    manifest = stage.stage(tmp_path / "install", records["xen"], records["tools"], records["kernels"])
    files = verify.table(tmp_path / "install", manifest)
    by_part = {part: sorted(p for p in files if verify.owned(p, part, manifest))
               for part in ("xen", "tools", "mk.linux-6.1-xenU")}
    assert "../xen-4.17.5.elf" in by_part["xen"] and "boot/xen.gz" in by_part["xen"]
    assert "boot/vmlinuz-6.1.176-xenU" in by_part["mk.linux-6.1-xenU"]
    assert "lib/modules/6.1.176-xenU/modules.dep" in by_part["mk.linux-6.1-xenU"]
    assert by_part["tools"] == ["etc/xen/xl.conf", "usr/sbin/libxenctrl.so", "usr/sbin/xl"]
    # Every file belongs to exactly one part.
    assert sorted(sum(by_part.values(), [])) == sorted(files)


def test_verify_refuses_a_tree_staged_before_pinning(tmp_path, records):  # noqa: F811
    stage.stage(tmp_path / "dist" / "install", records["xen"], None, {})
    w = load(ROOT / "buildconfigs", kernels="")
    with pytest.raises(ProvisionError, match="before builds were pinned"):
        verify.verify(w, {}, {}, tmp_path / "dist", ("xen",), scratch=tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()
    assert json.loads((tmp_path / "dist/install/manifest.json").read_text())["reproducible"] is None


def _doit(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XEN_PROVISION_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "doit", "--db-file", str(tmp_path / ".doit.db"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)


def test_doit_verify_bad_input_is_one_line_and_builds_nothing(tmp_path):
    proc = _doit(tmp_path, "verify", f"dist={tmp_path / 'dist'}", "parts=xen,bogus")
    assert proc.returncode != 0
    assert [x for x in proc.stderr.splitlines() if x.startswith("error:")] == \
        ["error: parts=xen,bogus: 'bogus' is not a part of this world"]
    assert "hint: choose from xen, tools, mk.linux-6.1-xen0, mk.linux-6.1-xenU" in proc.stderr
    proc = _doit(tmp_path, "verify", f"dist={tmp_path / 'dist'}", "parts=xen")
    assert proc.returncode != 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "has no finished doit world to verify" in errors[0]
    assert "hint: run doit world first" in proc.stderr
    assert not (tmp_path / "dist").exists() and not (tmp_path / "cache" / "build").exists()
