"""A pipeline as one list of named steps: each step says what it will do (``--dry-run``
prints that) and does it (the real run), so the plan and the run cannot drift apart.
A real run times every step (``--debug`` shows the table; benchmarks read ``seconds``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from provision import log


@dataclass(frozen=True)
class Step:
    name: str                 # short and stable: "base", "configure", "target", "sidecar"
    title: str | None         # the log line of a real run (None: none, a quick step)
    lines: tuple[str, ...]    # what it does, as the dry run shows it
    action: Callable[[Any], None]  # does it, given the run's mutable state


def describe(steps: Iterable[Step]) -> list[str]:
    return [line for step in steps for line in step.lines]


def run(steps: Iterable[Step], state: Any, seconds: dict[str, float]) -> None:
    """Run ``steps`` in order on ``state``; each one's wall time is added to ``seconds``
    under its name (also when it fails, so a failed run shows where the time went)."""
    for step in steps:
        start = time.monotonic()
        try:
            with log.step(step.title) if step.title else contextlib.nullcontext():
                step.action(state)
        finally:
            seconds[step.name] = seconds.get(step.name, 0.0) + time.monotonic() - start


def table(seconds: dict[str, float]) -> str:
    """``base 12.3s, configure 0.4s, ...``: one line for the log."""
    return ", ".join(f"{name} {s:.1f}s" for name, s in seconds.items())


@contextlib.contextmanager
def part(seconds: dict[str, float] | None, name: str):
    """Time a part of a step into ``seconds`` as ``name`` ("base: bootstrap"): the
    per-step table of a benchmark shows where a step's time goes."""
    start = time.monotonic()
    try:
        yield
    finally:
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.monotonic() - start
