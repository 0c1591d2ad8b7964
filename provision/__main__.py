"""``python -m provision``. Ctrl-C or SIGTERM while the modules load (before main has its
own handlers) ends the run at once with one line: nothing has been done yet."""

import _signal  # builtin: the first thing, so that the window before the handler is tiny

# Held, not lost, until the handler is in place; then it runs at once.
_signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM})


def _early(signum, frame):
    import os

    os.write(2, b"error: interrupted before anything was done\n")
    os._exit(128 + signum)


_signal.signal(_signal.SIGINT, _early)
_signal.signal(_signal.SIGTERM, _early)
_signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT, _signal.SIGTERM})

from provision.cli import program  # noqa: E402

program()
