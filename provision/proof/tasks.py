"""doit's view of the boot test: ``doit boottest`` (after ``doit world``).

The logic lives in :mod:`provision.proof.cli` so that ``python -m provision boottest``
is the same code. The task always runs (it is a test, not a build product); its
stages reuse the cached bases and the host images whose inputs are unchanged.
"""

from __future__ import annotations

import sys

from provision.tasks import variables


def task_boottest():
    """Boot the hosts the README's commands make (bridged and routed) under QEMU (TCG):
    GRUB, Xen, dom0 multi-user, xendomains starting networked guests that answer ping and
    ssh, LVM in dom0, save/restore, mem-set. Logs and report in dist/boottest/."""
    dist = variables().dist  # doit boottest dist=DIR: the same dist/ as doit world's
    return {
        "actions": [[sys.executable, "-m", "provision", "boottest",
                     "--dist", str(dist / "install"), "--out", str(dist / "boottest")]],
        "targets": [str(dist / "boottest" / "report.txt")],
        "uptodate": [False],
        "verbosity": 2,
    }
