"""How a guest boots: its type (PV, PVH, HVM), what its kernel can do, and the bootloaders
that run the guest's own kernel (pvgrub2, pygrub).

A kernel tells what it can do in the ``config-<release>`` installed beside it (as Debian
and our own ``doit install`` put them: ``/boot/vmlinuz-R`` and ``/boot/config-R``). PVH,
Xen's recommended mode for Linux guests, is the default for a kernel whose config has
``CONFIG_XEN_PVH=y``; any other kernel gets PV, which every Xen-enabled Linux can boot. The
type is always written with a comment saying why it was chosen: xl's own default, when
``type`` is absent, is PV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from provision import log
from provision.build import kconfig
from provision.domain.paths import Paths
from provision.errors import ProvisionError

# Debian's grub-xen-host: GRUB 2 built as a PV kernel, and as a 32-bit PVH kernel (it
# switches to long mode itself). They read the guest's /boot/grub/grub.cfg, so the guest
# runs and updates its own kernel with nothing done in dom0.
PVGRUB = {
    "pvh": "/usr/lib/grub-xen/grub-i386-xen_pvh.bin",
    "pv": "/usr/lib/grub-xen/grub-x86_64-xen.bin",
}
PVGRUB_PACKAGE = "grub-xen-host"

PYGRUB_RISK = ("pygrub reads the guest's filesystem as root in dom0, so a guest's crafted "
               "filesystem or grub.cfg can attack dom0 (XSA-198, XSA-443); "
               "--bootloader pvgrub runs GRUB inside the guest instead")

# What a kernel needs to be booted each way (options of its config-<release>).
NEEDS = {"pv": ("XEN_PV",), "pvh": ("XEN_PVH",), "hvm": ()}
NFS_ROOT_NEEDS = ("NFS_FS", "ROOT_NFS", "IP_PNP")
NFS_DHCP_NEEDS = ("IP_PNP_DHCP",)

# The names a kernel is installed under, and the release they end with.
_KERNEL_NAME = re.compile(r"^(?:vmlinuz|vmlinux|bzImage|kernel)-(?P<release>.+)$")


@dataclass(frozen=True)
class KernelConfig:
    """The build config of a kernel, read from the ``config-<release>`` beside it."""

    shown: str                  # the path as the guest's host sees it
    values: dict[str, str]

    def lacking(self, options) -> list[str]:
        return [o for o in options if self.values.get(o) != "y"]


def config_path(kernel: str) -> str | None:
    """Where the config of ``kernel`` (a path as the host sees it) is installed, or None
    when its name carries no release (``/boot/vmlinuz-R`` -> ``/boot/config-R``)."""
    path = PurePosixPath(kernel)
    m = _KERNEL_NAME.match(path.name)
    return str(path.with_name(f"config-{m['release']}")) if m else None


def kernel_config(paths: Paths, kernel: str) -> KernelConfig | None:
    """The config beside ``kernel`` in ``paths``' root, or None if there is none."""
    shown = config_path(kernel)
    if shown is None:
        return None
    real = paths.inside(shown)
    try:
        text = real.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as e:
        raise ProvisionError(f"cannot read the kernel's config {real}: {e.strerror}") from None
    return KernelConfig(shown, kconfig.parse(text, str(real)))


@dataclass(frozen=True)
class Choice:
    type: str
    reason: str                 # one line, written as a comment above ``type``


def choose_type(asked: str | None, asked_by: str, kernel: str | None, bootloader: str | None,
                config: KernelConfig | None, own: dict | None = None) -> Choice:
    """The guest's type: the one asked for (by ``asked_by``), else PVH for pvgrub2 and for
    a kernel whose config has CONFIG_XEN_PVH=y, else PV. ``own`` is what an image made with
    --guest-kernel says of the kernel pvgrub2 will boot (its package, and "pvh": whether
    it can run as PVH); such a kernel older than Linux 4.11 is refused as PVH."""
    too_old = own is not None and own.get("pvh") is False
    if asked:
        if too_old and asked == "pvh":
            raise ProvisionError(f"the image's own kernel ({own.get('package')}) cannot boot as PVH (Linux 4.11 "
                                 "and later can)", hint="use --type pv, or an image of a newer suite")
        return Choice(asked, f"{asked.upper()}: as asked by {asked_by}")
    if bootloader == "pvgrub":
        if too_old:
            return Choice("pv", f"PV: the image's own kernel ({own.get('package')}) is older than Linux 4.11, "
                                "which PVH guests need")
        return Choice("pvh", f"PVH: pvgrub2's PVH build boots the guest's own kernel ({PVGRUB_PACKAGE})")
    if bootloader:
        return Choice("pv", f"PV: the kernel {bootloader} finds in the guest is not known here; PV is xl's default")
    if not kernel:
        return Choice("pv", "PV: xl's default")
    if config is None:
        where = config_path(kernel) or f"a config-RELEASE beside {kernel}"
        return Choice("pv", f"PV: no {where} shows that this kernel can boot as PVH")
    if not config.lacking(NEEDS["pvh"]):
        return Choice("pvh", f"PVH: {config.shown} has CONFIG_XEN_PVH=y (Xen's recommended mode for Linux guests)")
    return Choice("pv", f"PV: {config.shown} has no CONFIG_XEN_PVH=y, so this kernel boots only as PV")


def check_kernel(kernel: str, dtype: str, config: KernelConfig | None, nfs_root: bool = False,
                 dhcp: bool = False) -> None:
    """Refuse, in one line naming the missing options, a kernel whose config shows that it
    cannot boot as ``dtype`` (or from an NFS root); a kernel without a config beside it
    is only warned about."""
    ways = {f"as {dtype.upper()}": NEEDS.get(dtype, ())}
    if nfs_root:
        ways["from an NFS root" + (" by DHCP" if dhcp else "")] = NFS_ROOT_NEEDS + (NFS_DHCP_NEEDS if dhcp else ())
    ways = {way: needs for way, needs in ways.items() if needs}
    if not ways:
        return
    if config is None:
        where = config_path(kernel) or f"config-RELEASE beside {kernel}"
        log.warn(f"cannot check that {kernel} boots {' and '.join(ways)}: no {where}")
        return
    lacking = {way: config.lacking(needs) for way, needs in ways.items()}
    lacking = {way: options for way, options in lacking.items() if options}
    if lacking:
        hint = ("doit world builds xenU with them (buildconfigs/mk.linux-6.1-xenU); "
                "or use a kernel that has them")
        if dtype == "pvh" and "XEN_PVH" in lacking.get("as PVH", ()):
            hint += ", or --type pv"
        options = [o for found in lacking.values() for o in found]
        raise ProvisionError(
            f"{kernel} cannot boot {' and '.join(lacking)}: {config.shown} lacks "
            + ", ".join(f"CONFIG_{o}=y" for o in options), hint=hint)


def pvgrub_kernel(paths: Paths, dtype: str, check: bool = True) -> str:
    """The pvgrub2 binary that boots a ``dtype`` guest; it must be installed in the root."""
    if dtype not in PVGRUB:
        raise ProvisionError(f"--bootloader pvgrub boots PV and PVH guests, not {dtype.upper()}",
                             hint="use --type pvh (the default) or --type pv")
    binary = PVGRUB[dtype]
    if check and not paths.inside(binary).is_file():
        raise ProvisionError(f"pvgrub2 for {dtype.upper()} guests, {paths.inside(binary)}, is not installed",
                             hint=f"install it in dom0: apt-get install {PVGRUB_PACKAGE}")
    return binary


def is_pvgrub(kernel: str | None) -> bool:
    return kernel in PVGRUB.values()


def warn_pygrub() -> None:
    log.warn(PYGRUB_RISK)

