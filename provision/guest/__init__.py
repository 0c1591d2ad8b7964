"""Xen-ready Debian and Ubuntu root filesystems: bootstrap (cached), configure, image.

    from provision.guest import resolve, GuestSettings, Network, Target, apt_sources
    from provision.guest.build import build

    spec = resolve("bookworm", include=["openssh-server"])     # suite table, mirror, keyring
    settings = GuestSettings("vm1", Network.make(ip="192.0.2.10/24", gateway="192.0.2.1"),
                             apt_sources=apt_sources(spec.release, spec.mirror))
    info = build(spec, settings, Target.file("/srv/xen/vm1.img", "2G", swap="512M"))

Lower level: ``basecache.obtain(spec, dir)`` puts the (cached) base tree in a directory,
``configure.configure(root, release, settings)`` configures a tree, ``plan(...)`` lists
what a build would do (the steps ``build`` runs). ``templates.save`` /
``templates.instantiate`` handle named templates.

The names below are loaded when first used (PEP 562), not when the package is: every
``provision.guest.X`` import would otherwise load the whole image pipeline (jinja2
included), which ``image resize`` or ``image update`` in a small dom0 pays for at each
run (seconds under the boot test's TCG). ``build`` and ``configure`` are the names of
this package's modules, so their functions are imported from those modules.
"""

import importlib

_EXPORTS = {
    "BaseSpec": "bootstrap", "command": "bootstrap", "resolve": "bootstrap",
    "plan": "build",
    "GuestSettings": "configure", "Network": "configure", "apt_sources": "configure",
    "RELEASES": "suites", "Release": "suites", "lookup": "suites",
    "Target": "target",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
