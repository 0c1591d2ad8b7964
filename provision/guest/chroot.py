"""Run commands inside a guest image: mounted, chrooted, with no service started.

    with chrooted("/srv/xen/vm1.img") as guest:          # or a directory, a disk image
        guest.run(["locale-gen"])                          # (partition=1), an LV's device
        guest.run(["apt-get", "-y", "install", "sudo"], network=True)

The image is mounted in dom0 (through a loop device we own) for the whole block.
Each command runs in a private mount and PID namespace (``unshare``): /proc, /sys
and /dev are mounted for it there, so they vanish with the command, and any daemon a
maintainer script leaves running is killed with it. ``/usr/sbin/policy-rc.d``
(exit 101) tells invoke-rc.d to start nothing while the block runs; the image's own
policy-rc.d, if it had one, is put back at exit. The environment is a clean one
(:data:`BASE_ENV` plus what the caller gives), not dom0's.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from provision.errors import ProvisionError
from provision.run import run

POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY = b"#!/bin/sh\n# xen-provision: no service starts while the image is changed in a chroot\nexit 101\n"
BASE_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C",  # C.UTF-8 is missing in the oldest suites
    "DEBIAN_FRONTEND": "noninteractive",
}

# $1: the root; $2: 1 to use dom0's resolver; the rest: NAME=VALUE... argv (for env -i).
_IN_NAMESPACE = r"""
root=$1 net=$2; shift 2
mount -t proc proc "$root/proc" && mount --rbind /sys "$root/sys" && mount --rbind /dev "$root/dev" || exit 125
if [ "$net" = 1 ] && [ -e /etc/resolv.conf ] && [ -f "$root/etc/resolv.conf" ] && [ ! -L "$root/etc/resolv.conf" ]; then
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf" || exit 125
fi
exec chroot "$root" /usr/bin/env -i "$@"
"""


class Chroot:
    """A mounted guest root that commands can run in (see :func:`chrooted`)."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, path: str) -> Path:
        """``path`` of the guest as seen from dom0."""
        return self.root / path.lstrip("/")

    def argv(self, argv: Sequence[str], env: Mapping[str, str] | None = None, network: bool = False) -> list[str]:
        """The dom0 command line that runs ``argv`` in the guest (for logs and tests)."""
        full = {**BASE_ENV, **(env or {})}
        return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--",
                "sh", "-c", _IN_NAMESPACE, "xen-provision-chroot", os.fspath(self.root), "1" if network else "0",
                *(f"{k}={v}" for k, v in full.items()), *argv]

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, network: bool = False,
            check: bool = True, quiet: bool = False, capture: bool = False) -> subprocess.CompletedProcess:
        """Run ``argv`` in the guest with :data:`BASE_ENV` and ``env``; ``network``: with
        dom0's resolver (apt from the mirror). Its output goes to our stderr unless
        ``quiet`` or ``capture``; ``check`` raises CommandError on a non-zero exit."""
        return run(self.argv(argv, env, network), check=check, quiet=quiet, capture=capture, group=True)


def install_policy(root: Path):
    """Install policy-rc.d; returns how to put the image's own state back."""
    p = root / POLICY_RC_D.lstrip("/")
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise ProvisionError(f"{POLICY_RC_D} in the image is not a regular file")
    old = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) if p.exists() else None
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(POLICY)
    os.chmod(p, 0o755)

    def restore():
        if old is None:
            p.unlink(missing_ok=True)
        else:
            p.write_bytes(old[0])
            os.chmod(p, old[1])
    return restore


@contextlib.contextmanager
def chrooted(source: str | os.PathLike, *, partition: int | None = None) -> Iterator[Chroot]:
    """``with chrooted(image) as guest:`` -> a :class:`Chroot` of the guest root in
    ``source``: a directory tree, a filesystem image, a block device (an LV), or with
    ``partition`` that partition of a disk image. Unmounted and detached, and
    policy-rc.d taken away again, whatever happens (errors, SIGINT, SIGTERM)."""
    from provision import storage
    from provision.undo import UndoStack

    source = os.fspath(source)
    # The ExitStack (mounts) is left after the UndoStack: policy-rc.d goes before the unmount.
    with contextlib.ExitStack() as stack, UndoStack() as undo:
        if os.path.isdir(source):
            root = Path(source)
        else:
            device = source
            if partition is not None:
                loop = stack.enter_context(storage.loop_device(source, partscan=True))
                device = storage.partition_device(loop, partition)
            root = stack.enter_context(storage.mounted(device))
        for d in ("proc", "sys", "dev"):
            if not (root / d).is_dir():
                raise ProvisionError(f"{source} has no /{d}: it is not a guest root")
        undo.cleanup(f"restore {POLICY_RC_D}", install_policy(root))
        yield Chroot(root)
