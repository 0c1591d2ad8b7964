"""The package as a user installs it: ``pip install .`` into a fresh virtual environment,
then the ``xen-provision`` command run outside the checkout. What it needs besides its
code (buildconfigs/, install.sh) comes with the package (provision/paths.py, setup.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


# The distributions' names of what pyproject.toml depends on, as Python imports them.
DEPENDENCIES = ("doit", "jinja2", "parted", "debian", "requests")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment outside the checkout with the package installed by pip.

    When this interpreter already has every dependency (setup-host installs them; pyparted
    would otherwise be compiled against libparted), the environment sees them through
    --system-site-packages and pip installs the package alone (--no-deps), without the
    network; otherwise pip fetches them from the configured index."""
    where = tmp_path_factory.mktemp("installed") / "venv"
    have_deps = all(importlib.util.find_spec(name) is not None for name in DEPENDENCIES)
    subprocess.run([sys.executable, "-m", "venv", *(["--system-site-packages"] if have_deps else []), where],
                   check=True)
    pip = subprocess.run([where / "bin" / "pip", "install", "-q", *(["--no-deps"] if have_deps else []), ROOT],
                         capture_output=True, text=True, timeout=1800, cwd=where.parent)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    return where


def xen_provision(venv: Path, *args, cwd: Path, **env) -> subprocess.CompletedProcess:
    """The installed command, in ``cwd`` (not the checkout), with nothing of the checkout
    on its path."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([venv / "bin" / "xen-provision", *map(str, args)], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=600)


def test_help_from_the_installed_package(venv, tmp_path):
    p = xen_provision(venv, "--help", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for command in ("world", "dist", "grub", "network", "storage", "image", "domain", "boottest"):
        assert command in p.stdout
    where = subprocess.run([venv / "bin" / "python", "-c", "import provision; print(provision.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout.strip()
    assert where.startswith(str(venv)), where


def test_image_dry_run_from_the_installed_package(venv, tmp_path):
    p = xen_provision(venv, "image", "--debootstrap", "bookworm", "--file", tmp_path / "x.img", "--dry-run",
                      cwd=tmp_path, XEN_PROVISION_CACHE=str(tmp_path / "cache"))
    assert p.returncode == 0, p.stderr
    assert "release:  Debian 12 (bookworm)" in p.stdout and "mkfs.ext4 -F -q -d ROOT" in p.stdout
    # The guest's files come from the .j2 templates shipped in the package.
    assert "config:   write /etc/fstab" in p.stdout and "config:   write /etc/hosts" in p.stdout
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # a dry run: no image, no cache


def test_grub_entries_from_the_installed_package(venv, tmp_path):
    """The boot entries come from grub/templates/*.j2, shipped in the package."""
    boot = tmp_path / "root" / "boot"
    boot.mkdir(parents=True)
    (boot / "xen-4.17.5.gz").write_bytes(b"")
    (boot / "vmlinuz-6.1.1-xen0").write_bytes(b"")
    for fmt, expected in (("grub2", "menuentry 'Xen 4.17.5 / Linux 6.1.1-xen0'"),
                          ("menu.lst", "kernel /boot/xen-4.17.5.gz"), ("xen.cfg", "[global]")):
        p = xen_provision(venv, "grub", "render", "--root", tmp_path / "root", "--root-device", "/dev/sda1",
                          "--loader", "multiboot2", "--format", fmt, cwd=tmp_path)
        assert p.returncode == 0 and expected in p.stdout, (fmt, p.stdout, p.stderr)


def test_buildconfigs_and_install_sh_come_with_the_package(venv, tmp_path):
    code = "from provision import paths; print(paths.buildconfigs()); print(paths.install_sh())"
    out = subprocess.run([venv / "bin" / "python", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
    configs, install_sh = map(Path, out.split())
    assert configs.is_relative_to(venv) and (configs / "world.toml").is_file()
    assert sorted(p.name for p in configs.glob("mk.linux-*")) == sorted(
        p.name for p in (ROOT / "buildconfigs").glob("mk.linux-*"))
    assert install_sh.is_relative_to(venv) and install_sh.read_bytes() == (ROOT / "install.sh").read_bytes()
    # `dist` packs the installed install.sh with a staged tree, outside any checkout.
    spec = importlib.util.spec_from_file_location("install_helpers", ROOT / "tests" / "unit" / "test_install.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.make_tree(tmp_path / "dist" / "install")
    p = xen_provision(venv, "dist", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    with tarfile.open(tmp_path / "dist" / "xen-4.17.5-install.tgz") as tar:
        packed = tar.extractfile("xen-4.17.5-install/install.sh").read()
    assert packed == (ROOT / "install.sh").read_bytes()
