"""A domain as xl sees it: settings validated once, then trusted by the writer.

``Domain.from_config`` turns parsed xl settings into typed fields; every bad value is
one ProvisionError line naming the key. Keys we do not model but xl knows are kept
verbatim in ``other``; keys xl does not know are an error naming the closest one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from provision import validate, xenlimits
from provision.errors import ProvisionError
from provision.sizes import MiB, format_size, parse_size, shorten

# Keys of xl.cfg(5) (Xen 4.17). An unknown key is almost always a typo that xl would
# silently ignore, so we refuse it and name the closest of these.
XL_KEYS = frozenset("""
name uuid type builder pool vcpus maxvcpus cpus cpus_soft cpu_weight cap memory maxmem
on_poweroff on_reboot on_watchdog on_crash on_soft_reset kernel ramdisk cmdline root extra
bootloader bootloader_args e820_host driver_domain device_tree passthrough
disk vif vtpm p9 pvcalls vfb vkb vdispl vsnd channel connectors usbctrl usbdev
pci pci_permissive pci_msitranslate pci_seize pci_power_mgmt pci_rdmreserve
gfx_passthru rdm rdm_mem_boundary ioports iomem irqs max_event_channels max_grant_frames
max_maptrack_frames max_grant_version vnuma numa_placement seclabel init_seclabel
device_model_stubdomain_override device_model_stubdomain_seclabel device_model_version
device_model_override device_model_args device_model_args_pv device_model_args_hvm
device_model_user stubdomain_kernel stubdomain_ramdisk stubdomain_cmdline stubdomain_memory
tsc_mode localtime rtc_timeoffset vpmu altp2m nestedhvm hap oos shadow_memory
acpi acpi_s3 acpi_s4 acpi_laptop_slate apic pae hpet viridian timer_mode mmio_hole
firmware bios bios_path_override boot hdtype xen_platform_pci vga videoram stdvga
vnc vnclisten vncdisplay vncunused vncpasswd keymap sdl opengl serial soundhw
usb usbdevice usbversion vendor_device smbios_firmware acpi_firmware
spice spicehost spiceport spicetls_port spicedisable_ticketing spicepasswd
spiceagent_mouse spicevdagent spice_clipboard_sharing spiceusbredirection spice_image_compression
spice_streaming_video nomigrate suppress_vmdesc claim_mode dm_restrict
gic_version vuart tee ssid_label xsm_label mca_caps msr_relaxed altp2mhvm
nr_spis llc_colors trap_unmapped_accesses event_channels cpuid vif_rate features
ms_vm_genid serial_port viridian_enlightenments soft_reset blkdev_start
pvshim pvshim_path pvshim_cmdline pvshim_extra nographic nx vpt_align vkb_device
vmtrace_buf_kb xend_suspend_evtchn_compat dtdev
""".split())

# Keys only xm understood; their presence means "convert me" (see xmconvert).
XM_ONLY_KEYS = frozenset(
    "nics dhcp ip netmask gateway hostname interface nfs_server nfs_root restart cpu "
    "vbd vnet vtpm_instance use_tmp_kernel use_tmp_ramdisk bootargs console_autoconnect".split()
)

TYPES = ("pv", "pvh", "hvm")
ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")
# Settings we do not model whose values are one of a few words (xl.cfg(5)): a typo
# there fails only at xl create, on the host, so it is refused here.
XL_CHOICES = {"tsc_mode": ("default", "always_emulate", "native", "native_paravirt")}
_VDEV = re.compile(r"^(xvd[a-z]+|hd[a-z]|sd[a-z]+)([0-9]*)$|^d[0-9]+(p[0-9]+)?$")
_DISK_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
# Legacy (xm/xend) target prefixes: backend type or image format before the path.
_LEGACY_PREFIX = re.compile(r"^(phy|file|tap:aio|tap:qcow2|tap:qcow|tap:vhd|tap2:aio|aio|raw|qcow2|qcow|vhd):")
VIF_KEYS = ("mac", "bridge", "ip", "type", "vifname", "script", "backend", "rate", "model",
            "mtu", "gatewaydev", "devid", "trusted", "untrusted")


def closest(word: str, choices) -> str | None:
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def require_choice(value, choices, what: str, source: str, key: str) -> None:
    """Refuse ``value`` of ``key`` unless it is one of ``choices``, naming the closest."""
    if value in choices:
        return
    guess = closest(str(value), choices)
    raise ProvisionError(f"{source}: {key} '{value}' is {what}" + (f" (did you mean '{guess}'?)" if guess else ""),
                         hint=f"one of {', '.join(choices)}")


def unknown_key_error(key: str, source: str, where: str = "") -> ProvisionError:
    if key in XM_ONLY_KEYS:
        return ProvisionError(
            f"{source}{where}: '{key}' is an xm setting that xl does not know",
            hint=f"convert the file first: python -m provision domain convert {source}",
        )
    guess = closest(key, XL_KEYS)
    return ProvisionError(
        f"{source}{where}: unknown key '{key}'" + (f" (did you mean '{guess}'?)" if guess else ""),
        hint="see xl.cfg(5) for the keys xl understands",
    )


@dataclass
class Disk:
    target: str
    vdev: str
    access: str = "rw"          # "rw" or "ro"
    format: str = "raw"
    devtype: str | None = None  # "cdrom"
    options: tuple[str, ...] = ()  # other xl disk keys/flags, passed through

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    @property
    def spec(self) -> str:
        parts = [f"format={self.format}", f"vdev={self.vdev}", f"access={self.access}"]
        if self.devtype:
            parts.append(f"devtype={self.devtype}")
        parts += list(self.options)
        parts.append(f"target={self.target}")  # last: a target may contain commas
        return ", ".join(parts)


def _access(value: str, spec: str) -> str:
    v = value.strip().lower()
    if v in ("w", "rw", "w!"):
        return "rw"
    if v in ("r", "ro"):
        return "ro"
    raise ProvisionError(f"disk '{spec}': access '{value}' is not r, ro, w or rw")


def _vdev(value: str, spec: str) -> str:
    if not _VDEV.match(value):
        raise ProvisionError(
            f"disk '{spec}': '{value}' is not a virtual device name",
            hint="use xvda, xvda1, xvdb ... (hdX and sdX are accepted too)",
        )
    return value


def legacy_target(target: str) -> tuple[str, str | None]:
    """(path, format) for an xm-style 'phy:hda3' / 'file:/img' / 'tap:qcow2:/img' target."""
    m = _LEGACY_PREFIX.match(target)
    if not m:
        return target, None
    prefix, path = m.group(1), target[m.end():]
    fmt = {"tap:qcow2": "qcow2", "tap:qcow": "qcow", "tap:vhd": "vhd", "qcow2": "qcow2",
           "qcow": "qcow", "vhd": "vhd"}.get(prefix, "raw")
    if prefix == "phy" and not path.startswith("/"):
        path = "/dev/" + path  # xend resolved 'phy:hda3' and 'phy:vg/lv' under /dev
    return path, fmt


def parse_disk(spec: str) -> Disk:
    """Read an xl disk spec (key=value or positional) or an xm 'phy:dev,vdev,w' one."""
    if not isinstance(spec, str) or not spec.strip():
        raise ProvisionError(f"disk '{spec}' is empty", hint="write format=raw, vdev=xvda1, access=rw, target=PATH")
    target = vdev = access = fmt = devtype = None
    positional: list[str] = []
    options: list[str] = []
    rest = spec
    while rest:
        item, sep, rest = rest.partition(",")
        item = item.strip()
        if item.startswith("target="):
            target = (item[len("target="):] + sep + rest).strip()
            break
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            if key == "cdrom":
                devtype = "cdrom"
            elif key in ("discard", "no-discard", "direct-io-safe", "trusted", "untrusted"):
                options.append(key)
            else:
                positional.append(key)
            continue
        value = value.strip()
        if key == "vdev":
            vdev = value
        elif key == "access":
            access = value
        elif key == "format":
            fmt = value
        elif key == "devtype":
            devtype = value
        elif key in ("backendtype", "backend", "script", "colo-host", "colo-port",
                     "colo-export", "active-disk", "hidden-disk", "specification", "transport"):
            options.append(f"{key}={value}")
        else:
            raise ProvisionError(f"disk '{spec}': unknown key '{key}'",
                                 hint="xl disk keys: target, format, vdev, access, devtype, backendtype, script")
    if positional:
        # xl's positional order is target, format, vdev, access; xm's was target, vdev, access.
        if target is None:
            target = positional.pop(0)
        if positional and fmt is None and positional[0] in _DISK_FORMATS:
            fmt = positional.pop(0)
        for p in positional:
            if vdev is None:
                vdev = p
            elif access is None:
                access = p
            else:
                raise ProvisionError(f"disk '{spec}': too many positional values")
    if not target:
        raise ProvisionError(f"disk '{spec}' has no target", hint="add target=PATH (last)")
    if not vdev:
        raise ProvisionError(f"disk '{spec}' has no vdev", hint="add vdev=xvda1")
    path, legacy_fmt = legacy_target(target)
    fmt = (fmt or legacy_fmt or "raw").lower()
    if fmt not in _DISK_FORMATS:
        raise ProvisionError(f"disk '{spec}': format '{fmt}' is not one of {', '.join(_DISK_FORMATS)}")
    return Disk(
        target=path,
        vdev=_vdev(vdev, spec),
        access=_access(access or "rw", spec),
        format=fmt,
        devtype=devtype,
        options=tuple(options),
    )


@dataclass
class Vif:
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def mac(self) -> str | None:
        return self.settings.get("mac")

    @property
    def spec(self) -> str:
        # mac first, then the rest in a fixed order: the same vif always reads the same.
        keys = sorted(self.settings, key=lambda k: (VIF_KEYS.index(k) if k in VIF_KEYS else 99, k))
        return ", ".join(f"{k}={self.settings[k]}" for k in keys)


def parse_vif(spec: str) -> Vif:
    if not isinstance(spec, str):
        raise ProvisionError(f"vif {spec!r} is not a string", hint="write 'mac=00:16:3e:..., bridge=xenbr0'")
    settings: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise ProvisionError(f"vif '{spec}': '{item}' is not key=value")
        if key not in VIF_KEYS:
            guess = closest(key, VIF_KEYS)
            raise ProvisionError(f"vif '{spec}': unknown key '{key}'" + (f" (did you mean '{guess}'?)" if guess else ""))
        if key == "mac":
            value = validate.mac(value)
        elif key == "ip":
            value = " ".join(validate.interface(a).with_prefixlen if "/" in a else validate.ip(a)
                             for a in value.split())
        elif key == "vifname":
            value = validate.name(value, "vifname", max_len=15)
        settings[key] = value
    return Vif(settings)


def _int(value, key: str, source: str, minimum: int = 1, maximum: int | None = None,
         why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ProvisionError(f"{source}: '{key}' must be a number, not a list")
    if isinstance(value, str) and not re.fullmatch(r"\s*[0-9]+\s*", value):
        raise ProvisionError(f"{source}: {key} '{shorten(value)}' is not a number")
    # A 400-digit number is not worth converting: it is beyond every limit.
    n = int(value) if len(str(value).strip()) <= 30 else 10**30
    if n < minimum:
        raise ProvisionError(f"{source}: {key} {n} is too small (at least {minimum})")
    if maximum is not None and n > maximum:
        raise ProvisionError(f"{source}: {key} {shorten(value)} is too large: {why or f'at most {maximum}'}")
    return n


def _memory(value, key: str, source: str) -> int:
    """MiB. xl wants a bare number; '512M' or '2G' are accepted and converted. Below
    16 TiB, the most Xen gives a domain."""
    limit = xenlimits.GUEST_MEMORY // MiB - 1
    why = f"Xen gives a domain less than {format_size(xenlimits.GUEST_MEMORY)} (its SUPPORT.md)"
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*[KkMmGgTtPp]i?[Bb]?\s*", value):
        size = parse_size(value, what=f"{source}: {key}", maximum=1 << 128)  # refused below, naming Xen
        if size >= xenlimits.GUEST_MEMORY:
            raise ProvisionError(f"{source}: {key} '{shorten(value)}' is too large: {why}")
        if size % MiB:
            raise ProvisionError(f"{source}: {key} '{value}' is not a whole number of MiB")
        return _int(size // MiB, key, source, minimum=16)
    return _int(value, key, source, minimum=16, maximum=limit, why=f"{why}; memory is in MiB")


def _string(value, key: str, source: str) -> str:
    if isinstance(value, list):
        raise ProvisionError(f"{source}: '{key}' must be a string, not a list")
    return str(value)


def _list(value, key: str, source: str) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value == "":
        return []
    raise ProvisionError(f"{source}: '{key}' must be a list such as [ '...' ]")


MODELLED = ("name", "type", "builder", "memory", "maxmem", "vcpus", "kernel", "ramdisk", "root",
            "extra", "cmdline", "bootloader", "bootloader_args", "disk", "vif",
            "on_poweroff", "on_reboot", "on_crash")


@dataclass
class Domain:
    name: str
    memory: int
    type: str = "pv"
    maxmem: int | None = None
    vcpus: int = 1
    kernel: str | None = None
    ramdisk: str | None = None
    root: str | None = None
    extra: str | None = None
    cmdline: str | None = None
    bootloader: str | None = None
    bootloader_args: list | None = None
    disks: list[Disk] = field(default_factory=list)
    vifs: list[Vif] = field(default_factory=list)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    other: dict[str, object] = field(default_factory=dict)
    # Why ``type`` is what it is: a comment in the written config, not a setting.
    type_reason: str | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, values: dict, source: str = "<config>", lines: dict | None = None) -> Domain:
        lines = lines or {}
        for key in values:
            if key not in XL_KEYS:
                where = f":{lines[key]}" if key in lines else ""
                raise unknown_key_error(key, source, where)
        if "name" not in values:
            raise ProvisionError(f"{source}: no 'name'", hint="add name = \"NAME\" or pass name=NAME")
        name = validate.name(_string(values["name"], "name", source), "domain name")
        if "memory" not in values:
            raise ProvisionError(f"{source}: no 'memory'", hint="add memory = 512 (MiB) or pass memory=512")
        dtype = _string(values.get("type", "hvm" if values.get("builder") == "hvm" else "pv"), "type", source)
        if dtype not in TYPES:
            raise ProvisionError(f"{source}: type '{dtype}' is not one of {', '.join(TYPES)}")
        dom = cls(name=name, memory=_memory(values["memory"], "memory", source), type=dtype)
        if "maxmem" in values:
            dom.maxmem = _memory(values["maxmem"], "maxmem", source)
            if dom.maxmem < dom.memory:
                raise ProvisionError(f"{source}: maxmem {dom.maxmem} is below memory {dom.memory}")
        if "vcpus" in values:
            most = xenlimits.max_vcpus(dtype)
            dom.vcpus = _int(values["vcpus"], "vcpus", source, maximum=most,
                             why=f"Xen gives a {dtype.upper()} domain at most {most} vCPUs")
        for key in ("kernel", "ramdisk", "root", "extra", "cmdline", "bootloader"):
            if key in values and values[key] != "":
                setattr(dom, key, _string(values[key], key, source))
        if "bootloader_args" in values:
            args = values["bootloader_args"]
            dom.bootloader_args = args if isinstance(args, list) else [str(args)]
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            if key in values:
                action = _string(values[key], key, source)
                require_choice(action, ACTIONS, "not an action", source, key)
                setattr(dom, key, action)
        dom.disks = [parse_disk(s) for s in _list(values.get("disk", []), "disk", source)]
        dom.vifs = [parse_vif(s) for s in _list(values.get("vif", []), "vif", source)]
        vdevs = [d.vdev for d in dom.disks]
        for v in vdevs:
            if vdevs.count(v) > 1:
                raise ProvisionError(f"{source}: vdev '{v}' is used by two disks")
        if dom.type in ("pv", "pvh") and not (dom.kernel or dom.bootloader):
            raise ProvisionError(f"{source}: a {dom.type.upper()} domain needs a kernel or a bootloader",
                                 hint="set kernel = \"/boot/vmlinuz-...\", or boot the guest's own kernel: "
                                      "domain create --bootloader pvgrub")
        dom.other = {k: v for k, v in values.items() if k not in MODELLED}
        for key, choices in XL_CHOICES.items():
            value = dom.other.get(key)
            # xl still takes the old numbers 0-3 for these (deprecated), so they pass.
            if value is None or (isinstance(value, int) and 0 <= value < len(choices)):
                continue
            require_choice(value, choices, "not one of xl's values", source, key)
        return dom

    def macs(self) -> list[str]:
        return [v.mac for v in self.vifs if v.mac]
