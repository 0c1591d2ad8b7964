"""The Xen and dom0 command-line model against Xen's documented grammar and the manual's examples."""

from __future__ import annotations

import re

import pytest

from provision.errors import ProvisionError
from provision.grub import cmdline
from provision.grub.cmdline import (
    GiB,
    MiB,
    config_beside,
    parse_com,
    parse_console,
    parse_dom0_mem,
    parse_dom0_options,
    parse_vcpus,
    parse_xen_options,
    schedulers_from_config,
)

# -- the manual's own examples ----------------------------------------------------------

def test_manual_dom0_mem_kib_converted_with_note(capsys):
    opts = parse_xen_options("dom0_mem=131072")
    assert str(opts) == "dom0_mem=128M"
    err = capsys.readouterr().err
    assert "131072" in err and "KiB" in err and "128M" in err


def test_manual_com1_and_console():
    opts = parse_xen_options("dom0_mem=131072 com1=115200,8n1")
    assert opts.com1 == "115200,8n1"
    assert str(opts) == "dom0_mem=128M com1=115200,8n1"
    dom0 = parse_dom0_options("root=/dev/sda4 ro console=tty0", xen=opts)
    assert str(dom0) == "root=/dev/sda4 ro console=tty0"  # the user's console is kept


def test_manual_sched_bvt_names_todays_schedulers():
    with pytest.raises(ProvisionError) as e:
        parse_xen_options("sched=bvt")
    msg = str(e.value)
    assert "sched=bvt" in msg and "Xen 2.0" in msg
    for name in ("credit", "credit2", "rtds", "null", "arinc653"):
        assert name in msg


@pytest.mark.parametrize("old", ["atropos", "rrobin"])
def test_other_xen2_schedulers(old):
    with pytest.raises(ProvisionError, match=f"sched={old} is a Xen 2.0 scheduler"):
        parse_xen_options(f"sched={old}")


# -- dom0_mem ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("512M", "512M"),
    ("1G", "1G"),
    ("1024m", "1G"),
    ("2097152k", "2G"),
    ("512M,max:1G", "512M,max:1G"),
    ("max:1G,min:512M,768M", "768M,min:512M,max:1G"),
    ("-1G", "-1G"),
    ("25%", "25%"),
    ("1G+25%", "1G+25%"),
    ("-10%", "-10%"),
    ("min:-512M", "min:-512M"),
    ("0x80000K", "512M"),
    ("10M+5%", "10M+5%"),
    ("1T", "1T"),
])
def test_dom0_mem_grammar(text, expected):
    assert str(parse_dom0_mem(text)) == expected


@pytest.mark.parametrize("text,needle", [
    ("", "dom0_mem"),
    ("12X", "is not valid"),
    ("1G,1G", "given twice"),
    ("foo:1G", "min:<size> or max:<size>"),
    ("100%", "below 100"),
    ("min:2G,max:1G", "min:2G is above max:1G"),
    ("2G,max:1G", "above max:1G"),
    ("512", "too small"),          # 512 KiB: the unit was forgotten
    ("1G+", "is not valid"),
    ("1G,", "an item is empty"),     # not "given twice": the trailing comma is the mistake
    (",max:1G", "an item is empty"),
    # Xen reads numbers with strtoul(base 0): 0512M would be 330M, 025% would be 21%.
    ("0512M", "'0512' starts with 0, which Xen reads as octal; write 512"),
    ("1G,max:02G", "'02' starts with 0"),
    ("1G+025%", "'025' starts with 0"),
    ("-010%", "'010' starts with 0"),
])
def test_dom0_mem_rejected(text, needle):
    with pytest.raises(ProvisionError) as e:
        parse_dom0_mem(text)
    assert needle in str(e.value)
    assert "dom0_mem" in str(e.value)


def test_dom0_mem_above_machine_memory():
    assert parse_dom0_mem("1G", machine_memory=4 * GiB).amount.size == GiB
    with pytest.raises(ProvisionError, match=r"more than the machine's memory \(4G\)"):
        parse_dom0_mem("8G", machine_memory=4 * GiB)
    with pytest.raises(ProvisionError, match="max"):
        parse_dom0_mem("1G,max:6G", machine_memory=4 * GiB)


def test_dom0_mem_model_values():
    mem = parse_dom0_mem("1G+25%,min:512M")
    assert mem.amount.size == GiB and mem.amount.percent == 25 and mem.amount.absolute is None
    assert mem.min.absolute == 512 * MiB


# -- serial ports and consoles ------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "115200,8n1", "auto", "9600", "115200/1843200,8n1", "115200,8n1,0x3f8,4",
    "115200,8n1,pci", "115200,8e2,amt,msi", "115200,8n1,0x3f8,0,00:16.3",
    "115200,,0x2f8", "115200,8n1,0x3f8,4,reg-width=4,reg-shift=2",
    "baud=115200,parity=n,stop-bits=1,io-base=0x3f8,reg-width=4",
])
def test_com_accepted(text):
    assert parse_com("com1", text) == text


@pytest.mark.parametrize("text,needle", [
    ("115201,8n1", "baud '115201'"),
    ("fast", "baud 'fast'"),
    ("115200,9n1", "DPS"),
    ("115200,8x1", "DPS"),
    ("115200,8n3", "DPS"),
    ("115200,8n1,nowhere", "io-base"),
    ("115200,8n1,0x3f8,irq5", "irq"),
    ("115200,8n1,0x3f8,4,zz,1,2", "too many fields"),
    ("115200,speed=1", "'speed' is not a serial setting"),
    ("", "com1="),
])
def test_com_rejected(text, needle):
    with pytest.raises(ProvisionError) as e:
        parse_com("com1", text)
    assert needle in str(e.value) and "com1=" in str(e.value)


def test_console():
    assert parse_console("com1,vga") == ("com1", "vga")
    assert parse_console("com1H,com2L") == ("com1H", "com2L")
    assert parse_console("none") == ("none",)
    for bad, needle in (("tty0", "'tty0' is not a console device"), ("none,vga", "none must be the only"),
                        ("com3", "'com3'"), ("com1,com1", "twice"), ("", "console=")):
        with pytest.raises(ProvisionError, match=needle):
            parse_console(bad)


# -- the rest of the model ------------------------------------------------------------------------

def test_full_line_renders_in_a_fixed_order():
    opts = parse_xen_options(
        "noreboot loglvl=all/warning sched=credit2 console=com1,vga com1=115200,8n1 "
        "dom0_max_vcpus=1-4 dom0_mem=1G,max:1G iommu=verbose sync_console=off"
    )
    assert str(opts) == (
        "dom0_mem=1G,max:1G dom0_max_vcpus=1-4 com1=115200,8n1 console=com1,vga sched=credit2 "
        "loglvl=all/warning sync_console=false noreboot iommu=verbose"
    )
    assert parse_xen_options(str(opts)) == opts  # rendering is a fixed point


@pytest.mark.parametrize("text,needle", [
    ("dom0_max_vcpus=0", "start at 1"),
    ("dom0_max_vcpus=4-2", "above max"),
    ("dom0_max_vcpus=two", "dom0_max_vcpus=two"),
    ("dom0_max_vcpus=1-010", "'010' starts with 0, which Xen reads as octal"),
    ("loglvl=loud", "levels: none"),
    ("guest_loglvl=info/", "guest_loglvl"),
    ("noreboot=maybe", "a boolean"),
    ("sched=fifo", "use one of credit"),
    ("com1=115200 com1=9600", "given twice"),
    ("foo;reboot", "not a Xen option"),
])
def test_bad_options(text, needle):
    with pytest.raises(ProvisionError, match=needle):
        parse_xen_options(text)


def test_booleans():
    assert parse_xen_options("noreboot").noreboot is True
    assert parse_xen_options("noreboot=0").noreboot is False
    assert parse_xen_options("no-sync_console").sync_console is False
    assert str(parse_xen_options("sync_console=yes")) == "sync_console"


def test_unknown_option_passes_through_with_warning(capsys):
    opts = parse_xen_options("dom0_mem=1G ucode=scan made_up_option=3 no-x2apic")
    assert opts.extra == ("ucode=scan", "made_up_option=3", "no-x2apic")
    err = capsys.readouterr().err
    assert "made_up_option" in err
    assert "ucode" not in err and "x2apic" not in err


# -- schedulers against the build ------------------------------------------------------------------

def test_schedulers_from_staged_config(tmp_path):
    cfg = tmp_path / "xen-4.17.config"
    cfg.write_text("CONFIG_SCHED_CREDIT=y\nCONFIG_SCHED_CREDIT2=y\n# CONFIG_SCHED_RTDS is not set\n"
                   'CONFIG_SCHED_DEFAULT="credit2"\nCONFIG_SCHED_NULL=n\n')
    found = schedulers_from_config(cfg)
    assert found == frozenset({"credit", "credit2"})
    assert parse_xen_options("sched=credit", schedulers=found).sched == "credit"
    with pytest.raises(ProvisionError) as e:
        parse_xen_options("sched=rtds", schedulers=found)
    assert "sched=rtds is not built into this hypervisor (it has: credit, credit2)" == str(e.value)
    assert "CONFIG_SCHED_RTDS=y" in e.value.hint


def test_config_beside_follows_xen_install_names(tmp_path):
    (tmp_path / "xen-4.17.3.gz").write_bytes(b"")
    (tmp_path / "xen.gz").symlink_to("xen-4.17.3.gz")
    assert config_beside(tmp_path / "xen-4.17.3.gz") == tmp_path / "xen-4.17.3.config"
    assert config_beside(tmp_path / "xen.gz") == tmp_path / "xen-4.17.3.config"
    assert config_beside("/boot/xen-4.17-amd64.efi").name == "xen-4.17-amd64.config"


def test_sched_check_skipped_without_config(tmp_path, capsys):
    opts = parse_xen_options("sched=credit")
    cmdline.with_sched_checked(opts, tmp_path / "missing.config")
    assert "scheduler check skipped" in capsys.readouterr().err


# -- dom0 -----------------------------------------------------------------------------------------

def test_dom0_serial_console_defaults_to_hvc0():
    xen = parse_xen_options("com1=115200,8n1 console=com1")
    dom0 = parse_dom0_options("", root="/dev/xvda1", xen=xen)
    assert str(dom0) == "root=/dev/xvda1 ro console=hvc0"
    assert dom0.serial_device == "hvc0"
    vga_only = parse_xen_options("console=vga")
    assert parse_dom0_options("root=/dev/sda1", xen=vga_only).console == ()


def test_dom0_ttyS0_under_serial_xen_warns(capsys):
    xen = parse_xen_options("com1=115200,8n1")
    dom0 = parse_dom0_options("root=/dev/sda1 console=ttyS0", xen=xen)
    assert dom0.console == ("ttyS0",)
    assert "hvc0" in capsys.readouterr().err


def test_dom0_options():
    dom0 = parse_dom0_options("root=UUID=0a1b rw quiet console=tty0 console=hvc0", readonly=False)
    assert str(dom0) == "root=UUID=0a1b rw console=tty0 console=hvc0 quiet"
    assert str(parse_dom0_options("root=UUID=0a1b quiet", readonly=False)) == "root=UUID=0a1b rw quiet"
    assert dom0.serial_device == "hvc0"
    with pytest.raises(ProvisionError, match="root=sda4 is not valid"):
        parse_dom0_options("root=sda4")
    with pytest.raises(ProvisionError, match="shell characters"):
        parse_dom0_options("init=/bin/sh;reboot")


def test_dom0_root_given_twice_is_an_error_not_dropped():
    """--dom0-args 'root=/dev/sda1' with --root-device /dev/sda4 silently booted sda4."""
    with pytest.raises(ProvisionError) as e:
        parse_dom0_options("root=/dev/sda1 quiet", root="/dev/sda4")
    assert e.value.message == "dom0's root is given twice: root=/dev/sda1 in --dom0-args, /dev/sda4 as --root-device"
    with pytest.raises(ProvisionError, match="dom0's root is 'ro' in --dom0-args but rw by option"):
        parse_dom0_options("root=/dev/sda4 ro", readonly=False)
    assert str(parse_dom0_options("root=/dev/sda4 quiet", root="/dev/sda4")) == "root=/dev/sda4 ro quiet"


@pytest.mark.parametrize("value, expected", [
    ("99999999999T", "too large: Xen gives a domain, dom0 too, less than 16T"),
    ("9" * 400, "too large"),
    ("16T", "too large"),
    ("1G,max:99999999999T", "max is too large"),
    ("\u00b2G", "use <size>"),
])
def test_dom0_mem_bounded_by_what_xen_gives_a_domain(value, expected):
    with pytest.raises(ProvisionError, match=re.escape(expected)):
        parse_dom0_mem(value)
    assert str(parse_dom0_mem("15T")) == "15T"


def test_dom0_max_vcpus_bounded():
    with pytest.raises(ProvisionError, match="at most 8192 vCPUs"):
        parse_vcpus("99999")
    with pytest.raises(ProvisionError, match="at most 8192 vCPUs"):
        parse_vcpus("1-" + "9" * 400)
    assert parse_vcpus("8192") == "8192"
