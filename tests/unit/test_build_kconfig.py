"""Kconfig fragments, merging and the required-option check, on real config text."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.build import kconfig
from provision.errors import ProvisionError

FINAL = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_64BIT=y
CONFIG_XEN=y
CONFIG_XEN_PV=y
# CONFIG_XEN_DOM0 is not set
CONFIG_XEN_BLKDEV_FRONTEND=y
CONFIG_LOCALVERSION="-xenU"
CONFIG_NR_CPUS=64
CONFIG_PHYSICAL_START=0x1000000
# CONFIG_PCI is not set
"""


def test_parse_values():
    values = kconfig.parse(FINAL)
    assert values["XEN"] == "y"
    assert values["XEN_DOM0"] == "n"
    assert values["LOCALVERSION"] == '"-xenU"'
    assert values["NR_CPUS"] == "64"
    assert values["PHYSICAL_START"] == "0x1000000"


def test_render_round_trip():
    values = kconfig.parse(FINAL)
    assert kconfig.parse(kconfig.render(values)) == values


def test_parse_rejects_garbage_with_line_number():
    with pytest.raises(ProvisionError, match=r"frag:2: not a Kconfig setting: XEN=y"):
        kconfig.parse("CONFIG_XEN=y\nXEN=y\n", "frag")
    with pytest.raises(ProvisionError, match=r"frag:1: bad value for CONFIG_NAME"):
        kconfig.parse('CONFIG_NAME="unterminated\n', "frag")


def test_merge_later_fragments_win():
    base = {"A": "y", "B": "n", "C": "m"}
    merged = kconfig.merge(base, {"B": "y"}, {"C": "n", "D": "y"})
    assert merged == {"A": "y", "B": "y", "C": "n", "D": "y"}
    assert base == {"A": "y", "B": "n", "C": "m"}


def test_check_finds_dropped_required_and_forbidden():
    final = kconfig.parse(FINAL)
    wanted = {"XEN_PV": "y", "XEN_DOM0": "y", "PCI": "n", "XEN_BLKDEV_FRONTEND": "m"}
    problems = kconfig.check(final, wanted, require=("XEN_NETDEV_FRONTEND",), forbid=("XEN",))
    assert [str(p) for p in problems] == [
        "CONFIG_XEN_DOM0=y (got n)",
        "CONFIG_XEN_NETDEV_FRONTEND=y (got n)",
        "CONFIG_XEN=n (got y)",
    ]


def test_check_passes_when_kept():
    final = kconfig.parse(FINAL)
    assert kconfig.check(final, {"XEN": "y", "PCI": "n", "XEN_DOM0": "n"}, require=("XEN_PV",),
                         forbid=("XEN_DOM0",)) == []


@pytest.fixture
def tree(tmp_path) -> Path:
    """A miniature Kconfig tree, in the language Linux and Xen use."""
    (tmp_path / "drivers/xen").mkdir(parents=True)
    (tmp_path / "Kconfig").write_text('source "drivers/xen/Kconfig"\n\nconfig PCI\n\tbool "PCI support"\n')
    (tmp_path / "drivers/xen/Kconfig").write_text(
        "menu \"Xen driver support\"\n"
        "\tdepends on XEN\n\n"
        "config XEN_DOM0\n"
        "\tdef_bool y\n"
        "\tdepends on XEN_PV && PCI_XEN && SWIOTLB_XEN\n"
        "\tdepends on X86_IO_APIC && ACPI && PCI\n\n"
        "config XEN_BACKEND\n"
        "\tbool \"Backend driver support\" if EXPERT\n"
        "\tdefault XEN_DOM0\n\n"
        "endmenu\n"
    )
    return tmp_path


def test_dependencies_from_the_tree(tree):
    # The menu's own "depends on" comes first, then the symbol's.
    assert kconfig.dependencies(tree, "XEN_DOM0") == [
        "XEN", "XEN_PV && PCI_XEN && SWIOTLB_XEN", "X86_IO_APIC && ACPI && PCI"]
    assert kconfig.dependencies(tree, "XEN_BACKEND") == ["XEN", "EXPERT"]
    assert kconfig.dependencies(tree, "PCI") == []


def test_explain_names_the_missing_dependency(tree):
    final = {"XEN": "y", "XEN_PV": "y", "PCI_XEN": "y", "SWIOTLB_XEN": "y", "X86_IO_APIC": "y",
             "ACPI": "y", "PCI": "n"}
    lines = kconfig.explain(tree, [kconfig.Dropped("XEN_DOM0", "y", "n")], final)
    assert lines == ["CONFIG_XEN_DOM0=y (got n): depends on XEN && (XEN_PV && PCI_XEN && SWIOTLB_XEN) && "
                     "(X86_IO_APIC && ACPI && PCI); not met: PCI"]


def test_hidden_menu_and_choice(tmp_path):
    """Xen's scheduler menu: visible only with EXPERT; the default is a choice inside it."""
    (tmp_path / "Kconfig").write_text(
        'menu "Schedulers"\n\tvisible if EXPERT\n\n'
        'config SCHED_RTDS\n\tbool "RTDS scheduler support (UNSUPPORTED)" if UNSUPPORTED\n\tdefault DEBUG\n\n'
        'choice\n\tprompt "Default Scheduler?"\n\tdefault SCHED_CREDIT2_DEFAULT\n\n'
        '\tconfig SCHED_CREDIT2_DEFAULT\n\t\tbool "Credit2 Scheduler" if SCHED_CREDIT2\n'
        'endchoice\n\nendmenu\n\nconfig OTHER\n\tbool "other"\n'
    )
    assert kconfig.dependencies(tmp_path, "SCHED_RTDS") == ["EXPERT", "UNSUPPORTED"]
    assert kconfig.dependencies(tmp_path, "SCHED_CREDIT2_DEFAULT") == ["EXPERT", "SCHED_CREDIT2"]
    assert kconfig.dependencies(tmp_path, "OTHER") == []
    lines = kconfig.explain(tmp_path, [kconfig.Dropped("SCHED_RTDS", "y", "n")], {"EXPERT": "y"})
    assert lines == ["CONFIG_SCHED_RTDS=y (got n): depends on EXPERT && UNSUPPORTED; not met: UNSUPPORTED"]


def test_explain_unknown_symbol(tree):
    lines = kconfig.explain(tree, [kconfig.Dropped("XEN_BLKDEV_BACKNED", "y", "n")], {})
    assert lines == ["CONFIG_XEN_BLKDEV_BACKNED=y (got n): no such option in this source tree"]


def test_explain_forbidden(tree):
    lines = kconfig.explain(tree, [kconfig.Dropped("XEN_BACKEND", "n", "y")], {})
    assert "must not be set but is y" in lines[0]
