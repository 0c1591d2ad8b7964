"""Fixtures of the unit tests that write domain configs into a throw-away host root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402

KERNEL = "/boot/vmlinuz-xenU"
HOST_BRIDGES = """\
auto xenbr0
iface xenbr0 inet dhcp
    bridge_ports eth0

auto xenbr1
iface xenbr1 inet manual
    bridge_ports none
"""


@pytest.fixture(scope="module")
def checker():
    """Xen's own config parser (libxlutil), built once per module."""
    return xlcheck.build()


@pytest.fixture
def root(tmp_path, checker):
    """A host root with a guest kernel and the bridges xenbr0 and xenbr1, as `network
    bridge` and its administrator made them (vifs are checked against them). Whatever
    a test leaves in ROOT/etc/xen must be accepted by Xen's parser."""
    r = tmp_path / "root"
    (r / "boot").mkdir(parents=True)
    (r / "boot" / "vmlinuz-xenU").write_bytes(b"\x7fELF kernel stand-in: only its existence is checked")
    (r / "etc/network/interfaces.d").mkdir(parents=True)
    (r / "etc/network/interfaces").write_text("source /etc/network/interfaces.d/*\n")
    (r / "etc/network/interfaces.d/bridges").write_text(HOST_BRIDGES)
    yield r
    xlcheck.accept_all(checker, r / "etc/xen")
