"""A snapshot's fill level read from device-mapper's status line, as lvs computes it
(lvm2's _snap_target_percent); the lvm-check in the boot test's dom0 compares the two on
real snapshots."""

from __future__ import annotations

import pytest

from provision.storage import lvm


@pytest.mark.parametrize("status, percent", [
    ("0 131072 snapshot 16/32768 16", 0.0),             # only the exception store's header
    ("0 131072 snapshot 2064/32768 16", 2064 / 32768 * 100),
    ("0 131072 snapshot 32768/32768 16", 100.0),
    ("0 131072 snapshot Invalid", 100.0),                # filled and dropped by the kernel
    ("0 131072 snapshot 24/32768\n", 24 / 32768 * 100),  # old kernels: no metadata field
])
def test_a_snapshot_status_gives_its_fill_level(status, percent):
    assert lvm.parse_snapshot_status(status) == pytest.approx(percent)


@pytest.mark.parametrize("status", [
    "",
    "0 131072 linear",
    "0 131072 snapshot-origin",
    "0 2097152 thin-pool 1 10/4096 0/1024 - rw discard_passdown queue_if_no_space - 1024",
    "0 131072 snapshot Merge failed",
    "0 131072 snapshot Unknown",
    "0 131072 snapshot 5/0 0",
])
def test_anything_else_is_left_to_lvs(status):
    assert lvm.parse_snapshot_status(status) is None


@pytest.mark.parametrize("vg, lv, name", [
    ("xpcheck", "clone1", "xpcheck-clone1"),
    ("my-vg", "guest-1-swap", "my--vg-guest--1--swap"),
])
def test_device_mapper_names_double_the_dashes(vg, lv, name):
    assert lvm.dm_name(vg, lv) == name
