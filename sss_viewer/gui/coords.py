"""Maps between model-space points (slice, row, column) and the input's voxels: the status line, lesion jumps."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.lesions import canonical_to_native_index
from ..core.volume import ModelVolume, Volume


def model_to_canonical(mv: ModelVolume, z: int, u: float, v: float) -> tuple[int, int, int]:
    """Nearest input canonical voxel (x, y, z) under model point (u = column, v = row), continuous pixel units.

    Pixel (r, c) covers u in [c, c + 1), v in [r, r + 1); volume.py's formula at its centre c + 0.5:
    x = cx - (u - S/2) · p / sx,  y = cy - (v - S/2) · p / sy; on an aligned grid (mv.alignment), that
    voxel is then carried onto the input's through the alignment's affine.
    """
    h = mv.image_size / 2
    sx, sy, _ = mv.spacing
    cx, cy = mv.centre
    x = cx - (u - h) * mv.pixel_mm / sx
    y = cy - (v - h) * mv.pixel_mm / sy
    if mv.alignment is not None:
        x, y, z = mv.alignment.input_voxel(x, y, z)
    return int(round(x)), int(round(y)), int(round(z))


def canonical_to_model(mv: ModelVolume, x: float, y: float, z: int) -> tuple[int, int, int]:
    """Input canonical voxel (x, y, z) → the model pixel holding its centre, (z, row v, column u), clamped to the
    square and the slices (model_to_canonical inverted: u = S/2 + (cx - x) · sx / p, v = S/2 + (cy - y) · sy / p,
    after the alignment's inverse on an aligned grid)."""
    if mv.alignment is not None:
        x, y, z = mv.alignment.aligned_voxel(x, y, z)
        z = min(max(int(round(z)), 0), mv.n_slices - 1)
    h = mv.image_size / 2
    sx, sy, _ = mv.spacing
    cx, cy = mv.centre
    u = h + (cx - x) * sx / mv.pixel_mm
    v = h + (cy - y) * sy / mv.pixel_mm
    last = mv.image_size - 1
    return int(z), min(max(int(v), 0), last), min(max(int(u), 0), last)


def view_slice(mv: ModelVolume) -> Callable[[np.ndarray], np.ndarray] | None:
    """Canonical voxel indices (m, 3) → the model slices (m,) holding them, on an aligned grid (through the
    alignment's inverse, rounded and clamped to the slices); None when model slices are the canonical ones."""
    if mv.alignment is None:
        return None
    row = np.linalg.inv(mv.alignment.matrix)[2]  # (4,) canonical voxel → aligned z

    def slices(indices: np.ndarray) -> np.ndarray:
        z = np.rint(indices @ row[:3] + row[3]).astype(int)
        return np.clip(z, 0, mv.n_slices - 1)

    return slices


def voxel_at(volume: Volume, mv: ModelVolume, z: int, u: float, v: float) -> tuple[tuple[int, int, int], float] | None:
    """(native voxel index, raw intensity) under model point (u, v) of slice z, or None outside the scan."""
    x, y, k = model_to_canonical(mv, z, u, v)
    X, Y, Z = volume.data.shape
    if not (0 <= x < X and 0 <= y < Y and 0 <= k < Z):
        return None
    return canonical_to_native_index((x, y, k), volume), float(volume.data[x, y, k])
