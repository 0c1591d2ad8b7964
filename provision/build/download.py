"""Download one file over HTTP(S): streamed, resumable, retried, verified before it is visible.

    path = download(url, sha256, dest_dir)

The bytes go to ``<dest_dir>/.partial/<sha256>.part``. An interrupted transfer (a dropped
connection, a 5xx, Ctrl-C) leaves the ``.part`` behind and the next attempt asks for the
rest with a ``Range`` header. Only after the whole file matches ``sha256`` is it renamed
to ``<dest_dir>/<name>``; a mismatch deletes the partial file and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from provision import log
from provision.errors import ProvisionError

CHUNK = 1 << 16
# Attempts and the first backoff delay (doubling each time). Tests shorten the delay.
ATTEMPTS = int(os.environ.get("XEN_PROVISION_DOWNLOAD_ATTEMPTS", "5"))
BACKOFF = float(os.environ.get("XEN_PROVISION_DOWNLOAD_BACKOFF", "1.0"))
TIMEOUT = 60  # seconds without data before a connection counts as dropped

# What counts as a transient failure worth another attempt.
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _Retry(Exception):
    """A transient failure: try again after a pause."""


def filename_from_url(url: str) -> str:
    name = os.path.basename(unquote(urlparse(url).path))
    if not name or name in (".", ".."):
        raise ProvisionError(f"cannot tell a file name from the URL {url}",
                             hint="give a URL that ends in the file name, e.g. .../xen-4.19.1.tar.gz")
    return name


def _hash_existing(path: Path) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    size = 0
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h, size


def _attempt(session: requests.Session, url: str, part: Path, label: str) -> None:
    """One GET, continuing ``part`` if it has bytes. Raises _Retry on transient failures."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with session.get(url, stream=True, headers=headers, timeout=TIMEOUT) as resp:
            if resp.status_code == 416 and have:
                # We already have every byte (or the .part is longer than the file):
                # let verification decide.
                return
            if resp.status_code >= 500 or resp.status_code == 429:
                raise _Retry(f"HTTP {resp.status_code} from {url}")
            if resp.status_code >= 400:
                raise ProvisionError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}",
                                     hint="check the URL in the source definition")
            if have and resp.status_code == 200:
                # The server ignored Range: start again from the first byte.
                log.debug(f"{url}: server does not resume; restarting")
                have = 0
                mode = "wb"
            else:
                mode = "ab" if have else "wb"
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            with open(part, mode) as f, log.Progress(label, total) as bar:
                bar.update(have)
                for block in resp.iter_content(CHUNK):
                    f.write(block)
                    bar.update(len(block))
            if total is not None and part.stat().st_size < total:
                raise _Retry(f"connection closed early ({part.stat().st_size} of {total} bytes)")
    except _TRANSIENT as e:
        raise _Retry(f"{type(e).__name__}: {e}") from e


def download(url: str, sha256: str, dest_dir: str | os.PathLike, *, name: str | None = None,
             attempts: int | None = None, backoff: float | None = None) -> Path:
    """Fetch ``url`` into ``dest_dir/name`` and return that path, verified against ``sha256``.

    An already verified file is returned at once. ``file://`` URLs are copied the same way
    (useful for mirrors on disk)."""
    dest_dir = Path(dest_dir)
    name = name or filename_from_url(url)
    final = dest_dir / name
    if final.exists():
        return final
    attempts = attempts or ATTEMPTS
    backoff = BACKOFF if backoff is None else backoff
    partial = dest_dir / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    part = partial / f"{sha256}.part"
    if urlparse(url).scheme == "file":
        _copy_local(Path(unquote(urlparse(url).path)), part)
    else:
        with requests.Session() as session:
            session.headers["User-Agent"] = "xen-provision"
            delay = backoff
            for attempt in range(1, attempts + 1):
                try:
                    _attempt(session, url, part, f"Downloading {name}")
                    break
                except _Retry as e:
                    if attempt == attempts:
                        raise ProvisionError(
                            f"download of {url} failed after {attempts} attempts: {e}",
                            hint="check the network and run again; the partial download is kept and resumed",
                        ) from None
                    log.warn(f"{name}: {e}; retrying in {delay:.0f}s (attempt {attempt + 1} of {attempts})")
                    time.sleep(delay)
                    delay *= 2
    got, size = _hash_existing(part)
    if got.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise ProvisionError(
            f"checksum mismatch for {name} from {url}: expected sha256 {sha256}, got {got.hexdigest()} "
            f"({size} bytes); the partial file was deleted",
            hint="check the sha256 in the source definition, or the URL",
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    return final


def _copy_local(src: Path, part: Path) -> None:
    if not src.is_file():
        raise ProvisionError(f"download source {src} does not exist", hint="check the file:// URL")
    with open(src, "rb") as fin, open(part, "wb") as fout, log.Progress(f"Copying {src.name}", src.stat().st_size) as bar:
        while block := fin.read(1 << 20):
            fout.write(block)
            bar.update(len(block))
