"""The healthy norm of a heat map: where a checkpoint's reconstructions of healthy brains usually err, on the MNI
grid, so that a scan's heat map can say how far it errs beyond that (its excess) instead of lighting every edge."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .align import aligned_grid
from .volume import ModelVolume, VolumeError

DEFAULT_SIGMA_MM = 2.0  # Gaussian smoothing of the norm: registration is affine, brains differ by millimetres
BLOCK = 2               # the norm is kept at 2 mm (the template's grid), the aligned grid is 1 mm
FLOOR = -4.0            # the signed excess outside the brain: both images lie in [-1, 1], so E - N >= -4 inside it
_CACHED_VOLUMES = 4     # model-space norms kept per map (the viewer's volume, a tool's current one)


@dataclass(frozen=True, eq=False)
class NormativeMap:
    """N: the mean heat map of healthy brains at one timestep, noise draws and map cleaning, on the template's 2 mm
    grid; excess(E, N) = E - N inside the brain."""
    mean: np.ndarray                     # (X, Y, Z) float32 at 2 mm: mean heat of healthy brain voxels, smoothed
    timestep: int                        # lambda of the heat maps it averages
    draws: int                           # their noise draws
    map_key: tuple[float, int, int]      # their cleaning before the norm: MapOptions (lowpass, median, erode)
    sigma_mm: float                      # Gaussian smoothing (mm) of the heat and brain sums before averaging
    volumes: tuple[str, ...]             # the healthy scans it was made from
    _model: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)  # per volume: (Z, S, S)

    def __post_init__(self):
        shape = tuple(n // BLOCK for n in aligned_grid()[0])
        if self.mean.shape != shape:
            raise ValueError(f"a normative map must be on the template's {shape} grid, not {self.mean.shape}")

    def mismatch(self, timesteps: Sequence[int], draws: int, map_key: tuple[float, int, int]) -> str | None:
        """Why the norm cannot be subtracted from heat maps made this way (one line), or None when it can."""
        if tuple(timesteps) != (self.timestep,):
            return f"the healthy norm is for λ {self.timestep} alone, not {', '.join(map(str, timesteps))}"
        if draws != self.draws:
            return f"the healthy norm is for {self.draws} noise draw(s), not {draws}"
        if tuple(map_key) != tuple(self.map_key):
            return "the healthy norm was made with other low-pass, median or rim-erosion settings; set them back"
        return None

    @cached_property
    def aligned(self) -> np.ndarray:
        """(X, Y, Z) float32 on the aligned 1 mm grid (trilinear; 2 mm voxel j covers 1 mm voxels 2j and 2j + 1),
        made once per map."""
        return ndimage.zoom(self.mean, BLOCK, order=1, mode="nearest", grid_mode=True).astype(np.float32)

    def model_slices(self, volume: ModelVolume) -> np.ndarray:
        """The norm sampled like the volume's slices: (Z, S, S) float32 (0 outside the brains it was made from).
        ValueError for a volume that is not MNI-aligned."""
        key = id(volume)
        if key in self._model and self._model[key][0] is volume:
            self._model.move_to_end(key)
            return self._model[key][1]
        if volume.alignment is None or volume.canonical_shape != aligned_grid()[0]:
            raise VolumeError("the healthy norm needs a scan aligned to the MNI template (a checkpoint with "
                              "--align mni-affine)")
        slices = volume.grid_to_model(self.aligned)                      # (Z, S, S)
        self._model[key] = (volume, slices)
        while len(self._model) > _CACHED_VOLUMES:
            self._model.popitem(last=False)
        return slices

    def to_payload(self) -> dict[str, Any]:
        return {"mean": torch.from_numpy(self.mean.astype(np.float16)), "timestep": self.timestep,
                "draws": self.draws, "map_key": list(self.map_key), "sigma_mm": self.sigma_mm,
                "volumes": list(self.volumes)}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> NormativeMap:
        """From a checkpoint's "normative" entry; KeyError, TypeError or ValueError when it is damaged."""
        lowpass, median, erode = data["map_key"]
        mean = data["mean"].float().numpy()
        if not np.isfinite(mean).all():
            raise ValueError("the normative map holds non-finite values")
        return cls(mean=mean, timestep=int(data["timestep"]), draws=int(data["draws"]),
                   map_key=(float(lowpass), int(median), int(erode)), sigma_mm=float(data["sigma_mm"]),
                   volumes=tuple(str(v) for v in data["volumes"]))


class NormativeSum:
    """Accumulates healthy heat maps on the aligned grid; build() averages them into a NormativeMap."""

    def __init__(self):
        shape = aligned_grid()[0]
        self.heat = np.zeros(shape, np.float64)     # (X, Y, Z) summed heat over brain voxels
        self.brains = np.zeros(shape, np.float64)   # (X, Y, Z) how many brains cover each voxel
        self.volumes: list[str] = []

    def add(self, name: str, volume: ModelVolume, heat: np.ndarray) -> None:
        """One healthy volume's heat map (n, S, S) over its brain slices (volume.slice_range)."""
        if volume.alignment is None:
            raise VolumeError(f"{name}: the healthy norm needs scans aligned to the MNI template")
        first, last = volume.slice_range
        brain = volume.brain_mask[first:last + 1].astype(np.float32)                       # (n, S, S)
        inside = volume.model_to_grid(brain, first) > 0.5                                # (X, Y, Z)
        self.heat += volume.model_to_grid(np.maximum(heat, 0), first) * inside
        self.brains += inside
        self.volumes.append(name)

    def build(self, timestep: int, draws: int, map_key: tuple[float, int, int],
              sigma_mm: float = DEFAULT_SIGMA_MM) -> NormativeMap:
        """N = G_sigma * (summed heat) / G_sigma * (brain count), at 2 mm (2 x 2 x 2 block sums of both); 0 where
        under half a brain covers a voxel. ValueError before any volume was added."""
        if not self.volumes:
            raise ValueError("no healthy volume was given for the normative map")
        heat, brains = (ndimage.gaussian_filter(a, sigma_mm) if sigma_mm > 0 else a for a in (self.heat, self.brains))
        X, Y, Z = (n // BLOCK for n in heat.shape)
        heat, brains = (a.reshape(X, BLOCK, Y, BLOCK, Z, BLOCK).sum(axis=(1, 3, 5)) for a in (heat, brains))
        cover = brains / BLOCK ** 3                                          # (X, Y, Z) brains per voxel
        mean = np.where(cover >= 0.5, heat / np.maximum(brains, 1e-12), 0.0).astype(np.float32)
        return NormativeMap(mean=mean, timestep=int(timestep), draws=int(draws),
                            map_key=(float(map_key[0]), int(map_key[1]), int(map_key[2])), sigma_mm=float(sigma_mm),
                            volumes=tuple(self.volumes))


def excess(heat: np.ndarray, norm: np.ndarray, inside: np.ndarray, signed: bool = False) -> np.ndarray:
    """The heat beyond the healthy norm, (B, H, W): E - N inside the brain; signed keeps its sign and puts FLOOR
    outside the brain (below any brain pixel: a ranking, for AUC), else negative values and the outside are 0 (the
    heat map shown and written; its masks E - N > threshold are the same)."""
    diff = np.asarray(heat, np.float32) - np.asarray(norm, np.float32)
    inside = np.asarray(inside, bool)
    if signed:
        return np.where(inside, diff, np.float32(FLOOR)).astype(np.float32)
    return (np.maximum(diff, 0) * inside).astype(np.float32)
