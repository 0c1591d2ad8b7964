"""doit tasks for xen-provision: `doit world` builds the Xen hypervisor, the control tools
and the kernels of the KERNELS list into dist/install (`doit list` explains each task).

The logic lives in the package: provision/tasks.py holds doit's configuration and the
variables (kernels=, buildconfigs=, dist=, jobs=); the tasks are in
provision/build/tasks.py (world), provision/build/install_tasks.py (dist, install,
uninstall), provision/grub/tasks.py and provision/proof/tasks.py.
"""

from provision.tasks import namespace

# doit finds DOIT_CONFIG and the tasks by name in this module's namespace.
globals().update(namespace())
