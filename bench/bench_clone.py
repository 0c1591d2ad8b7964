#!/usr/bin/env python3
"""Clone a 2 GiB image holding 250 MB of data: provision's clone_file against
``cp --sparse=always``, in the same run, several repetitions, alternating order.
Also times creating a 2 GiB sparse image and counts its allocated blocks.

    python3 bench/bench_clone.py [--reps 5] [--dir /var/tmp]

Prints medians, the ratio (cp / clone_file: above 1 means clone_file is faster) and
the allocated sizes of source and both copies. The data is random, so it is real
data blocks, written into an ext4 filesystem made with mkfs.ext4 -d (as a guest
image would be). Needs mkfs.ext4; no root needed. As root it also repeats the clone
on an xfs filesystem (loop-mounted image), where clone_file uses a reflink.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision import log  # noqa: E402
from provision.sizes import GiB, MiB  # noqa: E402
from provision.storage import allocated_bytes, clone_file, create_image, make_fs, mounted  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where to put the images (same filesystem for all)")
    parser.add_argument("--data-mb", type=int, default=250)
    args = parser.parse_args()
    log.set_quiet(True)

    with tempfile.TemporaryDirectory(prefix="bench-clone.", dir=args.dir) as tmp:
        tmp = Path(tmp)
        fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", tmp],
                                capture_output=True, text=True).stdout.strip()

        create_times, create_blocks = [], []
        for i in range(args.reps):
            path = tmp / f"sparse{i}.img"
            create_times.append(timed(lambda p=path: create_image(p, 2 * GiB)))
            create_blocks.append(allocated_bytes(path))
            path.unlink()

        data = tmp / "data"
        data.mkdir()
        with open(data / "blob", "wb") as f:
            for _ in range(args.data_mb):
                f.write(os.urandom(MiB))
        src = tmp / "src.img"
        create_image(src, 2 * GiB)
        make_fs(src, "ext4", populate=data)
        (data / "blob").unlink()

        results = compare(src, tmp, args.reps)
        print(f"create 2 GiB sparse image: median {statistics.median(create_times) * 1000:.2f} ms, "
              f"allocated {max(create_blocks)} bytes ({args.reps} runs)")
        print(f"source image: 2 GiB apparent, {allocated_bytes(src) / MiB:.1f} MiB allocated "
              f"({args.data_mb} MB of data)")
        report(fstype, src, results, args.reps)

        if os.geteuid() == 0:
            xfs = tmp / "xfs.img"
            create_image(xfs, 4 * GiB)
            make_fs(xfs, "xfs")
            with mounted(xfs) as mnt:
                subprocess.run(["cp", "--sparse=always", src, mnt / "src.img"], check=True)
                report("xfs (loop-mounted)", mnt / "src.img", compare(mnt / "src.img", mnt, args.reps), args.reps)
    return 0


def compare(src: Path, folder: Path, reps: int) -> dict:
    """Time clone_file and cp --sparse=always on ``src``, alternating which goes first."""
    ours, cps = [], []
    for i in range(reps):
        dst_ours, dst_cp = folder / f"ours{i}.img", folder / f"cp{i}.img"
        runs = [("ours", lambda d=dst_ours: clone_file(src, d)),
                ("cp", lambda d=dst_cp: subprocess.run(["cp", "--sparse=always", src, d], check=True))]
        if i % 2:
            runs.reverse()  # neither always goes first with a colder cache
        for name, fn in runs:
            (ours if name == "ours" else cps).append(timed(fn))
        alloc_ours, alloc_cp = allocated_bytes(dst_ours), allocated_bytes(dst_cp)
        dst_ours.unlink()
        dst_cp.unlink()
    method = clone_file(src, folder / "method.img")
    same = filecmp.cmp(src, folder / "method.img", shallow=False)  # the bytes, holes read as zeros
    (folder / "method.img").unlink()
    return {"ours": ours, "cp": cps, "alloc_ours": alloc_ours, "alloc_cp": alloc_cp, "method": method,
            "same": same}


def report(fstype: str, src: Path, r: dict, reps: int) -> None:
    m_ours, m_cp = statistics.median(r["ours"]), statistics.median(r["cp"])
    print(f"-- on {fstype}, {reps} repetitions, clone method: {r['method']}")
    print(f"   clone_file:         median {m_ours:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in r['ours'])})")
    print(f"   cp --sparse=always: median {m_cp:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in r['cp'])})")
    print(f"   ratio cp/clone_file: {m_cp / m_ours:.2f}x  (above 1: clone_file is faster)")
    print(f"   allocated: source {allocated_bytes(src) / MiB:.1f} MiB, clone_file {r['alloc_ours'] / MiB:.1f} MiB, "
          f"cp {r['alloc_cp'] / MiB:.1f} MiB (difference {abs(r['alloc_ours'] - r['alloc_cp']) / 1024:.0f} KiB)")
    # mkfs.ext4 fallocates its journal: unwritten extents read as zeros, so neither copy keeps them.
    print(f"   clone content identical to the source: {'yes' if r['same'] else 'NO'}")


if __name__ == "__main__":
    raise SystemExit(main())
