"""CONTROL FLOW of our xendomains init script, NOT Xen.

These tests put a recording stand-in for ``xl`` first on PATH. They check only what our
shell script decides: which domains it restores, creates, saves or shuts down, how many
it runs at once, what it reports and its exit code. Whether xl really creates domains
is shown by the QEMU boot test, where the same script runs against a real Xen.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provision.domain import xendomains
from provision.domain.paths import Paths

# A recording stand-in for xl (see the module docstring): state in $XL_STATE.
FAKE_XL = r"""#!/bin/sh
S="$XL_STATE"
touch "$S/running"
echo "$*" >> "$S/calls"
# Our script runs several xl at once: serialise this stand-in's read-modify-write of its state.
remove() { exec 9>"$S/lock"; flock 9; grep -vx "$1" "$S/running" > "$S/r.$$"; mv "$S/r.$$" "$S/running"; }
case "$1" in
info) exit 0 ;;
list)
    echo "Name                                        ID   Mem VCPUs      State   Time(s)"
    echo "Domain-0                                     0  1024     1     r-----      10.0"
    while read -r n; do echo "$n 1 64 1 -b---- 0.1"; done < "$S/running" ;;
create)
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$3")
    echo "start $name" >> "$S/events"
    sleep 1  # long enough that a second create overlaps even on a busy machine
    echo "end $name" >> "$S/events"
    if grep -qx "$name" "$S/fail" 2>/dev/null; then
        # What xl printed in the boot test for a disk that is not there: the cause, then the teardown.
        echo "libxl: error: libxl_device.c:455:libxl__device_disk_set_backend: Disk vdev=xvda failed to stat: /srv/$name.img: No such file or directory" >&2
        echo "libxl: error: libxl_domain.c:1064:domain_destroy_cb: Domain 3:Destruction of domain failed" >&2
        exit 3
    fi
    echo "$name" >> "$S/running" ;;
shutdown)
    grep -qx "$2" "$S/running" || { echo "$2 is an invalid domain identifier (rc=-6)" >&2; exit 1; }
    grep -qx "$2" "$S/stuck" 2>/dev/null && exit 0
    remove "$2" ;;
save)
    if grep -qx "$2" "$S/vanish" 2>/dev/null; then   # it shuts down by itself as the save starts
        remove "$2"; echo "$2 is an invalid domain identifier (rc=-6)" >&2; exit 1
    fi
    echo "$2" > "$3"
    remove "$2" ;;
restore)
    cat "$2" >> "$S/running" ;;
destroy)
    remove "$2" ;;
esac
"""


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    xl = bin_ / "xl"
    xl.write_text(FAKE_XL)
    xl.chmod(0o755)
    auto = tmp_path / "auto"
    auto.mkdir()
    script = tmp_path / "xendomains"
    text, _ = xendomains.render_files(Paths(root=tmp_path), xendomains.Settings(xen_service="xencommons"))[xendomains.SCRIPT]
    script.write_text(text)
    script.chmod(0o755)

    class Env:
        pass

    e = Env()
    e.state, e.auto, e.script, e.tmp = state, auto, script, tmp_path
    e.settings = tmp_path / "settings"
    e.path = f"{bin_}:/usr/bin:/bin"

    def configure(**kw):
        base = dict(XENDOMAINS_AUTO=str(auto), XENDOMAINS_SAVE="", XENDOMAINS_PARALLEL="2",
                    XENDOMAINS_STOP_MAXWAIT="5")
        base.update(kw)
        e.settings.write_text("".join(f"{k}={v}\n" for k, v in base.items()))

    def run(action):
        return subprocess.run(["/bin/sh", str(script), action], capture_output=True, text=True, timeout=60,
                              env={"PATH": e.path, "XL_STATE": str(state), "XENDOMAINS_CONFIG": str(e.settings)})

    def domain(name):
        (auto / f"{name}.cfg").write_text(f'name = "{name}"\nmemory = 64\n')

    def running():
        p = state / "running"
        return sorted(p.read_text().split()) if p.exists() else []

    e.configure, e.run, e.domain, e.running = configure, run, domain, running
    configure()
    return e


def max_parallel(events: Path) -> int:
    now = peak = 0
    for line in events.read_text().splitlines():
        now += 1 if line.startswith("start ") else -1
        peak = max(peak, now)
    return peak


def test_start_creates_auto_domains_bounded_and_reports_failures(env):
    for n in ("a", "b", "c", "d", "bad", "up"):
        env.domain(n)
    (env.state / "running").write_text("up\n")      # already running: left alone
    (env.state / "fail").write_text("bad\n")         # xl create fails for this one
    (env.auto / "gone.cfg").symlink_to("../nowhere.cfg")
    proc = env.run("start")
    assert proc.returncode == 1
    assert env.running() == ["a", "b", "c", "d", "up"]
    # The cause, xl's first error, not the teardown after it.
    failed = [line for line in proc.stderr.splitlines() if "FAILED to start bad" in line]
    assert len(failed) == 1 and failed[0].endswith("failed to stat: /srv/bad.img: No such file or directory")
    assert "skipping" in proc.stderr and "gone.cfg" in proc.stderr and "dangling" in proc.stderr
    assert "up is already running" in proc.stdout
    creates = [c for c in (env.state / "calls").read_text().splitlines() if c.startswith("create")]
    assert len(creates) == 5
    assert max_parallel(env.state / "events") == 2  # several at once, never more than the bound
    # One xl list for all seven configs (each xl call costs a second under the boot test's TCG).
    assert [c for c in (env.state / "calls").read_text().splitlines() if c.startswith("list")] == ["list"]


def test_start_all_good_exits_zero_and_is_idempotent(env):
    env.domain("a")
    env.domain("b")
    assert env.run("start").returncode == 0
    assert env.running() == ["a", "b"]
    again = env.run("start")
    assert again.returncode == 0 and "a is already running" in again.stdout
    assert env.running() == ["a", "b"]


def test_start_restores_saved_domains_first(env):
    save = env.tmp / "save"
    save.mkdir()
    (save / "old").write_text("old\n")
    env.configure(XENDOMAINS_SAVE=str(save))
    env.domain("a")
    proc = env.run("start")
    assert proc.returncode == 0, proc.stderr
    calls = (env.state / "calls").read_text().splitlines()
    assert calls.index(f"restore {save}/old") < next(i for i, c in enumerate(calls) if c.startswith("create"))
    assert env.running() == ["a", "old"] and not (save / "old").exists()


def test_stop_saves_when_a_save_dir_is_set(env):
    save = env.tmp / "save"
    env.configure(XENDOMAINS_SAVE=str(save))
    (env.state / "running").write_text("a\nb\n")
    proc = env.run("stop")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in save.iterdir()) == ["a", "b"] and env.running() == []


def test_stop_counts_a_domain_that_went_away_meanwhile_as_stopped(env):
    """Listed, then gone before its save (it shut down by itself): stopped, not a failure.
    Seen in the boot test, where a guest shut down just before xendomains stop ran."""
    save = env.tmp / "save"
    env.configure(XENDOMAINS_SAVE=str(save))
    (env.state / "running").write_text("a\nb\n")
    (env.state / "vanish").write_text("b\n")
    proc = env.run("stop")
    assert proc.returncode == 0, proc.stderr
    assert "b is no longer running (it stopped meanwhile)" in proc.stdout
    assert "could not" not in proc.stderr and "all domains stopped" in proc.stdout
    assert sorted(p.name for p in save.iterdir()) == ["a"] and env.running() == []


def test_stop_shuts_down_with_a_timeout(env):
    env.configure(XENDOMAINS_STOP_MAXWAIT="2")
    (env.state / "running").write_text("a\nstuck\n")
    (env.state / "stuck").write_text("stuck\n")
    proc = env.run("stop")
    assert proc.returncode == 1
    assert "still running after 2s: stuck" in proc.stderr
    assert env.running() == ["stuck"]
    env.configure(XENDOMAINS_STOP_MAXWAIT="1", XENDOMAINS_DESTROY_ON_TIMEOUT="true")
    proc = env.run("stop")
    assert "destroyed stuck" in proc.stderr and env.running() == []


def test_stop_only_auto_domains(env):
    env.configure(XENDOMAINS_STOP_ALL="false")
    env.domain("a")
    (env.state / "running").write_text("a\nother\n")
    assert env.run("stop").returncode == 0
    assert env.running() == ["other"]


def test_status(env):
    env.domain("a")
    env.domain("b")
    (env.state / "running").write_text("a\n")
    proc = env.run("status")
    assert proc.returncode == 3 and "a: running" in proc.stdout and "b: not running" in proc.stdout
    assert [c for c in (env.state / "calls").read_text().splitlines() if c.startswith("list")] == ["list"]


def test_no_xen(env):
    env.domain("a")
    (env.tmp / "bin" / "xl").write_text("#!/bin/sh\nexit 1\n")
    proc = env.run("start")
    assert proc.returncode == 1 and "xl cannot talk to Xen" in proc.stderr
