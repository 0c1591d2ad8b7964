"""Sources for Xen and Linux, verified before use and cached by checksum.

    spec = SourceSpec.from_dict({"kind": "debian", "package": "xen"}, what="buildconfigs/xen.toml")
    src = fetch(spec)          # Source(tree=..., version="4.17.5", identity="<sha256>", spec=spec)

Three kinds:

``debian``
    The distribution's source package, fetched through the host's own apt mirror
    configuration without touching it: the Debian-archive ``deb`` entries of
    /etc/apt/sources.list{,.d} become a private deb-src list with private apt state under
    the cache; ``apt-get source --download-only`` fetches into a directory keyed by the
    .dsc's sha256 (taken from the signed Sources index); every file is checked against the
    .dsc; ``dpkg-source -x`` unpacks and patches it once.
``tarball``
    An upstream release: URL + sha256, streamed, resumable, retried, verified before it
    appears in the cache (see :mod:`provision.build.download`), unpacked once.
``local``
    An existing tree, used in place.

Cache layout (under ``$XEN_PROVISION_CACHE``)::

    apt/<key>/             private apt config and state for one set of mirror entries
    downloads/<sha256>/    verified tarballs        debian/<dsc-sha256>/   .dsc + its files
    sources/<identity>/    unpacked trees, each with a ``source.json`` stamp written last
    locks/                 flock files so parallel tasks and tests do not race

Trees in the cache are shared: consumers must treat ``Source.tree`` as read-only and
build out of tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from provision import log
from provision.build.download import download, filename_from_url
from provision.cache import cache_dir, manifest_key, sha256_file
from provision.errors import ProvisionError
from provision.fsutil import atomic_write, write_if_changed
from provision.run import CommandError, output, require, run
from provision.undo import UndoStack

KINDS = ("debian", "tarball", "local")
APT_ETC = Path("/etc/apt")
# Private apt lists older than this are refreshed before a candidate lookup.
LISTS_MAX_AGE = 24 * 3600
# How many versions to try when the mirror lacks apt's candidate (partial mirrors).
MAX_VERSIONS_TRIED = 6

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_DEBVER = re.compile(r"^[A-Za-z0-9.+~:-]+$")
_FIELDS = {
    "debian": {"package", "version"},
    "tarball": {"url", "sha256", "package"},
    "local": {"path", "package"},
}


@dataclass(frozen=True)
class SourceSpec:
    """Where a source tree comes from. Build one with :meth:`from_dict` (validated)."""

    kind: str  # "debian" | "tarball" | "local"
    package: str | None = None  # debian source package ("xen", "linux"); for tarball/local: the
    # expected tree kind ("xen" or "linux"), checked after unpacking when given
    version: str | None = None  # debian: exact version; None = apt's candidate
    url: str | None = None  # tarball
    sha256: str | None = None  # tarball
    path: str | None = None  # local tree

    @classmethod
    def from_dict(cls, d: dict, what: str) -> SourceSpec:
        """Validate a mapping (e.g. a TOML table); errors are one line naming ``what``."""
        if not isinstance(d, dict):
            raise ProvisionError(f"{what}: a source must be a table with a 'kind', not {d!r}")
        kind = d.get("kind")
        if kind not in KINDS:
            raise ProvisionError(f"{what}: source kind must be one of {', '.join(KINDS)}, not {kind!r}")
        unknown = sorted(set(d) - _FIELDS[kind] - {"kind"})
        if unknown:
            raise ProvisionError(
                f"{what}: unknown key{'s' if len(unknown) > 1 else ''} for a {kind} source: "
                f"{', '.join(unknown)} (allowed: {', '.join(sorted(_FIELDS[kind]))})"
            )
        for key, value in d.items():
            if not isinstance(value, str) or not value.strip():
                raise ProvisionError(f"{what}: source '{key}' must be a non-empty string, not {value!r}")
        package = d.get("package")
        if kind == "debian":
            if not package or not _PKG.match(package):
                raise ProvisionError(f"{what}: a debian source needs 'package', a Debian source package name "
                                     f"such as \"xen\" or \"linux\" (got {package!r})")
            version = d.get("version")
            if version is not None and not _DEBVER.match(version):
                raise ProvisionError(f"{what}: {version!r} is not a Debian version")
            return cls(kind, package=package, version=version)
        if package is not None and package not in TREE_KINDS:
            raise ProvisionError(f"{what}: 'package' of a {kind} source says which tree it is: "
                                 f"one of {', '.join(TREE_KINDS)}, not {package!r}")
        if kind == "tarball":
            url, sha = d.get("url"), d.get("sha256")
            if not url or urlparse(url).scheme not in ("http", "https", "file"):
                raise ProvisionError(f"{what}: a tarball source needs an http(s):// or file:// 'url' (got {url!r})")
            try:
                filename_from_url(url)
            except ProvisionError as e:
                raise ProvisionError(f"{what}: {e.message}") from None
            if not sha or not _SHA256.match(sha.lower()):
                raise ProvisionError(f"{what}: a tarball source needs 'sha256', 64 hex digits (got {sha!r})",
                                     hint="sha256sum FILE prints it")
            return cls(kind, package=package, url=url, sha256=sha.lower())
        path = d.get("path")
        if not path:
            raise ProvisionError(f"{what}: a local source needs 'path', the directory of a Xen or Linux tree")
        return cls(kind, package=package, path=os.path.abspath(os.path.expanduser(path)))

    def describe(self) -> str:
        if self.kind == "debian":
            return f"Debian source package {self.package}" + (f" {self.version}" if self.version else "")
        if self.kind == "tarball":
            return f"tarball {self.url}"
        return f"local tree {self.path}"


@dataclass(frozen=True)
class Source:
    """A fetched, verified, unpacked source tree."""

    tree: Path  # the tree in the cache (or the local path); READ-ONLY for consumers
    version: str  # upstream version read from the tree: "4.17.5" (Xen), "6.1.158" (Linux)
    identity: str  # checksum identity of the inputs: sha256 of the .dsc or tarball; for local
    # trees a hash of the path and the tree's listing with sizes and mtimes
    spec: SourceSpec

    def summary(self) -> dict:
        """What a build record (and so the manifest) says about the source it was built from."""
        return {"identity": self.identity, "version": self.version, "spec": self.spec.describe()}


def default_spec(package: str) -> SourceSpec:
    """The default source of ``package`` ("xen" or "linux"): Debian's source package on a
    Debian-family host; elsewhere there is no default and the user must name one."""
    if Path("/etc/debian_version").exists():
        return SourceSpec("debian", package=package)
    raise ProvisionError(f"no default source for {package} on a non-Debian host",
                         hint='set a tarball source: {kind = "tarball", url = "...", sha256 = "..."}')


def fetch(spec: SourceSpec, *, dry_run: bool = False) -> Source:
    """Make ``spec``'s tree available (download, verify, unpack; cached) and describe it.

    A second fetch of the same source finds the stamped tree and returns at once. With
    ``dry_run`` nothing is downloaded or written: the plan is logged and the returned
    Source names where the tree is or would be (its version is the tree's if it is
    already cached, else the requested version or "unknown")."""
    if spec.kind == "local":
        return _fetch_local(spec)
    if spec.kind == "tarball":
        return _fetch_tarball(spec, dry_run)
    if spec.kind == "debian":
        return _fetch_debian(spec, dry_run)
    raise ProvisionError(f"unknown source kind {spec.kind!r}")


# --------------------------------------------------------------------------- trees

TREE_KINDS = ("xen", "linux")


def _make_vars(makefile: Path) -> dict[str, str]:
    """``NAME = value`` / ``export NAME ?= value`` assignments of a Makefile (first wins)."""
    found: dict[str, str] = {}
    for line in makefile.read_text(errors="replace").splitlines():
        m = re.match(r"^\s*(?:export\s+)?([A-Z_]+)\s*[:?]?=\s*(.*?)\s*(?:#.*)?$", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    return found


def tree_kind(tree: str | os.PathLike) -> str | None:
    """"xen" or "linux" when ``tree`` looks like one, else None."""
    tree = Path(tree)
    if (tree / "xen" / "Makefile").is_file() and "XEN_VERSION" in _make_vars(tree / "xen" / "Makefile"):
        return "xen"
    if (tree / "Makefile").is_file() and (tree / "Kconfig").is_file() and (tree / "arch").is_dir():
        mk = _make_vars(tree / "Makefile")
        if "VERSION" in mk and "PATCHLEVEL" in mk:
            return "linux"
    return None


def tree_version(tree: str | os.PathLike) -> str:
    """The upstream version of a Xen tree (XEN_VERSION.XEN_SUBVERSION+XEN_EXTRAVERSION, e.g.
    "4.17.5") or a Linux tree (VERSION.PATCHLEVEL.SUBLEVEL plus EXTRAVERSION, e.g. "6.1.158")."""
    tree = Path(tree)
    kind = tree_kind(tree)
    if kind == "xen":
        mk = _make_vars(tree / "xen" / "Makefile")
        extra = re.sub(r"\$\([^)]*\)", "", mk.get("XEN_EXTRAVERSION", ""))
        return f"{mk['XEN_VERSION']}.{mk.get('XEN_SUBVERSION', '0')}{extra}"
    if kind == "linux":
        mk = _make_vars(tree / "Makefile")
        version = f"{mk['VERSION']}.{mk['PATCHLEVEL']}.{mk.get('SUBLEVEL') or '0'}"
        return version + mk.get("EXTRAVERSION", "")
    raise ProvisionError(f"{tree} is neither a Xen tree (xen/Makefile) nor a Linux tree (Makefile, Kconfig, arch/)")


def _check_tree(tree: Path, spec: SourceSpec) -> str:
    kind = tree_kind(tree)
    if kind is None:
        raise ProvisionError(f"{spec.describe()}: {tree} does not look like a Xen or Linux source tree",
                             hint="a Xen tree has xen/Makefile; a Linux tree has Makefile, Kconfig and arch/")
    expected = spec.package if spec.package in TREE_KINDS else None
    if expected and kind != expected:
        raise ProvisionError(f"{spec.describe()}: {tree} is a {kind} tree, not {expected}")
    return tree_version(tree)


@contextlib.contextmanager
def _lock(name: str):
    """An exclusive lock shared by every process using this cache (parallel doit tasks, tests)."""
    path = cache_dir("locks") / f"{name}.lock"
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another process using {name} in the cache")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _scratch(parent: Path, prefix: str):
    """A temp dir beside its final place. Unless it was renamed into place, it is removed
    at the end: on success, failure, Ctrl-C or SIGTERM alike."""
    with UndoStack() as undo:
        tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}.", dir=parent))
        undo.cleanup(f"remove {tmp}", shutil.rmtree, tmp, True)
        yield tmp


def _stamp(entry: Path) -> dict | None:
    try:
        return json.loads((entry / "source.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _publish(tmp: Path, final: Path, tree_rel: str, identity: str, spec: SourceSpec) -> dict:
    """Stamp a completely unpacked ``tmp`` entry and rename it into place."""
    version = _check_tree(tmp / tree_rel, spec)
    stamp = {"identity": identity, "tree": tree_rel, "version": version, "spec": spec.__dict__}
    (tmp / "source.json").write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    tmp.chmod(0o755)  # mkdtemp made it private; the cache is readable like any build tree
    if final.exists():  # an unstamped leftover of an older, interrupted run
        shutil.rmtree(final)
    os.replace(tmp, final)
    return stamp


def _source_from_stamp(entry: Path, stamp: dict, spec: SourceSpec) -> Source:
    return Source(tree=entry / stamp["tree"], version=stamp["version"], identity=stamp["identity"], spec=spec)


# --------------------------------------------------------------------------- local


def local_identity(tree: Path) -> str:
    """A hash of the path and every file's name, size and mtime (dot-directories skipped)."""
    h = hashlib.sha256(str(tree).encode() + b"\0")
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            h.update(f"{os.path.relpath(path, tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _fetch_local(spec: SourceSpec) -> Source:
    tree = Path(spec.path)
    if not tree.is_dir():
        raise ProvisionError(f"local source {tree} does not exist or is not a directory",
                             hint="point 'path' at an unpacked Xen or Linux source tree")
    version = _check_tree(tree, spec)
    return Source(tree=tree, version=version, identity=local_identity(tree), spec=spec)


# --------------------------------------------------------------------------- tarball


def _fetch_tarball(spec: SourceSpec, dry_run: bool) -> Source:
    entry = cache_dir("sources", create=not dry_run) / spec.sha256
    stamp = _stamp(entry)
    if stamp:
        return _source_from_stamp(entry, stamp, spec)
    name = filename_from_url(spec.url)
    downloads = cache_dir("downloads", create=not dry_run) / spec.sha256
    if dry_run:
        have = (downloads / name).exists()
        log.info(f"would {'unpack the cached' if have else 'download and verify'} {name} "
                 f"(sha256 {spec.sha256[:16]}...) from {spec.url} into {entry}")
        return Source(tree=entry, version=spec.version or "unknown", identity=spec.sha256, spec=spec)
    with _lock(f"src-{spec.sha256}"):
        stamp = _stamp(entry)  # another process may have finished it while we waited
        if stamp:
            return _source_from_stamp(entry, stamp, spec)
        with log.step(f"Fetching {name}"):
            archive = download(spec.url, spec.sha256, downloads, name=name)
            require("tar")
            with _scratch(entry.parent, spec.sha256[:16]) as tmp:
                (tmp / "tree").mkdir()
                log.info(f"unpacking {name}")
                # tar picks the decompressor itself; no owners from the archive, no absolute paths.
                run(["tar", "-xf", archive, "-C", tmp / "tree", "--no-same-owner", "--no-same-permissions"],
                    quiet=True)
                top = list((tmp / "tree").iterdir())
                tree_rel = f"tree/{top[0].name}" if len(top) == 1 and top[0].is_dir() else "tree"
                stamp = _publish(tmp, entry, tree_rel, spec.sha256, spec)
    return _source_from_stamp(entry, stamp, spec)


# --------------------------------------------------------------------------- debian: host apt config


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


def is_debian_archive(uri: str, signed_by: str | None) -> bool:
    """A Debian archive or a mirror of one: hosted on debian.org, or a mirror path ending in
    /debian or /debian-security; signed (if a keyring is named) by Debian's archive keys."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https", "ftp", "file", "mirror", "mirror+http", "mirror+https", "tor+http", "tor+https"):
        return False
    if signed_by and "\n" not in signed_by and "debian-archive" not in signed_by:
        return False
    host = (parsed.hostname or "").lower()
    last = parsed.path.rstrip("/").rsplit("/", 1)[-1]
    return host == "debian.org" or host.endswith(".debian.org") or last in _DEBIAN_PATHS


def _one_line_entries(text: str) -> list[tuple[str, str, str, tuple[str, ...], str | None]]:
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if m:
            kind, opts, rest = m.groups()
            for opt in opts.split():
                if "=" in opt:
                    k, v = opt.split("=", 1)
                    options[k.lower()] = v
        else:
            kind, _, rest = line.partition(" ")
        words = rest.split()
        if len(words) < 2:
            continue
        entries.append((kind, words[0], words[1], tuple(words[2:]), options.get("signed-by")))
    return entries


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    paragraphs, current, key = [], {}, None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, None
            continue
        if raw[0] in " \t" and key:
            value = raw.strip()
            current[key] += "\n" + ("" if value == "." else value)
            continue
        k, sep, v = raw.partition(":")
        if sep:
            key = k.strip().lower()
            current[key] = v.strip()
    return paragraphs


def host_apt_entries(etc: Path = APT_ETC) -> list[AptEntry]:
    """The Debian-archive ``deb`` entries of the host's apt sources, read-only, in file order."""
    found: list[AptEntry] = []
    files = []
    if (etc / "sources.list").is_file():
        files.append(etc / "sources.list")
    parts = etc / "sources.list.d"
    if parts.is_dir():
        # apt ignores other extensions (.disabled, .save, .dpkg-old ...); so do we.
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for para in _deb822_paragraphs(text):
                if para.get("enabled", "yes").lower() == "no" or "deb" not in para.get("types", "").split():
                    continue
                signed = para.get("signed-by") or None
                for uri in para.get("uris", "").split():
                    for suite in para.get("suites", "").split():
                        comps = tuple(para.get("components", "").split())
                        found.append(AptEntry(uri.rstrip("/"), suite, comps, signed))
        else:
            for kind, uri, suite, comps, signed in _one_line_entries(text):
                if kind == "deb":
                    found.append(AptEntry(uri.rstrip("/"), suite, comps, signed))
    debian, seen = [], set()
    for e in found:
        if is_debian_archive(e.uri, e.signed_by) and e not in seen:
            seen.add(e)
            debian.append(e)
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
        with log.step(f"Updating the private deb-src lists ({', '.join(sorted({e.suite for e in self.entries}))})"):
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


# --------------------------------------------------------------------------- debian: fetch


def parse_dsc(dsc: Path) -> dict[str, tuple[int, str]]:
    """{filename: (size, sha256)} from a .dsc's Checksums-Sha256 field."""
    files: dict[str, tuple[int, str]] = {}
    in_field = False
    for line in dsc.read_text(errors="replace").splitlines():
        if line.startswith("Checksums-Sha256:"):
            in_field = True
            continue
        if in_field:
            if not line.startswith(" "):
                break
            parts = line.split()
            if len(parts) == 3:
                files[parts[2]] = (int(parts[1]), parts[0])
    if not files:
        raise ProvisionError(f"{dsc} has no Checksums-Sha256 field; it is not a usable .dsc")
    return files


def dsc_field(dsc: Path, field: str) -> str | None:
    for line in dsc.read_text(errors="replace").splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    return None


def verify_dsc_files(dsc: Path) -> None:
    """Check every file the .dsc lists, beside it, against its size and sha256. A bad file
    is deleted and named, so the next fetch downloads it again."""
    for name, (size, sha) in sorted(parse_dsc(dsc).items()):
        path = dsc.parent / name
        if not path.is_file():
            raise ProvisionError(f"{dsc.name}: {name} is missing", hint="fetch again to download it")
        got = sha256_file(path)
        if got != sha or path.stat().st_size != size:
            path.unlink()
            raise ProvisionError(
                f"checksum mismatch for {name} (expected sha256 {sha}, got {got}); the bad file was deleted",
                hint="fetch again to download it afresh",
            )


def _watch_download(directory: Path, total: int, label: str, stop: threading.Event) -> None:
    """Draw a progress bar from the growing files apt is writing (apt's own bar needs a tty)."""
    def size() -> int:
        total = 0
        with contextlib.suppress(OSError):
            for p in directory.iterdir():
                with contextlib.suppress(OSError):  # apt renames files as it goes
                    total += p.stat().st_size
        return total

    with log.Progress(label, total) as bar:
        while not stop.wait(0.5):
            bar.update(max(0, size() - bar.done))
        bar.update(max(0, size() - bar.done))


def _apt_download(apt: PrivateApt, package: str, version: str, files, dest: Path) -> None:
    """``apt-get source --download-only`` into a temp dir, verify, rename to ``dest``."""
    with _scratch(dest.parent, dest.name[:16]) as tmp:
        if os.geteuid() == 0:
            # apt downloads as _apt when it can write here; otherwise it warns and runs unsandboxed.
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(tmp, pwd.getpwnam("_apt").pw_uid, -1)
        total = sum(f[2] for f in files)
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_download,
                                   args=(tmp, total, f"Downloading {package} {version}", stop), daemon=True)
        watcher.start()
        try:
            run(apt.argv("source", "--download-only", f"{package}={version}"), env=apt.env, cwd=tmp, quiet=True)
        except CommandError as e:
            missing = re.search(r"Failed to fetch (\S+)\s+(404.*)", e.output)
            if missing:
                reason = " ".join(missing.group(2).split("[")[0].split())
                raise _Unavailable(f"{reason}: {missing.group(1)}") from None
            errors = [line for line in e.output.splitlines() if line.startswith("E: ")]
            raise ProvisionError(
                f"apt-get source {package}={version} failed: {(errors or [str(e)])[0].removeprefix('E: ')}",
                hint="check the network and the mirror in /etc/apt (the download is retried on the next run)",
            ) from None
        finally:
            stop.set()
            watcher.join()
        dsc = next(tmp.glob("*.dsc"))
        verify_dsc_files(dsc)
        tmp.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)


def debian_version_key(version: str):
    """A sort key ordering Debian versions as dpkg does (epoch, upstream, revision; ``~``
    sorts before everything, letters before other symbols)."""

    def order(c: str) -> int:
        if c == "~":
            return -1
        if c.isalpha():
            return ord(c)
        return ord(c) + 256

    def part(s: str) -> tuple:
        key = []
        while s:
            m = re.match(r"^([^0-9]*)([0-9]*)", s)
            text, num = m.group(1), m.group(2)
            # terminate each text run with 0 so "~" (-1) < end of string < anything else
            key.append(tuple(order(c) for c in text) + (0,))
            key.append(int(num) if num else 0)
            s = s[len(text) + len(num):]
        # the end of the string sorts after "~" and before anything else
        return tuple(key) + ((0,), 0)

    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
    return (int(epoch or 0), part(upstream), part(revision))


class _Unavailable(Exception):
    """The mirror lists a version but does not serve its files (e.g. a 404)."""


def _candidates(apt: PrivateApt, spec: SourceSpec) -> list[str]:
    """Versions to try, best first: the requested one, or apt's candidate followed by the
    other versions the lists know, newest first (a partial mirror may lack the candidate)."""
    if spec.version:
        return [spec.version]
    files = apt.print_uris(spec.package, None)
    dscs = [f[1] for f in files if f[1].endswith(".dsc")]
    first = dscs[0][len(spec.package) + 1:-len(".dsc")] if dscs else None
    out = run(["apt-cache", "madison", spec.package], env=apt.env, capture=True, check=False).stdout
    others = set()
    for line in out.splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) == 3 and cols[0] == spec.package and cols[2].endswith("Sources"):
            others.add(cols[1])
    rest = sorted(others - {first}, key=debian_version_key, reverse=True)
    return ([first] if first else []) + rest


def _fetch_debian(spec: SourceSpec, dry_run: bool) -> Source:
    apt = PrivateApt(host_apt_entries(), create=not dry_run)
    if dry_run:
        return _dry_run_debian(apt, spec)
    require("apt-get", "apt-cache", "dpkg-source")
    # Fast path: the same request against the same lists resolved to a tree before.
    known = apt.resolved(spec)
    if known and (stamp := _stamp(cache_dir("sources") / known)):
        return _source_from_stamp(cache_dir("sources") / known, stamp, spec)
    with _lock(f"apt-{apt.key}"):
        apt.setup()
        age = apt.lists_age()
        fresh = False
        if age is None:
            apt.update()
            fresh = True
        elif spec.version is None and age > LISTS_MAX_AGE:
            try:
                apt.update()
                fresh = True
            except CommandError as e:  # offline: the lists we have still name a version
                log.warn(f"could not refresh the deb-src lists ({e}); using those from "
                         f"{age / 3600:.0f} hours ago")
        versions = _candidates(apt, spec)
        if not versions or not apt.print_uris(spec.package, versions[0]):
            if not fresh:
                apt.update()  # maybe the version is newer than our lists
                versions = _candidates(apt, spec)
    suites = ", ".join(sorted({e.suite for e in apt.entries}))
    usable = [v for v in versions if apt.print_uris(spec.package, v)] if spec.version else versions
    if not usable:
        what = f"{spec.package} version {spec.version}" if spec.version else spec.package
        raise ProvisionError(
            f"no Debian source package {what} in {suites}",
            hint="check the package name and version (https://tracker.debian.org/ lists them)",
        )
    errors = []
    for version in usable[:MAX_VERSIONS_TRIED]:
        files = apt.print_uris(spec.package, version)
        dscs = [f for f in files if f[1].endswith(".dsc")]
        if not dscs or not _SHA256.match(dscs[0][3]):
            continue
        dsc_sha = dscs[0][3]
        if dsc_sha in apt.unavailable():
            errors.append(f"{version}: not served by the mirror")
            continue
        try:
            source = _fetch_dsc(apt, spec, version, files, dscs[0])
        except _Unavailable as e:
            apt.mark_unavailable(dsc_sha)
            errors.append(f"{version}: {e}")
            log.warn(f"the mirror lists {spec.package} {version} but does not serve it ({e}); "
                     "trying the next version")
            continue
        if version != usable[0]:
            log.warn(f"using {spec.package} {version}: apt's candidate {usable[0]} is not downloadable "
                     "from this mirror")
        apt.remember(spec, dsc_sha)
        return source
    raise ProvisionError(
        f"could not download Debian source {spec.package} from the mirror: {'; '.join(errors)}",
        hint="check the network and the mirror in /etc/apt, or pin a 'version' the mirror serves",
    )


def _fetch_dsc(apt: PrivateApt, spec: SourceSpec, version: str, files, dsc_file) -> Source:
    _uri, dsc_name, _size, dsc_sha = dsc_file
    entry = cache_dir("sources") / dsc_sha
    if stamp := _stamp(entry):
        return _source_from_stamp(entry, stamp, spec)
    with _lock(f"src-{dsc_sha}"):
        if stamp := _stamp(entry):  # another process finished it while we waited
            return _source_from_stamp(entry, stamp, spec)
        downloads = cache_dir("debian") / dsc_sha
        with log.step(f"Fetching Debian source {spec.package} {version}"):
            dsc = downloads / dsc_name
            complete = dsc.is_file() and sha256_file(dsc) == dsc_sha and all(
                (downloads / name).is_file() for name in parse_dsc(dsc))
            if complete:
                verify_dsc_files(dsc)  # a corrupt file is deleted, so the next fetch gets it again
            else:
                total = sum(f[2] for f in files)
                log.info(f"downloading {len(files)} files ({total / 2**20:.1f} MiB) through the host's mirror")
                _apt_download(apt, spec.package, version, files, downloads)
                if sha256_file(dsc) != dsc_sha:
                    dsc.unlink()
                    raise ProvisionError(f"checksum mismatch for {dsc_name}: it does not match the Sources index; "
                                         "the bad file was deleted", hint="fetch again")
            stamp = _unpack_dsc(dsc, entry, dsc_sha, spec)
    return _source_from_stamp(entry, stamp, spec)


def _unpack_dsc(dsc: Path, entry: Path, identity: str, spec: SourceSpec) -> dict:
    with _scratch(entry.parent, identity[:16]) as tmp:
        upstream = (dsc_field(dsc, "Version") or "0").split(":")[-1].rsplit("-", 1)[0]
        tree_rel = f"{spec.package}-{upstream}"
        size = sum(s for s, _ in parse_dsc(dsc).values())
        log.info(f"unpacking and patching {dsc.name} ({size / 2**20:.0f} MiB compressed"
                 f"{'; this takes a minute or two' if size > 50 * 2**20 else ''})")
        start = time.monotonic()
        # --no-copy: the tarballs stay in the download cache, not beside the tree.
        run(["dpkg-source", "--no-copy", "-x", dsc, tmp / tree_rel], quiet=True)
        log.info(f"unpacked in {time.monotonic() - start:.0f}s")
        return _publish(tmp, entry, tree_rel, identity, spec)


def _dry_run_debian(apt: PrivateApt, spec: SourceSpec) -> Source:
    what = f"{spec.package}={spec.version}" if spec.version else f"{spec.package} (apt's candidate)"
    files = apt.print_uris(spec.package, spec.version) if apt.lists_age() is not None else []
    dscs = [f for f in files if f[1].endswith(".dsc")]
    if not dscs:
        log.info(f"would update private deb-src lists under {apt.root} from "
                 f"{', '.join(sorted({e.uri + ' ' + e.suite for e in apt.entries}))}, "
                 f"then download and unpack Debian source {what}")
        return Source(tree=cache_dir("sources", create=False), version=spec.version or "unknown",
                      identity="unknown", spec=spec)
    _uri, dsc_name, _size, dsc_sha = dscs[0]
    entry = cache_dir("sources", create=False) / dsc_sha
    stamp = _stamp(entry)
    if stamp:
        log.info(f"{dsc_name}: already unpacked at {entry / stamp['tree']}")
        return _source_from_stamp(entry, stamp, spec)
    total = sum(f[2] for f in files)
    log.info(f"would download {dsc_name} and {len(files) - 1} more files ({total / 2**20:.1f} MiB), "
             f"verify them and unpack into {entry}")
    return Source(tree=entry, version=spec.version or "unknown", identity=dsc_sha, spec=spec)
