"""Fixtures shared by the integration tests.

``world``: the real ``doit world`` with the default buildconfigs, run once per test
session in the checkout; returns the dist/install Path. Builds are cached (keyed by their
inputs under $XEN_PROVISION_CACHE), so after the first session this only checks and,
in a fresh clone, restages.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORLD_TIMEOUT = 3 * 3600  # a cold build on 2 busy cores; reruns take seconds


def doit(*args: str, cwd: Path = ROOT, timeout: float = WORLD_TIMEOUT, log: Path | None = None):
    """Run ``python -m doit ARGS`` in the checkout; returns (CompletedProcess, seconds).

    Output goes to ``log`` when given (a cold build prints a lot), else is captured.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.monotonic()
    if log:
        with open(log, "w") as out:
            proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=cwd, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        proc.stdout = log.read_text()
    else:
        proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
        proc.stdout = proc.stdout + proc.stderr
    return proc, time.monotonic() - start


@pytest.fixture(scope="session")
def world() -> Path:
    """dist/install as the real ``doit world`` (default buildconfigs) staged it."""
    if os.geteuid() != 0:
        pytest.skip("the build runs as root in CI (setup-host installs its dependencies)")
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    log = dist / "world.log"
    # Several test sessions may share this checkout: one doit at a time.
    with open(dist / ".world.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc, seconds = doit("world", log=log)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        pytest.fail(f"doit world failed ({proc.returncode}) after {seconds:.0f}s; log {log}:\n{tail}")
    install = dist / "install"
    assert (install / "manifest.json").is_file(), "doit world succeeded but staged no manifest"
    return install
