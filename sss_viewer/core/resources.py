"""Where the bundled demo files and the user's settings live, and which checkpoint is the default."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import platformdirs

APP = "sss-viewer"
DEMO_VOLUME = "demo_t1.nii.gz"
DEMO_MASK = "demo_t1_lesion_mask.nii.gz"
DEMO_CHECKPOINT = "demo_small.pt"
GENERAL_CHECKPOINT = "general_t1.pt"    # healthy T1 brains of many people and scanners: the one for real scans


def resource_dir() -> Path:
    """The installed sss_viewer.resources package, or resources/ of a source checkout."""
    try:
        return Path(str(resources.files("sss_viewer.resources")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "resources"


def resource(name: str) -> Path:
    return resource_dir() / name


def settings_path() -> Path:
    """JSON settings file (recent files, default checkpoint, ...); SSS_VIEWER_CONFIG_DIR overrides the folder."""
    folder = os.environ.get("SSS_VIEWER_CONFIG_DIR") or platformdirs.user_config_dir(APP, appauthor=False)
    return Path(folder) / "settings.json"


def cache_dir() -> Path:
    """Preprocessed-volume cache; SSS_VIEWER_CACHE_DIR overrides the folder."""
    return Path(os.environ.get("SSS_VIEWER_CACHE_DIR") or platformdirs.user_cache_dir(APP, appauthor=False))


def is_demo_volume(path: str | os.PathLike) -> bool:
    """True for the bundled demo volume: that file, or a copy of it (same size and bytes)."""
    path, demo = Path(path), resource(DEMO_VOLUME)
    try:
        if not demo.is_file() or path.stat().st_size != demo.stat().st_size:
            return False
        return path.resolve() == demo.resolve() or path.read_bytes() == demo.read_bytes()
    except OSError:
        return False


def default_checkpoint(volume: str | os.PathLike | None = None) -> Path:
    """The settings' default_checkpoint when set and present; else the bundled checkpoint for `volume`: the
    demo checkpoint for the demo volume (trained for it), the general T1 checkpoint for anything else
    (None: any real scan), falling back to the demo checkpoint when the general one is not installed."""
    try:
        chosen = json.loads(settings_path().read_text()).get("default_checkpoint")
    except (OSError, ValueError, AttributeError):
        chosen = None
    if chosen and Path(chosen).is_file():
        return Path(chosen)
    demo = volume is not None and is_demo_volume(volume)
    for name in (DEMO_CHECKPOINT,) if demo else (GENERAL_CHECKPOINT, DEMO_CHECKPOINT):
        if resource(name).is_file():
            return resource(name)
    raise FileNotFoundError(f"no bundled checkpoint in {resource_dir()}; pass --checkpoint or train one with "
                            "sss-train")
