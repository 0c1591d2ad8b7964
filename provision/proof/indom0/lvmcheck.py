"""The LVM path end to end on a spare, empty disk or partition, for machines with device-mapper
(the boot test's dom0; our CI kernels lack it, so the pytest LVM tests skip there).

    python3 -m provision.proof.indom0.lvmcheck /dev/vdb2     # prints one line per check, then LVM-CHECK-OK

Needs only the standard library and lvm2 (+ thin-provisioning-tools for the thin pool,
e2fsprogs for ext4). Everything it makes is removed again at the end, pass or fail.
The disk is overwritten: give it an empty scratch disk or partition only.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from provision.errors import ProvisionError
from provision.run import run
from provision.sizes import MiB
from provision.storage.fs import make_fs
from provision.storage.lvm import (
    SnapshotAtLargest,
    create_lv,
    create_thin_pool,
    dm_snapshot_usage,
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
        # The fill level comes from dmsetup status; lvs must say the same (two decimals).
        by_dm = dm_snapshot_usage(VG, "clone1")
        by_lvs = float(run(["lvs", "--noheadings", "-o", "snap_percent", f"{VG}/clone1"], capture=True).stdout)
        assert by_dm is not None and abs(by_dm - by_lvs) < 0.02, f"dmsetup status: {by_dm}%, lvs: {by_lvs}%"
        _ok(f"fill level from dmsetup status {by_dm:.2f}%, lvs {by_lvs:.2f}%")
        watch_snapshot(VG, "clone1", threshold=40, extend_by="32M", once=True)
        after = snapshot_usage(VG, "clone1")
        assert after < usage and _lv_size("clone1") >= 48 * MiB, f"not extended: {after}%"
        _ok(f"fill watch extended the snapshot before it filled: {usage:.1f}% -> {after:.1f}%")
        snapshot_lv(VG, "template", "clone2", "16M")
        readings = _watch_while_writing("clone2", 40 * MiB)
        grown = _lv_size("clone2")
        assert grown >= 48 * MiB and max(readings) < 100, f"clone2: {grown // MiB} MiB, {max(readings):.1f}% at most"
        _ok(f"fill watch running while 40 MiB went into a 16 MiB snapshot: extended to {grown // MiB} MiB, "
            f"never above {max(readings):.1f}% ({len(readings)} checks)")
        # 40 MiB took it to the most LVM gives a snapshot of a 64 MiB origin: it cannot fill.
        try:
            extend_lv(VG, "clone2", "+8M")
            raise AssertionError("clone2 was extended past its origin's size")
        except SnapshotAtLargest as e:
            _ok(f"extending it further refused: {e.message}")

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

        _cli_checks()
        _resize_checks()
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
        # Every LV at once (snapshots, thin volumes and their pool included): one lvremove.
        run(["lvremove", "-y", "-f", VG], quiet=True)
        left = run(["lvs", "--noheadings", "-o", "lv_name", VG], capture=True).stdout.split()
        assert not left, f"lvremove left {left} in {VG}"
    _ok("everything removed")


# An eighth of the snapshot's first 16 MiB per step. With 4 MiB steps, the step written
# while lvextend ran filled it under TCG (the snapshot was invalidated): measured.
STEP = 2 * MiB


class _Written(Exception):
    """Ends the watcher once the writer is done."""


def _watch_while_writing(name: str, nbytes: int) -> list[float]:
    """The manual's watcher for real: ``watch_snapshot`` keeps snapshot ``name`` from
    filling while a writer puts ``nbytes`` into it, more than its first room. The writer
    waits for a fill check after every ``STEP`` (a watcher polling every 0.2 s outpaces a
    guest; under TCG it would not), and lvextend runs while it writes. Returns the fill
    levels seen."""
    readings: list[float] = []
    checked, done = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def reading(usage: float) -> None:
        readings.append(usage)
        checked.set()
        if done.is_set():
            raise _Written

    with mounted(lv_path(VG, name)) as mnt:
        def write() -> None:
            try:
                with open(mnt / "watched", "wb") as f:
                    for _ in range(nbytes // STEP):
                        if done.is_set():
                            return
                        checked.clear()
                        f.write(os.urandom(STEP))
                        f.flush()
                        os.fsync(f.fileno())
                        if not checked.wait(120):
                            raise AssertionError("the watcher stopped checking")
            except BaseException as e:  # reported by the main thread
                failed.append(e)
            finally:
                done.set()

        writer = threading.Thread(target=write, name="snapshot-writer", daemon=True)
        writer.start()
        try:
            watch_snapshot(VG, name, threshold=50, extend_by="32M", interval=0.2, report=reading)
        except _Written:
            pass
        finally:
            done.set()
            checked.set()  # a writer waiting for a check ends now
            writer.join()
        if failed:
            raise AssertionError(f"writing into the watched snapshot failed: {failed[0]}")
        written = (mnt / "watched").stat().st_size
        assert written == nbytes, f"{written} of {nbytes} bytes written"
    return readings


def _cli(*args: str):
    """``python3 -m provision.storage.cli ARGS``, as a user in dom0 runs it."""
    return run([sys.executable, "-m", "provision.storage.cli", *args], check=False, capture=True)


def _cli_refused(what: str, *args: str) -> None:
    proc = _cli(*args)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, \
        f"{what}: exit {proc.returncode}, {proc.stderr.strip()!r}"
    _ok(f"storage cli: {what} refused in one line: {errors[0][len('error: '):]}")


def _cli_checks() -> None:
    """The storage command itself (the stdlib-only entry point) on real volumes."""
    proc = _cli("lvm", "lv", VG, "cli", "--size", "16M", "--fs", "ext4", "--label", "cli")
    assert proc.returncode == 0 and proc.stdout.strip() == lv_path(VG, "cli"), proc.stderr
    label = run(["blkid", "-p", "-o", "value", "-s", "LABEL", lv_path(VG, "cli")], capture=True).stdout.strip()
    assert label == "cli", f"label {label!r} on {lv_path(VG, 'cli')}"
    proc = _cli("lvm", "extend", VG, "cli", "--size", "+8M")
    assert proc.returncode == 0 and proc.stdout.strip() == "24MiB", proc.stdout + proc.stderr
    proc = _cli("fill", VG, "clone1")
    assert proc.returncode == 0 and proc.stdout.startswith(f"{VG}/clone1 ") and proc.stdout.strip().endswith("%"), \
        proc.stdout + proc.stderr
    _ok(f"storage cli: lv --fs ext4, extend, fill ({proc.stdout.strip()})")
    _cli_refused("an LV larger than the VG", "lvm", "lv", VG, "huge", "--size", "100G")
    _cli_refused("an existing LV", "lvm", "lv", VG, "cli", "--size", "8M")
    _cli_refused("a size of 0", "lvm", "lv", VG, "zero", "--size", "0")
    _cli_refused("an LV name with '/'", "lvm", "lv", VG, "a/b", "--size", "8M")
    assert not any(lv_exists(VG, n) for n in ("huge", "zero")), "a refused LV was made"
    assert _lv_size("cli") == 24 * MiB, "a refused command changed the existing LV"


def _provision(*args: str):
    """``python3 -m provision ARGS``, the whole command line, as a user in dom0 runs it."""
    return run([sys.executable, "-m", "provision", *args], check=False, capture=True)


def ext_bytes(device: str) -> int:
    """The bytes the ext filesystem on ``device`` spans (dumpe2fs -h: block count x size)."""
    text = run(["dumpe2fs", "-h", device], capture=True, quiet=True).stdout
    fields = dict(re.findall(r"^(Block count|Block size):\s*(\d+)", text, re.M))
    return int(fields["Block count"]) * int(fields["Block size"])


def _fsck_clean(device: str) -> bool:
    return run(["e2fsck", "-f", "-n", device], check=False, quiet=True).returncode == 0


def _resize_checks() -> None:
    """``image resize`` on a real LV with ext4: grown (lvextend, then resize2fs), shrunk
    (e2fsck -f, resize2fs, then lvreduce), and a shrink below its data refused."""
    path = create_lv(VG, "resized", "32M")
    make_fs(path, "ext4", label="resized")
    with mounted(path) as mnt:
        (mnt / "data").write_bytes(os.urandom(12 * MiB))
    before = ext_bytes(path)
    proc = _provision("image", "resize", f"{VG}/resized", "--size", "+32M")
    assert proc.returncode == 0, f"image resize +32M: {proc.stderr.strip()}"
    grown = ext_bytes(path)
    assert _lv_size("resized") == 64 * MiB, f"the LV is {_lv_size('resized')} bytes after +32M"
    assert grown == 64 * MiB and grown > before, f"ext4 spans {grown} bytes (was {before}) in a 64 MiB LV"
    assert _fsck_clean(path), "e2fsck -fn finds errors after growing"
    _ok(f"image resize grew an LV and its ext4: {before // MiB} -> {grown // MiB} MiB, fsck clean")

    proc = _provision("image", "resize", path, "--size", "40M")
    assert proc.returncode == 0, f"image resize to 40M: {proc.stderr.strip()}"
    shrunk = ext_bytes(path)
    assert _lv_size("resized") == 40 * MiB, f"the LV is {_lv_size('resized')} bytes after shrinking to 40M"
    assert shrunk == 40 * MiB, f"ext4 spans {shrunk} bytes after shrinking to 40M"
    assert _fsck_clean(path), "e2fsck -fn finds errors after shrinking"
    with mounted(path, options=("ro",)) as mnt:
        assert (mnt / "data").stat().st_size == 12 * MiB, "the file did not survive the shrink"
    _ok(f"image resize shrank it offline (e2fsck -f first): 64 -> {shrunk // MiB} MiB, data kept, fsck clean")

    proc = _provision("image", "resize", f"{VG}/resized", "--size", "8M")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "cannot shrink" in errors[0], \
        f"shrinking below the data: exit {proc.returncode}, {proc.stderr.strip()!r}"
    assert _lv_size("resized") == 40 * MiB and ext_bytes(path) == 40 * MiB, "a refused shrink changed the LV"
    _ok(f"image resize below the data refused in one line: {errors[0][len('error: '):]}")


def _mounted_pvcreate(device: str) -> None:
    with mounted(device):
        pvcreate([device], force=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].startswith("/dev/"):
        print("usage: python3 -m provision.proof.indom0.lvmcheck /dev/DISK  (an empty scratch disk)", file=sys.stderr)
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
