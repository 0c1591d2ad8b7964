"""``doit grub``: boot entries for what ``doit world`` staged in dist/install/boot.

    doit grub                                   # dist/grub/{42_xen_provision,custom.cfg,menu.lst,xen.cfg}
    doit grub XEN_ARGS="dom0_mem=2G,max:2G com1=115200,8n1 sched=credit" DOM0_ARGS="root=/dev/sda2 ro"
    doit grub dist=DIR                          # the same dist= as doit world (provision/paths.py)

The entries name the staged files as they will be after ``doit install`` (/boot/...);
``sched=`` is checked against the staged xen-<ver>.config. To install them beside the
user's own entries, use ``python -m provision grub install``.
"""

from __future__ import annotations

from pathlib import Path

from doit import get_var
from doit.exceptions import TaskFailed
from doit.tools import config_changed

from provision.errors import ProvisionError
from provision.fsutil import write_if_changed
from provision.grub import cmdline, render
from provision.grub.cli import dom0_kernel, newest
from provision.tasks import variables

DEFAULT_XEN_ARGS = "dom0_mem=1G,max:1G com1=115200,8n1 console=com1,vga"
DEFAULT_DOM0_ARGS = "root=/dev/sda1 ro"
OUTPUTS = ("42_xen_provision", "custom.cfg", "menu.lst", "xen.cfg")
_CODE = [Path(__file__).with_name(n) for n in ("cmdline.py", "render.py", "tasks.py")] + sorted(
    (Path(__file__).parent / "templates").glob("*.j2"))


def render_staged(install: Path, out: Path, xen_args: str, dom0_args: str) -> list[Path]:
    """Render every format for the hypervisor and xen0 kernel staged under ``install``."""
    xen = newest(install, "xen-*.gz")
    kernel = dom0_kernel(install)
    if not xen or not kernel:
        raise ProvisionError(f"{install}/boot has no xen-*.gz or vmlinuz-*-xen0", hint="run doit world first")
    config = cmdline.config_beside(install / xen.lstrip("/"))
    schedulers = cmdline.schedulers_from_config(config) if config.is_file() else None
    xen_opts = cmdline.parse_xen_options(xen_args, schedulers=schedulers)  # checks sched= when it can
    if schedulers is None:
        cmdline.with_sched_checked(xen_opts, config)  # says the check was skipped
    dom0 = cmdline.parse_dom0_options(dom0_args, xen=xen_opts)
    entries = [render.make_entry(xen, kernel, xen_opts, dom0)]
    grub2 = render.render_grub2(entries)
    render.script_check(grub2)
    texts = {
        "42_xen_provision": (render.render_grubd_script(entries), 0o755),
        "custom.cfg": (grub2, 0o644),
        "menu.lst": (render.render_menu_lst(entries), 0o644),
        "xen.cfg": (render.render_xen_cfg(entries), 0o644),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, (text, mode) in texts.items():
        write_if_changed(out / name, text, mode)
    return [out / name for name in OUTPUTS]


def _action(install: Path, out: Path, xen_args: str, dom0_args: str):
    try:
        for path in render_staged(install, out, xen_args, dom0_args):
            print(f"wrote {path}")
    except ProvisionError as e:
        return TaskFailed(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""))
    return None


def task_grub():
    """Render GRUB 2, menu.lst and xen.cfg entries for the staged hypervisor and xen0 kernel."""
    xen_args = get_var("XEN_ARGS", DEFAULT_XEN_ARGS)
    dom0_args = get_var("DOM0_ARGS", DEFAULT_DOM0_ARGS)
    install, out = variables().dist / "install", variables().dist / "grub"
    return {
        "actions": [(_action, [install, out, xen_args, dom0_args])],
        # manifest.json is `doit stage`'s target, so doit builds the world first if needed.
        "file_dep": [str(install / "manifest.json"), *map(str, _CODE)],
        "targets": [str(out / name) for name in OUTPUTS],
        "uptodate": [config_changed({"xen_args": xen_args, "dom0_args": dom0_args})],
        "clean": True,
        "verbosity": 2,
    }
