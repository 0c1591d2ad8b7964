"""Build and run tests/xlcheck/xlcheck.c: Xen's own config parser (libxlutil) as a judge.

The binary is cached by the hash of its source, so reruns do not recompile.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from provision.cache import cache_dir

SOURCE = Path(__file__).with_name("xlcheck.c")


def build() -> Path:
    """Compile the checker (once per source version) and return its path."""
    key = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = cache_dir("xlcheck", key) / "xlcheck"
    if out.exists():
        return out
    if not shutil.which("gcc"):
        raise RuntimeError("gcc is missing: apt-get install gcc")
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "xlutil", "xenlight"],
                               check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        flags = ["-lxlutil", "-lxenlight"]
    tmp = out.with_name(f".xlcheck.{os.getpid()}")
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(tmp), str(SOURCE), *flags],
                   check=True, capture_output=True, text=True)
    tmp.replace(out)
    return out


def run(binary: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), str(config)], capture_output=True, text=True)


def accept(binary: Path, config: Path) -> str:
    """libxlutil's reading of ``config``; an AssertionError with its message if it refuses."""
    proc = run(binary, config)
    assert proc.returncode == 0, f"libxlutil refused {config}:\n{proc.stderr}\n{config.read_text()}"
    return proc.stdout


def accept_all(binary: Path, config_dir: Path) -> list[Path]:
    """Every domain config in ``config_dir`` (``*.cfg``) through libxlutil: the configs a
    test made, checked after it whatever it asserted itself. Returns the files checked."""
    found = sorted(config_dir.glob("*.cfg")) if config_dir.is_dir() else []
    for config in found:
        accept(binary, config)
    return found
