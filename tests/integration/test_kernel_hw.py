"""The hardware dom0 (issue 17): Debian's own config of our Linux source, trimmed by the
kernel's localmodconfig to an lsmod, with the Xen fragments on top.

The configuration test runs the real Kconfig (olddefconfig, localmodconfig) on the real
source tree but compiles nothing: seconds, fine for CI. The build test compiles the
trimmed kernel (the one the boot test boots as dom0), stages it with `doit world` and
installs the tree with install.sh: minutes on 2 cores, once per cache (the build is
reused by its inputs afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provision.build import config, debconfig, kconfig, linux
from provision.build.sources import fetch
from tests.integration.conftest import ROOT, doit

pytestmark = pytest.mark.integration

BUILDCONFIGS = ROOT / "buildconfigs"
QEMU_LSMOD = BUILDCONFIGS / "qemu-pc.lsmod"
HW = "mk.linux-6.1-xen0-hw"


@pytest.fixture(scope="module")
def tree(root_required_module) -> Path:
    world = config.load(BUILDCONFIGS, kernels=[])
    return fetch(world.linux_source).tree


@pytest.fixture(scope="module")
def root_required_module():
    import os
    if os.geteuid() != 0:
        pytest.skip("the build runs as root in CI (setup-host installs its dependencies)")


def _modules(values: dict[str, str]) -> set[str]:
    return {k for k, v in values.items() if v == "m"}


def test_debian_base_and_lsmod_trim_pass_the_require_checks(tree, tmp_path):
    (hw,) = config.load(BUILDCONFIGS, kernels=HW, lsmod_file=QEMU_LSMOD).kernels
    start = time.monotonic()
    final = linux.configure(hw, tree, tmp_path / "trimmed")  # raises on a dropped requirement
    base = debconfig.config(tree)
    print(f"configure: {time.monotonic() - start:.0f}s; modules {len(_modules(final))} "
          f"(Debian's files set {len(_modules(base))})")
    assert not kconfig.check(final, hw.ours(), hw.require, hw.forbid)
    assert final["MODULES"] == "y" and final["LOCALVERSION"] == '"-xen0-hw"'
    # Debian's base, not tinyconfig: its options are there (Debian sets them, tinyconfig does not).
    assert base["BUILD_SALT"] == final["BUILD_SALT"] and final["SECURITY_APPARMOR"] == "y"
    # The trim kept what the QEMU machine had loaded and dropped the rest (a tenth at most).
    assert len(_modules(final)) < len(_modules(base)) / 10
    for module in ("VIRTIO_BLK", "VIRTIO_NET", "ATA_PIIX", "EXT4_FS"):  # loaded there: kept (our
        assert final[module] in ("y", "m"), module                      # fragments build them in)
    assert final.get("BLK_DEV_SR") == "m" and final.get("KVM_AMD") == "m"  # loaded there, not ours
    assert final["E1000E"] == "y" and final["VIRTIO_NET"] == "y"  # our fragments win over the trim
    for option in ("EXT4_FS", "XEN_BLKDEV_BACKEND", "XEN_GNTDEV", "NFSD"):
        assert final[option] == "y", option
    assert base.get("SND_HDA_INTEL") == "m" and final.get("SND_HDA_INTEL", "n") == "n"


@pytest.mark.skipif(os.environ.get("XEN_PROVISION_HW_BUILD") != "1",
                    reason="compiles the trimmed hardware dom0 (Debian's config, ~1,700 built-in objects: "
                           "tens of minutes on 2 cores, beyond CI's budget with the rest); run with "
                           "XEN_PROVISION_HW_BUILD=1, or bench/bench_xen0_hw.py --skip-full")
def test_trimmed_hw_kernel_builds_stages_and_installs_its_modules(root_required_module, tmp_path):
    """doit world with the hardware dom0 trimmed to qemu-pc.lsmod; install.sh installs
    /lib/modules/RELEASE with modules.dep. (The boot test boots this kernel as dom0.)"""
    shutil.copytree(BUILDCONFIGS, tmp_path / "buildconfigs")
    proc, seconds = doit("--db-file", str(tmp_path / ".doit.db"), "world",
                         f"buildconfigs={tmp_path / 'buildconfigs'}", f"dist={tmp_path / 'dist'}",
                         f"kernels={HW},mk.linux-6.1-xenU", f"lsmod={QEMU_LSMOD}",
                         log=tmp_path / "world.log")
    assert proc.returncode == 0, proc.stdout[-3000:]
    print(f"doit world with the trimmed hardware xen0: {seconds:.0f}s")
    install = tmp_path / "dist/install"
    kernel = json.loads((install / "manifest.json").read_text())["kernels"][HW]
    release = kernel["release"]
    assert release.endswith("-xen0-hw")
    cfg = kconfig.parse((install / kernel["config"]).read_text())
    assert cfg["MODULES"] == "y"
    kos = sorted((install / "lib/modules" / release).rglob("*.ko"))
    assert kos, "no modules staged"
    dest = tmp_path / "root"
    dest.mkdir()
    subprocess.run(["sh", ROOT / "install.sh", "--from", install, "-q", dest], check=True)
    moddir = dest / "lib/modules" / release
    for ko in kos:
        assert (moddir / ko.relative_to(install / "lib/modules" / release)).is_file(), ko.name
    dep = (moddir / "modules.dep").read_text()
    assert all(str(ko.relative_to(install / "lib/modules" / release)) + ":" in dep for ko in kos)
    probe = subprocess.run(["modprobe", "--dirname", dest, "--set-version", release, "--dry-run",
                            "--show-depends", kos[0].name.removesuffix(".ko")],
                           capture_output=True, text=True)
    assert probe.returncode == 0 and str(moddir) in probe.stdout, probe.stderr
