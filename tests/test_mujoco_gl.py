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


def test_the_users_choice_is_kept(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(dynalab._ctypes_util, "find_library", lambda name: None)
    assert dynalab.choose_mujoco_gl() == "osmesa"
