"""distcc for real: distccd daemons on 127.0.0.1 (started and killed here), the hypervisor
built locally and through them, byte for byte the same.

Hypervisor-sized for CI (three builds of about 1.5 min each on 2 idle cores; the third is
all ccache hits). The builds use a private cache (sources hard-linked from the shared
one) so that deleting the hypervisor's tree between them leaves the shared cache alone,
and private ccache directories so that the distcc build really compiles. The kernel and
the timing comparison are bench/bench_distcc.py's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from provision.cache import cache_dir
from tests.integration.conftest import doit

pytestmark = pytest.mark.integration

# Xen writes the date, the time and the build host into the binary: pinned for both builds.
PINNED = {"XEN_BUILD_DATE": "Thu Jan  1 00:00:00 UTC 2026", "XEN_BUILD_TIME": "00:00:00",
          "XEN_BUILD_HOST": "xen-provision", "XEN_WHOAMI": "xen-provision", "XEN_DOMAIN": "invalid"}
OUTPUTS = ("xen.gz", "xen-syms", "xen")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.proc = subprocess.Popen(
            ["distccd", "--daemon", "--no-detach", "--user", "nobody", "--allow", "127.0.0.1",
             "--listen", "127.0.0.1", "--port", str(port), "--jobs", "1", "--log-stderr",
             "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"distccd did not listen on 127.0.0.1:{port}: {log.read_text()}")

    def jobs(self) -> int:
        return self.log.read_text().count("COMPILE_OK")

    def stop(self) -> None:
        # distccd forks its workers into our new session: end that process group only.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    if shutil.which("distccd") is None:
        pytest.skip("distcc is not installed (setup-host installs it)")
    if os.geteuid() != 0:
        pytest.skip("the build runs as root in CI")
    logs = tmp_path_factory.mktemp("distccd")
    started = [Daemon(_free_port(), logs / f"distccd-{i}.log") for i in range(2)]
    yield started
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A cache of our own with the shared cache's sources hard-linked (when it has them)."""
    shared = cache_dir(create=False)
    cache = tmp_path_factory.mktemp("cache")
    for part in ("sources", "debian", "apt"):
        if (shared / part).is_dir():
            subprocess.run(["cp", "-al", shared / part, cache / part], check=True)
    return cache


def _build_xen(cache: Path, dist: Path, ccache: Path, monkeypatch, *args: str):
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(cache))
    monkeypatch.setenv("CCACHE_DIR", str(ccache))
    for k, v in PINNED.items():
        monkeypatch.setenv(k, v)
    for old in (cache / "build").glob("xen-hypervisor*"):  # its outputs and its work tree
        shutil.rmtree(old)
    proc, seconds = doit("xen", f"dist={dist}", *args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = next(p for p in (cache / "build").glob("xen-hypervisor-*") if p.is_dir())
    sums = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in OUTPUTS}
    return proc.stdout, sums, seconds


@pytest.fixture(scope="module")
def local_build(private_cache, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        tmp = tmp_path_factory.mktemp("local")
        _, sums, _ = _build_xen(private_cache, tmp / "dist", tmp / "ccache", mp, "distcc=")
    return sums, tmp / "ccache"


def test_distcc_build_is_identical_and_skips_a_dead_host(daemons, private_cache, local_build,
                                                         tmp_path, monkeypatch):
    local_sums, _ = local_build
    dead = _free_port()
    hosts = " ".join(f"127.0.0.1:{d.port}/1" for d in daemons) + f" 127.0.0.1:{dead}/2"
    # An empty ccache of its own: ccache misses, and hands every compile to distcc.
    out, sums, _ = _build_xen(private_cache, tmp_path / "dist", tmp_path / "ccache", monkeypatch,
                              f"distcc={hosts}")
    assert f"warning: distcc host 127.0.0.1:{dead}/2 is not usable" in out
    assert "through distcc (2 hosts)" in out
    assert sum(d.jobs() for d in daemons) > 50, "the daemons compiled (almost) nothing"
    assert sums == local_sums


def test_only_dead_hosts_build_locally_with_a_warning(daemons, private_cache, local_build,
                                                      tmp_path, monkeypatch):
    local_sums, local_ccache = local_build
    before = sum(d.jobs() for d in daemons)
    dead = _free_port()
    # The local build's ccache: all hits, so this third build is quick.
    out, sums, _ = _build_xen(private_cache, tmp_path / "dist", local_ccache, monkeypatch,
                              f"distcc=127.0.0.1:{dead}/4")
    assert "warning: no distcc host is usable: compiling locally" in out
    assert "through distcc" not in out
    assert sum(d.jobs() for d in daemons) == before
    assert sums == local_sums


def test_distcc_check_reports_live_and_dead(daemons, tmp_path):
    live = f"127.0.0.1:{daemons[0].port}/1"
    proc, _ = doit("distcc-check", f"distcc={live} localhost/1", f"dist={tmp_path}")
    assert proc.returncode == 0, proc.stdout
    assert f"{live}" in proc.stdout and " ok " in proc.stdout and "GCC: (" in proc.stdout
    dead = f"127.0.0.1:{_free_port()}/2"
    proc, _ = doit("distcc-check", f"distcc={live} {dead}", f"dist={tmp_path}")
    assert proc.returncode != 0
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: distcc host {dead} is not usable: nonblocking connect to "
                      f"{dead.split('/')[0]} failed: Connection refused"], proc.stdout
