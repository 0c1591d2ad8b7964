"""The guard of a live network change: ``python -m provision.network.guard RECORD``.

Started by ``network bridge|routed --apply`` in a session of its own before anything
changes, so that neither a closed terminal nor a killed command stops it. It rolls the
change back when the deadline passes unconfirmed, when asked (``network rollback``, an
interrupted ``--apply``), or when the command dies while still applying; it exits
quietly once the change is confirmed.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from provision.network.apply import POLL, _alive, read_record, run_rollback


def watch(record: Path) -> int:
    # Nothing but the record's state ends the guard: not a hang-up, not Ctrl-C in the
    # terminal it was started from (it has its own session, but be sure).
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        rec = read_record(record)
        if rec is None:
            return 0
        state = rec.get("state")
        if state in ("confirmed", "rolled-back"):
            return 0
        due = state == "applied" and rec.get("deadline") and time.time() >= rec["deadline"]
        orphaned = state == "applying" and not _alive(rec.get("pid"))
        if state == "rollback" or due or orphaned:
            result = run_rollback(record)
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} rolled back "
                  f"({'asked' if state == 'rollback' else 'not confirmed' if due else 'the command died'})"
                  + (f": {'; '.join(result.get('problems') or [])}" if result.get("problems") else ""),
                  flush=True)
            return 0
        time.sleep(POLL)


if __name__ == "__main__":
    raise SystemExit(watch(Path(sys.argv[1])))
