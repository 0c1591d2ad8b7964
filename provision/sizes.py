"""Sizes for images, partitions and volumes, parsed in one place.

Accepted: ``2G``, ``2GiB``, ``2048M``, ``512MiB``, ``1.5G``, ``100K``, ``1T``, ``4096B``;
a bare number means MiB (the manual's ``lvcreate -L4096M`` habit). Binary units
throughout: ``G`` and ``GiB`` both mean 2**30. ``GB``/``MB`` are decimal.
"""

from __future__ import annotations

import re

from provision.errors import ProvisionError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_UNITS = {
    "": MiB,
    "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": TiB, "tib": TiB, "tb": 1000**4,
}
_BINARY = (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))  # largest first, for output
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, what: str = "size", minimum: int = 1) -> int:
    """Bytes for ``text``; a bad size is a ProvisionError naming ``what`` and the forms accepted."""
    if isinstance(text, int):
        value = text
    else:
        m = _RE.match(str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ProvisionError(
                f"{what} '{text}' is not a size",
                hint="use a number with K, M, G or T (binary units), e.g. 2G, 512MiB; a bare number means MiB",
            )
        value = int(float(m.group(1)) * _UNITS[unit])
    if value < minimum:
        raise ProvisionError(f"{what} '{text}' is too small: it must be at least {format_size(minimum)}")
    return value


def format_size(n: int) -> str:
    """The shortest exact binary form: 2147483648 -> '2GiB', 1536 MiB -> '1536MiB'."""
    for unit, factor in _BINARY:
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def format_approx(n: int) -> str:
    """A measured amount to one decimal, for messages: 67963592704 -> '63.3GiB'."""
    for unit, factor in _BINARY:
        if n >= factor:
            return f"{n / factor:.1f}".removesuffix(".0") + unit
    return f"{n}B"
