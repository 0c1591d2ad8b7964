"""Reproducible builds: what is pinned so that the same inputs give the same bytes, and
the comparison of two staged trees.

    epoch = source_date_epoch(source)         # the last debian/changelog entry's date
    env = xen_env(epoch)                      # XEN_BUILD_DATE/TIME/HOST, XEN_WHOAMI, ...
    env = linux_env(epoch)                    # KBUILD_BUILD_TIMESTAMP/USER/HOST/VERSION
    flags = prefix_map({tree: "/usr/src/xen", work: "/usr/src/xen-build"}) + " " + macro_map(tree)
    difference = compare(old["files"], new["files"])   # None, or the first file that differs

What leaks into a build otherwise: the date and time (Xen's ``xen -V`` banner, Linux's
``uname -v``), the user and host names, Linux's build counter (``#2`` on a rebuild in
the same work tree), and the absolute paths of the source and work trees (``__FILE__``
in assertions, debug information), which differ between two caches. The paths are
mapped to fixed names with ``-fdebug-prefix-map`` and ``__FILE__`` made relative with
``-fmacro-prefix-map`` (kbuild does that one itself); they are not part of the pinned
settings that go into cache keys, because they differ per cache by design.
"""

from __future__ import annotations

import datetime
import email.utils
import os
from dataclasses import dataclass
from pathlib import Path

from provision.build.sources import Source
from provision.errors import ProvisionError

# The name builds carry instead of the build machine's user, host and domain.
NAME = "xen-provision"


def source_date_epoch(source: Source) -> int:
    """SOURCE_DATE_EPOCH for a build from ``source``: the date of the newest entry of the
    tree's ``debian/changelog`` (what dpkg-buildpackage exports), else $SOURCE_DATE_EPOCH,
    else the mtime of the tree's top Makefile (an upstream tarball's release time)."""
    changelog = source.tree / "debian" / "changelog"
    if changelog.is_file():
        return changelog_epoch(changelog)
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if value.isdigit():
        return int(value)
    return int((source.tree / "Makefile").stat().st_mtime)


def changelog_epoch(path: Path) -> int:
    """The date of the first (newest) entry of a Debian changelog, in seconds since 1970,
    as ``dpkg-parsechangelog -STimestamp`` prints it."""
    from debian.changelog import Changelog

    with open(path, encoding="utf-8", errors="replace") as f:
        date = Changelog(f, max_blocks=1, strict=False).date
    try:
        return int(email.utils.parsedate_to_datetime(date).timestamp())
    except (TypeError, ValueError):
        raise ProvisionError(f"{path}: the newest entry has no valid date ({date!r})",
                             hint="the trailer line must read ' -- Name <mail>  Day, DD Mon YYYY HH:MM:SS +ZZZZ'") from None


def _utc(epoch: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC)


def xen_env(epoch: int) -> dict[str, str]:
    """Xen's build identity (xen/Makefile reads these when set): what ``xl info`` and the
    boot banner show, in the format Xen's own ``LC_ALL=C date`` would give."""
    when = _utc(epoch)
    return {
        "SOURCE_DATE_EPOCH": str(epoch),
        "XEN_BUILD_DATE": when.strftime("%a %b %e %H:%M:%S UTC %Y"),
        "XEN_BUILD_TIME": when.strftime("%H:%M:%S"),
        "XEN_BUILD_HOST": NAME,
        "XEN_WHOAMI": NAME,
        "XEN_DOMAIN": NAME,
    }


def linux_env(epoch: int) -> dict[str, str]:
    """Kbuild's build identity (``uname -v``: ``#1 SMP <timestamp>``) and user@host."""
    return {
        "SOURCE_DATE_EPOCH": str(epoch),
        "KBUILD_BUILD_TIMESTAMP": _utc(epoch).strftime("%a %b %e %H:%M:%S UTC %Y"),
        "KBUILD_BUILD_USER": NAME,
        "KBUILD_BUILD_HOST": NAME,
        "KBUILD_BUILD_VERSION": "1",
    }


def prefix_map(paths: dict[Path, str]) -> str:
    """Compiler flags that write each absolute path of ``paths`` as its fixed name in
    debug information (gcc -fdebug-prefix-map). ``__FILE__`` is :func:`macro_map`'s."""
    return " ".join(f"-fdebug-prefix-map={Path(p)}={name}" for p, name in paths.items())


def macro_map(tree: Path) -> str:
    """Compiler flags that make ``__FILE__`` of a file in ``tree`` relative to it, as
    kbuild does for Linux. ``-idirafter tree`` lets a file that includes itself by
    ``__FILE__`` (Xen's usercopy.c) still find itself, after every other directory."""
    return f"-fmacro-prefix-map={Path(tree)}/= -idirafter {Path(tree)}"


@dataclass(frozen=True)
class Difference:
    """The first file two staged trees disagree on; sha256 is None where it is missing
    (and the link target, prefixed "->", for a symlink)."""

    path: str
    expected: str | None
    actual: str | None

    def describe(self, actual: str = "rebuilt") -> str:
        return f"{self.path} differs: expected {self.expected or 'nothing'}, {actual} {self.actual or 'nothing'}"


def _digest(entry: dict | None) -> str | None:
    if entry is None:
        return None
    if "link" in entry:
        return f"-> {entry['link']}"
    return f"{entry['sha256']} (mode {entry['mode']})"


def compare(expected: dict[str, dict], actual: dict[str, dict], *, subset: bool = False) -> Difference | None:
    """The first path, in sorted order, whose manifest entry (sha256, mode, link target)
    differs between two file tables, or None. With ``subset``, only the paths of
    ``actual`` are compared (a rebuild of some parts against the whole tree)."""
    paths = sorted(actual) if subset else sorted(set(expected) | set(actual))
    for path in paths:
        a, b = expected.get(path), actual.get(path)
        if _digest(a) != _digest(b):
            return Difference(path, _digest(a), _digest(b))
    return None
