"""provision.guest's public names load on first use, so a command that needs one module
of the package (image resize, image update in a small dom0) does not load them all."""

from __future__ import annotations

import subprocess
import sys

import provision.guest as guest


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_importing_one_module_leaves_the_image_pipeline_unloaded():
    loaded = _loaded_after("import provision.guest.resize, provision.guest.update, provision.guest.cloudinit")
    assert not {"jinja2", "provision.guest.build", "provision.guest.configure",
                "provision.guest.bootstrap"} & loaded


def test_every_public_name_is_there_when_asked_for():
    from provision.guest.bootstrap import resolve
    from provision.guest.configure import GuestSettings
    from provision.guest.target import Target

    assert guest.resolve is resolve and guest.GuestSettings is GuestSettings and guest.Target is Target
    for name in guest.__all__:
        assert getattr(guest, name) is not None
    assert set(guest.__all__) <= set(dir(guest))


def test_an_unknown_name_is_an_attribute_error():
    try:
        guest.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("no AttributeError")
