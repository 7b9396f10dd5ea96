"""The viewer's state (slice, detection and display settings): one object that widgets set and subscribe to."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from .settings import DEFAULTS

FIELDS: dict[str, Any] = {
    "slice": 0,                                  # axial slice index (canonical z)
    "cursor": (0, 0),                            # crosshair (row v, column u) in model space; with slice: 3-D
    "layout": DEFAULTS["layout"],                # "panels" (four axial panels) or "planes" (three planes)
    "timestep": DEFAULTS["timestep"],            # single-step lambda
    "threshold": DEFAULTS["threshold"],          # heat-map threshold
    "postprocess": DEFAULTS["postprocess"],      # dilation + largest region on the mask
    "consensus": DEFAULTS["consensus"],          # common regions over CONSENSUS_TIMESTEPS
    "votes": DEFAULTS["votes"],                  # timesteps that must agree in consensus mode
    "seed": DEFAULTS["seed"],                    # noise seed
    "draws": DEFAULTS["draws"],                  # noise draws averaged per slice (K model calls)
    "persist": DEFAULTS["persist"],              # whole volume: keep 3-D regions spanning ≥ this many slices
    "lowpass": DEFAULTS["lowpass"],              # map hygiene (core.hygiene.MapOptions): low-pass sigma, 0: off
    "median": DEFAULTS["median"],                # median window of the heat map, 0: off
    "erode": DEFAULTS["erode"],                  # heat map zeroed this many pixels inside the brain's rim, 0: off
    "normative": DEFAULTS["normative"],          # the checkpoint's healthy norm subtracted from the heat map
    "min_area": DEFAULTS["min_area"],            # mask regions smaller than this many pixels dropped, 0: off
    "device": DEFAULTS["device"],                # "auto", "cpu" or "cuda", as asked for
    "mask_style": DEFAULTS["mask_style"],        # "contour" or "fill"
    "mask_opacity": DEFAULTS["mask_opacity"],    # overlay opacity, 0..1
    "window": (0.0, 1.0),                        # (low, high) grey window of the original, raw intensity
}


class ViewState(QObject):
    """Holds FIELDS as attributes; set() changes them and emits changed(name) once per changed field."""

    changed = Signal(str)

    def __init__(self, **values: Any):
        super().__init__()
        for name, default in FIELDS.items():
            setattr(self, name, default)
        self.set(**values)

    def set(self, **values: Any) -> None:
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise AttributeError(f"ViewState has no field {sorted(unknown)}")
        changed = [name for name, value in values.items() if getattr(self, name) != value]
        for name in changed:
            setattr(self, name, values[name])
        for name in changed:
            self.changed.emit(name)
