"""doit's side of xen-provision, in one place: its configuration, the command-line
variables every task reads (parsed once), and the task list that dodo.py and
``python -m provision world`` share.

    doit world kernels=mk.linux-6.1-xenU buildconfigs=DIR dist=DIR jobs=N distcc='HOST/N ...' lsmod=FILE

``dist=`` and ``buildconfigs=`` follow the rules of :mod:`provision.paths`.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

from provision import paths
from provision.errors import ProvisionError

DOIT_CONFIG = {
    "default_tasks": ["world"],
    "verbosity": 2,
    "cleandep": True,
    "dep_file": ".doit.db",
    "backend": "sqlite3",
}

TASK_MODULES = ("provision.build.tasks", "provision.build.install_tasks", "provision.grub.tasks",
                "provision.proof.tasks")


@dataclass(frozen=True)
class Variables:
    """doit's command-line variables, parsed."""

    dist: Path
    buildconfigs: Path
    kernels: str | None = None          # the KERNELS list's override (config.load parses it)
    jobs: int | None = None             # make -j; None: builddir.jobs() or the distcc slots
    distcc: str | None = None           # distcc hosts' override ("" for none; config.load parses it)
    lsmod: str | None = None            # an lsmod file for the kernels with modules (config.load)


def fail(e: ProvisionError):
    """A bad variable or configuration while doit loads the tasks: one line, the exit code."""
    e.report()
    raise SystemExit(e.exit_code)


@functools.cache
def variables() -> Variables:
    from doit import get_var

    jobs = get_var("jobs", None)
    if jobs is not None and not (str(jobs).isdigit() and int(jobs) > 0):
        fail(ProvisionError(f"jobs={jobs} is not a positive number", hint="e.g. jobs=4"))
    return Variables(dist=paths.dist(get_var("dist", None)),
                     buildconfigs=paths.buildconfigs(get_var("buildconfigs", None)),
                     kernels=get_var("kernels", None), jobs=int(jobs) if jobs else None,
                     distcc=get_var("distcc", None), lsmod=get_var("lsmod", None))


def namespace() -> dict:
    """DOIT_CONFIG and every task_* of the task modules: what doit loads."""
    found: dict = {"DOIT_CONFIG": DOIT_CONFIG}
    for name in TASK_MODULES:
        module = importlib.import_module(name)
        found.update({k: v for k, v in vars(module).items() if k.startswith("task_") and callable(v)})
    return found


def run(argv: list[str]) -> int:
    """Run doit with ``argv`` (``["run", "world", "dist=..."]``) on our tasks, in this process."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    variables.cache_clear()  # the variables of this run, not of an earlier one in this process
    return DoitMain(ModuleTaskLoader(namespace())).run(argv)
