"""The lesion list: a volume mask's 3-D connected regions with size, position, extent and heat (like FSL's cluster).

Regions are 26-connected (voxels touching by a face, an edge or a corner belong together), found on the
canonical (X, Y, Z) mask. Each region's centre is the plain (unweighted) mean of its voxel indices:
``centre_ras_mm`` is that point in scanner millimetres (``Volume.canonical_affine`` @ index), and
``centre_voxel`` is the canonical voxel nearest to it (halves rounded up along each RAS+ axis), given in
the input's own array layout by the exact orientation transform (permutation and flips, no resampling),
so it addresses the same voxel in the input file whatever its orientation (LPS, LIA, ...). The centre of a
curved region can lie outside it. lesions_csv and write_lesions_csv give the list as a CSV table.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .files import atomic_write_text
from .volume import Volume

CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connectivity: faces, edges and corners


@dataclass(frozen=True)
class Lesion:
    """One connected region of a volume's mask."""

    label: int                                   # rank by size: 1 = largest
    voxels: int                                  # number of voxels
    volume_ml: float                             # voxels × voxel volume
    centre_ras_mm: tuple[float, float, float]    # centroid in scanner (world RAS) millimetres
    centre_voxel: tuple[int, int, int]           # the centroid's nearest voxel, index in the input's native layout
    slices: tuple[int, int]                      # first and last canonical axial slice (inferior → superior)
    centre_canonical: tuple[int, int, int]       # the same nearest voxel, canonical (X, Y, Z) index
    peak_slice: int                              # the canonical axial slice holding most of its voxels
    peak_heat: float                             # max squared error inside the region
    mean_heat: float                             # mean squared error inside the region
    view_slices: tuple[int, int, int] | None = None  # first, last and peak slice of a view whose slices are not
                                                     # the canonical ones (an aligned grid); None: they are

    def to_json(self) -> dict:
        return {"label": self.label, "voxels": self.voxels, "volume_ml": self.volume_ml,
                "centre_ras_mm": list(self.centre_ras_mm), "centre_voxel": list(self.centre_voxel),
                "slices": list(self.slices), "peak_slice": self.peak_slice, "peak_heat": self.peak_heat,
                "mean_heat": self.mean_heat}


def canonical_to_native_index(index: tuple[int, int, int], volume: Volume) -> tuple[int, int, int]:
    """Canonical (X, Y, Z) voxel index → the same voxel's index in the input's native array, exactly."""
    shape = volume.data.shape
    native = []
    for to_axis, flip in volume.ornt:   # native axis a becomes canonical axis to_axis, reversed when flip = -1
        i = int(index[int(to_axis)])
        native.append(i if flip > 0 else shape[int(to_axis)] - 1 - i)
    return tuple(native)


def lesion_list(mask: np.ndarray, error: np.ndarray, volume: Volume, min_ml: float = 0.0,
                view_slice: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Lesion]:
    """The 26-connected regions of a canonical mask, largest first, those under `min_ml` millilitres left out.

    `mask` (bool) and `error` (float, the squared-error heat map) are canonical (X, Y, Z) arrays on
    `volume`'s grid, e.g. what sss-detect writes. Equal sizes keep the order of their first voxel in the
    canonical array. Labels are renumbered 1, 2, ... after sorting and filtering. `view_slice` maps canonical
    voxel indices (m, 3) to the slices (m,) int of a view that slices differently (the viewer's aligned grid);
    with it each lesion's ``view_slices`` gives its first, last and peak slice there.
    """
    mask = np.asarray(mask)
    error = np.asarray(error)
    shape = volume.data.shape
    if mask.shape != shape or error.shape != shape:
        raise ValueError(f"mask {mask.shape} and error {error.shape} must both have the volume's canonical shape "
                         f"{shape}; bring them onto its grid first (ModelVolume.to_canonical)")
    if not (math.isfinite(min_ml) and min_ml >= 0):
        raise ValueError(f"the minimum lesion size must be a finite number of mL ≥ 0, not {min_ml}")
    labels, n = ndimage.label(mask.astype(bool, copy=False), structure=CONNECTIVITY)  # (X, Y, Z) int
    if n == 0:
        return []
    inside = np.nonzero(labels)                                                   # 3 × (m,) flagged voxels
    region = labels[inside] - 1                                                   # (m,) 0-based region of each
    counts = np.bincount(region, minlength=n)                                     # (n,)
    centres = np.stack([np.bincount(region, axis, n) for axis in inside], axis=1) / counts[:, None]  # (n, 3)
    heat = error[inside].astype(np.float64)                                       # (m,)
    order = np.argsort(region, kind="stable")                                     # regions' voxels contiguous
    starts = np.r_[0, np.cumsum(counts)[:-1]]                                     # (n,) first of each run
    peaks = np.maximum.reduceat(heat[order], starts)                              # (n,)
    means = np.bincount(region, heat, n) / counts                                 # (n,)
    boxes = ndimage.find_objects(labels)
    per_slice = np.bincount(region * shape[2] + inside[2], minlength=n * shape[2]).reshape(n, shape[2])  # (n, Z)
    world = (volume.canonical_affine @ np.c_[centres, np.ones(n)].T)[:3].T       # (n, 3) mm
    nearest = np.clip(np.floor(centres + 0.5).astype(int), 0, np.asarray(shape) - 1)  # (n, 3) canonical
    view = None if view_slice is None else _view_slices(view_slice(np.stack(inside, axis=1)), region, n)  # (n, 3)

    ml = volume.voxel_volume_ml
    lesions = []
    for i in sorted(range(n), key=lambda i: -counts[i]):                           # stable: ties in label order
        volume_ml = int(counts[i]) * ml
        if volume_ml < min_ml:
            continue
        z = boxes[i][2]
        lesions.append(Lesion(label=len(lesions) + 1, voxels=int(counts[i]), volume_ml=volume_ml,
                              centre_ras_mm=tuple(float(v) for v in world[i]),
                              centre_voxel=canonical_to_native_index(tuple(nearest[i]), volume),
                              slices=(int(z.start), int(z.stop) - 1),
                              centre_canonical=tuple(int(v) for v in nearest[i]),
                              peak_slice=int(per_slice[i].argmax()),
                              peak_heat=float(peaks[i]), mean_heat=float(means[i]),
                              view_slices=None if view is None else tuple(int(v) for v in view[i])))
    return lesions


def _view_slices(slices: np.ndarray, region: np.ndarray, n: int) -> np.ndarray:
    """(n, 3) first, last and peak (most voxels) view slice of each of n regions, from each flagged voxel's view
    slice (m,) and 0-based region (m,)."""
    low = int(slices.min())
    per_slice = np.bincount(region * (int(slices.max()) - low + 1) + slices - low,
                            minlength=n * (int(slices.max()) - low + 1)).reshape(n, -1)  # (n, view slices spanned)
    present = per_slice > 0
    first = present.argmax(axis=1)
    last = present.shape[1] - 1 - present[:, ::-1].argmax(axis=1)
    return np.stack([first, last, per_slice.argmax(axis=1)], axis=1) + low


CSV_COLUMNS = ("label", "voxels", "volume_ml", "centre_r_mm", "centre_a_mm", "centre_s_mm", "voxel_i", "voxel_j",
               "voxel_k", "first_slice", "last_slice", "peak_slice", "peak_heat", "mean_heat")
CSV_ML = "{:.6g}"       # mL: six significant digits stay exact for voxels of 0.1 mm and more
CSV_MM = "{:.2f}"       # world millimetres
CSV_HEAT = "{:.5g}"     # squared error


def lesions_csv(lesions: list[Lesion]) -> str:
    """The lesions as a CSV table (header + one row each, in list order); voxel_i/j/k index the input file's
    own array (``centre_voxel``), slices are canonical axial slices (0 = most inferior)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for l in lesions:
        writer.writerow([l.label, l.voxels, CSV_ML.format(l.volume_ml), *(CSV_MM.format(v) for v in l.centre_ras_mm),
                         *l.centre_voxel, *l.slices, l.peak_slice, CSV_HEAT.format(l.peak_heat),
                         CSV_HEAT.format(l.mean_heat)])
    return out.getvalue()


def write_lesions_csv(path: str | os.PathLike, lesions: list[Lesion]) -> Path:
    """Write lesions_csv(lesions) to path atomically (never a half-written file); OSError when it cannot."""
    return atomic_write_text(path, lesions_csv(lesions))
