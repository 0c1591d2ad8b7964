"""Undo stack: every step that creates something registers how to take it away.

    with UndoStack() as undo:
        loop = attach(image)
        undo.cleanup(f"detach {loop}", detach, loop)   # always runs at exit
        make_file(tmp)
        undo.rollback(f"remove {tmp}", os.unlink, tmp)  # runs only if we fail
        ...

On an exception, SIGINT or SIGTERM the registered actions run in reverse order.
Cleanups (unmount, detach a loop device) also run on success; rollbacks (remove a
half-made file, an LV, a partition table) run only on failure. An undo that itself
fails is reported and the rest still run.

A rollback may say what it takes away (``made=``): once its stack has succeeded, that
thing is finished and kept (:func:`kept`), so a run interrupted after that point says
what it kept instead of claiming that everything was undone. Work finished outside any
stack (a rename with no rollback) is recorded with :func:`keep`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from provision import log


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM (SIGINT raises KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


# What this run has finished and keeps (images, configs, removals), in order.
_kept: list[str] = []


def begin() -> None:
    """A new run (a command): nothing finished yet."""
    _kept.clear()


def keep(what: str) -> None:
    """``what`` is finished and stays, whatever happens later in this run."""
    if what not in _kept:
        _kept.append(what)


def kept() -> list[str]:
    """What this run has finished and keeps; empty when an interrupt undoes everything."""
    return list(_kept)


@dataclass
class _Action:
    description: str
    fn: Callable
    args: tuple
    always: bool
    made: str | None = None


class UndoStack:
    def __init__(self, handle_signals: bool = True):
        self._actions: list[_Action] = []
        self._handle_signals = handle_signals and threading.current_thread() is threading.main_thread()
        self._old_handlers: dict[int, object] = {}

    def cleanup(self, description: str, fn: Callable, *args) -> None:
        """Register an action that runs at exit whatever happens."""
        self._actions.append(_Action(description, fn, args, True))

    def rollback(self, description: str, fn: Callable, *args, made: str | None = None) -> None:
        """Register an action that runs only if the block fails or is interrupted.
        ``made`` names the thing it takes away: kept once the block has succeeded."""
        self._actions.append(_Action(description, fn, args, False, made))

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    def __enter__(self):
        if self._handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def unwind(self, failed: bool) -> None:
        # Signals during unwinding must not cut it short.
        blocked = self._handle_signals
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            kept_now = []
            while self._actions:
                action = self._actions.pop()
                if not (failed or action.always):
                    if action.made:
                        kept_now.append(action.made)
                    continue
                if action.made in _kept:
                    _kept.remove(action.made)
                log.debug(f"undo: {action.description}")
                try:
                    action.fn(*action.args)
                except Exception as e:  # keep going: leave as little behind as we can
                    log.warn(f"could not undo '{action.description}': {e}", hold=False)
            for made in reversed(kept_now):  # in the order they were made
                keep(made)
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    def __exit__(self, exc_type, exc, tb):
        try:
            self.unwind(failed=exc_type is not None)
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
        return False


@contextlib.contextmanager
def critical():
    """Hold SIGINT/SIGTERM while a step creates something and registers its undo, so a
    signal cannot land between the two; it is delivered (and unwinds) right after."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# A debug hook so tests can interrupt a run at a known step: XEN_PROVISION_PAUSE_AT=mounted
# makes the run print "paused at mounted" on stderr and sleep there, so that a test can send
# SIGINT/SIGTERM at exactly that point and check what is left. Unset, it costs nothing.
def pause_point(step: str) -> None:
    wanted = os.environ.get("XEN_PROVISION_PAUSE_AT", "")
    if step in wanted.split(","):
        print(f"paused at {step}", file=sys.stderr, flush=True)
        # Short sleeps, not one long one: a signal that lands after Python last checked
        # for signals but before the sleep's syscall starts does not interrupt that
        # syscall, so one long sleep would hold it back for the whole pause (seen once
        # in CI: SIGINT sent right after the line above, acted on 120 s later).
        deadline = time.monotonic() + float(os.environ.get("XEN_PROVISION_PAUSE_SECONDS", "120"))
        while time.monotonic() < deadline:
            time.sleep(0.05)
