"""Shared fixtures. Integration tests run the real tools as root and are marked
``integration``; they skip (saying why) only where the machine truly cannot run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    os.environ.setdefault(
        "XEN_PROVISION_CACHE", os.path.join(os.path.expanduser("~/.cache"), "xen-provision")
    )
    _hypothesis_profiles()


def _hypothesis_profiles():
    """Property tests: 'ci' (a fixed seed, a bounded number of examples; used when $CI is
    set), 'dev' (the same bound, a new seed each run), 'long' (many examples, for local
    runs). HYPOTHESIS_PROFILE=long python3 -m pytest tests/unit/test_cli_properties.py"""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # the property tests skip themselves then
        return
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                        HealthCheck.function_scoped_fixture])
    settings.register_profile("ci", max_examples=12, derandomize=True, database=None, print_blob=True, **common)
    settings.register_profile("dev", max_examples=12, **common)
    settings.register_profile("long", max_examples=400, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def run_cli():
    """Run ``python -m provision ARGS`` in a subprocess; returns CompletedProcess (text)."""

    def _run(*args, check=False, env=None, cwd=None, timeout=3600, input=None):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        if env:
            full_env.update(env)
        proc = subprocess.run(
            [sys.executable, "-m", "provision", *map(str, args)],
            capture_output=True, text=True, env=full_env, cwd=cwd or ROOT,
            timeout=timeout, input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"provision {args} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return _run


def is_root() -> bool:
    return os.geteuid() == 0


def have_device_mapper() -> bool:
    """device-mapper works when the control node exists and dmsetup can talk to it."""
    if not Path("/dev/mapper/control").exists() and not Path("/sys/class/misc/device-mapper").exists():
        return False
    try:
        return subprocess.run(["dmsetup", "version"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.fixture
def root_required():
    if not is_root():
        pytest.skip("needs root (loop devices, mounts); CI runs as root")


@pytest.fixture
def device_mapper_required(root_required):
    if not have_device_mapper():
        pytest.skip(
            "device-mapper is missing in this kernel, so lvm2 cannot create volumes here; "
            "the QEMU boot test (doit boottest) runs the LVM path for real inside dom0"
        )
