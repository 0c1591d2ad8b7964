"""Source specs, the host apt configuration reader, .dsc verification, tree detection and
local sources. No network, no root: real files in temp dirs and the real dpkg."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from provision.build import sources
from provision.build.sources import SourceSpec, fetch
from provision.errors import ProvisionError


def make_xen_tree(root: Path, extra=".5$(XEN_VENDORVERSION)") -> Path:
    (root / "xen").mkdir(parents=True)
    (root / "xen" / "Makefile").write_text(
        "# xen/Makefile\n"
        "export XEN_VERSION       = 4\n"
        "export XEN_SUBVERSION    = 17\n"
        f"export XEN_EXTRAVERSION ?= {extra}\n"
        "export XEN_FULLVERSION   = $(XEN_VERSION).$(XEN_SUBVERSION)$(XEN_EXTRAVERSION)\n"
    )
    (root / "tools").mkdir()
    return root


def make_linux_tree(root: Path, sublevel="158", extra="") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Makefile").write_text(
        f"# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = {sublevel}\n"
        f"EXTRAVERSION ={extra}\nNAME = Curry Ramen\n"
    )
    (root / "Kconfig").write_text("mainmenu \"Linux\"\n")
    (root / "arch" / "x86").mkdir(parents=True)
    return root


# ------------------------------------------------------------------ SourceSpec.from_dict


def test_from_dict_valid_kinds(tmp_path):
    assert SourceSpec.from_dict({"kind": "debian", "package": "xen"}, "x") == SourceSpec("debian", package="xen")
    d = SourceSpec.from_dict({"kind": "debian", "package": "linux", "version": "6.1.170-3"}, "x")
    assert d.version == "6.1.170-3"
    sha = "A" * 64
    t = SourceSpec.from_dict({"kind": "tarball", "url": "https://e.org/xen-4.19.1.tar.gz", "sha256": sha}, "x")
    assert t.sha256 == "a" * 64 and t.url.endswith("xen-4.19.1.tar.gz")
    loc = SourceSpec.from_dict({"kind": "local", "path": str(tmp_path), "package": "linux"}, "x")
    assert loc.path == str(tmp_path) and loc.package == "linux"


@pytest.mark.parametrize(
    "d, words",
    [
        ({"package": "xen"}, "kind must be one of"),
        ({"kind": "git", "url": "x"}, "kind must be one of"),
        ({"kind": "debian"}, "needs 'package'"),
        ({"kind": "debian", "package": "Xen!"}, "needs 'package'"),
        ({"kind": "debian", "package": "xen", "version": "4.17 beta"}, "not a Debian version"),
        ({"kind": "debian", "package": "xen", "url": "http://x/y.tgz"}, "unknown key for a debian source: url"),
        ({"kind": "tarball", "url": "ftp://x/y.tgz", "sha256": "a" * 64}, "http(s)://"),
        ({"kind": "tarball", "url": "https://x/y.tgz", "sha256": "abc"}, "64 hex digits"),
        ({"kind": "tarball", "url": "https://x/y.tgz"}, "64 hex digits"),
        ({"kind": "tarball", "url": "https://x/", "sha256": "a" * 64}, "file name"),
        ({"kind": "tarball", "url": "https://x/y.tgz", "sha256": "a" * 64, "package": "qemu"}, "one of xen, linux"),
        ({"kind": "local"}, "needs 'path'"),
        ({"kind": "local", "path": 42}, "non-empty string"),
    ],
)
def test_from_dict_rejects_with_one_line_naming_what(d, words):
    with pytest.raises(ProvisionError) as e:
        SourceSpec.from_dict(d, "buildconfigs/xen.toml [source]")
    msg = str(e.value)
    assert msg.startswith("buildconfigs/xen.toml [source]: ")
    assert words in msg
    assert "\n" not in msg


def test_from_dict_not_a_table():
    with pytest.raises(ProvisionError, match="must be a table"):
        SourceSpec.from_dict("debian", "k")


# ------------------------------------------------------------------ host apt configuration


def test_host_apt_entries_reads_both_formats_and_keeps_only_debian(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(
        "# comment\n"
        "deb http://ftp.de.debian.org/debian/ bookworm main contrib\n"
        "deb-src http://ftp.de.debian.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.example.net/debian bookworm-updates main  # trailing comment\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/docker.gpg] https://download.docker.com/linux/debian bookworm stable\n"
    )
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb deb-src\n"
        "URIs: http://deb.debian.org/debian\n"
        "Suites: trixie trixie-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "# disabled\n"
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian\n"
        "Suites: sid\n"
        "Components: main\n"
        "Enabled: no\n"
        "\n"
        "Types: deb\n"
        "URIs: http://security.debian.org/debian-security\n"
        "Suites: trixie-security\n"
        "Components: main\n"
        "Signed-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        " .\n"
        " mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9CLGpJEmYGbpXR2bj\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n"
    )
    (etc / "sources.list.d" / "nodesource.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/nodesource.gpg\n"
    )
    # apt ignores these names; so must we.
    (etc / "sources.list.d" / "old.list.disabled").write_text("deb http://deb.debian.org/debian buster main\n")
    (etc / "sources.list.d" / "x.list.save").write_text("deb http://deb.debian.org/debian jessie main\n")

    entries = sources.host_apt_entries(etc)
    got = [(e.uri, e.suite, e.components) for e in entries]
    assert got == [
        ("http://ftp.de.debian.org/debian", "bookworm", ("main", "contrib")),
        ("http://mirror.example.net/debian", "bookworm-updates", ("main",)),
        ("http://deb.debian.org/debian", "trixie", ("main",)),
        ("http://deb.debian.org/debian", "trixie-updates", ("main",)),
        ("http://security.debian.org/debian-security", "trixie-security", ("main",)),
    ]
    assert entries[1].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    inline = entries[4].signed_by
    assert inline.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----") or inline.startswith("\n-----BEGIN")
    # The private list is deb822 deb-src, keeping the inline key block intact.
    text = entries[4].deb822()
    assert text.startswith("Types: deb-src\nURIs: http://security.debian.org/debian-security\n")
    assert " -----END PGP PUBLIC KEY BLOCK-----\n" in text and "\n .\n" in text


def test_is_debian_archive():
    assert sources.is_debian_archive("http://deb.debian.org/debian", None)
    assert sources.is_debian_archive("https://mirror.example.org/pub/debian/", None)
    assert sources.is_debian_archive("http://archive.debian.org/debian-archive", None)
    assert not sources.is_debian_archive("http://archive.ubuntu.com/ubuntu", None)
    assert not sources.is_debian_archive("https://download.docker.com/linux/debian", "/usr/share/keyrings/docker.gpg")
    assert not sources.is_debian_archive("cdrom:[Debian GNU/Linux]/", None)


def test_private_apt_writes_only_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    entries = [sources.AptEntry("http://deb.debian.org/debian", "bookworm", ("main",),
                                "/usr/share/keyrings/debian-archive-keyring.gpg")]
    apt = sources.PrivateApt(entries)
    apt.setup()
    conf = (apt.root / "etc" / "apt.conf").read_text()
    assert f'Dir::State "{apt.root}/state";' in conf
    assert 'Dir::Etc::main "/dev/null";' in conf  # the host's apt.conf.d hooks must not run
    listing = (apt.root / "etc" / "sources.list.d" / "debian-src.sources").read_text()
    assert listing.startswith("Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n")
    argv = apt.argv("update")
    assert argv[0] == "apt-get" and f"Dir::State={apt.root}/state" in argv
    # apt itself parses our config (a syntax error would fail here).
    dump = subprocess.run(["apt-config", "dump"], env={**os.environ, "APT_CONFIG": apt.env["APT_CONFIG"]},
                          capture_output=True, text=True, check=True).stdout
    assert f'Dir::Cache "{apt.root}/cache";' in dump
    assert str(tmp_path / "cache") in str(apt.root)


def test_no_debian_entries_is_one_line():
    with pytest.raises(ProvisionError, match="no Debian archive 'deb' entry"):
        sources.PrivateApt([])


# ------------------------------------------------------------------ Debian versions


PAIRS = [
    ("4.17.5+72-g01140da4e8-1", "4.17.7+13-g2445b30a44-0+deb12u1"),
    ("6.1.8-1", "6.1.170-3"),
    ("6.1.170-3", "6.1.176-1"),
    ("6.1.192-1", "6.1.192-2"),
    ("1.0~rc1-1", "1.0-1"),
    ("1:0.9-1", "2.0-1"),
    ("1.0a-1", "1.0+b1-1"),
    ("1.0-1", "1.0-1+deb12u1"),
    ("2.30-1", "2.4-1"),
    ("1.0", "1.0-0.1"),
]


@pytest.mark.parametrize("a, b", PAIRS)
def test_debian_version_order_matches_dpkg(a, b):
    for x, y in ((a, b), (b, a)):
        lt = subprocess.run(["dpkg", "--compare-versions", x, "lt", y]).returncode == 0
        assert (sources.debian_version_key(x) < sources.debian_version_key(y)) == lt, (x, y)


# ------------------------------------------------------------------ .dsc verification


def write_dsc(directory: Path, files: dict[str, bytes]) -> Path:
    lines = ["Format: 3.0 (quilt)", "Source: demo", "Version: 1.2-1", "Checksums-Sha256:"]
    for name, data in files.items():
        (directory / name).write_bytes(data)
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    lines.append("Files:")
    dsc = directory / "demo_1.2-1.dsc"
    dsc.write_text("\n".join(lines) + "\n")
    return dsc


def test_verify_dsc_files_accepts_good_files(tmp_path):
    dsc = write_dsc(tmp_path, {"demo_1.2.orig.tar.xz": b"orig" * 1000, "demo_1.2-1.debian.tar.xz": b"deb"})
    assert sources.parse_dsc(dsc)["demo_1.2-1.debian.tar.xz"] == (3, hashlib.sha256(b"deb").hexdigest())
    sources.verify_dsc_files(dsc)


def test_verify_dsc_files_deletes_and_names_a_corrupt_file(tmp_path):
    dsc = write_dsc(tmp_path, {"demo_1.2.orig.tar.xz": b"orig" * 1000, "demo_1.2-1.debian.tar.xz": b"deb"})
    (tmp_path / "demo_1.2.orig.tar.xz").write_bytes(b"orig" * 999 + b"ORIG")
    with pytest.raises(ProvisionError) as e:
        sources.verify_dsc_files(dsc)
    assert "checksum mismatch for demo_1.2.orig.tar.xz" in str(e.value)
    assert "deleted" in str(e.value)
    assert not (tmp_path / "demo_1.2.orig.tar.xz").exists()
    assert (tmp_path / "demo_1.2-1.debian.tar.xz").exists()


def test_verify_dsc_files_missing_file(tmp_path):
    dsc = write_dsc(tmp_path, {"demo_1.2.orig.tar.xz": b"x"})
    (tmp_path / "demo_1.2.orig.tar.xz").unlink()
    with pytest.raises(ProvisionError, match="demo_1.2.orig.tar.xz is missing"):
        sources.verify_dsc_files(dsc)


def test_parse_dsc_without_checksums(tmp_path):
    dsc = tmp_path / "bad.dsc"
    dsc.write_text("Source: demo\n")
    with pytest.raises(ProvisionError, match="no Checksums-Sha256"):
        sources.parse_dsc(dsc)


# ------------------------------------------------------------------ trees and local sources


def test_tree_versions(tmp_path):
    assert sources.tree_version(make_xen_tree(tmp_path / "xen")) == "4.17.5"
    assert sources.tree_version(make_xen_tree(tmp_path / "xen-rc", extra="-rc")) == "4.17-rc"
    assert sources.tree_version(make_linux_tree(tmp_path / "linux")) == "6.1.158"
    assert sources.tree_version(make_linux_tree(tmp_path / "linux-rc", "0", " -rc3")) == "6.1.0-rc3"
    assert sources.tree_kind(tmp_path) is None


def test_local_source(tmp_path):
    tree = make_linux_tree(tmp_path / "linux-6.1")
    spec = SourceSpec.from_dict({"kind": "local", "path": str(tree), "package": "linux"}, "k")
    src = fetch(spec)
    assert src.tree == tree and src.version == "6.1.158" and src.spec is spec
    assert fetch(spec).identity == src.identity  # stable
    time.sleep(0.01)
    (tree / "arch" / "x86" / "Kconfig").write_text("config X86\n")
    assert fetch(spec).identity != src.identity  # a changed tree is a new input


def test_local_source_bad_input(tmp_path):
    with pytest.raises(ProvisionError, match="does not exist"):
        fetch(SourceSpec("local", path=str(tmp_path / "nope")))
    with pytest.raises(ProvisionError, match="does not look like a Xen or Linux source tree"):
        fetch(SourceSpec("local", path=str(tmp_path)))
    xen = make_xen_tree(tmp_path / "xen")
    with pytest.raises(ProvisionError, match="is a xen tree, not linux"):
        fetch(SourceSpec("local", package="linux", path=str(xen)))
