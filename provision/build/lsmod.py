"""lsmod files: the modules a target machine has loaded, for ``make localmodconfig``.

An administrator runs ``lsmod > host.lsmod`` on the server and gives the file to the
build (``lsmod = "FILE"`` in a recipe, or ``doit world lsmod=FILE``). The kernel's own
``make LSMOD=FILE localmodconfig`` (scripts/kconfig/streamline_config.pl) does the
trimming; here we only make sure the file is lsmod output, so that a wrong file (a
.config, a list of names, a binary) is one clear error instead of a kernel with no
drivers.
"""

from __future__ import annotations

import re
from pathlib import Path

from provision.errors import ProvisionError

HEADER = re.compile(r"^Module\s+Size\s+Used\s+by\s*$")
# name, size, use count, then optionally the modules using it ("a,b,c" or "[permanent]"/"-").
ROW = re.compile(r"^[A-Za-z0-9_-]+\s+[0-9]+\s+(?:-|[0-9]+)(?:\s+\S+)?\s*$")
HINT = "give the output of `lsmod` on the target machine: lsmod > host.lsmod"


def validate(text: str, what: str) -> list[str]:
    """The module names of an lsmod output ``text``; anything else is an error naming
    ``what`` and its first bad line."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not HEADER.match(lines[0]):
        first = lines[0][:60] if lines else "an empty file"
        raise ProvisionError(f"{what} is not lsmod output: its first line is not "
                             f"'Module  Size  Used by' but {first!r}", hint=HINT)
    if len(lines) == 1:
        raise ProvisionError(f"{what} is lsmod output with no modules: nothing would be kept", hint=HINT)
    names = []
    for number, line in enumerate(lines[1:], 2):
        if not ROW.match(line):
            raise ProvisionError(f"{what}:{number}: not an lsmod row (name size used-by): {line[:60]!r}",
                                 hint=HINT)
        names.append(line.split()[0])
    return names


def read(path: Path) -> str:
    """The text of the lsmod file ``path``, validated."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProvisionError(f"lsmod file {path} does not exist", hint=HINT) from None
    except IsADirectoryError:
        raise ProvisionError(f"lsmod file {path} is a directory", hint=HINT) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ProvisionError(f"{path} is not lsmod output (not text)", hint=HINT) from None
    validate(text, str(path))
    return text
