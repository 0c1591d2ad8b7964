"""The image pipeline as one list of steps: the dry run's plan and the real run walk the
same list; settings are parsed once at the edge and the target is the one source of the
fstab's filesystem type and swap."""

from __future__ import annotations

import argparse

import pytest

from provision import steps
from provision.errors import ProvisionError
from provision.guest import cli
from provision.guest.bootstrap import resolve
from provision.guest.build import Build
from provision.guest.configure import GuestSettings
from provision.guest.target import Target


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XEN_PROVISION_TEMPLATES", str(tmp_path / "tpl"))


def _names(job: Build, **kw) -> list[str]:
    return [s.name for s in job.steps(**kw)]


@pytest.mark.parametrize("target,miss,hit", [
    (lambda d: Target.file(d / "a.img", "1G", swap="64M"), ["base", "filesystem", "swap", "sidecar"],
     ["clone", "swap", "sidecar"]),
    (lambda d: Target.file(d / "a.img", "1G"), ["base", "filesystem", "sidecar"], ["clone", "sidecar"]),
    (lambda d: Target.file(d / "a.img", "1G", preallocate=True), ["base", "configure", "target", "sidecar"], None),
    (lambda d: Target.disk(d / "a.img", "1G", swap="64M"), ["base", "configure", "target", "sidecar"], None),
    (lambda d: Target.dir(d / "root"), ["base", "configure", "target", "sidecar"], None),
    (lambda d: Target.lv("vg0/vm1", "1G", swap="64M"), ["base", "configure", "target", "sidecar"], None),
])
def test_each_target_has_its_steps(tmp_path, target, miss, hit):
    job = Build(resolve("bookworm"), GuestSettings("vm1"), target(tmp_path))
    assert _names(job, fs_hit=False, base_hit=False) == miss
    if hit:
        assert _names(job, fs_hit=True, base_hit=True) == hit


def test_the_plan_is_the_steps_descriptions(tmp_path):
    job = Build(resolve("bookworm"), GuestSettings("vm1"), Target.file(tmp_path / "a.img", "1G", swap="64M"))
    plan = job.plan()
    described = steps.describe(job.steps(fs_hit=False, base_hit=False))
    assert plan[-len(described):] == described
    assert plan[0].startswith("release:  Debian 12 (bookworm)")
    assert f"write:    {tmp_path / 'a.img.json'}" == plan[-1]


def test_a_run_times_every_step_also_the_one_that_fails():
    seconds: dict[str, float] = {}
    done = []

    def fail(state):
        raise ProvisionError("no")

    with pytest.raises(ProvisionError):
        steps.run([steps.Step("one", None, (), done.append), steps.Step("two", "Two", (), fail),
                   steps.Step("three", None, (), done.append)], "state", seconds)
    assert done == ["state"] and list(seconds) == ["one", "two"]
    assert steps.table({"one": 1.25, "two": 0.0}) == "one 1.2s, two 0.0s"


def test_the_target_is_the_one_source_of_fstype_and_swap(tmp_path):
    target = Target.file(tmp_path / "a.img", "1G", swap="64M", fstype="ext3")
    job = Build(resolve("bookworm"), GuestSettings("vm1", fstype="ext4", swap=False), target)
    assert (job.settings.fstype, job.settings.swap) == ("ext3", True)
    tree = GuestSettings("vm1", swap=True).on(Target.dir(tmp_path / "d"))
    assert (tree.swap, tree.nfs_root, tree.root_spec) == (False, True, None)


def _args(tmp_path, *argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["image", *map(str, argv)])


def test_image_arguments_are_parsed_once_into_a_frozen_object(tmp_path):
    args = _args(tmp_path, "--debootstrap", "sarge", "--file", tmp_path / "s.img", "--size", "512M",
                 "--swap", "64M", "--hostname", "s1")
    before = dict(vars(args))
    s = cli.parse(args)
    assert vars(args) == before  # nothing written into the arguments
    assert (s.target.size, s.target.swap, s.target.fstype) == (512 << 20, 64 << 20, "ext3")
    assert (s.guest.fstype, s.guest.swap, s.guest.hostname) == ("ext3", True, "s1")
    assert s.spec.suite == "sarge" and s.spec.arch == "i386"
    with pytest.raises(AttributeError):
        s.dry_run = True  # frozen


def test_a_template_saved_in_the_guests_vg_reserves_room(tmp_path):
    args = _args(tmp_path, "--debootstrap", "bookworm", "--lv", "vg0/vm1", "--size", "1G",
                 "--save-template", "web", "--dry-run")
    assert cli.parse(args).reserve == 1 << 30
    args = _args(tmp_path, "--debootstrap", "bookworm", "--file", tmp_path / "a.img", "--dry-run")
    assert cli.parse(args).reserve == 0
