"""Xen-ready Debian and Ubuntu root filesystems: bootstrap (cached), configure, image.

    from provision.guest import resolve, GuestSettings, Network, Target, build

    spec = resolve("bookworm", include=["openssh-server"])     # suite table, mirror, keyring
    settings = GuestSettings("vm1", Network.make(ip="192.0.2.10/24", gateway="192.0.2.1"),
                             apt_sources=apt_sources(spec.release, spec.mirror))
    info = build(spec, settings, Target.file("/srv/xen/vm1.img", "2G", swap="512M"))

Lower level: ``basecache.obtain(spec, dir)`` puts the (cached) base tree in a directory,
``configure(root, release, settings)`` configures a tree, ``build.plan(...)`` lists what
a build would do (the steps ``build`` runs). ``templates.save`` / ``templates.instantiate``
handle named templates.
"""

from provision.guest.bootstrap import BaseSpec, command, resolve
from provision.guest.build import build, plan
from provision.guest.configure import GuestSettings, Network, apt_sources, configure
from provision.guest.suites import RELEASES, Release, lookup
from provision.guest.target import Target

__all__ = [
    "RELEASES",
    "BaseSpec",
    "GuestSettings",
    "Network",
    "Release",
    "Target",
    "apt_sources",
    "build",
    "command",
    "configure",
    "lookup",
    "plan",
    "resolve",
]
