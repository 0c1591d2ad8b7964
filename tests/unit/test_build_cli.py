"""The build's front doors refuse bad input with one line, before building anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_world_unknown_kernel_lists_the_existing_ones(run_cli, tmp_path):
    proc = run_cli("world", "--kernels", "mk.linux-6.1-xenX", "--dist", tmp_path / "dist",
                   "--db-file", tmp_path / ".doit.db")
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert line.startswith("error: unknown kernel 'mk.linux-6.1-xenX'")
    assert line.endswith("has: mk.linux-6.1-xen0, mk.linux-6.1-xen0-hw, mk.linux-6.1-xenU")
    assert not (tmp_path / "dist").exists()


def test_doit_world_unknown_kernel(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "--db-file", str(tmp_path / ".doit.db"), "world",
         "kernels=xenU", f"dist={tmp_path / 'dist'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert "unknown kernel 'xenU'" in line and "mk.linux-6.1-xenU" in line
    assert "Traceback" not in proc.stderr


def test_world_bad_fragment(run_cli, tmp_path):
    import shutil

    configs = tmp_path / "buildconfigs"
    shutil.copytree(ROOT / "buildconfigs", configs)
    (configs / "xen.config").write_text("CONFIG_SCHED_CREDIT2_DEFAULT=y\nsched=credit2\n")
    proc = run_cli("world", "--buildconfigs", configs, "--dist", tmp_path / "dist",
                   "--db-file", tmp_path / ".doit.db")
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert line == f"error: {configs}/xen.config:2: not a Kconfig setting: sched=credit2"


def test_doit_list_explains_every_task():
    proc = subprocess.run([sys.executable, "-m", "doit", "list", "--all"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = {line.split()[0] for line in lines}
    assert {"world", "xen", "tools", "stage", "source", "kernel", "kernel:mk.linux-6.1-xen0",
            "kernel:mk.linux-6.1-xenU"} <= names
    for line in lines:
        assert len(line.split(None, 1)) == 2, f"task without a description: {line}"
