"""xl's domain config grammar: a reader and a writer, no Python ``exec``.

The grammar is libxlutil's (tools/libs/util/libxlu_cfg_[ly].[ly] in Xen):

    file       := { setting? (NEWLINE | ';') }
    setting    := IDENT ('=' | '+=') value
    value      := STRING | NUMBER | '[' [ value { ',' value } [','] ] ']'
    IDENT      := [a-z][._0-9a-z]*        (lower case only)
    NUMBER     := [0-9][0-9a-fx]*         (kept as text by xl; strtol base 0 on use)
    STRING     := "..." or '...' with \\ escapes; '#' starts a comment to end of line

Newlines are allowed inside lists. The last assignment of a key wins; ``+=`` appends
to the previous value. Numbers come back as ``int`` when they are integers for
strtol, otherwise as the token text; every other atom is a ``str``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import ProvisionError

Value = "str | int | list[Value]"

_IDENT = re.compile(r"[a-z][._0-9a-z]*")
_NUMBER = re.compile(r"[0-9][0-9a-fx]*")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t", "v": "\v"}
# Lines that xl itself would flag as "looks like Python" (it says so on a failed parse).
_PYTHON_HINT = re.compile(r"^\s*(import|from|if|elif|else|for|while|def|class|try|print)\b|%", re.M)


class ConfigSyntaxError(ProvisionError):
    def __init__(self, source: str, line: int, message: str, text: str = ""):
        hint = None
        if _PYTHON_HINT.search(text):
            hint = ("this looks like an xm config with Python code; xl configs are plain "
                    "assignments: convert it with 'domain convert' or use a template with variables")
        super().__init__(f"{source}:{line}: {message}", hint=hint)
        self.line = line


@dataclass
class Config:
    """Settings in file order (a re-assigned key keeps its first position)."""

    values: dict[str, object] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    source: str = "<config>"

    def get(self, key, default=None):
        return self.values.get(key, default)

    def __contains__(self, key):
        return key in self.values

    def __getitem__(self, key):
        return self.values[key]

    def __setitem__(self, key, value):
        self.values[key] = value

    def keys(self):
        return self.values.keys()


def _number(text: str) -> int | str:
    # strtol(base 0): 0x.. hex, leading 0 octal, else decimal; anything else stays text.
    try:
        if re.fullmatch(r"0x[0-9a-f]+", text):
            return int(text, 16)
        if re.fullmatch(r"0[0-7]*", text):
            return int(text, 8) if len(text) > 1 else 0
        if re.fullmatch(r"[1-9][0-9]*", text):
            return int(text)
    except ValueError:
        pass
    return text


class _Lexer:
    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self.pos = 0
        self.line = 1

    def error(self, message: str, line: int | None = None):
        raise ConfigSyntaxError(self.source, line or self.line, message, self.text)

    def tokens(self):
        """Yield (kind, value, line): kinds IDENT NUMBER STRING NL = += [ ] , ; END."""
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in " \t\r":
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            elif c == "\n":
                yield ("NL", None, self.line)
                self.line += 1
                self.pos += 1
            elif c in "=[],;":
                yield (c, c, self.line)
                self.pos += 1
            elif text.startswith("+=", self.pos):
                yield ("+=", "+=", self.line)
                self.pos += 2
            elif c in "\"'":
                yield ("STRING", self._string(c), self.line)
            elif m := _IDENT.match(text, self.pos):
                self.pos = m.end()
                yield ("IDENT", m.group(), self.line)
            elif m := _NUMBER.match(text, self.pos):
                self.pos = m.end()
                if self.pos < n and (text[self.pos].isalnum() or text[self.pos] in "._"):
                    self.error(f"'{m.group()}{text[self.pos]}' is not a number; quote strings")
                yield ("NUMBER", _number(m.group()), self.line)
            else:
                word = re.match(r"\S+", text[self.pos:]).group()
                self.error(f"unexpected '{word[:20]}' (keys are lower case; strings need quotes)")
        yield ("END", None, self.line)

    def _string(self, quote: str) -> str:
        text, out, i = self.text, [], self.pos + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                self.error("unterminated string")
            c = text[i]
            if c == quote:
                self.pos = i + 1
                return "".join(out)
            if c == "\\":
                nc = text[i + 1] if i + 1 < len(text) else ""
                if nc not in _ESCAPES:
                    self.error(f"unsupported escape '\\{nc}' in string")
                out.append(_ESCAPES[nc])
                i += 2
                continue
            out.append(c)
            i += 1


class _Parser:
    def __init__(self, text: str, source: str):
        self.lexer = _Lexer(text, source)
        self.toks = self.lexer.tokens()
        self.tok = next(self.toks)

    def advance(self):
        self.tok = next(self.toks)

    def expect(self, kind: str, what: str):
        if self.tok[0] != kind:
            self.fail(f"expected {what}")
        value = self.tok[1]
        self.advance()
        return value

    def fail(self, message: str):
        kind, value, line = self.tok
        found = {"NL": "end of line", "END": "end of file"}.get(kind, repr(value))
        self.lexer.error(f"{message}, found {found}", line)

    def skip_newlines(self):
        while self.tok[0] == "NL":
            self.advance()

    def value(self):
        kind, value, _ = self.tok
        if kind in ("STRING", "NUMBER"):
            self.advance()
            return value
        if kind == "[":
            self.advance()
            items = []
            self.skip_newlines()
            while self.tok[0] != "]":
                items.append(self.value())
                self.skip_newlines()
                if self.tok[0] == ",":
                    self.advance()
                    self.skip_newlines()
                elif self.tok[0] != "]":
                    self.fail("expected ',' or ']' in list")
            self.advance()
            return items
        self.fail("expected a string, number or list")

    def config(self) -> Config:
        cfg = Config(source=self.lexer.source)
        while self.tok[0] != "END":
            if self.tok[0] in ("NL", ";"):
                self.advance()
                continue
            line = self.tok[2]
            key = self.expect("IDENT", "a key")
            op = self.tok[0]
            if op not in ("=", "+="):
                self.fail(f"expected '=' after '{key}'")
            self.advance()
            value = self.value()
            if op == "+=" and key in cfg.values:
                old = cfg.values[key]
                if isinstance(old, list) and isinstance(value, list):
                    value = old + value
                elif not isinstance(old, list) and not isinstance(value, list):
                    value = f"{old}{value}"
                else:
                    self.lexer.error(f"'{key} +=' mixes a list and a string", line)
            cfg.values[key] = value
            cfg.lines.setdefault(key, line)
            if self.tok[0] not in ("NL", ";", "END"):
                self.fail(f"expected end of line after '{key} = ...'")
        return cfg


def parse(text: str, source: str = "<config>") -> Config:
    """Parse xl config text; a syntax error is one line naming the file and line."""
    return _Parser(text, source).config()


def read_text(path: str | Path) -> str:
    """A config file's text. Bytes that are not UTF-8 (a Latin-1 comment, as xm configs
    often have) come through as surrogate escapes: in a comment they do not matter, in a
    value :func:`check_text` refuses them."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProvisionError(f"config file '{path}' does not exist") from None
    except IsADirectoryError:
        raise ProvisionError(f"config file '{path}' is a directory") from None
    except OSError as e:
        raise ProvisionError(f"cannot read config file '{path}': {e.strerror}") from None
    if b"\0" in data:
        raise ProvisionError(f"config file '{path}' is not text (it holds NUL bytes)")
    return data.decode("utf-8", "surrogateescape")


def _not_utf8(value) -> str | None:
    """The first byte of ``value`` (or of a string in it) that was not UTF-8, as 0xNN."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, list):
            if found := _not_utf8(item):
                return found
        elif isinstance(item, str) and (m := re.search("[\udc80-\udcff]", item)):
            return f"0x{ord(m.group()) - 0xDC00:02x}"
    return None


def check_text(values: dict, source: str, lines: dict | None = None) -> None:
    """Refuse a value holding bytes that are not UTF-8: xl would pass them on, and every
    file and line we write from it would carry them."""
    for key, value in values.items():
        if byte := _not_utf8(value):
            where = f":{lines[key]}" if lines and key in lines else ""
            raise ProvisionError(f"{source}{where}: '{key}' holds a byte that is not UTF-8 ({byte})",
                                 hint="write the file as UTF-8, e.g. iconv -f latin1 -t utf-8")


def load(path: str | Path) -> Config:
    cfg = parse(read_text(path), str(path))
    check_text(cfg.values, cfg.source, cfg.lines)
    return cfg


# ---- writing -----------------------------------------------------------------------

def quote(s: str) -> str:
    """An xl string literal; single quotes unless the text needs escaping."""
    if "'" not in s and "\\" not in s and "\n" not in s:
        return f"'{s}'" if '"' in s else f'"{s}"'
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{out}"'


def format_value(value, indent: str = "    ") -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        if value < 0:
            return quote(str(value))  # xl has no negative number token
        return str(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if len(value) == 1 and not isinstance(value[0], list):
            return f"[ {format_value(value[0])} ]"
        inner = "".join(f"{indent}{format_value(v, indent + '    ')},\n" for v in value)
        return f"[\n{inner}{indent[:-4]}]"
    raise TypeError(f"cannot write {type(value).__name__} in an xl config")


def format_setting(key: str, value) -> str:
    if not _IDENT.fullmatch(key):
        raise ProvisionError(f"'{key}' cannot be an xl config key", hint="keys are lower case letters, digits, '_' and '.'")
    return f"{key} = {format_value(value)}"
