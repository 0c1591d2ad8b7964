"""Real Debian source packages through the host's own apt mirror configuration.

Uses the shared cache (so `doit world` and reruns reuse the trees), except where a test
needs an empty one. The host's /etc/apt must be byte-identical afterwards."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from provision.build import sources
from provision.build.sources import SourceSpec, fetch
from provision.errors import ProvisionError

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def snapshot(root: Path = Path("/etc/apt")) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir" if p.is_dir() else "other"
    return out


@pytest.fixture(scope="module")
def etc_apt():
    before = snapshot()
    yield before
    assert snapshot() == before, "the host's /etc/apt changed"


@pytest.fixture(scope="module", autouse=True)
def need_debian_mirror():
    if not sources.host_apt_entries():
        pytest.skip("this host's apt configuration has no Debian archive entry")


def test_fetch_xen(etc_apt):
    src = fetch(SourceSpec.from_dict({"kind": "debian", "package": "xen"}, "test"))
    assert src.version.startswith("4.17."), src.version
    assert (src.tree / "xen" / "Makefile").is_file() and (src.tree / "tools" / "xl").is_dir()
    assert (src.tree / "debian" / "changelog").is_file()  # dpkg-source applied the Debian layer
    # identity is the sha256 of the .dsc the tree came from, which lists every file's checksum
    dsc = next((Path(os.environ["XEN_PROVISION_CACHE"]) / "debian" / src.identity).glob("xen_*.dsc"))
    assert hashlib.sha256(dsc.read_bytes()).hexdigest() == src.identity
    sources.verify_dsc_files(dsc)
    start = time.monotonic()
    assert fetch(src.spec) == src
    assert time.monotonic() - start < 2.0


def linux_spec() -> SourceSpec:
    """The Linux source `doit world` uses (buildconfigs/world.toml) when it is a Debian one,
    so CI fetches one 140 MB tree, not two; else apt's candidate."""
    with open(ROOT / "buildconfigs" / "world.toml", "rb") as f:
        table = tomllib.load(f).get("linux", {}).get("source")
    if isinstance(table, dict) and table.get("kind") == "debian":
        return SourceSpec.from_dict(table, "buildconfigs/world.toml [linux]")
    return SourceSpec("debian", package="linux")


def test_fetch_linux(etc_apt):
    spec = linux_spec()
    src = fetch(spec)
    assert src.version.startswith("6.1."), src.version
    assert (src.tree / "arch" / "x86" / "xen").is_dir()
    assert (src.tree / "kernel" / "configs" / "xen.config").is_file()
    assert sources.tree_kind(src.tree) == "linux"
    start = time.monotonic()
    again = fetch(spec)
    elapsed = time.monotonic() - start
    assert again == src
    assert elapsed < 2.0, f"cached fetch took {elapsed:.1f}s"


def test_unknown_package_is_one_line(etc_apt):
    with pytest.raises(ProvisionError) as e:
        fetch(SourceSpec("debian", package="no-such-source-package-xyz"))
    assert str(e.value).startswith("no Debian source package no-such-source-package-xyz in ")
    with pytest.raises(ProvisionError, match="no Debian source package xen version 0.0.1-1"):
        fetch(SourceSpec("debian", package="xen", version="0.0.1-1"))


def test_corrupt_download_is_deleted_named_and_fetched_again(etc_apt, tmp_path, monkeypatch):
    """In an empty private cache: fetch, corrupt the cached orig tarball, fetch again."""
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    src = fetch(SourceSpec("debian", package="xen"))
    cache = tmp_path / "cache"
    orig = next((cache / "debian" / src.identity).glob("*.orig.tar.*"))
    data = bytearray(orig.read_bytes())
    data[len(data) // 2] ^= 0xFF
    orig.write_bytes(bytes(data))
    # Forget the unpacked tree so the next fetch has to use the (now corrupt) download.
    import shutil

    shutil.rmtree(cache / "sources" / src.identity)
    with pytest.raises(ProvisionError) as e:
        fetch(SourceSpec("debian", package="xen"))
    assert f"checksum mismatch for {orig.name}" in str(e.value)
    assert not orig.exists()
    assert not (cache / "sources" / src.identity).exists()
    again = fetch(SourceSpec("debian", package="xen"))
    assert again.identity == src.identity and (again.tree / "xen" / "Makefile").is_file()


def test_dry_run_on_an_empty_cache_changes_nothing(etc_apt, tmp_path, monkeypatch, capfd):
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(cache))
    src = fetch(SourceSpec("debian", package="linux"), dry_run=True)
    assert not cache.exists()
    err = capfd.readouterr().err
    assert "would update private deb-src lists" in err and "linux" in err
    assert src.version == "unknown"


def test_sigterm_during_fetch_leaves_nothing_half_made(etc_apt, tmp_path):
    """Interrupt a real linux fetch in an empty cache while apt downloads (or, on a fast
    mirror, while dpkg-source unpacks): the scratch directories go away and no tree appears."""
    cache = tmp_path / "cache"
    env = {**os.environ, "XEN_PROVISION_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    code = ("from provision.build.sources import SourceSpec, fetch\n"
            "fetch(SourceSpec('debian', package='linux'))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)

    def scratch(kind: str) -> list[Path]:
        return [p for p in (cache / kind).glob(".*") if p.is_dir()] if (cache / kind).exists() else []

    def downloading() -> bool:
        try:
            return any(f.stat().st_size > 1 << 20 for d in scratch("debian") for f in d.iterdir())
        except OSError:  # apt or our rename moved it meanwhile
            return False

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if downloading() or scratch("sources"):
            break
        if proc.poll() is not None:
            pytest.fail(f"fetch ended before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the fetch did not start within 180s")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert scratch("debian") == [] and scratch("sources") == []
    assert not (cache / "sources").exists() or list((cache / "sources").iterdir()) == []
