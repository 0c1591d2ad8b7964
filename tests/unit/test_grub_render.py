"""Each renderer: GRUB 2 (checked by GRUB's own grub-script-check), grub.d script, menu.lst, xen.cfg."""

from __future__ import annotations

import subprocess

import pytest

from provision.errors import ProvisionError
from provision.grub.cmdline import parse_dom0_options, parse_xen_options
from provision.grub.render import (
    grub_quote,
    make_entry,
    render_grub2,
    render_grubd_script,
    render_menu_lst,
    render_xen_cfg,
    script_check,
)

XEN = "dom0_mem=131072 com1=115200,8n1 sched=credit"


def entry(**kw):
    xen = parse_xen_options(kw.pop("xen_args", XEN))
    dom0 = parse_dom0_options(kw.pop("dom0_args", "root=/dev/sda4 ro"), xen=xen)
    return make_entry(kw.pop("xen", "/boot/xen-4.17.gz"), kw.pop("kernel", "/boot/vmlinuz-6.1-xen0"),
                      xen, dom0, **kw)


def check(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["grub-script-check"], input=text, text=True, capture_output=True)


def test_grub2_entry():
    e = entry(initrd="/boot/initrd.img-6.1-xen0")
    text = render_grub2([e])
    assert "menuentry 'Xen 4.17 / Linux 6.1-xen0' --class xen --class gnu-linux --class os --id xen-provision-4.17-6.1-xen0 {" in text
    assert "\tsearch --no-floppy --file --set=root /boot/xen-4.17.gz\n" in text
    assert "\tmultiboot2 /boot/xen-4.17.gz dom0_mem=128M com1=115200,8n1 sched=credit\n" in text
    assert "\tmodule2 /boot/vmlinuz-6.1-xen0 root=/dev/sda4 ro console=hvc0\n" in text
    assert "\tmodule2 --nounzip /boot/initrd.img-6.1-xen0\n" in text
    assert check(text).returncode == 0
    assert render_grub2([e]) == text  # deterministic


def test_grub2_multiboot_fallback_and_default():
    e = entry()
    text = render_grub2([e], loader="multiboot", default=e.id)
    assert "\tmultiboot /boot/xen-4.17.gz dom0_mem=128M" in text
    assert "\tmodule /boot/vmlinuz-6.1-xen0 root=" in text
    assert "module2" not in text and "--nounzip" not in text
    assert text.rstrip().endswith(f"set default={e.id}")
    assert check(text).returncode == 0


def test_grub2_quotes_what_grub_would_parse():
    e = entry(title="Bob's Xen {test}", xen_args="dom0_mem=1G ivmd=d5d45=0:1d.0;0xd5d46=0:1a.0")
    text = render_grub2([e])
    assert "menuentry 'Bob'\\''s Xen {test}'" in text
    assert "'ivmd=d5d45=0:1d.0;0xd5d46=0:1a.0'" in text
    assert check(text).returncode == 0
    script_check(text)  # ours agrees


def test_script_check_rejects_broken_config():
    assert grub_quote("a b") == "'a b'"
    with pytest.raises(ProvisionError, match="grub-script-check rejects"):
        script_check("menuentry 'x' {\n")


def test_grubd_script_prints_exactly_the_entries(tmp_path):
    e = entry()
    script = tmp_path / "42_xen_provision"
    script.write_text(render_grubd_script([e]))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout
    assert out == render_grub2([e])
    assert check(out).returncode == 0


def test_menu_lst_in_the_manuals_form():
    a = entry(xen="/boot/xen-2.0.gz", kernel="/boot/vmlinuz-2.6-xen0",
              xen_args="dom0_mem=131072", dom0_args="root=/dev/sda4 ro console=tty0",
              title="Xen 2.0 / XenLinux 2.6")
    b = entry(initrd="/boot/my_initrd.gz", title="Xen serial")
    assert render_menu_lst([a, b]) == (
        "title Xen 2.0 / XenLinux 2.6\n"
        "\tkernel /boot/xen-2.0.gz dom0_mem=128M\n"
        "\tmodule /boot/vmlinuz-2.6-xen0 root=/dev/sda4 ro console=tty0\n"
        "\n"
        "title Xen serial\n"
        "\tkernel /boot/xen-4.17.gz dom0_mem=128M com1=115200,8n1 sched=credit\n"
        "\tmodule /boot/vmlinuz-6.1-xen0 root=/dev/sda4 ro console=hvc0\n"
        "\tmodule /boot/my_initrd.gz\n"
    )


def test_xen_cfg():
    a = entry(initrd="/boot/initrd.img-6.1-xen0")
    b = entry(id="rescue", dom0_args="root=/dev/sda4 single")
    text = render_xen_cfg([a, b])
    assert text.startswith("# xen.efi configuration")
    assert f"[global]\ndefault={a.id}\n" in text
    assert (f"[{a.id}]\noptions=dom0_mem=128M com1=115200,8n1 sched=credit\n"
            "kernel=vmlinuz-6.1-xen0 root=/dev/sda4 ro console=hvc0\n"
            "ramdisk=initrd.img-6.1-xen0\n") in text
    assert "[rescue]\noptions=" in text and "kernel=vmlinuz-6.1-xen0 root=/dev/sda4 ro console=hvc0 single\n" in text
    assert render_xen_cfg([a, b], default="rescue").count("default=rescue") == 1
