#!/usr/bin/env python3
"""Reproducibility of everything (CI checks only the hypervisor; see README).

    nice -n 19 python3 bench/bench_reproducible.py [--kernels LIST] [--work DIR] [--verify] [--json FILE]

1. ``doit world`` + ``doit dist`` from an empty build cache A whose sources are hard
   links of the usual cache's, through ccache (as world builds by default).
2. The same from an empty build cache B whose sources are a full copy at another path,
   with ccache off: another source path, another work path, no shared compiler cache.
3. Every file of the two dist/install trees compared (bytes, mode, link target, mtime),
   then the two tarballs; the first difference is printed with both sha256.
4. With ``--verify``: ``doit verify`` on A's dist as well (a third, ccache-less build).

Times of each step are printed and, with --json, written. Needs the Xen and Linux
sources in the usual cache (``doit source`` once); takes the length of two cold worlds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.cache import cache_dir  # noqa: E402


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: type, mode, sha256 or link target, and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p), int(st.st_mtime))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", oct(stat.S_IMODE(st.st_mode)), int(st.st_mtime))
        else:
            out[rel] = ("file", oct(stat.S_IMODE(st.st_mode)), hashlib.sha256(p.read_bytes()).hexdigest(),
                        int(st.st_mtime))
    return out


def first_difference(a: dict, b: dict) -> str | None:
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            return f"{path}: A {a.get(path)} / B {b.get(path)}"
    return None


def world(work: Path, name: str, sources: str, env_extra: dict, kernels: str | None) -> float:
    """doit world + dist with a fresh cache ``work/name/cache``; returns the seconds."""
    cache = work / name / "cache"
    shutil.rmtree(work / name, ignore_errors=True)
    cache.mkdir(parents=True)
    for sub in ("debian", "apt"):  # the private apt state: read, not built
        if cache_dir(sub, create=False).is_dir():
            subprocess.run(["cp", "-al", cache_dir(sub), cache / sub], check=True)
    subprocess.run(["cp", sources, cache_dir("sources"), cache / "sources"], check=True)
    env = {**os.environ, "XEN_PROVISION_CACHE": str(cache), "PYTHONPATH": str(ROOT), **env_extra}
    variables = [f"dist={work / name / 'dist'}", *([f"kernels={kernels}"] if kernels is not None else [])]
    start = time.monotonic()
    for task in ("world", "dist"):
        with open(work / name / f"{task}.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "doit", "--db-file", str(work / name / ".doit.db"),
                                   task, *variables], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            sys.exit(f"error: doit {task} for {name} failed; see {work / name / f'{task}.log'}")
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", help="the KERNELS list (default: world.toml's)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/xen-provision-bench-reproducible"))
    ap.add_argument("--verify", action="store_true", help="also doit verify A's dist")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not cache_dir("sources", create=False).is_dir():
        sys.exit("error: no sources in the cache; run doit source first")
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    result["A_ccache_seconds"] = round(world(args.work, "A", "-al", {}, args.kernels), 1)
    print(f"A (empty cache, ccache): {result['A_ccache_seconds']} s")
    result["B_no_ccache_seconds"] = round(world(args.work, "B", "-a", {"CCACHE_DISABLE": "1"}, args.kernels), 1)
    print(f"B (empty cache, sources copied elsewhere, no ccache): {result['B_no_ccache_seconds']} s")
    a, b = tree(args.work / "A/dist/install"), tree(args.work / "B/dist/install")
    diff = first_difference(a, b)
    tarballs = [sorted((args.work / n / "dist").glob("xen-*-install.tgz"))[-1] for n in ("A", "B")]
    sums = [hashlib.sha256(t.read_bytes()).hexdigest() for t in tarballs]
    if diff is None and sums[0] != sums[1]:
        diff = f"{tarballs[0].name}: A {sums[0]} / B {sums[1]}"
    result.update(files=sum(1 for v in a.values() if v[0] != "dir"), paths=len(a), identical=diff is None,
                  first_difference=diff, tarball_sha256=sums[0])
    print(f"compared {result['paths']} paths ({result['files']} files and links) and the tarball: "
          + ("identical" if diff is None else f"DIFFERENT, first {diff}"))
    if args.verify:
        env = {**os.environ, "XEN_PROVISION_CACHE": str(args.work / "A/cache"), "PYTHONPATH": str(ROOT)}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "doit", "--db-file", str(args.work / "A/.doit.db"), "verify",
                               f"dist={args.work / 'A/dist'}",
                               *([f"kernels={args.kernels}"] if args.kernels is not None else [])],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        result["verify_seconds"] = round(time.monotonic() - start, 1)
        result["verify"] = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
        print(f"doit verify (A): {result['verify_seconds']} s: {result['verify']}")
        if proc.returncode != 0:
            diff = diff or "doit verify failed"
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if diff is None else 1


if __name__ == "__main__":
    sys.exit(main())
