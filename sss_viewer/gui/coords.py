"""Maps a point of a model-space slice to the input file's own voxel indices (the status line's coordinates)."""

from __future__ import annotations

from ..core.volume import ModelVolume, Volume


def model_to_canonical(mv: ModelVolume, z: int, u: float, v: float) -> tuple[int, int, int]:
    """Nearest canonical voxel (x, y, z) under model point (u = column, v = row), continuous pixel units.

    Pixel (r, c) covers u in [c, c + 1), v in [r, r + 1); volume.py's formula at its centre c + 0.5:
    x = cx - (u - S/2) · p / sx,  y = cy - (v - S/2) · p / sy.
    """
    h = mv.image_size / 2
    sx, sy, _ = mv.spacing
    cx, cy = mv.centre
    x = cx - (u - h) * mv.pixel_mm / sx
    y = cy - (v - h) * mv.pixel_mm / sy
    return int(round(x)), int(round(y)), int(z)


def canonical_to_native(volume: Volume, index: tuple[int, int, int]) -> tuple[int, int, int]:
    """Canonical RAS+ voxel index → the same voxel's index in the input file's array (Volume.ornt inverted)."""
    shape = volume.native_shape
    native = []
    for axis, (to_axis, flip) in enumerate(volume.ornt):
        i = index[int(to_axis)]
        native.append(i if flip > 0 else shape[axis] - 1 - i)
    return tuple(native)


def voxel_at(volume: Volume, mv: ModelVolume, z: int, u: float, v: float) -> tuple[tuple[int, int, int], float] | None:
    """(native voxel index, raw intensity) under model point (u, v) of slice z, or None outside the scan."""
    x, y, k = model_to_canonical(mv, z, u, v)
    X, Y, Z = volume.data.shape
    if not (0 <= x < X and 0 <= y < Y and 0 <= k < Z):
        return None
    return canonical_to_native(volume, (x, y, k)), float(volume.data[x, y, k])
