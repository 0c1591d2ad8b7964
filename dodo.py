"""doit tasks for xen-provision: `doit world` builds the Xen hypervisor, the control tools
and the kernels of the KERNELS list into dist/install (`doit list` explains each task).

The logic lives in the package: provision/build/tasks.py (world and its variables
kernels=, buildconfigs=, dist=, jobs=), provision/build/install_tasks.py (dist, install,
uninstall), provision/grub/tasks.py and provision/proof/tasks.py.
"""

# doit finds tasks by name in this module's namespace.
from provision.build.install_tasks import *  # noqa: F401,F403
from provision.build.tasks import (  # noqa: F401
    DOIT_CONFIG,
    task_kernel,
    task_source,
    task_stage,
    task_tools,
    task_world,
    task_xen,
)
from provision.grub.tasks import task_grub  # noqa: F401
from provision.proof.tasks import task_boottest  # noqa: F401
