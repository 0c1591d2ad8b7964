"""cloud-init's NoCloud seed: ``user-data``, ``meta-data`` and an optional
``network-config`` on a small read-only disk labelled ``cidata``.

    image --debootstrap bookworm --file vm1.img --cloud-init user-data.yaml   # vm1.img.cidata.iso
    image seed --cloud-init user-data.yaml --hostname web --out web.cidata.iso  # for a cloud image

The seed is an ISO 9660 image (Rock Ridge and Joliet names, volume id ``cidata``) made by
xorriso, not a vfat one: it is read-only by nature, as the guest gets it (access=ro); it
is as small as its files, where vfat needs a size chosen in advance; xorriso is one tool
(mkfs.vfat needs mcopy beside it) and honours SOURCE_DATE_EPOCH, so the same input gives
the same bytes. Every distribution kernel reads ISO 9660 (isofs) and cloud-init's
ds-identify finds the seed by its label, either way.

``meta-data`` holds ``instance-id`` (derived from the hostname and the seed's files: a
changed seed is a new instance to cloud-init, so its per-instance modules run again) and
``local-hostname``. ``image`` records the seed in the facts file as a disk with role
``seed`` and ``readonly``, after the image's own disks; ``domain create --from-image``
then gives it to the guest as a read-only ``xvdb``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provision import log, validate
from provision.errors import ProvisionError
from provision.fsutil import atomic_write
from provision.run import run
from provision.undo import UndoStack

SUFFIX = ".cidata.iso"
VOLUME_ID = "cidata"
USER_DATA_STARTS = ("#cloud-config", "#!", "#include", "#cloud-boothook", "## template: jinja")
_VERSION = re.compile(r"^\s*version\s*:\s*[12]\s*(#.*)?$", re.MULTILINE)
MAX_BYTES = 16 << 20  # cloud-init reads user-data whole; anything near this is a mistake


@dataclass(frozen=True)
class Seed:
    """The files of a NoCloud seed, checked."""

    hostname: str
    user_data: bytes
    network_config: bytes | None = None

    @property
    def instance_id(self) -> str:
        h = hashlib.sha256()
        for part in (self.hostname.encode(), self.user_data, self.network_config or b""):
            h.update(len(part).to_bytes(8, "big") + part)
        return f"iid-{self.hostname.split('.')[0]}-{h.hexdigest()[:12]}"

    @property
    def meta_data(self) -> bytes:
        # JSON is YAML: no quoting rule of YAML's can bite a hostname here.
        return (f"instance-id: {json.dumps(self.instance_id)}\n"
                f"local-hostname: {json.dumps(self.hostname)}\n").encode()

    def files(self) -> dict[str, bytes]:
        out = {"meta-data": self.meta_data, "user-data": self.user_data}
        if self.network_config is not None:
            out["network-config"] = self.network_config
        return out


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ProvisionError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ProvisionError(f"{what} {path} is larger than {MAX_BYTES >> 20} MiB")
    return data


def check_user_data(data: bytes, path: str | os.PathLike = "user-data") -> bytes:
    """cloud-init runs user-data by its first line: ``#cloud-config`` (YAML), ``#!`` (a
    script) or one of its other headers. Anything else it ignores silently: refused."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    if not first.startswith(USER_DATA_STARTS):
        raise ProvisionError(f"{path} is not cloud-init user-data: its first line must be #cloud-config or #!",
                             hint="cloud-init ignores user-data without such a header")
    return data


def check_network_config(data: bytes, path: str | os.PathLike = "network-config") -> bytes:
    """A network-config is YAML with ``version: 1`` or ``version: 2`` (at the top or under
    ``network:``); no YAML parser is needed to see that."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProvisionError(f"{path} is not UTF-8 text") from None
    if not _VERSION.search(text):
        raise ProvisionError(f"{path} is not a cloud-init network-config: it has no 'version: 1' or 'version: 2'",
                             hint="see cloud-init's Networking Config Version 2 (netplan) format")
    return data


def read(user_data: str | os.PathLike, hostname: str, network_config: str | os.PathLike | None = None) -> Seed:
    """The seed for ``hostname`` from the two files, checked (one line when not)."""
    validate.hostname(hostname)
    ud = check_user_data(_read(user_data, "user-data"), user_data)
    nc = check_network_config(_read(network_config, "network-config"), network_config) if network_config else None
    return Seed(hostname, ud, nc)


def seed_path(sidecar: str | os.PathLike) -> str:
    """Where an image's seed goes: ``vm1.img.json`` -> ``vm1.img.cidata.iso`` (for an LV,
    beside its facts file in the cache: a block device has no "beside")."""
    s = os.fspath(sidecar)
    return s.removesuffix(".json") + SUFFIX


def check_new(path: str | os.PathLike, *, make_parent: bool = False) -> None:
    """Refuse a seed that exists, or whose directory does not (unless ``make_parent``: an
    LV's, in the cache, is made with its facts file)."""
    if os.path.lexists(path):
        raise ProvisionError(f"seed {path} already exists", hint="remove it first, or choose another target")
    parent = os.path.dirname(os.path.abspath(path))
    if not make_parent and not os.path.isdir(parent):
        raise ProvisionError(f"directory {parent} does not exist", hint="create it first")


def argv(staged: str, out: str) -> list[str]:
    return ["xorriso", "-as", "mkisofs", "-quiet", "-volid", VOLUME_ID, "-joliet", "-rock",
            "-output", out, staged]


def write(seed: Seed, path: str | os.PathLike, undo: UndoStack, *, make_parent: bool = False) -> str:
    """Make the ISO at ``path`` (refused if it exists); removed again if ``undo`` fails."""
    path = os.path.abspath(path)
    check_new(path, make_parent=make_parent)
    parent = os.path.dirname(path)
    if make_parent:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cidata.", dir=parent) as tmp:
        staged = Path(tmp, "files")
        staged.mkdir()
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        for name, data in seed.files().items():
            (staged / name).write_bytes(data)
            (staged / name).chmod(0o644)
            if epoch:
                os.utime(staged / name, (int(epoch), int(epoch)))
        if epoch:
            os.utime(staged, (int(epoch), int(epoch)))  # the root directory's date too
        iso = Path(tmp, "seed.iso")
        run(argv(str(staged), str(iso)), quiet=True)
        os.chmod(iso, 0o644)
        os.replace(iso, path)
    undo.rollback(f"remove {path}", Path(path).unlink, True, made=path)
    log.info(f"cloud-init seed {path} (label {VOLUME_ID}: {', '.join(seed.files())})")
    return path


def seed_disk(path: str, info: dict, devices: str = "xvd") -> dict:
    """The facts file's disk entry: read-only, on the first whole disk after the image's."""
    used = {d.get("vdev", "") for d in info.get("disks") or []}
    letter = "b"
    while any(v.startswith(f"{devices}{letter}") for v in used):
        letter = chr(ord(letter) + 1)
    return {"role": "seed", "path": path, "vdev": f"{devices}{letter}", "format": "raw", "readonly": True,
            "label": VOLUME_ID}


def attach(info: dict, path: str, sidecar: str | os.PathLike, devices: str = "xvd") -> dict:
    """Record the seed in the facts file ``sidecar`` (rewritten whole)."""
    new = {**info, "disks": [*(info.get("disks") or []), seed_disk(path, info, devices)]}
    atomic_write(sidecar, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return new


# -- image seed: a seed alone, for a distribution's cloud image -----------------------------------

def register(actions) -> None:
    p = actions.add_parser(
        "seed", help="a cloud-init NoCloud seed (cidata ISO) for a guest, e.g. a distribution cloud image",
        description="Write a cloud-init NoCloud seed: an ISO 9660 image labelled cidata holding user-data, "
                    "meta-data (instance-id, local-hostname) and an optional network-config. Give it to the "
                    "guest as a read-only disk: 'format=raw, vdev=xvdb, access=ro, target=SEED'.")
    p.add_argument("--cloud-init", required=True, metavar="USER_DATA", help="user-data: #cloud-config or a #! script")
    p.add_argument("--network-config", metavar="FILE", help="network-config (version 1 or 2)")
    p.add_argument("--hostname", required=True, help="the guest's local-hostname")
    p.add_argument("--out", required=True, metavar="SEED.iso", help="the seed to write (refused if it exists)")
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help="check the files and print the plan; write nothing")
    p.set_defaults(func=run_seed)


def run_seed(args) -> int:
    seed = read(args.cloud_init, args.hostname, args.network_config)
    out = os.path.abspath(args.out)
    check_new(out)
    if args.dry_run:
        print(f"seed:     {out} (iso9660, volume id {VOLUME_ID}): {', '.join(seed.files())}")
        print(f"meta:     instance-id {seed.instance_id}, local-hostname {seed.hostname}")
        return 0
    with UndoStack() as undo:
        write(seed, out, undo)
    log.info(f"give it to the guest after its own disks: 'format=raw, vdev=xvdb, access=ro, target={out}'")
    return 0
