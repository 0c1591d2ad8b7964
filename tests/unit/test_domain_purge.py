"""``domain remove NAME --purge`` on files in a throw-away root (no root privileges):
what goes (only what `image` made for the guest, as its facts file records), what is
kept, what is refused with nothing changed, and an interrupted purge that a second one
finishes. Real images and `image` itself: tests/integration/test_domain_purge.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from provision.domain import remove as remover
from provision.domain.paths import Paths
from provision.errors import ProvisionError
from tests.unit import guests

KERNEL = "/boot/vmlinuz-xenU"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def web(run_cli, root):
    """web1 from an image with swap, autostarted, plus a disk of its own that no image made;
    and another guest, db, with its own image."""
    images = root / "var/lib/xen/images"
    img = guests.image(images, "web1")
    foreign = root / "srv/data.img"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"data")
    run_cli("domain", "create", "--root", root, "--from-image", img, "--memory", "256", "--kernel", KERNEL,
            "--autostart", "--disk", "format=raw, vdev=xvda1, access=rw, target=/var/lib/xen/images/web1.img",
            "--disk", "format=raw, vdev=xvda2, access=rw, target=/var/lib/xen/images/web1-swap.img",
            "--disk", "format=raw, vdev=xvdb, access=rw, target=/srv/data.img", check=True)
    db = guests.image(images, "db", address="192.0.2.11/24")
    run_cli("domain", "create", "--root", root, "--from-image", db, "--memory", "256", "--kernel", KERNEL, check=True)
    return img


def web_gone(root: Path) -> None:
    images = root / "var/lib/xen/images"
    assert sorted(p.name for p in images.iterdir()) == ["db-swap.img", "db.img", "db.img.json"]
    assert sorted(p.name for p in (root / "etc/xen").iterdir()) == ["auto", "db.cfg"]
    assert list((root / "etc/xen/auto").iterdir()) == []
    assert (root / "srv/data.img").read_bytes() == b"data"


def _mac(cfg: Path) -> str:
    return cfg.read_text().split("mac=")[1].split(",")[0].split('"')[0]


def test_purge_removes_what_image_made_and_keeps_the_rest(run_cli, root, web):
    mac = _mac(root / "etc/xen/web1.cfg")
    proc = run_cli("domain", "remove", "--root", root, "web1", "--purge")
    assert proc.returncode == 0, proc.stderr
    web_gone(root)
    err = proc.stderr
    assert f"removed {root}/etc/xen/auto/web1.cfg (starts it at boot)\n" in err
    assert f"removed {web} (root, 64MiB, made by image: {web}.json)\n" in err
    assert f"removed {web}.json (the image's facts file)\n" in err
    assert f"kept: {root}/srv/data.img (xvdb: not made for web1 by image)\n" in err
    assert f"frees MAC {mac})" in err
    # Its MAC is free again: the next guest gets it (the search is deterministic per host).
    run_cli("domain", "create", "--root", root, "--name", "web3", "--memory", "64", "--kernel", KERNEL,
            "--vif", "bridge=xenbr0", check=True)
    assert _mac(root / "etc/xen/web3.cfg") == mac


def test_dry_run_lists_everything_and_changes_nothing(run_cli, root, web):
    before = guests.snapshot(root)
    proc = run_cli("domain", "remove", "--root", root, "web1", "--purge", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert guests.snapshot(root) == before
    lines = proc.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"would remove: {root}/etc/xen/auto/web1.cfg", f"would remove: {root}/etc/xen/web1.cfg",
        f"would remove: {web}", f"would remove: {root}/var/lib/xen/images/web1-swap.img",
        f"would remove: {web}.json", f"kept: {root}/srv/data.img"]
    # Without --purge: the config and its link only.
    proc = run_cli("domain", "remove", "--root", root, "web1", "--dry-run")
    assert proc.stdout == f"would remove: {root}/etc/xen/auto/web1.cfg\nwould remove: {root}/etc/xen/web1.cfg\n"
    assert guests.snapshot(root) == before


def refused(run_cli, root, *args, env=None) -> str:
    before = guests.snapshot(root)
    proc = run_cli("domain", "remove", *args, env=env)
    assert proc.returncode != 0 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert guests.snapshot(root) == before
    return errors[0]


def test_unknown_name(run_cli, root, web):
    assert refused(run_cli, root, "--root", root, "nosuch", "--purge") == \
        f"error: no domain config {root}/etc/xen/nosuch.cfg"
    assert "is not valid" in refused(run_cli, root, "--root", root, "../x", "--purge")


def test_a_disk_another_domain_uses_is_refused(run_cli, root, web):
    # db's config also names web1's swap: --purge would pull it from under db.
    cfg = root / "etc/xen/db.cfg"
    cfg.write_text(cfg.read_text().replace(
        "disk = [", 'disk = [\n    "format=raw, vdev=xvdc, access=ro, target=/var/lib/xen/images/web1-swap.img",'))
    line = refused(run_cli, root, "--root", root, "web1", "--purge")
    assert line == f"error: {root}/var/lib/xen/images/web1-swap.img is used read-only by domain db ({cfg})"
    # Without --purge the config goes and the disks stay.
    run_cli("domain", "remove", "--root", root, "web1", check=True)
    assert web.is_file() and not (root / "etc/xen/web1.cfg").exists()


def test_a_running_domain_is_refused(run_cli, tmp_path):
    """On the live host (--root /, configs in --config-dir), xl list says it runs."""
    img = guests.image(tmp_path / "images", "vm1")
    xen = tmp_path / "xen"
    xen.mkdir()
    (xen / "vm1.cfg").write_text(f'name = "vm1"\nmemory = 128\nkernel = "/k"\n'
                                 f'disk = [ "format=raw, vdev=xvda1, access=rw, target={img}" ]\n')
    env = guests.xl_stub(tmp_path / "bin", {"vm1": 5})
    line = refused(run_cli, tmp_path, "--config-dir", xen, "vm1", "--purge", env=env)
    assert line == "error: domain vm1 is running (domid 5)"
    env = guests.xl_stub(tmp_path / "bin2", {"other": 6})
    proc = run_cli("domain", "remove", "--config-dir", xen, "vm1", "--purge", env=env, check=True)
    # Its config does not use the swap the facts record: the facts alone remove nothing.
    swap = tmp_path / "images/vm1-swap.img"
    assert [p.name for p in tmp_path.joinpath("images").iterdir()] == [swap.name] and list(xen.iterdir()) == []
    assert f"kept: {swap} (swap of {img}.json, which vm1's config does not use)" in proc.stderr


def test_nfs_root_tree_and_its_export_line(run_cli, root):
    tree = guests.tree(root / "export", "nfs1")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/exports").write_text("/srv/share 192.0.2.0/24(ro,sync)\n")
    run_cli("domain", "create", "--root", root, "--name", "nfs1", "--memory", "256", "--kernel", KERNEL,
            "--nfs-server", "192.0.2.1", "--nfs-root", "/export/nfs1", "--ip", "192.0.2.20/24", "--exports",
            "--bridge", "xenbr0", check=True)
    assert "/export/nfs1 192.0.2.20(rw," in (root / "etc/exports").read_text()
    dry = run_cli("domain", "remove", "--root", root, "nfs1", "--purge", "-n", check=True).stdout
    assert (f"would remove: '/export/nfs1 192.0.2.20(rw,sync,no_root_squash,no_subtree_check)' from "
            f"{root}/etc/exports (its NFS root's export)\n") in dry
    assert f"would remove: {tree} (its NFS root tree, made by image: {tree}.json)\n" in dry
    run_cli("domain", "remove", "--root", root, "nfs1", "--purge", check=True)
    assert not tree.exists() and not Path(f"{tree}.json").exists()
    assert (root / "etc/exports").read_text() == "/srv/share 192.0.2.0/24(ro,sync)\n"


def test_a_tree_not_made_by_image_is_kept(run_cli, root):
    (root / "export/mine/etc").mkdir(parents=True)
    run_cli("domain", "create", "--root", root, "--name", "nfs2", "--memory", "256", "--kernel", KERNEL,
            "--nfs-server", "192.0.2.1", "--nfs-root", "/export/mine", "--ip", "192.0.2.21/24",
            "--bridge", "xenbr0", check=True)
    proc = run_cli("domain", "remove", "--root", root, "nfs2", "--purge", check=True)
    assert f"kept: {root}/export/mine (its NFS root: not made for nfs2 by image)" in proc.stderr
    assert (root / "export/mine/etc").is_dir()


def test_lv_disks_are_planned_for_lvremove(root, run_cli, tmp_path, monkeypatch):
    """image --lv keeps the facts in the cache; no device-mapper here, so only the plan."""
    from provision.guest.build import Target

    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    target = Target.lv("vg0/lvm1", "1G", swap="128M")
    Path(target.sidecar).parent.mkdir(parents=True)
    Path(target.sidecar).write_text(json.dumps(guests._facts(target, "lvm1", None)))
    run_cli("domain", "create", "--root", root, "--from-image", "/dev/vg0/lvm1", "--memory", "256",
            "--kernel", KERNEL, "--bridge", "xenbr0", env={"XEN_PROVISION_CACHE": str(tmp_path / "cache")}, check=True)
    p = remover.plan(Paths(root=root), "lvm1")
    assert [(s.kind, s.path) for s in p.steps] == [
        ("config", str(root / "etc/xen/lvm1.cfg")), ("lv", "vg0/lvm1"), ("lv", "vg0/lvm1-swap"),
        ("facts", target.sidecar)]
    assert p.kept == []


# -- interruption ----------------------------------------------------------------------------------

def _steps(root: Path) -> int:
    return len(remover.plan(Paths(root=root), "web1").steps)


def test_interrupted_at_every_step_a_second_purge_finishes(run_cli, root, web, monkeypatch):
    """Raised in the middle after each step n: what is left is the whole guest or a
    remainder without a config that the plan names; a second --purge finishes it."""
    import shutil

    pristine = root.parent / "pristine"
    shutil.copytree(root, pristine, symlinks=True)
    total = _steps(root)
    assert total == 5
    for n in range(0, total + 1):
        shutil.rmtree(root)
        shutil.copytree(pristine, root, symlinks=True)

        def stop(step, n=n):
            if step == n:
                raise KeyboardInterrupt

        monkeypatch.setattr(remover, "after_step", stop)
        if n == 0:  # before the plan is written: nothing changed
            monkeypatch.setattr(remover, "atomic_write", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            remover.purge(Paths(root=root), "web1")
        monkeypatch.undo()
        journal = root / "etc/xen/.web1.purge.json"
        if n == 0:
            assert guests.snapshot(root) == guests.snapshot(pristine)
        else:
            assert journal.is_file()
            assert not (root / "etc/xen/auto/web1.cfg").is_symlink() or (root / "etc/xen/web1.cfg").is_file()
            if n >= 2:
                assert not (root / "etc/xen/web1.cfg").exists()
            # A plain remove says what to do instead of "no such config".
            if n >= 2:
                proc = run_cli("domain", "remove", "--root", root, "web1")
                assert proc.returncode != 0 and "domain remove web1 --purge" in proc.stderr
        proc = run_cli("domain", "remove", "--root", root, "web1", "--purge")
        assert proc.returncode == 0, (n, proc.stderr)
        web_gone(root)
        assert not journal.exists()


def test_killed_mid_purge_then_finished(root, web):
    """SIGKILL (no handler runs) while paused after step 3; the second run finishes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), XEN_PROVISION_PAUSE_AT="purge-step-3")
    p = subprocess.Popen([sys.executable, "-m", "provision", "domain", "remove", "--root", str(root), "web1",
                          "--purge"], env=env, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "paused at purge-step-3" not in seen:
        line = p.stderr.readline()
        assert line, seen
        seen += line
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (root / "etc/xen/web1.cfg").exists() and not web.exists()
    assert (root / "var/lib/xen/images/web1-swap.img").exists() and Path(f"{web}.json").exists()
    proc = subprocess.run([sys.executable, "-m", "provision", "domain", "remove", "--root", str(root), "web1",
                           "--purge"], env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "taking up the interrupted purge of web1" in proc.stderr
    web_gone(root)


def test_sigint_mid_purge_says_how_to_finish(root, web):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XEN_PROVISION_PAUSE_AT="purge-step-2")
    p = subprocess.Popen([sys.executable, "-m", "provision", "domain", "remove", "--root", str(root), "web1",
                          "--purge"], env=env, stderr=subprocess.PIPE, text=True)
    while "paused at purge-step-2" not in p.stderr.readline():
        pass
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait() == 130
    assert "domain remove web1 --purge again finishes it" in err, err
    assert f"error: interrupted after these were finished and kept: the removal of {root}/etc/xen/auto/web1.cfg" in err


def test_a_plan_of_an_earlier_guest_is_not_applied_to_a_new_one(root, web, monkeypatch):
    monkeypatch.setattr(remover, "after_step", lambda n: (_ for _ in ()).throw(KeyboardInterrupt()) if n == 1 else None)
    with pytest.raises(KeyboardInterrupt):
        remover.purge(Paths(root=root), "web1")
    monkeypatch.undo()
    cfg = root / "etc/xen/web1.cfg"
    cfg.write_text(cfg.read_text().replace("memory = 256", "memory = 128"))
    with pytest.raises(ProvisionError, match="plan of an interrupted purge of an earlier 'web1'"):
        remover.purge(Paths(root=root), "web1")
    assert web.exists()
