"""Issue 14: each class of input that crashed, was accepted or was answered wrongly, one
regression test each. Every bad input: one 'error:' line (at most one 'hint:'), a
non-zero exit, no traceback, nothing changed; an interrupted run says what is true."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_error(proc, expected: str = "") -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len([ln for ln in lines if ln.startswith("hint: ")]) <= 1, proc.stderr
    assert expected in errors[0], proc.stderr
    # No warning or progress line before it: the error comes alone (item 7).
    assert lines[0] == errors[0], proc.stderr
    return errors[0]


@pytest.fixture
def env(tmp_path):
    return {"XEN_PROVISION_CACHE": str(tmp_path / "cache"), "XEN_PROVISION_TEMPLATES": str(tmp_path / "tpl"),
            "XEN_PROVISION_XEN_DIR": str(tmp_path / "xen")}


# -- item 4: tracebacks ---------------------------------------------------------------------

@pytest.mark.parametrize("size", ["99999999999T", "9" * 400, "1e9", "\u00b2G", "9" * 5000 + "G"],
                         ids=["huge-T", "400-digits", "exponent", "unicode-digit", "5000-digits"])
def test_huge_and_odd_sizes_are_one_line(run_cli, tmp_path, env, size):
    work = tmp_path / "w"
    work.mkdir()
    for args in (("storage", "create", work / "a.img", "--size", size),
                 ("storage", "partition", work / "b.img", "--size", size, "--part", "rest"),
                 ("storage", "partition", work / "c.img", "--size", "8M", "--part", f"{size},fs=ext4"),
                 ("image", "--debootstrap", "bookworm", "--file", work / "d.img", "--size", size, "--dry-run")):
        line = one_error(run_cli(*args, env=env))
        assert "too large" in line or "is not a size" in line, line
        assert len(line) < 300, line  # a 5000-digit size is named by its start
    assert listing(work) == []


def test_latin1_comment_is_fine_latin1_value_is_one_line(run_cli, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    good = tmp_path / "vm.cfg"
    good.write_bytes(b"# Ma\xeetre de l'image \xe0 Z\xfcrich\nname = 'vm'\nmemory = 64\nkernel = '/k'\n")
    assert run_cli("domain", "check", good).returncode == 0
    proc = run_cli("domain", "convert", good)
    assert proc.returncode == 0 and 'name = "vm"' in proc.stdout, proc.stderr
    proc = run_cli("domain", "create", "-f", good, "--root", root, "--no-kernel-check")
    assert proc.returncode == 0, proc.stderr
    bad = tmp_path / "bad"
    bad.write_bytes(b"name = 'vm2'\nmemory = 64\nkernel = '/boot/vmlinuz-caf\xe9'\n")
    xm = tmp_path / "xm"
    xm.write_bytes(b"# Ma\xeetre\nname = 'vm3'\nmemory = 64\nkernel = '/k'\nnics = 1\nextra = 'caf\xe9'\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x7fELF\0\1\2")
    for f, expected in ((bad, f"{bad}:3: 'kernel' holds a byte that is not UTF-8 (0xe9)"),
                        (xm, f"{xm}:6: 'extra' holds a byte that is not UTF-8 (0xe9)"),
                        (binary, "is not text")):
        for args in (("domain", "check", f), ("domain", "convert", f),
                     ("domain", "create", "-f", f, "--root", root, "--no-kernel-check")):
            line = one_error(run_cli(*args), expected)
            assert line.count(str(f)) == 1, line  # named once (item 7)
    assert sorted(p.name for p in (root / "etc/xen").iterdir()) == ["vm.cfg"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_in_the_first_few_hundred_ms(tmp_path, sig):
    """Ctrl-C while the modules are still loading was a KeyboardInterrupt traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), XEN_PROVISION_XEN_DIR=str(tmp_path / "xen"))
    outcomes = set()
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45):
        work = tmp_path / f"w{delay}"
        work.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "provision", "storage", "create", work / "a.img",
                                 "--size", "16M", "--fs", "ext4"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        ours = [f for f in re.findall(r'File "([^"]+)"', err) if f.startswith(str(ROOT / "provision"))]
        mine = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        if proc.returncode != 0 and not ours and not mine and (not err or "KeyboardInterrupt" in err):
            # The interpreter's own start-up (site-packages' .pth files, runpy finding the
            # package), before a line of ours ran: nothing of ours can catch that, and
            # nothing was done.
            assert listing(work) == [], err
            outcomes.add("killed at start-up")
            continue
        assert "Traceback" not in err, err
        assert len([ln for ln in err.splitlines() if ln.startswith("error: ")]) <= 1, err
        if proc.returncode == 0:
            assert listing(work) == ["a.img"], err
            outcomes.add("finished")
        else:
            assert proc.returncode == 128 + sig, err
            assert err.splitlines()[-1].startswith("error: interrupted"), err
            made = listing(work)
            if "finished and kept" in err:
                assert made == ["a.img"], err
            else:
                assert made == [], err
            outcomes.add(err.splitlines()[-1].split(";")[0])
    assert "error: interrupted before anything was done" in outcomes, outcomes


SWALLOWED = """
import sys, time
from provision import cli

class Dying:  # raises the interrupt where Python can only print it, as an import's lock callback did
    def __del__(self):
        raise {exc}

def work(args):
    Dying()
    for _ in range(200):
        time.sleep(0.01)
    print("finished")
    return 0

cli._process["ends_with_run"] = True
cli.finish(cli.run_command(work, None))
"""


@pytest.mark.parametrize("exc, code", [("KeyboardInterrupt", 130), ("cli.Interrupted(15)", 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_python_could_only_print_still_ends_the_run(exc, code):
    """A signal whose exception lands in a weakref callback or __del__ was printed as
    "Exception ignored in ... KeyboardInterrupt" with a traceback, and the run went on."""
    proc = subprocess.run([sys.executable, "-c", SWALLOWED.format(exc=exc)], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert "finished" not in proc.stdout
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "error: interrupted; everything this run made has been undone"


# -- item 5: the message is true --------------------------------------------------------------

def _paused(argv, step: str, sig=signal.SIGINT, env=None, seconds="120", marker: Path | None = None):
    """Run ``python -m provision ARGV``, paused at ``step``; send ``sig`` there. ``marker``:
    a file the pause makes (install.sh's, whose stderr python reads, not we)."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), XEN_PROVISION_PAUSE_AT=step,
                XEN_PROVISION_PAUSE_SECONDS=seconds, **(env or {}))
    if marker:
        full["XEN_PROVISION_PAUSE_FILE"] = str(marker)
    proc = subprocess.Popen([sys.executable, "-m", "provision", *map(str, argv)], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    seen = ""
    while marker and not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    while not marker and f"paused at {step}" not in seen:
        line = proc.stderr.readline()
        assert line or time.monotonic() < deadline, seen
        if not line:
            break
        seen += line
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, seen + err


def test_interrupted_after_the_work_was_done_says_what_it_kept(tmp_path, env):
    img = tmp_path / "vm1.img"
    code, err = _paused(["storage", "create", img, "--size", "8M"], "finished", env=env)
    assert code == 130 and "Traceback" not in err
    assert f"error: interrupted after this was finished and kept: {img}; anything else this run made has been undone" in err
    assert img.stat().st_size == 8 << 20 and listing(tmp_path) == ["vm1.img"]
    # Before the rename it is all undone, and it says so.
    code, err = _paused(["storage", "create", tmp_path / "vm2.img", "--size", "8M"], "image-created", env=env)
    assert code == 130 and "error: interrupted; everything this run made has been undone" in err
    assert listing(tmp_path) == ["vm1.img"]
    # A clone, and a domain config with its autostart link.
    code, err = _paused(["storage", "clone", img, tmp_path / "vm3.img"], "finished", signal.SIGTERM, env=env)
    assert code == 143 and f"kept: {tmp_path / 'vm3.img'};" in err, err
    root = tmp_path / "root"
    root.mkdir()
    code, err = _paused(["domain", "create", "--root", root, "--name", "web", "--memory", "64", "--kernel", "/k",
                         "--no-kernel-check", "--autostart"], "finished", env=env)
    assert code == 130
    assert f"kept: {root / 'etc/xen/web.cfg'}, {root / 'etc/xen/auto/web.cfg'};" in err, err
    assert (root / "etc/xen/auto/web.cfg").resolve() == root / "etc/xen/web.cfg"
    assert not (root / "etc/xen/.xen-provision.lock").exists()  # no lock file is left either
    code, err = _paused(["domain", "remove", "--root", root, "web"], "finished", env=env)
    assert code == 130 and f"kept: the removal of {root / 'etc/xen/web.cfg'};" in err, err
    assert listing(root / "etc/xen") == ["auto"]


def test_install_interrupted_in_its_commit_finishes_and_says_so(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_install import make_tree

    tree = make_tree(tmp_path / "dist" / "install")
    dest = tmp_path / "dest"
    code, err = _paused(["install", "--from", tree, dest], "committing", seconds="1", marker=tmp_path / "paused")
    assert code == 130 and "Traceback" not in err
    assert f"error: interrupted after this was finished and kept: the install of {tree} into {dest};" in err, err
    assert (dest / "var/lib/xen-provision/installed.list").is_file() and (dest / "usr/sbin/xl").is_file()
    assert not list(dest.rglob(".xen-new.*"))
    # install.sh run directly: a Ctrl-C in its commit is ignored, the commit completes.
    dest2 = tmp_path / "dest2"
    full = dict(os.environ, XEN_PROVISION_PAUSE_AT="committing", XEN_PROVISION_PAUSE_SECONDS="1")
    sh = subprocess.Popen(["sh", ROOT / "install.sh", "--from", tree, dest2], env=full, stderr=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    assert sh.stderr.readline().strip() == "paused at committing"
    sh.send_signal(signal.SIGINT)
    out, err = sh.communicate(timeout=60)
    assert sh.returncode == 0 and "installed 13 files and links" in out, err


# -- item 6: input accepted that should not be --------------------------------------------------

def test_domain_bounded_by_what_xen_accepts(run_cli, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    base = ["domain", "create", "--root", root, "--name", "a", "--kernel", "/k", "--no-kernel-check"]
    one_error(run_cli(*base, "--memory", "99999999999T"), "memory '99999999999T' is too large: Xen gives a domain less than 16TiB")
    one_error(run_cli(*base, "--memory", "99999999999"), "memory 99999999999 is too large")
    one_error(run_cli(*base, "--memory", "64", "--vcpus", "99999"), "vcpus 99999 is too large: Xen gives a PV domain at most 8192 vCPUs")
    one_error(run_cli(*base, "--memory", "64", "--vcpus", "129", "--type", "pvh"), "at most 128 vCPUs")
    assert listing(root) == []


@pytest.fixture
def boot_root(tmp_path):
    root = tmp_path / "broot"
    (root / "boot").mkdir(parents=True)
    (root / "boot/xen-4.17.3.gz").write_bytes(gzip.compress(b"xen"))
    (root / "boot/vmlinuz-6.1.0-xen0").write_bytes(b"kernel")
    return root


def test_grub_bounds_and_conflicts(run_cli, boot_root):
    one_error(run_cli("grub", "render", "--root", boot_root, "--dom0-mem", "99999999999T", "--root-device", "/dev/sda4"),
              "dom0_mem=99999999999T is not valid: the amount is too large: Xen gives a domain, dom0 too, less than 16T")
    one_error(run_cli("grub", "render", "--root", boot_root, "--dom0-args", "root=/dev/sda1 quiet",
                      "--root-device", "/dev/sda4"), "dom0's root is given twice")
    # A warning that the line has no root= does not stand before an unrelated error (item 7).
    one_error(run_cli("grub", "render", "--root", boot_root, "--sched", "bvt", "--xen-args", "foo=1"), "sched=bvt")


def test_convert_never_overwrites_without_force(run_cli, tmp_path):
    xm = tmp_path / "vm1"
    xm.write_text("name = 'vm1'\nmemory = 64\nkernel = '/k'\n")
    before = xm.read_bytes()
    one_error(run_cli("domain", "convert", xm, "-o", xm), f"--output {xm} already exists: it is the file being converted")
    other = tmp_path / "vm1.cfg"
    other.write_text("mine\n")
    one_error(run_cli("domain", "convert", xm, "-o", other), "already exists")
    one_error(run_cli("domain", "convert", xm, "-o", tmp_path), "is a directory")
    assert xm.read_bytes() == before and other.read_text() == "mine\n"
    assert run_cli("domain", "convert", xm, "-o", other, "--force").returncode == 0
    assert 'name = "vm1"' in other.read_text()


@pytest.mark.parametrize("args, expected", [
    (["--file", "DIR"], "already exists"),
    (["--file", "W/a,b.img"], "image name 'a,b.img' is not valid"),
    (["--file", "W/a b.img"], "image name 'a b.img' is not valid"),
    (["--disk", "W/x;y.img"], "image name 'x;y.img' is not valid"),
    (["--file", "W/nodir/x.img"], "does not exist"),
    (["--file", "W/x.img", "--save-template", ""], "--save-template '' is empty"),
    (["--file", "W/x.img", "--hostname", " "], "--hostname ' ' is empty"),
    (["--file", "W/x.img", "--size="], "--size '' is empty"),
    (["--file", "W/x.img", "--ip", "256.1.1.1"], "address '256.1.1.1' is not a valid IP address"),
    (["--file", "W/x.img", "--ip", "10.0.0.255/24"], "is the broadcast address of 10.0.0.0/24"),
    (["--file", "W/x.img", "--ip", "0.0.0.0/8"], "is the unspecified address"),
    (["--file", "W/x.img", "--ip", "127.0.0.2/8"], "is a loopback address"),
    (["--file", "W/x.img", "--ip", "224.0.0.9/24"], "is a multicast address"),
    (["--file", "W/x.img", "--ip", "10.0.0.5/24", "--gateway", "10.0.0.255"], "gateway '10.0.0.255' is the broadcast"),
    (["--file", "W/x.img", "--ip", "10.0.0.5/24", "--gateway", "127.0.0.1"], "gateway '127.0.0.1' is a loopback"),
    (["--file", "W/x.img", "--dns", "255.255.255.255"], "is the broadcast address"),
])
def test_image_dry_run_checks_what_the_real_run_checks(run_cli, tmp_path, env, args, expected):
    work = tmp_path / "w"
    (work / "DIR").mkdir(parents=True)
    args = [a.replace("W/", f"{work}/") if a != "DIR" else str(work / "DIR") for a in args]
    one_error(run_cli("image", "--debootstrap", "bookworm", "--dry-run", *args, env=env), expected)
    assert listing(work) == ["DIR"]


def test_storage_names_empty_strings_and_root(run_cli, tmp_path, env):
    one_error(run_cli("storage", "create", tmp_path / "a.img", "--size", "", env=env), "--size '' is empty")
    one_error(run_cli("domain", "create", "--root", tmp_path, "--name", "", "--memory", "64"), "--name '' is empty")
    one_error(run_cli("xendomains", "install", "--root", tmp_path, "--save-dir="), "--save-dir '' is empty")
    assert listing(tmp_path) == []


# -- item 7: errors that say what happened ------------------------------------------------------

def test_domain_check_names_the_file_once_with_error(run_cli, tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("name = 'x'\nmemory = 64\nkernel = '/k'\nvcpu = 2\n")
    proc = run_cli("domain", "check", bad)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {bad}:4: unknown key 'vcpu' (did you mean 'vcpus'?)",
                                        "hint: see xl.cfg(5) for the keys xl understands"]
    missing = tmp_path / "missing.cfg"
    proc = run_cli("domain", "check", missing)
    assert proc.stderr.splitlines() == [f"error: config file '{missing}' does not exist"]


def test_partition_labels_are_checked_before_the_table_is_written(run_cli, tmp_path):
    img = tmp_path / "disk.img"
    one_error(run_cli("storage", "partition", img, "--size", "16M", "--part", "8M,fs=swap,label=a-label-too-long",
                      "--part", "rest,fs=ext4"), "label 'a-label-too-long' is not valid for swap")
    assert listing(tmp_path) == []
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    for part in ("rest,fs=ext4,label=seventeen-chars-x", "rest,label=msdos-has-no-names", "rest,fs=vfat,label=bad label"):
        one_error(run_cli("storage", "partition", img, "--part", part), "label")
        assert img.read_bytes() == b"\0" * (16 << 20)  # no table was written


def test_no_warning_before_an_error(run_cli, tmp_path, env):
    """A sparse image larger than the free space is a warning; if the image then cannot be
    made, the error comes alone."""
    proc = run_cli("storage", "create", tmp_path / "big.img", "--size", "4000000T", env=env)
    one_error(proc, "could not make")
    xm = tmp_path / "xm.cfg"
    xm.write_text("name = 'x'\nmemory = 64\nkernel = '/k'\nnics = 1\nvcpu = 2\n")
    root = tmp_path / "root"
    root.mkdir()
    one_error(run_cli("domain", "create", "-f", xm, "--root", root, "--no-kernel-check"), "vcpu")
