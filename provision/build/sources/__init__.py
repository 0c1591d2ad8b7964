"""Sources for Xen and Linux, verified before use and cached by checksum.

    spec = SourceSpec.from_dict({"kind": "debian", "package": "xen"}, what="buildconfigs/xen.toml")
    src = fetch(spec)          # Source(tree=..., version="4.17.5", identity="<sha256>", spec=spec)

Three kinds:

``debian``
    The distribution's source package, fetched through the host's own apt mirror
    configuration without touching it: the Debian-archive ``deb`` entries of
    /etc/apt/sources.list{,.d} become a private deb-src list with private apt state under
    the cache (:mod:`.apt`); ``apt-get source --download-only`` fetches into a directory
    keyed by the .dsc's sha256 (taken from the signed Sources index); every file is
    checked against the .dsc; ``dpkg-source -x`` unpacks and patches it once (:mod:`.debian`).
``tarball``
    An upstream release: URL + sha256, streamed, resumable, retried, verified before it
    appears in the cache (see :mod:`provision.build.download`), unpacked once.
``local``
    An existing tree, used in place.

One module per concern: :mod:`.spec` (what a source is, and the tree checks),
:mod:`.apt` (the host's apt configuration and the private apt), :mod:`.debian` and
:mod:`.fetch` (fetch and verify; the unpacked trees are entries of
:mod:`provision.cache`). Trees in the cache are shared: consumers must treat
``Source.tree`` as read-only and build out of tree.
"""

from provision.build.sources.apt import AptEntry, PrivateApt, host_apt_entries, is_debian_archive
from provision.build.sources.debian import debian_version_key, parse_dsc, verify_dsc_files
from provision.build.sources.fetch import fetch, local_identity
from provision.build.sources.spec import (
    KINDS,
    TREE_KINDS,
    Source,
    SourceSpec,
    check_tree,
    default_spec,
    tree_kind,
    tree_version,
)

__all__ = [
    "KINDS",
    "TREE_KINDS",
    "AptEntry",
    "PrivateApt",
    "Source",
    "SourceSpec",
    "check_tree",
    "debian_version_key",
    "default_spec",
    "fetch",
    "host_apt_entries",
    "is_debian_archive",
    "local_identity",
    "parse_dsc",
    "tree_kind",
    "tree_version",
    "verify_dsc_files",
]
