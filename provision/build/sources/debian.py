"""The distribution's source package, through the host's mirrors: resolve a version with
the private apt (:mod:`provision.build.sources.apt`), download every file of the .dsc
into ``debian/<dsc-sha256>/``, check each against the .dsc (parsed by python-debian),
then unpack and patch it once with ``dpkg-source -x``."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import threading
import time
from pathlib import Path

from debian.deb822 import Dsc
from debian.debian_support import Version

from provision import log
from provision.build.sources.apt import LISTS_MAX_AGE, PrivateApt, host_apt_entries
from provision.build.sources.spec import SHA256, Source, SourceSpec
from provision.cache import cache_dir, sha256_file, staging
from provision.errors import ProvisionError
from provision.run import CommandError, require, run

# How many versions to try when the mirror lacks apt's candidate (partial mirrors).
MAX_VERSIONS_TRIED = 6


def debian_version_key(version: str) -> Version:
    """A sort key ordering Debian versions as dpkg does (python-debian's Version)."""
    return Version(version)


def _dsc(dsc: Path) -> Dsc:
    with open(dsc, encoding="utf-8", errors="replace") as f:
        return Dsc(f)


def parse_dsc(dsc: Path) -> dict[str, tuple[int, str]]:
    """{filename: (size, sha256)} from a .dsc's Checksums-Sha256 field."""
    files = {f["name"]: (int(f["size"]), f["sha256"]) for f in _dsc(dsc).get("Checksums-Sha256") or []}
    if not files:
        raise ProvisionError(f"{dsc} has no Checksums-Sha256 field; it is not a usable .dsc")
    return files


def verify_dsc_files(dsc: Path) -> None:
    """Check every file the .dsc lists, beside it, against its size and sha256. A bad file
    is deleted and named, so the next fetch downloads it again."""
    for name, (size, sha) in sorted(parse_dsc(dsc).items()):
        path = dsc.parent / name
        if not path.is_file():
            raise ProvisionError(f"{dsc.name}: {name} is missing", hint="fetch again to download it")
        got = sha256_file(path)
        if got != sha or path.stat().st_size != size:
            path.unlink()
            raise ProvisionError(
                f"checksum mismatch for {name} (expected sha256 {sha}, got {got}); the bad file was deleted",
                hint="fetch again to download it afresh",
            )


def _watch_download(directory: Path, total: int, label: str, stop: threading.Event) -> None:
    """Draw a progress bar from the growing files apt is writing (apt's own bar needs a tty)."""
    def size() -> int:
        total = 0
        with contextlib.suppress(OSError):
            for p in directory.iterdir():
                with contextlib.suppress(OSError):  # apt renames files as it goes
                    total += p.stat().st_size
        return total

    with log.Progress(label, total) as bar:
        while not stop.wait(0.5):
            bar.update(max(0, size() - bar.done))
        bar.update(max(0, size() - bar.done))


class _Unavailable(Exception):
    """The mirror lists a version but does not serve its files (e.g. a 404)."""


def _apt_download(apt: PrivateApt, package: str, version: str, files, dest: Path) -> None:
    """``apt-get source --download-only`` into a temporary directory, verified, renamed to ``dest``."""
    with staging(dest) as tmp:
        tmp.mkdir()
        if os.geteuid() == 0:
            # apt downloads as _apt when it can write here; otherwise it warns and runs unsandboxed.
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(tmp, pwd.getpwnam("_apt").pw_uid, -1)
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_download, daemon=True,
                                   args=(tmp, sum(f[2] for f in files), f"Downloading {package} {version}", stop))
        watcher.start()
        try:
            run(apt.argv("source", "--download-only", f"{package}={version}"), env=apt.env, cwd=tmp, quiet=True)
        except CommandError as e:
            missing = re.search(r"Failed to fetch (\S+)\s+(404.*)", e.output)
            if missing:
                reason = " ".join(missing.group(2).split("[")[0].split())
                raise _Unavailable(f"{reason}: {missing.group(1)}") from None
            errors = [line for line in e.output.splitlines() if line.startswith("E: ")]
            raise ProvisionError(
                f"apt-get source {package}={version} failed: {(errors or [str(e)])[0].removeprefix('E: ')}",
                hint="check the network and the mirror in /etc/apt (the download is retried on the next run)",
            ) from None
        finally:
            stop.set()
            watcher.join()
        verify_dsc_files(next(tmp.glob("*.dsc")))
        tmp.chmod(0o755)


def _candidates(apt: PrivateApt, spec: SourceSpec) -> list[str]:
    """Versions to try, best first: the requested one, or apt's candidate followed by the
    other versions the lists know, newest first (a partial mirror may lack the candidate)."""
    if spec.version:
        return [spec.version]
    files = apt.print_uris(spec.package, None)
    dscs = [f[1] for f in files if f[1].endswith(".dsc")]
    first = dscs[0][len(spec.package) + 1:-len(".dsc")] if dscs else None
    out = run(["apt-cache", "madison", spec.package], env=apt.env, capture=True, check=False).stdout
    others = set()
    for line in out.splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) == 3 and cols[0] == spec.package and cols[2].endswith("Sources"):
            others.add(cols[1])
    rest = sorted(others - {first}, key=debian_version_key, reverse=True)
    return ([first] if first else []) + rest


def _versions(apt: PrivateApt, spec: SourceSpec) -> list[str]:
    """The versions to try, against lists refreshed as needed (under the lists' lock)."""
    with apt.locked():
        apt.setup()
        age = apt.lists_age()
        fresh = False
        if age is None:
            apt.update()
            fresh = True
        elif spec.version is None and age > LISTS_MAX_AGE:
            try:
                apt.update()
                fresh = True
            except CommandError as e:  # offline: the lists we have still name a version
                log.warn(f"could not refresh the deb-src lists ({e}); using those from "
                         f"{age / 3600:.0f} hours ago")
        versions = _candidates(apt, spec)
        if (not versions or not apt.print_uris(spec.package, versions[0])) and not fresh:
            apt.update()  # maybe the version is newer than our lists
            versions = _candidates(apt, spec)
    usable = [v for v in versions if apt.print_uris(spec.package, v)] if spec.version else versions
    if not usable:
        what = f"{spec.package} version {spec.version}" if spec.version else spec.package
        raise ProvisionError(f"no Debian source package {what} in {apt.suites}",
                             hint="check the package name and version (https://tracker.debian.org/ lists them)")
    return usable


def fetch_debian(spec: SourceSpec, unpacked) -> Source:
    """The tree of ``spec``: ``unpacked(identity, unpack)`` is the sources cache (the tree
    of the .dsc with that sha256, made by ``unpack(path)`` when it is not there)."""
    apt = PrivateApt(host_apt_entries())
    require("apt-get", "apt-cache", "dpkg-source")
    # Fast path: the same request against the same lists resolved to a tree before.
    known = apt.resolved(spec)
    if known and (source := unpacked(known, None)):
        return source
    usable = _versions(apt, spec)
    errors = []
    for version in usable[:MAX_VERSIONS_TRIED]:
        files = apt.print_uris(spec.package, version)
        dscs = [f for f in files if f[1].endswith(".dsc")]
        if not dscs or not SHA256.match(dscs[0][3]):
            continue
        dsc_sha = dscs[0][3]
        if dsc_sha in apt.unavailable():
            errors.append(f"{version}: not served by the mirror")
            continue
        try:
            source = unpacked(dsc_sha, lambda path, v=version, f=files, d=dscs[0]: _download_and_unpack(
                apt, spec, v, f, d, path))
        except _Unavailable as e:
            apt.mark_unavailable(dsc_sha)
            errors.append(f"{version}: {e}")
            log.warn(f"the mirror lists {spec.package} {version} but does not serve it ({e}); "
                     "trying the next version")
            continue
        if version != usable[0]:
            log.warn(f"using {spec.package} {version}: apt's candidate {usable[0]} is not downloadable "
                     "from this mirror")
        apt.remember(spec, dsc_sha)
        return source
    raise ProvisionError(
        f"could not download Debian source {spec.package} from the mirror: {'; '.join(errors)}",
        hint="check the network and the mirror in /etc/apt, or pin a 'version' the mirror serves",
    )


def _download_and_unpack(apt: PrivateApt, spec: SourceSpec, version: str, files, dsc_file, path: Path) -> str:
    """Download (or reuse the verified download of) the .dsc's files and unpack the tree
    into ``path`` (through staging); returns the tree's name in it."""
    _uri, dsc_name, _size, dsc_sha = dsc_file
    downloads = cache_dir("debian") / dsc_sha
    with log.step(f"Fetching Debian source {spec.package} {version}"):
        dsc = downloads / dsc_name
        complete = dsc.is_file() and sha256_file(dsc) == dsc_sha and all(
            (downloads / name).is_file() for name in parse_dsc(dsc))
        if complete:
            verify_dsc_files(dsc)  # a corrupt file is deleted, so the next fetch gets it again
        else:
            log.info(f"downloading {len(files)} files ({sum(f[2] for f in files) / 2**20:.1f} MiB) "
                     "through the host's mirror")
            _apt_download(apt, spec.package, version, files, downloads)
            if sha256_file(dsc) != dsc_sha:
                dsc.unlink()
                raise ProvisionError(f"checksum mismatch for {dsc_name}: it does not match the Sources index; "
                                     "the bad file was deleted", hint="fetch again")
        fields = _dsc(dsc)
        upstream = Version(fields.get("Version") or "0").upstream_version
        tree_rel = f"{spec.package}-{upstream}"
        size = sum(s for s, _ in parse_dsc(dsc).values())
        log.info(f"unpacking and patching {dsc.name} ({size / 2**20:.0f} MiB compressed"
                 f"{'; this takes a minute or two' if size > 50 * 2**20 else ''})")
        start = time.monotonic()
        with staging(path) as tmp:
            tmp.mkdir(mode=0o755)
            # --no-copy: the tarballs stay in the download cache, not beside the tree.
            run(["dpkg-source", "--no-copy", "-x", dsc, tmp / tree_rel], quiet=True)
        log.info(f"unpacked in {time.monotonic() - start:.0f}s")
    return tree_rel


def dry_run_debian(spec: SourceSpec, cached) -> Source:
    """What fetching ``spec`` would do; ``cached(identity)`` is the cached Source or None."""
    apt = PrivateApt(host_apt_entries(), create=False)
    what = f"{spec.package}={spec.version}" if spec.version else f"{spec.package} (apt's candidate)"
    files = apt.print_uris(spec.package, spec.version) if apt.lists_age() is not None else []
    dscs = [f for f in files if f[1].endswith(".dsc")]
    if not dscs:
        log.info(f"would update private deb-src lists under {apt.root} from "
                 f"{', '.join(sorted({e.uri + ' ' + e.suite for e in apt.entries}))}, "
                 f"then download and unpack Debian source {what}")
        return Source(tree=cache_dir("sources", create=False), version=spec.version or "unknown",
                      identity="unknown", spec=spec)
    _uri, dsc_name, _size, dsc_sha = dscs[0]
    if source := cached(dsc_sha):
        log.info(f"{dsc_name}: already unpacked at {source.tree}")
        return source
    entry = cache_dir("sources", create=False) / dsc_sha
    log.info(f"would download {dsc_name} and {len(files) - 1} more files ({sum(f[2] for f in files) / 2**20:.1f}"
             f" MiB), verify them and unpack into {entry}")
    return Source(tree=entry, version=spec.version or "unknown", identity=dsc_sha, spec=spec)
