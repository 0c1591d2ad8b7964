#!/usr/bin/env python3
"""Grow a 2 GiB sparse ext4 image to 4 GiB: ``python -m provision image resize IMG --size
4G`` against plain ``truncate -s 4G IMG && resize2fs IMG``, in the same run, rounds
alternating which goes first.

    python3 bench/bench_resize.py [--rounds 7] [--dir /var/tmp] [--data-mb 200]

Each round grows two fresh copies of one image (mkfs.ext4 -d with --data-mb of random
data, copied with cp --sparse=always outside the timing). Also timed: the same resize
through the library in-process (no interpreter start-up, no argument parsing), and plain
``e2fsck -f -p`` + truncate + resize2fs, the check our command runs first because
resize2fs demands it of any filesystem mounted since its last check (a guest's always
is). Prints medians, ratios (ours / plain: above 1 means ours is slower) and checks that
every result is a clean 4 GiB filesystem. Needs e2fsprogs; no root.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision import log  # noqa: E402
from provision.sizes import GiB, MiB  # noqa: E402
from provision.storage import allocated_bytes, create_image, make_fs, resize  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT), XEN_PROVISION_XEN_DIR="/nonexistent")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sh(*argv) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, env=ENV)


def ours_cli(img: Path) -> None:
    sh(sys.executable, "-m", "provision", "-q", "image", "resize", img, "--size", "4G")


def ours_library(img: Path) -> None:
    facts = resize.inspect(str(img))
    resize.apply(facts, resize.plan(facts, resize.wanted("4G", facts.size)))


def plain(img: Path) -> None:
    sh("truncate", "-s", "4G", img)
    sh("resize2fs", img)


def plain_fsck(img: Path) -> None:
    sh("e2fsck", "-f", "-p", img)
    plain(img)


def check(img: Path) -> None:
    text = subprocess.run(["dumpe2fs", "-h", img], capture_output=True, text=True, check=True).stdout
    f = dict(re.findall(r"^(Block count|Block size):\s*(\d+)", text, re.M))
    size = int(f["Block count"]) * int(f["Block size"])
    fsck = subprocess.run(["e2fsck", "-f", "-n", img], capture_output=True).returncode
    if size != 4 * GiB or fsck != 0 or img.stat().st_size != 4 * GiB:
        sys.exit(f"error: {img}: filesystem {size} bytes, file {img.stat().st_size}, e2fsck exit {fsck}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default="/var/tmp", help="where to put the images")
    parser.add_argument("--data-mb", type=int, default=200)
    args = parser.parse_args()
    log.set_quiet(True)
    ways = {"image resize (command)": ours_cli, "truncate + resize2fs": plain,
            "resize library (in-process)": ours_library, "e2fsck -f + truncate + resize2fs": plain_fsck}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory(prefix="bench-resize.", dir=args.dir) as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        with open(data / "blob", "wb") as f:
            for _ in range(args.data_mb):
                f.write(os.urandom(MiB))
        base = tmp / "base.img"
        create_image(base, 2 * GiB)
        make_fs(base, "ext4", populate=data)
        (data / "blob").unlink()
        for i in range(args.rounds):
            order = list(ways.items())
            if i % 2:
                order.reverse()  # neither always goes first
            for name, fn in order:
                img = tmp / "round.img"
                sh("cp", "--sparse=always", base, img)
                times[name].append(timed(lambda fn=fn, img=img: fn(img)))
                check(img)
                alloc = allocated_bytes(img)
                img.unlink()
        print(f"grow a 2 GiB sparse ext4 image ({args.data_mb} MB of data, "
              f"{allocated_bytes(base) / MiB:.0f} MiB allocated) to 4 GiB; {args.rounds} rounds, alternating")
        for name, runs in times.items():
            print(f"  {name:34} median {statistics.median(runs):.3f} s  "
                  f"(runs: {', '.join(f'{t:.3f}' for t in runs)})")
        base_plain = statistics.median(times["truncate + resize2fs"])
        for name in ("image resize (command)", "resize library (in-process)", "e2fsck -f + truncate + resize2fs"):
            print(f"  ratio {name} / truncate + resize2fs: {statistics.median(times[name]) / base_plain:.2f}x")
        print(f"  every result: a 4 GiB file holding a 4 GiB ext4, e2fsck -fn clean; "
              f"last one {alloc / MiB:.0f} MiB allocated (still sparse)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
