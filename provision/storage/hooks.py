"""A debug hook so tests can interrupt a run at a known step.

``XEN_PROVISION_PAUSE_AT=mounted`` makes the run print ``paused at mounted`` on stderr
and sleep there, so a test can send SIGINT/SIGTERM at exactly that point and then check
that the undo stack left nothing behind. Unset (the normal case), it costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time


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
