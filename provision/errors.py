"""The one exception type users see as a single line."""

import sys


class ProvisionError(Exception):
    """A user-facing failure: one line saying what is wrong, and an optional hint.

    The top-level handler prints ``error: <message>`` (and ``hint: <hint>``) and exits
    with ``exit_code``; no traceback unless ``--debug``.
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def report(self) -> None:
        """Print ``error: <message>`` and ``hint: <hint>`` to stderr, as users see failures:
        one line each, whatever they quote (a newline in a name is shown as \\n)."""
        print(f"error: {one_line(self.message)}", file=sys.stderr)
        if self.hint:
            print(f"hint: {one_line(self.hint)}", file=sys.stderr)


def one_line(text: str) -> str:
    """``text`` with newlines, other control characters and undecodable bytes escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if not 0xDC80 <= ord(c) <= 0xDCFF else f"\\x{ord(c) - 0xDC00:02x}" for c in text)


def die(message: str, hint: str | None = None, exit_code: int = 2):
    """Abort the current command with one clear line. Undo stacks still run."""
    raise ProvisionError(message, hint=hint, exit_code=exit_code)
