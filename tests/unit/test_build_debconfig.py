"""base = "debian" (issue 17): Debian's config is the merge debian/rules.gen names."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.build import debconfig
from provision.errors import ProvisionError

RULES_GEN = """\
debian/build/config.amd64_none_cloud-amd64:
\t$(MAKE) -f debian/rules.real debian/build/config.amd64_none_cloud-amd64 ABINAME='6.1.0-50' ARCH='amd64' \
KCONFIG='debian/config/config debian/config/config.cloud' KCONFIG_OPTIONS='' VERSION='6.1'
debian/build/config.amd64_none_amd64:
\t$(MAKE) -f debian/rules.real debian/build/config.amd64_none_amd64 ABINAME='6.1.0-50' ARCH='amd64' \
COMPILER='gcc-12' FEATURESET='none' FLAVOUR='amd64' \
KCONFIG='debian/config/config debian/config/kernelarch-x86/config debian/config/amd64/config' \
KCONFIG_OPTIONS=' -o "BUILD_SALT=\\"6.1.0-50-amd64\\""' KERNEL_ARCH='x86' LOCALVERSION='-amd64' VERSION='6.1'
"""


@pytest.fixture
def tree(tmp_path) -> Path:
    """A Linux tree with a small debian/: three config levels, later ones winning."""
    cfg = tmp_path / "debian/config"
    (cfg / "kernelarch-x86").mkdir(parents=True)
    (cfg / "amd64").mkdir()
    (tmp_path / "debian/rules.gen").write_text(RULES_GEN)
    (cfg / "config").write_text("##\n## file: init/Kconfig\n##\nCONFIG_MODULES=y\nCONFIG_EXT4_FS=m\n"
                                "CONFIG_XEN=y\n# CONFIG_SLOB is not set\nCONFIG_BUILD_SALT=\"\"\n")
    (cfg / "kernelarch-x86/config").write_text("# CONFIG_XEN is not set\nCONFIG_ACPI=y\n")
    (cfg / "amd64/config").write_text("CONFIG_XEN=y\nCONFIG_EXT4_FS=y\n")
    (cfg / "config.cloud").write_text("CONFIG_CLOUD_ONLY=y\n")
    return tmp_path


def test_the_amd64_rule_gives_the_files_and_options(tree):
    v = debconfig.setup_variables(tree)
    assert v["KCONFIG"].split() == ["debian/config/config", "debian/config/kernelarch-x86/config",
                                    "debian/config/amd64/config"]
    assert debconfig.overrides(v["KCONFIG_OPTIONS"]) == {"BUILD_SALT": '"6.1.0-50-amd64"'}
    assert debconfig.abiname(tree) == "6.1.0-50"


def test_config_merges_in_order_later_files_and_options_winning(tree):
    assert debconfig.config(tree) == {
        "MODULES": "y", "EXT4_FS": "y", "XEN": "y", "SLOB": "n", "BUILD_SALT": '"6.1.0-50-amd64"',
        "ACPI": "y"}


def test_no_debian_directory_is_one_line(tmp_path):
    with pytest.raises(ProvisionError) as e:
        debconfig.config(tmp_path)
    assert "debian/rules.gen does not exist" in e.value.message and "\n" not in e.value.message
    assert "Debian's linux source package" in e.value.hint


def test_no_amd64_rule(tree):
    (tree / "debian/rules.gen").write_text(RULES_GEN.split("debian/build/config.amd64_none_amd64:")[0])
    with pytest.raises(ProvisionError, match="has no rule for debian/build/config.amd64_none_amd64"):
        debconfig.config(tree)


def test_a_bad_line_in_debians_files_names_it(tree):
    (tree / "debian/config/amd64/config").write_text("CONFIG_XEN=y\nXEN y\n")
    with pytest.raises(ProvisionError, match=r"debian/config/amd64/config:2: not a Kconfig setting"):
        debconfig.config(tree)


def test_bad_kconfig_options(tree):
    with pytest.raises(ProvisionError, match="cannot read KCONFIG_OPTIONS"):
        debconfig.overrides("-x FOO=y")
