"""Compiling the kernels through distcc (plain mode, never pump).

    hosts = parse(["build1/8", "build2:3633/4,lzo", "localhost/2"])
    plan = prepare(hosts)          # probes each host; None: build locally
    make(..., distcc=plan)         # DISTCC_HOSTS, make -j, CC or CCACHE_PREFIX

Only the kernels. Xen 4.17's hypervisor cannot compile on another machine: its C files
carry inline ``.include "asm/asm-macros.h"`` that the assembler resolves through
``-Wa,-I`` in the build tree (a generated header the host does not have), and with
``-Werror`` the preprocessed source trips ``-Wtautological-compare`` in macros that gcc
forgives when it preprocesses itself. Every job would fail remotely and be compiled
again locally: slower than a local build, so the hypervisor (and the tools, whose
sub-makes take ``$(CC)`` unquoted) stay local.

How the known traps are handled:

- Plain mode: the local machine preprocesses, the hosts only compile. Pump mode (",cpp")
  is refused: it ships headers and needs include-server, and gains little for kbuild.
- The compiler is named explicitly: with ccache in front (builddir's masquerade on PATH)
  ``CCACHE_PREFIX=distcc`` makes ccache hand its misses to distcc; without it make gets
  ``CC="distcc gcc"``. distcc's own masquerade directory is never put on PATH.
- GCC plugins (``CONFIG_GCC_PLUGINS``) load .so files from the build tree, which a remote
  host does not have: a kernel that enables them is refused (:func:`check_kernel`), and
  so is ``CONFIG_DEBUG_INFO`` (debug information compiled from preprocessed source is
  not byte-identical to a local build's).
- Before a build every host compiles a probe with ``DISTCC_FALLBACK=0``: a host that does
  not answer or refuses the job is dropped with a warning (all dropped: a plain local
  build, with a warning). A host whose compiler differs from the local gcc (the
  ``.comment`` its object carries, e.g. "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0") is an
  error: it would make different objects.
- During the build ``DISTCC_FALLBACK=1``: a host that fails mid-build (network, a
  crashed daemon) makes distcc compile that file locally, and backs the host off.
  ``DISTCC_SKIP_LOCAL_RETRY`` stays unset, so a file that failed remotely is compiled
  again locally: the local compiler is the reference, a remote-only failure never ends a
  build, and a real compile error is reported by the local gcc.

Whether distcc is used is not part of any build's cache key: the same compiler version
(checked) on the same preprocessed source gives the same object, so the outputs are the
same (tests/integration/test_distcc.py and bench/bench_distcc.py compare kernel objects
byte for byte), and a distcc build may reuse a local one's cache and vice versa.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.cache import cache_dir
from provision.errors import ProvisionError

# distcc's defaults when a host spec names no /LIMIT.
DEFAULT_SLOTS = {"localhost": 2, "tcp": 4}
OPTIONS = ("lzo",)  # ",cpp" is pump mode: refused
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_SPEC = re.compile(r"^(?P<host>[^:/,]+)(?::(?P<port>[0-9]+))?(?:/(?P<slots>[0-9]+))?(?P<options>(?:,[^,]*)*)$")
PROBE = 'const char probe_version[] = "VERSION=" __VERSION__;\nint probe(int x) { return x * 3 + 1; }\n'
PROBE_TIMEOUT = 60
HOSTS_HINT = "e.g. distcc='build1/8 build2:3633/4,lzo localhost/2' (distcc's host syntax, plain mode)"


@dataclass(frozen=True)
class Host:
    """One entry of DISTCC_HOSTS."""

    spec: str      # as distcc reads it
    host: str
    port: int | None
    slots: int
    options: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        return self.host == "localhost"

    @property
    def address(self) -> str:
        return self.host + (f":{self.port}" if self.port else "")


def parse_host(text: str) -> Host:
    """One distcc host spec: ``localhost[/N]`` or ``HOST[:PORT][/N][,lzo]``."""
    spec = text.strip()
    what = f"distcc host {text!r}"
    if not spec:
        raise ProvisionError("distcc host list has an empty entry", hint=HOSTS_HINT)
    if spec.startswith("--"):
        raise ProvisionError(f"{what}: global options (--randomize, --localslots) are not used",
                             hint=HOSTS_HINT)
    if "@" in spec:
        raise ProvisionError(f"{what}: ssh hosts are not supported; run distccd on the host (TCP)",
                             hint=HOSTS_HINT)
    m = _SPEC.match(spec)
    if not m:
        raise ProvisionError(f"{what} does not parse as HOST[:PORT][/SLOTS][,lzo]", hint=HOSTS_HINT)
    host = m["host"]
    if not _HOST.match(host) or host.replace(".", "").isdigit() and not _ipv4(host):
        raise ProvisionError(f"{what}: {host!r} is not a host name or IPv4 address", hint=HOSTS_HINT)
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ProvisionError(f"{what}: port {port} is out of range (1-65535)", hint=HOSTS_HINT)
    if host == "localhost" and port is not None:
        raise ProvisionError(f"{what}: localhost means this machine without a daemon and takes no port; "
                             "for a daemon here write 127.0.0.1:PORT", hint=HOSTS_HINT)
    options = tuple(o for o in m["options"].split(",")[1:])
    for option in options:
        if option == "cpp":
            raise ProvisionError(f"{what}: ',cpp' is pump mode; builds use plain mode", hint=HOSTS_HINT)
        if option not in OPTIONS:
            raise ProvisionError(f"{what}: unknown option {option!r} (allowed: {', '.join(OPTIONS)})",
                                 hint=HOSTS_HINT)
    if options and host == "localhost":
        raise ProvisionError(f"{what}: localhost takes no options", hint=HOSTS_HINT)
    kind = "localhost" if host == "localhost" else "tcp"
    slots = int(m["slots"]) if m["slots"] else DEFAULT_SLOTS[kind]
    if not 1 <= slots <= 1024:
        raise ProvisionError(f"{what}: slots must be 1 to 1024, not {slots}", hint=HOSTS_HINT)
    return Host(spec=spec, host=host, port=port, slots=slots, options=options)


def _ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def parse(value: str | list[str] | tuple[str, ...] | None) -> tuple[Host, ...]:
    """A host list: a string of specs separated by white space (DISTCC_HOSTS's form, what
    ``distcc=`` takes) or a list of specs (world.toml). Duplicates are an error."""
    if value is None:
        return ()
    items = value.split() if isinstance(value, str) else list(value)
    hosts = tuple(parse_host(item) for item in items)
    seen: set[str] = set()
    for h in hosts:
        if h.address in seen:
            raise ProvisionError(f"distcc host {h.address} is listed twice", hint=HOSTS_HINT)
        seen.add(h.address)
    return hosts


def slots(hosts: tuple[Host, ...]) -> int:
    """make -j for these hosts: every slot busy. Preprocessing (plain mode) and linking stay
    here; distcc queues a job that finds no free slot, so more would only wait."""
    return max(1, sum(h.slots for h in hosts))


@dataclass(frozen=True)
class Plan:
    """A build's distcc settings: the hosts that passed the probe."""

    hosts: tuple[Host, ...]

    @property
    def jobs(self) -> int:
        return slots(self.hosts)

    def env(self, ccache: bool) -> dict[str, str]:
        env = {
            "DISTCC_HOSTS": " ".join(h.spec for h in self.hosts),
            "DISTCC_FALLBACK": "1",
            "DISTCC_DIR": str(state_dir()),
        }
        if ccache:
            env["CCACHE_PREFIX"] = "distcc"
        return env

    def make_args(self, ccache: bool) -> list[str]:
        # With ccache's masquerade gcc on PATH, ccache calls "distcc gcc" itself.
        return [] if ccache else ["CC=distcc gcc"]


def state_dir() -> Path:
    """distcc's lock and backoff state: ours, not $HOME/.distcc."""
    path = cache_dir("distcc")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_kernel(name: str, config: dict[str, str]) -> None:
    """A kernel .config that can be built through distcc: no GCC plugins, and no debug
    information (gcc compiling distcc's preprocessed source records other line/column
    numbers: bench_distcc found arch/x86/boot/cpuflags.o, built with -g, different)."""
    if config.get("DEBUG_INFO") == "y":
        raise ProvisionError(
            f"{name}: CONFIG_DEBUG_INFO=y is not built through distcc (debug information from "
            "preprocessed source differs from a local build's, and builds must be reproducible)",
            hint="build this kernel without distcc, or set CONFIG_DEBUG_INFO_NONE=y in a fragment",
        )
    if config.get("GCC_PLUGINS") == "y":
        raise ProvisionError(
            f"{name}: CONFIG_GCC_PLUGINS=y cannot be built through distcc (the plugins are .so "
            "files of this build tree, which the hosts do not have)",
            hint="add '# CONFIG_GCC_PLUGINS is not set' to a fragment of the recipe, or build without distcc",
        )


def compiler_id(obj: bytes) -> str | None:
    """The compiler's identification in an object's .comment ("GCC: (Debian ...) 12.2.0")."""
    m = re.search(rb"GCC: \([^\x00]*", obj)
    return m.group(0).decode(errors="replace") if m else None


def compare_versions(host: str, local: str | None, remote: str | None) -> None:
    """A host whose compiler is not the local one: one line naming both."""
    if remote != local:
        raise ProvisionError(
            f"distcc host {host} compiles with '{remote or 'an unknown compiler'}' but the local "
            f"compiler is '{local or 'unknown'}': the outputs would differ",
            hint="install the same gcc on the host, or drop it from the distcc hosts",
        )


@dataclass(frozen=True)
class Status:
    host: Host
    ok: bool
    compiler: str | None  # the .comment of the probe's object
    error: str = ""       # distcc's last error line when not ok

    def line(self) -> str:
        state = "ok" if self.ok else "FAILED"
        return f"{self.host.spec:<28} {state:<7} {self.compiler or self.error}"


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if not gcc:
        raise ProvisionError("gcc is not installed", hint="apt-get install build-essential")
    return gcc


def _distcc() -> str:
    path = shutil.which("distcc")
    if not path:
        raise ProvisionError("distcc is not installed", hint="apt-get install distcc")
    return path


def _compile(argv: list[str], env: dict[str, str], work: Path) -> tuple[bytes | None, str]:
    source = work / "probe.c"
    source.write_text(PROBE)
    obj = work / "probe.o"
    obj.unlink(missing_ok=True)
    # TMPDIR: distcc leaves its preprocessed copy (distcc_*.i) behind when a host refuses
    # the job with fallbacks off; in the probe's own directory it goes with it.
    full = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **env, "TMPDIR": str(work)}
    full.pop("CCACHE_PREFIX", None)
    try:
        proc = subprocess.run([*argv, "-c", "probe.c", "-o", "probe.o"], cwd=work, env=full,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {PROBE_TIMEOUT} s"
    if proc.returncode != 0 or not obj.exists():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        # distcc's reason, without its "distcc[pid] (function)" prefix
        last = next((ln for ln in lines if "ERROR" in ln and "fallbacks are disabled" not in ln),
                    lines[-1] if lines else f"exit {proc.returncode}")
        return None, re.sub(r"^distcc\[\d+\] (\([^)]*\) )?(ERROR: )?", "", last)
    return obj.read_bytes(), ""


def local_compiler() -> str | None:
    with tempfile.TemporaryDirectory(prefix="distcc-probe-") as tmp:
        obj, error = _compile([_gcc()], {}, Path(tmp))
    if obj is None:
        raise ProvisionError(f"the local gcc cannot compile a probe: {error}")
    return compiler_id(obj)


def probe(host: Host) -> Status:
    """Compile the probe on ``host`` alone, with no fallback: does it answer, accept a job,
    and with which compiler?"""
    if host.local:
        return Status(host, True, local_compiler())
    env = {"DISTCC_HOSTS": host.spec, "DISTCC_FALLBACK": "0", "DISTCC_SKIP_LOCAL_RETRY": "1",
           "DISTCC_DIR": str(state_dir()), "DISTCC_BACKOFF_PERIOD": "0"}
    with tempfile.TemporaryDirectory(prefix="distcc-probe-") as tmp:
        obj, error = _compile([_distcc(), "gcc"], env, Path(tmp))
    if obj is None:
        return Status(host, False, None, error)
    return Status(host, True, compiler_id(obj))


def check(hosts: tuple[Host, ...]) -> list[Status]:
    """Every host's status; a compiler that differs from the local one is an error."""
    local = local_compiler()
    statuses = [probe(h) for h in hosts]
    for s in statuses:
        if s.ok:
            compare_versions(s.host.spec, local, s.compiler)
    return statuses


@functools.cache
def prepare(hosts: tuple[Host, ...]) -> Plan | None:
    """The plan for a build: the hosts that answer (a warning for each that does not);
    None when there are none left (build locally, with a warning)."""
    if not hosts:
        return None
    _distcc()
    with log.step(f"Checking {len(hosts)} distcc host{'s' if len(hosts) > 1 else ''}"):
        statuses = check(hosts)
    for s in statuses:
        if not s.ok:
            log.warn(f"distcc host {s.host.spec} is not usable ({s.error}); building without it")
    good = tuple(s.host for s in statuses if s.ok)
    if not good or all(h.local for h in good):
        log.warn("no distcc host is usable: compiling locally")
        return None
    return Plan(good)
