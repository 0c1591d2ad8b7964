"""``base = "debian"``: the kernel configuration Debian builds from the same source.

Our Linux source is Debian's ``linux`` source package, unpacked with its ``debian/``
directory. Debian does not ship a finished .config in it: ``debian/rules`` makes one per
architecture, featureset and flavour by merging the files of ``debian/config`` in order
(``debian/bin/kconfig.py``: later files win, then ``-o NAME=VALUE`` overrides), and runs
olddefconfig on the result. The file list and the overrides of each flavour are in the
generated ``debian/rules.gen`` that the source package ships, in the rule for
``debian/build/config.<arch>_<featureset>_<flavour>``; we read them from there and merge
the same files the same way (:func:`provision.build.kconfig.merge`, which is what
Debian's KconfigFile does), so the base follows whatever the source version says.

Why this and not ``/boot/config-*`` from the matching ``linux-image-*-amd64`` package:
the source tree we build is already here, verified against its .dsc and in the build's
cache key, so the base needs no second download, no binary package matching and no
network at configure time; and it is by construction the config of *this* source
version (a binary package of another version, or a security update whose ABI name moved,
would be a silent mismatch). Checked for 6.1.176-1: after olddefconfig it differs from
linux-image-6.1.0-50-amd64's /boot/config-6.1.0-50-amd64 in 5 of its 8,776 settings, all
outside Kconfig's choices: BUILD_SALT, CC_VERSION_TEXT (gcc vs gcc-12) and the module
signing key settings Debian's own build fills in (buildconfigs/linux-xen0-hw.config
switches signing off).

Only amd64, featureset "none", flavour "amd64" (Debian's generic x86-64 kernel) is used:
that is the only architecture we build for.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from provision.build import kconfig
from provision.errors import ProvisionError

ARCH, FEATURESET, FLAVOUR = "amd64", "none", "amd64"
RULES = "debian/rules.gen"


def setup_variables(tree: Path, arch: str = ARCH, featureset: str = FEATURESET,
                    flavour: str = FLAVOUR) -> dict[str, str]:
    """The make variables ``debian/rules.gen`` passes to ``rules.real`` when it makes the
    config of ``arch``/``featureset``/``flavour`` (KCONFIG, KCONFIG_OPTIONS, ABINAME...)."""
    rules = tree / RULES
    if not rules.is_file():
        raise ProvisionError(f"base = \"debian\": {rules} does not exist",
                             hint="the [linux] source must be Debian's linux source package "
                                  "(source = { kind = \"debian\", package = \"linux\" })")
    target = f"debian/build/config.{arch}_{featureset}_{flavour}"
    lines = rules.read_text().splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == f"{target}:":
            words = shlex.split(lines[i + 1])
            return dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    raise ProvisionError(f"base = \"debian\": {rules} has no rule for {target}",
                         hint="is this Debian's linux source package for amd64?")


def overrides(options: str) -> dict[str, str]:
    """``-o NAME=VALUE`` pairs of KCONFIG_OPTIONS, as debian/bin/kconfig.py reads them."""
    words = shlex.split(options)
    result: dict[str, str] = {}
    for flag, value in zip(words[::2], words[1::2], strict=False):
        m = re.match(r"^\s*(\S+)=(\S+)\s*$", value)
        if flag != "-o" or not m:
            raise ProvisionError(f"{RULES}: cannot read KCONFIG_OPTIONS {options!r}")
        result[m.group(1)] = m.group(2)
    return result


def config(tree: Path) -> dict[str, str]:
    """Debian's merged config for the generic amd64 kernel of ``tree`` (before olddefconfig)."""
    variables = setup_variables(tree)
    files = variables.get("KCONFIG", "").split()
    if not files:
        raise ProvisionError(f"{tree / RULES}: the amd64 config rule names no KCONFIG files")
    merged: dict[str, str] = {}
    for rel in files:
        merged = kconfig.merge(merged, kconfig.parse_file(tree / rel, rel))
    options = overrides(variables.get("KCONFIG_OPTIONS", ""))
    return kconfig.merge(merged, kconfig.parse(kconfig.render(options), f"{RULES} KCONFIG_OPTIONS"))


def abiname(tree: Path) -> str:
    """Debian's ABI name of this source ("6.1.0-50"): its image is linux-image-<abi>-amd64."""
    abi = setup_variables(tree).get("ABINAME")
    if not abi:
        raise ProvisionError(f"{tree / RULES}: the amd64 config rule has no ABINAME")
    return abi
