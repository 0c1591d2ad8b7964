"""The host's apt configuration, read only, and a private apt beside it under the cache.

:func:`host_apt_entries` takes the Debian-archive ``deb`` entries of /etc/apt (one-line
``sources.list`` files and deb822 ``.sources`` files, the latter parsed by
python-debian); :class:`PrivateApt` turns them into deb-src entries with apt state of
its own, so ``apt-get source`` works without touching the host's files.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from debian.deb822 import Deb822

from provision import log
from provision.build.sources.spec import SourceSpec
from provision.cache import cache_dir, manifest_key
from provision.errors import ProvisionError
from provision.fsutil import Lock, atomic_write, write_if_changed
from provision.run import output, run

APT_ETC = Path("/etc/apt")
# Private apt lists older than this are refreshed before a candidate lookup.
LISTS_MAX_AGE = 24 * 3600


@dataclass(frozen=True)
class AptEntry:
    """One Debian-archive ``deb`` line of the host's configuration, as a deb-src source."""

    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str | None = None  # a keyring path or an inline armoured key block

    def deb822(self) -> str:
        lines = ["Types: deb-src", f"URIs: {self.uri}", f"Suites: {self.suite}"]
        if self.components:
            lines.append(f"Components: {' '.join(self.components)}")
        if self.signed_by:
            key = self.signed_by.splitlines()
            lines.append(f"Signed-By: {key[0]}")
            lines += [f" {k}" if k.strip() else " ." for k in key[1:]]
        return "\n".join(lines) + "\n"


_DEBIAN_PATHS = {"debian", "debian-security", "debian-ports", "debian-archive", "debian-debug"}
_SCHEMES = ("http", "https", "ftp", "file", "mirror", "mirror+http", "mirror+https", "tor+http", "tor+https")


def is_debian_archive(uri: str, signed_by: str | None) -> bool:
    """A Debian archive or a mirror of one: hosted on debian.org, or a mirror path ending in
    /debian or /debian-security; signed (if a keyring is named) by Debian's archive keys."""
    parsed = urlparse(uri)
    if parsed.scheme not in _SCHEMES:
        return False
    if signed_by and "\n" not in signed_by and "debian-archive" not in signed_by:
        return False
    host = (parsed.hostname or "").lower()
    last = parsed.path.rstrip("/").rsplit("/", 1)[-1]
    return host == "debian.org" or host.endswith(".debian.org") or last in _DEBIAN_PATHS


def _one_line_entries(text: str) -> list[tuple[str, str, str, tuple[str, ...], str | None]]:
    """``deb [opts] URI SUITE COMPONENTS...`` lines (python-debian reads only deb822)."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^(\S+)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        kind, opts, uri, suite, comps = m.groups()
        options = dict(o.split("=", 1) for o in (opts or "").split() if "=" in o)
        signed = {k.lower(): v for k, v in options.items()}.get("signed-by")
        entries.append((kind, uri, suite, tuple(comps.split()), signed))
    return entries


def _deb822_entries(text: str) -> list[tuple[str, str, str, tuple[str, ...], str | None]]:
    entries = []
    for para in Deb822.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
        if para.get("Enabled", "yes").lower() == "no":
            continue
        # A multi-line value (an inline key) as deb822 means it: "." stands for an empty line.
        signed = "\n".join("" if line.strip() == "." else line.strip()
                           for line in para.get("Signed-By", "").splitlines()) or None
        comps = tuple(para.get("Components", "").split())
        for kind in para.get("Types", "").split():
            for uri in para.get("URIs", "").split():
                entries += [(kind, uri, suite, comps, signed) for suite in para.get("Suites", "").split()]
    return entries


def host_apt_entries(etc: Path = APT_ETC) -> list[AptEntry]:
    """The Debian-archive ``deb`` entries of the host's apt sources, read-only, in file order."""
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    parts = etc / "sources.list.d"
    if parts.is_dir():
        # apt ignores other extensions (.disabled, .save, .dpkg-old ...); so do we.
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    debian: list[AptEntry] = []
    for path in files:
        read = _deb822_entries if path.suffix == ".sources" else _one_line_entries
        for kind, uri, suite, comps, signed in read(path.read_text(errors="replace")):
            entry = AptEntry(uri.rstrip("/"), suite, comps, signed)
            if kind == "deb" and is_debian_archive(entry.uri, signed) and entry not in debian:
                debian.append(entry)
    return debian


def _host_acquire_config() -> str:
    """The host's Acquire:: settings (proxies, timeouts, validity checks), so our private apt
    reaches the mirror exactly as the host's does; index targets are left out."""
    try:
        dump = output(["apt-config", "dump"])
    except ProvisionError:
        return ""
    keep = [line for line in dump.splitlines()
            if line.startswith("Acquire::") and not line.startswith("Acquire::IndexTargets::")]
    return "\n".join(keep) + ("\n" if keep else "")


class PrivateApt:
    """apt-get with its own source list, state and cache under the cache directory; the
    host's /etc/apt is only read. ``APT_CONFIG`` points at our apt.conf, which also stops
    apt from reading the host's apt.conf.d (whose hooks, such as an appstream refresh
    after update, must not run on our behalf)."""

    def __init__(self, entries: list[AptEntry], *, create: bool = True):
        if not entries:
            raise ProvisionError(
                "the host's apt configuration has no Debian archive 'deb' entry to fetch sources from",
                hint="add a Debian mirror to /etc/apt/sources.list, or use a tarball or local source",
            )
        self.entries = entries
        self.sources_text = "".join(e.deb822() + "\n" for e in entries)
        self.key = manifest_key({"deb-src": self.sources_text})
        self.root = cache_dir("apt", create=create) / self.key
        self.lists = self.root / "state" / "lists"
        self._uris: dict[tuple[str, str | None], list] = {}  # print_uris answers for these lists

    def locked(self) -> Lock:
        """One process updating or resolving against these lists at a time."""
        return Lock(self.root.with_name(f".{self.key}.lock"), 0o644)

    @property
    def suites(self) -> str:
        return ", ".join(sorted({e.suite for e in self.entries}))

    def setup(self) -> None:
        for d in ("etc/sources.list.d", "etc/apt.conf.d", "etc/preferences.d", "state/lists/partial",
                  "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        write_if_changed(self.root / "etc" / "sources.list.d" / "debian-src.sources", self.sources_text)
        write_if_changed(self.root / "etc" / "apt.conf", self._conf())

    def _conf(self) -> str:
        r = self.root
        return (
            "// Written by xen-provision: private apt state for Debian source packages.\n"
            f'Dir::Etc::main "/dev/null";\n'
            f'Dir::Etc::parts "{r}/etc/apt.conf.d";\n'
            f'Dir::Etc::sourcelist "{r}/etc/sources.list";\n'
            f'Dir::Etc::sourceparts "{r}/etc/sources.list.d";\n'
            f'Dir::Etc::preferences "{r}/etc/preferences";\n'
            f'Dir::Etc::preferencesparts "{r}/etc/preferences.d";\n'
            f'Dir::State "{r}/state";\n'
            f'Dir::State::status "/var/lib/dpkg/status";\n'
            f'Dir::Cache "{r}/cache";\n'
            'Dir::Cache::pkgcache "";\n'
            'Dir::Cache::srcpkgcache "";\n'
            'Acquire::Languages "none";\n'
            + _host_acquire_config()
        )

    def argv(self, *args: str) -> list[str]:
        r = self.root
        return [
            "apt-get", "-q",
            "-o", f"Dir::Etc::SourceList={r}/etc/sources.list",
            "-o", f"Dir::Etc::SourceParts={r}/etc/sources.list.d",
            "-o", f"Dir::State={r}/state",
            "-o", f"Dir::Cache={r}/cache",
            *args,
        ]

    @property
    def env(self) -> dict[str, str]:
        return {"APT_CONFIG": str(self.root / "etc" / "apt.conf")}

    def lists_age(self) -> float | None:
        stamp = self.root / "updated"
        try:
            return time.time() - stamp.stat().st_mtime
        except FileNotFoundError:
            return None

    def update(self) -> None:
        with log.step(f"Updating the private deb-src lists ({self.suites})"):
            before = self._lists_state()
            run(self.argv("update"), env=self.env, quiet=True)
            (self.root / "updated").touch()
            if self._lists_state() != before:
                # What we learnt about the old lists no longer holds.
                self._uris.clear()
                for name in ("resolved.json", "unavailable.json"):
                    (self.root / name).unlink(missing_ok=True)

    def _lists_state(self) -> list:
        """Names, sizes and mtimes of the downloaded indexes (apt leaves unchanged ones alone)."""
        if not self.lists.is_dir():
            return []
        return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.lists.iterdir() if p.is_file()
                      and p.name != "lock")

    def _read(self, name: str) -> dict:
        try:
            return json.loads((self.root / name).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _write(self, name: str, data: dict) -> None:
        atomic_write(self.root / name, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def resolved(self, spec: SourceSpec) -> str | None:
        """The .dsc sha256 this request resolved to against the current lists, if known."""
        age = self.lists_age()
        if age is None or (spec.version is None and age > LISTS_MAX_AGE):
            return None
        return self._read("resolved.json").get(f"{spec.package}={spec.version or ''}")

    def remember(self, spec: SourceSpec, dsc_sha: str) -> None:
        data = self._read("resolved.json")
        data[f"{spec.package}={spec.version or ''}"] = dsc_sha
        self._write("resolved.json", data)

    def unavailable(self) -> set[str]:
        return set(self._read("unavailable.json").get("dsc", []))

    def mark_unavailable(self, dsc_sha: str) -> None:
        self._write("unavailable.json", {"dsc": sorted(self.unavailable() | {dsc_sha})})

    def print_uris(self, package: str, version: str | None) -> list[tuple[str, str, int, str]]:
        """(uri, filename, size, sha256) of every file of the source package, from Sources."""
        if (package, version) in self._uris:
            return self._uris[(package, version)]
        target = f"{package}={version}" if version else package
        out = run(self.argv("source", "--print-uris", "--download-only", target), env=self.env,
                  capture=True, check=False)
        if out.returncode != 0:
            return []
        files = []
        for line in out.stdout.splitlines():
            m = re.match(r"^'([^']+)'\s+(\S+)\s+(\d+)\s+(.*)$", line.strip())
            if not m:
                continue
            sha = re.search(r"SHA256:([0-9a-f]{64})", m.group(4))
            files.append((m.group(1), m.group(2), int(m.group(3)), sha.group(1) if sha else ""))
        self._uris[(package, version)] = files
        dscs = [f[1] for f in files if f[1].endswith(".dsc")]
        if version is None and dscs:  # the candidate, also under its own version
            self._uris[(package, dscs[0][len(package) + 1:-len(".dsc")])] = files
        return files
