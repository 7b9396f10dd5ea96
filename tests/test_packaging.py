"""The wheel carries the bundled demo (volume, mask, checkpoint) so a plain `pip install .` opens it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sss_viewer.core.resources import DEMO_CHECKPOINT, DEMO_MASK, DEMO_VOLUME, GENERAL_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_demo_files(tmp_path):
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not running from a source checkout")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("sss_viewer", "trainer", "resources"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sss_viewer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (DEMO_VOLUME, DEMO_MASK, DEMO_CHECKPOINT, GENERAL_CHECKPOINT, "README.md"):
        assert f"sss_viewer/resources/{name}" in names, name
    assert "sss_viewer/core/unet.py" in names and "trainer/cli.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("sss-viewer", "sss-train", "sss-detect", "sss-eval", "sss-bench", "sss-calibrate"):
        assert f"{command} =" in text
