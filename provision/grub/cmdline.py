"""Xen's and dom0's command lines as typed, validated settings.

The grammar is Xen's own (docs/misc/xen-command-line.pandoc in Xen's tree): sizes
take K/M/G/T/B suffixes and mean KiB without one, booleans are ``name``,
``name=<bool>`` or ``no-name``, ``dom0_mem`` is a list of ``<sz>``, ``min:<sz>`` and
``max:<sz>``. Options we do not model pass through unchanged, with a warning when Xen
does not document them. Every error is one line naming the option and what it accepts.

The Xen 2.0 manual's own examples parse: ``dom0_mem=131072`` (KiB, written back as
``128M``), ``com1=115200,8n1``, and ``sched=bvt`` fails with a message naming today's
schedulers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provision import log, xenlimits
from provision.errors import ProvisionError
from provision.sizes import shorten

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4

# Today's schedulers and the Kconfig symbol that builds each one in.
SCHEDULERS = {
    "credit": "CONFIG_SCHED_CREDIT",
    "credit2": "CONFIG_SCHED_CREDIT2",
    "rtds": "CONFIG_SCHED_RTDS",
    "arinc653": "CONFIG_SCHED_ARINC653",
    "null": "CONFIG_SCHED_NULL",
}
# The Xen 2.0 manual's schedulers, removed long ago, and what replaced them in spirit.
XEN2_SCHEDULERS = {
    "bvt": "credit or credit2 (proportional share)",
    "atropos": "rtds (soft real time) or arinc653",
    "rrobin": "null or credit",
}

LOG_LEVELS = ("none", "error", "warning", "info", "debug", "all")
CONSOLE_DEVICES = ("vga", "com1", "com2", "pv", "dbgp", "ehci", "xhci", "none")
BAUD_RATES = (
    110, 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400,
    460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000,
    3000000, 3500000, 4000000,
)
# The smallest dom0 that boots a current kernel; below it a unit was almost surely lost.
DOM0_MIN_BYTES = 64 * MiB

# Option names documented in xen-command-line.pandoc (x86 and common ones). Anything
# else still passes through, with a warning, since Xen ignores what it does not know.
KNOWN_XEN_OPTIONS = frozenset("""
acpi acpi_apic_instance acpi_pstate_strict acpi_skip_timer_override acpi_sleep
allow_unsafe altp2m apic apicv apic_verbosity arat argo asid async-show-all ats
availmem badpage bootscrub bootscrub_chunk cet clocksource cmci-threshold
cmos-rtc-probe com1 com2 conring_size console console_timestamps console_to_ring
conswitch core_parking cpu_type cpufreq cpuid cpuid_mask_cpu cpuid_mask_ecx
cpuid_mask_edx cpuid_mask_ext_ecx cpuid_mask_ext_edx cpuid_mask_l7s0_eax
cpuid_mask_l7s0_ebx cpuid_mask_thermal_ecx cpuid_mask_xsave_eax cpuidle cpuinfo
crash-debug-debugkey crash-debug-hwdom crash-debug-kexeccmd crash-debug-panic
crash-debug-watchdog crashinfo_maxaddr crashkernel credit2_balance_over
credit2_balance_under credit2_cap_period_ms credit2_load_precision_shift
credit2_load_window_shift credit2_runqueue dbgp debug_stack_lines debugtrace dit
dma_bits dom0 dom0-cpuid dom0-iommu dom0_ioports_disable dom0_max_vcpus dom0_mem
dom0_nodes dom0_vcpus_pin e820-mtrr-clip e820-verbose edd edid efi ept
extra_guest_irqs flask font force-ept gdb gnttab gnttab_max_frames
gnttab_max_maptrack_frames global-pages guest_loglvl hap hap_1gb hap_2mb
hardware_dom hest_disable highmem-start hpet hpetbroadcast hvm_debug hvm_fep
hvm_port80 idle_latency_factor ioapic_ack iommu iommu_dev_iotlb_timeout
iommu_inclusive_mapping irq_ratelimit irq_vector_map ivmd lapic lapic_timer_c2_ok
ler loglvl low_crashinfo low_mem_virq_limit maxcpus max_cstate max_gsi_irqs mce
mce_fb mce_verbosity mem memop-max-order mmcfg mmio-relax msi mtrr.show mwait-idle
nmi noapic invpcid noirqbalance nolapic no-real-mode noreboot nosmp nr_irqs
irq-max-guests numa pci pci-phantom pcid pku ple_gap ple_window preferred-cstates
psr pv pv-linear-pt pv-l1tf pv-shim rcu-idle-timer-period-ms reboot rmrr ro-hpet
sched sched_credit2_max_cpus_runqueue sched_credit2_migrate_resist
sched_credit_tslice_ms sched-gran sched_ratelimit_us sched_smt_power_savings
scrub-domheap serial_tx_buffer shim_mem smap smep smt snb_igd_quirk spec-ctrl
sync_console tboot tbuf_size tdt tevt_mask tickle_one_idle_cpu timer_slop tsc tsx
ucode unrestricted_guest vcpu_migration_delay vesa-ram vga
viridian-spinlock-retry-count viridian-version vm-notify-window vpid vpmu watchdog
watchdog_timeout x2apic x2apic_phys xpti xsave xsm
""".split())

_TRUE = ("yes", "on", "true", "enable", "1")
_FALSE = ("no", "off", "false", "disable", "0")


def _bad(option: str, value: str, accepted: str, hint: str | None = None) -> ProvisionError:
    return ProvisionError(f"{option}={value} is not valid: {accepted}", hint=hint)


# -- sizes ----------------------------------------------------------------------------

_XEN_SIZE = re.compile(r"^(0x[0-9a-fA-F]+|[0-9]+)([TtGgMmKkBb]?)$")
_FACTORS = {"t": TiB, "g": GiB, "m": MiB, "k": KiB, "b": 1, "": KiB}


def _not_octal(option: str, text: str, number: str) -> None:
    """Xen reads numbers with strtoul(base 0): a leading 0 means octal (0512 is 330)."""
    if len(number) > 1 and number.startswith("0") and number.isdigit():
        raise _bad(option, text, f"'{number}' starts with 0, which Xen reads as octal; "
                                 f"write {number.lstrip('0') or '0'} (or 0x... for hex)")


def parse_xen_size(text: str, option: str) -> tuple[int, bool]:
    """Bytes for a Xen ``<size>`` and whether it had no unit (Xen then reads KiB)."""
    m = _XEN_SIZE.match(text)
    if not m:
        raise _bad(option, text, "a size is a whole number with K, M, G, T or B (no unit means KiB), e.g. 512M")
    _not_octal(option, text, m.group(1))
    # A 400-digit number is not worth converting: it is beyond every limit (see parse_dom0_mem).
    value = int(m.group(1), 0) * _FACTORS[m.group(2).lower()] if len(m.group(1)) <= 30 else 1 << 128
    return value, m.group(2) == ""


def format_xen_size(n: int) -> str:
    """The shortest exact Xen form: 134217728 -> '128M'."""
    for suffix, factor in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n and n % factor == 0:
            return f"{n // factor}{suffix}"
    return f"{n}B"


@dataclass(frozen=True)
class MemAmount:
    """One dom0_mem ``<sz>``: ``[-]<size>``, ``[-]<frac>%`` or ``[-]<size>+<frac>%``."""

    size: int = 0        # bytes
    percent: int = 0     # of the host's memory, 0-99
    minus: bool = False  # subtracted from the host's memory

    @property
    def absolute(self) -> int | None:
        """Bytes when the amount does not depend on the host, else None."""
        return None if (self.minus or self.percent) else self.size

    def __str__(self) -> str:
        parts = []
        if self.size or not self.percent:
            parts.append(format_xen_size(self.size))
        if self.percent:
            parts.append(f"{self.percent}%")
        return ("-" if self.minus else "") + "+".join(parts)


_AMOUNT = re.compile(r"^(-?)(?:([0-9a-fA-Fx]+[TtGgMmKkBb]?)(?:\+([0-9]+)%)?|([0-9]+)%)$")


def parse_mem_amount(text: str, option: str = "dom0_mem") -> tuple[MemAmount, bool]:
    m = _AMOUNT.match(text)
    if not m:
        raise _bad(
            option, text,
            "use <size> (K/M/G/T, no unit = KiB), <percent>%, <size>+<percent>%, "
            "each optionally negative, e.g. 1G, -512M, 25%, 1G+25%",
        )
    minus, size_text, plus_pct, pct_only = m.groups()
    _not_octal(option, text, plus_pct or pct_only or "")
    size, unitless = parse_xen_size(size_text, option) if size_text else (0, False)
    pct = int(plus_pct or pct_only or 0) if len(plus_pct or pct_only or "") <= 3 else 100
    if pct >= 100:
        raise _bad(option, text, "a percentage must be below 100")
    return MemAmount(size=size, percent=pct, minus=bool(minus)), unitless


@dataclass(frozen=True)
class Dom0Mem:
    """``dom0_mem=`` as a list of ``<sz>``, ``min:<sz>``, ``max:<sz>``."""

    amount: MemAmount | None = None
    min: MemAmount | None = None
    max: MemAmount | None = None

    def __str__(self) -> str:
        parts = []
        if self.amount is not None:
            parts.append(str(self.amount))
        if self.min is not None:
            parts.append(f"min:{self.min}")
        if self.max is not None:
            parts.append(f"max:{self.max}")
        return ",".join(parts)


def parse_dom0_mem(text: str, machine_memory: int | None = None) -> Dom0Mem:
    """Parse and check ``dom0_mem``; ``machine_memory`` (bytes), when known, bounds it."""
    if not text:
        raise _bad("dom0_mem", text, "give a size such as 1G, or min:<size>/max:<size> items")
    items: dict[str, MemAmount] = {}
    unitless = []
    for item in text.split(","):
        if not item:
            raise _bad("dom0_mem", text, "an item is empty; items are <size>, min:<size> or max:<size>, separated by commas")
        kind, _, value = item.rpartition(":") if ":" in item else ("", "", item)
        if kind not in ("", "min", "max"):
            raise _bad("dom0_mem", text, "items are <size>, min:<size> or max:<size>, separated by commas")
        if kind in items:
            raise _bad("dom0_mem", text, f"'{kind or 'the amount'}' is given twice")
        amount, bare = parse_mem_amount(value)
        if bare:
            unitless.append(value)
        items[kind] = amount
    mem = Dom0Mem(amount=items.get(""), min=items.get("min"), max=items.get("max"))
    for what, a in (("the amount", mem.amount), ("min", mem.min), ("max", mem.max)):
        if a is not None and a.size >= xenlimits.GUEST_MEMORY:
            raise _bad("dom0_mem", shorten(text),
                       f"{what} is too large: Xen gives a domain, dom0 too, "
                       f"less than {format_xen_size(xenlimits.GUEST_MEMORY)} (its SUPPORT.md)")
    lo = mem.min.absolute if mem.min else None
    hi = mem.max.absolute if mem.max else None
    amount = mem.amount.absolute if mem.amount else None
    if lo is not None and hi is not None and lo > hi:
        raise _bad("dom0_mem", str(mem), f"min:{mem.min} is above max:{mem.max}")
    if amount is not None and hi is not None and amount > hi:
        raise _bad("dom0_mem", str(mem), f"the amount {mem.amount} is above max:{mem.max}")
    for what, value in (("the amount", amount), ("max", hi)):
        if value is not None and value < DOM0_MIN_BYTES:
            raise _bad(
                "dom0_mem", str(mem),
                f"{what} {format_xen_size(value)} is too small for dom0 (at least {format_xen_size(DOM0_MIN_BYTES)})",
                hint="a number without a unit means KiB in Xen: write 512M, not 512",
            )
    if machine_memory:
        for what, a in (("the amount", mem.amount), ("min", mem.min), ("max", mem.max)):
            if a is None:
                continue
            if a.size > machine_memory:
                raise _bad(
                    "dom0_mem", str(mem),
                    f"{what} {a} is more than the machine's memory ({format_xen_size(machine_memory)})",
                )
    for value in unitless:
        size, _ = parse_xen_size(value, "dom0_mem")
        log.note(
            f"dom0_mem: '{value}' has no unit; Xen reads it as KiB (so did Xen 2.0), "
            f"written as {format_xen_size(size)}"
        )
    return mem


# -- serial ports ---------------------------------------------------------------------

_DPS = re.compile(r"^[5-8][noems][12]$")
_BDF = re.compile(r"^[0-9a-fA-F]{1,4}(:[0-9a-fA-F]{1,2}){1,2}\.[0-7]$")
_INT = re.compile(r"^(0x[0-9a-fA-F]+|[0-9]+)$")
_COM_NAMES = {
    "baud", "bridge", "clock-hz", "data-bits", "dev", "io-base", "irq", "parity",
    "port", "reg-shift", "reg-width", "stop-bits",
}
_COM_FORM = "<baud>[/<base-baud>][,DPS[,<io-base>|pci|amt[,<irq>|msi[,<port-bdf>[,<bridge-bdf>]]]]] or auto, e.g. 115200,8n1"


def _check_baud(option: str, text: str, value: str) -> None:
    if value == "auto":
        return
    if not re.fullmatch(r"[0-9]{1,8}", value) or int(value) not in BAUD_RATES:
        raise _bad(option, text, f"baud '{value}' is not a serial rate; use auto or one of {', '.join(map(str, BAUD_RATES[3:12]))}, ...")


def parse_com(option: str, text: str) -> str:
    """Validate ``com1``/``com2`` and return it unchanged (Xen's own spelling is kept)."""
    if not text:
        raise _bad(option, text, _COM_FORM)
    fields = text.split(",")
    positional = []
    named = []
    for f in fields:
        (named if "=" in f else positional).append(f)
        if named and "=" not in f:
            raise _bad(option, text, "positional fields must come before name=value pairs")
    if positional:
        baud, _, base = positional[0].partition("/")
        if baud or not named:
            _check_baud(option, text, baud)
        if base and not re.fullmatch(r"[0-9]{1,10}", base):
            raise _bad(option, text, f"base baud '{base}' must be a whole number")
        checks = [
            (_DPS.match, "DPS: data bits 5-8, parity n/o/e/m/s, stop bits 1-2, e.g. 8n1"),
            (lambda v: _INT.match(v) or v in ("pci", "amt"), "io-base: a number such as 0x3f8, or pci or amt"),
            (lambda v: _INT.match(v) or v == "msi", "irq: a number (0 = poll) or msi"),
            (_BDF.match, "port: a PCI <bus>:<device>.<function>"),
            (_BDF.match, "bridge: a PCI <bus>:<device>.<function>"),
        ]
        if len(positional) > 1 + len(checks):
            raise _bad(option, text, f"too many fields; {_COM_FORM}")
        for value, (ok, accepted) in zip(positional[1:], checks, strict=False):
            if value and not ok(value):
                raise _bad(option, text, f"'{value}' is not a valid {accepted}")
    for pair in named:
        key, _, value = pair.partition("=")
        if key not in _COM_NAMES:
            raise _bad(option, text, f"'{key}' is not a serial setting; use {', '.join(sorted(_COM_NAMES))}")
        if key == "baud":
            _check_baud(option, text, value)
        elif key == "data-bits" and value not in ("5", "6", "7", "8"):
            raise _bad(option, text, "data-bits is 5, 6, 7 or 8")
        elif key == "stop-bits" and value not in ("1", "2"):
            raise _bad(option, text, "stop-bits is 1 or 2")
        elif key == "parity" and value not in ("n", "o", "e", "m", "s"):
            raise _bad(option, text, "parity is n, o, e, m or s")
        elif key == "dev" and value not in ("pci", "amt"):
            raise _bad(option, text, "dev is pci or amt")
        elif key in ("io-base", "irq", "clock-hz", "reg-shift") and not _INT.match(value):
            raise _bad(option, text, f"{key} must be a number")
        elif key == "reg-width" and value not in ("1", "4"):
            raise _bad(option, text, "reg-width is 1 or 4")
    return text


def parse_console(text: str) -> tuple[str, ...]:
    devices = tuple(text.split(",")) if text else ()
    accepted = "a comma list of vga, com1, com2 (optionally with H or L, e.g. com1H), pv, dbgp, ehci, xhci, or none alone"
    if not devices:
        raise _bad("console", text, accepted)
    for dev in devices:
        base = dev[:-1] if re.fullmatch(r"com[12][HL]", dev) else dev
        if base not in CONSOLE_DEVICES:
            raise _bad("console", text, f"'{dev}' is not a console device; use {accepted}")
    if "none" in devices and len(devices) > 1:
        raise _bad("console", text, "none must be the only console")
    if len(set(devices)) != len(devices):
        raise _bad("console", text, "a device is listed twice")
    return devices


def parse_loglvl(option: str, text: str) -> str:
    level, _, limited = text.partition("/")
    if level not in LOG_LEVELS or (limited and limited not in LOG_LEVELS) or text.endswith("/"):
        raise _bad(option, text, f"use <level>[/<rate-limited level>], levels: {', '.join(LOG_LEVELS)}")
    return text


def parse_vcpus(text: str) -> str:
    m = re.fullmatch(r"([0-9]*)(-)?([0-9]*)", text or "x")
    if not m or not (m.group(1) or m.group(3)) or (not m.group(2) and m.group(3)):
        raise _bad("dom0_max_vcpus", text, "use <n> or <min>-<max> (either end may be left out), e.g. 2 or 1-4")
    lo, hi = m.group(1), m.group(3)
    for number in (lo, hi):
        _not_octal("dom0_max_vcpus", text, number)
        if number and (len(number) > 5 or int(number) > xenlimits.PV_VCPUS):
            raise _bad("dom0_max_vcpus", shorten(text),
                       f"dom0 is a PV domain, and Xen gives one at most {xenlimits.PV_VCPUS} vCPUs")
    if (lo and int(lo) < 1) or (hi and int(hi) < 1):
        raise _bad("dom0_max_vcpus", text, "vCPU counts start at 1")
    if lo and hi and int(lo) > int(hi):
        raise _bad("dom0_max_vcpus", text, f"min {lo} is above max {hi}")
    return text


def parse_bool(option: str, value: str | None) -> bool:
    if value is None or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _bad(option, value, f"a boolean is {', '.join(_TRUE)} or {', '.join(_FALSE)}")


def check_scheduler(name: str, available: frozenset[str] | None = None) -> str:
    """``sched=name`` against today's schedulers and, when known, those built in."""
    if name in XEN2_SCHEDULERS:
        raise ProvisionError(
            f"sched={name} is a Xen 2.0 scheduler that today's Xen no longer has; "
            f"use {XEN2_SCHEDULERS[name]} (today's: {', '.join(SCHEDULERS)})"
        )
    if name not in SCHEDULERS:
        raise _bad("sched", name, f"use one of {', '.join(SCHEDULERS)}")
    if available is not None and name not in available:
        built = ", ".join(s for s in SCHEDULERS if s in available) or "none"
        raise ProvisionError(
            f"sched={name} is not built into this hypervisor (it has: {built})",
            hint=f"pick one of those, or rebuild Xen with {SCHEDULERS[name]}=y",
        )
    return name


def schedulers_from_config(path: str | Path) -> frozenset[str]:
    """The schedulers a hypervisor was built with, from its staged ``xen-<ver>.config``."""
    found = set()
    for line in Path(path).read_text(errors="replace").splitlines():
        for name, symbol in SCHEDULERS.items():
            if line.strip() == f"{symbol}=y":
                found.add(name)
    return frozenset(found)


def config_beside(hypervisor: str | Path) -> Path:
    """``xen-4.17.gz`` -> ``xen-4.17.config`` next to it (Xen's install names them so)."""
    p = Path(hypervisor)
    if p.is_symlink():
        p = p.parent / Path(p.readlink()).name
    name = p.name
    for suffix in (".gz", ".efi"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return p.with_name(name + ".config")


# -- the whole Xen command line ---------------------------------------------------------

@dataclass(frozen=True)
class XenOptions:
    """Xen's command line. Modelled options render first, in a fixed order, then the rest."""

    dom0_mem: Dom0Mem | None = None
    dom0_max_vcpus: str | None = None
    com1: str | None = None
    com2: str | None = None
    console: tuple[str, ...] | None = None
    sched: str | None = None
    loglvl: str | None = None
    guest_loglvl: str | None = None
    sync_console: bool | None = None
    noreboot: bool | None = None
    extra: tuple[str, ...] = ()

    @property
    def serial_console(self) -> bool:
        """Whether Xen prints to a serial port (its default console is com1,vga)."""
        if self.console is None:
            return bool(self.com1)
        return any(d.startswith(("com1", "com2")) for d in self.console)

    def words(self) -> list[str]:
        out = []
        if self.dom0_mem is not None:
            out.append(f"dom0_mem={self.dom0_mem}")
        for key in ("dom0_max_vcpus", "com1", "com2"):
            if getattr(self, key) is not None:
                out.append(f"{key}={getattr(self, key)}")
        if self.console is not None:
            out.append("console=" + ",".join(self.console))
        for key in ("sched", "loglvl", "guest_loglvl"):
            if getattr(self, key) is not None:
                out.append(f"{key}={getattr(self, key)}")
        for key in ("sync_console", "noreboot"):
            value = getattr(self, key)
            if value is not None:
                out.append(key if value else f"{key}=false")
        return out + list(self.extra)

    def __str__(self) -> str:
        return " ".join(self.words())


def parse_xen_options(
    words: list[str] | str,
    *,
    machine_memory: int | None = None,
    schedulers: frozenset[str] | None = None,
) -> XenOptions:
    """Parse Xen's command line (a string or its words); errors name the option."""
    if isinstance(words, str):
        words = words.split()
    values: dict = {}
    extra: list[str] = []

    def once(key: str, value) -> None:
        if key in values:
            raise ProvisionError(f"{key} is given twice on Xen's command line", hint="keep one")
        values[key] = value

    for word in words:
        key, eq, value = word.partition("=")
        if key == "dom0_mem":
            once(key, parse_dom0_mem(value, machine_memory))
        elif key in ("com1", "com2"):
            once(key, parse_com(key, value))
        elif key == "console":
            once(key, parse_console(value))
        elif key == "sched":
            once(key, check_scheduler(value, schedulers))
        elif key == "dom0_max_vcpus":
            once(key, parse_vcpus(value))
        elif key in ("loglvl", "guest_loglvl"):
            once(key, parse_loglvl(key, value))
        elif key in ("noreboot", "sync_console"):
            once(key, parse_bool(key, value if eq else None))
        elif key in ("no-noreboot", "no-sync_console") and not eq:
            once(key[3:], False)
        else:
            name = key[3:] if key.startswith("no-") and key[3:] in KNOWN_XEN_OPTIONS else key
            if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+", name):
                raise ProvisionError(f"'{word}' is not a Xen option", hint="Xen options are name or name=value, separated by spaces")
            if name not in KNOWN_XEN_OPTIONS:
                log.warn(f"Xen option '{key}' is not in Xen's documented options; passing it through unchanged")
            extra.append(word)
    for key in ("com1", "com2"):
        if values.get("console") and any(d.startswith(key) for d in values["console"]) and key not in values:
            log.warn(f"console={','.join(values['console'])} uses {key} but {key}= is not set; Xen will probe it with default settings")
    return XenOptions(extra=tuple(extra), **values)


# -- dom0's kernel line ----------------------------------------------------------------

_ROOT = re.compile(r"^(/dev/\S+|(UUID|PARTUUID|LABEL|PARTLABEL)=\S+|[0-9a-fA-F]{3,4})$")
_KERNEL_WORD = re.compile(r"^[^\s'\"\\;&|<>`$]+$")


@dataclass(frozen=True)
class Dom0Options:
    """dom0 Linux's command line: root device, ro/rw, console(s), everything else."""

    root: str | None = None
    readonly: bool = True
    console: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    def words(self) -> list[str]:
        out = []
        if self.root:
            out += [f"root={self.root}", "ro" if self.readonly else "rw"]
        out += [f"console={c}" for c in self.console]
        return out + list(self.extra)

    def __str__(self) -> str:
        return " ".join(self.words())

    @property
    def serial_device(self) -> str | None:
        """The last non-VGA console (where the kernel's /dev/console ends up)."""
        serial = [c.split(",")[0] for c in self.console if not c.startswith("tty") or c.startswith("ttyS")]
        return serial[-1] if serial else None


def parse_dom0_options(words: list[str] | str, *, root: str | None = None, readonly: bool | None = None,
                       xen: XenOptions | None = None) -> Dom0Options:
    """Parse dom0's kernel line; a serial Xen console gives ``console=hvc0`` by default."""
    if isinstance(words, str):
        words = words.split()
    found_root, mode, consoles, extra = None, None, [], []
    for word in words:
        if not _KERNEL_WORD.match(word):
            raise ProvisionError(f"dom0 argument '{word}' has quotes or shell characters", hint="give plain name=value words")
        if word.startswith("root="):
            if found_root is not None:
                raise ProvisionError("root= is given twice on dom0's command line", hint="keep one")
            found_root = word[5:]
        elif word in ("ro", "rw"):
            mode = word
        elif word.startswith("console="):
            consoles.append(word[8:])
        else:
            extra.append(word)
    if root is not None:
        if found_root is not None and found_root != root:
            raise ProvisionError(f"dom0's root is given twice: root={found_root} in --dom0-args, {root} as --root-device",
                                 hint="give it once")
        found_root = root
    if found_root is not None and not _ROOT.match(found_root):
        raise _bad("root", found_root, "use a device such as /dev/sda4, UUID=..., PARTUUID=..., LABEL=... or PARTLABEL=...")
    if readonly is None:
        readonly = mode != "rw"
    elif mode is not None and readonly != (mode == "ro"):
        raise ProvisionError(f"dom0's root is '{mode}' in --dom0-args but {'ro' if readonly else 'rw'} by option",
                             hint="give ro or rw once")
    if not consoles and xen is not None and xen.serial_console:
        consoles = ["hvc0"]
    if xen is not None and xen.serial_console and any(c.startswith("ttyS") for c in consoles):
        log.warn(
            "dom0 console=ttyS* while Xen owns the serial port: a PV dom0 writes to Xen's "
            "console as hvc0; use console=hvc0"
        )
    return Dom0Options(root=found_root, readonly=readonly, console=tuple(consoles), extra=tuple(extra))


def with_sched_checked(opts: XenOptions, config: Path | None) -> XenOptions:
    """Check ``sched=`` against ``config`` (a staged xen-<ver>.config), or say it was skipped."""
    if opts.sched is None:
        return opts
    if config is None or not config.is_file():
        where = f" ({config} does not exist)" if config else ""
        log.note(f"sched={opts.sched}: scheduler check skipped, no hypervisor config to read{where}")
        return opts
    check_scheduler(opts.sched, schedulers_from_config(config))
    return opts


_GRUB_PARITY = {"n": "no", "o": "odd", "e": "even"}


def grub_serial_command(xen: XenOptions | None) -> str:
    """GRUB's ``serial`` command for the port Xen's console uses (com1 unless only com2
    is configured), with its speed and framing: ``serial --unit=0 --speed=115200 ...``."""
    port = "com1"
    if xen is not None:
        wanted = [c[:4] for c in (xen.console or ()) if c.startswith(("com1", "com2"))]
        port = wanted[0] if wanted else ("com2" if xen.com2 and not xen.com1 else "com1")
    spec = (getattr(xen, port, None) if xen is not None else None) or "115200,8n1"
    fields = [f for f in spec.split(",") if "=" not in f]
    baud = fields[0].partition("/")[0] if fields and fields[0] else "auto"
    if baud == "auto" or not baud:
        baud = "115200"
    dps = fields[1] if len(fields) > 1 and _DPS.match(fields[1]) else "8n1"
    if dps[1] not in _GRUB_PARITY:
        raise ProvisionError(f"{port}={spec}: GRUB's serial terminal has no parity '{dps[1]}'",
                             hint="use n, o or e parity for a serial menu")
    return (f"serial --unit={int(port[3]) - 1} --speed={baud} --word={dps[0]} "
            f"--parity={_GRUB_PARITY[dps[1]]} --stop={dps[2]}")
