import importlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provision import run as runmod
from provision import validate
from provision.errors import ProvisionError
from provision.fsutil import atomic_write, write_if_changed
from provision.sizes import GiB, MiB, format_size, parse_size, round_up
from provision.undo import UndoStack

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text,expected",
    [("2G", 2 * GiB), ("2GiB", 2 * GiB), ("2048M", 2 * GiB), ("512MiB", 512 * MiB),
     ("4096", 4 * GiB), ("1.5G", 1536 * MiB), ("1GB", 10**9), ("100K", 100 * 1024)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "-1G", "1Q", "", "G", "1 2"])
def test_parse_size_rejects(text):
    with pytest.raises(ProvisionError):
        parse_size(text)


def test_format_size():
    assert format_size(2 * GiB) == "2GiB"
    assert format_size(1536 * MiB) == "1536MiB"


def test_round_up():
    assert [round_up(n, MiB) for n in (0, 1, MiB - 1, MiB, MiB + 1)] == [0, MiB, MiB, MiB, 2 * MiB]
    assert round_up(3 * GiB + 5, 64 * MiB) == 3 * GiB + 64 * MiB


def test_validators():
    assert validate.mac("00:16:3E:AA:bb:cc") == "00:16:3e:aa:bb:cc"
    for bad in ["01:16:3e:aa:bb:cc", "00:16:3e:aa:bb", "zz:16:3e:aa:bb:cc"]:
        with pytest.raises(ProvisionError):
            validate.mac(bad)
    assert validate.hostname("Guest-1.example.org") == "guest-1.example.org"
    for bad in ["-bad", "a_b", "x" * 64, ""]:
        with pytest.raises(ProvisionError):
            validate.hostname(bad)
    for bad in ["a/b", "..", "a b", "a;b", "$x"]:
        with pytest.raises(ProvisionError):
            validate.name(bad)
    assert validate.netmask("255.255.255.0") == 24
    with pytest.raises(ProvisionError):
        validate.ip("300.1.1.1")


def test_undo_runs_in_reverse_on_failure_and_cleanups_on_success():
    seen = []
    with pytest.raises(RuntimeError):
        with UndoStack() as undo:
            undo.rollback("a", seen.append, "a")
            undo.cleanup("b", seen.append, "b")
            raise RuntimeError("boom")
    assert seen == ["b", "a"]
    seen.clear()
    with UndoStack() as undo:
        undo.rollback("a", seen.append, "a")
        undo.cleanup("b", seen.append, "b")
    assert seen == ["b"]


def test_undo_on_sigterm(tmp_path):
    marker = tmp_path / "made"
    script = textwrap.dedent(f"""
        import os, time, sys
        sys.path.insert(0, {os.getcwd()!r})
        from provision.undo import UndoStack
        with UndoStack() as undo:
            open({str(marker)!r}, "w").close()
            undo.rollback("rm", os.unlink, {str(marker)!r})
            print("ready", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert marker.exists()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert proc.returncode != 0
    assert not marker.exists()


def test_atomic_write(tmp_path):
    p = tmp_path / "x" / "f"
    atomic_write(p, "hello", mode=0o600)
    assert p.read_text() == "hello"
    assert (p.stat().st_mode & 0o777) == 0o600
    assert not write_if_changed(p, "hello", mode=0o600)
    assert write_if_changed(p, "bye", mode=0o600)
    assert [x.name for x in p.parent.iterdir()] == ["f"]


def test_missing_tool_is_one_clear_error():
    with pytest.raises(ProvisionError) as e:
        runmod.run(["definitely-not-a-tool-xyz"])
    assert "definitely-not-a-tool-xyz" in str(e.value)


def test_failed_command_carries_exit_code():
    with pytest.raises(runmod.CommandError) as e:
        runmod.run(["sh", "-c", "echo oops >&2; exit 3"], quiet=True)
    assert e.value.returncode == 3
    assert "oops" in str(e.value)


def test_cli_help(run_cli):
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "python -m provision" in proc.stdout


@pytest.mark.parametrize("args, wrong", [
    (["image", "--bogus"], "unrecognized arguments: --bogus"),
    (["domain", "create", "--type", "xyz"], "argument --type: invalid choice: 'xyz'"),
    (["grub", "render", "--loader"], "argument --loader: expected one argument"),
    (["storage", "create", "img"], "the following arguments are required: --size"),
])
def test_bad_arguments_are_one_line_not_the_usage_block(run_cli, args, wrong):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and wrong in lines[0] and lines[0].startswith("error: python -m provision")
    assert lines[1].startswith("hint: python -m provision") and "--help" in lines[1]


def test_a_negative_value_after_an_option_is_its_value_not_an_option(run_cli, tmp_path):
    # argparse alone reads '--size -1G' as '--size' missing its value.
    img = tmp_path / "x.img"
    proc = run_cli("storage", "create", img, "--size", "-1G")
    assert proc.returncode == 2 and proc.stderr.startswith("error: image size '-1G' is not a size"), proc.stderr
    assert not img.exists()
    proc = run_cli("grub", "render", "--root", tmp_path, "--dom0-mem", "-512M")   # Xen's negative form
    assert "dom0_mem" not in proc.stderr and "expected one argument" not in proc.stderr, proc.stderr


def test_unforeseen_oserror_is_one_line(tmp_path, monkeypatch, capsys):
    from provision import cli

    def fail(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(cli, "build_parser", lambda *a, **k: _parser_with(fail))
    assert cli.main(["boom"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"error: Permission denied: {tmp_path / 'x'}"
    assert "Traceback" not in "\n".join(err)


def _parser_with(func):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("boom").set_defaults(func=func)
    return parser


def test_the_command_table_is_what_each_module_registers():
    """cli.COMMANDS says which module registers which command: a command missing there
    would still work (it falls back to every module) but pay every module's import."""
    import argparse

    from provision import cli
    for module, names in cli.COMMANDS.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == names, module
    assert cli.modules_for(["--debug", "domain", "list"]) == ["provision.domain.cli"]
    assert cli.modules_for(["xendomains", "status"]) == ["provision.domain.cli"]
    for argv in ([], ["--help"], ["nosuch"], ["-q"]):
        assert cli.modules_for(argv) == list(cli.COMMANDS), argv


def test_a_command_imports_only_its_own_modules():
    code = ("import sys\nfrom provision import cli\n"
            "try:\n    cli.main(['network', 'status', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.endswith('.cli') and m.startswith('provision.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "['provision.cli', 'provision.network.cli']"
