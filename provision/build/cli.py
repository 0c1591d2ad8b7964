"""``python -m provision world|dist|install|uninstall``: the build commands.

``world`` runs the same doit tasks as ``doit world`` (provision/build/tasks.py), so both
front doors share one dependency database and one cache.
"""

from __future__ import annotations

import argparse

from provision.build import install


def _doit(argv: list[str]) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    from provision.build import install_tasks, tasks

    namespace = {**vars(install_tasks), **vars(tasks)}
    return DoitMain(ModuleTaskLoader(namespace)).run(argv)


def world(args: argparse.Namespace) -> int:
    argv = ["run", "--db-file", args.db_file, "--backend", "sqlite3", "world"]
    if args.kernels:
        argv.append(f"kernels={args.kernels}")
    argv += [f"buildconfigs={args.buildconfigs}", f"dist={args.dist}"]
    if args.jobs:
        argv.append(f"jobs={args.jobs}")
    return _doit(argv)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "world", help="build Xen, its tools and the KERNELS into dist/install (same as doit world)")
    p.add_argument("--kernels", help="override the KERNELS list, e.g. mk.linux-6.1-xenU")
    p.add_argument("--buildconfigs", default="buildconfigs", help="default: %(default)s")
    p.add_argument("--dist", default="dist", help="stage into DIST/install (default: %(default)s)")
    p.add_argument("-j", "--jobs", type=int, help="make -j (default: the number of CPUs)")
    p.add_argument("--db-file", default=".doit.db", help="doit's dependency database (default: %(default)s)")
    p.set_defaults(func=world)
    install.register(subparsers)
