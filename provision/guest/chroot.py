"""Run a command inside a guest's root, in a private mount namespace.

    run(chroot_argv(root, ["apt-get", "update"]))

The command runs under ``unshare --mount --propagation private``: this module, started
there, mounts /proc, /sys (read-only) and /dev into the root and the host's resolv.conf
over the guest's, then chroots and execs the command. Those mounts live only in the
namespace, so they vanish with its last process whatever happens (an error, Ctrl-C,
SIGKILL): none is ever left in the image, and dom0 never sees them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import provision

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_RESOLV = "/etc/resolv.conf"


def chroot_argv(root: str | os.PathLike, command: list[str], *, resolv: bool = True) -> list[str]:
    """The argv that runs ``command`` in ``root`` in a private mount namespace; with
    ``resolv`` the guest resolves names with the host's resolv.conf while it runs."""
    return ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m", "provision.guest.chroot",
            *(["--resolv"] if resolv else []), os.fspath(root), "--", *command]


def chroot_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for :func:`chroot_argv`: this package importable by the helper,
    the guest's PATH, C locale (old suites lack C.UTF-8)."""
    package_parent = str(Path(provision.__file__).resolve().parents[1])
    env = {"PYTHONPATH": package_parent, "PATH": PATH, "LANG": "C", "LC_ALL": "C"}
    return {**env, **(extra or {})}


def _mount(argv: list[str]) -> None:
    import subprocess

    proc = subprocess.run(["mount", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:  # one line: the caller's error shows the last line of our output
        said = " ".join(proc.stdout.split()) or f"exit code {proc.returncode}"
        raise SystemExit(f"cannot mount {argv[-1]} for the chroot: {said}")


def main(args: list[str]) -> None:
    """Inside the namespace: mount, chroot, exec (never returns)."""
    resolv = args[0] == "--resolv"
    if resolv:
        args = args[1:]
    root, sep, *command = args
    if sep != "--" or not command:
        raise SystemExit("usage: python -m provision.guest.chroot [--resolv] ROOT -- COMMAND...")
    _mount(["-t", "proc", "proc", f"{root}/proc"])
    _mount(["-t", "sysfs", "-o", "ro", "sysfs", f"{root}/sys"])
    _mount(["--rbind", "/dev", f"{root}/dev"])
    guest_resolv = Path(root, "etc/resolv.conf")
    # Only over a regular file: a symlink (systemd-resolved's) would be followed out of the root.
    if resolv and os.path.isfile(HOST_RESOLV) and guest_resolv.is_file() and not guest_resolv.is_symlink():
        _mount(["--bind", HOST_RESOLV, str(guest_resolv)])
    os.chroot(root)
    os.chdir("/")
    os.execvpe(command[0], command, {**os.environ, "PATH": PATH})


if __name__ == "__main__":
    main(sys.argv[1:])
