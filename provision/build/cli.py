"""``python -m provision world|dist|install|uninstall``: the build commands.

``world`` runs the same doit tasks as ``doit world`` (provision/tasks.py), so both front
doors share one configuration, one dependency database and one cache.
"""

from __future__ import annotations

import argparse

from provision.build import install


def world(args: argparse.Namespace) -> int:
    from provision import tasks

    given = {"kernels": args.kernels, "buildconfigs": args.buildconfigs, "dist": args.dist, "jobs": args.jobs,
             "lsmod": args.lsmod}
    db = ["--db-file", args.db_file] if args.db_file else []
    return tasks.run(["run", *db, "world", *(f"{k}={v}" for k, v in given.items() if v is not None)])


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "world", help="build Xen, its tools and the KERNELS into dist/install (same as doit world)")
    p.add_argument("--kernels", help="override the KERNELS list, e.g. mk.linux-6.1-xenU")
    p.add_argument("--buildconfigs", help="the build configuration (default: ./buildconfigs, else the "
                                           "checkout's or the installed package's)")
    p.add_argument("--dist", help="stage into DIST/install (default: $XEN_PROVISION_DIST, else ./dist)")
    p.add_argument("--lsmod", metavar="FILE",
                   help="trim the kernels with modules (base = \"debian\", e.g. mk.linux-6.1-xen0-hw) to "
                        "the modules in FILE, the output of lsmod on the target machine")
    p.add_argument("-j", "--jobs", type=int, help="make -j (default: the number of CPUs)")
    p.add_argument("--db-file", help="doit's dependency database (default: ./.doit.db)")
    p.set_defaults(func=world)
    install.register(subparsers)
