"""The one subprocess helper: argv lists only, never a shell.

Every external tool goes through :func:`run` so that the command line is logged the
same way, a missing binary is one clear error naming the Debian package to install,
and a failed command becomes a :class:`CommandError` carrying its exit code and the
tail of its output.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence

from provision import log
from provision.errors import ProvisionError

# Which Debian package provides a tool, for "install X" hints.
PACKAGES: dict[str, str] = {
    "apt-cache": "apt",
    "apt-config": "apt",
    "apt-get": "apt",
    "autoconf": "autoconf",
    "bison": "bison",
    "blkid": "util-linux",
    "btrfs": "btrfs-progs",
    "cpio": "cpio",
    "debootstrap": "debootstrap",
    "debugfs": "e2fsprogs",
    "dpkg-source": "dpkg-dev",
    "dumpe2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "e2image": "e2fsprogs",
    "exportfs": "nfs-kernel-server",
    "fallocate": "util-linux",
    "flex": "flex",
    "gcc": "gcc",
    "gpg": "gnupg",
    "grub-install": "grub-pc-bin",
    "grub-mkconfig": "grub2-common",
    "grub-mkimage": "grub-common",
    "grub-mkrescue": "grub-common",
    "grub-script-check": "grub-common",
    "iasl": "acpica-tools",
    "insserv": "insserv",
    "losetup": "mount",
    "lvcreate": "lvm2",
    "lvextend": "lvm2",
    "lvreduce": "lvm2",
    "lvremove": "lvm2",
    "lvs": "lvm2",
    "make": "make",
    "mcopy": "mtools",
    "mkfs.btrfs": "btrfs-progs",
    "mkfs.ext2": "e2fsprogs",
    "mkfs.ext3": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mkfs.xfs": "xfsprogs",
    "mkswap": "util-linux",
    "mmdebstrap": "mmdebstrap",
    "mount": "mount",
    "parted": "parted",
    "partx": "util-linux",
    "pkg-config": "pkg-config",
    "pvcreate": "lvm2",
    "pvremove": "lvm2",
    "pvs": "lvm2",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "resize2fs": "e2fsprogs",
    "sfdisk": "fdisk",
    "ssh-keygen": "openssh-client",
    "systemctl": "systemd",
    "systemd-analyze": "systemd",
    "tar": "tar",
    "thin_check": "thin-provisioning-tools",
    "umount": "mount",
    "unshare": "util-linux",
    "update-grub": "grub2-common",
    "update-rc.d": "init-system-helpers",
    "vgcreate": "lvm2",
    "vgremove": "lvm2",
    "vgs": "lvm2",
    "xfs_db": "xfsprogs",
    "xfs_growfs": "xfsprogs",
    "xorriso": "xorriso",
}


class CommandError(ProvisionError):
    """A command exited non-zero. The message names the command and its last output line."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = [line for line in output.strip().splitlines() if line.strip()][-1:] if output else []
        msg = f"{shlex.join(self.argv)} failed with exit code {returncode}"
        if tail:
            msg += f": {tail[0].strip()}"
        super().__init__(msg, exit_code=returncode if 0 < returncode < 126 else 1)


def missing_tool(name: str) -> ProvisionError:
    pkg = PACKAGES.get(name)
    hint = f"install it: apt-get install {pkg}" if pkg else "install it and make sure it is on PATH"
    return ProvisionError(f"required tool '{name}' was not found", hint=hint)


def which(name: str) -> str | None:
    # sbin directories are not on a normal user's PATH but hold most tools we use.
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def require(*names: str) -> None:
    """Fail with one line naming every missing tool and the packages that provide them."""
    missing = [n for n in names if which(n) is None]
    if not missing:
        return
    pkgs = sorted({PACKAGES.get(n, n) for n in missing})
    raise ProvisionError(
        f"required tool{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}",
        hint=f"install: apt-get install {' '.join(pkgs)}",
    )


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["LANG"] = env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | os.PathLike],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    quiet: bool = False,
    timeout: float | None = None,
    group: bool = False,
) -> subprocess.CompletedProcess:
    """Run argv. ``capture`` returns stdout as text; otherwise output goes to our stderr
    (or is swallowed with ``quiet``, and then shown only in the error on failure).

    ``group`` runs it in a process group of its own that is ended as a whole if we are
    interrupted (SIGINT/SIGTERM), so no grandchild (apt, dpkg under a bootstrap) outlives us."""
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("empty argv")
    exe = argv[0]
    if os.sep not in exe and which(exe) is None:
        raise missing_tool(exe)
    if os.sep not in exe:
        argv[0] = which(exe)  # sbin tools for non-root PATHs
    log.debug(shlex.join([exe, *argv[1:]]) + (f"  (in {cwd})" if cwd else ""))
    text = not isinstance(input, bytes)
    stdout = subprocess.PIPE if (capture or quiet) else None
    stderr = subprocess.PIPE if quiet else (None if not capture else subprocess.PIPE)
    try:
        proc = (_run_group if group else subprocess.run)(
            argv,
            input=input,
            stdout=stdout,
            stderr=stderr,
            env=_env(env),
            cwd=cwd,
            text=text,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise ProvisionError(f"{shlex.join(argv)} did not finish within {timeout:.0f}s") from e
    if check and proc.returncode != 0:
        out = ""
        for part in (proc.stdout, proc.stderr):
            if part:
                out += part if isinstance(part, str) else part.decode(errors="replace")
        raise CommandError([exe, *argv[1:]], proc.returncode, out)
    return proc


def _run_group(argv, *, input=None, timeout=None, **kw) -> subprocess.CompletedProcess:
    """subprocess.run in a new session; on any exception the whole group gets SIGTERM,
    some seconds to clean up (unmount), then SIGKILL."""
    with subprocess.Popen(argv, start_new_session=True, stdin=kw.pop("stdin", None) if input is None
                          else subprocess.PIPE, **kw) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def output(argv: Sequence[str | os.PathLike], **kw) -> str:
    """Run argv and return its stdout, stripped."""
    return run(argv, capture=True, **kw).stdout.strip()
