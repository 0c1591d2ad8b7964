"""``python -m provision``. Ctrl-C or SIGTERM before main has its own handlers (while the
modules load) is answered by the handler provision/__init__.py puts in first."""

from provision.cli import program

program()
