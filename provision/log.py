"""Logging: plain lines on stderr, nested steps with timings, a progress bar on a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import time

_state = {"debug": bool(os.environ.get("XEN_PROVISION_DEBUG")), "quiet": False, "depth": 0}
# Lines held back while a command checks its input (see ``holding``); None: not holding.
_held: list[str] | None = None


def set_debug(on: bool) -> None:
    _state["debug"] = on


def is_debug() -> bool:
    return _state["debug"]


def set_quiet(on: bool) -> None:
    _state["quiet"] = on


def _emit(prefix: str, msg: str, hold: bool = True) -> None:
    line = f"{'  ' * _state['depth']}{prefix}{msg}"
    if hold and _held is not None:
        _held.append(line)
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def holding():
    """Hold back the lines a command logs until its first step (or Progress) starts or
    it finishes; if it fails first, they are dropped: a warning or progress line never
    stands before the one error line that makes it moot (a refused input, an undone
    change). ``release`` shows them at once; ``drop`` forgets them."""
    global _held
    _held = []
    try:
        yield
    finally:
        release()


def release() -> None:
    """Show the held lines now and hold no more."""
    global _held
    lines, _held = _held, None
    for line in lines or ():
        print(line, file=sys.stderr, flush=True)


def drop() -> None:
    """Forget the held lines (the command failed before doing anything they speak of)."""
    global _held
    _held = None


def info(msg: str) -> None:
    if not _state["quiet"]:
        _emit("", msg)


def warn(msg: str, hold: bool = True) -> None:
    """A warning; ``hold=False`` shows it even while lines are held (an undo that failed)."""
    _emit("warning: ", msg, hold)


def note(msg: str) -> None:
    _emit("note: ", msg)


def debug(msg: str) -> None:
    if _state["debug"]:
        _emit("+ ", msg, hold=False)  # --debug shows every command, also of a failed run


@contextlib.contextmanager
def step(title: str):
    """``with step("Building xen"):`` logs the stage, nests inner lines and times it.
    Work has begun: held lines are shown first."""
    release()
    info(f"==> {title}")
    start = time.monotonic()
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    info(f"    {title}: done in {time.monotonic() - start:.1f}s")


class Progress:
    """A one-line progress bar, drawn only when stderr is a terminal.

    Off a terminal it prints at most one line per 10% so CI logs stay readable.
    """

    def __init__(self, label: str, total: int | None, unit: str = "B"):
        release()
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.tty = sys.stderr.isatty()
        self._last_decile = -1
        self._last_draw = 0.0
        self._start = time.monotonic()

    def _fmt(self, n: float) -> str:
        if self.unit != "B":
            return f"{n:.0f}"
        for suffix in ("B", "KiB", "MiB", "GiB"):
            if n < 1024 or suffix == "GiB":
                return f"{n:.1f}{suffix}" if suffix != "B" else f"{n:.0f}B"
            n /= 1024
        return f"{n:.1f}GiB"

    def update(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw < 0.1 and (self.total is None or self.done < self.total):
                return
            self._last_draw = now
            if self.total:
                frac = min(self.done / self.total, 1.0)
                bar = "#" * int(frac * 30)
                line = f"{self.label} [{bar:<30}] {frac * 100:5.1f}% {self._fmt(self.done)}/{self._fmt(self.total)}"
            else:
                line = f"{self.label} {self._fmt(self.done)}"
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
        elif self.total:
            decile = int(10 * self.done / self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                info(f"{self.label}: {min(decile * 10, 100)}% of {self._fmt(self.total)}")

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
