"""The download and build cache, outside any checkout.

``$XEN_PROVISION_CACHE`` or ``~/.cache/xen-provision``. Entries are keyed by a
manifest of their inputs: the same inputs give the same key, a changed input a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The cache path for ``parts``, created unless ``create`` is false (dry runs)."""
    base = os.environ.get("XEN_PROVISION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xen-provision"
    )
    path = Path(base, *parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def manifest_key(manifest: dict) -> str:
    """A stable hash of a JSON-able manifest (sorted keys)."""
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
