"""Sizes for images, partitions and volumes, parsed in one place.

Accepted: ``2G``, ``2GiB``, ``2048M``, ``512MiB``, ``1.5G``, ``100K``, ``1T``, ``4096B``;
a bare number means MiB (the manual's ``lvcreate -L4096M`` habit). Binary units
throughout: ``G`` and ``GiB`` both mean 2**30. ``GB``/``MB`` are decimal. Arithmetic is
exact (no float), and a size beyond what a file offset holds (8 EiB) is refused.
"""

from __future__ import annotations

import re
from decimal import Decimal

from provision.errors import ProvisionError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
PiB = 1024**5
EiB = 1024**6
# The largest size a file, a device or a C off_t holds (truncate, lseek, losetup).
MAX_BYTES = 2**63 - 1

_UNITS = {
    "": MiB,
    "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": TiB, "tib": TiB, "tb": 1000**4,
    "p": PiB, "pib": PiB, "pb": 1000**5,
}
_BINARY = (("EiB", EiB), ("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))  # largest first
_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)


def parse_size(text: str | int, what: str = "size", minimum: int = 1, maximum: int = MAX_BYTES) -> int:
    """Bytes for ``text``; a bad size is a ProvisionError naming ``what`` and the forms accepted."""
    if isinstance(text, int):
        value = text
    else:
        m = _RE.match(str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ProvisionError(
                f"{what} '{shorten(text)}' is not a size",
                hint="use a number with K, M, G, T or P (binary units), e.g. 2G, 512MiB; a bare number means MiB",
            )
        if len(m.group(1)) > 40:  # far beyond any maximum; spare Decimal a 4000-digit number
            value = maximum + 1
        else:
            value = int(Decimal(m.group(1)) * _UNITS[unit])
    if value < minimum:
        raise ProvisionError(f"{what} '{shorten(text)}' is too small: it must be at least {format_size(minimum)}")
    if value > maximum:
        raise ProvisionError(f"{what} '{shorten(text)}' is too large: it can be at most {format_approx(maximum)}")
    return value


def round_up(n: int, unit: int) -> int:
    """``n`` rounded up to a whole number of ``unit``: round_up(1, MiB) -> MiB."""
    return -(-n // unit) * unit


def shorten(text, limit: int = 40) -> str:
    """``text`` for a message: a 400-digit number is named by its start."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
