"""What is checked in a booted host, over its serial console, in boot order.

Each check is recorded with its time since power-on (:class:`Check` lines in the report).
The first failure stops the run with one line naming what did not happen and where the
serial log is. Commands run in dom0's shell; guests are reached from dom0 over the host's
network (ping, ssh with the test key from the code disk) and through ``xl console``.
"""

from __future__ import annotations

import re
import shlex
import time

from provision.errors import ProvisionError
from provision.proof.assemble import BROKEN, IMAGES_DIR, PASSWORD, USER, Facts
from provision.proof.machine import Machine

CODE_MOUNT = "/opt/xen-provision"
SSH_KEY = f"{CODE_MOUNT}/id_ed25519"   # on the code disk; copied to KEY (ssh wants mode 0600)
KEY = "/root/.boottest-key"
SAVE_DIR = "/var/lib/xen/save"


def until(seconds: float) -> str:
    """The head of a shell loop that polls for ``seconds`` of dom0's time, however slow
    each round is under TCG: ``{until(60)} test-cmd && break; sleep 1; done``."""
    return f"e=$(($(date +%s) + {int(seconds)})); while [ $(date +%s) -lt $e ]; do"


def shell_check(vm: Machine, what: str, command: str, timeout: float, expect: str | None = None,
                failure: str | None = None) -> str:
    """Run a command in dom0's shell; a check that passes on status 0 and ``expect``."""
    out, status = vm.shell(command, timeout, what=what)
    ok = status == 0 and (expect is None or re.search(expect, out, re.M) is not None)
    detail = "" if ok else f"exit {status}: " + " | ".join(out.strip().splitlines()[-10:])
    vm.record(what, ok, detail)
    if not ok:
        why = f"{failure} within {timeout:.0f} s" if failure else f"{what} failed"
        raise ProvisionError(f"{why} ({detail}); serial log: {vm.log_path}", exit_code=1)
    return out


def expect(vm: Machine, what: str, got: str, want: str) -> None:
    vm.record(what, got == want, "" if got == want else f"got {got!r}, expected {want!r}")
    if got != want:
        raise ProvisionError(f"{what}: got {got!r}, expected {want!r}; serial log: {vm.log_path}",
                             exit_code=1)


# -- power-on to dom0's shell ------------------------------------------------------------------

def boot_to_dom0(vm: Machine, facts: Facts, sched: str, timeout: float) -> None:
    """GRUB's menu on the serial line starts our entry, Xen runs with exactly the command
    line `grub install` generated, our dom0 kernel boots to a root shell on the console."""
    m = vm.wait_for(r"Loading Xen (\S+) \.\.\.", 120, what="GRUB started our entry",
                    failure="GRUB did not start our entry")
    expect(vm, "GRUB loads the installed hypervisor", m.group(1), facts.xen_version)
    m = vm.wait_for(r"Xen version (\S+) ", 120, what="Xen banner", failure="Xen did not print its banner")
    expect(vm, "Xen version is our build", m.group(1), facts.xen_version)
    m = vm.wait_for(r"Command line: ([^\n]*)\n", 60, what="Xen command line")
    expect(vm, "Xen command line is the one grub install generated", m.group(1).strip(), facts.xen_cmdline)
    m = vm.wait_for(r"Using scheduler: .*\((\w+)\)", 60, what="scheduler in use")
    expect(vm, f"scheduler is {sched}", m.group(1), sched)
    m = vm.wait_for(r"Linux version (\S+) ", 180, what="dom0 kernel started",
                    failure="dom0's kernel did not start")
    expect(vm, "dom0 runs our kernel", m.group(1), facts.dom0_release)
    # Logged in as soon as the getty is up, so a slow or stuck boot can be examined.
    vm.login("root", PASSWORD, timeout=timeout)
    # Only warnings and worse from dom0's kernel on the console from here on: the info
    # lines of every vif and vbd (still in dmesg) would cut into the shell's output.
    vm.shell("dmesg -n 5", 30, what="console log level")


def dom0_settled(vm: Machine, timeout: float) -> None:
    """dom0 reaches multi-user (after xendomains has started every guest) with no failed
    unit. Checked after the first guest's boot, so that the time to it is its own."""
    shell_check(vm, "dom0 reached multi-user",
                f"{until(timeout)} [ \"$(systemctl show -P ActiveState multi-user.target)\" = active ] "
                "&& break; sleep 1; done; systemctl list-jobs --no-pager | tail -8; "
                "systemctl show -P ActiveState multi-user.target",
                timeout + 60, expect=r"^active$", failure="dom0 did not reach multi-user")
    # dom0's boot time split into kernel and userspace, for the log (not a check). Not
    # `critical-chain`: under TCG it took 27-42 s of every scenario to print.
    vm.shell("timeout 20 systemd-analyze --no-pager 2>&1 | head -3", 30, what="dom0 boot times")
    shell_check(vm, "dom0 has no failed units",
                "f=$(systemctl --failed --plain --no-legend); [ -z \"$f\" ] || { echo \"$f\"; "
                "for u in $(echo \"$f\" | awk '{print $1}'); do journalctl -b -u $u --no-pager | tail -12; "
                "done; false; }", 60)


# -- the guests ---------------------------------------------------------------------------------

def _ssh(address: str, command: str, user: str = "root", known_hosts: str | None = None) -> str:
    # One connection per guest and user, shared by every later ssh (ControlMaster): under
    # TCG each new connection's key exchange and login cost 5-10 s. ServerAlive ends a
    # master whose guest went away (saved, shut down), and the next ssh makes a new one.
    # With ``known_hosts``, the guest must show one of the host keys listed there.
    hosts = (f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}" if known_hosts else
             "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
    return (f"ssh -i {KEY} -o BatchMode=yes {hosts} "
            f"-o ConnectTimeout=10 -o LogLevel=ERROR -o ControlMaster=auto -o ControlPath=/run/ssh-%r@%h "
            f"-o ControlPersist=600 -o ServerAliveInterval=5 -o ServerAliveCountMax=3 "
            f"{user}@{address} {shlex.quote(command)}")


def mount_code(vm: Machine, device: str) -> None:
    """The code disk (package, test key, LVM seed) at CODE_MOUNT, read-only."""
    shell_check(vm, "code disk mounted", f"mkdir -p {CODE_MOUNT} && mount -o ro {device} {CODE_MOUNT} && "
                f"cp {SSH_KEY} {KEY} && chmod 600 {KEY} && ls {CODE_MOUNT}", 60)


def guests_created(vm: Machine, facts: Facts, timeout: float, first: list[float]) -> None:
    """xendomains started every guest in /etc/xen/auto, in its order; the first of them
    reaches userspace (``first`` gets that time: the first guest's own, not the last
    one's). The others' userspace is checked beside their other checks
    (:func:`guests_in_userspace`), so that the quick guests' checks run while a slow one
    still boots."""
    for i, g in enumerate(facts.guests):
        name = g["name"]
        shell_check(vm, f"xendomains started {name}",
                    f"{until(timeout)} xl list {name} >/dev/null 2>&1 && break; "
                    "systemctl -q is-active xendomains || systemctl -q is-failed xendomains "
                    f"&& break; sleep 1; done; xl list {name} || "
                    "{ journalctl -b -u xendomains --no-pager | tail -15; false; }", timeout + 60)
        if i == 0:
            guests_in_userspace(vm, [g], timeout)
            first.append(vm.elapsed())


def guests_in_userspace(vm: Machine, guests: list[dict], timeout: float) -> None:
    """Each guest's console log (xenconsoled's) shows its kernel booting to userspace."""
    for g in guests:
        name = g["name"]
        log_file = f"/var/log/xen/console/guest-{name}.log"
        shell_check(vm, f"{name}'s console shows its kernel booting to userspace",
                    f"{until(timeout)} grep -Eq 'Reached target|login:|Run /sbin/init' {log_file} 2>/dev/null "
                    f"&& break; sleep 1; done; grep -E 'Linux version|Run /.*init as init|Welcome to|login:' "
                    f"{log_file} || tail -20 {log_file}", timeout + 60,
                    expect=r"Linux version (?s:.*)(Run /\S*init as init|Welcome to|login:)")


def slow_to_answer(guest: dict) -> bool:
    """A guest that comes up long after the others under TCG: a PVH guest (emulated
    nested paging) or one whose pvgrub2 reads a distribution kernel and initrd first.
    Its checks go after the others', which run while it boots."""
    return (guest.get("type") or "pvh") == "pvh" or bool(guest.get("own_kernel"))


def slow_to_settle(guest: dict) -> bool:
    """A guest that answers ping early but reaches multi-user last: an NFS root (its
    kernel's ip= brings the NIC up at once; then every file systemd reads crosses the
    emulated network). Its ssh checks go last of all."""
    return bool(guest.get("nfs"))


def guests_ping(vm: Machine, guests: list[dict], timeout: float) -> None:
    """Each of ``guests`` answers ping from dom0 (waiting a bounded while for each)."""
    for g in guests:
        address = g["ip"].split("/")[0]
        shell_check(vm, f"dom0 pings {g['name']} ({address})",
                    f"{until(timeout)} ping -c1 -W2 {address} >/dev/null && break; sleep 1; done; "
                    f"ping -c1 -W2 {address}", timeout + 60, expect=r" 0% packet loss")


def guests_ssh(vm: Machine, facts: Facts, guests: list[dict]) -> None:
    """Each of ``guests`` answers ssh with the key `image --ssh-key` put in it: its own
    hostname, its static address on its Xen NIC, our xenU kernel, multi-user, no failed
    units."""
    for g in guests:
        address, name = g["ip"].split("/")[0], g["name"]
        # The host keys `image` made for the guest, from its JSON: the first connection
        # checks them strictly, as an administrator's known_hosts made from it would.
        known = f"/root/known_hosts-{name}"
        out, status = vm.shell(_known_hosts(g["sidecar"], address, known), 60,
                               what=f"{name}'s host keys from its image's JSON")
        vm.record(f"{name}'s image recorded its own SSH host keys", status == 0, out.strip()[-300:])
        if status != 0:
            raise ProvisionError(f"{name}'s image JSON has no SSH host keys: {out.strip()[-300:]}", exit_code=1)
        # Its failed units in the same connection, after the marker line FAILED-UNITS.
        ssh = _ssh(address, "echo GUEST-FACTS; hostname; uname -r; ip -4 -o addr show; "
                            "systemctl is-system-running --wait; echo FAILED-UNITS; "
                            "systemctl --failed --plain --no-legend", known_hosts=known)
        try:
            out = shell_check(vm, f"ssh root@{name}: hostname, address, kernel, multi-user",
                              f"{until(180)} {ssh} && break; sleep 2; done", 300, expect=r"^GUEST-FACTS$")
        except ProvisionError:
            console_tail(vm, name)
            raise
        # What came after the marker: sshd may refuse a few attempts while it starts.
        facts_text, _, failed = out.rsplit("GUEST-FACTS\n", 1)[-1].partition("FAILED-UNITS\n")
        lines, failed = facts_text.strip().splitlines(), failed.strip()
        # An NFS root's NIC keeps the kernel's name: ip= set it up before udev could rename it.
        nic = "eth0" if g.get("nfs") else "enX0"
        # Our xenU, or the distribution's kernel a guest installed in its own image.
        kernel = r"\S+-amd64" if g.get("own_kernel") else re.escape(facts.guest_release)
        ok = (lines[:1] == [name] and len(lines) > 1 and re.fullmatch(kernel, lines[1]) is not None
              and any(re.match(rf"^\d+: {nic}\s+inet {re.escape(g['ip'])} ", line) for line in lines)
              and lines[-1] in ("running", "degraded"))
        shown = "its own (Debian's)" if g.get("own_kernel") else facts.guest_release
        vm.record(f"{name}: hostname {name}, {g['ip']} on {nic}, kernel {shown}", ok,
                  "" if ok else " | ".join(lines[-8:]))
        if not ok:
            raise ProvisionError(f"{name} is not as made: {' | '.join(lines[-8:])}; serial log: {vm.log_path}",
                                 exit_code=1)
        vm.record(f"{name} has no failed units", not failed, failed.replace("\n", " | "))
        if failed:
            raise ProvisionError(f"{name} has failed units: {failed.splitlines()[0]}; serial log: {vm.log_path}",
                                 exit_code=1)


def _known_hosts(sidecar: str, address: str, path: str) -> str:
    """dom0's command writing a known_hosts file for ``address`` from the public host keys
    in an image's JSON (``guest.ssh_host_keys``); fails when there are none."""
    script = ("import json, sys; keys = json.load(open(sys.argv[1]))['guest'].get('ssh_host_keys') or []; "
              "print(''.join(sys.argv[2] + ' ' + ' '.join(k.split()[:2]) + chr(10) for k in keys), end=''); "
              "sys.exit(0 if keys else 1)")
    return f"python3 -c {shlex.quote(script)} {sidecar} {address} > {path} && cut -d' ' -f1,2 {path}"


def console_tail(vm: Machine, name: str, lines: int = 80) -> None:
    """The end of a guest's console log (xenconsoled's, --log-consoles), into the serial
    log: what a failed guest check leaves for the reader."""
    try:
        vm.shell(f"tail -n {lines} /var/log/xen/console/guest-{name}.log; xl list", 60,
                 what=f"{name}'s console log")
    except Exception:   # the machine itself may be what failed
        pass


def guest_types(vm: Machine, facts: Facts) -> None:
    """``xl list -l`` shows each guest running as the type it was made: PVH where `domain
    create` chose it for our xenU (the README's default), PV where asked."""
    # A PVH guest that triple-faulted under TCG (see SCENARIOS) is being created again for
    # a few seconds, and xl cannot read its configuration then ("Fail to get domain
    # configuration"): ask again (a bounded while) until it answers.
    for g in facts.guests:
        kind = g.get("type") or "pvh"
        # Its type, then the settings given as domain create's KEY=VALUE words, each as
        # xl list -l shows it ("KEY": "VALUE"), in that order.
        settings = [("type", kind), *(s.split("=", 1) for s in g.get("xl") or ())]
        shown = [f"printf '%s\\n' \"$c\" | grep -m1 '\"{k}\": '" for k, _ in settings]
        shown[0] += " || printf '%s\\n' \"$c\""   # no type: what xl said instead
        shell_check(vm, f"xl list -l: {g['name']} runs as {kind}" + "".join(f", {k} {v}" for k, v in settings[1:]),
                    f"{until(90)} c=$(xl list -l {g['name']} 2>&1); printf '%s\\n' \"$c\" | "
                    f"grep -q '\"type\": ' && break; sleep 2; done; " + "; ".join(shown), 150,
                    expect="(?s:.*)".join(rf'^\s*"{k}": "{v}",?$' for k, v in settings))


def own_kernels_booted(vm: Machine, facts: Facts) -> None:
    """A guest made with ``image --guest-kernel`` was booted by pvgrub2 (dom0's
    grub-xen-host, as the domain's kernel), which read the menu in the guest's image and
    started the Debian kernel installed there."""
    for g in facts.guests:
        if not g.get("own_kernel"):
            continue
        name = g["name"]
        shell_check(vm, f"{name}: pvgrub2 booted the Debian kernel in its own image",
                    f"xl list -l {name} | grep -m1 '\"kernel\": '; "
                    f"grep -a -m1 -o 'Linux version [^ ]*' /var/log/xen/console/guest-{name}.log; "
                    f"ssh_out=$({_ssh(g['ip'].split('/')[0], 'readlink -f /vmlinuz; uname -r')}); echo \"$ssh_out\"",
                    120, expect=r'"kernel": "/usr/lib/grub-xen/grub-(?:x86_64-xen|i386-xen_pvh)\.bin"'
                                r"(?s:.*)^Linux version (\S+-amd64)$(?s:.*)^/boot/vmlinuz-\1$\n^\1$")


def first_boot_access(vm: Machine, guests: list[dict]) -> None:
    """A guest made with ``image --user --role sudo-user --first-boot``: the user logs in
    with the --ssh-key key and sudo asks no password; the first-boot script ran exactly
    once, left its mark, and its unit and script removed themselves."""
    for g in guests:
        if not g.get("access"):
            continue
        name = g["name"]
        probe = ("id -un; sudo -n true && echo SUDO-OK; sudo -n cat /var/lib/xen-provision/first-boot.done; "
                 "sudo -n sh -c 'wc -l < /root/fb-count'; "
                 "ls /usr/local/sbin/xp-first-boot /etc/systemd/system/xp-first-boot.service 2>/dev/null | wc -l")
        shell_check(vm, f"{name}: {USER} logs in with the key, sudo, first-boot script ran once and is gone",
                    _ssh(g["ip"].split("/")[0], probe, user=USER), 120,
                    expect=rf"^{USER}$\n^SUDO-OK$\n^exit 0 .*\n^1$\n^0$")


def nfs_root_served(vm: Machine, facts: Facts, server: str) -> None:
    """Each NFS-root guest runs on the tree dom0 exports to it, and what it writes there
    is in dom0's tree (the manual's NFS root, served from domain 0)."""
    for g in facts.guests:
        if not g.get("nfs"):
            continue
        name, address, tree = g["name"], g["ip"].split("/")[0], g["tree"]
        shell_check(vm, f"{name}'s root is {server}:{tree} over NFS",
                    _ssh(address, "findmnt -n -o SOURCE,FSTYPE /"), 120,
                    expect=rf"^{re.escape(server)}:{re.escape(tree)}\s+nfs\b")
        shell_check(vm, f"{name} writes a file that dom0 sees in {tree}",
                    _ssh(address, "echo written-by-$(hostname) > /root/nfs-proof && sync") +
                    f" && cat {tree}/root/nfs-proof && exportfs -v | grep -A1 -F {tree}", 120,
                    expect=rf"^written-by-{name}$(?s:.*){re.escape(address)}\(.*no_root_squash")


def nfs_guests_shut_down_cleanly(vm: Machine, facts: Facts) -> None:
    """An NFS-root guest shut down by xendomains got to its power-off with its root still
    answering: systemd's last words and the kernel's halt on its console, and no 'server
    not responding'."""
    for g in facts.guests:
        if not g.get("nfs"):
            continue
        log_file = f"/var/log/xen/console/guest-{g['name']}.log"
        shell_check(vm, f"{g['name']} (NFS root) shut down cleanly through xendomains",
                    f"tail -5 {log_file}; ! grep -q 'not responding' {log_file} && "
                    f"grep -q 'systemd-shutdown.*Powering off' {log_file} && "
                    f"grep -Eq 'reboot: (Power down|System halted)' {log_file} && echo CLEAN-SHUTDOWN", 60,
                    expect=r"^CLEAN-SHUTDOWN$")


def guest_pings_guest(vm: Machine, facts: Facts) -> None:
    a, b = facts.guests[0], facts.guests[1]
    target = b["ip"].split("/")[0]
    shell_check(vm, f"{a['name']} pings {b['name']} through the bridge",
                _ssh(a["ip"].split("/")[0], f"ping -c2 -W2 {target}"),
                120, expect=r" 0% packet loss")


def guest_pings_host(vm: Machine, facts: Facts, host_ip: str) -> None:
    g = facts.guests[0]
    shell_check(vm, f"{g['name']} pings dom0 ({host_ip}) through its routed vif",
                _ssh(g["ip"].split("/")[0], f"ping -c2 -W2 {host_ip}"),
                120, expect=r" 0% packet loss")
    shell_check(vm, f"dom0 routes {g['ip'].split('/')[0]} to {g['name']}'s vif (vif-route)",
                f"ip -4 route show {g['ip'].split('/')[0]}; ip -4 -o addr show | grep vif", 60,
                expect=rf"^{re.escape(g['ip'].split('/')[0])} dev vif\d+\.0 (?s:.*)inet {re.escape(host_ip)}/32")


def xl_console_login(vm: Machine, name: str) -> None:
    """``xl console NAME`` in dom0's shell shows the guest's getty on hvc0; Ctrl-] leaves."""
    start = vm.mark()
    vm.send(f"xl console {name}")
    deadline = time.monotonic() + 180
    m = None
    while m is None and time.monotonic() < deadline:
        vm._write(b"\r")   # the getty prints its prompt again
        try:
            m = vm.wait_for(rf"{name} login: ?$", 15, start=start, record=False)
        except Exception:
            if not vm.running():
                raise
    vm._write(b"\x1d")   # Ctrl-]: back to dom0's shell
    time.sleep(2)
    vm.record(f"xl console {name} shows its login prompt on hvc0", m is not None)
    if m is None:
        raise ProvisionError(f"xl console {name} showed no login prompt; serial log: {vm.log_path}", exit_code=1)
    # The shell is ours again when it answers.
    shell_check(vm, "dom0's shell back after xl console", "echo back", 60, expect=r"^back$")


# -- the manual's operations and LVM in dom0 ---------------------------------------------------

def retire(vm: Machine, names: list[str]) -> None:
    """Shut these guests down and take them out of /etc/xen/auto, once their checks are
    done. For the PVH guests: the longer checks that follow use PV guests (under TCG's
    emulated AMD-V a PVH guest with Xen's default tsc_mode now and then triple-faulted,
    also in its suspend handler, which failed its save; see SCENARIOS)."""
    for name in names:
        shell_check(vm, f"{name} shut down and out of /etc/xen/auto after its checks",
                    # xl shutdown -w returns at the shutdown; xl's own monitor destroys it after.
                    f"xl shutdown -w {name} && rm /etc/xen/auto/{name}.cfg && {until(60)} "
                    f"xl list {name} >/dev/null 2>&1 || break; sleep 1; done; ! xl list {name} 2>/dev/null "
                    "&& echo RETIRED", 180, expect=r"^RETIRED$")


def save_restore(vm: Machine, name: str) -> None:
    """The manual's save at halt and restore at boot, through our xendomains with a save
    directory (the image's own settings shut domains down instead)."""
    xd = (f"{{ cat /etc/default/xendomains; echo XENDOMAINS_SAVE={SAVE_DIR}; }} > /run/xd-save && "
          "XENDOMAINS_CONFIG=/run/xd-save /etc/init.d/xendomains")
    shell_check(vm, f"xendomains stop saves {name} (xl save)",
                f"{xd} stop && [ -s {SAVE_DIR}/{name} ] && ! xl list {name} 2>/dev/null", 300,
                expect=rf"saved {name} to {SAVE_DIR}/{name}")
    shell_check(vm, f"xendomains start restores {name} (xl restore)",
                f"{xd} start && [ ! -e {SAVE_DIR}/{name} ] && xl list {name}", 300,
                expect=rf"restored {name}(?s:.*){name} is already running(?s:.*)^{name}\s+\d+")


def mem_set(vm: Machine, name: str) -> None:
    shell_check(vm, f"xl mem-set {name} 192m", f"xl mem-set {name} 192m && {until(60)} "
                f"m=$(xl list {name} | awk 'NR==2 {{print $3}}'); [ \"$m\" -le 200 ] && break; "
                "sleep 1; done; xl list", 120, expect=rf"^{name}\s+\d+\s+19\d\s")


def guests_stopped(vm: Machine, names: list[str]) -> None:
    """``systemctl stop xendomains`` shuts every guest down (the settings save none)."""
    shell_check(vm, f"xendomains stop shuts {', '.join(names)} down",
                "systemctl stop xendomains; s=$?; xl list; journalctl -b -u xendomains --no-pager | "
                "grep -m1 'all domains stopped'; [ $s -eq 0 ] && [ \"$(xl list | wc -l)\" -eq 2 ]", 400,
                expect=r"xendomains: all domains stopped")


def broken_guest_reported(vm: Machine, running: str) -> None:
    shell_check(vm, "xendomains reports a guest with a bad disk path",
                f"ln -s ../{BROKEN}.cfg /etc/xen/auto/{BROKEN}.cfg; /etc/init.d/xendomains start; "
                f"echo \"status=$?\"; rm -f /etc/xen/auto/{BROKEN}.cfg; "
                f"xl create -q /etc/xen/{BROKEN}.cfg 2>&1 | grep -m1 -F missing.img; xl list", 180,
                expect=rf"FAILED to start {BROKEN}(?s:.*)status=[1-9](?s:.*)missing\.img(?s:.*)^{running}\s")


LVM_CHECK = ("LVM path of the storage library in dom0 "
             "(lvmcheck: PV, VG, LV, snapshot, thin, extend, image resize, fill watch)")
LVM_CHECK_TIMEOUT = 900.0   # about 75 s under TCG on an idle machine; ours are shared
# What ends the LVM check: its own verdict, or the kernel failing under it (an oops
# leaves lvmcheck stuck in D state, so waiting for its exit would take the whole timeout).
LVM_CHECK_END = (r"^(LVM-CHECK-OK in \S+|lvm-check FAILED: .*|Traceback .*|BUG: .*|Oops: .*"
                 r"|Kernel panic .*)$")
LV_IMAGE_CHECK = ("image --debootstrap into LVM in dom0 (lvcheck: LV and swap LV from the "
                  "cached base, read back, e2fsck, LV template, snapshot guest)")


def _in_dom0(module: str, *args: str) -> str:
    """dom0's command running one of our indom0 checks from the mounted code disk."""
    return (f"PYTHONPATH={CODE_MOUNT} PYTHONDONTWRITEBYTECODE=1 python3 -m provision.proof.indom0.{module} "
            + " ".join(args))


def _dom0_check(vm: Machine, what: str, command: str, end: str, ok_prefix: str, timeout: float) -> None:
    """Run one of our check modules in dom0 and wait for its verdict line; fails at once,
    with the console's last lines, when it or the kernel under it reports a failure."""
    vm.send(command)
    m = vm.wait_for(end, timeout, what=what, record=False)
    verdict = m.group(1)
    ok = verdict.startswith(ok_prefix)
    vm.record(what, ok, "" if ok else verdict)
    if not ok:
        time.sleep(5)   # the rest of a traceback or an oops
        raise ProvisionError(f"{what} failed: {verdict}; last lines of {vm.log_path}:\n{vm.tail()}",
                             exit_code=1)


def lvm_checks(vm: Machine, lvm_disk: str, lvimage_disk: str) -> None:
    """The storage library's LVM path and image --debootstrap into LVM, for real in dom0
    (this machine has no device-mapper; dom0's kernel has). The two use disks and VGs of
    their own and dom0 has two vCPUs: the image check runs detached, logging to a file,
    while the LVM check runs on the console; then its verdict is read from its log."""
    from provision.proof.indom0 import lvcheck
    log_file = "/tmp/lvcheck.log"
    command = _in_dom0("lvcheck", "--seed", f"{CODE_MOUNT}/{lvcheck.SEED_DIR}", lvimage_disk)
    # setsid -f: no job of the console's shell, so no job messages cut into later output.
    out, status = vm.shell(f"setsid -f sh -c '{command} > {log_file} 2>&1' < /dev/null", 30,
                           what="starting the image check")
    if status != 0:
        vm.record(LV_IMAGE_CHECK, False, f"could not start it: {out.strip()}")
        raise ProvisionError(f"{LV_IMAGE_CHECK}: could not start it: {out.strip()}", exit_code=1)
    _dom0_check(vm, LVM_CHECK, _in_dom0("lvmcheck", lvm_disk), LVM_CHECK_END, "LVM-CHECK-OK",
                LVM_CHECK_TIMEOUT)
    out, status = vm.shell(f"{until(lvcheck.TIMEOUT)} grep -Eq '{lvcheck.END}' {log_file} && break; "
                           f"sleep 2; done; cat {log_file}", lvcheck.TIMEOUT + 60, what=LV_IMAGE_CHECK)
    m = re.search(lvcheck.END, out, re.M)
    verdict = m.group(1) if m else "no verdict in its log"
    ok = status == 0 and verdict.startswith(lvcheck.OK)
    vm.record(LV_IMAGE_CHECK, ok, "" if ok else verdict)
    if not ok:
        raise ProvisionError(f"{LV_IMAGE_CHECK} failed: {verdict}; its log:\n{out[-3000:]}", exit_code=1)


def images_on_host(vm: Machine) -> None:
    shell_check(vm, "the guests' images are files in dom0's root", f"ls -ls {IMAGES_DIR}", 30,
                expect=r"\.img")


def _provision(args: str) -> str:
    """dom0's command running our CLI from the mounted code disk."""
    return f"PYTHONPATH={CODE_MOUNT} PYTHONDONTWRITEBYTECODE=1 python3 -m provision {args}"


def _uplink_pattern(uplink: str, uplink_slot_name: str | None) -> str:
    """The uplink by either of the names udev gives it (see Scenario.uplink)."""
    return "(?:" + "|".join(re.escape(n) for n in (uplink, uplink_slot_name) if n) + ")"


def network_status(vm: Machine, facts: Facts, bridge: str, host_ip: str, uplink: str,
                   uplink_slot_name: str | None = None) -> None:
    """``network status`` in dom0: the bridge with its address, the uplink and each
    running guest's vif as its ports."""
    expect = rf"^bridge {bridge}: {re.escape(host_ip)}; up$(?s:.*)^  port {_uplink_pattern(uplink, uplink_slot_name)}$"
    # Each guest's vif, in whatever order: the bridge lists its ports by domain id, and a
    # guest that was created again (or after another) has a higher one.
    for g in facts.guests:
        expect += rf"(?=(?s:.*)^  port vif\d+\.0  \(domain {g['name']}, vif 0\)$)"
    # A PVH guest that triple-faulted under TCG (see SCENARIOS) is being created again for
    # a few seconds, without its vif: wait (a bounded while) until every guest has one.
    status = _provision("network status")
    found = " && ".join(f"printf '%s\\n' \"$s\" | grep -qF '(domain {g['name']}, vif 0)'" for g in facts.guests)
    shell_check(vm, "network status shows the bridge, the uplink and each guest's vif",
                f"{until(90)} s=$({status} 2>&1) && {found} && break; sleep 2; done; printf '%s\\n' \"$s\"",
                180, expect=expect)


CONFIRM = 15   # seconds `network bridge --apply` waits for `network confirm` in the check


def live_bridge_rolled_back(vm: Machine, uplink: str, host_ip: str, guest_ip: str,
                            uplink_slot_name: str | None = None) -> None:
    """``network bridge --apply`` for real with systemd-networkd on the routed host: the
    bridge takes the uplink's address live; unconfirmed, it is rolled back by itself and
    the guest answers again through its routed vif."""
    shell_check(vm, f"network bridge --apply: xenbr9 takes over {uplink} live (networkd)",
                f"{_provision(f'network bridge --name xenbr9 --uplink {uplink} --apply --confirm-timeout {CONFIRM}')} "
                f"> /tmp/apply.log 2>&1 & p=$!; {until(120)} ip -4 -o addr show dev xenbr9 2>/dev/null | grep -q "
                f"'{host_ip}' && break; sleep 1; done; ip -4 -o addr show dev xenbr9 || cat /tmp/apply.log; "
                f"ip -o link show {uplink}",
                180, expect=rf"xenbr9\s+inet {re.escape(host_ip)}(?s:.*)master xenbr9")
    shell_check(vm, f"unconfirmed, the change is rolled back: {uplink} has {host_ip} again, no xenbr9",
                f"{until(200)} kill -0 $p 2>/dev/null || break; sleep 1; done; "
                f"kill -0 $p 2>/dev/null && echo 'apply still running' || wait $p; "
                f"cat /tmp/apply.log /run/xen-provision/network-*.log; "
                f"ip -4 -o addr show dev {uplink}; ! ip link show xenbr9 2>/dev/null && "
                f"ls /etc/systemd/network && ping -c1 -W5 {guest_ip}", 240,
                expect=rf"not confirmed within {CONFIRM} s: the previous network configuration is back(?s:.*)"
                       rf"{_uplink_pattern(uplink, uplink_slot_name)}\s+inet {re.escape(host_ip)}(?s:.*) 0% packet loss")
