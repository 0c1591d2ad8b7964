#!/usr/bin/env python3
"""Bench: ``image --debootstrap`` against plain mmdebstrap, same run, same mirror.

    sudo python3 bench/bench_debootstrap.py [--suite bookworm] [--size 2G] [--rounds 1]

1. cold: ``python -m provision image --debootstrap SUITE --file A.img`` with an empty
   cache, against what a user types today for the same image: ``mmdebstrap --variant=minbase
   --include=<the same boot packages> SUITE DIR MIRROR``, ``truncate``, ``mkfs.ext4 -d DIR``.
   Target: ratio <= 1.1.
   The plain run is timed twice, its tree beside the image and on tmpfs; the faster counts.
2. warm: the same command again (the base comes from the cache). Target: < 5 s.
3. template: ``--from-template`` to a new 2 GiB image. Target: < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.guest.bootstrap import resolve  # noqa: E402

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


STEPS: list[dict[str, float]] = []   # our runs' per-step seconds, in run order


def timed(argv, env=None) -> float:
    start = time.monotonic()
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env)
    took = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, argv))} failed:\n{p.stderr[-3000:]}")
    for line in p.stderr.splitlines():   # `steps: base 12.3s, filesystem: mkfs 0.9s, ...` (--debug)
        if "steps: " in line:
            STEPS.append(parse_steps(line.split("steps: ", 1)[1]))
    return took


def parse_steps(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(", "):
        name, _, secs = item.rpartition(" ")
        out[name] = float(secs.rstrip("s"))
    return out


def ours(args, env, *extra) -> float:
    """Our image command, with the per-step table it logs under --debug kept in STEPS."""
    return timed([sys.executable, "-m", "provision", "image", "--debootstrap", args.suite, *extra],
                 {**env, "XEN_PROVISION_DEBUG": "1"})


def baseline(args, spec, work: Path, n: int, tree_in: Path | None = None) -> float:
    """What a user runs today for the same (unconfigured) image; the tree beside the
    image, or in ``tree_in`` (tmpfs, as we use it)."""
    root, img = (tree_in or work) / f"plain{n}.root", work / f"plain{n}.img"
    start = time.monotonic()
    timed(["mmdebstrap", "--variant=minbase", f"--include={','.join(spec.include)}", args.suite, root, spec.mirror])
    timed(["truncate", "-s", args.size, img])
    timed(["mkfs.ext4", "-F", "-q", "-d", root, img], {**os.environ, "PATH": PATH})
    took = time.monotonic() - start
    shutil.rmtree(root)
    img.unlink()
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--size", default="2G")
    ap.add_argument("--rounds", type=int, default=1, help="cold runs of each (alternating)")
    ap.add_argument("--workdir", help="where images go (default: a temporary directory)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the backends chroot)")
    work = Path(tempfile.mkdtemp(prefix="bench-debootstrap.", dir=args.workdir))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XEN_PROVISION_CACHE": str(work / "cache"),
           "XEN_PROVISION_TEMPLATES": str(work / "templates")}
    spec = resolve(args.suite)
    results: dict[str, list[float]] = {"plain_mmdebstrap": [], "plain_mmdebstrap_tmpfs": [], "cold": [],
                                       "warm": [], "template": []}
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    cold_steps: list[dict[str, float]] = []
    try:
        for n in range(args.rounds):
            results["plain_mmdebstrap"].append(baseline(args, spec, work, n))
            if shm:
                results["plain_mmdebstrap_tmpfs"].append(baseline(args, spec, work, n, shm))
            shutil.rmtree(work / "cache", ignore_errors=True)
            results["cold"].append(ours(args, env, "--file", work / f"cold{n}.img", "--size", args.size,
                                        "--hostname", f"cold{n}"))
            cold_steps.append(STEPS[-1])
            print(f"round {n + 1}: plain {results['plain_mmdebstrap'][-1]:.1f}s, ours cold {results['cold'][-1]:.1f}s",
                  file=sys.stderr)
        for n in range(3):
            extra = ["--save-template", "bench"] if n == 0 else []
            results["warm"].append(ours(args, env, "--file", work / f"warm{n}.img", "--size", args.size,
                                        "--hostname", f"warm{n}", "--ip", f"192.0.2.{10 + n}/24", *extra))
        for n in range(3):
            results["template"].append(timed(
                [sys.executable, "-m", "provision", "image", "--from-template", "bench", "--file", work / f"t{n}.img",
                 "--hostname", f"t{n}", "--ip", f"192.0.2.{20 + n}/24"], env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: min(v) for k, v in results.items() if v}
    plain = min(best["plain_mmdebstrap"], best.get("plain_mmdebstrap_tmpfs", 1e9))  # the faster of the two
    # Per round, the faster of the plain runs; the medians over the rounds are compared.
    plains = [min(pair) for pair in zip(results["plain_mmdebstrap"],
                                        results["plain_mmdebstrap_tmpfs"] or results["plain_mmdebstrap"],
                                        strict=True)]
    ratio = best["cold"] / plain
    report = {
        "suite": args.suite, "size": args.size, "mirror": spec.mirror, "packages": list(spec.include),
        "seconds": {k: [round(x, 2) for x in v] for k, v in results.items()},
        "cold_ratio": round(ratio, 3),
        "cold_median_ratio": round(statistics.median(results["cold"]) / statistics.median(plains), 3),
        # Where the cold runs' time went, step by step (median over the rounds); parts of a
        # step are "step: part", work beside the critical path is "(background) ...".
        "cold_steps": {k: round(statistics.median(s.get(k, 0.0) for s in cold_steps), 2)
                       for k in dict.fromkeys(k for s in cold_steps for k in s)},
        "targets": {"cold_ratio<=1.1": ratio <= 1.1, "warm<5s": best["warm"] < 5, "template<2s": best["template"] < 2},
    }
    print(json.dumps(report, indent=2))
    print(f"cold: ours {best['cold']:.1f}s vs plain mmdebstrap+mkfs {plain:.1f}s "
          f"= {ratio:.2f}x (target <= 1.1); warm {best['warm']:.2f}s (< 5); "
          f"template {best['template']:.2f}s (< 2)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
