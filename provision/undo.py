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
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from provision import log


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM (SIGINT raises KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


@dataclass
class _Action:
    description: str
    fn: Callable
    args: tuple
    always: bool


class UndoStack:
    def __init__(self, handle_signals: bool = True):
        self._actions: list[_Action] = []
        self._handle_signals = handle_signals and threading.current_thread() is threading.main_thread()
        self._old_handlers: dict[int, object] = {}

    def cleanup(self, description: str, fn: Callable, *args) -> None:
        """Register an action that runs at exit whatever happens."""
        self._actions.append(_Action(description, fn, args, True))

    def rollback(self, description: str, fn: Callable, *args) -> None:
        """Register an action that runs only if the block fails or is interrupted."""
        self._actions.append(_Action(description, fn, args, False))

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
            while self._actions:
                action = self._actions.pop()
                if not (failed or action.always):
                    continue
                log.debug(f"undo: {action.description}")
                try:
                    action.fn(*action.args)
                except Exception as e:  # keep going: leave as little behind as we can
                    log.warn(f"could not undo '{action.description}': {e}")
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
