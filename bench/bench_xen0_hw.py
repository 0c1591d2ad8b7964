#!/usr/bin/env python3
"""Build time of the hardware dom0 (mk.linux-6.1-xen0-hw), cold, trimmed and in full.

    nice -n 19 python3 bench/bench_xen0_hw.py [--lsmod FILE] [--skip-full] [--jobs N] [--json FILE]

1. Trimmed: Debian's config of our Linux source trimmed by ``make localmodconfig`` to
   ``--lsmod`` (default buildconfigs/qemu-pc.lsmod), the Xen fragments on top: the kernel
   CI builds and the boot test boots as dom0.
2. Full: Debian's config with every module Debian ships (thousands); hours on 2 cores,
   so CI never builds it. ``--skip-full`` leaves it out.

Each build is the real one (``linux.build``: configure, bzImage and modules,
modules_install) in a private cache that shares the unpacked source but has no build
trees, with ccache off, so both are cold builds. Prints wall and CPU seconds and the
number of modules and their size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lsmod", type=Path, default=ROOT / "buildconfigs/qemu-pc.lsmod")
    parser.add_argument("--skip-full", action="store_true", help="only the trimmed build")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from provision.build import builddir, config, linux
    from provision.build.sources import fetch
    from provision.cache import cache_dir

    world = config.load(ROOT / "buildconfigs", kernels="mk.linux-6.1-xen0-hw")
    source = fetch(world.linux_source)  # in the real cache: not timed
    real = cache_dir()
    variants = {"trimmed": world.kernels[0].with_lsmod(args.lsmod.resolve())}
    if not args.skip_full:
        variants["full"] = world.kernels[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-xen0-hw.", dir="/var/tmp") as tmp:
        for name, recipe in variants.items():
            private = Path(tmp) / name
            private.mkdir()
            for entry in real.iterdir():
                if entry.name not in ("build", "locks"):
                    (private / entry.name).symlink_to(entry)
            os.environ["XEN_PROVISION_CACHE"] = str(private)
            os.environ["CCACHE_DISABLE"] = "1"
            start, cpu = time.monotonic(), cpu_seconds()
            record = linux.build(recipe, source, jobs=args.jobs or builddir.jobs())
            wall, used = time.monotonic() - start, cpu_seconds() - cpu
            mods = list(Path(record["dir"], "modules").rglob("*.ko")) if record["modules"] else []
            results[name] = {"wall_s": round(wall), "cpu_s": round(used), "modules": len(mods),
                             "modules_mib": round(sum(m.stat().st_size for m in mods) / 2**20, 1),
                             "bzimage_mib": round(Path(record["dir"], "arch/x86/boot/bzImage").stat().st_size
                                                  / 2**20, 1)}
            print(f"{name}: {wall:.0f}s wall, {used:.0f}s CPU, {len(mods)} modules "
                  f"({results[name]['modules_mib']} MiB), bzImage {results[name]['bzimage_mib']} MiB",
                  flush=True)
            shutil.rmtree(private, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
