"""Which mirror to bootstrap from: the host's own apt configuration, read, never edited.

Both formats are read: one-line ``sources.list`` entries and deb822 ``*.sources``
stanzas. For a distribution the host does not use (Ubuntu on a Debian host) or an
archived release, the well-known public mirrors are the defaults.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProvisionError
from provision.guest.suites import Release

DEFAULTS = {
    ("debian", "current"): "http://deb.debian.org/debian",
    ("debian", "archived"): "http://archive.debian.org/debian",
    ("ubuntu", "current"): "http://archive.ubuntu.com/ubuntu",
    ("ubuntu", "archived"): "http://old-releases.ubuntu.com/ubuntu",
}

KEYRINGS = {
    ("debian", "current"): "/usr/share/keyrings/debian-archive-keyring.gpg",
    ("debian", "archived"): "/usr/share/keyrings/debian-archive-removed-keys.gpg",
    ("ubuntu", "current"): "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    ("ubuntu", "archived"): "/usr/share/keyrings/ubuntu-archive-removed-keys.gpg",
}

KEYRING_PACKAGES = {"debian": "debian-archive-keyring", "ubuntu": "ubuntu-keyring"}


@dataclass(frozen=True)
class Source:
    """One ``deb`` source of the host: URI, suites, components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    origin: str  # the file it came from


def _parse_one_line(text: str, origin: str) -> list[Source]:
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # Drop the [ option=value ... ] block before splitting.
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) < 3 or parts[0] != "deb":
            continue
        out.append(Source(parts[1].rstrip("/"), (parts[2],), tuple(parts[3:]), origin))
    return out


def _parse_deb822(text: str, origin: str) -> list[Source]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, _, value = raw.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            out.append(Source(uri.rstrip("/"), tuple(fields.get("suites", "").split()),
                              tuple(fields.get("components", "").split()), origin))
    return out


def host_sources(etc_apt: str | os.PathLike = "/etc/apt") -> list[Source]:
    """Every enabled ``deb`` source of the host, in apt's reading order."""
    etc_apt = Path(etc_apt)
    sources: list[Source] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        sources += _parse_one_line(main.read_text(errors="replace"), str(main))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.suffix == ".list" and f.is_file():
                sources += _parse_one_line(f.read_text(errors="replace"), str(f))
            elif f.suffix == ".sources" and f.is_file():
                sources += _parse_deb822(f.read_text(errors="replace"), str(f))
    return sources


def _looks_like(distro: str, uri: str) -> bool:
    path = uri.split("://", 1)[-1]
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last == distro  # .../debian, .../ubuntu; not debian-security, ubuntu-ports


def host_mirror(distro: str, etc_apt: str | os.PathLike = "/etc/apt") -> str | None:
    """The host's mirror for ``distro`` (its main archive, not security), or None."""
    for src in host_sources(etc_apt):
        if src.uri.startswith(("http://", "https://", "ftp://", "file:/")) and _looks_like(distro, src.uri):
            return src.uri
    return None


def default_mirror(release: Release, etc_apt: str | os.PathLike = "/etc/apt") -> str:
    """The host's own mirror for a current release, the archive for an archived one."""
    if release.archived:
        return DEFAULTS[(release.distro, "archived")]
    return host_mirror(release.distro, etc_apt) or DEFAULTS[(release.distro, "current")]


def check_mirror_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"^(https?|ftp)://[^/\s]+(/\S*)?$|^file:/\S+$", url):
        raise ProvisionError(f"mirror '{url}' is not a URL",
                             hint="use http://HOST/PATH, e.g. http://deb.debian.org/debian")
    return url


def check_proxy_url(url: str) -> str:
    if not re.match(r"^https?://[^/\s]+/?$", url.strip()):
        raise ProvisionError(f"proxy '{url}' is not a proxy URL", hint="use http://HOST:PORT, e.g. http://127.0.0.1:3142")
    return url.strip().rstrip("/")


def default_keyring(release: Release) -> str:
    return KEYRINGS[(release.distro, release.status)]


def probe(mirror: str, suite: str, proxy: str | None = None, timeout: float = 15.0) -> None:
    """Fail with the URL that failed when the mirror has no Release file for ``suite``."""
    import requests  # only when we go to the network

    if mirror.startswith("file:"):
        path = Path("/" + mirror.split(":", 1)[1].lstrip("/")) / "dists" / suite / "Release"
        if not path.is_file():
            raise ProvisionError(f"mirror {mirror} has no {path}", hint="check --mirror")
        return
    proxies = {"http": proxy, "https": proxy} if proxy else None
    for name in ("InRelease", "Release"):
        url = f"{mirror}/dists/{suite}/{name}"
        try:
            r = requests.head(url, timeout=timeout, allow_redirects=True, proxies=proxies)
        except requests.RequestException as e:
            reason = type(e).__name__
            raise ProvisionError(f"mirror unreachable: {url} failed ({reason})",
                                 hint="check the network, --mirror and --proxy") from None
        if r.status_code == 200:
            return
    raise ProvisionError(f"mirror {mirror} has no suite '{suite}': {url} returned HTTP {r.status_code}",
                         hint="check --mirror (archived suites live on the archive mirror)")
