"""``python -m provision <command> ...``: the command-line front door.

Each command lives with its code and registers itself: a module in COMMANDS has
``register(subparsers)`` that adds its parser and sets ``func`` to a callable taking
the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import signal
import sys
import threading
import time
import traceback

from provision import __version__, log, undo
from provision.errors import ProvisionError
from provision.undo import Interrupted

COMMANDS = {  # module: the commands it registers (a unit test checks this table)
    "provision.build.cli": ("world", "dist", "install", "uninstall"),
    "provision.grub.cli": ("grub",),
    "provision.network.cli": ("network",),
    "provision.storage.cli": ("storage",),
    "provision.guest.cli": ("image",),                  # --debootstrap, templates, update, resize
    "provision.domain.cli": ("domain", "xendomains"),
    "provision.proof.cli": ("boottest",),
}


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
        self._refuse_blank(out)
        return super().parse_known_args(out, namespace)

    def _refuse_blank(self, args: list[str]) -> None:
        """An empty or blank option value ('--size ""', '--hostname=') never silently means
        the option's default: it is an error, unless the option gives '' a meaning of its
        own (``action.blank_ok``, e.g. --vif '', xl's vif with every default)."""
        for i, arg in enumerate(args):
            if arg == "--":
                return
            name, eq, value = arg.partition("=")
            action = self._option_string_actions.get(name if eq else arg)
            if action is None or action.nargs not in (None, "?") or not action.option_strings \
                    or getattr(action, "blank_ok", False) or action.const is not None and not eq:
                continue
            if not eq:
                if i + 1 >= len(args):
                    continue
                value = args[i + 1]
            if not value.strip():
                ProvisionError(f"{name if eq else arg} '{value}' is empty",
                               hint=f"give a value, or leave {name if eq else arg} out for its default").report()
                sys.exit(2)

    def error(self, message: str):
        ProvisionError(f"{self.prog}: {message}", hint=f"{self.prog} --help lists the options").report()
        sys.exit(2)


def modules_for(argv: list[str] | None) -> list[str]:
    """The command modules that ``argv`` needs: the one of its command, or (no command,
    ``--help``, an unknown command) all of them. A command imports only its own module's
    tree: about half of the start-up of every `python -m provision ...`."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words:
        for module, names in COMMANDS.items():
            if words[0] in names:
                return [module]
    return list(COMMANDS)


def build_parser(argv: list[str] | None = None, *, everything: bool = True) -> argparse.ArgumentParser:
    """The parser of every command, or (``everything=False``) of the one ``argv`` runs."""
    parser = Parser(
        # The console script says its own name; python -m provision says how it was run.
        prog="xen-provision" if os.path.basename(sys.argv[0]) == "xen-provision" else "python -m provision",
        description="Build, install and provision Xen hosts.",
    )
    parser.add_argument("--version", action="version", version=f"xen-provision {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every command and show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (list(COMMANDS) if everything else modules_for(argv)):
        importlib.import_module(name).register(sub)
    return parser


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(signum, frame):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts():
    """SIGINT raises KeyboardInterrupt and SIGTERM Interrupted for the whole command (not
    only inside an UndoStack), so that either ends it through run_command: undone, and
    said in one line. The handlers before are put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in _SIGNALS}
    old_hook, sys.unraisablehook = sys.unraisablehook, _redeliver(sys.unraisablehook)
    try:
        yield
    finally:
        sys.unraisablehook = old_hook
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_IGN)  # drops one that came after the run had settled
            if not _process["ends_with_run"]:  # else ignored until the process ends (finish)
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _redeliver(hook):
    """An unraisablehook that does not lose an interrupt: a signal whose exception was
    raised where Python can only print it ("Exception ignored in", e.g. in the module-lock
    callback of an import, or in a __del__) is sent again once the hook has returned, so
    that it ends the run at the next line of ordinary code, through run_command like any
    other. (Sent from inside the hook, it would be raised inside the hook, and ignored.)"""
    def redeliver(unraisable):
        e = unraisable.exc_value
        if not isinstance(e, (KeyboardInterrupt, Interrupted)):
            hook(unraisable)
            return
        main, here = threading.main_thread().ident, sys._getframe()

        def later():
            for _ in range(1000):  # 1 s at most: the hook returns in microseconds
                frame = sys._current_frames().get(main)
                while frame is not None and frame is not here:
                    frame = frame.f_back
                if frame is None:
                    break
                time.sleep(0.001)
            os.kill(os.getpid(), _signum(e))
        threading.Thread(target=later, daemon=True).start()
    return redeliver


# Whether the process ends when the command does (program, storage.cli as __main__): then
# the run's outcome stands once decided, and no handler from before it comes back.
_process = {"ends_with_run": False}


def _settle() -> None:
    """The run's outcome is decided (done, failed or interrupted): a signal from here on
    changes nothing on disk, so it must not cut the report short either. It is held, and
    dropped when interrupts() ends."""
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def _signum(e: BaseException) -> int:
    return e.signum if isinstance(e, Interrupted) else signal.SIGINT


def _exit_now(signum, frame):
    os.write(2, b"error: interrupted before anything was done\n")
    os._exit(128 + signum)


@contextlib.contextmanager
def _ending_on_signals():
    """While the modules load and the arguments are read nothing has been done: a signal
    ends the process at once, with one line. (Raising there is no good: an exception
    raised inside an import can come out as another, e.g. RuntimeError from a class
    body's __set_name__.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _exit_now) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _interrupt_in(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Interrupted that ``e`` is, or was raised from (an import
    wraps one that lands in a class body's __set_name__ in a RuntimeError)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (KeyboardInterrupt, Interrupted)):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def main(argv: list[str] | None = None) -> int:
    with _ending_on_signals():
        parser = build_parser(argv, everything=False)  # imports the command's module
        args = parser.parse_args(argv)
    log.set_debug(args.debug or log.is_debug())
    log.set_quiet(args.quiet)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.func, args)


def program() -> None:
    """``python -m provision`` and the ``xen-provision`` command: once main has returned,
    its exit code stands. A late Ctrl-C is ignored, and the process ends here: Python
    would otherwise end itself with SIGINT when an interrupt it saw during an import was
    answered (the exit status then says "killed by SIGINT", not our 130)."""
    _process["ends_with_run"] = True
    try:
        code = main()
    except BaseException as e:  # an interrupt in the few instructions before a run settles
        if isinstance(e, SystemExit) or _interrupt_in(e) is None:
            raise
        print("error: interrupted", file=sys.stderr)
        code = 128 + _signum(_interrupt_in(e))
    finish(code)


def finish(code: int) -> None:
    """End the process with ``code``: signals are ignored from here on (the run is over),
    the output flushed, and no interpreter clean-up can turn the code into another."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def run_command(func, args) -> int:
    """Run a command's ``func(args)`` and turn failures into one line and an exit code.

    The lines the command logs before its work begins are held back and dropped if it
    fails (log.holding): the error line comes alone. An interrupted run says what it
    finished and kept, if anything (undo.kept), else that everything was undone.

    Also used by ``python -m provision.storage.cli``, which must not import the other
    commands (a minimal guest has only the standard library).
    """
    undo.begin()
    with interrupts(), log.holding():
        try:
            code = int(func(args) or 0)
            undo.pause_point("finished")  # tests interrupt a run here, its work all done
        except ProvisionError as e:
            _settle()
            log.drop()
            if log.is_debug():
                traceback.print_exc()
            e.report()
            return e.exit_code
        except OSError as e:
            # A permission or space problem the command did not foresee: still one line.
            _settle()
            log.drop()
            if log.is_debug():
                traceback.print_exc()
            where = f": {e.filename}" if e.filename else ""
            ProvisionError(f"{e.strerror or e}{where}", hint="run as root, or choose a target you can write"
                           if e.errno in (13, 1) else None).report()
            return 1
        except Exception as e:
            if _interrupt_in(e) is None:
                raise
            _settle()
            return _interrupted(_interrupt_in(e))
        except (KeyboardInterrupt, Interrupted) as e:
            _settle()
            return _interrupted(e)
        _settle()  # done: a Ctrl-C now would only make a true "done" look like a failure
        log.release()
        return code


def _interrupted(e: BaseException) -> int:
    """The one line of an interrupted run: what it kept, if anything, else that all of what
    it made has been undone."""
    log.drop()
    kept = undo.kept()
    if kept:
        print(f"error: interrupted after {'this was' if len(kept) == 1 else 'these were'} finished "
              f"and kept: {', '.join(kept)}; anything else this run made has been undone", file=sys.stderr)
    else:
        print("error: interrupted; everything this run made has been undone", file=sys.stderr)
    return 128 + _signum(e)


if __name__ == "__main__":
    program()
