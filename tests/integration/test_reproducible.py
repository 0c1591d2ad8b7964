"""Reproducible builds, hypervisor-sized (CI's share; bench/bench_reproducible.py compares
everything): the hypervisor built by ``doit world`` (through ccache, as world builds)
and rebuilt by ``doit verify`` in an empty scratch cache without ccache are the same
bytes, the dist tarball too; a changed staged file is named as the first difference."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from provision.build import stage
from tests.integration.conftest import ROOT, doit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def xen_world(tmp_path_factory):
    """dist/install of a world of the hypervisor alone (no tools, no kernels)."""
    if os.geteuid() != 0:
        pytest.skip("the build runs as root in CI (setup-host installs its dependencies)")
    tmp = tmp_path_factory.mktemp("reproducible")
    shutil.copytree(ROOT / "buildconfigs", tmp / "buildconfigs")
    toml = tmp / "buildconfigs/world.toml"
    text = re.sub(r"(?m)^KERNELS = .*$", "KERNELS = []", toml.read_text())
    toml.write_text(text.replace("[xen.tools]\n", "[xen.tools]\nenabled = false\n", 1).replace(
        "\nenabled = true\n", "\n", 1))
    args = ["--db-file", str(tmp / ".doit.db")]
    variables = [f"buildconfigs={tmp / 'buildconfigs'}", f"dist={tmp / 'dist'}"]
    for task in ("world", "dist"):
        proc, _ = doit(*args, task, *variables, log=tmp / f"{task}.log")
        assert proc.returncode == 0, proc.stdout[-3000:]
    return tmp, args, variables


def _verify(xen_world, *extra: str):
    tmp, args, variables = xen_world
    return doit(*args, "verify", *variables, *extra, log=tmp / f"verify-{time.monotonic_ns()}.log")


def test_world_records_the_pinned_build(xen_world):
    tmp, _, _ = xen_world
    m = json.loads((tmp / "dist/install/manifest.json").read_text())
    pinned = m["reproducible"]
    xen = pinned["builds"]["xen"]
    assert set(pinned["builds"]) == {"xen"}
    assert xen["XEN_BUILD_HOST"] == xen["XEN_WHOAMI"] == "xen-provision"
    assert pinned["SOURCE_DATE_EPOCH"] == int(xen["SOURCE_DATE_EPOCH"])
    # The date in the hypervisor is the pinned one, not today's (Debian's Xen names the
    # distribution instead of user@domain; an upstream tree would carry xen-provision).
    syms = (tmp / "dist/install" / m["xen"]["syms"]).read_bytes()
    assert xen["XEN_BUILD_DATE"].encode() in syms
    assert b"/var/" not in syms and str(tmp).encode() not in syms  # no cache path
    for path in (tmp / "dist/install").rglob("*"):
        assert path.lstat().st_mtime == pinned["SOURCE_DATE_EPOCH"], path


def test_verify_rebuilds_the_same_bytes_and_names_a_changed_file(xen_world):
    tmp, _, _ = xen_world
    scratch = tmp / "scratch"
    proc, seconds = _verify(xen_world, f"scratch={scratch}")
    print(f"doit verify (the hypervisor, no ccache): {seconds:.1f}s")
    assert proc.returncode == 0, proc.stdout[-3000:]
    ok = [line for line in proc.stdout.splitlines() if line.startswith("verify: OK")]
    assert len(ok) == 1 and re.fullmatch(r"verify: OK, \d+ files compared, identical \(xen rebuilt\)", ok[0]), ok
    assert int(ok[0].split()[2]) == 8  # xen-*.gz, its 3 links, syms, config, the ELF; the tarball
    assert (scratch / "cache/build").is_dir() and (scratch / "dist/install/manifest.json").is_file()

    install = tmp / "dist/install"
    manifest = json.loads((install / "manifest.json").read_text())
    config = install / manifest["xen"]["config"]
    want = manifest["files"][manifest["xen"]["config"]]["sha256"]

    # Changed after staging: named from the manifest alone, without rebuilding.
    config.chmod(0o644)
    config.write_text(config.read_text() + "# changed\n")
    proc, _ = _verify(xen_world, f"scratch={scratch}", "parts=xen")
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{config} does not match manifest.json: expected {want} (mode 0644), staged" \
        in errors[0], proc.stdout[-2000:]

    # A dist that was built differently (its manifest says so): the rebuild names the file,
    # with both digests. The scratch directory's builds are reused: no second compile.
    stage.seal(install, {k: v for k, v in manifest.items() if k not in ("files", "dirs")})
    proc, _ = _verify(xen_world, f"scratch={scratch}", "parts=xen")
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stdout[-2000:]
    got = re.fullmatch(r"error: verify: (\S+) differs: expected ([0-9a-f]{64}) \(mode \d+\), "
                       r"rebuilt ([0-9a-f]{64}) \(mode \d+\)", errors[0])
    assert got and got.group(1) == manifest["xen"]["config"] and got.group(3) == want, errors[0]
    assert "Traceback" not in proc.stdout


def test_bad_parts_is_one_line(xen_world):
    proc, _ = _verify(xen_world, "parts=xen,nosuch")
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: parts=xen,nosuch: 'nosuch' is not a part of this world"], proc.stdout[-2000:]
    assert "hint: choose from xen" in proc.stdout
