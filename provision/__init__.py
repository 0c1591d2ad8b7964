"""xen-provision: build, install and provision Xen hosts."""

__version__ = "0.1.0"

import sys as _sys  # noqa: E402

if _sys.argv[:1] == ["-m"]:
    # Being started as ``python -m provision[...]`` (runpy imports this package before it
    # compiles and runs the module): from here on a Ctrl-C or SIGTERM is one line, not a
    # traceback, until main() puts its own handlers in (provision.cli.early_interrupts).
    import _signal

    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM})

    def _early(signum, frame):
        import os

        os.write(2, b"error: interrupted before anything was done\n")
        os._exit(128 + signum)

    _signal.signal(_signal.SIGINT, _early)
    _signal.signal(_signal.SIGTERM, _early)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT, _signal.SIGTERM})
