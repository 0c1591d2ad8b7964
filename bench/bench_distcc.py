#!/usr/bin/env python3
"""distcc on this machine: its overhead, what stays serial in a kernel build, and a
projection to 1, 4, 16 and 64 build hosts of this machine's speed.

    nice -n 19 python3 bench/bench_distcc.py [--json FILE]

1. The xenU kernel built locally from an empty build directory (ccache off, make -jC),
   its phases timed through make targets: configuration (tinyconfig + fragments +
   olddefconfig), the full ``make vmlinux``, a no-op ``make vmlinux`` (kbuild's walk of
   the tree), a relink (vmlinux.o and vmlinux deleted: ld -r, modpost, link, kallsyms,
   sorttable), and ``make bzImage`` (objcopy, compression, setup); the walk is
   subtracted from the last two.
2. A sample of the kernel's compile commands (from kbuild's .cmd files), each run three
   ways one at a time: -E (the preprocessing share, and the bytes a job ships), the
   local compile, and ``distcc`` to a distccd on 127.0.0.1 (DISTCC_FALLBACK=0, no local
   retry). The distcc overhead is the ratio of the sums (wall, and CPU with the daemon's
   counted: it is our child); every distcc object is compared with the local one.
   (The hypervisor cannot be the yardstick: Xen's objects need the build tree at
   assembly time, see provision/build/distcc.py.)
3. Projection (Amdahl): with n hosts of this machine's speed (C cores each), plain mode
   keeps preprocessing and distcc's client work on this machine, the compile proper
   spreads over the hosts, the serial phases stay serial:
       T(n) = S + max((W_pp + W_client) / C, W_cc / (n * C), bytes / bandwidth)
   S: the serial phases' wall time; W_pp: preprocessing CPU; W_cc: compile CPU without
   it; W_client: distcc's client CPU per job beyond preprocessing, times the job count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.build import builddir, config, linux  # noqa: E402

PINNED = {"XEN_BUILD_DATE": "Thu Jan  1 00:00:00 UTC 2026", "XEN_BUILD_TIME": "00:00:00",
          "XEN_BUILD_HOST": "xen-provision", "XEN_WHOAMI": "xen-provision", "XEN_DOMAIN": "invalid",
          "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 2026", **linux.ENV}
HOSTS = (1, 4, 16, 64)
BANDWIDTH = 125e6  # bytes/s: 1 Gbit/s Ethernet
SAMPLE = 60  # kernel compile commands sampled for the preprocessing share
KEEP = Path(os.environ["BENCH_DISTCC_KEEP"]) if os.environ.get("BENCH_DISTCC_KEEP") else None


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run(argv, env, log: Path, cwd=None, check: bool = True) -> tuple[float, float] | None:
    """(wall, CPU) seconds of one command, its output in ``log``; None if it failed and
    not ``check``."""
    start, c = time.monotonic(), cpu()
    with open(log, "a") as out:
        proc = subprocess.run([str(a) for a in argv], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if proc.returncode != 0:
        if not check:
            return None
        sys.exit(f"error: {shlex.join(map(str, argv))} failed ({proc.returncode}); see {log}")
    return time.monotonic() - start, cpu() - c


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemons(count: int, slots: int, logs: Path) -> list[tuple[subprocess.Popen, int]]:
    daemons = []
    for i in range(count):
        port = free_port()
        proc = subprocess.Popen(["distccd", "--daemon", "--no-detach", "--user", "nobody", "--allow", "127.0.0.1",
                                 "--listen", "127.0.0.1", "--port", str(port), "--jobs", str(slots),
                                 "--log-stderr", "--log-level", "info"],
                                stderr=open(logs / f"distccd-{i}.log", "w"), start_new_session=True)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        daemons.append((proc, port))
    return daemons


def stop_daemons(daemons) -> None:
    for proc, _ in daemons:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def sources(tmp: Path, env: dict) -> dict[str, Path]:
    dist = tmp / "dist"
    run([sys.executable, "-m", "doit", "--db-file", tmp / ".doit.db", "source", f"dist={dist}"], env,
        tmp / "source.log", cwd=ROOT)
    return {what: Path(json.loads((dist / f".stamps/source-{what}.json").read_text())["tree"])
            for what in ("xen", "linux")}


def compile_commands(out: Path) -> list[str]:
    """kbuild's recorded compile commands (savedcmd_ / cmd_ lines of .o.cmd files)."""
    cmds = []
    for cmd in out.rglob("*.o.cmd"):
        m = re.search(r"^(?:saved)?cmd_\S+ := (.*)$", cmd.read_text(errors="replace"), re.M)
        first = m.group(1).split(";")[0].strip() if m else ""  # objtool may follow the compile
        if " -c -o " in first and first.endswith(".c"):
            cmds.append(first)
    return cmds


def bench_kernel(tree: Path, tmp: Path, env: dict, jobs: int) -> dict:
    """The kernel's phases, from an empty build directory. (A copy of a finished build
    directory does not help: objtool's records hold the directory's path, so kbuild
    rebuilds objtool and then every object.)"""
    world = config.load(ROOT / "buildconfigs", kernels=["mk.linux-6.1-xenU"])
    recipe = world.kernels[0]
    out = tmp / "linux-xenU"
    log = tmp / "kernel.log"
    out.mkdir()
    mk = ["make", "-C", tree, f"O={out}", linux.ARCH]
    phases = {}
    start = time.monotonic()
    linux.configure(recipe, tree, out)
    phases["configure"] = round(time.monotonic() - start, 1)
    print(f"  kernel configure: {phases['configure']}s", flush=True)
    wall, full_cpu = run([*mk, f"-j{jobs}", "vmlinux"], env, log)
    phases["vmlinux_full"] = round(wall, 1)
    print(f"  kernel make vmlinux: {wall:.1f}s wall, {full_cpu:.1f}s CPU", flush=True)
    phases["noop_walk"] = round(run([*mk, f"-j{jobs}", "vmlinux"], env, log)[0], 1)
    (out / "vmlinux").unlink()
    (out / "vmlinux.o").unlink()
    # Each of these make runs walks the tree once too: the walk is subtracted.
    phases["link_modpost"] = round(run([*mk, f"-j{jobs}", "vmlinux"], env, log)[0] - phases["noop_walk"], 1)
    phases["compress_bzImage"] = round(run([*mk, f"-j{jobs}", "bzImage"], env, log)[0] - phases["noop_walk"], 1)
    print(f"  kernel serial phases: {phases}", flush=True)
    overhead, pp, cc, pp_bytes, cmds = sample_jobs(out, tmp, env, log)
    client_per_job = overhead["client_cpu_per_job_s"]
    share = pp / cc
    serial = phases["configure"] + phases["noop_walk"] + phases["link_modpost"] + phases["compress_bzImage"]
    compile_cpu = full_cpu  # CPU of the full vmlinux make (compiling dominates)
    shipped = pp_bytes / overhead["objects"] * len(cmds)
    local_total = phases["configure"] + phases["vmlinux_full"] + phases["compress_bzImage"]
    return project({"overhead": overhead, "phases_s": phases, "serial_s": round(serial, 1),
                    "local_total_s": round(local_total, 1),
                    "compile_cpu_s": round(compile_cpu, 1), "compile_jobs": len(cmds),
                    "preprocess_share": round(share, 3), "preprocessed_mb": round(shipped / 1e6, 1),
                    "cores": jobs, "bandwidth_bytes_s": BANDWIDTH}, client_per_job)


def bench_built_tree(built: Path, tree: Path, tmp: Path, env: dict, jobs: int) -> dict:
    """The same figures from a finished xenU build directory (the cache's), read only: the
    sample's compile CPU scaled to every job stands for the full compile, and the serial
    steps are timed with their outputs in a scratch directory: ld -r (vmlinux.o), modpost,
    the final link (counted three times with CONFIG_KALLSYMS: two kallsyms passes; the
    kallsyms table itself not timed), and the bzImage's xz compression. Configuration is timed for real in a scratch directory."""
    world = config.load(ROOT / "buildconfigs", kernels=["mk.linux-6.1-xenU"])
    log = tmp / "kernel.log"
    scratch = tmp / "serial"
    scratch.mkdir()
    phases = {}
    cfg = tmp / "configure"
    cfg.mkdir()
    start = time.monotonic()
    linux.configure(world.kernels[0], tree, cfg)
    phases["configure"] = round(time.monotonic() - start, 1)
    ld = ["ld", "-m", "elf_x86_64", "-z", "noexecstack", "--no-warn-rwx-segments"]
    link_r = run([*ld, "-r", "-o", scratch / "vmlinux.o", "--whole-archive", "vmlinux.a", "--no-whole-archive",
                  "--start-group", "lib/lib.a", "arch/x86/lib/lib.a", "--end-group"], env, log, cwd=built)[0]
    modpost = run(["scripts/mod/modpost", "-E", "-o", scratch / "vmlinux.symvers", "vmlinux.o"], env, log,
                  cwd=built)[0]
    final = run([*ld, "-z", "max-page-size=0x200000", "--build-id=sha1", "--script=arch/x86/kernel/vmlinux.lds",
                 "-o", scratch / "vmlinux", "--whole-archive", "vmlinux.o", "init/version-timestamp.o",
                 "--no-whole-archive"], env, log, cwd=built)[0]
    # With CONFIG_KALLSYMS link-vmlinux.sh links three times (two kallsyms passes)
    passes = 3 if (built / "scripts/kallsyms").exists() else 1
    phases["link_modpost"] = round(link_r + modpost + passes * final, 1)
    phases["compress_bzImage"] = round(run(["sh", "-c", "xz --check=crc32 --x86 --lzma2=,dict=32MiB "
                                            "< arch/x86/boot/compressed/vmlinux.bin > /dev/null"],
                                           env, log, cwd=built)[0], 1)
    phases["noop_walk"] = 0.0  # not measurable read-only; a real build's walk overlaps compiling
    print(f"  kernel serial phases: {phases}", flush=True)
    overhead, pp, cc, pp_bytes, cmds = sample_jobs(built, tmp, env, log)
    # the share of .cmd files that are stale (from earlier configs) as in the sample
    n = round(len(cmds) * overhead["objects"] / (overhead["objects"] + overhead["stale_skipped"]))
    cmds = cmds[:n]
    compile_cpu = cc / overhead["objects"] * n  # a compile includes its own preprocessing
    serial = sum(phases.values())
    phases["vmlinux_full_estimated"] = round(compile_cpu / jobs + phases["link_modpost"], 1)
    local_total = phases["configure"] + phases["vmlinux_full_estimated"] + phases["compress_bzImage"]
    return project({"from_built_tree": str(built), "overhead": overhead, "phases_s": phases,
                    "serial_s": round(serial, 1), "local_total_s": round(local_total, 1),
                    "compile_cpu_s": round(compile_cpu, 1), "compile_jobs": len(cmds),
                    "preprocess_share": round(pp / cc, 3),
                    "preprocessed_mb": round(pp_bytes / overhead["objects"] * len(cmds) / 1e6, 1),
                    "cores": jobs, "bandwidth_bytes_s": BANDWIDTH}, overhead["client_cpu_per_job_s"])


def sample_jobs(out: Path, tmp: Path, env: dict, log: Path):
    """A sample of the kernel's compile commands run as -E, locally and through distcc."""
    cmds = compile_commands(out)
    shuffled = random.Random(17).sample(cmds, len(cmds))
    sample, stale, differ = [], 0, []
    pp = cc = cc_wall = dc_wall = dc_client = 0.0
    pp_bytes = identical = 0
    scratch = tmp / "pp"
    scratch.mkdir()
    daemons = start_daemons(1, 1, tmp)
    denv = {**env, "DISTCC_HOSTS": f"127.0.0.1:{daemons[0][1]}/1", "DISTCC_FALLBACK": "0",
            "DISTCC_SKIP_LOCAL_RETRY": "1", "DISTCC_DIR": str(tmp / "distcc-state")}
    Path(denv["DISTCC_DIR"]).mkdir(exist_ok=True)
    try:
        for i, cmd in enumerate(shuffled):
            if len(sample) == SAMPLE:
                break
            argv = shlex.split(cmd)
            o = argv.index("-o")
            target = scratch / f"{i}.o"
            compile_argv = [*argv[:o], "-o", str(target), *argv[o + 2:]]
            compile_argv = [a for a in compile_argv if not a.startswith("-Wp,-MMD")]
            pre_argv = [a if a != "-c" else "-E" for a in compile_argv]
            pre_argv[pre_argv.index("-o") + 1] = str(scratch / f"{i}.i")
            # A build directory keeps the .cmd files of objects an earlier config built: those
            # do not preprocess with today's generated headers; skip them.
            pre = run(pre_argv, env, log, cwd=out, check=False)
            local = run(compile_argv, env, log, cwd=out, check=False) if pre else None
            if local is None:
                stale += 1
                continue
            sample.append(cmd)
            pp += pre[1]
            pp_bytes += (scratch / f"{i}.i").stat().st_size
            wall, c = local
            cc, cc_wall = cc + c, cc_wall + wall
            o = compile_argv.index("-o")
            remote = [*compile_argv[:o], "-o", str(scratch / f"{i}.distcc.o"), *compile_argv[o + 2:]]
            wall, c = run(["distcc", *remote], denv, log, cwd=out)
            dc_wall, dc_client = dc_wall + wall, dc_client + c
            if (scratch / f"{i}.distcc.o").read_bytes() == target.read_bytes():
                identical += 1
            else:
                differ.append(compile_argv[-1])
                if KEEP:
                    shutil.copy(target, KEEP / f"{i}.local.o")
                    shutil.copy(scratch / f"{i}.distcc.o", KEEP / f"{i}.distcc.o")
                    (KEEP / f"{i}.cmd").write_text(shlex.join(compile_argv))
    finally:
        stop_daemons(daemons)  # also when a command fails (sys.exit)
    jobs_done = (tmp / "distccd-0.log").read_text().count("COMPILE_OK")
    overhead = {"objects": len(sample), "identical": identical, "differ": differ, "stale_skipped": stale, "daemon_jobs_ok": jobs_done,
                "local_wall_s": round(cc_wall, 2), "distcc_wall_s": round(dc_wall, 2),
                "ratio_wall": round(dc_wall / cc_wall, 3),
                # the daemon's CPU is not counted: its workers are not reliably reaped into
                # our rusage (two runs gave 10.0 s and 0.6 s for the same work)
                "local_cpu_s": round(cc, 2), "preprocess_cpu_s": round(pp, 2),
                "distcc_client_cpu_s": round(dc_client, 2),
                "client_cpu_per_job_s": round(max(0.0, dc_client - pp) / len(sample), 4)}
    print(f"  distcc overhead on {len(sample)} kernel objects: {overhead}", flush=True)
    return overhead, pp, cc, pp_bytes, cmds


def project(k: dict, client_per_job: float) -> dict:
    """The Amdahl projection of the kernel's measurements ``k`` for 1, 4, 16, 64 hosts."""
    jobs = k["cores"]
    w_pp = k["compile_cpu_s"] * k["preprocess_share"]
    w_cc = k["compile_cpu_s"] - w_pp
    w_client = client_per_job * k["compile_jobs"]
    local = (w_pp + w_client) / jobs
    network = k["preprocessed_mb"] * 1e6 / k["bandwidth_bytes_s"]
    projection = []
    for n in HOSTS:
        parallel = max(local, w_cc / (n * jobs), network)
        total = k["serial_s"] + parallel
        projection.append({"hosts": n, "wall_s": round(total, 1), "speedup": round(k["local_total_s"] / total, 2),
                           "bound": ("local preprocessing" if parallel == local else
                                     "remote compile" if parallel == w_cc / (n * jobs) else "network")})
    return {**k, "client_cpu_per_job_s": client_per_job, "client_cpu_s": round(w_client, 1),
            "amdahl_limit_speedup": round(k["local_total_s"] / (k["serial_s"] + max(local, network)), 2),
            "projection": projection}


def main() -> int:
    global SAMPLE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench-distcc.json", help="where to write the results")
    parser.add_argument("--from-tree", type=Path, help="a finished xenU build directory to measure read only "
                        "instead of building the kernel (e.g. $XEN_PROVISION_CACHE/build/linux-xenU.work)")
    parser.add_argument("--sample", type=int, default=SAMPLE, help=f"compile jobs sampled (default {SAMPLE})")
    args = parser.parse_args()
    if not shutil.which("distccd"):
        sys.exit("error: distcc is not installed (apt-get install distcc)")
    os.environ["CCACHE_DISABLE"] = "1"  # compile every file, both ways
    env = {**os.environ, **PINNED, "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    jobs = builddir.jobs()
    results: dict = {"cores": jobs, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "loadavg_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-distcc.", dir="/var/tmp") as tmp:
        tmp = Path(tmp)
        trees = sources(tmp, env)
        SAMPLE = args.sample
        if args.from_tree:
            print(f"kernel (xenU) from {args.from_tree}: serial steps, and distcc on a sample of its objects",
                  flush=True)
            results["kernel"] = bench_built_tree(args.from_tree, trees["linux"], tmp, env, jobs)
        else:
            print("kernel (xenU): a local build, its phases, and distcc on a sample of its objects", flush=True)
            results["kernel"] = bench_kernel(trees["linux"], tmp, env, jobs)
    results["loadavg_at_end"] = os.getloadavg()
    return report(results, args.json)


def report(results: dict, json_path: str) -> int:
    if "kernel" in results:
        k = results["kernel"]
        o = k["overhead"]
        print(f"distcc overhead per compile job (127.0.0.1, one at a time): wall ratio {o['ratio_wall']}; "
              f"objects identical {o['identical']}/{o['objects']} (differ: {', '.join(o['differ']) or 'none'})")
        print(f"kernel xenU: serial {k['serial_s']}s of {k['local_total_s']}s; preprocessing "
              f"{k['preprocess_share'] * 100:.0f}% of compile CPU; {k['compile_jobs']} compile jobs")
        print(f"{'hosts':>6} {'wall s':>8} {'speedup':>8}  bound")
        for p in k["projection"]:
            print(f"{p['hosts']:>6} {p['wall_s']:>8} {p['speedup']:>8}  {p['bound']}")
    Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {json_path}")
    o = results["kernel"]["overhead"]
    return 0 if o["identical"] == o["objects"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
