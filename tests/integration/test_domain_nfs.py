"""`domain create --exports` with the real exportfs (nfs-kernel-server): on the live host the
export line goes into /etc/exports and `exportfs -ra` puts it in the server's export table;
for an offline --root only that root's /etc/exports changes.

exportfs keeps its table in /var/lib/nfs/etab whether or not the kernel has nfsd (CI's
container kernel has none), so the table is what these tests read; serving the tree to a
booting guest is the boot test's part.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402

pytestmark = pytest.mark.integration

EXPORTS = Path("/etc/exports")
ETAB = Path("/var/lib/nfs/etab")
RELEASE = "6.1.176-xenU"
NFS_KERNEL = "CONFIG_XEN_PV=y\nCONFIG_XEN_PVH=y\nCONFIG_NFS_FS=y\nCONFIG_ROOT_NFS=y\nCONFIG_IP_PNP=y\n"


def exportfs(*args: str) -> str:
    return subprocess.run(["exportfs", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def host_exports(root_required):
    """This host's /etc/exports and export table, put back as they were afterwards."""
    if shutil.which("exportfs") is None:
        pytest.fail("exportfs is missing: setup-host installs nfs-kernel-server (debian-packages.txt)")
    saved = EXPORTS.read_bytes() if EXPORTS.exists() else None
    try:
        yield
    finally:
        if saved is None:
            EXPORTS.unlink(missing_ok=True)
        else:
            EXPORTS.write_bytes(saved)
        exportfs("-ra")


@pytest.fixture
def kernel(tmp_path) -> str:
    """A guest kernel with the NFS-root client, as `doit install` puts one: vmlinuz and
    config-RELEASE side by side (only the config is read)."""
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"vmlinuz-{RELEASE}").write_bytes(b"\x7fELF")
    (boot / f"config-{RELEASE}").write_text(NFS_KERNEL)
    return str(boot / f"vmlinuz-{RELEASE}")


def create(run_cli, *args):
    # A routed vif (vif-route): this test host has no bridge for a bridged one.
    return run_cli("domain", "create", "--name", "nfs1", "--memory", "128", "--nfs-server", "192.0.2.1",
                   "--ip", "192.0.2.10/24", "--vif", "script=vif-route", *args)


def test_live_host_exports_the_tree_to_the_guest_only(run_cli, tmp_path, host_exports, kernel):
    tree = tmp_path / "export/nfs1"
    tree.mkdir(parents=True)
    xen = tmp_path / "etc/xen"
    proc = create(run_cli, "--root", "/", "--config-dir", xen, "--kernel", kernel, "--nfs-root", tree, "--exports")
    assert proc.returncode == 0, proc.stderr
    assert "exportfs -ra" in proc.stderr
    line = f"{tree} 192.0.2.10(rw,sync,no_root_squash,no_subtree_check)"
    assert line in EXPORTS.read_text().splitlines()
    table = exportfs("-v")
    mine = [row for row in table.replace("\n\t", " ").splitlines() if row.startswith(f"{tree} ")]
    assert len(mine) == 1 and "192.0.2.10(" in mine[0], table
    assert "rw" in mine[0] and "no_root_squash" in mine[0]
    assert f"{tree}\t192.0.2.10(" in ETAB.read_text()
    seen = xlcheck.accept(xlcheck.build(), xen / "nfs1.cfg")
    assert "type=pvh\n" in seen and "root=/dev/nfs\n" in seen and f"nfsroot=192.0.2.1:{tree},vers=3,tcp" in seen


def test_a_refused_export_changes_neither_file_nor_table(run_cli, tmp_path, host_exports, kernel):
    tree = tmp_path / "export/nfs1"
    tree.mkdir(parents=True)
    EXPORTS.write_text(EXPORTS.read_text() if EXPORTS.exists() else "")
    with EXPORTS.open("a") as f:
        f.write(f"{tree} 192.0.2.99(rw,sync,no_subtree_check)\n")
    exportfs("-ra")
    before, table = EXPORTS.read_text(), ETAB.read_text()
    proc = create(run_cli, "--config-dir", tmp_path / "etc/xen", "--kernel", kernel, "--nfs-root", tree, "--exports")
    assert proc.returncode != 0 and f"already exports {tree} read-write to 192.0.2.99" in proc.stderr
    assert EXPORTS.read_text() == before and ETAB.read_text() == table
    assert not (tmp_path / "etc/xen/nfs1.cfg").exists()


def test_offline_root_gets_the_line_and_the_host_table_is_untouched(run_cli, tmp_path, host_exports):
    root = tmp_path / "root"
    (root / "export/nfs1").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{RELEASE}").write_bytes(b"\x7fELF")
    (root / f"boot/config-{RELEASE}").write_text(NFS_KERNEL)
    table = ETAB.read_text() if ETAB.exists() else ""
    proc = create(run_cli, "--root", root, "--kernel", f"/boot/vmlinuz-{RELEASE}", "--nfs-root", "/export/nfs1",
                  "--exports")
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/exports").read_text() == "/export/nfs1 192.0.2.10(rw,sync,no_root_squash,no_subtree_check)\n"
    assert (ETAB.read_text() if ETAB.exists() else "") == table
    assert "exportfs -ra:" not in proc.stderr
