"""distcc host lists, slots, the build environment and the compiler check (no daemons)."""

from __future__ import annotations

import pytest

from provision.build import builddir, config, distcc
from provision.build.distcc import Host, Plan, parse, parse_host
from provision.errors import ProvisionError


@pytest.mark.parametrize("spec, host, port, slots, options", [
    ("build1", "build1", None, 4, ()),
    ("build1/8", "build1", None, 8, ()),
    ("build1.example.org:3633/4,lzo", "build1.example.org", 3633, 4, ("lzo",)),
    ("10.0.0.7:4000", "10.0.0.7", 4000, 4, ()),
    ("localhost", "localhost", None, 2, ()),
    ("localhost/1", "localhost", None, 1, ()),
])
def test_host_specs_parse(spec, host, port, slots, options):
    h = parse_host(spec)
    assert (h.spec, h.host, h.port, h.slots, h.options) == (spec, host, port, slots, options)


@pytest.mark.parametrize("spec, why", [
    ("build1/x", "does not parse"),
    ("build1/", "does not parse"),
    ("build1:/4", "does not parse"),
    ("build1:99999/4", "port 99999 is out of range"),
    ("build1/0", "slots must be 1 to 1024"),
    ("build1/4,cpp", "pump mode"),
    ("build1/4,lzo,cpp", "pump mode"),
    ("build1/4,fast", "unknown option 'fast'"),
    ("user@build1/4", "ssh hosts are not supported"),
    ("--randomize", "global options"),
    ("localhost:3632", "takes no port"),
    ("-bad-/2", "not a host name"),
    ("300.1.2.3", "not a host name"),
    ("bu ild", "not a host name"),
])
def test_bad_host_specs_are_one_line(spec, why):
    with pytest.raises(ProvisionError) as e:
        parse_host(spec)
    assert why in e.value.message and "\n" not in e.value.message
    assert e.value.hint


def test_lists_from_a_string_or_a_list():
    assert parse("a/2  b:3633/3,lzo\tlocalhost/1") == parse(["a/2", "b:3633/3,lzo", "localhost/1"])
    assert parse(None) == () and parse("") == () and parse([]) == ()
    with pytest.raises(ProvisionError, match="listed twice"):
        parse("a/2 a/4")


def test_slots_size_make_j():
    assert distcc.slots(parse("a/8 b:3633/4,lzo localhost/2")) == 14
    assert distcc.slots(parse("a b")) == 8  # distcc's default: 4 per TCP host
    assert Plan(parse("a/3 b/5")).jobs == 8


def test_env_with_ccache_prefixes_and_without_names_cc():
    plan = Plan(parse("a/3 b:3633/5,lzo"))
    env = plan.env(ccache=True)
    assert env["DISTCC_HOSTS"] == "a/3 b:3633/5,lzo"
    assert env["DISTCC_FALLBACK"] == "1" and "DISTCC_SKIP_LOCAL_RETRY" not in env
    assert env["CCACHE_PREFIX"] == "distcc"
    assert plan.make_args(ccache=True) == []
    env = plan.env(ccache=False)
    assert "CCACHE_PREFIX" not in env and "DISTCC_HOSTS" in env
    assert plan.make_args(ccache=False) == ["CC=distcc gcc"]
    # never distcc's masquerade directory, never pump
    assert all("/usr/lib/distcc" not in v and "pump" not in v for v in env.values())


def test_make_gets_the_plan(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(builddir, "run", lambda argv, quiet, env: calls.append((argv, env)))
    monkeypatch.setattr(builddir, "ccache_enabled", lambda: False)
    builddir.make("O=/o", directory=tmp_path, distcc=Plan(parse("a/3 b/4")))
    argv, env = calls[0]
    assert argv[:5] == ["nice", "make", "-C", tmp_path, "-j7"] and "CC=distcc gcc" in argv
    assert env["DISTCC_HOSTS"] == "a/3 b/4"
    builddir.make("O=/o", directory=tmp_path, parallel=3, distcc=Plan(parse("a/3 b/4")))
    assert calls[1][0][4] == "-j3"  # jobs= wins
    builddir.make("O=/o", directory=tmp_path, parallel=2)
    assert "DISTCC_HOSTS" not in calls[2][1] and not any("distcc" in str(a) for a in calls[2][0])


def test_version_mismatch_is_one_line_naming_both():
    distcc.compare_versions("b/4", "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0", "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0")
    with pytest.raises(ProvisionError) as e:
        distcc.compare_versions("b/4", "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0", "GCC: (Debian 12.2.0-14) 12.2.0")
    msg = e.value.message
    assert "\n" not in msg and "b/4" in msg
    assert "GCC: (Debian 12.2.0-14) 12.2.0" in msg and "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0" in msg


def test_compiler_id_from_an_object():
    obj = b"\x7fELF....\x00GCC: (Debian 12.2.0-14+deb12u1) 12.2.0\x00.symtab\x00"
    assert distcc.compiler_id(obj) == "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0"
    assert distcc.compiler_id(b"\x7fELF no comment") is None


def test_gcc_plugins_are_refused():
    distcc.check_kernel("mk.linux-6.1-xenU", {"GCC_PLUGINS": "n"})
    distcc.check_kernel("mk.linux-6.1-xenU", {})
    with pytest.raises(ProvisionError, match="CONFIG_GCC_PLUGINS=y cannot be built through distcc"):
        distcc.check_kernel("mk.linux-6.1-xenU", {"GCC_PLUGINS": "y"})
    with pytest.raises(ProvisionError, match="CONFIG_DEBUG_INFO=y is not built through distcc"):
        distcc.check_kernel("mk.linux-6.1-xenU", {"DEBUG_INFO": "y"})


def test_no_usable_host_means_a_local_build(monkeypatch, capsys):
    monkeypatch.setattr(distcc, "_distcc", lambda: "/usr/bin/distcc")
    monkeypatch.setattr(distcc, "local_compiler", lambda: "GCC: x")
    alive = {"a"}
    monkeypatch.setattr(distcc, "probe", lambda h: distcc.Status(h, h.host in alive, "GCC: x" if h.host in alive
                                                                 else None, "" if h.host in alive else "refused"))
    distcc.prepare.cache_clear()
    assert distcc.prepare(parse("a/2 b/4")) == Plan((Host("a/2", "a", None, 2),))
    assert "distcc host b/4 is not usable (refused)" in capsys.readouterr().err
    assert distcc.prepare(parse("b/4 c/4")) is None
    assert "no distcc host is usable: compiling locally" in capsys.readouterr().err
    assert distcc.prepare(()) is None
    distcc.prepare.cache_clear()


def _world(tmp_path, text):
    root = tmp_path / "bc"
    root.mkdir()
    (root / "xen.config").write_text("CONFIG_SCHED_CREDIT2=y\n")
    local = 'source = { kind = "local", path = "/nonexistent" }\n'
    (root / "world.toml").write_text(f"KERNELS = []\n{text}\n[xen]\n{local}\n[linux]\n{local}")
    return root


def test_world_toml_build_distcc(tmp_path):
    root = _world(tmp_path, '[build]\ndistcc = ["a/2", "b:3633/4,lzo"]')
    w = config.load(root)
    assert [h.spec for h in w.distcc] == ["a/2", "b:3633/4,lzo"]
    assert config.load(root, distcc="c/8").distcc == parse("c/8")  # distcc= overrides
    assert config.load(root, distcc="").distcc == ()                # distcc= switches it off


@pytest.mark.parametrize("text, why", [
    ('[build]\ndistcc = ["a/x"]', "does not parse"),
    ('[build]\ndistcc = "a/2"', "must be a list of strings"),
    ('[build]\ndistcc = ["a/2"]\npump = true', "unknown key: pump"),
])
def test_world_toml_bad_distcc(tmp_path, text, why):
    with pytest.raises(ProvisionError, match=why):
        config.load(_world(tmp_path, text))
