"""``python -m provision <command> ...``: the command-line front door.

Each command lives with its code and registers itself: a module in COMMANDS has
``register(subparsers)`` that adds its parser and sets ``func`` to a callable taking
the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback

from provision import __version__, log
from provision.errors import ProvisionError
from provision.undo import Interrupted

COMMANDS = [
    "provision.build.cli",       # world, dist, install, uninstall
    "provision.grub.cli",        # grub
    "provision.network.cli",     # network
    "provision.storage.cli",     # storage
    "provision.image",           # image (--debootstrap, templates)
    "provision.domain.cli",      # domain, xendomains
    "provision.proof.cli",       # boottest
]


class Parser(argparse.ArgumentParser):
    """argparse with our one-line errors: what is wrong, then where the usage is, exit 2
    (argparse's own error prints the whole usage block first). Subcommand parsers are
    made by add_subparsers with the parent's class, so they inherit this."""

    def parse_known_args(self, args=None, namespace=None):
        # '--size -1G': argparse takes '-1G' for an option and says '--size expected one
        # argument'. A value that starts with '-' and a digit, after an option of ours that
        # takes one, is that option's value ('--size=-1G'), so the size check can say why.
        args = list(sys.argv[1:] if args is None else args)
        out: list[str] = []
        for arg in args:
            action = self._option_string_actions.get(out[-1]) if out else None
            if action is not None and action.nargs is None and action.option_strings \
                    and re.match(r"^-\d", arg) and "=" not in out[-1]:
                out[-1] = f"{out[-1]}={arg}"
            else:
                out.append(arg)
        return super().parse_known_args(out, namespace)

    def error(self, message: str):
        ProvisionError(f"{self.prog}: {message}", hint=f"{self.prog} --help lists the options").report()
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m provision",
        description="Build, install and provision Xen hosts.",
    )
    parser.add_argument("--version", action="version", version=f"xen-provision {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every command and show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.set_debug(args.debug or log.is_debug())
    log.set_quiet(args.quiet)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.func, args)


def run_command(func, args) -> int:
    """Run a command's ``func(args)`` and turn failures into one line and an exit code.

    Also used by ``python -m provision.storage.cli``, which must not import the other
    commands (a minimal guest has only the standard library).
    """
    try:
        return int(func(args) or 0)
    except ProvisionError as e:
        if log.is_debug():
            traceback.print_exc()
        e.report()
        return e.exit_code
    except OSError as e:
        # A permission or space problem the command did not foresee: still one line.
        if log.is_debug():
            traceback.print_exc()
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        if e.errno in (13, 1):
            print("hint: run as root, or choose a target you can write", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; everything this run made has been undone", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"error: {e}; everything this run made has been undone", file=sys.stderr)
        return 128 + e.signum


if __name__ == "__main__":
    raise SystemExit(main())
