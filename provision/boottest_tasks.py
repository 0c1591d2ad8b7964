"""doit's view of the boot test: ``doit boottest`` (after ``doit world``).

The logic lives in :mod:`provision.boottest` so that ``python -m provision boottest``
is the same code. The task always runs (it is a test, not a build product); its
stages reuse provision.debootstrap's cached bases and the guest and host images whose
inputs are unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def task_boottest():
    """Boot dist/install's Xen and kernels in a provisioned host image under QEMU (TCG):
    GRUB entry, Xen banner and scheduler, dom0 multi-user, xendomains starting a guest,
    xl save/restore and mem-set, LVM in dom0. Serial log and report in dist/boottest/."""
    return {
        "actions": [[sys.executable, "-m", "provision", "boottest",
                     "--out", str(REPO / "dist" / "boottest")]],
        "targets": [str(REPO / "dist" / "boottest" / "report.txt")],
        "uptodate": [False],
        "verbosity": 2,
    }
