"""buildconfigs/: the shipped files load, and bad ones fail with one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provision.build import config
from provision.errors import ProvisionError

ROOT = Path(__file__).resolve().parents[2]
BUILDCONFIGS = ROOT / "buildconfigs"


@pytest.fixture
def configs(tmp_path) -> Path:
    """A private copy of buildconfigs/ to break."""
    dest = tmp_path / "buildconfigs"
    shutil.copytree(BUILDCONFIGS, dest)
    return dest


def test_shipped_buildconfigs_load():
    world = config.load(BUILDCONFIGS)
    assert [k.name for k in world.kernels] == ["mk.linux-6.1-xen0", "mk.linux-6.1-xenU"]
    xen0, xenu = world.kernels
    assert (xen0.series, xen0.flavour, xen0.base) == ("6.1", "xen0", "tinyconfig")
    assert xenu.flavour == "xenU"
    assert world.xen.source.kind == "debian" and world.xen.source.package == "xen"
    assert world.linux_source.package == "linux"
    assert world.xen.fragment_values["SCHED_CREDIT2"] == "y"
    assert world.xen.fragment_values["DEBUG"] == "n"
    assert world.xen.tools is True
    assert "--disable-stubdom" in world.xen.tools_configure
    # xen0 uses Linux's own xen.config fragments, xenU does not (they carry backends).
    assert [f.tree_path for f in xen0.fragments if f.tree_path] == [
        "kernel/configs/xen.config", "arch/x86/configs/xen.config"]
    assert not [f for f in xenu.fragments if f.tree_path]
    assert xen0.ours()["XEN_DOM0"] == "y" and xen0.ours()["XEN_BLKDEV_BACKEND"] == "y"
    assert "XEN_BLKDEV_BACKEND" in xenu.forbid and "XEN_BLKDEV_FRONTEND" in xenu.require


def test_kernels_override():
    world = config.load(BUILDCONFIGS, kernels="mk.linux-6.1-xenU")
    assert [k.name for k in world.kernels] == ["mk.linux-6.1-xenU"]
    world = config.load(BUILDCONFIGS, kernels="mk.linux-6.1-xenU, mk.linux-6.1-xen0")
    assert [k.flavour for k in world.kernels] == ["xenU", "xen0"]


def test_unknown_kernel_lists_the_existing_ones():
    with pytest.raises(ProvisionError) as e:
        config.load(BUILDCONFIGS, kernels="mk.linux-6.1-xenX")
    msg = e.value.message
    assert "unknown kernel 'mk.linux-6.1-xenX'" in msg
    assert "mk.linux-6.1-xen0" in msg and "mk.linux-6.1-xenU" in msg
    assert "\n" not in msg


def test_fragment_that_does_not_parse(configs):
    frag = configs / "linux-xenU.config"
    frag.write_text(frag.read_text() + "CONFIG_XEN_NETDEV_FRONTEND y\n")
    with pytest.raises(ProvisionError) as e:
        config.load(configs)
    assert "linux-xenU.config:" in e.value.message
    assert "not a Kconfig setting: CONFIG_XEN_NETDEV_FRONTEND y" in e.value.message


def test_xen_fragment_bad_value(configs):
    (configs / "xen.config").write_text("CONFIG_DEBUG=yes please\n")
    with pytest.raises(ProvisionError, match=r"xen.config:1: bad value for CONFIG_DEBUG"):
        config.load(configs)


def test_bad_source_spec(configs):
    world = configs / "world.toml"
    world.write_text(world.read_text().replace(
        'source = { kind = "debian", package = "linux", version = "6.1.176-1" }',
        'source = { kind = "git", url = "https://example.org/linux.git" }'))
    with pytest.raises(ProvisionError) as e:
        config.load(configs)
    assert "[linux] source" in e.value.message and "debian, tarball, local" in e.value.message


def test_tarball_source_needs_a_checksum(configs):
    world = configs / "world.toml"
    text = world.read_text()
    start = text.index('source = { kind = "debian", package = "xen"')
    end = text.index("\n", start)
    world.write_text(text[:start] + 'source = { kind = "tarball", url = "https://example.org/xen-4.19.1.tar.gz" }'
                     + text[end:])
    with pytest.raises(ProvisionError, match="sha256"):
        config.load(configs)


def test_unknown_key_in_world_toml(configs):
    world = configs / "world.toml"
    world.write_text(world.read_text().replace("[linux]", "[linux]\nbranch = \"main\""))
    with pytest.raises(ProvisionError, match=r"unknown key: branch"):
        config.load(configs)


def test_not_toml(configs):
    (configs / "world.toml").write_text("KERNELS = [\n")
    with pytest.raises(ProvisionError, match="not valid TOML"):
        config.load(configs)


def test_recipe_with_missing_fragment(configs):
    recipe = configs / "mk.linux-6.1-xenU"
    recipe.write_text(recipe.read_text().replace('"linux-xenU.config"', '"linux-xenV.config"'))
    with pytest.raises(ProvisionError, match="fragment linux-xenV.config does not exist"):
        config.load(configs)


def test_recipe_with_bad_symbol_name(configs):
    recipe = configs / "mk.linux-6.1-xenU"
    recipe.write_text(recipe.read_text().replace('"XEN_PV",', '"xen pv",'))
    with pytest.raises(ProvisionError, match="not a Kconfig symbol name"):
        config.load(configs)


def test_recipe_base_file(configs, tmp_path):
    full = configs / "full.config"
    full.write_text("CONFIG_64BIT=y\n# CONFIG_MODULES is not set\n")
    recipe = configs / "mk.linux-6.1-xenU"
    recipe.write_text(recipe.read_text().replace('base = "tinyconfig"', 'base = "full.config"'))
    (xenu,) = config.load(configs, kernels="mk.linux-6.1-xenU").kernels
    assert xenu.base == str(full.resolve())
    assert full.resolve() in xenu.files()
    assert xenu.inputs()["base"].startswith("sha256:")


def test_recipe_inputs_change_only_with_the_recipe_fragments(configs):
    before = {k.name: k.inputs() for k in config.load(configs).kernels}
    frag = configs / "linux-xenU.config"
    frag.write_text(frag.read_text() + "CONFIG_XEN_DEV_EVTCHN=y\n")
    after = {k.name: k.inputs() for k in config.load(configs).kernels}
    assert after["mk.linux-6.1-xen0"] == before["mk.linux-6.1-xen0"]
    assert after["mk.linux-6.1-xenU"] != before["mk.linux-6.1-xenU"]


def test_duplicate_flavour_is_refused(configs):
    shutil.copy(configs / "mk.linux-6.1-xenU", configs / "mk.linux-6.2-xenU")
    with pytest.raises(ProvisionError, match="two kernels with the flavour xenU"):
        config.load(configs, kernels="mk.linux-6.1-xenU mk.linux-6.2-xenU")


# -- the hardware dom0 (issue 17): base = "debian", lsmod -------------------------------------

LSMOD = "Module                  Size  Used by\nvirtio_net             61440  0\next4  999424  1\n"


def test_hw_recipe_loads_with_modules_and_the_xen0_fragments():
    (hw,) = config.load(BUILDCONFIGS, kernels="mk.linux-6.1-xen0-hw").kernels
    assert (hw.series, hw.flavour, hw.base) == ("6.1", "xen0-hw", "debian")
    assert "MODULES" in hw.require and "MODULES" not in hw.forbid
    assert [f.label for f in hw.fragments][:4] == [f.label for f in config.load_recipe(
        BUILDCONFIGS, "mk.linux-6.1-xen0").fragments]
    assert hw.ours()["XEN_DOM0"] == "y" and hw.ours()["MODULE_SIG"] == "n"
    assert hw.lsmod is None and "lsmod" not in hw.inputs() and hw.inputs()["base"] == "debian"
    # The default KERNELS stay the tinyconfig ones (the boot test's).
    assert [k.name for k in config.load(BUILDCONFIGS).kernels] == ["mk.linux-6.1-xen0", "mk.linux-6.1-xenU"]


def test_recipe_lsmod_key_is_validated_and_in_the_inputs(configs):
    (configs / "host.lsmod").write_text(LSMOD)
    recipe = configs / "mk.linux-6.1-xen0-hw"
    recipe.write_text(recipe.read_text().replace('# lsmod = "qemu-pc.lsmod"', 'lsmod = "host.lsmod"'))
    (hw,) = config.load(configs, kernels="mk.linux-6.1-xen0-hw").kernels
    assert hw.lsmod == (configs / "host.lsmod").resolve()
    assert hw.lsmod in hw.files()
    before = hw.inputs()
    assert "lsmod" in before
    (configs / "host.lsmod").write_text(LSMOD + "e1000e  290816  0\n")
    (hw,) = config.load(configs, kernels="mk.linux-6.1-xen0-hw").kernels
    assert hw.inputs()["lsmod"] != before["lsmod"] and hw.inputs()["base"] == before["base"]


def test_recipe_lsmod_that_is_not_lsmod_output(configs):
    (configs / "host.lsmod").write_text("CONFIG_E1000E=m\n")
    recipe = configs / "mk.linux-6.1-xen0-hw"
    recipe.write_text(recipe.read_text().replace('# lsmod = "qemu-pc.lsmod"', 'lsmod = "host.lsmod"'))
    with pytest.raises(ProvisionError) as e:
        config.load(configs, kernels="mk.linux-6.1-xen0-hw")
    assert "host.lsmod is not lsmod output" in e.value.message and "\n" not in e.value.message


def test_recipe_lsmod_on_a_tinyconfig_kernel_is_refused(configs):
    (configs / "host.lsmod").write_text(LSMOD)
    recipe = configs / "mk.linux-6.1-xen0"
    recipe.write_text(recipe.read_text() + 'lsmod = "host.lsmod"\n')
    with pytest.raises(ProvisionError, match="built from tinyconfig, which has none"):
        config.load(configs, kernels="mk.linux-6.1-xen0")


def test_command_line_lsmod_applies_to_the_kernels_with_modules(tmp_path):
    host = tmp_path / "host.lsmod"
    host.write_text(LSMOD)
    hw, xenu = config.load(BUILDCONFIGS, kernels="mk.linux-6.1-xen0-hw,mk.linux-6.1-xenU",
                           lsmod_file=host).kernels
    assert hw.lsmod == host and xenu.lsmod is None
    with pytest.raises(ProvisionError) as e:
        config.load(BUILDCONFIGS, lsmod_file=host)
    assert "none of the kernels" in e.value.message and "mk.linux-6.1-xen0-hw" in e.value.hint
    host.write_text("not lsmod\n")
    with pytest.raises(ProvisionError, match="is not lsmod output"):
        config.load(BUILDCONFIGS, kernels="mk.linux-6.1-xen0-hw", lsmod_file=host)


def test_flavours_with_a_dash():
    assert config.RECIPE.match("mk.linux-6.1-xen0-hw")["flavour"] == "xen0-hw"
    assert config.RECIPE.match("mk.linux-6.1-xenU")["flavour"] == "xenU"
    assert not config.RECIPE.match("mk.linux-6.1-xen0-")
