"""Kconfig files as data: fragments, merging, and checking what olddefconfig kept.

Linux and Xen share the Kconfig language, so the same code serves both: a fragment is
``CONFIG_X=value`` and ``# CONFIG_X is not set`` lines; merging lays fragments over a
base ``.config``, later ones winning; after olddefconfig :func:`check` compares what was
asked for with what Kconfig kept, and :func:`explain` finds why a symbol was dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProvisionError
from provision.fsutil import write_if_changed as _write_if_changed

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set\s*$")
_VALUE = re.compile(r'^(y|m|n|-?[0-9]+|0x[0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')


def parse(text: str, what: str = "config") -> dict[str, str]:
    """Symbol -> value ("y", "m", "n" for "is not set", a number or a quoted string).

    Anything that is not a setting, a blank line or a comment is an error naming the line,
    so a typo in a fragment never silently does nothing.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _UNSET.match(line):
            values[m.group(1)] = "n"
        elif m := _SET.match(line):
            value = m.group(2).strip()
            if not _VALUE.match(value):
                raise ProvisionError(
                    f"{what}:{number}: bad value for CONFIG_{m.group(1)}: {value}",
                    hint="use y, m, n, a number or a double-quoted string",
                )
            values[m.group(1)] = value
        elif line and not line.startswith("#"):
            raise ProvisionError(
                f"{what}:{number}: not a Kconfig setting: {line}",
                hint="write CONFIG_NAME=value or '# CONFIG_NAME is not set'",
            )
    return values


def parse_file(path: Path, what: str | None = None) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProvisionError(f"config fragment {path} does not exist") from None
    return parse(text, what or str(path))


def render(values: dict[str, str]) -> str:
    """A .config text that Kconfig reads back as ``values``."""
    lines = []
    for sym, value in values.items():
        lines.append(f"# CONFIG_{sym} is not set" if value == "n" else f"CONFIG_{sym}={value}")
    return "\n".join(lines) + "\n"


def merge(base: dict[str, str], *fragments: dict[str, str]) -> dict[str, str]:
    merged = dict(base)
    for fragment in fragments:
        merged.update(fragment)
    return merged


@dataclass(frozen=True)
class Dropped:
    """A setting that did not survive olddefconfig."""

    symbol: str
    wanted: str
    got: str  # "n" when the symbol is absent

    def __str__(self) -> str:
        return f"CONFIG_{self.symbol}={self.wanted} (got {self.got})"


def _is_on(value: str | None) -> bool:
    return value in ("y", "m")


def check(
    final: dict[str, str],
    wanted: dict[str, str],
    require: tuple[str, ...] = (),
    forbid: tuple[str, ...] = (),
) -> list[Dropped]:
    """What Kconfig did not keep: every ``wanted`` value, ``require`` (must be y) and
    ``forbid`` (must be unset). A wanted "m" is satisfied by "y" (no module support)."""
    problems: list[Dropped] = []
    for sym, value in wanted.items():
        got = final.get(sym, "n")
        if value == "m" and got == "y":
            continue
        if value == "n" and not _is_on(got):
            continue
        if got != value:
            problems.append(Dropped(sym, value, got))
    for sym in require:
        got = final.get(sym, "n")
        if got != "y" and not any(p.symbol == sym for p in problems):
            problems.append(Dropped(sym, "y", got))
    for sym in forbid:
        got = final.get(sym, "n")
        if _is_on(got) and not any(p.symbol == sym for p in problems):
            problems.append(Dropped(sym, "n", got))
    return problems


_CONFIG_DEF = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
_DEPENDS = re.compile(r"^\s*depends\s+on\s+(.+?)\s*$")
_PROMPT_IF = re.compile(r'^\s*(?:bool|tristate|prompt|string|int|hex)\s+"[^"]*"\s+if\s+(.+?)\s*$')


def kconfig_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("Kconfig*") if p.is_file())


def dependencies(tree: Path, symbol: str, files: list[Path] | None = None) -> list[str]:
    """The conditions ``config SYMBOL`` needs in the tree: its ``depends on`` and prompt
    ``if``, and those of the menus, choices and ``if`` blocks around it in its file
    (``visible if`` included: a hidden menu's options cannot be set)."""
    found: list[str] = []
    for path in files if files is not None else kconfig_files(tree):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if f"config {symbol}" not in text:
            continue
        stack: list[list[str]] = []  # conditions of the enclosing blocks
        header = False  # inside a menu/choice header, before its first entry
        inside = False
        for line in text.splitlines():
            word = line.split(None, 1)[0] if line.strip() else ""
            if m := _CONFIG_DEF.match(line):
                inside, header = m.group(1) == symbol, False
                if inside:
                    found.extend(c for frame in stack for c in frame)
                continue
            if word in ("menu", "choice"):
                stack.append([])
                inside, header = False, True
            elif word == "if":
                stack.append([line.strip()[3:].strip()])
                inside = header = False
            elif word in ("endmenu", "endchoice", "endif"):
                if stack:
                    stack.pop()
                inside = header = False
            elif word in ("source", "comment"):
                inside = header = False
            elif header and stack:
                if m := _DEPENDS.match(line):
                    stack[-1].append(m.group(1))
                elif m := re.match(r"^\s*visible\s+if\s+(.+?)\s*$", line):
                    stack[-1].append(m.group(1))
            elif inside:
                if m := _DEPENDS.match(line):
                    found.append(m.group(1))
                elif m := _PROMPT_IF.match(line):
                    found.append(m.group(1))
    return list(dict.fromkeys(found))


def _unmet(condition: str, final: dict[str, str]) -> list[str]:
    """The symbols named in ``condition`` that are off in ``final`` (a helpful subset)."""
    names = re.findall(r"!?\b([A-Z][A-Z0-9_]+)\b", condition)
    unmet = []
    for name in names:
        if name in ("y", "m", "n"):
            continue
        negated = f"!{name}" in condition
        on = _is_on(final.get(name))
        if on == negated:
            unmet.append(f"{'!' if negated else ''}{name}")
    return unmet


def explain(tree: Path, dropped: list[Dropped], final: dict[str, str]) -> list[str]:
    """One line per dropped setting, naming the dependency that is missing."""
    files = kconfig_files(tree)
    lines = []
    for problem in dropped:
        if problem.wanted == "n":
            lines.append(f"CONFIG_{problem.symbol} must not be set but is {problem.got} "
                         "(selected or defaulted on by another option)")
            continue
        deps = dependencies(tree, problem.symbol, files)
        if not deps:
            known = any(f"config {problem.symbol}\n" in p.read_text(errors="replace")
                        for p in files)
            reason = ("" if known else "no such option in this source tree")
        else:
            unmet = [u for d in deps for u in _unmet(d, final)]
            reason = "depends on " + " && ".join(f"({d})" if " " in d else d for d in deps)
            if unmet:
                reason += f"; not met: {', '.join(dict.fromkeys(unmet))}"
        lines.append(f"{problem}" + (f": {reason}" if reason else ""))
    return lines


def write_if_changed(path: Path, values: dict[str, str]) -> bool:
    """Write a .config only when its content changes, so make sees no new mtime."""
    return _write_if_changed(path, render(values))
