"""How a failed lvm2 command is reported: lvm2's own reason, and "device-mapper is not
available" only where the kernel really lacks it."""

from __future__ import annotations

import os

import pytest

from provision.errors import ProvisionError
from provision.run import CommandError
from provision.storage import lvm

# What lvextend printed in the boot test's dom0 (device-mapper loaded) for a snapshot
# that had filled and been invalidated.
INVALIDATED = ("  device-mapper: reload ioctl on  (253:5) failed: Invalid argument\n"
               "  Failed to suspend logical volume xpcheck/clone2.\n")
# What lvcreate prints on a kernel without device-mapper (this machine's).
NO_DM = ("  /dev/mapper/control: open failed: No such device\n"
         "  Failure to communicate with kernel device-mapper driver.\n"
         "  Check that device-mapper is available in the kernel.\n")


def _failing(output: str):
    def run(argv, **kw):
        raise CommandError(argv, 5, output)
    return run


@pytest.mark.parametrize("in_kernel, output, message", [
    (True, INVALIDATED, "lvextend failed: Failed to suspend logical volume xpcheck/clone2."),
    (False, NO_DM, "lvextend failed: device-mapper is not available in this kernel"),
    (True, "  Insufficient free space: 2 extents needed, but only 1 available\n",
     "lvextend failed: Insufficient free space: 2 extents needed, but only 1 available"),
])
def test_lvm2_failures_say_lvm2s_reason(monkeypatch, in_kernel, output, message):
    monkeypatch.setattr(lvm, "run", _failing(output))
    monkeypatch.setattr(lvm, "device_mapper_in_kernel", lambda: in_kernel)
    with pytest.raises(ProvisionError) as e:
        lvm._lvm(["lvextend", "-L", "+8M", "xpcheck/clone2"])
    assert e.value.message == message and e.value.exit_code == 5


def test_device_mapper_in_kernel_reads_the_running_kernel():
    # /proc/misc against the kernel's other account of its misc devices.
    assert lvm.device_mapper_in_kernel() is os.path.exists("/sys/class/misc/device-mapper")
