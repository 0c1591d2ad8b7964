"""``python -m provision network bridge|routed|confirm|rollback|status``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from provision import log
from provision.changes import apply, describe, differs
from provision.errors import ProvisionError
from provision.network import apply as live
from provision.network import status
from provision.network.discover import is_live
from provision.network.model import BACKENDS, BridgeRequest, RoutedRequest, addressing_from_options
from provision.network.plan import BACKUP_DIR, Plan, plan_bridge, plan_routed
from provision.undo import UndoStack

DEFAULT_CONFIRM_TIMEOUT = 120.0


@dataclass(frozen=True)
class Settings:
    """One parsed ``network bridge|routed`` invocation."""

    root: Path
    request: BridgeRequest | RoutedRequest
    dry_run: bool
    apply: bool
    confirm_timeout: float


def _root(value: str | None) -> Path:
    root = Path(value or "/")
    if not root.is_dir():
        raise ProvisionError(f"root {root} does not exist or is not a directory",
                             hint="give the directory an offline image is mounted on")
    return root


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ProvisionError(f"--confirm-timeout '{value}' is not a number of seconds") from None
    if not 5 <= seconds <= 3600:
        raise ProvisionError(f"--confirm-timeout {value} is out of range",
                             hint="give 5 to 3600 seconds (default 120)")
    return seconds


def settings_from_args(args) -> Settings:
    root = _root(args.root)
    if args.apply and not is_live(root):
        raise ProvisionError(f"--apply changes this host's live network, not {root}'s",
                             hint=f"drop --apply: the files in {root} take effect when it boots")
    if args.apply and args.dry_run:
        raise ProvisionError("--apply and --dry-run exclude each other")
    addressing = addressing_from_options(args.dhcp, args.ip or [], args.gateway, args.dns or [])
    if args.network == "bridge":
        request = BridgeRequest(bridge=args.name, uplink=args.uplink, addressing=addressing,
                                backend=args.backend, stp=args.stp)
    else:
        request = RoutedRequest(uplink=args.uplink, backend=args.backend, addressing=addressing)
    return Settings(root, request, args.dry_run, args.apply, _timeout(args.confirm_timeout))


def _plan(s: Settings) -> Plan:
    if isinstance(s.request, BridgeRequest):
        return plan_bridge(s.root, s.request)
    return plan_routed(s.root, s.request)


def cmd_configure(args) -> int:
    s = settings_from_args(args)
    plan = _plan(s)
    summary = (f"{plan.bridge} takes over {plan.uplink} ({plan.backend}), addressing: "
               f"{plan.addressing.describe()}" if plan.kind == "bridge" else
               f"guests routed through {plan.uplink} (vif-route, proxy ARP, forwarding)")
    if s.dry_run:
        print(f"# {summary}")
        for line in describe(s.root, plan.changes):
            print(line)
        for note in plan.notes:
            print(f"# note: {note}")
        return 0
    for note in plan.notes:
        log.note(note)
    if s.apply:
        if not any(differs(s.root, ch) for ch in plan.changes) and live.is_live_already(plan):
            log.info(f"nothing to change: {summary}, already live")
            return 0
        return live.apply_live(plan, s.confirm_timeout)
    with UndoStack() as undo:
        changed = apply(s.root, plan.changes, undo, backup_dir=BACKUP_DIR)
    if not changed:
        log.info(f"nothing to change: {summary}")
    else:
        log.info(summary + ("" if is_live(s.root) else "; takes effect when the root boots")
                 + ("; apply it live with --apply" if is_live(s.root) else ""))
    return 0


def cmd_confirm(args) -> int:
    what = live.confirm()
    log.info(f"confirmed: {what} stays")
    return 0


def cmd_rollback(args) -> int:
    rec = live.request_rollback()
    log.info(live._outcome_text(rec))
    return 0


def cmd_status(args) -> int:
    for line in status.lines(_root(args.root)):
        print(line)
    return 0


def register(subparsers) -> None:
    net = subparsers.add_parser("network", help="host networking for guests: a bridge or a routed host",
                                description="Give Xen guests a network: a bridge that takes over the uplink "
                                            "with its addressing, or a routed host (vif-route, proxy ARP).")
    sub = net.add_subparsers(dest="network", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--uplink", metavar="IFACE",
                       help="the NIC (default: the interface of the default route; offline: the one "
                            "interface the root's files configure)")
        p.add_argument("--root", metavar="DIR", help="an offline root (default: this host)")
        p.add_argument("--dry-run", action="store_true", help="show the files; change nothing")
        p.add_argument("--apply", action="store_true",
                       help="also change the live network now; rolled back unless `network confirm` "
                            "comes within --confirm-timeout")
        p.add_argument("--confirm-timeout", default=str(DEFAULT_CONFIRM_TIMEOUT), metavar="SECONDS",
                       help="with --apply (default 120)")
        p.add_argument("--dhcp", action="store_true", help="the address comes by DHCP")
        p.add_argument("--ip", action="append", metavar="ADDR/PREFIX", help="a static address (repeatable)")
        p.add_argument("--gateway", metavar="GW", help="the default gateway (with --ip)")
        p.add_argument("--dns", action="append", metavar="IP", help="a name server (repeatable)")
        p.add_argument("--backend", choices=BACKENDS, help="write for this stack (default: detected)")
        p.set_defaults(func=cmd_configure)

    b = sub.add_parser("bridge", help="a bridge (default xenbr0) takes over the uplink and its addressing",
                       description="A bridge takes over the uplink NIC; the uplink's addressing moves onto "
                                   "the bridge (--dhcp or --ip give it another). Domains' vifs join it.")
    b.add_argument("--name", default="xenbr0", help="the bridge (default xenbr0; at most 15 characters)")
    b.add_argument("--stp", action="store_true", help="run the spanning tree protocol (default off)")
    common(b)

    r = sub.add_parser("routed", help="route guests through the uplink (provider accepts only the host's MAC)",
                       description="Guests reach the network through the uplink by routing (Xen's "
                                   "vif-route): forwarding and proxy ARP on the uplink. --dhcp or --ip "
                                   "address the uplink itself; default: it keeps what it has.")
    common(r)

    c = sub.add_parser("confirm", help="keep a change made with --apply")
    c.set_defaults(func=cmd_confirm)
    rb = sub.add_parser("rollback", help="undo a change made with --apply now")
    rb.set_defaults(func=cmd_rollback)
    st = sub.add_parser("status", help="bridges, their ports, the vifs of each running domain")
    st.add_argument("--root", metavar="DIR", help="an offline root's configuration")
    st.set_defaults(func=cmd_status)
