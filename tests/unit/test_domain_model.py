"""Disk and vif specs, settings validation, MAC generation and the lock."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from provision.domain import macs
from provision.domain.model import Domain, parse_disk, parse_vif
from provision.domain.paths import Paths
from provision.errors import ProvisionError


@pytest.mark.parametrize(
    "spec, target, vdev, access, fmt",
    [
        ("format=raw, vdev=xvda1, access=rw, target=/srv/a.img", "/srv/a.img", "xvda1", "rw", "raw"),
        ("vdev=xvdb, target=/srv/with,comma.img", "/srv/with,comma.img", "xvdb", "rw", "raw"),
        ("/dev/vg/guest,raw,xvda,ro", "/dev/vg/guest", "xvda", "ro", "raw"),
        ("/img/a.qcow2,qcow2,xvdc", "/img/a.qcow2", "xvdc", "rw", "qcow2"),
        ("phy:hda3,sda1,w", "/dev/hda3", "sda1", "rw", "raw"),       # xm's legacy form
        ("phy:vg/lvm1,sda2,w", "/dev/vg/lvm1", "sda2", "rw", "raw"),
        ("file:/full/path/to/vm1disk,sda1,r", "/full/path/to/vm1disk", "sda1", "ro", "raw"),
        ("tap:qcow2:/img/b.qcow2,xvdd,w", "/img/b.qcow2", "xvdd", "rw", "qcow2"),
    ],
)
def test_disk_specs(spec, target, vdev, access, fmt):
    d = parse_disk(spec)
    assert (d.target, d.vdev, d.access, d.format) == (target, vdev, access, fmt)
    assert parse_disk(d.spec) == d  # our written form reads back the same


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "is empty"),
        ("vdev=xvda", "has no target"),
        ("target=/x", "has no vdev"),
        ("vdev=xvda, access=maybe, target=/x", "access 'maybe'"),
        ("vdev=fd0, target=/x", "not a virtual device name"),
        ("vdev=xvda, format=vmdk, target=/x", "format 'vmdk'"),
        ("vdev=xvda, colour=red, target=/x", "unknown key 'colour'"),
    ],
)
def test_bad_disk_specs(spec, message):
    with pytest.raises(ProvisionError, match=message):
        parse_disk(spec)


def test_vifs():
    v = parse_vif("bridge=xenbr0 ,  mac=00:16:3E:AA:bb:cc, ip=10.0.0.2")
    assert v.spec == "mac=00:16:3e:aa:bb:cc, bridge=xenbr0, ip=10.0.0.2"
    assert parse_vif("").spec == ""
    for spec, message in [("mac=01:00:00:00:00:01", "multicast"), ("mac=00:16:3e:00:01", "is not valid"),
                          ("mac=00:16:3e:00:00:01:02", "is not valid"), ("brige=xenbr0", "did you mean 'bridge'"),
                          ("ip=10.0.0.300", "not a valid IP"), ("bridge", "not key=value")]:
        with pytest.raises(ProvisionError, match=message):
            parse_vif(spec)


BASE = {"name": "vm", "memory": 64, "kernel": "/k"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"memroy": 64}, "unknown key 'memroy' \\(did you mean 'memory'\\?\\)"),
        ({"on_crashh": "destroy"}, "did you mean 'on_crash'"),
        ({"nfs_server": "1.2.3.4"}, "'nfs_server' is an xm setting"),
        ({"memory": "lots"}, "memory 'lots' is not a number"),
        ({"memory": ["64"]}, "must be a number"),
        ({"memory": 8}, "too small"),
        ({"maxmem": 32}, "maxmem 32 is below memory 64"),
        ({"type": "xen"}, "type 'xen'"),
        ({"name": "a b"}, "domain name 'a b' is not valid"),
        ({"kernel": ""}, "needs a kernel or a bootloader"),
        ({"disk": ["vdev=xvda, target=/a", "vdev=xvda, target=/b"]}, "vdev 'xvda' is used by two disks"),
        ({"disk": "vdev=xvda, target=/a"}, "'disk' must be a list"),
    ],
)
def test_bad_settings(change, message):
    with pytest.raises(ProvisionError, match=message):
        Domain.from_config({**BASE, **change}, "t.cfg")


def test_memory_sizes_and_passthrough():
    d = Domain.from_config({**BASE, "memory": "1G", "maxmem": "2048", "cpus": "0-1", "vcpus": "2"}, "t")
    assert (d.memory, d.maxmem, d.vcpus) == (1024, 2048, 2)
    assert d.other == {"cpus": "0-1"}  # known to xl, not modelled: kept as written
    assert Domain.from_config({**BASE, "kernel": "", "bootloader": "pygrub"}, "t").bootloader == "pygrub"


def test_mac_generation(tmp_path):
    paths = Paths(root=tmp_path)
    first = macs.generate(paths, set())
    assert first[0].startswith("00:16:3e:")
    assert macs.generate(paths, set()) == first  # deterministic for this host
    two = macs.generate(paths, set(first), count=2)
    assert first[0] not in two and len(set(two)) == 2
    assert macs.generate(paths, set(), prefix="02:00:00")[0].startswith("02:00:00:")
    assert macs.parse_prefix("02-AB-CD") == "02:ab:cd"
    for bad in ("01:00:00", "00:16", "zz:00:00", "00:11:22", "00:16:3f"):  # multicast, short, vendors' OUIs
        with pytest.raises(ProvisionError):
            macs.parse_prefix(bad)


def _hold_lock(path, ready, release):
    with macs.config_lock(Paths(root=Path(path))):
        ready.set()
        release.wait(10)


def test_lock_excludes_another_process(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        t0 = time.monotonic()
        timer = ctx.Process(target=lambda: (time.sleep(0.5), release.set()))
        timer.start()
        with macs.config_lock(Paths(root=tmp_path)):
            waited = time.monotonic() - t0
        timer.join()
        assert waited >= 0.4  # we got the lock only after the other process let go
    finally:
        release.set()
        holder.join(10)


# Top-level keys of xl.cfg(5) in Xen 4.17 (Debian bookworm's xen-utils-common) that a
# first key list missed; each must be accepted, not called a typo.
@pytest.mark.parametrize("key", ["pvshim", "pvshim_path", "pvshim_cmdline", "pvshim_extra", "nographic", "nx",
                                 "vpt_align", "vkb_device", "vmtrace_buf_kb", "xend_suspend_evtchn_compat"])
def test_less_common_xl_keys_are_known(key):
    assert Domain.from_config({**BASE, key: 1}, "t").other == {key: 1}
