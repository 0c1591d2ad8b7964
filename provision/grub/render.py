"""Boot entries from the command-line model: GRUB 2, legacy menu.lst, EFI xen.cfg.

One :class:`BootEntry` holds what every format needs (paths as the boot loader sees
them, Xen's and dom0's words); each renderer is a jinja2 template beside this file.
Output is deterministic: same entries, same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jinja2

from provision.errors import ProvisionError
from provision.grub.cmdline import Dom0Options, XenOptions
from provision.run import run

# Words GRUB's script parser takes literally; anything else is single-quoted.
_GRUB_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
ID_PREFIX = "xen-provision"


def grub_quote(word: str) -> str:
    """Quote one word for GRUB's shell-like script language."""
    if _GRUB_PLAIN.match(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def version_of(path: str, prefix: str) -> str:
    """``/boot/xen-4.17-amd64.gz`` -> ``4.17-amd64``; ``vmlinuz-6.1-xen0`` -> ``6.1-xen0``."""
    name = PurePosixPath(path).name
    for suffix in (".gz", ".efi"):
        name = name.removesuffix(suffix)
    return name[len(prefix) + 1:] if name.startswith(prefix + "-") else name


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "xen"


@dataclass(frozen=True)
class BootEntry:
    """One Xen boot entry; paths are as the boot loader sees them (e.g. ``/boot/xen-4.17.gz``)."""

    title: str
    id: str
    xen: str
    kernel: str
    xen_words: list[str] = field(default_factory=list)
    kernel_words: list[str] = field(default_factory=list)
    initrd: str | None = None

    @property
    def xen_version(self) -> str:
        return version_of(self.xen, "xen")

    @property
    def kernel_version(self) -> str:
        return version_of(self.kernel, "vmlinuz")

    @property
    def xen_cmdline(self) -> str:
        return " ".join(self.xen_words)

    @property
    def kernel_cmdline(self) -> str:
        return " ".join(self.kernel_words)


def make_entry(xen: str, kernel: str, xen_opts: XenOptions, dom0_opts: Dom0Options,
               initrd: str | None = None, title: str | None = None, id: str | None = None) -> BootEntry:
    xen_version = version_of(xen, "xen")
    kernel_version = version_of(kernel, "vmlinuz")
    return BootEntry(
        title=title or f"Xen {xen_version} / Linux {kernel_version}",
        id=id or f"{ID_PREFIX}-{slug(xen_version)}-{slug(kernel_version)}",
        xen=xen, kernel=kernel, initrd=initrd,
        xen_words=xen_opts.words(), kernel_words=dom0_opts.words(),
    )


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
    )
    env.filters["gq"] = grub_quote
    env.filters["gqjoin"] = lambda words: " ".join(grub_quote(w) for w in words)
    env.filters["basename"] = lambda p: PurePosixPath(p).name
    return env


LOADERS = {"multiboot2": ("multiboot2", "module2"), "multiboot": ("multiboot", "module")}


def render_grub2(entries: list[BootEntry], loader: str = "multiboot2", default: str | None = None) -> str:
    """GRUB 2 ``menuentry`` blocks (the text of custom.cfg, or what a grub.d script prints)."""
    kernel_cmd, module_cmd = LOADERS[loader]
    return _env().get_template("grub2.cfg.j2").render(
        entries=entries, loader=kernel_cmd, module=module_cmd, default=default)


GRUBD_HEADER_LINES = 4


def render_grubd_script(entries: list[BootEntry], loader: str = "multiboot2") -> str:
    """An /etc/grub.d script in the style of 40_custom: it prints the entries after its header."""
    return _env().get_template("grubd.sh.j2").render(
        skip=GRUBD_HEADER_LINES, body=render_grub2(entries, loader).rstrip("\n"))


def render_menu_lst(entries: list[BootEntry]) -> str:
    """Legacy GRUB stanzas in the manual's form: title, kernel (Xen), module lines."""
    return _env().get_template("menu.lst.j2").render(entries=entries)


def render_xen_cfg(entries: list[BootEntry], default: str | None = None) -> str:
    """xen.efi's config: kernel and ramdisk are file names beside xen.efi on the ESP."""
    if not entries:
        raise ProvisionError("no entries to write to xen.cfg")
    return _env().get_template("xen.cfg.j2").render(entries=entries, default=default or entries[0].id)


def script_check(text: str, what: str = "generated GRUB config") -> None:
    """Fail unless GRUB's own parser (grub-script-check) accepts ``text``."""
    proc = run(["grub-script-check"], input=text, check=False, capture=True, quiet=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise ProvisionError(f"grub-script-check rejects the {what}: {detail[-1] if detail else 'syntax error'}")
