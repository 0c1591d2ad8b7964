"""A serial console: read what a machine prints, wait for it, type into it.

    with Machine(disks=[image], memory="2G", log_path=log_file) as vm:
        vm.wait_for(r"Xen version", 120, what="Xen banner")
        vm.login()
        out, status = vm.shell("xl list", timeout=60)
    print(vm.report())

The console is the guest's first serial port on QEMU's stdio. A reader thread appends
everything it sees to ``log_path`` (kept as an artifact) and to an in-memory buffer
that :meth:`Console.wait_for` searches. Every wait is bounded; a wait that times out,
or a machine that dies while we wait, raises :class:`ConsoleTimeout` naming what was
expected and showing the last lines of the console. Each wait is recorded as a
:class:`Check` with the time since power-on, so a run can print a pass/fail report.

Typing: Xen hands serial input to dom0 through a 128-byte ring, and a dom0 stalled under
TCG lets it overflow, so characters typed blind get lost (once: ``syntax error near
unexpected token '}'``). After :meth:`Console.login` the shell echoes what it reads and
each line is typed a chunk at a time, the next chunk only once the echo of the last came
back, and Enter only once the whole line's echo is intact; a garbled echo makes us press
Ctrl-C and type the line again.

:class:`Console` works with any process whose stdin/stdout is a terminal-like stream
(the unit tests drive a shell script); :class:`provision.proof.machine.Machine` is the
QEMU machine built on it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.errors import ProvisionError

# CSI sequences ("\x1b[0;32m", "\x1b[K") and the few two-byte escapes consoles send;
# they are kept in the log but removed from the text that waits match against.
_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_]|\][^\x07]*\x07)")
_INCOMPLETE_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*|\][^\x07]*)?$")

# How long a match that ends mid-line waits for the rest of that line.
PARTIAL_LINE_SETTLE = 0.5
TAIL_LINES = 40


class ConsoleTimeout(ProvisionError):
    """An expected console line did not appear in time (or the machine stopped)."""

    def __init__(self, message: str, tail: str):
        super().__init__(message, exit_code=1)
        self.tail = tail


@dataclass
class Check:
    """One bounded wait: what we waited for, whether it came, and when (s since power-on)."""

    what: str
    ok: bool
    seconds: float
    detail: str = ""

    def line(self) -> str:
        mark = "PASS" if self.ok else "FAIL"
        extra = f"  ({self.detail})" if self.detail else ""
        return f"{mark} {self.seconds:7.1f}s  {self.what}{extra}"


def clean(text: str) -> str:
    """Console text as a reader sees it: no escape sequences, no carriage returns."""
    return _ESCAPE.sub("", text).replace("\r", "")


class Console:
    """Read a process's output as a console: logged, searchable, with bounded waits.

    ``argv`` is started with stdin and stdout (stderr merged) as pipes. The time of
    the start is "power-on"; :attr:`checks` records every wait relative to it.
    """

    def __init__(self, argv: Sequence[str | os.PathLike], log_path: str | os.PathLike,
                 *, name: str = "machine", env: dict[str, str] | None = None):
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = Path(log_path)
        self.name = name
        self.env = env
        self.checks: list[Check] = []
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self._text = ""          # cleaned console text, searched by wait_for
        self._carry = ""         # an escape sequence split across two reads
        self._pos = 0            # where the next wait_for starts searching
        self._eof = False
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._logfile = None
        self._timesfile = None
        self._echoing = False    # login() set the shell up for verified typing

    # -- lifetime -------------------------------------------------------------------

    def start(self) -> Console:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._logfile = open(self.log_path, "ab", buffering=0)
        # "<seconds since power-on> <log size>" per read: when each part of the log came.
        self._timesfile = open(self.log_path.with_name(self.log_path.name + ".times"), "a", buffering=1)
        log.debug("console: " + " ".join(self.argv))
        self.started = time.monotonic()
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-console", daemon=True)
        self._reader.start()
        return self

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop the process (TERM, then KILL after ``grace`` s); idempotent. Returns its code."""
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(Exception):
            proc.stdin.close()   # an interactive shell ignores SIGTERM but ends at EOF
        # The whole process group: children still holding the console pipe go too.
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(5)
        with contextlib.suppress(Exception):
            proc.stdout.close()
        if self._logfile is not None:
            self._logfile.close()
            self._logfile = None
        if self._timesfile is not None:
            self._timesfile.close()
            self._timesfile = None
        return proc.returncode

    def __enter__(self) -> Console:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if chunk and self._logfile is not None:
                self._logfile.write(chunk)
                with contextlib.suppress(Exception):
                    self._timesfile.write(f"{self.elapsed():.2f} {self._logfile.tell()}\n")
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                data = self._carry + chunk.decode("utf-8", errors="replace")
                m = _INCOMPLETE_ESCAPE.search(data)
                self._carry = data[m.start():] if m else ""
                self._text += clean(data[: m.start()] if m else data)
                self._cond.notify_all()

    # -- reading --------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since power-on."""
        return time.monotonic() - self.started

    @property
    def text(self) -> str:
        """Everything the console printed so far (cleaned)."""
        with self._cond:
            return self._text

    def mark(self) -> int:
        """The current end of the console text, to search from later (``start=``)."""
        with self._cond:
            return len(self._text)

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.text.rstrip("\n").splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, pattern: str | re.Pattern, timeout: float, *, what: str | None = None,
                 start: int | None = None, record: bool = True, flags: int = 0,
                 failure: str | None = None) -> re.Match:
        """Wait until ``pattern`` (a regex, multiline) appears in the console text.

        With ``record`` (the default) the outcome is added to :attr:`checks`.

        Searches from ``start`` (a :meth:`mark`), by default from the end of the previous
        match, so consecutive waits follow the boot in order. Returns the match and
        moves the cursor past it. Raises :class:`ConsoleTimeout` naming ``what`` with the
        console's last lines when ``timeout`` s pass or the process ends first; ``failure``
        words that message ("dom0 did not reach multi-user" + " within 300 s; last ...").
        """
        regex = re.compile(pattern, re.MULTILINE | flags) if isinstance(pattern, str) else pattern
        what = what or f"/{regex.pattern}/"
        begin = self._pos if start is None else start
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._text, begin)
                if m and m.end() == len(self._text) and not self._text.endswith("\n") \
                        and not self._eof:
                    # The match runs to the end of a line still arriving ("caps=co" of
                    # "caps=control_d"): give the rest a moment, then search again.
                    size = len(self._text)
                    self._cond.wait(PARTIAL_LINE_SETTLE)
                    if len(self._text) != size:
                        continue
                if m:
                    self._pos = m.end()
                    if record:
                        self.checks.append(Check(what, True, self.elapsed()))
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._cond.wait(min(remaining, 1.0))
        if self._eof and time.monotonic() < deadline:
            code = self.proc.wait() if self.proc else None
            why = f"{self.name} stopped (exit code {code}) before {what} appeared"
        else:
            why = f"{failure or what + ' did not appear'} within {timeout:.0f} s"
        if record:
            self.checks.append(Check(what, False, self.elapsed(), why))
        tail = self.tail()
        raise ConsoleTimeout(f"{why}; last {TAIL_LINES} lines of {self.log_path}:\n{tail}", tail)

    def expect_absent(self, pattern: str, *, what: str, start: int = 0) -> None:
        """Record a check that ``pattern`` has NOT appeared (e.g. a kernel panic)."""
        m = re.compile(pattern, re.MULTILINE).search(self.text, start)
        self.checks.append(Check(what, m is None, self.elapsed(), m.group(0).strip() if m else ""))
        if m:
            raise ConsoleTimeout(f"{what}: found {m.group(0).strip()!r}; last {TAIL_LINES} lines:\n"
                                 f"{self.tail()}", self.tail())

    def record(self, what: str, ok: bool, detail: str = "") -> Check:
        """Record a check decided by the caller (e.g. on a command's output)."""
        check = Check(what, ok, self.elapsed(), detail)
        self.checks.append(check)
        return check

    def report(self) -> str:
        """One line per check: PASS/FAIL, seconds since power-on, what."""
        return "\n".join(c.line() for c in self.checks)

    # -- typing ---------------------------------------------------------------------

    def send(self, line: str, newline: str = "\n") -> None:
        """Type ``line`` (and Enter) on the console.

        Once :meth:`login` has prepared a shell that echoes (:attr:`verify_echo`), the
        line is typed echo-paced and verified (:meth:`_type_verified`); before that, and
        on consoles that do not echo, it is typed blind.
        """
        if not self.running():
            raise ConsoleTimeout(f"{self.name} is not running; cannot type {line!r}; last lines:\n"
                                 f"{self.tail()}", self.tail())
        if self._echoing and line:
            start = self._type_verified(line)
            if newline:
                self._press_enter(start, line)
            return
        self._type((line + newline).encode())

    # Blind typing speed: Xen forwards serial input to dom0 through a 128-byte ring, and a
    # busy dom0 under TCG drains it slowly, so a long line typed at once loses characters.
    type_chunk: int | None = None
    type_delay: float = 0.0
    # Verified typing (after login, with verify_echo): each chunk is typed only once the
    # echo of the one before came back, so no more than ``echo_chunk`` bytes are ever in
    # flight, whatever the machine's stalls; a line whose echo comes back garbled is
    # abandoned with Ctrl-C and typed again, up to ``type_attempts`` times.
    verify_echo: bool = False
    echo_chunk: int = 32
    echo_timeout: float = 20.0     # for one chunk's echo while the echo so far is intact
    echo_settle: float = 0.5       # the echo stopped, garbled: give up on it after this
    type_attempts: int = 6

    def _write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise ConsoleTimeout(f"{self.name} stopped while we typed; last lines:\n{self.tail()}",
                                 self.tail()) from None

    def _type(self, data: bytes) -> None:
        step = self.type_chunk or len(data)
        for i in range(0, len(data), step):
            self._write(data[i:i + step])
            if self.type_chunk and i + step < len(data):
                time.sleep(self.type_delay)

    def _type_verified(self, text: str) -> int:
        """Type ``text`` (no final Enter) until the console echoes all of it intact;
        returns the console mark its echo follows.

        A lost character shows as an echo that stops or diverges from what was typed;
        Ctrl-C then discards the half-typed line in dom0 (the tty flushes its input, the
        shell its parse) and the text is typed again. Enter is never pressed on a line
        whose echo was not confirmed, so a garbled command never runs.
        """
        bad = [c for c in text if not c.isprintable() and c not in "\n\t"]
        if bad:
            raise ProvisionError(f"cannot type control character {bad[0]!r} on {self.name}'s console")
        start = self.mark()
        for attempt in range(1, self.type_attempts + 1):
            typed = ""
            for i in range(0, len(text), self.echo_chunk):
                chunk = text[i:i + self.echo_chunk]
                self._write(chunk.encode())
                typed += chunk
                if not self._echoed(start, typed):
                    break
            else:
                return start
            # Ctrl-C even after the last attempt: no half-typed line is left to run.
            if not self._interrupt():
                why = "garbled the echo of a typed line and does not answer Ctrl-C"
                break
            if attempt < self.type_attempts:
                log.info(f"{self.name}: the echo of a typed line came back garbled; typed "
                         f"it again (attempt {attempt + 1})")
            start = self._settled_mark()
        else:
            why = f"did not echo a typed line intact after {self.type_attempts} attempts"
        self.checks.append(Check("typing on the console", False, self.elapsed(), why))
        raise ConsoleTimeout(f"{self.name} {why} ({text[:60]!r}...); last {TAIL_LINES} lines of "
                             f"{self.log_path}:\n{self.tail()}", self.tail())

    def _echoed(self, start: int, typed: str) -> bool:
        """Wait until the console text after ``start`` holds ``typed``, verbatim.

        False when it cannot come any more: the echo went quiet (``echo_settle``) on
        text that diverges from ``typed`` (a character lost, or a kernel message in the
        middle), or nothing arrived within ``echo_timeout`` (a stalled machine whose
        echo so far is intact gets the whole of that).
        """
        deadline = time.monotonic() + self.echo_timeout
        size, since = -1, time.monotonic()
        with self._cond:
            while True:
                seg = self._text[start:]
                if typed in seg:
                    return True
                now = time.monotonic()
                if self._eof or now >= deadline:
                    return False
                if len(seg) != size:
                    size, since = len(seg), now
                elif now - since >= self.echo_settle and not _may_continue(seg, typed):
                    return False
                self._cond.wait(0.1)

    def _press_enter(self, start: int, line: str) -> None:
        """Enter after a verified line; pressed again if its echo never comes (lost).
        A second Enter that was not needed is an empty command line."""
        self._write(b"\n")
        if not self._echoed(start, line + "\n"):
            log.info(f"{self.name}: no echo of Enter; pressing it again")
            self._write(b"\n")

    def _interrupt(self) -> bool:
        """Ctrl-C until the console echoes ``^C`` (it discards a half-typed line);
        False if it never does."""
        for _ in range(3):
            start = self.mark()
            self._write(b"\x03")
            try:
                self.wait_for(r"\^C", self.echo_timeout, start=start, record=False)
                return True
            except ConsoleTimeout:
                if not self.running():
                    raise
        return False

    def _settled_mark(self) -> int:
        """The end of the console text once it has been quiet for ``echo_settle`` s (the
        shell's answer to an earlier line or Ctrl-C is out), at most ``echo_timeout``."""
        deadline = time.monotonic() + self.echo_timeout
        with self._cond:
            size = len(self._text)
            while time.monotonic() < deadline and not self._eof:
                self._cond.wait(self.echo_settle)
                if len(self._text) == size:
                    break
                size = len(self._text)
            return size

    def login(self, user: str = "root", password: str | None = None, *, timeout: float = 300,
              prompt: str = r"login: ?$", what: str = "login prompt",
              poke_every: float = 15.0) -> None:
        """Log in at a getty and prepare the shell for :meth:`shell`.

        Enter is pressed every ``poke_every`` s until a login prompt shows (a prompt
        printed earlier may have been buried by kernel messages). No password is ever written to the log.
        """
        deadline = time.monotonic() + timeout
        m = None
        start = self._pos
        while m is None:
            remaining = deadline - time.monotonic()
            try:
                m = self.wait_for(prompt, min(max(remaining, 0.1), poke_every), what=what, start=start,
                                  record=False)
            except ConsoleTimeout:
                if not self.running():
                    raise
                if remaining <= poke_every:
                    self.checks.append(Check(what, False, self.elapsed(),
                                             f"no login prompt within {timeout:.0f} s"))
                    raise ConsoleTimeout(f"{what} did not appear within {timeout:.0f} s; last "
                                         f"{TAIL_LINES} lines of {self.log_path}:\n{self.tail()}",
                                         self.tail()) from None
                self.send("")
        self.checks.append(Check(what, True, self.elapsed()))
        self.send(user)
        if password is not None:
            # Not anchored at the line's end: a kernel message may follow on the same line.
            self.wait_for(r"[Pp]assword: ?", 60, what="password prompt", record=False)
            self._type((password + "\n").encode())
        # A plain shell: no colours, no pager, no prompts in the output.
        token = secrets.token_hex(4)
        plain = "export TERM=dumb PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0"
        ready = f"printf '\\n%s-%s\\n' READY {token}"
        if not self.verify_echo:
            # No echo at all (so output is only output); typed blind.
            self.send(f"stty -echo 2>/dev/null; {plain}; PS1='# '; PS2=''; {ready}")
        else:
            # The tty's own echo of every character, which send() then checks: canonical
            # input without line editing (readline redraws long lines) and, in the end,
            # no prompts (one printed late would cut into the next command's echo). The
            # first line is typed at readline's prompt, so it is short of the 80th column;
            # the second only once the prompt it sets shows that the first has run (typed
            # earlier, it would reach readline's unechoed input, and a retry's Ctrl-C
            # would cut the first line short).
            try:
                # Also a prompt with a kernel message printed right after it on its line
                # ("root@xenhost:~# loop0: detected capacity change"): anchored at the
                # line's end only, that waited the whole minute.
                self.wait_for(r"[#$] ?$|^\S+@[\w.-]+:\S*[#$] ", 60, what="shell prompt", record=False)
            except ConsoleTimeout:
                if not self.running():
                    raise
            self._echoing = True
            self.send(f"stty sane -ixon; set +o emacs +o vi; PS1='<{token}> '")
            # Not anchored at the line's end: a kernel message (xen-blkback's, say) may be
            # printed right after the prompt, on the same line.
            self.wait_for(rf"^<{token}> ", 60, what="shell without line editing", record=False)
            self.send(f"PS1= PS2=; {plain}; {ready}")
        self.wait_for(rf"^READY-{token}$", 60, what="shell after login")

    def shell(self, command: str, timeout: float = 60, *, what: str | None = None,
              check: bool = False) -> tuple[str, int]:
        """Run ``command`` in the logged-in shell; return (output, exit status).

        The output is framed by markers carrying a random token; they are printed with
        printf so that an echoed command line never matches them. With ``check`` a
        non-zero status raises, showing the output.
        """
        token = secrets.token_hex(4)
        what = what or f"`{command}`"
        self.send(f"printf '\\n%s-%s\\n' BEGIN {token}; {{ {command}\n}} 2>&1; "
                  f"printf '\\n%s-%s %d\\n' END {token} $?")
        try:
            # The END marker's line may begin with a kernel message cut short by it
            # ("xen-blkback: bacEND-1a2b3c4d 0"); the token makes it unique all the same.
            m = self.wait_for(rf"^BEGIN-{token}\n(.*?)\n[^\n]*?END-{token} (\d+)$", timeout, what=what,
                              record=False, flags=re.DOTALL)
        except ConsoleTimeout as e:
            self.checks.append(Check(what, False, self.elapsed(), f"no result within {timeout:.0f} s"))
            raise ConsoleTimeout(f"{what} did not finish within {timeout:.0f} s; last {TAIL_LINES} "
                                 f"lines of {self.log_path}:\n{e.tail}", e.tail) from None
        output, status = m.group(1), int(m.group(2))
        if check and status != 0:
            self.checks.append(Check(what, False, self.elapsed(), f"exit status {status}"))
            raise ProvisionError(f"{what} failed with exit status {status}:\n{output.rstrip()}",
                                 exit_code=1)
        if check:
            self.checks.append(Check(what, True, self.elapsed()))
        return output, status


def _may_continue(echo: str, typed: str) -> bool:
    """Whether ``echo`` (console text since typing began) could still become one that
    holds ``typed``: it is empty or ends with the beginning of ``typed`` (output before
    the echo is fine). Otherwise a character was lost or something cut into the echo."""
    if not echo:
        return True
    return any(echo.endswith(typed[:k]) for k in range(min(len(echo), len(typed)), 0, -1))


