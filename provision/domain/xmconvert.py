"""xm (xend) configs to xl settings.

xm configs were Python run by xend. We read them with Python's *parser* (``ast``), never
by running them: plain assignments of strings, numbers and lists are converted, and any
other statement or computed value is one clear error naming its line.

What changes (xl.cfg(5), xl-disk-configuration(5)):
- disks: 'phy:hda3,sda1,w' -> 'format=raw, vdev=xvda3, access=rw, target=/dev/hda3'
- xm's hdX/sdX vdevs become xvdX: modern blkfront names hd/sd vdevs xvd(a+4)..., so a
  guest told root=/dev/sda1 would not find it; root= follows the rename.
- nics=N: pad the vif list to N entries.
- ip/netmask/gateway/hostname/dhcp and nfs_server/nfs_root: xl has none of these; xend
  put them on the kernel command line (ip=..., nfsroot=...), so we do the same in extra.
- builder='linux'|'hvm' -> type; restart='always'|'onreboot'|'never' -> on_* actions;
  cpu -> cpus.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from provision import log
from provision.domain import xlcfg
from provision.domain.model import XM_ONLY_KEYS, legacy_target
from provision.errors import ProvisionError

_XM_DISK = re.compile(r"^(phy|file|tap:[a-z0-9]+|tap2:[a-z0-9]+):")
_OLD_VDEV = re.compile(r"^(/dev/)?(hd|sd)([a-z])([0-9]*)$")

_STATEMENT = {
    ast.If: "an if statement", ast.For: "a for loop", ast.While: "a while loop",
    ast.Import: "an import", ast.ImportFrom: "an import", ast.FunctionDef: "a function definition",
    ast.Expr: "an expression statement", ast.AugAssign: "an augmented assignment",
    ast.Try: "a try statement", ast.With: "a with statement", ast.ClassDef: "a class definition",
}


def _literal(node: ast.AST, source: str, key: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return int(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, source, key) for e in node.elts]
    code = ast.unparse(node)
    hint = "xl configs hold plain values; make the file a template with variables instead"
    if re.search(r"\bvmid\b", code):
        hint = ("xl configs hold plain values; write the vmid logic as a template, e.g. "
                "name = \"VM{{ vmid }}\", and run: domain create -f FILE vmid=1")
    raise ProvisionError(
        f"{source}:{node.lineno}: '{key} = {code}' is Python logic, not a value; xl cannot read it",
        hint=hint,
    )


# Python's parser takes no lone surrogates (the bytes of a Latin-1 comment, as read by
# xlcfg.read_text): they pass through it as private-use characters and come back after.
_TO_PRIVATE = {0xDC80 + i: 0xF780 + i for i in range(128)}
_FROM_PRIVATE = {v: k for k, v in _TO_PRIVATE.items()}


def _restored(value):
    if isinstance(value, str):
        return value.translate(_FROM_PRIVATE)
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value


def read_xm(text: str, source: str = "<xm config>") -> dict:
    """The settings of an xm config made of plain assignments (parsed, never run)."""
    try:
        tree = ast.parse(text.translate(_TO_PRIVATE), filename=source)
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte
        line = getattr(e, "lineno", None)
        raise ProvisionError(f"{source}{f':{line}' if line else ''}: not a valid xm (Python) config: "
                             f"{getattr(e, 'msg', e)}") from None
    values: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            key = stmt.targets[0].id
            values[key] = _restored(_literal(stmt.value, source, key))
            continue
        what = _STATEMENT.get(type(stmt), "a statement that is not a plain assignment")
        raise ProvisionError(
            f"{source}:{stmt.lineno}: xm config contains Python logic ({what}); xl configs are plain assignments",
            hint="rewrite it as plain settings, or as a template with variables (name = \"vm{{ vmid }}\") "
                 "and pass them on the command line: domain create -f FILE vmid=1",
        )
    return values


def looks_like_xm(values: dict) -> bool:
    if any(k in XM_ONLY_KEYS for k in values):
        return True
    disks = values.get("disk")
    return isinstance(disks, list) and any(isinstance(d, str) and _XM_DISK.match(d.strip()) for d in disks)


def _rename_vdev(vdev: str, renames: dict[str, str]) -> str:
    m = _OLD_VDEV.match(vdev)
    if not m:
        return vdev
    new = f"{m.group(1) or ''}xvd{m.group(3)}{m.group(4)}"
    renames[vdev] = new
    return new


def _convert_disk(spec: str, renames: dict[str, str], rename: bool) -> str:
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3 or "=" in spec:
        return spec  # already xl syntax; the model reads it
    target, vdev, access = parts
    path, fmt = legacy_target(target)
    if rename:
        vdev = _rename_vdev(vdev, renames)
    access = {"w": "rw", "w!": "rw", "r": "ro"}.get(access, access)
    return f"format={fmt or 'raw'}, vdev={vdev}, access={access}, target={path}"


def convert(values: dict, source: str = "<xm config>") -> tuple[dict, list[str]]:
    """xl settings for xm ``values``, and notes saying what moved where."""
    values = dict(values)
    notes: list[str] = []
    out: dict = {}

    builder = values.pop("builder", None)
    if builder is not None:
        out["type"] = {"linux": "pv", "hvm": "hvm"}.get(builder)
        if out["type"] is None:
            raise ProvisionError(f"{source}: builder '{builder}' is not 'linux' or 'hvm'")
        notes.append(f"builder='{builder}' became type='{out['type']}'")

    for key in ("name", "memory", "maxmem", "vcpus", "kernel", "ramdisk", "bootloader",
                "bootloader_args", "on_poweroff", "on_reboot", "on_crash", "cpus", "uuid"):
        if key in values:
            out[key] = values.pop(key)
    if "cpu" in values:
        out["cpus"] = str(values.pop("cpu"))
        notes.append("cpu became cpus")

    restart = values.pop("restart", None)
    if restart is not None:
        actions = {"always": ("restart", "restart", "restart"),
                   "onreboot": ("destroy", "restart", "destroy"),
                   "never": ("destroy", "destroy", "destroy")}.get(restart)
        if actions is None:
            raise ProvisionError(f"{source}: restart '{restart}' is not always, onreboot or never")
        for key, action in zip(("on_poweroff", "on_reboot", "on_crash"), actions, strict=True):
            out.setdefault(key, action)
        notes.append(f"restart='{restart}' became on_poweroff/on_reboot/on_crash")

    disks = values.pop("disk", [])
    if isinstance(disks, str):
        disks = [disks]
    vdevs = [p.split(",")[1].strip() for p in disks if isinstance(p, str) and len(p.split(",")) == 3]
    disks_named = {(m.group(2), m.group(3)) for v in vdevs if (m := _OLD_VDEV.match(v))}
    # hda and sda both present would both become xvda: keep the names then.
    rename = len({letter for _, letter in disks_named}) == len(disks_named)
    renames: dict[str, str] = {}
    out["disk"] = [_convert_disk(d, renames, rename) for d in disks]
    if renames:
        notes.append("virtual disks renamed for today's blkfront: "
                     + ", ".join(f"{a} -> {b}" for a, b in renames.items()))

    root = values.pop("root", None)
    if root is not None:
        words = str(root).split()
        if words and _OLD_VDEV.match(words[0]) and words[0].startswith("/dev/"):
            dev = words[0][len("/dev/"):]
            if dev in renames:
                words[0] = "/dev/" + renames[dev]
        out["root"] = " ".join(words)

    vifs = values.pop("vif", [])
    if isinstance(vifs, str):
        vifs = [vifs]
    vifs = [", ".join(p.strip() for p in v.split(",") if p.strip()) for v in vifs]
    nics = values.pop("nics", None)
    if nics is not None:
        n = int(nics)
        if n > len(vifs):
            vifs += [""] * (n - len(vifs))
        notes.append(f"nics={n} became {len(vifs)} vif entr{'y' if len(vifs) == 1 else 'ies'}")
    out["vif"] = vifs

    extra = [str(values.pop("extra"))] if "extra" in values else []
    kernel_args = []
    nfs_server = values.pop("nfs_server", None)
    nfs_root = values.pop("nfs_root", None)
    if nfs_root:
        if not nfs_server:
            raise ProvisionError(f"{source}: nfs_root is set but nfs_server is not",
                                 hint="set nfs_server = 'ADDRESS' of the NFS server")
        kernel_args.append(f"nfsroot={nfs_server}:{nfs_root}")
    ip = values.pop("ip", "")
    dhcp = values.pop("dhcp", "off")
    gateway = values.pop("gateway", "")
    netmask = values.pop("netmask", "")
    hostname = values.pop("hostname", "")
    interface = values.pop("interface", "eth0")
    if ip or dhcp not in ("off", "", None):
        # The kernel's ip= syntax, as xend built it: client:server:gw:mask:host:dev:autoconf
        kernel_args.append(f"ip={ip}:{nfs_server or ''}:{gateway}:{netmask}:{hostname}:{interface}:{dhcp or 'off'}")
    if kernel_args:
        notes.append("network/NFS settings moved to the kernel command line: " + " ".join(kernel_args))
    if kernel_args or extra:
        out["extra"] = " ".join(kernel_args + extra)

    for key in list(values):
        if key in ("vbd", "vnet", "vtpm_instance", "use_tmp_kernel", "use_tmp_ramdisk",
                   "console_autoconnect", "bootargs"):
            notes.append(f"'{key}' has no xl equivalent and was dropped")
            values.pop(key)
    out.update(values)  # anything left is checked against xl's keys by the model
    return {k: v for k, v in out.items() if v is not None}, notes


def read_any(path: str | Path, text: str | None = None, strict: bool = True) -> tuple[dict, dict, bool]:
    """(values, line numbers, was_xm) for an xl or xm config file; xm values unconverted.
    ``strict``: a value with bytes that are not UTF-8 is an error (the in-use checks, which
    only compare paths, take them as they are)."""
    path = Path(path)
    if text is None:
        text = xlcfg.read_text(path)
    try:
        cfg = xlcfg.parse(text, str(path))
    except xlcfg.ConfigSyntaxError as xl_error:
        try:
            values = read_xm(text, str(path))
        except ProvisionError as xm_error:
            # Python logic is the more useful message when the file is Python at all.
            if "Python logic" in xm_error.message:
                raise xm_error from None
            raise xl_error from None
        if strict:
            xlcfg.check_text(values, str(path))
        return values, {}, True
    if strict:
        xlcfg.check_text(cfg.values, str(path), cfg.lines)
    if looks_like_xm(cfg.values):
        return cfg.values, {}, True
    return cfg.values, cfg.lines, False


def load_any(path: str | Path, text: str | None = None, notes: bool = True,
             strict: bool = True) -> tuple[dict, dict, bool]:
    """(values, line numbers, was_xm) for an xl or xm config file, xm converted to xl."""
    values, lines, was_xm = read_any(path, text, strict)
    if was_xm:
        return converted(values, str(path), notes), {}, True
    return values, lines, False


def converted(values: dict, source: str, show: bool = True) -> dict:
    """``convert`` with its notes logged."""
    out, notes = convert(values, source)
    if show:
        log.note(f"{source} is an xm config; converted to xl form")
        for n in notes:
            log.note(n)
    return out
