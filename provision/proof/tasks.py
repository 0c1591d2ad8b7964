"""doit's view of the boot test: ``doit boottest`` (after ``doit world``).

The logic lives in :mod:`provision.proof.cli` so that ``python -m provision boottest``
is the same code. The task always runs (it is a test, not a build product); its
stages reuse the cached bases and the host images whose inputs are unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def task_boottest():
    """Boot the hosts the README's commands make (bridged and routed) under QEMU (TCG):
    GRUB, Xen, dom0 multi-user, xendomains starting networked guests that answer ping and
    ssh, LVM in dom0, save/restore, mem-set. Logs and report in dist/boottest/."""
    return {
        "actions": [[sys.executable, "-m", "provision", "boottest",
                     "--out", str(REPO / "dist" / "boottest")]],
        "targets": [str(REPO / "dist" / "boottest" / "report.txt")],
        "uptodate": [False],
        "verbosity": 2,
    }
