"""Before a build or staging: are the compilers, tools and headers there? One line if not.

Checked only when something is about to be built or staged, so a no-op ``doit world`` costs
nothing. A build checks staging's tools too: better to stop before compiling than after.
"""

from __future__ import annotations

from pathlib import Path

from provision.errors import ProvisionError
from provision.run import which

# tool -> Debian package
HYPERVISOR_TOOLS = {
    "gcc": "gcc", "make": "make", "ld": "binutils", "objcopy": "binutils", "python3": "python3",
    "gzip": "gzip", "flex": "flex", "bison": "bison",
}
LINUX_TOOLS = {
    "gcc": "gcc", "make": "make", "ld": "binutils", "flex": "flex", "bison": "bison", "bc": "bc",
    "perl": "perl-base", "xz": "xz-utils", "cpio": "cpio", "lz4": "lz4",
}
LINUX_HEADERS = {"gelf.h": "libelf-dev", "openssl/ssl.h": "libssl-dev"}
XEN_TOOLS_TOOLS = {
    "gcc": "gcc", "make": "make", "autoconf": "autoconf", "pkg-config": "pkg-config",
    "python3": "python3", "perl": "perl-base", "iasl": "acpica-tools", "bison": "bison", "flex": "flex",
}
XEN_TOOLS_HEADERS = {
    "uuid/uuid.h": "uuid-dev", "yajl/yajl_version.h": "libyajl-dev", "zlib.h": "zlib1g-dev",
    "lzma.h": "liblzma-dev", "bzlib.h": "libbz2-dev", "zstd.h": "libzstd-dev",
    "ncurses.h": "libncurses-dev", "libnl3/netlink/netlink.h": "libnl-3-dev",
    "libnl3/netlink/route/link.h": "libnl-route-3-dev", "systemd/sd-daemon.h": "libsystemd-dev",
}
# Staging indexes lib/modules/<release> like make modules_install does.
STAGE_TOOLS = {"depmod": "kmod"}
INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu"), Path("/usr/local/include"))


def _have_header(name: str) -> bool:
    return any((d / name).exists() for d in INCLUDE_DIRS)


def missing(tools: dict[str, str], headers: dict[str, str]) -> dict[str, str]:
    """What is absent -> the Debian package that provides it."""
    gone = {t: p for t, p in tools.items() if which(t) is None}
    gone.update({h: p for h, p in headers.items() if not _have_header(h)})
    return gone


def check(*, hypervisor: bool = False, linux: bool = False, xen_tools: bool = False,
          staging: bool = False) -> None:
    tools: dict[str, str] = {}
    headers: dict[str, str] = {}
    if staging:
        tools.update(STAGE_TOOLS)
    if hypervisor:
        tools.update(HYPERVISOR_TOOLS)
    if linux:
        tools.update(LINUX_TOOLS)
        headers.update(LINUX_HEADERS)
    if xen_tools:
        tools.update(XEN_TOOLS_TOOLS)
        headers.update(XEN_TOOLS_HEADERS)
    gone = missing(tools, headers)
    if xen_tools:
        # The tools' Python parts are built for the system's python3, not a virtualenv's.
        if not any(Path("/usr/include").glob("python3*/Python.h")):
            gone["Python.h"] = "python3-dev"
    if gone:
        pkgs = sorted(set(gone.values()))
        raise ProvisionError(
            f"missing build dependencies: {', '.join(sorted(gone))}; install the Debian packages: "
            f"{' '.join(pkgs)}",
            hint=f"apt-get install {' '.join(pkgs)}   (./setup-host installs everything)",
        )
