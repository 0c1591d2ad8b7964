"""Generated strings and numbers at every option of every subcommand (issue 14).

Each call either succeeds, or prints exactly one 'error:' line (and at most one
'hint:'), with no warning or note before it, exits non-zero and changes nothing in its
sandbox; never a traceback, never a mount or loop device left behind. Commands that
change things run with --dry-run or inside a throw-away sandbox (--root, targets,
DESTDIR, the cache, the template and config directories), never on this host's files;
the network is cut off. Only commands named in SANDBOX run (a new one must be added
there, with what keeps it off this host); ``world`` and ``boottest`` (whole builds and a
QEMU boot) are left out.

main() is called in-process (a subprocess per example would cost half a second each);
its output is captured. Profiles (tests/conftest.py): 'ci' with a fixed seed, 'dev',
and 'long' for many more examples: HYPOTHESIS_PROFILE=long.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from provision import cli  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_install import make_tree  # noqa: E402

SKIP = {"world": "a real build", "boottest": "a QEMU boot"}
# Options whose value names a file or directory: always inside the sandbox.
PATHS = {"image", "target", "source", "file", "dir", "disk", "output", "files", "populate", "keyring", "ssh_key",
         "root_password_file", "tree", "destdir", "dist_dir", "from_image", "devices", "config_dir", "root",
         "save_dir_path"}


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    actions: tuple[argparse.Action, ...]

    @property
    def name(self) -> str:
        return " ".join(self.path)


def _commands() -> list[Command]:
    found = []

    def walk(parser, path):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append(Command(tuple(path), tuple(a for a in parser._actions
                                                    if not isinstance(a, (argparse._HelpAction,)))))
            return
        for name, sub in subs[0].choices.items():
            walk(sub, [*path, name])

    walk(cli.build_parser(), [])
    return found


ALL_COMMANDS = _commands()

# -- values --------------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
_NUMBER = st.one_of(st.integers(-10**6, 10**6), st.integers(10**9, 10**30), st.just(10**400)).map(str)
_SIZE = st.builds(lambda n, u: f"{n}{u}", st.one_of(st.integers(0, 4096), st.just(99999999999), st.just(10**400),
                                                    st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}")),
                  st.sampled_from(["", "K", "M", "G", "T", "P", "E", "MiB", "GB", "x", "b"]))
_ODD = st.sampled_from(["", " ", "-1", "0", "..", "/", "a,b", "a b", "-", "--x", "\n", "%s", "{{ x }}", "ü", "²",
                        "1e400", "nan", "inf", "-inf", "0x10", "010", "99999999999T", "9" * 400, "256.1.1.1",
                        "0.0.0.0/0", "10.0.0.255/24", "127.0.0.1", "224.0.0.1", "::1", "root=/dev/x",
                        "rest", "rest,fs=ext4", "8M,fs=swap,label=x", "name=x", "vdev=xvda, target=/x",
                        "bridge=xenbr0", "mac=00:16:3e:00:00:01", "1G,max:2G", "credit2", "com1", "115200,8n1"])
VALUES = st.one_of(_TEXT, _NUMBER, _SIZE, _ODD)


# Plausible values, so that a generated call gets past the first option and the checks
# behind it are reached too; WORK is the sandbox's work directory.
GOOD = {
    "size": ["8M", "16M", "64M", "2G"], "extend_by": ["512M"], "snapshot_size": ["64M"], "swap": ["16M"],
    "memory": ["64", "512M", "1G"], "maxmem": ["128"], "vcpus": ["1", "2"], "name": ["web1", "vm2", "lv1"],
    "kernel": ["/boot/vmlinuz-6.1.0-xen0", "/k"], "ramdisk": ["/boot/initrd"], "root_device": ["/dev/xvda1 ro", "/dev/sda4"],
    "extra": ["console=hvc0"], "vif": ["", "bridge=xenbr0", "mac=00:16:3e:01:02:03"], "nfs_server": ["192.0.2.1"],
    "nfs_root": ["/srv/nfs/vm"], "ip": ["192.0.2.10/24", "192.0.2.11"], "gateway": ["192.0.2.1"],
    "hostname": ["vm1"], "mac_prefix": ["00:16:3e", "02:00:00"], "assignments": ["vmid=1", "memory=128", "name=x"],
    "disk": ["vdev=xvda, access=rw, target=WORK/exists.img", "format=raw, vdev=xvdb, access=ro, target=WORK/fs.img",
             "vdev=xvda, access=rw, target=WORK/used.img"],
    "xen": ["/boot/xen-4.17.3.gz"], "xen_config": ["/boot/xen-4.17.3.config"], "initrd": ["/boot/initrd.img"],
    "xen_args": ["dom0_mem=1G", "loglvl=all noreboot"], "dom0_mem": ["1G", "512M,max:1G", "131072"],
    "com1": ["115200,8n1"], "com2": ["auto"], "console": ["com1,vga"], "sched": ["credit2", "credit"],
    "dom0_max_vcpus": ["2", "1-4"], "loglvl": ["all"], "guest_loglvl": ["warning/info"], "machine_memory": ["8G"],
    "dom0_args": ["quiet", "root=/dev/sda4 ro"], "title": ["Xen"], "id": ["xen-test"], "efi_dir": ["/boot/efi/EFI/xen"],
    "fs": ["ext4", "swap", "vfat", "xfs"], "label": ["root"], "uuid": ["0a1b2c3d-0000-4000-8000-000000000001"],
    "populate": ["WORK/dir"], "table": ["msdos", "gpt"], "part": ["8M,fs=ext4", "rest,fs=swap", "rest", "4M,type=bios_grub"],
    "threshold": ["80"], "interval": ["1"], "thin_pool": ["pool"], "origin": ["base"],
    "debootstrap": ["bookworm", "sarge", "jammy"], "from_template": ["web"], "netmask": ["255.255.255.0"],
    "dns": ["192.0.2.53"], "search": ["example.org"], "mirror": ["http://deb.debian.org/debian"],
    "proxy": ["http://127.0.0.1:3142"], "arch": ["amd64", "i386"], "include": ["less"], "exclude": ["nano"],
    "save_template": ["web"], "template_vg": ["xphypvg"], "lv": ["xphypvg/vm1"], "vg": ["xphypvg"],
    "save_dir": ["/var/lib/xen/save"], "parallel": ["4"], "stop_timeout": ["300"], "xen_service": ["xencommons", "xen"],
    "sign": ["nobody@example.invalid"], "destdir": ["WORK/dest"], "files": ["WORK/good.cfg", "WORK/xm", "WORK/latin1.cfg"],
    "file": ["WORK/good.cfg", "WORK/xm", "WORK/new.img", "WORK/newdir"], "from_image": ["WORK/exists.img"],
    "output": ["WORK/out.cfg", "WORK/good.cfg"], "devices": ["WORK/exists.img"], "source": ["WORK/fs.img", "WORK/used.img"],
    "target": ["WORK/new.img", "WORK/used.img", "WORK/exists.img"], "image": ["WORK/new.img", "WORK/exists.img"],
    "dir": ["WORK/newdir", "WORK/dir"], "keyring": ["/usr/share/keyrings/debian-archive-keyring.gpg"],
    "ssh_key": ["WORK/dir/file"], "root_password_file": ["WORK/dir/file"], "dist_dir": ["WORK/dist"],
    "config_dir": ["ROOT/etc/xen"],
}


def _sandbox_path(box: Path):
    names = st.one_of(st.sampled_from(["new.img", "new", "dir", "exists.img", "fs.img", "good.cfg", "xm",
                                       "latin1.cfg", "used.img", "x.tgz", "a,b.img", "a b", "..", ".", ""]),
                      st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
                              min_size=1, max_size=10))
    return st.one_of(names.map(lambda n: str(box / "work" / n)), st.sampled_from(["", " "]))


def _value(action: argparse.Action, box: Path):
    """Mostly a plausible value, sometimes anything at all."""
    good = [v.replace("WORK", str(box / "work")).replace("ROOT", str(box / "root"))
            for v in GOOD.get(action.dest, [])]
    if action.dest in PATHS:
        junk = _sandbox_path(box)
    elif action.dest in ("vg", "template_vg"):  # never a real volume group of this host
        junk = VALUES.map(lambda v: "xphyp" + v)
    elif action.dest == "lv":
        junk = VALUES.map(lambda v: f"xphyp{v}/lv")
    else:
        junk = VALUES
    if action.choices:
        good = sorted(action.choices)
    if not good:
        return junk
    return st.integers(0, 3).flatmap(lambda i: st.sampled_from(good) if i else junk)


# How each command is kept in its sandbox: what is always given. Only the commands named
# here run; a new command runs once it is added, with what keeps it off this host's own
# files (test_every_command_is_sandboxed fails until then). Positional paths and DESTDIR
# always lie in the sandbox (see PATHS, argvs).
def _root(box: Path) -> list[str]:
    return ["--root", str(box / "root")]


SANDBOX = {
    ("dist",): lambda box: ["--dist-dir", str(box / "dist")],
    ("install",): lambda box: ["--from", str(box / "dist" / "install")],
    ("uninstall",): lambda box: [],
    ("grub", "render"): _root, ("grub", "install"): _root, ("grub", "remove"): _root, ("grub", "bios"): _root,
    # --apply is refused for any root but / (so never runs here); confirm and rollback act
    # only on a change pending in this network namespace, and none is.
    ("network", "bridge"): _root, ("network", "routed"): _root, ("network", "status"): _root,
    ("network", "confirm"): lambda box: [], ("network", "rollback"): lambda box: [],
    ("storage", "create"): lambda box: [], ("storage", "partition"): lambda box: [],
    ("storage", "clone"): lambda box: [], ("storage", "check"): lambda box: [],
    ("storage", "fill"): lambda box: [],  # its VG names are never this host's (see _value)
    ("storage", "lvm", "pv"): lambda box: [], ("storage", "lvm", "vg"): lambda box: [],
    ("storage", "lvm", "lv"): lambda box: [], ("storage", "lvm", "pool"): lambda box: [],
    ("storage", "lvm", "snapshot"): lambda box: [], ("storage", "lvm", "extend"): lambda box: [],
    ("image",): lambda box: ["--dry-run"],
    ("image", "update"): lambda box: ["--dry-run"], ("image", "seed"): lambda box: ["--dry-run"],
    ("image", "resize"): lambda box: ["--dry-run"], ("domain", "resize"): lambda box: ["--dry-run", *_root(box)],
    ("domain", "create"): _root, ("domain", "convert"): lambda box: [], ("domain", "check"): lambda box: [],
    ("domain", "list"): _root, ("domain", "remove"): _root, ("domain", "autostart"): _root,
    ("xendomains", "install"): _root, ("xendomains", "enable"): _root, ("xendomains", "disable"): _root,
    ("xendomains", "status"): _root,
}


COMMANDS = [c for c in ALL_COMMANDS if c.path in SANDBOX]


def _forced(cmd: Command, box: Path) -> list[str]:
    return SANDBOX[cmd.path](box)


def test_every_command_is_sandboxed():
    """A command the property test does not know how to keep off this host is not run by
    it, and this says so: add it to SANDBOX (with --root, --dry-run, ...) or to SKIP."""
    unknown = [c.name for c in ALL_COMMANDS if c.path not in SANDBOX and c.path[0] not in SKIP]
    assert unknown == [], f"not sandboxed for the property test: {unknown}"


@st.composite
def argvs(draw, cmd: Command, box: Path) -> list[str]:
    argv = list(cmd.path)
    forced = _forced(cmd, box)
    options = [a for a in cmd.actions if a.option_strings]
    # A handful of options per call: with all of domain create's 30, the first clash of
    # two of them would hide every check behind it.
    odds = max(2, len(options) // 4)
    for action in cmd.actions:
        if not action.option_strings:  # a positional
            if action.dest in ("destdir",):  # never absent: that would mean /
                argv.append(draw(_sandbox_path(box)))
                continue
            count = {None: 1, "?": draw(st.integers(0, 1)), "*": draw(st.integers(0, 2)),
                     "+": 1 if action.dest == "files" else draw(st.integers(1, 2))}.get(action.nargs, 1)
            argv += [draw(_value(action, box)) for _ in range(count)]
            continue
        if any(o in forced for o in action.option_strings) or action.dest in ("help", "version"):
            continue
        usual = action.required or (cmd.path == ("image",) and action.dest == "debootstrap")
        roll = draw(st.integers(0, 7 if usual else odds - 1))
        if (roll == 0) if usual else (roll != 0):  # usual ones: mostly given; the rest: a few
            continue
        option = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(option)
        else:
            value = draw(_value(action, box))
            argv += [f"{option}={value}"] if draw(st.booleans()) else [option, value]
    return argv + forced


# -- the sandbox ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    """What every example starts from: images, configs, a root with boot files, a dist."""
    s = tmp_path_factory.mktemp("seed")
    work = s / "work"
    (work / "dir").mkdir(parents=True)
    (work / "dir" / "file").write_text("x\n")
    with open(work / "exists.img", "wb") as f:
        f.truncate(1 << 20)
    with open(work / "fs.img", "wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", work / "fs.img"], check=True, capture_output=True)
    with open(work / "used.img", "wb") as f:
        f.truncate(1 << 20)
    (work / "good.cfg").write_text(f"name = 'good'\nmemory = 64\nkernel = '/k'\ndisk = ['{work}/exists.img,raw,xvda,rw']\n")
    (work / "xm").write_text("name = 'xm1'\nmemory = 64\nkernel = '/k'\nnics = 1\ndisk = ['phy:hda3,sda1,w']\n")
    (work / "latin1.cfg").write_bytes(b"# Ma\xeetre\nname = 'l1'\nmemory = 64\nkernel = '/k\xe9'\n")
    root = s / "root"
    for d in ("boot/grub/i386-pc", "etc/grub.d", "etc/default", "etc/xen/auto", "etc/init.d",
              "lib/systemd/system", "dev", "proc", "sys"):
        (root / d).mkdir(parents=True)
    (root / "boot/xen-4.17.3.gz").write_bytes(b"\x1f\x8bxen")
    (root / "boot/xen-4.17.3.config").write_text("CONFIG_SCHED_CREDIT=y\nCONFIG_SCHED_CREDIT2=y\n")
    (root / "boot/vmlinuz-6.1.0-xen0").write_bytes(b"kernel")
    (root / "boot/grub/i386-pc/multiboot2.mod").write_bytes(b"\x7fELF")
    (root / "etc/default/grub").write_text("GRUB_DEFAULT=0\n")
    (root / "etc/securetty").write_text("console\n")
    (root / "etc/init.d/xencommons").write_text("#!/bin/sh\n")
    (root / "lib/systemd/system/serial-getty@.service").write_text("[Unit]\n")
    (root / "etc/xen/vm1.cfg").write_text(f"name = 'vm1'\nmemory = 64\nkernel = '/k'\ndisk = ['{work}/used.img,raw,xvda,rw']\n")
    (root / "etc/xen/auto/vm1.cfg").symlink_to("../vm1.cfg")
    xen = s / "xen"
    xen.mkdir()
    (xen / "vm1").write_text(f"name = 'vm1'\nmemory = 64\nkernel = '/k'\ndisk = ['file:{work}/used.img,xvda,w']\n")
    make_tree(s / "dist" / "install")
    for d in ("cache", "tpl", "gnupg", "cwd"):
        (s / d).mkdir()
    (s / "gnupg").chmod(0o700)
    return s


def snapshot(top: Path) -> dict[str, tuple]:
    """Every path of the sandbox but gpg's home (gpg keeps its own state there)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath == str(top):
            dirnames.remove("gnupg")
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            kind = stat.S_IFMT(st_.st_mode)
            link = os.readlink(p) if stat.S_ISLNK(st_.st_mode) else None
            out[os.path.relpath(p, top)] = (kind, stat.S_IMODE(st_.st_mode), link,
                                            None if stat.S_ISDIR(st_.st_mode) else (st_.st_size, st_.st_mtime_ns))
    return out


def leftovers(box: Path) -> list[str]:
    """Mounts and loop devices of the sandbox that outlived the call."""
    found = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if str(box) in line]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().startswith(str(box)):
                found.append(backing.parent.parent.name)
    return found


@contextlib.contextmanager
def environment(box: Path):
    saved = dict(os.environ)
    os.environ.update(XEN_PROVISION_CACHE=str(box / "cache"), XEN_PROVISION_TEMPLATES=str(box / "tpl"),
                      XEN_PROVISION_XEN_DIR=str(box / "xen"), XEN_PROVISION_DIST=str(box / "dist"),
                      GNUPGHOME=str(box / "gnupg"), XDG_CACHE_HOME=str(box / "cache"))
    os.environ.pop("XEN_PROVISION_DEBUG", None)
    cwd = os.getcwd()
    os.chdir(box / "cwd")
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kw):
        raise OSError(101, "Network is unreachable (the property test is offline)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: --help, or its own exit
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name.replace(" ", "-"))
def test_every_option_of_every_command(cmd, seed, offline, tmp_path):
    @given(st.data())
    def check(data):
        box = Path(tempfile.mkdtemp(prefix="box.", dir=tmp_path))
        try:
            shutil.copytree(seed, box, symlinks=True, dirs_exist_ok=True)
            argv = data.draw(argvs(cmd, box), label="argv")
            before = snapshot(box)
            with environment(box):
                code, out, err = run_main(argv)
            lines = err.splitlines()
            assert "Traceback" not in err, err
            errors = [i for i, ln in enumerate(lines) if ln.startswith("error: ")]
            if code == 0:
                assert not errors, err
            else:
                assert len(errors) == 1, err
                assert len([ln for ln in lines if ln.startswith("hint: ")]) <= 1, err
                assert not any(ln.lstrip().startswith(("warning: ", "note: ")) for ln in lines[:errors[0]]), err
                after = snapshot(box)
                changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
                assert changed == [], (changed, err)
            if cmd.path == ("image",) and code == 0:  # --dry-run: nothing at all
                assert snapshot(box) == before
            assert leftovers(box) == []
        finally:
            if list((box / "gnupg").glob("S.gpg-agent*")):  # --sign started one
                subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ, GNUPGHOME=str(box / "gnupg")),
                               capture_output=True)
            shutil.rmtree(box, ignore_errors=True)

    check()
