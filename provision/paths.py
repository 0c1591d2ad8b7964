"""Where the toolchain's own files are: one rule each, for every task and command.

``dist/``
    The directory given (doit's ``dist=``, a command's ``--dist``/``--dist-dir``), else
    ``$XEN_PROVISION_DIST``, else ``dist`` in the current directory. doit runs its tasks
    in the directory of dodo.py, so ``doit world`` in a checkout stages into its dist/.
``buildconfigs/``
    The directory given (``buildconfigs=``, ``--buildconfigs``), else
    ``$XEN_PROVISION_BUILDCONFIGS``, else ``buildconfigs`` in the current directory when
    there is one, else the checkout's (beside the package), else the copy installed
    with the package (``provision/data/buildconfigs``, see setup.py).
``install.sh``
    The checkout's (beside the package), else the copy installed with the package
    (``provision/data/install.sh``).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent          # in a checkout (or an editable install): the repository
DATA = PACKAGE / "data"            # in an installed package: setup.py copies the files here


def dist(given: str | os.PathLike | None = None) -> Path:
    """The dist directory: ``given``, else $XEN_PROVISION_DIST, else ./dist."""
    return Path(given or os.environ.get("XEN_PROVISION_DIST") or "dist").resolve()


def _shipped(name: str) -> Path:
    """The checkout's file ``name`` when this package runs from a checkout, else the
    installed copy."""
    return CHECKOUT / name if (CHECKOUT / name).exists() else DATA / name


def buildconfigs(given: str | os.PathLike | None = None) -> Path:
    value = given or os.environ.get("XEN_PROVISION_BUILDCONFIGS")
    if value:
        return Path(value).resolve()
    here = Path("buildconfigs")
    return here.resolve() if (here / "world.toml").is_file() else _shipped("buildconfigs")


def install_sh() -> Path:
    return _shipped("install.sh")
