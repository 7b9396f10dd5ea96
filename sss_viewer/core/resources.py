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


def default_checkpoint() -> Path:
    """The settings' default_checkpoint when set and present, else the bundled demo checkpoint."""
    try:
        chosen = json.loads(settings_path().read_text()).get("default_checkpoint")
    except (OSError, ValueError, AttributeError):
        chosen = None
    if chosen and Path(chosen).is_file():
        return Path(chosen)
    bundled = resource(DEMO_CHECKPOINT)
    if not bundled.is_file():
        raise FileNotFoundError(f"no bundled checkpoint at {bundled}; pass --checkpoint or train one with sss-train")
    return bundled
