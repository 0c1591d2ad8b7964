#!/usr/bin/env python3
"""Build benchmarks, side by side with what a user would run instead, in the same run.

    python3 bench/bench_build.py [--repeat N] [--skip-cold] [--json FILE]

1. Cold hypervisor build: ``doit xen`` (our defconfig + fragment + olddefconfig + check +
   make, with an empty build cache) versus plain ``make -C xen`` out of tree on the same
   source tree with the same .config. ccache is off for both and both use the same -j.
   Runs alternate (doit, make, doit, make...) so machine load hits both alike.
2. No-op ``doit world`` in the checkout (needs a finished ``doit world``).
3. Incremental ``doit world`` after touching only the xenU fragment (a private copy of
   buildconfigs, so the checkout is untouched).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.build import builddir  # noqa: E402
from provision.cache import cache_dir  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of all finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv, *, env=None, cwd=ROOT, log=None) -> float:
    start = time.monotonic()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, argv))} failed ({proc.returncode}); see {log}")
    return seconds


def ratios(ours: list[float], plain: list[float]) -> dict:
    a, b = statistics.median(ours), statistics.median(plain)
    return {"doit": round(a, 1), "make": round(b, 1), "ratio_of_medians": round(a / b, 3),
            "median_pair_ratio": round(statistics.median([x / y for x, y in zip(ours, plain, strict=True)]), 3)}


def doit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "doit", *args]


def private_cache(tmp: Path) -> Path:
    """A cache sharing our downloads and source trees but with no build trees."""
    real = cache_dir()
    fake = tmp / "cache"
    fake.mkdir()
    for entry in real.iterdir():
        if entry.name not in ("build", "locks"):
            (fake / entry.name).symlink_to(entry)
    return fake


def bench_cold(tmp: Path, repeat: int) -> dict:
    env = dict(os.environ, CCACHE_DISABLE="1", PYTHONPATH=str(ROOT))
    jobs = str(builddir.jobs())
    ours, plain, ours_cpu, plain_cpu = [], [], [], []
    for i in range(repeat):
        run_dir = tmp / f"cold{i}"
        run_dir.mkdir()
        env["XEN_PROVISION_CACHE"] = str(private_cache(run_dir))
        args = ("--db-file", str(run_dir / ".doit.db"), "xen", f"dist={run_dir / 'dist'}", "kernels=", f"jobs={jobs}")
        # The source first (not timed: both sides start from the same unpacked tree).
        timed(doit_argv("--db-file", str(run_dir / ".doit.db"), "source:xen", f"dist={run_dir / 'dist'}",
                        "kernels="), env=env, log=run_dir / "source.log")
        cpu = cpu_seconds()
        ours.append(timed(doit_argv(*args), env=env, log=run_dir / "doit-xen.log"))
        ours_cpu.append(cpu_seconds() - cpu)
        record = json.loads((run_dir / "dist/.stamps/xen.json").read_text())
        tree = Path(json.loads((run_dir / "dist/.stamps/source-xen.json").read_text())["tree"])
        out = run_dir / "plain"
        out.mkdir()
        shutil.copy(Path(record["dir"]) / ".config", out / ".config")
        start, cpu = time.monotonic(), cpu_seconds()
        timed(["make", "-C", tree / "xen", f"O={out}", "olddefconfig"], env=env, log=run_dir / "plain-config.log")
        timed(["nice", "make", "-C", tree / "xen", f"O={out}", f"-j{jobs}"], env=env,
              log=run_dir / "plain-make.log")
        plain.append(time.monotonic() - start)
        plain_cpu.append(cpu_seconds() - cpu)
        print(f"  run {i + 1}: doit xen {ours[-1]:.1f}s wall {ours_cpu[-1]:.1f}s CPU, "
              f"plain make -C xen {plain[-1]:.1f}s wall {plain_cpu[-1]:.1f}s CPU", flush=True)
        shutil.rmtree(run_dir)
    # Wall time follows the machine's load; CPU time (user + system of every process each
    # side ran) is what each side cost, and holds still on a shared machine.
    return {"wall_s": ratios(ours, plain), "cpu_s": ratios(ours_cpu, plain_cpu),
            "jobs": int(jobs), "runs": repeat}


def bench_noop(repeat: int = 5) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    times = [timed(doit_argv("world"), env=env) for _ in range(repeat)]
    return {"noop_world_s": round(statistics.median(times), 2), "max_s": round(max(times), 2)}


def bench_incremental(tmp: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    configs = tmp / "buildconfigs"
    shutil.copytree(ROOT / "buildconfigs", configs)
    args = ("--db-file", str(tmp / ".doit.db"), "world", f"buildconfigs={configs}", f"dist={tmp / 'dist'}")
    first = timed(doit_argv(*args), env=env, log=tmp / "inc-first.log")
    frag = configs / "linux-xenU.config"
    frag.write_text(frag.read_text() + f'CONFIG_DEFAULT_HOSTNAME="bench-{uuid.uuid4().hex[:8]}"\n')
    seconds = timed(doit_argv(*args), env=env, log=tmp / "inc.log")
    summary = [line for line in (tmp / "inc.log").read_text().splitlines() if line.startswith("world:")]
    return {"fresh_clone_world_s": round(first, 1), "xenU_fragment_change_s": round(seconds, 1),
            "summary": summary[-1] if summary else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="cold build pairs (default 1)")
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold hypervisor builds")
    parser.add_argument("--only-cold", action="store_true", help="only the cold hypervisor builds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-build.") as tmp:
        tmp = Path(tmp)
        if not args.skip_cold:
            print("cold hypervisor build: doit xen vs make -C xen (same tree, same .config)", flush=True)
            results["cold_hypervisor"] = bench_cold(tmp, args.repeat)
        if not args.only_cold:
            print("no-op doit world", flush=True)
            results["noop"] = bench_noop()
            print("incremental: only the xenU fragment changed", flush=True)
            inc = tmp / "inc"
            inc.mkdir()
            results["incremental"] = bench_incremental(inc)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
