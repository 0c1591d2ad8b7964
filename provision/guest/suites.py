"""The release table: every Debian and Ubuntu suite debootstrap knows, and how to treat it.

Update it here when a release ships or moves to the archive: flip ``status`` to
"archived" and the mirror, keyring and apt settings follow. One row per release:

- ``status``: "current" (on the live mirror) or "archived" (archive.debian.org,
  old-releases.ubuntu.com, signed with keys that are no longer in the live keyring).
- ``init``: what runs as PID 1, so the hvc0 getty goes in the right place.
- ``network``: "ifupdown" (``/etc/network/interfaces``, NIC named eth0: the guest's
  udev is too old to rename the Xen NIC) or "networkd" (a systemd-networkd match on the
  name patterns of the Xen NIC: ``enX0`` with systemd >= 251, ``eth0`` before).
- ``old_glibc``: binaries use the legacy vsyscall page, so the domain's kernel needs
  ``vsyscall=emulate`` (the modern counterpart of the manual's TLS warning).
- ``arch``: the default architecture when not the host's (sarge's archive has no amd64).
- ``boot``: packages a minimal variant lacks but a booting domain needs (init, network).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from provision.errors import ProvisionError


@dataclass(frozen=True)
class Release:
    name: str
    distro: str  # "debian" | "ubuntu"
    version: str
    status: str  # "current" | "archived"
    init: str  # "sysvinit" | "upstart" | "systemd"
    network: str  # "ifupdown" | "networkd"
    old_glibc: bool = False
    arch: str | None = None
    boot: tuple[str, ...] = ()
    mmdebstrap: bool = True  # mmdebstrap can drive this release's dpkg/apt

    @property
    def archived(self) -> bool:
        return self.status == "archived"

    @property
    def kernel_args(self) -> tuple[str, ...]:
        return ("vsyscall=emulate",) if self.old_glibc else ()

    def __str__(self) -> str:
        return f"{self.distro.capitalize()} {self.version} ({self.name})"


_SYSV_OLD = ("ifupdown",)
_IFUP = ("ifupdown", "isc-dhcp-client")
_SYSTEMD_IFUP = ("systemd-sysv", "udev", "ifupdown", "isc-dhcp-client")
_SYSTEMD_NET = ("systemd-sysv", "udev", "iproute2")   # ip: what every administrator reaches for


def _debian(name, version, status, init, network, old_glibc=False, arch=None, boot=(), mm=True):
    return Release(name, "debian", version, status, init, network, old_glibc, arch, boot, mm)


def _ubuntu(name, version, status, init, network, old_glibc=False, boot=(), mm=True):
    return Release(name, "ubuntu", version, status, init, network, old_glibc, None, boot, mm)


RELEASES: tuple[Release, ...] = (
    # Debian. mmdebstrap drives jessie and later (jessie with its own hook); older ones need debootstrap.
    _debian("potato", "2.2", "archived", "sysvinit", "ifupdown", True, "i386", ("ifupdown", "pump"), False),
    _debian("woody", "3.0", "archived", "sysvinit", "ifupdown", True, "i386", ("ifupdown", "pump"), False),
    _debian("sarge", "3.1", "archived", "sysvinit", "ifupdown", True, "i386", ("ifupdown", "dhcp-client"), False),
    _debian("etch", "4.0", "archived", "sysvinit", "ifupdown", True, None, ("ifupdown", "dhcp3-client"), False),
    _debian("lenny", "5.0", "archived", "sysvinit", "ifupdown", True, None, ("ifupdown", "dhcp3-client"), False),
    _debian("squeeze", "6.0", "archived", "sysvinit", "ifupdown", True, None, _IFUP, False),
    _debian("wheezy", "7", "archived", "sysvinit", "ifupdown", False, None, _IFUP, False),
    _debian("jessie", "8", "archived", "systemd", "ifupdown", False, None, _SYSTEMD_IFUP),
    _debian("stretch", "9", "archived", "systemd", "ifupdown", False, None, _SYSTEMD_IFUP),
    _debian("buster", "10", "archived", "systemd", "networkd", False, None, _SYSTEMD_NET),
    _debian("bullseye", "11", "current", "systemd", "networkd", False, None, _SYSTEMD_NET),
    _debian("bookworm", "12", "current", "systemd", "networkd", False, None, _SYSTEMD_NET),
    _debian("trixie", "13", "current", "systemd", "networkd", False, None, _SYSTEMD_NET),
    _debian("forky", "14", "current", "systemd", "networkd", False, None, _SYSTEMD_NET),
    _debian("sid", "unstable", "current", "systemd", "networkd", False, None, _SYSTEMD_NET),
    # Ubuntu. LTS releases stay on the live mirror through ESM; the rest move to old-releases.
    _ubuntu("warty", "4.10", "archived", "sysvinit", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("hoary", "5.04", "archived", "sysvinit", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("breezy", "5.10", "archived", "sysvinit", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("dapper", "6.06", "archived", "sysvinit", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("edgy", "6.10", "archived", "upstart", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("feisty", "7.04", "archived", "upstart", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("gutsy", "7.10", "archived", "upstart", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("hardy", "8.04", "archived", "upstart", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("intrepid", "8.10", "archived", "upstart", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("jaunty", "9.04", "archived", "upstart", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("karmic", "9.10", "archived", "upstart", "ifupdown", True, _SYSV_OLD, False),
    _ubuntu("lucid", "10.04", "archived", "upstart", "ifupdown", True, _IFUP, False),
    _ubuntu("maverick", "10.10", "archived", "upstart", "ifupdown", True, _IFUP, False),
    _ubuntu("natty", "11.04", "archived", "upstart", "ifupdown", True, _IFUP, False),
    _ubuntu("oneiric", "11.10", "archived", "upstart", "ifupdown", False, _IFUP, False),
    _ubuntu("precise", "12.04", "archived", "upstart", "ifupdown", False, _IFUP, False),
    _ubuntu("quantal", "12.10", "archived", "upstart", "ifupdown", False, _IFUP, False),
    _ubuntu("raring", "13.04", "archived", "upstart", "ifupdown", False, _IFUP, False),
    _ubuntu("saucy", "13.10", "archived", "upstart", "ifupdown", False, _IFUP, False),
    _ubuntu("trusty", "14.04", "current", "upstart", "ifupdown", False, _IFUP, False),
    _ubuntu("utopic", "14.10", "archived", "upstart", "ifupdown", False, _IFUP, False),
    _ubuntu("vivid", "15.04", "archived", "systemd", "ifupdown", False, _SYSTEMD_IFUP, False),
    _ubuntu("wily", "15.10", "archived", "systemd", "ifupdown", False, _SYSTEMD_IFUP, False),
    _ubuntu("xenial", "16.04", "current", "systemd", "ifupdown", False, _SYSTEMD_IFUP),
    _ubuntu("yakkety", "16.10", "archived", "systemd", "ifupdown", False, _SYSTEMD_IFUP),
    _ubuntu("zesty", "17.04", "archived", "systemd", "ifupdown", False, _SYSTEMD_IFUP),
    _ubuntu("artful", "17.10", "archived", "systemd", "ifupdown", False, _SYSTEMD_IFUP),
    _ubuntu("bionic", "18.04", "current", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("cosmic", "18.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("disco", "19.04", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("eoan", "19.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("focal", "20.04", "current", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("groovy", "20.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("hirsute", "21.04", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("impish", "21.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("jammy", "22.04", "current", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("kinetic", "22.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("lunar", "23.04", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("mantic", "23.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("noble", "24.04", "current", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("oracular", "24.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("plucky", "25.04", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("questing", "25.10", "archived", "systemd", "networkd", False, _SYSTEMD_NET),
    _ubuntu("resolute", "26.04", "current", "systemd", "networkd", False, _SYSTEMD_NET),
)

# Debian's moving names, resolved to the release they name today.
ALIASES = {
    "unstable": "sid",
    "testing": "forky",
    "stable": "trixie",
    "oldstable": "bookworm",
    "oldoldstable": "bullseye",
}

_BY_NAME = {r.name: r for r in RELEASES}


def lookup(suite: str) -> Release:
    """The release called ``suite`` (or an alias); an unknown name lists close matches."""
    key = (suite or "").strip().lower()
    key = ALIASES.get(key, key)
    if key in _BY_NAME:
        return _BY_NAME[key]
    close = difflib.get_close_matches(key, [*_BY_NAME, *ALIASES], n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}?" if close else
            "known suites: " + ", ".join(r.name for r in RELEASES))
    raise ProvisionError(f"unknown suite '{suite}'", hint=hint)


def names(distro: str | None = None) -> list[str]:
    return [r.name for r in RELEASES if distro in (None, r.distro)]


@dataclass(frozen=True)
class GuestKernel:
    """The distribution's own kernel for a guest that boots it with pvgrub2."""

    package: str
    pvh: bool        # Linux >= 4.11 boots as a PVH guest; older ones only as PV


def guest_kernel(release: Release, arch: str) -> GuestKernel:
    """The kernel package ``image --guest-kernel`` installs for ``release`` on ``arch``;
    refused, naming why, where the distribution's kernel cannot run as a Xen guest."""
    if arch not in ("amd64", "i386"):
        raise ProvisionError(f"--guest-kernel knows the kernels of amd64 and i386, not {arch}")
    flavour = "amd64" if arch == "amd64" else "686-pae"
    if release.distro == "debian":
        # Xen guest support (pvops domU) is in Debian's standard kernels from 6.0 (2.6.32).
        if _older(release.version, "6.0"):
            raise ProvisionError(f"{release}'s kernel cannot boot as a Xen guest: Debian's standard kernels "
                                 "run on Xen from 6.0 (squeeze) on", hint="use our xenU kernel (domain create "
                                 "--kernel), or --guest-kernel with squeeze or later")
        if release.name == "squeeze":
            return GuestKernel(f"linux-image-2.6-{'amd64' if arch == 'amd64' else '686-bigmem'}", False)
        # PVH guests from Linux 4.11: buster's 4.19 on.
        return GuestKernel(f"linux-image-{flavour}", not _older(release.version, "10"))
    # Ubuntu's -virtual kernels run on Xen from 11.04 (natty, 2.6.38).
    if _older(release.version, "11.04"):
        raise ProvisionError(f"{release}'s kernel cannot boot as a Xen guest: Ubuntu's kernels run on Xen "
                             "from 11.04 (natty) on", hint="use our xenU kernel (domain create --kernel), "
                             "or --guest-kernel with natty or later")
    # PVH guests from Linux 4.11: bionic's 4.15 on.
    return GuestKernel("linux-image-virtual", not _older(release.version, "18.04"))


def _older(version: str, than: str) -> bool:
    """``version`` (a release's number; Debian's "unstable" is newest) before ``than``."""
    if not version[:1].isdigit():
        return False
    return tuple(int(x) for x in version.split(".")) < tuple(int(x) for x in than.split("."))

