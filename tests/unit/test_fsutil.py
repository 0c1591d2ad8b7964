"""Paths inside an offline root: symlinks resolve as a chroot would see them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision.fsutil import within


def test_absolute_links_start_again_at_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-6.1-xen0").write_bytes(b"k")
    os.symlink("/usr/lib", root / "lib")                       # absolute: the host's /usr/lib
    os.symlink("/boot/vmlinuz-6.1-xen0", root / "boot/vmlinuz")
    assert within(root, "/lib/systemd/x.service") == root / "usr/lib/systemd/x.service"
    # The last component is a link: kept (a write replaces the link), or followed to read.
    assert within(root, "/boot/vmlinuz") == root / "boot/vmlinuz"
    assert within(root, "/boot/vmlinuz", follow=True) == root / "boot/vmlinuz-6.1-xen0"
    assert within(root, "/boot/vmlinuz", follow=True).is_file()


def test_dotdot_and_relative_links_never_leave_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("../../../../..", root / "etc/up")
    os.symlink("/../../etc", root / "escape")
    assert within(root, "/etc/up/passwd") == root / "passwd"
    assert within(root, "/../../etc/passwd") == root / "etc/passwd"
    assert within(root, "/escape/passwd") == root / "etc/passwd"


def test_a_link_loop_is_an_error(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/b", root / "a")
    os.symlink("/a", root / "b")
    with pytest.raises(OSError, match="symbolic links"):
        within(root, "/a/x")


def test_the_live_root_is_the_plain_path():
    assert within("/", "/etc/hostname") == Path("/etc/hostname")
    assert within("/", "boot/") == Path("/boot")
