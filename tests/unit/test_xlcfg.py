"""Our reader/writer of xl's config grammar, judged against libxlutil itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from provision.domain import xlcfg
from provision.errors import ProvisionError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xlcheck"))
import xlcheck  # noqa: E402


@pytest.fixture(scope="module")
def checker():
    return xlcheck.build()


def test_values_of_every_kind():
    cfg = xlcfg.parse(
        'name = "vm1"   # a comment\n'
        "memory = 0x40; vcpus = 2\n"
        "disk = [ 'a,b',\n"
        "   # comment inside a list\n"
        "   \"c\", ]\n"
        "nested = [[1, 2], 'x']\n"
        "empty = []\n"
        "extra = 'console=hvc0'\n"
        "extra += ' quiet'\n"
        "disk += ['d']\n"
        "octal = 010\n"
        "name = 'vm2'\n"
    )
    assert cfg["name"] == "vm2"  # the last assignment wins, as in xl
    assert cfg["memory"] == 64 and cfg["vcpus"] == 2 and cfg["octal"] == 8
    assert cfg["disk"] == ["a,b", "c", "d"]
    assert cfg["nested"] == [[1, 2], "x"]
    assert cfg["empty"] == []
    assert cfg["extra"] == "console=hvc0 quiet"
    assert list(cfg.keys())[0] == "name" and cfg.lines["memory"] == 2


def test_string_escapes():
    cfg = xlcfg.parse(r"""a = "q\"b\\c\n"
b = 'it\'s'
""")
    assert cfg["a"] == 'q"b\\c\n' and cfg["b"] == "it's"


@pytest.mark.parametrize(
    "text, where",
    [
        ("name = vm1\n", ":1:"),                 # bare word
        ('name = "x"\nNAME = 1\n', ":2:"),       # upper-case key
        ('name = "x" memory = 1\n', ":1:"),      # two settings on one line
        ("memory = -1\n", ":1:"),                # no negative numbers in xl
        ("memory = 1.5\n", ":1:"),
        ("disk = [,]\n", ":1:"),
        ("disk = ['a'\n", ":2:"),                # unterminated list
        ('name = "x\n', ":1:"),                  # unterminated string
        ("x = 'a' 'b'\n", ":1:"),
        ("x\n= 1\n", ":1:"),
        ('x = "\\q"\n', ":1:"),
    ],
)
def test_syntax_errors_are_one_line_with_the_line_number(text, where):
    with pytest.raises(ProvisionError) as e:
        xlcfg.parse(text, "t.cfg")
    assert "\n" not in e.value.message and e.value.message.startswith("t.cfg" + where)


def test_python_code_gets_a_hint():
    with pytest.raises(ProvisionError) as e:
        xlcfg.parse('import os\nname = "vm%d" % vmid\n', "x.cfg")
    assert "xm config with Python" in e.value.hint


# Inputs on which our reader and libxlutil must agree: accepted by both or refused by both.
DIFFERENTIAL = [
    'name = "x"\n',
    'name = "x"\na.b = 1\n',
    'name = "x"\nab = 1; cd = 2\n',
    "name = 'x'\nl = [[1, 2], 3]\n",
    "name = 'x'\nl = [,]\n",
    "name = 'x'\nl = []\n",
    "name = 'x'\nl = [1,\n 2,\n]\n",
    "name = 'x'\nx = 1e5\n",
    "name = 'x'\nx = -1\n",
    "name = 'x'\nx = 0x1f\n",
    "name = 'x'\nx = 1.5\n",
    "name = 'a\\'b'\n",
    "name = 'x'\nx += [1]\n",
    'name = "x" y = 1\n',
    'name = "x"\n\n;;\n',
    'name = "x" # comment\n',
    'name = "x"\nx = "a\\qb"\n',
    "name = 'x'\nx = 9g\n",
    "name = 'x'\nx = True\n",
    'name = "x"\nx = "a" "b"\n',
    'name = "x"\nx\n= 1\n',
    'name = "x"',
    'name = "x"\n_a = 1\n',
    'name = "x"\nX = 1\n',
    'name = "x"\nimport os\n',
    'name = "x"\nx = [1\n, 2]\n',
    'name = "x"\nx = ""\n',
    "name = \"x\"\nx = 'tab\\there'\n",
]


@pytest.mark.parametrize("text", DIFFERENTIAL)
def test_we_accept_exactly_what_libxlutil_accepts(text, checker, tmp_path):
    f = tmp_path / "t.cfg"
    f.write_text(text)
    theirs = xlcheck.run(checker, f).returncode == 0
    try:
        xlcfg.parse(text, str(f))
        ours = True
    except ProvisionError:
        ours = False
    assert ours == theirs, f"we {'accept' if ours else 'refuse'} but libxlutil does not agree:\n{text}"


@pytest.mark.parametrize(
    "value",
    ["plain", "with 'single' quotes", 'with "double" quotes', "back\\slash", "both ' and \"",
     "", "a,b=c", 64, 0, ["x", 'y"', "z'"], [], [[1, "a"], "b"]],
)
def test_writer_round_trips_through_us_and_libxlutil(value, checker, tmp_path):
    text = f'name = "x"\n{xlcfg.format_setting("extra" if not isinstance(value, list) else "l", value)}\n'
    assert xlcfg.parse(text)["extra" if not isinstance(value, list) else "l"] == value
    f = tmp_path / "w.cfg"
    f.write_text(text)
    out = xlcheck.accept(checker, f)
    if isinstance(value, str):
        assert f"extra={value}\n" in out  # Xen reads back the same string


def test_writer_refuses_bad_keys():
    with pytest.raises(ProvisionError):
        xlcfg.format_setting("Bad", 1)


@pytest.mark.parametrize("action", ["destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
                                    "coredump-restart", "soft-reset", "restart_rename", "coredump_restart",
                                    "reboot", "Destroy"])
def test_shutdown_actions_agree_with_xl(action, checker, tmp_path):
    from provision.domain.model import Domain

    text = f'name = "x"\nmemory = 64\nkernel = "/k"\non_crash = "{action}"\n'
    f = tmp_path / "a.cfg"
    f.write_text(text)
    theirs = xlcheck.run(checker, f).returncode == 0
    try:
        Domain.from_config(xlcfg.parse(text).values, str(f))
        ours = True
    except ProvisionError:
        ours = False
    assert ours == theirs == (action in ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
                                         "coredump-restart", "soft-reset"))
