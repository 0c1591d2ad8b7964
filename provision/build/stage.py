"""Staging into dist/install, laid out like Xen's own install, with a manifest.

    boot/xen-4.17.5.gz            boot/xen-4.17.gz, xen-4.gz, xen.gz -> xen-4.17.5.gz
    boot/xen-syms-4.17.5          boot/xen-4.17.5.config
    boot/vmlinuz-6.1.176-xen0     config-, System.map-, vmlinux-syms- (the unstripped vmlinux)
    lib/modules/6.1.176-xen0/     modules.builtin* (and the modules, when a recipe enables
                                  them), indexed by depmod: modules.dep, *.bin, ...
    usr/, etc/, var/              the control tools (make dist-tools)
    manifest.json                 versions, source identities, config hashes, every file
                                  (size, sha256, mode, link target) and directory: install.sh
                                  installs nothing from a tree that does not match it;
                                  "reproducible": the pinned build identity (SOURCE_DATE_EPOCH,
                                  XEN_BUILD_*, KBUILD_BUILD_*), which `doit verify` rebuilds with

The uncompressed multiboot image (``xen/xen``, a 32-bit ELF that QEMU's ``-kernel`` can
boot) is not installed anywhere, so it goes beside the tree: ``dist/xen-<ver>.elf``,
named in the manifest as ``xen.elf`` (relative to dist/install).

Every staged file, directory and link gets SOURCE_DATE_EPOCH (the newest source's
changelog date) as its mtime, so two stagings of the same builds are the same tree.

The new tree is assembled beside the old one and swapped in, so dist/install is always
either the previous complete tree or the new complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from provision import log
from provision.cache import sha256_file
from provision.fsutil import Lock, atomic_write
from provision.run import run
from provision.undo import UndoStack

MANIFEST = "manifest.json"
FORMAT = 4  # 2: lib/modules indexed by depmod; 3: without Xen's own xendomains; 4: "reproducible"


def xen_names(version: str) -> dict[str, str]:
    """Staged names of the hypervisor files, as Xen's own ``make install`` names them."""
    parts = version.split(".")
    return {
        "image": f"boot/xen-{version}.gz",
        "links": [f"boot/xen-{'.'.join(parts[:2])}.gz", f"boot/xen-{parts[0]}.gz", "boot/xen.gz"],
        "syms": f"boot/xen-syms-{version}",
        "config": f"boot/xen-{version}.config",
        "elf": f"../xen-{version}.elf",
    }


def kernel_names(release: str) -> dict[str, str]:
    """Staged names of one kernel's files; ``release`` is e.g. 6.1.176-xen0."""
    return {
        "vmlinuz": f"boot/vmlinuz-{release}",
        "config": f"boot/config-{release}",
        "system_map": f"boot/System.map-{release}",
        "syms": f"boot/vmlinux-syms-{release}",
        "modules": f"lib/modules/{release}",
    }


def _copy(src: Path, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)
    st = src.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _stage_xen(tmp: Path, record: dict) -> dict:
    out = Path(record["dir"])
    names = xen_names(record["version"])
    _copy(out / "xen.gz", tmp / names["image"])
    for link in names["links"]:
        if link != names["image"]:
            (tmp / link).symlink_to(Path(names["image"]).name)
    _copy(out / "xen-syms", tmp / names["syms"])
    _copy(out / ".config", tmp / names["config"])
    _copy(out / "xen", tmp / names["elf"])
    return names


def _stage_kernel(tmp: Path, record: dict) -> dict:
    out = Path(record["dir"])
    names = kernel_names(record["release"])
    _copy(out / "arch/x86/boot/bzImage", tmp / names["vmlinuz"])
    _copy(out / ".config", tmp / names["config"])
    _copy(out / "System.map", tmp / names["system_map"])
    _copy(out / "vmlinux", tmp / names["syms"])
    moddir = tmp / names["modules"]
    moddir.mkdir(parents=True, exist_ok=True)
    if record.get("modules"):
        run(["cp", "-a", f"{out / 'modules'}/.", moddir])  # what make modules_install wrote
    else:
        for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if (out / name).exists():
                _copy(out / name, moddir / name)
    depmod(tmp, record["release"], tmp / names["system_map"])
    return names


def depmod(root: Path, release: str, system_map: Path) -> None:
    """Index ``root/lib/modules/<release>`` with depmod, as ``make modules_install`` and
    the distributions' kernel packages do. Without modules.dep and modules.builtin.bin
    modprobe fails even for a built-in driver ("Module xen-blkback not found"), which is
    what xencommons and systemd ask it for. The new files get the System.map's time, so
    restaging the same build makes the same tree."""
    moddir = root / "lib/modules" / release
    before = {p.name for p in moddir.iterdir()}
    run(["depmod", "-b", root, "-F", system_map, release], quiet=True)
    when = system_map.stat().st_mtime_ns
    for path in moddir.iterdir():
        if path.name not in before and path.is_file():
            os.utime(path, ns=(when, when))


# Xen's own xendomains (script, settings, helper, unit): `python -m provision xendomains
# install` writes ours, whose settings differ; two would fight over /etc/init.d/xendomains.
NOT_STAGED = ("etc/init.d/xendomains", "etc/default/xendomains", "etc/sysconfig/xendomains",
              "usr/lib/xen/bin/xendomains", "usr/lib/systemd/system/xendomains.service")


def _stage_tools(tmp: Path, record: dict) -> None:
    run(["cp", "-a", f"{record['install']}/.", tmp])
    for rel in NOT_STAGED:
        (tmp / rel).unlink(missing_ok=True)


def file_table(root: Path) -> dict[str, dict]:
    """Every file and symlink under ``root``: sha256, size and mode, or the link target."""
    table: dict[str, dict] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel == MANIFEST:
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            table[rel] = {"link": os.readlink(path)}
        elif stat.S_ISREG(st.st_mode):
            table[rel] = {"sha256": sha256_file(path), "size": st.st_size,
                          "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
    return table


def dir_list(root: Path) -> list[str]:
    """Every directory under ``root``: install.sh checks that a tree has them all (an empty
    one at the end of a truncated tarball is otherwise lost without a trace)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and not p.is_symlink())


def pinned(xen: dict, tools: dict | None, kernels: dict[str, dict]) -> dict | None:
    """manifest.json's "reproducible" section: the build identity each build was made
    with, and SOURCE_DATE_EPOCH, the newest of theirs (the staged files' mtime). None
    for build records from before builds were pinned."""
    records = {"xen": xen, **({"tools": tools} if tools else {}),
               **{f"kernel:{name}": rec for name, rec in kernels.items()}}
    if any("reproducible" not in rec for rec in records.values()):
        return None
    return {
        "SOURCE_DATE_EPOCH": max(int(rec["reproducible"]["SOURCE_DATE_EPOCH"]) for rec in records.values()),
        "builds": {name: rec["reproducible"] for name, rec in records.items()},
        "prefix_map": "source and work trees as /usr/src/<tree> in debug information (-fdebug-prefix-map), "
                      "__FILE__ relative to the source tree (-fmacro-prefix-map)",
    }


def set_mtimes(root: Path, epoch: int) -> None:
    """Give everything under ``root`` (and ``root``) the mtime ``epoch``, links themselves included."""
    for path in [*root.rglob("*"), root]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def seal(root: Path, manifest: dict) -> dict:
    """Write ``root/manifest.json``: ``manifest`` with every file and directory under
    ``root``, in the line-per-value form install.sh reads (indent 2, sorted keys)."""
    manifest = {**manifest, "files": file_table(root), "dirs": dir_list(root)}
    atomic_write(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def stage(dest: Path, xen: dict, tools: dict | None, kernels: dict[str, dict]) -> dict:
    """Assemble the install tree for these build records at ``dest``; return the manifest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.new")
    old = dest.with_name(f".{dest.name}.old")
    # Two runs staging into the same place (parallel test sessions) take turns.
    with Lock(dest.with_name(f".{dest.name}.lock")), UndoStack() as undo:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        undo.rollback(f"remove {tmp}", shutil.rmtree, tmp, True)
        # tmp/install becomes dest; the ELF is made at tmp/xen-<ver>.elf, beside it.
        root = tmp / "install"
        root.mkdir()
        xnames = _stage_xen(root, xen)
        knames = {name: _stage_kernel(root, rec) for name, rec in kernels.items()}
        if tools:
            _stage_tools(root, tools)
        manifest = {
            "format": FORMAT,
            "xen": {
                "version": xen["version"],
                "source": xen["source"],
                "config_sha256": xen["config_sha256"],
                "fragment_sha256": xen["fragment_sha256"],
                "debug": xen["debug"],
                "schedulers": xen["schedulers"],
                "default_scheduler": xen["default_scheduler"],
                **xnames,
            },
            "tools": None if not tools else {
                "version": tools["version"],
                "source": tools["source"],
                "configure": tools["configure"],
                "configure_sha256": tools["configure_sha256"],
            },
            "kernels": {
                name: {
                    "flavour": rec["flavour"], "series": rec["series"], "version": rec["version"],
                    "release": rec["release"], "source": rec["source"],
                    "config_sha256": rec["config_sha256"], **knames[name],
                }
                for name, rec in kernels.items()
            },
            "reproducible": pinned(xen, tools, kernels),
        }
        elf = (root / xnames["elf"]).resolve()
        if xen.get("elf_sha256"):
            manifest["xen"]["elf_sha256"] = xen["elf_sha256"]
        epoch = manifest["reproducible"] and manifest["reproducible"]["SOURCE_DATE_EPOCH"]
        if epoch:
            set_mtimes(root, epoch)
            os.utime(elf, (epoch, epoch))
        manifest = seal(root, manifest)
        if epoch:  # manifest.json (and so the directory) too
            os.utime(root / MANIFEST, (epoch, epoch))
            os.utime(root, (epoch, epoch))
        # Swap the new tree and ELF in.
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(root, dest)
        for stale in dest.parent.glob("xen-*.elf"):
            if stale.name != elf.name:
                stale.unlink()
        os.replace(elf, dest.parent / elf.name)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(f"staged {len(manifest['files'])} files into {dest}")
    return manifest
