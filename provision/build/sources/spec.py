"""What a source is (:class:`SourceSpec`, validated once) and what a fetched one is
(:class:`Source`), with the tree checks every kind shares: which tree it is and its
upstream version, read from its Makefiles."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from provision.build.download import filename_from_url
from provision.errors import ProvisionError

KINDS = ("debian", "tarball", "local")
TREE_KINDS = ("xen", "linux")

SHA256 = re.compile(r"^[0-9a-f]{64}$")
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
            if not sha or not SHA256.match(sha.lower()):
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


# --------------------------------------------------------------------------- trees


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


def check_tree(tree: Path, spec: SourceSpec) -> str:
    """The version of ``tree``, which must be the kind of tree ``spec`` asks for."""
    kind = tree_kind(tree)
    if kind is None:
        raise ProvisionError(f"{spec.describe()}: {tree} does not look like a Xen or Linux source tree",
                             hint="a Xen tree has xen/Makefile; a Linux tree has Makefile, Kconfig and arch/")
    expected = spec.package if spec.package in TREE_KINDS else None
    if expected and kind != expected:
        raise ProvisionError(f"{spec.describe()}: {tree} is a {kind} tree, not {expected}")
    return tree_version(tree)
