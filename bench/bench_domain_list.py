#!/usr/bin/env python3
"""``domain list`` of many guests: the whole command as a user runs it, text and --json.

    python3 bench/bench_domain_list.py [--guests 200] [--rounds 5] [--dir /var/tmp]

Makes GUESTS guests in a throw-away root as `image` + `domain create --from-image` leave
them: a sparse 2 GiB root image with some data, a sparse swap image, the image's facts
file (IMAGE.json) and an xl config (rendered by our own writer), every other one linked
in /etc/xen/auto. Then times ``python -m provision domain list --root R`` and the same
with ``--json`` (a fresh interpreter each time: what a user waits for) and prints the
medians. The issue's target: under 1 s for 200 guests. No root needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.domain import autostart, render  # noqa: E402
from provision.domain.model import Domain  # noqa: E402
from provision.domain.paths import Paths  # noqa: E402

GiB = 1 << 30


def make_guests(root: Path, count: int) -> None:
    images = root / "var/lib/xen/images"
    images.mkdir(parents=True)
    (root / "etc/xen").mkdir(parents=True)
    paths = Paths(root=root)
    for i in range(count):
        name = f"vm{i:03d}"
        img, swap = images / f"{name}.img", images / f"{name}-swap.img"
        with open(img, "wb") as f:
            f.truncate(2 * GiB)
            f.write(os.urandom(64 << 10))  # some allocated blocks
        with open(swap, "wb") as f:
            f.truncate(256 << 20)
        address = f"10.{i // 250}.{i % 250}.10"
        (images / f"{name}.img.json").write_text(json.dumps({
            "format": "xen-provision-image/1", "name": name, "distro": "debian", "suite": "bookworm",
            "target": "file", "root": "/dev/xvda1", "console": "hvc0",
            "disks": [{"role": "root", "path": str(img), "vdev": "xvda1", "format": "raw", "size": 2 * GiB},
                      {"role": "swap", "path": str(swap), "vdev": "xvda2", "format": "raw", "size": 256 << 20}],
            "guest": {"hostname": name, "network": {"address": f"{address}/24"}},
            "base": {"arch": "amd64", "packages": [f"pkg{n}" for n in range(200)]},
        }, indent=2))
        dom = Domain.from_config({
            "name": name, "type": "pvh", "memory": 512, "vcpus": 2, "kernel": "/boot/vmlinuz-xenU",
            "root": "/dev/xvda1 ro", "extra": "console=hvc0",
            "disk": [f"format=raw, vdev=xvda1, access=rw, target=/var/lib/xen/images/{name}.img",
                     f"format=raw, vdev=xvda2, access=rw, target=/var/lib/xen/images/{name}-swap.img"],
            "vif": [f"mac=00:16:3e:00:{i >> 8:02x}:{i & 0xff:02x}, bridge=xenbr0, ip={address}"],
        })
        (root / f"etc/xen/{name}.cfg").write_text(render.domain_config(dom, f"/etc/xen/{name}.cfg"))
        if i % 2 == 0:
            autostart.enable(paths, name)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to make the root (default: the system's temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-domain-list.", dir=args.dir) as tmp:
        root = Path(tmp) / "root"
        make_guests(root, args.guests)
        base = [sys.executable, "-m", "provision", "domain", "list", "--root", str(root)]
        out = subprocess.run(base + ["--json"], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
        listed = json.loads(out)["domains"]
        assert len(listed) == args.guests and all(d["disks"][0]["owned"] for d in listed), "listing is wrong"
        empty = Path(tmp) / "empty"
        empty.mkdir()
        startup = [timed(base[:-1] + [str(empty)]) for _ in range(args.rounds)]
        text = [timed(base) for _ in range(args.rounds)]
        js = [timed(base + ["--json"]) for _ in range(args.rounds)]
        print(f"domain list, {args.guests} guests (median of {args.rounds}):")
        print(f"  text:   {statistics.median(text):.3f}s")
        print(f"  --json: {statistics.median(js):.3f}s")
        print(f"  (the same command on an empty root, its fixed cost: {statistics.median(startup):.3f}s)")
        worst = max(statistics.median(text), statistics.median(js))
        print(f"  target < 1 s: {'met' if worst < 1 else 'MISSED'}")
        return 0 if worst < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
