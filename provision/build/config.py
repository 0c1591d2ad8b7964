"""The buildconfigs/ model: what `doit world` builds, read and validated once.

``buildconfigs/world.toml`` names the Xen source, its Kconfig fragment, the control tools
switch, the Linux source and the KERNELS list. Each kernel is a recipe file
``buildconfigs/mk.linux-<series>-<flavour>`` (TOML) naming its base config (``debian``:
the distribution's own, :mod:`provision.build.debconfig`), an optional ``lsmod`` file to
trim it to one machine's modules, the fragments merged onto it and the options that must
(``require``) or must not (``forbid``) be set after olddefconfig. Everything here is checked at the edge; inner code trusts it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from provision.build import distcc as distcc_hosts
from provision.build import kconfig
from provision.build.lsmod import read as read_lsmod
from provision.build.sources import SourceSpec, default_spec
from provision.errors import ProvisionError

WORLD = "world.toml"
RECIPE = re.compile(r"^mk\.linux-(?P<series>[0-9]+\.[0-9]+)-(?P<flavour>[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*)$")
DEBIAN = "debian"  # the distribution's config of the same source (provision/build/debconfig.py)
BASES = ("tinyconfig", "defconfig", DEBIAN)
LINUX_PREFIX = "linux:"  # a fragment from the Linux source tree, e.g. linux:kernel/configs/xen.config
_SYMBOL = re.compile(r"^[A-Z0-9_]+$")


@dataclass(frozen=True)
class Fragment:
    """One Kconfig fragment: ours (a file in buildconfigs/) or one in the Linux tree."""

    label: str  # as written in the recipe
    path: Path | None = None  # ours, resolved
    tree_path: str | None = None  # relative to the Linux tree
    values: dict = field(default_factory=dict, compare=False, hash=False)  # ours, parsed
    text: str = field(default="", compare=False, hash=False)


@dataclass(frozen=True)
class KernelRecipe:
    name: str  # mk.linux-6.1-xen0
    path: Path
    series: str  # 6.1
    flavour: str  # xen0
    base: str  # "tinyconfig", "defconfig", "debian" or an absolute path to a full config
    fragments: tuple[Fragment, ...]
    require: tuple[str, ...]
    forbid: tuple[str, ...]
    text: str = field(compare=False, hash=False, default="")
    lsmod: Path | None = None  # trim the base to these loaded modules (make localmodconfig)
    lsmod_text: str = field(compare=False, hash=False, default="")

    def ours(self) -> dict[str, str]:
        """The settings our own fragments ask for (checked after olddefconfig)."""
        return kconfig.merge({}, *(f.values for f in self.fragments if f.path))

    def inputs(self) -> dict:
        """Everything that decides this kernel's config (for cache keys and doit)."""
        base = self.base
        if base not in BASES:
            base = "sha256:" + hashlib.sha256(Path(base).read_bytes()).hexdigest()
        found = {
            "recipe": hashlib.sha256(self.text.encode()).hexdigest(),
            "base": base,
            "fragments": [
                f.tree_path if f.tree_path else hashlib.sha256(f.text.encode()).hexdigest()
                for f in self.fragments
            ],
        }
        if self.lsmod:
            found["lsmod"] = hashlib.sha256(self.lsmod_text.encode()).hexdigest()
        return found

    def files(self) -> list[Path]:
        """Our files this recipe reads: doit's file_dep."""
        files = [self.path, *(f.path for f in self.fragments if f.path)]
        if self.base not in BASES:
            files.append(Path(self.base))
        if self.lsmod:
            files.append(self.lsmod)
        return files

    def with_lsmod(self, path: Path) -> KernelRecipe:
        """This recipe trimmed to the modules of the lsmod file ``path`` (validated)."""
        return dataclasses.replace(self, lsmod=path, lsmod_text=read_lsmod(path))


@dataclass(frozen=True)
class XenSettings:
    source: SourceSpec
    fragment: Path
    fragment_values: dict = field(compare=False, hash=False)
    fragment_text: str = field(compare=False, hash=False)
    tools: bool = True
    tools_configure: tuple[str, ...] = ()


@dataclass(frozen=True)
class World:
    root: Path
    xen: XenSettings
    linux_source: SourceSpec
    kernels: tuple[KernelRecipe, ...]
    available: tuple[str, ...]  # every recipe in buildconfigs/
    distcc: tuple[distcc_hosts.Host, ...] = ()  # [build] distcc, or distcc= (provision/build/distcc.py)


def available_recipes(root: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in root.glob("mk.linux-*") if RECIPE.match(p.name)))


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProvisionError(f"{path} does not exist",
                             hint="run from the checkout, or give the buildconfigs directory") from None
    except tomllib.TOMLDecodeError as e:
        raise ProvisionError(f"{path}: not valid TOML: {e}") from None


def _check_keys(d: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ProvisionError(f"{what}: unknown key{'s' if len(unknown) > 1 else ''}: "
                             f"{', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _strings(value, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProvisionError(f"{what} must be a list of strings, not {value!r}")
    return tuple(value)


def _source(table: dict, package: str, what: str) -> SourceSpec:
    if "source" not in table:
        spec = default_spec(package)
        if spec is None:
            raise ProvisionError(f"{what}: no 'source' given and this is not a Debian-family host",
                                 hint='add source = { kind = "tarball", url = "...", sha256 = "..." }')
        return spec
    return SourceSpec.from_dict(table["source"], what=f"{what} source")


def _symbols(value, what: str) -> tuple[str, ...]:
    names = _strings(value, what)
    for name in names:
        if not _SYMBOL.match(name.removeprefix("CONFIG_")):
            raise ProvisionError(f"{what}: {name!r} is not a Kconfig symbol name")
    return tuple(n.removeprefix("CONFIG_") for n in names)


def load_recipe(root: Path, name: str) -> KernelRecipe:
    m = RECIPE.match(name)
    path = root / name
    if not m or not path.is_file():
        have = available_recipes(root)
        raise ProvisionError(
            f"unknown kernel '{name}'; {root} has: {', '.join(have) if have else 'none'}",
            hint="name one of those, e.g. doit world kernels=" + (have[0] if have else "mk.linux-6.1-xenU"),
        )
    text = path.read_text()
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProvisionError(f"{path}: not valid TOML: {e}") from None
    _check_keys(d, {"base", "fragments", "require", "forbid", "lsmod"}, str(path))
    base = d.get("base", "tinyconfig")
    if not isinstance(base, str) or not base:
        raise ProvisionError(f"{path}: base must be tinyconfig, defconfig, debian or a config file path")
    if base not in BASES:
        base_path = (root / base).resolve()
        if not base_path.is_file():
            raise ProvisionError(f"{path}: base config {base} does not exist",
                                 hint=f"use {' or '.join(BASES)}, or a path to a kernel .config")
        kconfig.parse_file(base_path)
        base = str(base_path)
    fragments = []
    for label in _strings(d.get("fragments", []), f"{path}: fragments"):
        if label.startswith(LINUX_PREFIX):
            rel = label[len(LINUX_PREFIX):]
            if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                raise ProvisionError(f"{path}: {label!r} must name a file inside the Linux tree")
            fragments.append(Fragment(label, tree_path=rel))
        else:
            frag = (root / label).resolve()
            if not frag.is_file():
                raise ProvisionError(f"{path}: fragment {label} does not exist in {root}")
            ftext = frag.read_text()
            values = kconfig.parse(ftext, what=str(root / label))
            fragments.append(Fragment(label, path=frag, values=values, text=ftext))
    recipe = KernelRecipe(
        name=name, path=path, series=m["series"], flavour=m["flavour"], base=base,
        fragments=tuple(fragments),
        require=_symbols(d.get("require", []), f"{path}: require"),
        forbid=_symbols(d.get("forbid", []), f"{path}: forbid"),
        text=text,
    )
    if "lsmod" in d:
        if not isinstance(d["lsmod"], str) or not d["lsmod"]:
            raise ProvisionError(f"{path}: lsmod must be the path of an lsmod output file (relative to {root})")
        recipe = _trimmed(recipe, (root / d["lsmod"]).resolve(), str(path))
    return recipe


def _trimmed(recipe: KernelRecipe, path: Path, what: str) -> KernelRecipe:
    """``recipe`` with the lsmod file ``path``: only a base with modules can be trimmed."""
    if recipe.base == "tinyconfig":
        raise ProvisionError(f"{what}: lsmod trims a kernel's modules, but {recipe.name} is "
                             "built from tinyconfig, which has none",
                             hint='use it with base = "debian" (e.g. mk.linux-6.1-xen0-hw)')
    return recipe.with_lsmod(path)


def with_lsmod(recipes: tuple[KernelRecipe, ...], path: str | Path) -> tuple[KernelRecipe, ...]:
    """The command line's lsmod file for every kernel that has modules to trim (all but
    the tinyconfig ones); an error if there is none among ``recipes``."""
    path = Path(path).resolve()
    text = read_lsmod(path)  # a bad file is an error even when no kernel would use it
    trimmable = [r for r in recipes if r.base != "tinyconfig"]
    if not trimmable:
        raise ProvisionError(f"lsmod={path}: none of the kernels ({', '.join(r.name for r in recipes) or 'none'}) "
                             "has modules to trim (they are built from tinyconfig)",
                             hint="add the hardware dom0: kernels=mk.linux-6.1-xen0-hw")
    return tuple(dataclasses.replace(r, lsmod=path, lsmod_text=text) if r.base != "tinyconfig" else r
                 for r in recipes)


def kernel_names(value: str | list[str] | tuple[str, ...] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """The KERNELS list, or a command-line override ("a b" or "a,b")."""
    if value is None:
        return default
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,]+", value) if v]
    return tuple(dict.fromkeys(value))


def load(root: str | Path = "buildconfigs", kernels: str | list[str] | None = None,
         distcc: str | None = None, lsmod_file: str | Path | None = None) -> World:
    """Read buildconfigs/; ``kernels`` overrides the KERNELS list, ``distcc`` (a host list,
    "" for none) the [build] distcc hosts, ``lsmod_file`` the recipes' lsmod (for every
    kernel with modules)."""
    root = Path(root).resolve()
    world_file = root / WORLD
    d = _toml(world_file)
    _check_keys(d, {"KERNELS", "xen", "linux", "build"}, str(world_file))
    build = d.get("build", {})
    if not isinstance(build, dict):
        raise ProvisionError(f"{world_file}: [build] must be a table")
    _check_keys(build, {"distcc"}, f"{world_file} [build]")
    if distcc is None:
        hosts = distcc_hosts.parse(_strings(build["distcc"], f"{world_file}: [build] distcc")
                                   if "distcc" in build else None)
    else:
        hosts = distcc_hosts.parse(distcc)
    xen = d.get("xen", {})
    if not isinstance(xen, dict):
        raise ProvisionError(f"{world_file}: [xen] must be a table")
    _check_keys(xen, {"source", "fragment", "tools"}, f"{world_file} [xen]")
    frag_name = xen.get("fragment", "xen.config")
    frag = root / frag_name
    if not isinstance(frag_name, str) or not frag.is_file():
        raise ProvisionError(f"{world_file}: the Xen fragment {frag_name} does not exist in {root}")
    frag_text = frag.read_text()
    frag_values = kconfig.parse(frag_text, what=str(frag))
    tools = xen.get("tools", {})
    if not isinstance(tools, dict):
        raise ProvisionError(f"{world_file}: [xen.tools] must be a table")
    _check_keys(tools, {"enabled", "configure"}, f"{world_file} [xen.tools]")
    enabled = tools.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ProvisionError(f"{world_file}: [xen.tools] enabled must be true or false")
    configure = _strings(tools.get("configure", []), f"{world_file}: [xen.tools] configure")
    for flag in configure:
        if not flag.startswith("-"):
            raise ProvisionError(f"{world_file}: configure option {flag!r} must start with '-'")
    xen_settings = XenSettings(
        source=_source(xen, "xen", f"{world_file} [xen]"),
        fragment=frag.resolve(), fragment_values=frag_values, fragment_text=frag_text,
        tools=enabled, tools_configure=configure,
    )
    linux = d.get("linux", {})
    if not isinstance(linux, dict):
        raise ProvisionError(f"{world_file}: [linux] must be a table")
    _check_keys(linux, {"source"}, f"{world_file} [linux]")
    default = _strings(d.get("KERNELS", []), f"{world_file}: KERNELS")
    names = kernel_names(kernels, default)
    recipes = tuple(load_recipe(root, n) for n in names)
    if lsmod_file is not None:
        recipes = with_lsmod(recipes, lsmod_file)
    flavours = [r.flavour for r in recipes]
    dup = sorted({f for f in flavours if flavours.count(f) > 1})
    if dup:
        raise ProvisionError(f"two kernels with the flavour {dup[0]}: their files would collide in boot/",
                             hint="build one of them at a time")
    return World(
        root=root, xen=xen_settings,
        linux_source=_source(linux, "linux", f"{world_file} [linux]"),
        kernels=recipes, available=available_recipes(root), distcc=hosts,
    )
