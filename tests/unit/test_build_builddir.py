"""Build trees in the cache: keyed by inputs, reused when finished, seeded when new."""

from __future__ import annotations

import os

import pytest

from provision.build import builddir


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_same_inputs_same_output_and_reuse():
    a = builddir.output_dir("linux-xenU", {"source": "s1", "recipe": "r1"})
    assert builddir.output_dir("linux-xenU", {"recipe": "r1", "source": "s1"}) == a
    assert builddir.output_dir("linux-xenU", {"source": "s1", "recipe": "r2"}) != a
    assert builddir.reuse(a) is None
    a.mkdir()
    record = builddir.finish(a, {"release": "6.1.176-xenU"})
    assert builddir.reuse(a) == record and record["finished_at"] > 0


def test_work_tree_is_stable_and_publish_is_all_or_nothing(cache):
    work = builddir.work_dir("linux-xenU")
    assert work == builddir.work_dir("linux-xenU") and work.name == "linux-xenU.work"
    (work / "arch/x86/boot").mkdir(parents=True)
    (work / "arch/x86/boot/bzImage").write_text("bzImage")
    (work / "mods").mkdir()
    (work / "mods/modules.dep").write_text("")
    out = builddir.output_dir("linux-xenU", {"recipe": "r1"})
    builddir.publish(work, out, ["arch/x86/boot/bzImage", "?modules.order"], {"modules": work / "mods"})
    assert (out / "arch/x86/boot/bzImage").read_text() == "bzImage"
    assert (out / "modules/modules.dep").exists()
    assert not (out / "modules.order").exists()
    with pytest.raises(FileNotFoundError):
        builddir.publish(work, builddir.output_dir("linux-xenU", {"recipe": "r2"}), ["vmlinux"])
    assert not builddir.output_dir("linux-xenU", {"recipe": "r2"}).exists()


def test_build_once_builds_then_reuses_and_prunes(cache):
    calls = []

    def build(work, out):
        calls.append((work, out))
        out.mkdir()
        (out / "xen.gz").write_text("image")
        return {"dir": str(out), "version": "4.17.5"}

    old = builddir.output_dir("xen-hypervisor", {"fragment": "old"})
    for i, t in enumerate([old, *(builddir.output_dir("xen-hypervisor", {"n": n}) for n in range(3))]):
        t.mkdir(parents=True)
        builddir.finish(t, {})
        os.utime(t / builddir.DONE, (1000 + i, 1000 + i))
    first = builddir.build_once("xen-hypervisor", {"fragment": "f"}, "hypervisor", build)
    out = builddir.output_dir("xen-hypervisor", {"fragment": "f"})
    assert calls == [(builddir.work_dir("xen-hypervisor"), out)]
    assert first["dir"] == str(out) and first["finished_at"] > 0 and builddir.done(out) == first
    assert not old.exists()  # the oldest of four earlier trees went: three are kept
    again = builddir.build_once("xen-hypervisor", {"fragment": "f"}, "hypervisor", build)
    assert again == first and len(calls) == 1  # reused: not built again


def test_build_once_keeps_nothing_of_a_failed_build():
    def build(work, out):
        (work / "half.o").write_text("")
        raise RuntimeError("make failed")

    with pytest.raises(RuntimeError):
        builddir.build_once("linux-xenU", {"recipe": "r"}, "xenU", build)
    assert not builddir.output_dir("linux-xenU", {"recipe": "r"}).exists()
    assert (builddir.work_dir("linux-xenU") / "half.o").exists()  # make resumes from the work tree


def test_prune_keeps_the_newest_finished_trees():
    trees = []
    for i in range(5):
        t = builddir.output_dir("xen-hypervisor", {"fragment": str(i)})
        t.mkdir(parents=True)
        builddir.finish(t, {})
        os.utime(t / builddir.DONE, (1000 + i, 1000 + i))  # finished one after the other
        trees.append(t)
    # Reusing the oldest makes it the newest: it survives.
    assert builddir.reuse(trees[0]) is not None
    failed = builddir.output_dir("xen-hypervisor", {"fragment": "interrupted"})
    failed.mkdir()
    other = builddir.output_dir("xen-hypervisor-other", {"x": 1})
    other.mkdir()
    builddir.finish(other, {})
    builddir.prune("xen-hypervisor", keep=3)
    assert [t.exists() for t in trees] == [True, False, False, True, True]
    assert not failed.exists()
    assert other.exists()


def test_jobs_from_environment(monkeypatch):
    monkeypatch.setenv("XEN_PROVISION_JOBS", "3")
    assert builddir.jobs() == 3
    monkeypatch.setenv("XEN_PROVISION_JOBS", "zero")
    assert builddir.jobs() >= 1


def test_ccache_goes_on_path_unless_disabled(monkeypatch):
    monkeypatch.delenv("CCACHE_DISABLE", raising=False)
    env = builddir.build_env({"X": "1"})
    assert env["X"] == "1"
    if (builddir.CCACHE_DIR / "gcc").exists():
        assert env["PATH"].startswith(f"{builddir.CCACHE_DIR}:")
    monkeypatch.setenv("CCACHE_DISABLE", "1")
    assert "PATH" not in builddir.build_env()
