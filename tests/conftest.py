"""Shared fixtures: offscreen Qt, tiny configs, and the path to the real data beside the project."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

DATA = Path(os.environ.get("SSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def real_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} is absent")
    return DATA


@pytest.fixture
def tiny_preset():
    from sss_viewer.core.config import PRESETS
    return PRESETS["tiny"]
