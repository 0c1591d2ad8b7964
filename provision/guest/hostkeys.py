"""A guest's own SSH host keys, made when its image is made.

Images are cloned, so a base's or a template's host keys are never kept: each guest
gets keys of its own. Made here, with the host's ssh-keygen, rather than by the guest on
its first boot: the administrator learns them with the image (its JSON records the
public keys, ready for known_hosts, so the first ssh needs no trust on first use), the
keys come from a machine whose random pool is seeded, and the guest's first boot does
not wait for them (RSA 3072 took a guest 40 s under the boot test's TCG, holding back
ssh.service and multi-user).

Only for guests whose sshd reads OpenSSH's own key format (systemd releases: OpenSSH
6.7 and later); older ones make their keys at first boot, as before.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import ProvisionError
from provision.run import require, which

# What `ssh-keygen -A` makes on Debian and Ubuntu, and sshd's default HostKey files.
TYPES = ("rsa", "ecdsa", "ed25519")


@dataclass(frozen=True)
class HostKey:
    type: str
    private: bytes = field(repr=False)   # /etc/ssh/ssh_host_<type>_key, mode 0600
    public: str              # /etc/ssh/ssh_host_<type>_key.pub: "ssh-ed25519 AAAA... root@vm1"

    @property
    def path(self) -> str:
        return f"/etc/ssh/ssh_host_{self.type}_key"


def available() -> bool:
    return which("ssh-keygen") is not None


def generate(hostname: str, types: tuple[str, ...] = TYPES) -> tuple[HostKey, ...]:
    """New host keys for guest ``hostname``, one per type, made side by side (RSA's
    primes take longest). The comment is root@HOST, as the guest's own ssh-keygen -A
    would write."""
    require("ssh-keygen")
    comment = f"root@{hostname.split('.', 1)[0]}"
    with tempfile.TemporaryDirectory(prefix="xen-provision-hostkeys.") as work:
        files = {t: Path(work) / f"ssh_host_{t}_key" for t in types}
        procs = {t: subprocess.Popen(["ssh-keygen", "-q", "-t", t, "-N", "", "-C", comment, "-f", str(f)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for t, f in files.items()}
        failed = []
        for t, proc in procs.items():
            out, _ = proc.communicate()
            if proc.returncode != 0:
                failed.append(f"{t}: {out.decode(errors='replace').strip()}")
        if failed:
            raise ProvisionError(f"ssh-keygen could not make the guest's host keys ({failed[0]})")
        return tuple(HostKey(t, f.read_bytes(), f.with_name(f.name + ".pub").read_text().strip())
                     for t, f in files.items())
