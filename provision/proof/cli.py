"""``python -m provision boottest``: the hosts the README's commands make, booted under
QEMU (TCG) and checked over the serial console.

    python -m provision boottest [--dist dist/install] [--scenario bridged|routed|all]

For each scenario (:data:`provision.proof.assemble.SCENARIOS`):

1. the host disk image, made by the public commands on the image's mounted root
   (:mod:`provision.proof.assemble`; cached by its inputs), from ``doit dist``'s tarball;
2. a code disk made for every boot: this checkout's package (the LVM checks and, for
   them, the host suite's cached base), and the SSH key of the test guests;
3. the boot, on a LAN that ends inside QEMU (192.0.2.0/24, ``restrict=on``): GRUB, Xen's
   command line and scheduler, dom0 multi-user with no failed units, xendomains starting
   the guests, each answering ping and ssh, and (bridged) one guest pinging the other,
   ``xl console``, a guest whose root dom0 serves over NFS, save/restore through
   xendomains, mem-set, and a guest with a bad disk reported; (routed) a guest whose own
   Debian kernel pvgrub2 boots, and LVM in dom0 (:mod:`provision.proof.checks`).

Each wait is bounded and reported with the time since power-on; the serial logs, the
assembly logs and ``report.txt`` are kept in ``--out``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import py_compile
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from provision import log, paths
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.proof import assemble, checks
from provision.proof.assemble import SCENARIOS, Facts, Inputs, Scenario
from provision.proof.machine import Disk, Lan, Machine
from provision.sizes import GiB, MiB, parse_size, round_up
from provision.undo import UndoStack

# AMD-V with nested paging, emulated by TCG: Xen then has HVM (hap), which PVH guests
# need; the PV dom0 boots on it as on plain qemu64.
CPU = "qemu64,+svm,+npt"
CODE_SIZE = 64 * MiB
LVM_SIZE = 1 * GiB
LVIMAGE_SIZE = 2 * GiB


@dataclass(frozen=True)
class Settings:
    """What the boot test builds and boots, parsed and checked once."""

    inputs: Inputs
    out: Path
    scenarios: tuple[str, ...] = ("bridged", "routed")
    memory: int = 3 * 1024            # MiB, the QEMU machine's
    smp: int = 2
    timeout: float = 300.0            # for each long wait (boot to multi-user, guest boot)
    extra_checks: bool = True         # save/restore, mem-set, the bad-disk guest (bridged); LVM (routed)
    lvmcheck: bool = True
    parallel: bool = False            # the scenarios' machines at once (--parallel)


@dataclass
class Result:
    """What a run measured: per-stage seconds, the checks, where the logs are."""

    out: Path
    stages: dict[str, float] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    timings: list[str] = field(default_factory=list)
    ok: bool = False
    booted: str = ""

    def summary(self) -> str:
        lines = [f"boot test: {'PASS' if self.ok else 'FAIL'} ({self.booted})"]
        lines += [f"  stage {name}: {secs:.1f}s" for name, secs in self.stages.items()]
        lines += [f"  {t}" for t in self.timings]
        lines += [f"  {c}" for c in self.checks]
        lines.append(f"  logs: {self.out}")
        return "\n".join(lines)


@contextlib.contextmanager
def _stage(result: Result, name: str, title: str):
    start = time.monotonic()
    with log.step(title):
        try:
            yield
        finally:
            result.stages[name] = round(time.monotonic() - start, 1)


def code_disk(out: Path, settings: Settings, scenario: Scenario) -> Path:
    """This checkout's package, the test guests' SSH key and (for the LVM checks) the host
    suite's cached base, in an ext4 filesystem that dom0 mounts read-only from the disk's
    first partition (:data:`CODE_PART`); for the LVM checks, the same disk's second and
    third partitions are their empty scratch space (:data:`SCRATCH_PARTS`). Made for every
    boot (about a second), so an edit to the checks is tested without rebuilding the host.

    One disk, not three: each virtio disk the QEMU machine has slows the whole PV dom0
    under TCG (measured on the routed host: its first guest reached userspace at 46-60 s
    with two disks, 68 s with one more, 76-105 s with two more, empty 4 MiB ones too)."""
    from provision.proof.indom0 import lvcheck
    from provision.storage import PartSpec, building_image, copy_into, make_fs, partition_image
    out.mkdir(parents=True, exist_ok=True)
    disk = out / f"code-{scenario.name}.img"
    disk.unlink(missing_ok=True)
    _hash, key, _pub = assemble.credentials()
    with tempfile.TemporaryDirectory(prefix="code.", dir=out) as work:
        stage, fs = Path(work) / "stage", Path(work) / "code.ext4"
        shutil.copytree(assemble.PACKAGE, stage / "provision",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Compiled here: dom0 mounts the disk read-only, so its python3 would otherwise
        # compile every module it imports on every run, several seconds each under TCG.
        # Unchecked .pyc files (for dom0's python3 of the same minor version): the disk is
        # made anew from these sources for every boot, so they cannot go stale, and python3
        # does not read and hash every source again (about 1 s of each run in dom0).
        compileall.compile_dir(stage / "provision", quiet=1,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        shutil.copyfile(key, stage / "id_ed25519")
        size = CODE_SIZE
        parts = []
        if _lvm(settings, scenario):
            seed = lvcheck.seed(stage / lvcheck.SEED_DIR, settings.inputs.suite, settings.inputs.mirror)
            size += sum(f.stat().st_size for f in seed) * 11 // 10
            parts = [PartSpec(LVM_SIZE, type="lvm"), PartSpec(LVIMAGE_SIZE, type="lvm")]
        size = round_up(size, MiB)
        with building_image(fs, size) as tmp:
            make_fs(tmp, "ext4", label="xpcode", populate=stage)
        # msdos: the first partition at 1 MiB, each a whole number of MiB; 1 MiB to spare.
        with building_image(disk, 2 * MiB + size + sum(p.size for p in parts)) as tmp:
            infos = partition_image(tmp, "msdos", [PartSpec(size, type="linux"), *parts])
            copy_into(fs, tmp, infos[0].start)
    return disk


CODE_PART = "/dev/vdb1"                         # in dom0, the code disk's partitions
SCRATCH_PARTS = ("/dev/vdb2", "/dev/vdb3")      # lvmcheck's, lvcheck's


# The LVM checks (minutes in dom0 under TCG) run on the host whose other checks end
# first, so the two hosts' boots are closer in length (and end together with --parallel).
LVM_SCENARIO = "routed"


def _lvm(settings: Settings, scenario: Scenario) -> bool:
    return settings.extra_checks and settings.lvmcheck and scenario.name == LVM_SCENARIO


def boot(settings: Settings, scenario: Scenario, image: Path, facts: Facts, result: Result,
         machines: list[Machine] | None = None) -> None:
    """Boot the scenario's host and run its checks (its machine is added to ``machines``,
    for whoever must stop it from another thread)."""
    out = settings.out
    code = code_disk(out, settings, scenario)   # made for this boot: written in place
    disks = [Disk(image, snapshot=True), Disk(code)]   # vda, vdb
    log_path = out / f"serial-{scenario.name}.log"
    log_path.unlink(missing_ok=True)
    vm = Machine(log_path=log_path, disks=disks, memory=settings.memory, smp=settings.smp,
                 name=f"xen-host-{scenario.name}", lan=Lan(), cpu=CPU)
    if machines is not None:
        machines.append(vm)
    t = settings.timeout
    first: list[float] = []
    stolen = steal_seconds()
    pingable: list[float] = []
    try:
        with vm:
            checks.boot_to_dom0(vm, facts, settings.inputs.sched, t)
            checks.guests_created(vm, facts, t, first)
            checks.dom0_settled(vm, t)
            checks.mount_code(vm, CODE_PART)
            # The quick guests' checks run while the slow ones still boot; the checks of a
            # guest that settles last (an NFS root) go after everything the others allow.
            slow = [g for g in facts.guests if checks.slow_to_answer(g)]
            quick = [g for g in facts.guests if g not in slow]
            late = [g for g in quick if checks.slow_to_settle(g)]
            settled = [g for g in quick if g not in late]
            later = facts.guests[1:]   # guests_created saw the first one reach userspace
            checks.guests_in_userspace(vm, [g for g in quick if g in later], t)
            checks.guests_ping(vm, quick, t)
            if not slow:
                pingable.append(vm.elapsed())
            checks.guests_ssh(vm, facts, settled)
            checks.guest_types(vm, facts)
            checks.first_boot_access(vm, settled)
            if scenario.network == "bridge":
                checks.network_status(vm, facts, scenario.bridge, scenario.host_ip, scenario.uplink,
                                      scenario.uplink_slot_name)
            else:
                checks.guest_pings_host(vm, facts, scenario.gateway)
                checks.live_bridge_rolled_back(vm, scenario.uplink, scenario.host_ip,
                                               facts.guests[0]["ip"].split("/")[0], scenario.uplink_slot_name)
            if slow:
                checks.guests_in_userspace(vm, [g for g in slow if g in later], t)
                checks.guests_ping(vm, slow, t)
                pingable.append(vm.elapsed())
                checks.guests_ssh(vm, facts, slow)
                checks.own_kernels_booted(vm, facts)
                checks.first_boot_access(vm, slow)
            pvh = [g["name"] for g in facts.guests if (g.get("type") or "pvh") == "pvh"]
            if scenario.network == "bridge":
                checks.guest_pings_guest(vm, facts)
                checks.xl_console_login(vm, facts.guests[0]["name"])
                if settings.extra_checks:
                    checks.retire(vm, pvh)
            if late:
                checks.guests_ssh(vm, facts, late)
                checks.first_boot_access(vm, late)
                checks.nfs_root_served(vm, facts, scenario.host_ip.split("/")[0])
            if scenario.network == "bridge":
                if settings.extra_checks:
                    name = facts.guests[0]["name"]
                    checks.save_restore(vm, name)
                    checks.mem_set(vm, name)
                    checks.broken_guest_reported(vm, name)
                    checks.guests_stopped(vm, [g["name"] for g in facts.guests if g["name"] not in pvh])
                    checks.nfs_guests_shut_down_cleanly(vm, facts)
            if _lvm(settings, scenario):
                # The guests go before the storage checks: under TCG every running domain
                # slows dom0's block I/O several times over.
                if scenario.network != "bridge":
                    checks.guests_stopped(vm, [g["name"] for g in facts.guests])
                checks.lvm_checks(vm, *SCRATCH_PARTS)
    finally:
        result.checks += [f"[{scenario.name}] {c.line()}" for c in vm.checks]
        if first:
            result.timings.append(f"[{scenario.name}] power-on to first guest userspace: {first[0]:.1f}s")
        if pingable:
            result.timings.append(f"[{scenario.name}] power-on to all guests pingable: {pingable[0]:.1f}s")
        if stolen is not None and (now := steal_seconds()) is not None:
            result.timings.append(f"[{scenario.name}] CPU time the hypervisor gave others during the boot "
                                  f"(steal): {now - stolen:.1f}s")
        if _lvm(settings, scenario):
            code.unlink(missing_ok=True)   # gigabytes of the LVM checks' data
    if not all(c.ok for c in vm.checks):
        raise ProvisionError(f"{scenario.name}: a check failed; serial log {log_path}", exit_code=1)


def host_speed() -> float:
    """Seconds this machine takes for a fixed piece of pure CPU work (summing 3e7
    integers in python3). Reported beside the boot's figures: this kind of machine took
    0.48-0.75 s for it in its fast hours and 1.0-1.2 s in its slow ones, on the same day
    (other tenants' load), and the boot, CPU-bound under TCG, follows that swing."""
    start = time.perf_counter()
    sum(range(3 * 10**7))
    return time.perf_counter() - start


def steal_seconds(stat: str = "/proc/stat") -> float | None:
    """CPU seconds this machine's hypervisor has run others instead of it, over all its
    CPUs (the steal field of /proc/stat's cpu line); None where it cannot be read. The
    boot is CPU-bound under TCG: steal during it explains a slow run that the host speed
    loop, timed only at the ends, does not."""
    try:
        with open(stat) as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


def run_boottest(settings: Settings) -> Result:
    """Assemble (or reuse) each scenario's host, boot it, check it; print times and checks."""
    from provision.build.install import make_dist
    result = Result(out=settings.out)
    speed = [host_speed()]
    start = time.monotonic()
    settings.out.mkdir(parents=True, exist_ok=True)
    try:
        with _stage(result, "dist", "The dist tarball (doit dist)"):
            tarball = make_dist(settings.inputs.dist.parent)
        images = {}
        for name in settings.scenarios:
            scenario = SCENARIOS[name]
            with _stage(result, f"image-{name}", f"Host image: {name}"):
                images[name] = assemble.host_image(scenario, settings.inputs, tarball, settings.out)
        facts = next(iter(images.values()))[1]
        result.booted = (f"dist/install: xen-{facts.xen_version}, {Path(facts.dom0_kernel).name}; "
                         f"installed by install.sh from {tarball.name}")
        if settings.parallel and len(settings.scenarios) > 1:
            _boot_together(settings, images, result)
        else:
            for name in settings.scenarios:
                image, facts = images[name]
                with _stage(result, f"boot-{name}", f"Booting the {name} host under QEMU (TCG); "
                                                    f"serial log {settings.out}/serial-{name}.log"):
                    boot(settings, SCENARIOS[name], image, facts, result)
        result.ok = True
    finally:
        result.stages["total"] = round(time.monotonic() - start, 1)
        speed.append(host_speed())
        result.timings.append("host speed (sum of 3e7 integers in python3; 0.5-0.75s in fast hours): "
                              f"{speed[0]:.2f}s before, {speed[1]:.2f}s after")
        atomic_write(settings.out / "report.txt", result.summary() + "\n")
        log.info(result.summary())
    return result


def _boot_together(settings: Settings, images: dict, result: Result) -> None:
    """Boot every scenario's host at once, one QEMU each (``--parallel``). Not the default:
    a booting Xen host under TCG keeps about 1.4 of 2 cores busy on average, and two
    machines of 2 vCPUs on 2 cores preempt each other's vCPU threads (a domain spinning
    on a lock whose holder's thread is not running), which made both about 3 times
    slower than alone when measured. Each scenario runs to its end; the first failure
    (in scenario order) is raised after both are done. An interrupt stops both machines."""
    names = settings.scenarios
    parts = {name: Result(out=settings.out) for name in names}
    machines: list[Machine] = []

    def one(name: str) -> None:
        image, facts = images[name]
        start = time.monotonic()
        try:
            boot(settings, SCENARIOS[name], image, facts, parts[name], machines)
        finally:
            parts[name].stages[f"boot-{name}"] = round(time.monotonic() - start, 1)

    errors: dict[str, BaseException] = {}
    start = time.monotonic()
    with log.step(f"Booting the {' and '.join(names)} hosts at once under QEMU (TCG); serial logs "
                  f"{settings.out}/serial-*.log"):
        pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="boot")
        futures = {name: pool.submit(one, name) for name in names}
        try:
            for name, future in futures.items():
                while True:   # short waits: the main thread stays free for SIGINT/SIGTERM
                    try:
                        future.result(timeout=1)
                    except TimeoutError:
                        continue
                    except Exception as e:  # noqa: BLE001 - kept, raised after the others end
                        errors[name] = e
                    break
        except BaseException:
            for vm in list(machines):
                vm.stop()
            raise
        finally:
            pool.shutdown(wait=True)
            for name in names:
                result.stages.update(parts[name].stages)
                result.checks += parts[name].checks
                result.timings += parts[name].timings
            result.stages["boot-all"] = round(time.monotonic() - start, 1)
    for name in names:
        if name in errors:
            raise errors[name]


def settings_from_args(args) -> Settings:
    dist = Path(args.dist).resolve() if args.dist else paths.dist() / "install"
    if not (dist / "manifest.json").is_file():
        raise ProvisionError(f"{dist} holds no staged build (no manifest.json)", hint="run `doit world` first")
    assemble.dist_release(dist)
    from provision.grub.cmdline import check_scheduler, parse_dom0_mem, schedulers_from_config
    configs = sorted(p for p in (dist / "boot").glob("xen-*.config") if not p.is_symlink())
    # Caught here, before anything is built, as `grub install` would catch it. They stay
    # text in Inputs: the boot test hands them to the public `grub install` it tests (and
    # they key the cached host image); nothing in the boot test parses them again.
    check_scheduler(args.sched, schedulers_from_config(configs[-1]) if configs else None)
    parse_dom0_mem(args.dom0_mem)
    if args.timeout <= 0:
        raise ProvisionError(f"--timeout {args.timeout} must be positive")
    memory = parse_size(args.memory, "--memory", minimum=512 * MiB) // MiB
    from provision.guest import resolve
    from provision.guest.mirror import host_mirror
    mirror = args.mirror or host_mirror("debian") or "http://deb.debian.org/debian"
    spec = resolve(args.suite, mirror=mirror)   # the suite and mirror, as `image` checks them
    scenarios = tuple(SCENARIOS) if args.scenario in (None, "all") else (args.scenario,)
    inputs = Inputs(dist=dist, suite=spec.suite, mirror=spec.mirror, sched=args.sched,
                    dom0_mem=args.dom0_mem, refresh=args.refresh)
    out = Path(args.out).resolve() if args.out else paths.dist() / "boottest"
    return Settings(inputs=inputs, out=out, scenarios=scenarios, memory=memory,
                    timeout=args.timeout, extra_checks=not args.boot_only, lvmcheck=args.lvmcheck,
                    parallel=args.parallel, smp=args.smp)


def cmd_boottest(args) -> int:
    settings = settings_from_args(args)
    # QEMU runs in its own session, so a SIGTERM to us does not reach it: the undo stack's
    # handler turns the signal into an exception, and the machine's exit kills QEMU.
    with UndoStack():
        result = run_boottest(settings)
    return 0 if result.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "boottest", help="boot the hosts the README's commands make under QEMU and check them",
        description="Make Xen hosts with the public commands (dist tarball and install.sh, grub "
                    "install, xendomains, network, image, domain create) and boot each under QEMU "
                    "with TCG on a LAN that ends inside QEMU, checking the serial console.")
    p.add_argument("--dist", default=None, help="the staged tree (default: DIST/install, DIST as for doit: "
                                                "$XEN_PROVISION_DIST, else ./dist)")
    p.add_argument("--out", default=None, help="where the logs and report go (default: DIST/boottest)")
    p.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all",
                   help="bridged (two guests on xenbr0), routed (vif-route) or all (default)")
    p.add_argument("--suite", default="bookworm", help="dom0's and the guests' suite")
    p.add_argument("--mirror", default=None, help="mirror (default: the host's own)")
    p.add_argument("--sched", default="credit", help="Xen scheduler to ask for (default credit)")
    p.add_argument("--dom0-mem", default="1024M,max:1024M", help="Xen's dom0_mem")
    p.add_argument("--memory", default="3G", help="the QEMU machine's memory")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for each long wait")
    p.add_argument("--boot-only", action="store_true", help="skip LVM, save/restore, mem-set")
    p.add_argument("--lvmcheck", action=argparse.BooleanOptionalAction, default=True,
                   help="run the LVM checks in dom0 (default; --no-lvmcheck skips them)")
    p.add_argument("--smp", type=int, choices=(1, 2, 3, 4), default=2,
                   help="each QEMU machine's vCPUs (default 2)")
    p.add_argument("--parallel", action="store_true",
                   help="boot the scenarios' machines at once (default: one after the other)")
    p.add_argument("--refresh", action="store_true", help="bootstrap the bases again and rebuild the images")
    p.set_defaults(func=cmd_boottest)
