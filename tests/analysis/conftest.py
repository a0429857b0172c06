"""Fixtures for the report tests."""

from pathlib import Path

import pytest

from analysis_fakes import build_fake_sweep


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory) -> Path:
    return build_fake_sweep(tmp_path_factory.mktemp("fake") / "sweep")
