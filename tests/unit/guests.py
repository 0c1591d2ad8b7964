"""Guests as `image` and `domain create --from-image` leave them, made in a test root
without root privileges: a sparse root image with some data, a swap image, the image's
facts file (the sidecar the real `image` writes: see provision/guest/build.py sidecar_info)."""

from __future__ import annotations

import json
import os
from pathlib import Path

MiB = 1 << 20


def _facts(target, name: str, address: str | None, suite: str = "bookworm") -> dict:
    """The facts file as `image` writes it (its own writer, sidecar_info)."""
    from provision.guest import suites
    from provision.guest.build import sidecar_info
    from provision.guest.configure import GuestSettings, Network

    settings = GuestSettings(hostname=name, network=Network.make(address)).on(target)
    return sidecar_info({"arch": "amd64"}, settings, target, suites.lookup(suite))


def image(directory: Path, name: str, *, size=64 * MiB, data=3 * MiB, swap: int | None = 16 * MiB,
          address="192.0.2.10/24") -> Path:
    """DIRECTORY/NAME.img (+ NAME-swap.img) and NAME.img.json; returns the image."""
    from provision.guest.build import Target

    directory.mkdir(parents=True, exist_ok=True)
    target = Target.file(directory / f"{name}.img", f"{size // MiB}M", swap=f"{swap // MiB}M" if swap else None)
    img = Path(target.path)
    with open(img, "wb") as f:
        f.write(os.urandom(data))
        f.truncate(size)
    if swap:
        with open(target.swap_path, "wb") as f:
            f.truncate(swap)
    Path(target.sidecar).write_text(json.dumps(_facts(target, name, address), indent=2, sort_keys=True))
    return img


def tree(directory: Path, name: str, address="192.0.2.20/24") -> Path:
    """An NFS root tree DIRECTORY/NAME made by `image --dir` (a few files) and its facts."""
    from provision.guest.build import Target

    target = Target.dir(directory / name)
    t = Path(target.path)
    (t / "etc").mkdir(parents=True)
    (t / "etc/hostname").write_text(f"{name}\n")
    Path(target.sidecar).write_text(json.dumps(_facts(target, name, address), indent=2, sort_keys=True))
    return t


def snapshot(top: Path) -> dict[str, object]:
    """Every path under ``top`` with its content (files), link target (links) or None."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = None
    return out


def xl_stub(bin_dir: Path, running: dict[str, int] | None, fail: bool = False) -> dict[str, str]:
    """An ``xl`` on PATH whose ``xl list`` shows ``running`` (Domain-0 too), or fails as
    xl does off dom0: the env to run a command with. (xl is no tool under test here,
    and this machine has no Xen.)"""
    bin_dir.mkdir(parents=True, exist_ok=True)
    xl = bin_dir / "xl"
    if fail:
        xl.write_text("#!/bin/sh\necho 'xencall: error: Could not obtain handle on privileged command interface' >&2\n"
                      "exit 1\n")
    else:
        rows = "".join(f"{n:<40}{i:>6}   256     1     -b----       1.0\n" for n, i in (running or {}).items())
        xl.write_text("#!/bin/sh\ncat <<'EOF'\nName                                        ID   Mem VCPUs\tState\tTime(s)\n"
                      "Domain-0                                     0  1024     2     r-----      42.0\n"
                      f"{rows}EOF\n")
    xl.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
