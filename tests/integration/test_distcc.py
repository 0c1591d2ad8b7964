"""distcc for real: distccd daemons on 127.0.0.1 (started and killed here) compiling
kernel objects that must be byte for byte the local ones.

CI-sized: the xenU recipe configured (tinyconfig + fragments), kbuild's prepare stage, and
a handful of objects built locally and then through the daemons with our make
environment (``CC="distcc gcc"``, ccache off so that every object really compiles). The
whole kernel and the timing comparison are bench/bench_distcc.py's. (The hypervisor does
not go through distcc: provision/build/distcc.py says why.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from provision.build import config, distcc, linux
from tests.integration.conftest import ROOT, doit

pytestmark = pytest.mark.integration

OBJECTS = ("init/main.o", "kernel/fork.o", "mm/mmap.o", "fs/open.o", "lib/string.o",
           "arch/x86/xen/enlighten.o", "drivers/xen/events/events_base.o")


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
def kernel_tree(tmp_path_factory):
    """The Linux source (the cache's) and a configured xenU build directory of our own."""
    tmp = tmp_path_factory.mktemp("kernel")
    proc, _ = doit("source:linux", f"dist={tmp / 'dist'}", "distcc=")
    assert proc.returncode == 0, proc.stdout[-3000:]
    tree = Path(json.loads((tmp / "dist/.stamps/source-linux.json").read_text())["tree"])
    recipe = config.load(ROOT / "buildconfigs", kernels=["mk.linux-6.1-xenU"]).kernels[0]
    out = tmp / "linux-xenU"
    out.mkdir()
    linux.configure(recipe, tree, out)
    return tree, out


def _objects(tree: Path, out: Path, plan) -> dict[str, str]:
    for name in OBJECTS:
        (out / name).unlink(missing_ok=True)
    linux._make(out, tree, *OBJECTS, distcc=plan)
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in OBJECTS}


def test_kernel_objects_through_distcc_are_identical_and_a_dead_host_is_dropped(
        daemons, kernel_tree, monkeypatch, capsys):
    monkeypatch.setenv("CCACHE_DISABLE", "1")  # compile every object, both ways
    tree, out = kernel_tree
    local = _objects(tree, out, None)
    dead = f"127.0.0.1:{_free_port()}/2"
    hosts = distcc.parse(" ".join(f"127.0.0.1:{d.port}/1" for d in daemons) + f" {dead}")
    distcc.prepare.cache_clear()
    plan = distcc.prepare(hosts)
    assert f"warning: distcc host {dead} is not usable" in capsys.readouterr().err
    assert [h.spec for h in plan.hosts] == [f"127.0.0.1:{d.port}/1" for d in daemons]
    before = sum(d.jobs() for d in daemons)
    assert _objects(tree, out, plan) == local
    assert sum(d.jobs() for d in daemons) - before >= len(OBJECTS), "the daemons compiled nothing"
    assert not any("COMPILE_ERROR" in d.log.read_text() for d in daemons)


def test_only_dead_hosts_mean_a_local_build_with_a_warning(daemons, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where distcc would leave distcc_*.i
    distcc.prepare.cache_clear()
    assert distcc.prepare(distcc.parse(f"127.0.0.1:{_free_port()}/4")) is None
    err = capsys.readouterr().err
    assert "is not usable" in err and "warning: no distcc host is usable: compiling locally" in err
    assert not list(tmp_path.iterdir()), "the probes left files behind"
    distcc.prepare.cache_clear()


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
