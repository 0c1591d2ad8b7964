"""xl's global settings in /etc/xen/xl.conf: the defaults a vif gets when its config says
nothing (``vif.default.bridge``, ``vif.default.script``, ``vif.default.gatewaydev``).

Only the keys we set are touched: an uncommented line for the key is replaced in place,
otherwise one is appended after a comment; every other byte stays as it was.
"""

from __future__ import annotations

import re
from pathlib import Path

from provision.fsutil import within

XL_CONF = "/etc/xen/xl.conf"
XL_DEFAULT_BRIDGE = "xenbr0"        # libxl's own default when xl.conf names none
_LINE = re.compile(r'^\s*([A-Za-z0-9_.]+)\s*=\s*(?:"([^"]*)"|\'([^\']*)\'|(\S+))\s*(?:#.*)?$')


def read(root: Path) -> dict[str, str]:
    """The string settings of the root's xl.conf (the last line of a key wins, as in xl)."""
    try:
        text = within(root, XL_CONF, follow=True).read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return {}
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = next(g for g in m.groups()[1:] if g is not None)
    return out


def with_settings(text: str | None, settings: dict[str, str | None], why: str) -> str:
    """``text`` (xl.conf, or None) with ``settings`` set; a None value removes the key's line."""
    lines = (text or "").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    commented = False
    for key, value in settings.items():
        rendered = None if value is None else f'{key}="{value}"'
        hits = [i for i, line in enumerate(lines) if (m := _LINE.match(line)) and m.group(1) == key]
        if hits:
            for i in reversed(hits[1:]):
                del lines[i]
            if rendered is None:
                del lines[hits[0]]
            else:
                lines[hits[0]] = rendered
        elif rendered is not None:
            if not commented:
                lines.append(f"# {why}")
                commented = True
            lines.append(rendered)
    return "\n".join(lines) + "\n"
