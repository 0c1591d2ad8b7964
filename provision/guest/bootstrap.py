"""Backends that bootstrap a base system into a directory: mmdebstrap (faster) or debootstrap.

:func:`resolve` turns the user's choices into a :class:`BaseSpec` (validated once, here);
:func:`command` is the exact command line, which ``--dry-run`` prints and the tests check
without the network; :func:`bootstrap` runs it.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from provision import log
from provision.errors import ProvisionError
from provision.guest import mirror as mirrors
from provision.guest.suites import Release, lookup
from provision.run import output, run, which

BACKENDS = ("mmdebstrap", "debootstrap")
# Our variant names; "default" is debootstrap's own default (required + important).
VARIANTS = {
    "minbase": {"mmdebstrap": "minbase", "debootstrap": "minbase"},
    "buildd": {"mmdebstrap": "buildd", "debootstrap": "buildd"},
    "default": {"mmdebstrap": "debootstrap", "debootstrap": None},
}
ARCHES = ("amd64", "i386", "arm64", "armhf", "armel", "ppc64el", "s390x", "riscv64", "mips64el")
_PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_JESSIE_HOOK = "/usr/share/mmdebstrap/hooks/maybe-jessie-or-older"
PREFETCH = Path(__file__).with_name("mmdebstrap-prefetch.sh")
# What mmdebstrap's variants install with apt after the essential set (its second
# download, which the prefetch hooks start during the essential install).
_SECOND_SET = {
    "minbase": ("apt", "?priority(required)"),
    "buildd": ("apt", "?priority(required)", "build-essential"),
    "debootstrap": ("apt", "?priority(required)", "?priority(important)"),
}


@dataclass(frozen=True)
class BaseSpec:
    """Everything that decides the bootstrapped base (and so its cache key)."""

    release: Release
    arch: str
    mirror: str
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    backend: str = "mmdebstrap"
    components: tuple[str, ...] = ("main",)
    keyring: str | None = None  # None: --no-check-gpg
    proxy: str | None = field(default=None, compare=False)
    # None: the installed backend's version. Set for a base made on another machine
    # (a seeded cache), whose key must not depend on what is installed here.
    made_with: str | None = None

    @property
    def suite(self) -> str:
        return self.release.name

    @property
    def check_gpg(self) -> bool:
        return self.keyring is not None

    def manifest(self) -> dict:
        """The inputs that make the base what it is: the cache key is a hash of this."""
        return {
            "format": 1,
            "distro": self.release.distro,
            "suite": self.suite,
            "arch": self.arch,
            "mirror": self.mirror,
            "variant": self.variant,
            "components": list(self.components),
            "include": sorted(self.include),
            "exclude": sorted(self.exclude),
            "backend": self.backend,
            "backend_version": self.made_with or backend_version(self.backend),
        }

    @classmethod
    def from_manifest(cls, manifest: dict) -> BaseSpec:
        """The spec of a cached base from its manifest (``<key>.json``), made elsewhere:
        the same manifest, so the same cache key, whatever is installed here. Only for
        finding that base in the cache: this machine's backend may differ."""
        try:
            if manifest["format"] != 1:
                raise ProvisionError(f"base manifest format {manifest['format']} is not known")
            release = lookup(manifest["suite"])
            spec = cls(release, manifest["arch"], manifest["mirror"], manifest["variant"],
                       tuple(manifest["include"]), tuple(manifest["exclude"]), manifest["backend"],
                       tuple(manifest["components"]), mirrors.default_keyring(release),
                       made_with=manifest["backend_version"])
        except (KeyError, TypeError) as e:
            raise ProvisionError(f"base manifest lacks {e}", hint="it is not a xen-provision base manifest") from None
        if spec.manifest() != manifest:
            raise ProvisionError("base manifest does not describe a base this version can use",
                                 hint="seed the cache again with this checkout")
        return spec


@functools.cache
def host_arch() -> str:
    if which("dpkg"):
        return output(["dpkg", "--print-architecture"])
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386"}.get(platform.machine(), platform.machine())


def arch_for(release: Release, arch: str | None = None) -> str:
    """The architecture to bootstrap: the one given, else the release's own (i386 for the
    oldest suites), else the host's."""
    return arch or release.arch or host_arch()


@functools.cache
def backend_version(backend: str) -> str:
    """``mmdebstrap 1.3.5``: part of the cache key, so a new backend rebuilds the base."""
    if which(backend) is None:
        return "missing"
    if which("dpkg-query"):  # 15 ms, where mmdebstrap --version starts perl (250 ms)
        version = output(["dpkg-query", "-W", "-f=${Version}", backend], check=False)
        if version:
            return f"{backend} {version}"
    text = output([backend, "--version"], check=False)
    return text.splitlines()[0].strip() if text else "unknown"


def _packages(values, what: str) -> tuple[str, ...]:
    out: set[str] = set()
    for value in values or ():
        for pkg in str(value).replace(",", " ").split():
            if not _PKG_RE.match(pkg):
                raise ProvisionError(f"{what} package name '{pkg}' is not valid",
                                     hint="Debian package names are lower-case letters, digits, '+', '-' and '.'")
            out.add(pkg)
    return tuple(sorted(out))


def resolve(suite: str, *, arch: str | None = None, mirror: str | None = None, variant: str = "minbase",
            include=(), exclude=(), backend: str = "auto", keyring: str | None = None,
            check_gpg: bool = True, proxy: str | None = None, boot_packages: bool = True,
            components=None, etc_apt: str = "/etc/apt") -> BaseSpec:
    """Validate the user's choices and fill in the defaults for ``suite``.

    ``boot_packages`` adds what the release needs to boot as a domain (init, network);
    a minimal variant lacks them.
    """
    release = lookup(suite)
    if variant not in VARIANTS:
        raise ProvisionError(f"variant '{variant}' is not known", hint=f"use one of: {', '.join(VARIANTS)}")
    arch = arch_for(release, arch)
    if arch not in ARCHES:
        raise ProvisionError(f"architecture '{arch}' is not known", hint=f"use one of: {', '.join(ARCHES)}")
    if release.name in ("potato", "woody", "sarge") and arch != "i386":
        raise ProvisionError(f"{release} has no {arch} packages in its archive", hint="use --arch i386")
    mirror = mirrors.check_mirror_url(mirror) if mirror else mirrors.default_mirror(release, etc_apt)
    proxy = mirrors.check_proxy_url(proxy) if proxy else None
    inc = set(_packages(include, "--include"))
    if boot_packages:
        inc.update(release.boot)
    exc = _packages(exclude, "--exclude")
    both = inc.intersection(exc)
    if both:
        raise ProvisionError(f"package {sorted(both)[0]} is both included and excluded")

    if backend == "auto":
        backend = "mmdebstrap" if (release.mmdebstrap and not exc and which("mmdebstrap")) else "debootstrap"
    elif backend not in BACKENDS:
        raise ProvisionError(f"backend '{backend}' is not known", hint="use mmdebstrap, debootstrap or auto")
    if backend == "mmdebstrap" and not release.mmdebstrap:
        raise ProvisionError(f"mmdebstrap cannot bootstrap {release}", hint="use --backend debootstrap")
    if backend == "mmdebstrap" and exc:
        raise ProvisionError("mmdebstrap has no --exclude", hint="use --backend debootstrap to exclude packages")

    if not check_gpg:
        log.warn(f"NOT CHECKING SIGNATURES: --no-check-gpg bootstraps {release} from {mirror} "
                 "without verifying a single package; anyone on the path can change what you install")
        keyring = None
    else:
        keyring = keyring or mirrors.default_keyring(release)
        if not os.path.isfile(keyring):
            pkg = mirrors.KEYRING_PACKAGES[release.distro]
            raise ProvisionError(
                f"keyring {keyring} for {release} is missing",
                hint=f"install {pkg} or pass --keyring FILE (or, knowingly, --no-check-gpg)",
            )
    if components is None:
        components = ("main",)
    return BaseSpec(release, arch, mirror, variant, tuple(sorted(inc)), exc, backend,
                    tuple(components), keyring, proxy)


def command(spec: BaseSpec, target: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """The exact argv and the extra environment that bootstrap ``spec`` into ``target``."""
    target = os.fspath(target)
    env = {"http_proxy": spec.proxy, "https_proxy": spec.proxy} if spec.proxy else {}
    variant = VARIANTS[spec.variant][spec.backend]
    if spec.backend == "mmdebstrap":
        argv = ["mmdebstrap", "--mode=root", "--format=directory", f"--variant={variant}",
                f"--architectures={spec.arch}", f"--components={','.join(spec.components)}"]
        if spec.include:
            argv.append(f"--include={','.join(spec.include)}")
        if spec.keyring:
            argv.append(f"--keyring={spec.keyring}")
        if spec.release.archived:
            # Archived Release files are long past their Valid-Until, signed by expired keys.
            argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
            argv.append('--aptopt=Apt::Key::gpgvcommand "/usr/libexec/mmdebstrap/gpgvnoexpkeysig"')
            argv.append(f"--hook-dir={_JESSIE_HOOK}")
        else:
            argv += _prefetch_hooks(variant, spec.include)
        source = f"deb {'[trusted=yes] ' if not spec.keyring else ''}{spec.mirror} {spec.suite} {' '.join(spec.components)}"
        argv += [spec.suite, target, source]
        return argv, env
    argv = ["debootstrap", f"--arch={spec.arch}"]
    if variant:
        argv.append(f"--variant={variant}")
    argv.append(f"--components={','.join(spec.components)}")
    if spec.include:
        argv.append(f"--include={','.join(spec.include)}")
    if spec.exclude:
        argv.append(f"--exclude={','.join(spec.exclude)}")
    argv.append(f"--keyring={spec.keyring}" if spec.keyring else "--no-check-gpg")
    argv += [spec.suite, target, spec.mirror]
    return argv, env


def _prefetch_hooks(variant: str, include: tuple[str, ...]) -> list[str]:
    """mmdebstrap hooks that download the variant's second package set while dpkg installs
    the essential one (see mmdebstrap-prefetch.sh): 2-3 s of a 16-20 s minbase bootstrap.
    Not for archived suites, whose old apt/dpkg the hook was never run against."""
    wanted = " ".join(shlex.quote(p) for p in (*_SECOND_SET[variant], *include))
    script = shlex.quote(str(PREFETCH))
    return [f'--extract-hook=sh {script} start "$1" {wanted}',
            f'--essential-hook=sh {script} wait "$1"']


def bootstrap(spec: BaseSpec, target: str | os.PathLike, *, quiet: bool = False) -> None:
    """Run the backend: a base system of ``spec`` in the (new or empty) directory ``target``."""
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise ProvisionError(f"bootstrap target {target} is not empty")
    argv, env = command(spec, target)
    log.info(f"{spec.backend} {spec.variant} {spec.release} {spec.arch} from {spec.mirror}")
    run(argv, env=env, quiet=quiet, group=True)
