"""The LVM path end to end on a spare, empty disk, for machines with device-mapper
(the boot test's dom0; our CI kernels lack it, so the pytest LVM tests skip there).

    python3 -m provision.storage.lvmcheck /dev/vdb      # prints one line per check, then LVM-CHECK-OK

Needs only the standard library and lvm2 (+ thin-provisioning-tools for the thin pool,
e2fsprogs for ext4). Everything it makes is removed again at the end, pass or fail.
The disk is overwritten: give it an empty scratch disk only.
"""

from __future__ import annotations

import os
import sys
import time

from provision.errors import ProvisionError
from provision.run import run
from provision.sizes import MiB
from provision.storage.fs import make_fs
from provision.storage.lvm import (
    create_lv,
    create_thin_pool,
    extend_lv,
    lv_exists,
    lv_path,
    pvcreate,
    snapshot_lv,
    snapshot_usage,
    vg_free,
    vgcreate,
    watch_snapshot,
)
from provision.storage.mount import mounted
from provision.undo import Interrupted, UndoStack

VG = "xpcheck"


def _ok(what: str) -> None:
    print(f"lvm-check ok: {what}", flush=True)


def expect_refused(what: str, fn, *args, report=_ok, **kw) -> None:
    """``fn(*args, **kw)`` must fail with a ProvisionError: reported, else an AssertionError."""
    try:
        fn(*args, **kw)
    except ProvisionError as e:
        report(f"{what} refused: {e.message}")
        return
    raise AssertionError(f"{what} was not refused")


def _lv_size(name: str) -> int:
    out = run(["lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size", f"{VG}/{name}"],
              capture=True).stdout
    return int(out.strip())


def check(disk: str) -> None:
    with UndoStack() as undo:
        pvcreate([disk], undo=undo)
        undo.cleanup(f"remove the PV on {disk}", run, ["pvremove", "-y", "-ff", disk])
        vgcreate(VG, [disk])
        undo.cleanup(f"remove {VG}", run, ["vgremove", "-y", "-f", VG])
        _ok(f"PV and VG {VG} on {disk} ({vg_free(VG) // MiB} MiB free)")

        # The manual: lvcreate -L... -n myvmdisk1 vg, a filesystem, then a CoW clone.
        base = create_lv(VG, "template", "64M")
        make_fs(base, "ext4", label="template")
        with mounted(base) as mnt:
            (mnt / "marker").write_text("template\n")
        _ok("LV with ext4")
        clone = snapshot_lv(VG, "template", "clone1", "16M")
        with mounted(clone) as mnt:
            assert (mnt / "marker").read_text() == "template\n", "the clone lacks the template's file"
            with open(mnt / "fill", "wb") as f:
                f.write(os.urandom(10 * MiB))
                f.flush()
                os.fsync(f.fileno())
        usage = snapshot_usage(VG, "clone1")
        assert usage > 40, f"snapshot usage {usage} after writing 10 MiB into 16 MiB"
        _ok(f"snapshot clone holds the template's files; {usage:.1f}% full after 10 MiB")
        watch_snapshot(VG, "clone1", threshold=40, extend_by="32M", once=True)
        after = snapshot_usage(VG, "clone1")
        assert after < usage and _lv_size("clone1") >= 48 * MiB, f"not extended: {after}%"
        _ok(f"fill watch extended the snapshot before it filled: {usage:.1f}% -> {after:.1f}%")

        expect_refused("growing an active snapshot origin", extend_lv, VG, "template", "+8M")
        data = create_lv(VG, "data", "32M")
        make_fs(data, "ext4")
        with mounted(data) as mnt:
            before = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
            extend_lv(VG, "data", "+32M")
            grown = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
        assert grown > before + 24 * MiB, f"filesystem did not grow online: {before} -> {grown}"
        _ok(f"extend grew the LV and its mounted ext4: {before // MiB} -> {grown // MiB} MiB")

        create_thin_pool(VG, "pool", "64M")
        thin = create_lv(VG, "thin1", "1G", thin_pool="pool")
        make_fs(thin, "ext4")
        snap = snapshot_lv(VG, "thin1", "thin1snap")
        assert os.path.exists(snap), f"{snap} did not appear"
        _ok(f"thin pool, 1 GiB thin volume in 64 MiB, thin snapshot; pool {snapshot_usage(VG, 'pool'):.1f}% used")

        expect_refused("an LV larger than the VG", create_lv, VG, "huge", "100G")
        expect_refused("an existing LV", create_lv, VG, "template", "8M")
        expect_refused("a mounted LV as a new PV", _mounted_pvcreate, base)
        try:
            with UndoStack() as failing:
                create_lv(VG, "half", "8M", undo=failing)
                raise RuntimeError("a later step failed")
        except RuntimeError:
            pass
        assert not lv_exists(VG, "half"), "rollback left the LV behind"
        _ok("a failed run removed the LV it made")
        for name in ("thin1snap", "thin1", "pool", "data", "clone1", "template"):
            run(["lvremove", "-y", "-f", lv_path(VG, name)], quiet=True)
    _ok("everything removed")


def _mounted_pvcreate(device: str) -> None:
    with mounted(device):
        pvcreate([device], force=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].startswith("/dev/"):
        print("usage: python3 -m provision.storage.lvmcheck /dev/DISK  (an empty scratch disk)", file=sys.stderr)
        return 2
    return verdict(lambda: check(argv[0]), "LVM-CHECK-OK", "lvm-check FAILED:")


def verdict(check, ok: str, fail: str) -> int:
    """Run ``check()`` and print its one verdict line, which the boot test waits for:
    ``<ok> in <s>s``, else ``<fail> <why>``; returns the exit status."""
    start = time.monotonic()
    try:
        check()
    except (ProvisionError, AssertionError) as e:
        print(f"{fail} {e}", flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"{fail} interrupted ({e or 'SIGINT'}); what it made has been removed", flush=True)
        return 130
    print(f"{ok} in {time.monotonic() - start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
