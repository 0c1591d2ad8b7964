"""Where a guest goes (a directory, a file image, a partitioned disk image or an LV), its
sizes parsed once, and the checks a target gets before anything is made: is it free, is
there room."""

from __future__ import annotations

import os
from dataclasses import dataclass

from provision.errors import ProvisionError
from provision.guest import basecache
from provision.sizes import MiB, format_size, parse_size, round_up

FSTYPES = ("ext4", "ext3", "ext2")


@dataclass(frozen=True)
class Target:
    """Where the guest goes: a directory, a file image, a partitioned disk image or an LV."""

    kind: str  # "dir" | "file" | "disk" | "lv"
    path: str  # directory, image file, disk image, or "VG/LV"
    size: int | None = None
    swap: int | None = None  # swap size: an image or LV beside it, or partition 2
    fstype: str = "ext4"
    preallocate: bool = False

    @classmethod
    def dir(cls, path) -> Target:
        return cls("dir", os.path.abspath(path))

    @classmethod
    def file(cls, path, size="2G", *, swap=None, fstype="ext4", preallocate=False) -> Target:
        return cls._sized("file", os.path.abspath(path), size, swap, fstype, preallocate)

    @classmethod
    def disk(cls, path, size="2G", *, swap=None, fstype="ext4", preallocate=False) -> Target:
        return cls._sized("disk", os.path.abspath(path), size, swap, fstype, preallocate)

    @classmethod
    def lv(cls, vg_lv: str, size="2G", *, swap=None, fstype="ext4") -> Target:
        from provision.storage import validate_lv_name, validate_vg_name

        vg, _, lv = vg_lv.partition("/")
        if not lv:
            raise ProvisionError(f"LV '{vg_lv}' is not VG/NAME", hint="e.g. --lv vg0/vm1")
        validate_vg_name(vg)
        validate_lv_name(lv)
        return cls._sized("lv", vg_lv, size, swap, fstype, False)

    @classmethod
    def _sized(cls, kind, path, size, swap, fstype, preallocate) -> Target:
        if fstype not in FSTYPES:
            raise ProvisionError(f"filesystem type '{fstype}' is not supported for a root image",
                                 hint=f"use one of: {', '.join(FSTYPES)}")
        # No size: a snapshot of a template, which has its origin's size.
        nbytes = parse_size(size, "image size", minimum=32 * MiB) if size is not None else None
        swap_bytes = parse_size(swap, "swap size", minimum=MiB) if swap else None
        return cls(kind, path, nbytes, swap_bytes, fstype, preallocate)

    @property
    def swap_path(self) -> str | None:
        """Where the swap goes: ``vm1.img`` -> ``vm1-swap.img``, ``vg/vm1`` -> ``vg/vm1-swap``."""
        if not self.swap or self.kind == "disk":
            return None
        stem, ext = os.path.splitext(self.path)
        return f"{stem}-swap{ext}" if self.kind == "file" else f"{self.path}-swap"

    @property
    def sidecar(self) -> str:
        if self.kind == "lv":
            vg, lv = self.path.split("/", 1)
            return str(basecache.cache_root(create=False).parent / "images" / vg / f"{lv}.json")
        return self.path.rstrip("/") + ".json"

    def check_free(self, extra: int = 0) -> None:
        """A target that exists, or an LV target whose VG is missing or has no room for
        it (and ``extra`` bytes more: a snapshot's room for changes), is refused before
        anything is done."""
        if self.kind == "lv":
            from provision.storage import lv_exists, vg_free

            vg, lv = self.path.split("/", 1)
            free = vg_free(vg)  # one line when the VG does not exist
            for name in filter(None, (lv, self.swap_path and self.swap_path.split("/", 1)[1])):
                if lv_exists(vg, name):
                    raise ProvisionError(f"logical volume {vg}/{name} already exists",
                                         hint="choose another name, or remove it with lvremove")
            need = (self.size or 0) + (self.swap or 0) + extra
            if need > free:
                raise ProvisionError(f"volume group '{vg}' has no room for {format_size(need)}: "
                                     f"{format_size(free)} free", hint="choose smaller sizes or add a PV (vgextend)")
            return
        for path in filter(None, (self.path, self.swap_path)):
            if os.path.lexists(path):
                raise ProvisionError(f"target {path} already exists", hint="choose another path or remove it first")
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise ProvisionError(f"directory {parent} does not exist", hint="create it first")


def needed_bytes(meta: dict) -> int:
    """Room a filesystem needs for the tree: data, inode tables and journal, with a margin."""
    return int(meta.get("unpacked_bytes", 0) * 1.25) + meta.get("inodes", 0) * 256 + 48 * MiB


def smallest_size(meta: dict) -> int:
    """The smallest root size for the base ``meta`` describes, in whole 64 MiB."""
    return round_up(needed_bytes(meta), 64 * MiB)


def check_room(target: Target, meta: dict) -> None:
    """Refuse a file or disk image whose filesystem has no room for the tree: a sparse
    image would otherwise fail half-way through mkfs."""
    if target.kind not in ("file", "disk"):
        return
    st = os.statvfs(os.path.dirname(target.path))
    free = st.f_bavail * st.f_frsize
    need = target.size if target.preallocate else needed_bytes(meta)
    if free < need:
        raise ProvisionError(f"not enough space in {os.path.dirname(target.path)}: {format_size(free)} free, "
                             f"the image needs about {need >> 20} MiB",
                             hint="free some space or choose another directory")
