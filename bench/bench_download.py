#!/usr/bin/env python3
"""Bench: fetching sources, against the tools a user would use instead, in the same run.

    python3 bench/bench_download.py [--size 256] [--reps 3] [--no-debian]

1. tarball: provision's download() (streamed to a .part file, resumable, verified, renamed
   into place) of a SIZE MiB file from a local HTTP server, against ``curl -o`` of the same
   file followed by ``sha256sum`` (what a careful user does). Alternating order, medians.
   Target: ratio (ours / curl+sha256sum) <= 1.1.
2. debian: a cold ``fetch`` of Debian's xen source (download, verify, dpkg-source -x) into
   an empty source cache, against ``apt-get source xen=VERSION`` (download + unpack) with
   the same private apt lists, alternating order, medians. Target: ratio <= 1.1. Then the
   cached second fetch (target: < 1 s).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision import log  # noqa: E402
from provision.build import download as dl  # noqa: E402
from provision.build import sources  # noqa: E402
from provision.cache import cache_dir  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def bench_tarball(size_mib: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-download.") as tmp:
        tmp = Path(tmp)
        (tmp / "www").mkdir()
        blob = tmp / "www" / "xen-bench.tar.gz"
        with open(blob, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        sha = hashlib.sha256(blob.read_bytes()).hexdigest()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp / "www")))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/xen-bench.tar.gz"
        ours, theirs = [], []

        def run_ours(i):
            dl.download(url, sha, tmp / f"ours{i}")

        def run_curl(i):
            out = tmp / f"curl{i}" / "xen-bench.tar.gz"
            out.parent.mkdir()
            subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)
            got = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True, check=True).stdout.split()[0]
            assert got == sha

        for i in range(reps):
            order = [(ours, run_ours), (theirs, run_curl)]
            if i % 2:
                order.reverse()
            for results, fn in order:
                results.append(timed(partial(fn, i)))
        httpd.shutdown()
    mo, mt = statistics.median(ours), statistics.median(theirs)
    return {"size_mib": size_mib, "ours_s": round(mo, 3), "curl_sha256sum_s": round(mt, 3),
            "ratio": round(mo / mt, 3)}


def bench_debian(reps: int) -> dict:
    entries = sources.host_apt_entries()
    # The version apt would pick that this mirror serves, from the shared cache: both sides
    # then fetch exactly that version.
    known = sources.fetch(sources.SourceSpec("debian", package="xen"))
    dsc = next((cache_dir("debian") / known.identity).glob("xen_*.dsc"))
    version = dsc.name[len("xen_"):-len(".dsc")]
    shared = sources.PrivateApt(entries)
    spec = sources.SourceSpec("debian", package="xen", version=version)
    ours, theirs, cached = [], [], []
    for i in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-debian.") as tmp:
            tmp = Path(tmp)
            # Same lists for both sides: copy the private apt state into a fresh cache.
            cache = tmp / "cache"
            shutil.copytree(shared.root, cache / "apt" / shared.key, symlinks=True)
            os.environ["XEN_PROVISION_CACHE"] = str(cache)
            apt = sources.PrivateApt(entries)
            plain = tmp / "plain"
            plain.mkdir()
            os.chmod(plain, 0o777)  # apt downloads as _apt

            def run_ours():
                ours.append(timed(lambda: sources.fetch(spec)))
                cached.append(timed(lambda: sources.fetch(spec)))

            def run_apt(apt=apt, plain=plain):
                argv = apt.argv("source", f"xen={version}")
                env = {**os.environ, **apt.env}
                theirs.append(timed(lambda: subprocess.run(argv, env=env, cwd=plain, check=True,
                                                           capture_output=True)))

            for fn in ([run_ours, run_apt] if i % 2 == 0 else [run_apt, run_ours]):
                fn()
    mo, mt = statistics.median(ours), statistics.median(theirs)
    return {"package": "xen", "version": version, "ours_cold_s": round(mo, 2),
            "apt_get_source_s": round(mt, 2), "ratio": round(mo / mt, 3),
            "ours_cached_s": round(statistics.median(cached), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="tarball size in MiB (default 256)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-debian", action="store_true", help="skip the Debian source part")
    args = parser.parse_args()
    log.set_quiet(True)
    print("tarball:", bench_tarball(args.size, args.reps), flush=True)
    if not args.no_debian:
        print("debian: ", bench_debian(args.reps), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
