"""Applying a network plan to the live host without ever cutting the administrator off.

``--apply`` works like ``netplan try``: the change goes live, and unless ``network
confirm`` arrives within the timeout it is rolled back by itself. The rollback does not
depend on the command that made the change staying alive: before anything changes, a
guard process is started in a session of its own. It holds the pending change's record
(``/run/xen-provision/network-<netns>.json``: the files as they were, the uplink's
addresses and routes, the sysctl values) and rolls back when the deadline passes, when
``network rollback`` or an interrupted ``--apply`` asks, or when the command dies while
still applying. One code path, :meth:`Transaction.rollback`, serves all of them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provision import log
from provision.changes import Change, apply, current, restore
from provision.errors import ProvisionError
from provision.fsutil import Lock, atomic_write
from provision.network.discover import find_link, live_default_route, live_links, netns_id
from provision.network.plan import BACKUP_DIR, Plan
from provision.run import CommandError, run, which
from provision.undo import UndoStack

RUN_DIR = Path("/run/xen-provision")
PENDING = ("applying", "applied", "rollback")
POLL = 0.2


def record_path() -> Path:
    return RUN_DIR / f"network-{netns_id()}.json"


def _locked(record: Path) -> Lock:
    """The record's lock (its file exists only while someone holds or waits for it)."""
    record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Lock(record.with_suffix(".lock"))


def read_record(record: Path) -> dict | None:
    try:
        return json.loads(record.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def update_record(record: Path, **changes) -> dict | None:
    """Change fields of the record under its lock; returns the new record (None if gone)."""
    with _locked(record):
        rec = read_record(record)
        if rec is None:
            return None
        rec.update(changes)
        atomic_write(record, json.dumps(rec, indent=1, sort_keys=True) + "\n", 0o600)
        return rec


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child not yet reaped) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the transaction ------------------------------------------------------------------------

SYSTEM_BUS = Path("/run/dbus/system_bus_socket")


def _networkd_reload(uplink: str) -> None:
    """Make systemd-networkd read its files again. networkctl talks to it over D-Bus; a
    host without dbus (a minbase root) has no bus, and there a restart does the same:
    networkd reads every file when it starts and configures each link from them."""
    if SYSTEM_BUS.exists():
        run(["networkctl", "reload"], quiet=True)
        run(["networkctl", "reconfigure", uplink], check=False, quiet=True)
    else:
        run(["systemctl", "restart", "systemd-networkd"], quiet=True)


@dataclass
class Transaction:
    """A live network change and everything needed to take it back."""

    kind: str                                  # "bridge" | "routed"
    backend: str | None
    uplink: str
    bridge: str | None = None
    files: dict[str, dict] = field(default_factory=dict)    # path -> its state before
    backups: list[str] = field(default_factory=list)
    sysctl_old: dict[str, str] = field(default_factory=dict)
    sysctl_new: dict[str, str] = field(default_factory=dict)
    uplink_addresses: list[str] = field(default_factory=list)
    uplink_up: bool = True
    default_gateway: str | None = None         # the uplink's default route before
    ifupdown_had_uplink: bool = False          # ifupdown had brought the uplink up

    @classmethod
    def begin(cls, plan: Plan) -> Transaction:
        """Snapshot what the plan will change, before changing anything."""
        txn = cls(plan.kind, plan.backend, plan.uplink, plan.bridge)
        for ch in plan.changes:
            content, link, mode = current(Path(ch.path))
            txn.files[ch.path] = {"content": base64.b64encode(content).decode() if content is not None else None,
                                  "link": link, "mode": mode}
        link = find_link(live_links(), plan.uplink)   # an altname too (the files may use one)
        if link is not None:
            txn.uplink_addresses = [a for a, _ in link.addresses]
            txn.uplink_up = link.up
        dev, gw = live_default_route()
        txn.default_gateway = gw if dev in (plan.uplink, link.name if link else None) else None
        if plan.kind == "bridge" and plan.backend == "ifupdown" and which("ifquery"):
            state = run(["ifquery", "--state", plan.uplink], check=False, capture=True, quiet=True)
            txn.ifupdown_had_uplink = state.returncode == 0 and bool(state.stdout.strip())
        for key, value in plan.sysctl.items():
            txn.sysctl_new[key] = value
            txn.sysctl_old[key] = _sysctl_read(key)
        return txn

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Transaction:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    # -- forward ---------------------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        """Make the change live. Raises on failure; the caller then calls :meth:`rollback`."""
        root = Path("/")
        if self.kind == "routed":
            self._write(root, plan.changes)
            for key, value in self.sysctl_new.items():
                _sysctl_write(key, value)
            return
        if self.backend == "ifupdown":
            # Down with its old stanza (ifdown reads the files), then up as the bridge's port.
            if self.ifupdown_had_uplink:
                run(["ifdown", self.uplink], quiet=True)
            else:
                run(["ip", "addr", "flush", "dev", self.uplink, "scope", "global"], quiet=True)
            self._write(root, plan.changes)
            run(["ifup", self.bridge], quiet=True)
        else:
            self._write(root, plan.changes)
            _networkd_reload(self.uplink)
        self._wait_for_bridge(plan)

    def _write(self, root: Path, changes: list[Change]) -> None:
        made: list[Path] = []
        # A failure half-way takes the files written so far back; success keeps them.
        with UndoStack(handle_signals=False) as undo:
            apply(root, changes, undo, backup_dir=BACKUP_DIR, backups=made)
        self.backups = [str(p) for p in made]

    def _wait_for_bridge(self, plan: Plan, timeout: float = 20.0) -> None:
        want = [str(a) for a in (plan.addressing.addresses if plan.addressing else ())]
        deadline = time.monotonic() + timeout
        while True:
            link = live_links().get(self.bridge)
            if link is not None and link.up and all(a in [x for x, _ in link.addresses] for a in want):
                return
            if time.monotonic() > deadline:
                have = ", ".join(x for x, _ in link.addresses) if link else "no such interface"
                raise ProvisionError(f"{self.bridge} did not come up with {', '.join(want) or 'its link'} "
                                     f"within {timeout:.0f} s ({have})")
            time.sleep(0.2)

    # -- back --------------------------------------------------------------------------------

    def rollback(self) -> list[str]:
        """Put the network back as it was; every step is tried, failures are reported."""
        problems: list[str] = []

        def attempt(what: str, fn, *args, **kw) -> None:
            try:
                fn(*args, **kw)
            except Exception as e:   # keep going: get as much back as we can
                problems.append(f"{what}: {e}")

        if self.kind == "routed":
            for key, value in self.sysctl_old.items():
                attempt(f"sysctl {key}", _sysctl_write, key, value)
            attempt("restore files", self._restore_files)
            return problems
        links = live_links()
        if self.backend == "ifupdown":
            run(["ifdown", "--force", self.bridge], check=False, quiet=True)
        if self.bridge in live_links():
            attempt(f"remove {self.bridge}", run, ["ip", "link", "del", self.bridge], quiet=True)
        attempt("restore files", self._restore_files)
        if self.backend == "networkd":
            attempt("reload systemd-networkd", _networkd_reload, self.uplink)
        elif self.ifupdown_had_uplink:
            run(["ifup", "--force", self.uplink], check=False, quiet=True)
        attempt(f"addresses of {self.uplink}", self._ensure_uplink, links)
        return problems

    def _restore_files(self) -> None:
        for path, state in self.files.items():
            content = base64.b64decode(state["content"]) if state["content"] is not None else None
            restore(Path(path), content, state["link"], state["mode"])
        for backup in self.backups:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)

    def _ensure_uplink(self, _links) -> None:
        """Whatever the stack did, the uplink ends up with its addresses and route."""
        link = find_link(live_links(), self.uplink)
        if link is None:
            raise ProvisionError(f"{self.uplink} is gone")
        if link.master:
            run(["ip", "link", "set", self.uplink, "nomaster"], quiet=True)
        if self.uplink_up:
            run(["ip", "link", "set", self.uplink, "up"], quiet=True)
        have = _addresses(self.uplink)
        for addr in self.uplink_addresses:
            if addr not in have:
                try:
                    run(["ip", "addr", "add", addr, "dev", self.uplink], quiet=True)
                except CommandError:
                    # systemd-networkd, just reloaded, may put it back between our look
                    # and our add ("RTNETLINK answers: File exists"): there is the goal.
                    if addr not in _addresses(self.uplink):
                        raise
        if self.default_gateway:
            dev, gw = live_default_route()
            if dev != self.uplink or gw != self.default_gateway:
                run(["ip", "route", "replace", "default", "via", self.default_gateway, "dev", self.uplink],
                    quiet=True)


def _addresses(iface: str) -> set[str]:
    link = find_link(live_links(), iface)
    return {a for a, _ in link.addresses} if link is not None else set()


def _sysctl_path(key: str) -> Path:
    # sysctl.d writes a dotted (VLAN) interface name with '/': eth0/100 is /proc's eth0.100.
    return Path("/proc/sys", *[part.replace("/", ".") for part in key.split(".")])


def _sysctl_read(key: str) -> str:
    return _sysctl_path(key).read_text().strip()


def _sysctl_write(key: str, value: str) -> None:
    _sysctl_path(key).write_text(f"{value}\n")


# -- the command's side ------------------------------------------------------------------------

def _start_guard(record: Path) -> subprocess.Popen:
    log_file = record.with_suffix(".log")
    out = open(log_file, "ab")
    env = dict(os.environ)
    # The guard imports this package from wherever this process found it.
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-m", "provision.network.guard", str(record)],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                            start_new_session=True, close_fds=True)
    out.close()
    return proc


def apply_live(plan: Plan, timeout: float) -> int:
    """Apply ``plan`` live under a guard; wait for confirmation. Returns the exit code."""
    record = record_path()
    RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(record):
        rec = read_record(record)
        if rec and rec.get("state") in PENDING and _alive(rec.get("guard")):
            raise ProvisionError("another network change is waiting for confirmation",
                                 hint="python -m provision network confirm (keep it) or "
                                      "network rollback (undo it) first")
        txn = Transaction.begin(plan)
        log.release()  # live work begins: what was held back is shown now
        atomic_write(record, json.dumps({"state": "applying", "pid": os.getpid(), "guard": None,
                                         "timeout": timeout, "deadline": None, "problems": [],
                                         "txn": txn.to_dict()}, indent=1, sort_keys=True) + "\n", 0o600)
    guard = _start_guard(record)
    update_record(record, guard=guard.pid)
    what = f"{plan.bridge} over {plan.uplink}" if plan.kind == "bridge" else f"routing through {plan.uplink}"
    old_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    interrupted: list[int] = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    for s in old_handlers:
        signal.signal(s, on_signal)
    try:
        try:
            txn.apply(plan)
        except BaseException as e:
            update_record(record, txn=txn.to_dict(), state="rollback")
            outcome = _wait_for_guard(record, guard, 120)
            if isinstance(e, KeyboardInterrupt):
                code = 128 + (interrupted[0] if interrupted else signal.SIGINT)
                raise ProvisionError(f"interrupted: {_outcome_text(outcome)}", exit_code=code) from None
            raise ProvisionError(f"applying {what} failed ({e}); {_outcome_text(outcome)}", exit_code=1) from None
        deadline = time.time() + timeout
        update_record(record, txn=txn.to_dict(), state="applied", deadline=deadline)
        log.info(f"{what} is live. If this host is still reachable, keep it with "
                 f"`python -m provision network confirm` within {timeout:.0f} s"
                 + (" (or press Enter here)" if _tty() else "") + "; otherwise it is rolled back.")
        try:
            while True:
                rec = read_record(record)
                state = rec.get("state") if rec else "gone"
                if state not in ("applied",):
                    break
                if guard.poll() is not None:
                    break   # the guard is gone (killed, or failed): roll back here, now
                if _tty() and _enter_pressed(POLL):
                    update_record(record, state="confirmed")
                    continue
                time.sleep(0 if _tty() else POLL)
        except KeyboardInterrupt:
            update_record(record, state="rollback")
        outcome = _wait_for_guard(record, guard, 120)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if interrupted:
        raise ProvisionError(f"interrupted: {_outcome_text(outcome)}", exit_code=128 + interrupted[0])
    if outcome.get("state") == "confirmed":
        log.info(f"confirmed: {what} stays")
        return 0
    raise ProvisionError(f"not confirmed within {timeout:.0f} s: {_outcome_text(outcome)}", exit_code=1)


def is_live_already(plan: Plan) -> bool:
    """Whether the kernel already runs what ``plan`` describes (a second --apply)."""
    if plan.kind == "routed":
        return all(_sysctl_read(k) == v for k, v in plan.sysctl.items())
    links = live_links()
    uplink = find_link(links, plan.uplink)
    return plan.bridge in links and uplink is not None and uplink.master == plan.bridge


def _outcome_text(rec: dict) -> str:
    state = rec.get("state")
    problems = rec.get("problems") or []
    if state == "rolled-back" and not problems:
        return "the previous network configuration is back"
    if state == "rolled-back":
        return "rolled back, with problems: " + "; ".join(problems)
    if state == "confirmed":
        return "the change was confirmed meanwhile and stays"
    return f"the rollback guard ended in state {state!r}; check with `python -m provision network status`"


def _wait_for_guard(record: Path, guard: subprocess.Popen, timeout: float) -> dict:
    with contextlib.suppress(subprocess.TimeoutExpired):
        guard.wait(timeout)
    rec = read_record(record) or {"state": "gone"}
    if rec.get("state") in PENDING and guard.poll() is not None:
        rec = run_rollback(record)   # the guard died: roll back here
    # The record stays with its final state: `network rollback` asked from another
    # shell reads the outcome there, and a new --apply replaces it.
    return rec


def _tty() -> bool:
    """Whether Enter can confirm: stdin is a terminal and we are its foreground job. A
    job in the background (``network bridge --apply ... &``) that read the terminal
    would be stopped by SIGTTIN, and its rollback with it."""
    try:
        fd = sys.stdin.fileno()
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (ValueError, OSError, AttributeError):
        return False


def _enter_pressed(wait: float) -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], wait)
    if ready:
        sys.stdin.readline()
        return True
    return False


def confirm() -> str:
    """``network confirm``: keep the pending change."""
    record = record_path()
    with _locked(record):
        rec = read_record(record)
        state = rec.get("state") if rec else None
        if state == "rolled-back" and _alive(rec.get("pid")):
            raise ProvisionError("too late: the change was already rolled back",
                                 hint="apply it again with --apply and confirm in time")
        if state not in ("applied", "applying"):
            raise ProvisionError("no network change is waiting for confirmation")
        rec["state"] = "confirmed"
        atomic_write(record, json.dumps(rec, indent=1, sort_keys=True) + "\n", 0o600)
    txn = rec["txn"]
    return f"{txn.get('bridge') or 'routing'} over {txn['uplink']}"


def request_rollback() -> dict:
    """``network rollback``: undo the pending change now."""
    record = record_path()
    rec = read_record(record)
    if rec is None or rec.get("state") not in PENDING:
        raise ProvisionError("no network change is waiting for confirmation")
    update_record(record, state="rollback")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rec = read_record(record) or {"state": "gone"}
        if rec.get("state") not in PENDING:
            return rec
        if not _alive(rec.get("guard")):
            # No guard (killed): do it here.
            return run_rollback(record)
        time.sleep(POLL)
    raise ProvisionError("the rollback did not finish within 120 s")


def run_rollback(record: Path) -> dict:
    rec = read_record(record) or {}
    txn = Transaction.from_dict(rec.get("txn", {}))
    problems = txn.rollback()
    for p in problems:
        log.warn(p)
    return update_record(record, state="rolled-back", problems=problems) or {"state": "rolled-back",
                                                                              "problems": problems}
