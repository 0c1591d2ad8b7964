"""Build trees and their outputs in the cache, keyed by their inputs.

Each build (the hypervisor, the tools, one kernel flavour) compiles in one work tree at a
stable path, ``$XEN_PROVISION_CACHE/build/<name>.work``, so make and kbuild rebuild only
what a changed input touches (their dependency records hold absolute paths: a tree must
not move). A finished build publishes the files staging needs into an immutable output
directory ``build/<name>-<key>``, the key being a hash of everything that decides them,
with ``build.json`` written last. The next run with the same inputs, even from a fresh
clone, takes that directory and runs no make at all.

    record = build_once(NAME, inputs, "hypervisor", compile)   # compile(work, out) -> record
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from provision import log
from provision.cache import cache_dir, manifest_key
from provision.fsutil import atomic_write
from provision.run import run

DONE = "build.json"
FORMAT = 1  # bump to invalidate every cached build tree


def jobs() -> int:
    """-j for make: $XEN_PROVISION_JOBS, else the number of CPUs we may use."""
    value = os.environ.get("XEN_PROVISION_JOBS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


CCACHE_DIR = Path("/usr/lib/ccache")  # Debian's gcc -> ccache masquerade links


def build_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for builds: ccache's masquerade directory first on PATH when ccache
    is installed (unless CCACHE_DISABLE). PATH rather than CC=, because Xen's tools pass
    $(CC) unquoted to sub-makes and "CC=ccache gcc" breaks them."""
    env = dict(extra or {})
    if (CCACHE_DIR / "gcc").exists() and not os.environ.get("CCACHE_DISABLE"):
        env["PATH"] = f"{CCACHE_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return env


def make(*args: str | os.PathLike, directory: Path, quiet: bool = False, env=None) -> None:
    run(["nice", "make", "-C", directory, f"-j{jobs()}", *args], quiet=quiet, env=build_env(env))


def key(name: str, inputs: dict) -> str:
    return manifest_key({"format": FORMAT, "name": name, **inputs})


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder per tree name at a time, across processes (tests, parallel doit)."""
    path = cache_dir("locks") / f"build-{name}.lock"
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def done(directory: Path) -> dict | None:
    try:
        return json.loads((directory / DONE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def reuse(directory: Path) -> dict | None:
    """The record of a finished tree, marked as just used (so pruning keeps it)."""
    record = done(directory)
    if record:
        os.utime(directory / DONE)
    return record


def finish(directory: Path, record: dict) -> dict:
    record = {**record, "finished_at": time.time()}  # tells a fresh build from a reused one
    atomic_write(directory / DONE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def output_dir(name: str, inputs: dict) -> Path:
    """Where the outputs of a build of ``name`` with ``inputs`` live (may not exist yet)."""
    return cache_dir("build") / f"{name}-{key(name, inputs)}"


def work_dir(name: str) -> Path:
    """The stable work tree of ``name``; use it with :func:`locked` held."""
    path = cache_dir("build") / f"{name}.work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(work: Path, out: Path, files: list[str], trees: dict[str, Path] | None = None) -> None:
    """Copy ``files`` (relative to ``work``; missing optional ones are skipped when they
    start with "?") and whole ``trees`` (name in ``out`` -> directory) into ``out``,
    built under a temporary name and renamed, so ``out`` is complete or absent."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _fill(work, tmp, files, trees or {})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)  # an unfinished one from an interrupted run
    os.replace(tmp, out)


def _fill(work: Path, tmp: Path, files: list[str], trees: dict[str, Path]) -> None:
    for rel in files:
        optional = rel.startswith("?")
        rel = rel.removeprefix("?")
        src = work / rel
        if optional and not src.exists():
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tmp / rel)
    for name, tree in trees.items():
        run(["cp", "-a", "--reflink=auto", f"{tree}/.", tmp / name])


def build_once(name: str, inputs: dict, label: str, build: Callable[[Path, Path], dict]) -> dict:
    """The build record of ``name`` for ``inputs``: the finished output directory's when
    there is one, else ``build(work, out)``'s, which compiles in the stable work tree,
    publishes into ``out`` and returns the record; that is then finished and older output
    directories pruned. The tree's lock is held throughout."""
    with locked(name):
        out = output_dir(name, inputs)
        if record := reuse(out):
            log.info(f"{label}: reusing the cached build {out.name}")
            return record
        record = finish(out, build(work_dir(name), out))
        prune(name)
        return record


def prune(name: str, keep: int = 3) -> None:
    """Keep only the ``keep`` most recently finished or reused output directories of
    ``name``, and drop unfinished ones. Call with :func:`locked` held: then no other
    process is publishing for this name."""
    root = cache_dir("build")
    trees = [p for p in root.glob(f"{name}-*")
             if re.fullmatch(r"[0-9a-f]{32}", p.name[len(name) + 1:]) and p.is_dir()]
    finished = sorted((p for p in trees if (p / DONE).exists()),
                      key=lambda p: (p / DONE).stat().st_mtime_ns, reverse=True)
    for old in finished[keep:] + [p for p in trees if not (p / DONE).exists()]:
        log.debug(f"pruning build tree {old}")
        shutil.rmtree(old, ignore_errors=True)
