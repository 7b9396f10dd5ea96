"""User settings: one JSON file at resources.settings_path(), checked on load, written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.anomaly import CONSENSUS_TIMESTEPS, DEFAULT_THRESHOLD, DEFAULT_TIMESTEP
from ..core.resources import settings_path
from . import texts

MAX_RECENT = 10
TIMESTEP_RANGE = (50, 600)
THRESHOLD_RANGE = (0.0, 1.0)
SEED_MAX = 2 ** 31 - 1
DRAWS_MAX = 16           # noise draws per slice in the viewer (each is one more model call)
PERSIST_MAX = 20         # 3-D consistency: regions must span at least this many slices (0: off)
LOWPASS_MAX = 3.0        # map hygiene (core.hygiene.MapOptions): low-pass sigma in model pixels (0: off)
MEDIANS = (0, 3, 5, 7, 9)  # median window of the heat map (0: off)
ERODE_MAX = 10           # heat map zeroed this many pixels inside the brain's rim (0: off)
MIN_AREA_MAX = 500       # mask regions smaller than this many pixels are dropped (0: off)
DEVICES = ("auto", "cpu", "cuda")
LAYOUTS = ("panels", "planes")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _in(low, high) -> Callable[[Any], bool]:
    return lambda v: _is_number(v) and low <= v <= high


DEFAULTS: dict[str, Any] = {
    "recent_files": [],              # most recent first
    "last_directory": "",            # where the file dialogs open
    "default_checkpoint": None,      # read by resources.default_checkpoint()
    "geometry": "",                  # QMainWindow.saveGeometry(), base64
    "timestep": DEFAULT_TIMESTEP,
    "threshold": DEFAULT_THRESHOLD,
    "postprocess": True,
    "consensus": False,
    "votes": len(CONSENSUS_TIMESTEPS) // 2 + 1,
    "seed": 0,
    "draws": 1,
    "persist": 0,
    "lowpass": 0.0,
    "median": 0,
    "erode": 0,
    "normative": False,
    "min_area": 0,
    "device": "auto",
    "mask_style": "contour",
    "mask_opacity": 0.6,
    "layout": "panels",              # "panels": four axial panels; "planes": axial, coronal and sagittal
}

VALID: dict[str, Callable[[Any], bool]] = {
    "recent_files": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "last_directory": lambda v: isinstance(v, str),
    "default_checkpoint": lambda v: v is None or isinstance(v, str),
    "geometry": lambda v: isinstance(v, str),
    "timestep": lambda v: _is_int(v) and TIMESTEP_RANGE[0] <= v <= TIMESTEP_RANGE[1],
    "threshold": _in(*THRESHOLD_RANGE),
    "postprocess": lambda v: isinstance(v, bool),
    "consensus": lambda v: isinstance(v, bool),
    "votes": lambda v: _is_int(v) and 1 <= v <= len(CONSENSUS_TIMESTEPS),
    "seed": lambda v: _is_int(v) and 0 <= v <= SEED_MAX,
    "draws": lambda v: _is_int(v) and 1 <= v <= DRAWS_MAX,
    "persist": lambda v: _is_int(v) and 0 <= v <= PERSIST_MAX,
    "lowpass": lambda v: _is_number(v) and math.isfinite(v) and v >= 0,   # the box offers 0..LOWPASS_MAX
    "median": lambda v: _is_int(v) and v in MEDIANS,
    "erode": lambda v: _is_int(v) and 0 <= v <= ERODE_MAX,
    "normative": lambda v: isinstance(v, bool),
    "min_area": lambda v: _is_int(v) and 0 <= v <= MIN_AREA_MAX,
    "device": lambda v: v in DEVICES,
    "mask_style": lambda v: v in texts.MASK_STYLES,
    "mask_opacity": _in(0.0, 1.0),
    "layout": lambda v: v in LAYOUTS,
}


class Settings:
    """The settings as a dict with defaults; load() never raises, save() reports failure as text."""

    def __init__(self, path: Path, values: dict[str, Any] | None = None, warning: str | None = None):
        self.path = path
        self.values = {**DEFAULTS, **(values or {})}
        self.warning = warning  # set by load() when the file was reset or partly ignored

    @classmethod
    def load(cls, path: Path | None = None, repair: bool = True) -> Settings:
        """Read the file (missing: defaults). A corrupt one gives defaults; repair moves it aside as *.bad.

        The next save() writes a good file in its place. repair=False reads without touching anything.
        """
        path = settings_path() if path is None else Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as err:
            return cls(path, warning=texts.SETTINGS_CORRUPT.format(path=path, reason=err.strerror or err,
                                                                   backup=texts.SETTINGS_NOT_MOVED))
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"a JSON object is needed, not {type(data).__name__}")
        except ValueError as err:
            backup = path.with_name(path.name + ".bad")
            try:
                if repair:
                    os.replace(path, backup)
            except OSError:
                backup = texts.SETTINGS_NOT_MOVED
            return cls(path, warning=texts.SETTINGS_CORRUPT.format(path=path, reason=str(err).splitlines()[0],
                                                                   backup=backup if repair else path))
        bad = sorted(k for k, ok in VALID.items() if k in data and not ok(data[k]))
        values = {k: v for k, v in data.items() if k not in bad}
        return cls(path, values, texts.SETTINGS_BAD_VALUES.format(path=path, keys=", ".join(bad)) if bad else None)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in VALID and not VALID[key](value):
            raise ValueError(f"invalid value {value!r} for setting {key!r}")
        self.values[key] = value

    def add_recent(self, path: str | os.PathLike) -> None:
        """Put path first in the recent files (once), keep MAX_RECENT, remember its folder."""
        path = str(Path(path).resolve())
        self.values["recent_files"] = [path] + [p for p in self.values["recent_files"] if p != path][:MAX_RECENT - 1]
        self.values["last_directory"] = str(Path(path).parent)

    def remove_recent(self, path: str) -> None:
        self.values["recent_files"] = [p for p in self.values["recent_files"] if p != path]

    def save(self) -> str | None:
        """Write to a temporary file beside the settings, then rename over them; returns an error text or None."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(self.values, f, indent=2)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            return texts.STATUS_SETTINGS_UNSAVED.format(reason=f"{self.path}: {err.strerror or err}")
        return None
