"""Change files inside an ext2/3/4 image without mounting it, with ``debugfs -w``.

Used to re-apply per-guest settings to a clone of a template: one debugfs run of a few
dozen commands, no loop device, no mount, nothing for an interrupt to leave behind.
A partition of a disk image is reached with ``IMAGE?offset=BYTES``.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path, PurePosixPath

from provision.errors import ProvisionError
from provision.guest.configure import Mkdir, Op, Remove, Symlink, TreeReader, Write
from provision.run import require, run

# debugfs reports these for steps that found nothing to do; anything else is an error.
_HARMLESS = ("File not found by ext2_lookup",)


def _device(image: str | os.PathLike, offset: int = 0) -> str:
    return f"{os.fspath(image)}?offset={offset}" if offset else os.fspath(image)


def _debugfs(device: str, request: str) -> tuple[str, str]:
    proc = run(["debugfs", "-R", request, device], check=False, capture=True)
    return proc.stdout, proc.stderr


def reader(image: str | os.PathLike, offset: int = 0) -> TreeReader:
    """A :class:`TreeReader` over the filesystem in ``image`` (read-only)."""
    require("debugfs")
    device = _device(image, offset)

    def read(path: str) -> str | None:
        # One run: stat says whether it is a regular file, cat gives its content.
        path = _q(path)
        header = f"debugfs: cat {path}\n".encode()
        out = run(["debugfs", "-f", "-", device], input=f"stat {path}\ncat {path}\n".encode(), check=False,
                  capture=True).stdout  # bytes: a directory's cat is binary
        stat, sep, content = out.partition(header)
        if not sep or b"Type: regular" not in stat:
            return None
        return content.decode(errors="replace")

    def listdir(path: str) -> list[str]:
        out, err = _debugfs(device, f"ls -p {path}")
        names = []
        for line in out.splitlines():
            parts = line.strip().strip("/").split("/")
            if len(parts) >= 5 and parts[4] not in (".", ".."):
                names.append(parts[4])
        return sorted(names)

    return TreeReader(read, listdir)


def _parents(path: str) -> list[str]:
    p = PurePosixPath(path).parent
    chain = []
    while str(p) != "/":
        chain.append(str(p))
        p = p.parent
    return list(reversed(chain))


def _q(path: str) -> str:
    if any(c.isspace() or c in '"\\' for c in path):
        raise ProvisionError(f"path {path!r} cannot be passed to debugfs")
    return path


def existing_dirs(image: str | os.PathLike, paths, offset: int = 0) -> set[str]:
    """Which of ``paths`` are directories in the image, with one debugfs run."""
    paths = sorted(set(paths))
    if not paths:
        return set()
    with tempfile.NamedTemporaryFile("w", prefix="xen-provision-debugfs.", suffix=".cmd") as f:
        f.write("".join(f"stat {_q(p)}\n" for p in paths))
        f.flush()
        out = run(["debugfs", "-f", f.name, _device(image, offset)], check=False, capture=True).stdout
    found, current = set(), None
    for line in out.splitlines():
        if line.startswith("debugfs: stat "):
            current = line[len("debugfs: stat "):].strip()
        elif current and "Type: directory" in line:
            found.add(current)
    return found


def apply(image: str | os.PathLike, ops: list[Op], offset: int = 0) -> None:
    """Make ``ops`` in the filesystem of ``image`` with one ``debugfs -w`` run."""
    require("debugfs")
    # debugfs's mkdir of a directory that exists leaves an orphaned inode behind: only
    # make the ones that are missing.
    wanted = {parent for op in ops if not isinstance(op, Remove) for parent in _parents(op.path)}
    wanted |= {op.path for op in ops if isinstance(op, Mkdir)}
    with tempfile.TemporaryDirectory(prefix="xen-provision-debugfs.") as tmp:
        os.chmod(tmp, 0o700)  # the files may be secrets (shadow, keys)
        script: list[str] = []
        made: set[str] = existing_dirs(image, wanted, offset)
        for n, op in enumerate(ops):
            path = _q(op.path)
            for parent in _parents(path) if not isinstance(op, Remove) else ():
                if parent not in made:
                    script.append(f"mkdir {parent}")
                    made.add(parent)
            if isinstance(op, Mkdir):
                if path not in made:
                    script.append(f"mkdir {path}")
                    made.add(path)
                script += [f"sif {path} mode 0{0o40000 | op.mode:o}", f"sif {path} uid {op.uid}",
                           f"sif {path} gid {op.gid}"]
            elif isinstance(op, Write):
                src = Path(tmp, f"f{n}")
                src.write_bytes(op.data)
                os.chmod(src, op.mode)
                script += [f"rm {path}", f"write {src} {path}", f"sif {path} mode 0{0o100000 | op.mode:o}",
                           f"sif {path} uid {op.uid}", f"sif {path} gid {op.gid}"]
            elif isinstance(op, Symlink):
                script += [f"rm {path}", f"symlink {path} {_q(op.target)}"]
            elif isinstance(op, Remove):
                script.append(f"rm {path}")
        cmdfile = Path(tmp, "commands")
        cmdfile.write_text("\n".join(script) + "\n")
        proc = run(["debugfs", "-w", "-f", cmdfile, _device(image, offset)], check=False, capture=True)
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ") and not any(h in line for h in _HARMLESS)]
    if proc.returncode != 0 or errors:
        raise ProvisionError(f"debugfs could not change {image}: {(errors or [proc.stderr.strip()])[0]}",
                             hint="run e2fsck -f on the image; " + shlex.join(["debugfs", "-w", os.fspath(image)]))
