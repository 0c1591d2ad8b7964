"""Where domain files live, re-rootable so that nothing touches the host's /etc by accident.

``--root DIR`` re-roots every path (an offline image, or a test directory);
``--config-dir`` moves just the xl config directory (default ROOT/etc/xen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provision import validate
from provision.errors import ProvisionError
from provision.fsutil import within


@dataclass(frozen=True)
class Paths:
    root: Path = Path("/")
    config_dir: Path | None = None

    @property
    def xen(self) -> Path:
        return self.config_dir or within(self.root, "/etc/xen")

    @property
    def auto(self) -> Path:
        return self.xen / "auto"

    @property
    def lock(self) -> Path:
        return self.xen / ".xen-provision.lock"

    @property
    def exports(self) -> Path:
        return within(self.root, "/etc/exports")

    def config(self, name: str) -> Path:
        return self.xen / f"{validate.name(name, 'domain name')}.cfg"

    def inside(self, path: str) -> Path:
        """A path as the target system sees it, on this machine."""
        return within(self.root, path)


def from_args(args) -> Paths:
    """The paths of a command's --root and --config-dir. A --root must exist: a typo must
    not become a new tree of /etc files beside the image meant."""
    given = getattr(args, "root", None)
    root = Path(given if given is not None else "/")
    if not root.is_dir():
        raise ProvisionError(f"--root {root} is not a directory" if root.exists() else f"--root {root} does not exist",
                             hint="give the root of the system (an image's mounted or unpacked tree) to work in")
    config_dir = getattr(args, "config_dir", None)
    return Paths(root=root, config_dir=Path(config_dir) if config_dir is not None else None)
