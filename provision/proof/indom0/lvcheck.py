"""``image --debootstrap`` into LVM for real, on a spare empty disk, for machines with
device-mapper (the boot test's dom0; our CI kernels lack it, so the pytest LV tests skip).

    python3 -m provision.proof.indom0.lvcheck --seed DIR /dev/vde
    # one line per check, then LV-IMAGE-CHECK-OK in 123.4s (or LV-IMAGE-CHECK-FAIL <why>)

On the disk: a VG; a guest bootstrapped into an LV with a swap LV beside it, read back
with debugfs and checked with ``e2fsck -fn``; that guest saved as an LV template; a new
guest made from it as an LVM snapshot with its own per-guest files. Everything is
removed again at the end, pass or fail. The disk is overwritten: an empty scratch disk only.

There is no network in dom0. The base comes from ``DIR``, which :func:`seed` fills on
the host with the host's cached base (``<key>.tar`` and its manifest ``<key>.json``):
dom0 uses the manifest as it is, so its cache key is the host's, whatever dom0 has
installed, and a base missing there is a failure, never a download.

dom0 needs python3, python3-jinja2 (the guest's files are jinja2 templates), lvm2,
e2fsprogs (mkfs.ext4 -d, debugfs, e2fsck, e2image), util-linux (mkswap, blkid) and tar;
nothing from pip.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
import tempfile
import time
from pathlib import Path

from provision.errors import ProvisionError
from provision.guest import basecache, ext4edit, templates
from provision.guest.build import build, remove_tree, spill_dir
from provision.guest.configure import (
    GuestSettings,
    Mkdir,
    Network,
    Remove,
    Symlink,
    Write,
    apt_sources,
    guest_files,
)
from provision.guest.target import Target, smallest_size
from provision.proof.indom0.lvmcheck import verdict
from provision.run import require, run
from provision.sizes import MiB, format_size
from provision.undo import UndoStack

VG = "xplvcheck"
TEMPLATE = "lvcheck"
SWAP = 32 * MiB
SNAPSHOT_ROOM = 64 * MiB
SEED_DIR = "lvcheck-seed"           # beside the package on the boot test's code disk
WORK_PARENT = "/var/tmp"            # the check's own cache and templates

OK = "LV-IMAGE-CHECK-OK"
FAIL = "LV-IMAGE-CHECK-FAIL"
# What ends the check in a console log: its verdict, or the kernel failing under it.
END = rf"^({OK} in \S+|{FAIL} .*|Traceback .*|BUG: .*|Oops: .*|Kernel panic .*)$"
TIMEOUT = 1800.0                    # a few minutes under TCG on an idle machine; ours are shared
PACKAGES = ("python3", "python3-jinja2", "lvm2", "e2fsprogs")  # dom0's, beyond minbase
TOOLS = ("dpkg-deb", "pvcreate", "vgcreate", "lvcreate", "lvs", "vgs", "lvremove", "vgremove", "pvremove",
         "mkfs.ext4", "debugfs", "e2fsck", "e2image", "mkswap", "blkid", "tar")


# -- on the host ------------------------------------------------------------------------

def seed(dest: str | os.PathLike, suite: str = "bookworm", mirror: str | None = None) -> list[Path]:
    """Put the cached base that ``image --debootstrap SUITE`` uses into the new or empty
    directory ``dest`` (bootstrapping it first, once, when it is not cached); returns
    the files. The boot test puts ``dest`` on the code disk as ``SEED_DIR``."""
    from provision.guest.bootstrap import resolve

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ProvisionError(f"seed directory {dest} is not empty", hint="give a new or empty directory")
    spec = resolve(suite, mirror=mirror)  # the defaults of image --debootstrap SUITE
    files = basecache.export_entry(spec, dest)
    if files is None:
        with UndoStack() as undo:
            work = Path(tempfile.mkdtemp(prefix=".xen-provision-seed.", dir=basecache.cache_root()))
            undo.cleanup(f"remove {work}", remove_tree, work)
            basecache.obtain(spec, work / "root", quiet=True)
        files = basecache.export_entry(spec, dest)
        if files is None:
            raise ProvisionError(f"the {spec.suite} base could not be cached, so there is nothing to seed")
    return files


# -- in dom0 ------------------------------------------------------------------------------

def _ok(what: str) -> None:
    print(f"lv-image-check ok: {what}", flush=True)


def _quiet(argv: list[str]) -> None:
    run(argv, quiet=True)


def _lv(name: str) -> str:
    return f"/dev/{VG}/{name}"


def _fsck_clean(device: str) -> None:
    proc = run(["e2fsck", "-fn", device], check=False, capture=True)
    assert proc.returncode == 0, f"e2fsck -fn {device}: exit {proc.returncode}: {proc.stdout.strip()[-300:]}"


def _swap_signature(device: str) -> None:
    kind = run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], check=False, capture=True).stdout.strip()
    assert kind == "swap", f"{device} holds {kind or 'no signature'}, not swap"


def check_guest(device: str, release, settings: GuestSettings) -> int:
    """Every change the guest configuration makes, read back from ``device`` with
    debugfs (no mount): files with their contents, links, directories, removals.
    Returns how many were checked."""
    tree = ext4edit.reader(device)
    ops = guest_files(release, settings, tree)
    written = {op.path for op in ops if isinstance(op, Write | Symlink)}
    for op in ops:
        parent, name = os.path.split(op.path)
        if isinstance(op, Write):
            got = tree.read(op.path)
            assert got == op.data.decode(errors="replace"), f"{op.path} in {device} is {got!r}"
        elif isinstance(op, Symlink | Mkdir):
            assert name in tree.listdir(parent), f"{op.path} is missing in {device}"
        elif isinstance(op, Remove) and op.path not in written:
            assert name not in tree.listdir(parent), f"{op.path} is still in {device}"
    assert tree.read("/etc/hostname") == settings.hostname.split(".", 1)[0] + "\n"
    return len(ops)


def _origin(name: str) -> str:
    return run(["lvs", "--noheadings", "-o", "origin", f"{VG}/{name}"], capture=True).stdout.strip()


def _settings(spec, hostname: str, ip: str) -> GuestSettings:
    return GuestSettings(hostname, Network.make(ip=ip, gateway="192.0.2.1", dns=["192.0.2.53"]), swap=True,
                         apt_sources=apt_sources(spec.release, spec.mirror, spec.components))


def check(disk: str, seed_dir: str | os.PathLike, work_parent: str = WORK_PARENT) -> None:
    from provision.proof.indom0.lvmcheck import expect_refused
    from provision.storage import lv_exists, pvcreate, remove_lv, snapshot_usage, vg_free, vgcreate

    start = time.monotonic()

    def took() -> str:
        return f"{time.monotonic() - start:.0f}s"

    require(*TOOLS)
    with UndoStack() as undo:
        work = Path(tempfile.mkdtemp(prefix="xen-provision-lvcheck.", dir=work_parent))
        undo.cleanup(f"remove {work}", remove_tree, str(work))
        # Our own cache and templates: the seeded base only, nothing of dom0's.
        os.environ["XEN_PROVISION_CACHE"] = str(work / "cache")
        os.environ["XEN_PROVISION_TEMPLATES"] = str(work / "templates")
        spec = basecache.import_entry(seed_dir)
        meta = basecache.entry_for(spec).info()
        _ok(f"seeded base: {spec.release} {spec.arch} {spec.variant} from {spec.mirror}, made with "
            f"{spec.made_with} ({meta['size'] >> 20} MiB)")
        # image unpacks the base on /dev/shm when it has room, else in its spill
        # directory: here that is a tmpfs of the check's own (dom0's 1 GiB leaves /dev/shm
        # too small; on its disk, unpacking took twice as long, measured).
        scratch = spill_dir()
        scratch.mkdir(parents=True, exist_ok=True)
        room = (2 * meta["unpacked_bytes"] >> 20) + 128
        run(["mount", "-t", "tmpfs", "-o", f"size={room}M,mode=0700", "tmpfs", str(scratch)], quiet=True)
        undo.cleanup(f"unmount {scratch}", _quiet, ["umount", str(scratch)])

        pvcreate([disk])
        undo.cleanup(f"remove the PV on {disk}", _quiet, ["pvremove", "-y", "-ff", disk])
        vgcreate(VG, [disk])
        undo.cleanup(f"remove {VG}", _quiet, ["vgremove", "-y", "-f", VG])
        root = smallest_size(meta)
        need = 2 * root + 2 * SWAP + SNAPSHOT_ROOM
        if vg_free(VG) < need:
            raise ProvisionError(f"{disk} is too small: the check needs {format_size(need)} in {VG}, "
                                 f"{format_size(vg_free(VG))} free", hint="give it a scratch disk of 2G")
        _ok(f"PV and VG {VG} on {disk} ({vg_free(VG) >> 20} MiB free)")

        # image --debootstrap SUITE --lv VG/lvguest1 --swap 32M, from the cache only.
        first = _settings(spec, "lvguest1", "192.0.2.21/24")
        info = build(spec, first, Target.lv(f"{VG}/lvguest1", root, swap=SWAP), quiet=True, offline=True)
        assert info["base"]["cache"] == "hit", f"the base came from '{info['base']['cache']}', not the cache"
        _ok(f"image --debootstrap {spec.suite} --lv {VG}/lvguest1 ({root >> 20} MiB) --swap {SWAP >> 20}M, "
            f"base from the seeded cache ({took()})")
        n = check_guest(_lv("lvguest1"), spec.release, first)
        guest1 = ext4edit.reader(_lv("lvguest1"))
        net = guest1.read("/etc/systemd/network/50-xen-vif.network") or ""
        fstab = guest1.read("/etc/fstab") or ""
        assert "Address=192.0.2.21/24" in net, f"network file: {net!r}"
        assert "/dev/xvda1" in fstab and "/dev/xvda2" in fstab, f"fstab: {fstab!r}"
        _fsck_clean(_lv("lvguest1"))
        _swap_signature(_lv("lvguest1-swap"))
        _ok(f"read back with debugfs: {n} configured files, links and removals; e2fsck -fn clean; "
            "swap signature on the swap LV")

        # As if it had booted once: systemd wrote its machine-id. A clone must not keep it.
        machine_id = secrets.token_hex(16) + "\n"
        ext4edit.apply(_lv("lvguest1"), [Write("/etc/machine-id", machine_id.encode(), 0o444)])
        tpl = str(templates.save(TEMPLATE, info, vg=VG))
        assert tpl == _lv(templates.template_lv(TEMPLATE)), tpl
        _fsck_clean(tpl)
        assert ext4edit.reader(tpl).read("/etc/machine-id") == machine_id, "the template lacks the guest's machine-id"
        _ok(f"saved as LV template {VG}/{templates.template_lv(TEMPLATE)} (e2image copy); e2fsck -fn clean ({took()})")

        # image --from-template NAME --lv VG/lvguest2 --snapshot-size 64M --swap 32M
        second = _settings(spec, "lvguest2", "192.0.2.22/24")
        new = templates.instantiate(TEMPLATE, second, Target.lv(f"{VG}/lvguest2", None, swap=SWAP),
                                    snapshot_size=SNAPSHOT_ROOM)
        assert _origin("lvguest2") == templates.template_lv(TEMPLATE), f"origin: {_origin('lvguest2')!r}"
        assert new["base"]["template"] == TEMPLATE and new["disks"][0]["path"] == _lv("lvguest2"), new["disks"]
        n = check_guest(_lv("lvguest2"), spec.release, second)
        clone, origin = ext4edit.reader(_lv("lvguest2")), ext4edit.reader(tpl)
        assert "192.0.2.22\tlvguest2" in (clone.read("/etc/hosts") or ""), clone.read("/etc/hosts")
        assert clone.read("/etc/machine-id") == "", f"the clone kept machine-id {clone.read('/etc/machine-id')!r}"
        assert origin.read("/etc/hostname") == "lvguest1\n", "the snapshot changed its template"
        assert origin.read("/etc/machine-id") == machine_id, "the snapshot changed its template's machine-id"
        _fsck_clean(_lv("lvguest2"))
        _swap_signature(_lv("lvguest2-swap"))
        usage = snapshot_usage(VG, "lvguest2")
        _ok(f"--from-template as a snapshot of {VG}/{templates.template_lv(TEMPLATE)}: {n} per-guest files "
            f"re-applied (hostname lvguest2, machine-id emptied; the template keeps lvguest1 and its id); "
            f"e2fsck -fn clean; swap LV; {usage:.1f}% of {SNAPSHOT_ROOM >> 20} MiB used ({took()})")

        expect_refused("a guest LV that exists", templates.instantiate, TEMPLATE, second,
                       Target.lv(f"{VG}/lvguest2", None), snapshot_size=SNAPSHOT_ROOM, report=_ok)
        expect_refused("a snapshot without a size", templates.instantiate, TEMPLATE, second,
                       Target.lv(f"{VG}/lvguest3", None), report=_ok)
        expect_refused("a template name that is taken", templates.save, TEMPLATE, info, vg=VG, report=_ok)
        assert not lv_exists(VG, "lvguest3"), "a refused guest left its LV"

        _update_lv(work)
        _ok(f"image update {_lv('lvguest1')}: apt in the mounted LV's chroot upgraded xp-update-probe 1 -> 2 "
            f"from a repository in the guest; e2fsck clean ({took()})")
        _lifecycle(work / "root")
        _ok(f"domain create --from-image /dev/{VG}/lvguest1, domain list --json, domain remove --purge "
            f"(lvremove of its LV and swap LV; the other guests' LVs kept) ({took()})")

        for name in ("lvguest2-swap", "lvguest2", templates.template_lv(TEMPLATE)):
            remove_lv(VG, name)
    assert run(["pvs", disk], check=False, capture=True).returncode != 0, f"{disk} is still a PV"
    assert not work.exists(), f"{work} is left behind"
    _ok("everything removed")


PROBE = "xp-update-probe"


def _probe_deb(work: Path, version: str) -> Path:
    """A tiny package of ours, built with dpkg-deb (dom0 has no mirror to upgrade from)."""
    tree = work / f"{PROBE}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {PROBE}\nVersion: {version}\nArchitecture: all\nMaintainer: xen-provision <root@localhost>\n"
        f"Description: image update probe, version {version}\n")
    deb = work / f"{PROBE}_{version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], quiet=True)
    return deb


def _update_lv(work: Path) -> None:
    """``image update`` of an LV guest, for real: version 1 of a probe package installed in
    the guest, version 2 in a flat repository inside the guest, which its sources.list
    names; after the update dpkg has version 2."""
    import hashlib
    import shutil

    from provision.guest.chroot import chrooted
    from provision.proof.indom0.lvmcheck import _provision

    old, new = _probe_deb(work, "1"), _probe_deb(work, "2")
    with chrooted(_lv("lvguest1")) as guest:
        repo = guest.path("/var/local/xp-repo")
        repo.mkdir(parents=True)
        shutil.copy(old, guest.path(f"/var/local/{old.name}"))
        guest.run(["dpkg", "-i", f"/var/local/{old.name}"], quiet=True)
        guest.path(f"/var/local/{old.name}").unlink()
        shutil.copy(new, repo / new.name)
        data = new.read_bytes()
        control = (work / f"{PROBE}-2/DEBIAN/control").read_text()
        (repo / "Packages").write_text(f"{control}Filename: ./{new.name}\nSize: {len(data)}\n"
                                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n")
        for listed in guest.path("/etc/apt/sources.list.d").glob("*"):
            listed.unlink()
        guest.path("/etc/apt/sources.list").write_text("deb [trusted=yes] file:/var/local/xp-repo ./\n")
    proc = _provision("image", "update", _lv("lvguest1"))
    assert proc.returncode == 0, f"image update {_lv('lvguest1')}: {proc.stderr.strip()[-600:]}"
    status = ext4edit.reader(_lv("lvguest1")).read("/var/lib/dpkg/status") or ""
    stanza = next((s for s in status.split("\n\n") if s.startswith(f"Package: {PROBE}\n")), "")
    assert "\nVersion: 2\n" in stanza + "\n", f"after image update, dpkg has: {stanza!r}"


def _lifecycle(root: Path) -> None:
    """The guest lifecycle commands on an LV guest, as an administrator types them: a
    domain config from the image's facts, ``domain list --json`` (LV backing and size),
    ``domain remove --purge`` (lvremove of what image made for it, nothing else)."""
    import json

    from provision.proof.indom0.lvmcheck import _provision
    from provision.storage import lv_exists

    (root / "etc/xen").mkdir(parents=True)
    # The guest's vif joins xenbr0 (xl.conf's default bridge), which the root must configure.
    proc = _provision("network", "bridge", "--root", str(root), "--uplink", "eth0", "--ip", "192.0.2.1/24",
                      "--backend", "networkd")
    assert proc.returncode == 0, f"network bridge --root {root}: {proc.stderr.strip()}"
    proc = _provision("domain", "create", "--root", str(root), "--from-image", _lv("lvguest1"),
                      "--kernel", "/boot/vmlinuz-xenU", "--no-kernel-check", "--memory", "128")
    assert proc.returncode == 0, f"domain create --from-image {_lv('lvguest1')}: {proc.stderr.strip()}"
    proc = _provision("domain", "list", "--root", str(root), "--json")
    assert proc.returncode == 0, f"domain list --json: {proc.stderr.strip()}"
    [guest] = json.loads(proc.stdout)["domains"]
    disks = {d["vdev"]: d for d in guest["disks"]}
    assert guest["name"] == "lvguest1" and set(disks) == {"xvda1", "xvda2"}, guest
    assert all(d["backing"] == "lv" and d["owned"] for d in disks.values()), disks
    assert disks["xvda2"]["size"] == SWAP, disks["xvda2"]
    proc = _provision("domain", "remove", "lvguest1", "--purge", "--root", str(root))
    assert proc.returncode == 0, f"domain remove --purge: {proc.stderr.strip()}"
    assert not lv_exists(VG, "lvguest1") and not lv_exists(VG, "lvguest1-swap"), "--purge left an LV"
    assert lv_exists(VG, "lvguest2") and lv_exists(VG, templates.template_lv(TEMPLATE)), \
        "--purge removed another guest's LV"
    assert not (root / "etc/xen/lvguest1.cfg").exists(), "--purge left the config"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python3 -m provision.proof.indom0.lvcheck",
                                description="image --debootstrap into LVM for real on an empty scratch disk")
    p.add_argument("disk", help="an empty scratch disk (overwritten), e.g. /dev/vde")
    p.add_argument("--seed", required=True, metavar="DIR", help="the directory lvcheck.seed() filled on the host")
    p.add_argument("--work", default=WORK_PARENT, metavar="DIR",
                   help=f"where the check keeps its cache and templates ({WORK_PARENT})")
    args = p.parse_args(argv)
    try:
        if not stat.S_ISBLK(os.stat(args.disk).st_mode):
            raise ProvisionError(f"{args.disk} is not a block device")
    except OSError as e:
        print(f"{FAIL} {args.disk}: {e.strerror}", flush=True)
        return 2
    except ProvisionError as e:
        print(f"{FAIL} {e.message}", flush=True)
        return 2
    return verdict(lambda: check(args.disk, args.seed, args.work), OK, FAIL)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
