"""MUJOCO_GL is set to a backend the machine has, so importing dm_control never crashes on it."""

import pytest

import dynalab


@pytest.mark.parametrize("libraries, expected", [
    ({"EGL": "libEGL.so.1", "OSMesa": "libOSMesa.so.8"}, "egl"),
    ({"OSMesa": "libOSMesa.so.8"}, "osmesa"),
    ({}, "disable"),  # e.g. a GPU image without libEGL: dm_control's EGL import would raise there
])
def test_the_first_backend_whose_library_exists(monkeypatch, libraries, expected):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(dynalab._ctypes_util, "find_library", libraries.get)
    assert dynalab.choose_mujoco_gl() == expected
    import os
    assert os.environ["MUJOCO_GL"] == expected


@pytest.mark.parametrize("choice, libraries", [
    ("osmesa", {"EGL": "libEGL.so.1", "OSMesa": "libOSMesa.so.8"}),
    ("glfw", {}),  # not a library dynalab checks: the user's display setup decides
])
def test_the_users_choice_is_kept(monkeypatch, capsys, choice, libraries):
    monkeypatch.setenv("MUJOCO_GL", choice)
    monkeypatch.setattr(dynalab._ctypes_util, "find_library", libraries.get)
    assert dynalab.choose_mujoco_gl() == choice
    assert capsys.readouterr().err == ""


def test_a_users_choice_whose_library_is_missing_falls_back_with_a_warning(monkeypatch, capsys):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(dynalab._ctypes_util, "find_library", {"EGL": "libEGL.so.1"}.get)
    assert dynalab.choose_mujoco_gl() == "egl"
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynalab: warning: MUJOCO_GL=osmesa but libOSMesa is not installed, so dynalab uses "
                          "MUJOCO_GL=egl;") and "\n" not in err


def test_a_missing_osmesa_does_not_crash_the_import():
    # In a fresh process, as a user who exported MUJOCO_GL=osmesa on a machine without it would run.
    import subprocess
    import sys
    if dynalab._ctypes_util.find_library("OSMesa"):
        pytest.skip("this machine has OSMesa, so MUJOCO_GL=osmesa is valid here")
    proc = subprocess.run([sys.executable, "-c", "import dynalab, mujoco, dm_control.suite; print('ok')"],
                          capture_output=True, text=True, env={**__import__("os").environ, "MUJOCO_GL": "osmesa"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert "MUJOCO_GL=osmesa but libOSMesa is not installed" in proc.stderr
