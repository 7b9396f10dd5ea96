"""Map hygiene beyond the paper: a like-for-like (low-pass) heat map, median filter, eroded brain, the healthy norm
subtracted, small regions, 3-D consistency; each off by default, named by MapOptions."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .normative import excess

if TYPE_CHECKING:                                   # anomaly imports this module: no import cycle at run time
    from .anomaly import PostProcess


def lowpass_error(x0: np.ndarray, x0_hat: np.ndarray, sigma: float, brain: np.ndarray | None = None) -> np.ndarray:
    """Compare like with like: E = (G_sigma * x0 - G_sigma * x0_hat)^2, both (B, H, W) slices blurred alike in
    plane by a Gaussian of sigma model pixels (mirrored at the image's edge), zero outside `brain` when given.

    A single-step reconstruction keeps little finer than a few pixels, so the raw squared error lights up every
    sharp edge of x0; blurring both images first compares them at the detail the reconstruction has.
    sigma 0 is the raw squared error.
    """
    x0 = np.asarray(x0, np.float32)                                       # (B, H, W)
    x0_hat = np.asarray(x0_hat, np.float32)                               # (B, H, W)
    diff = x0 - x0_hat                                                    # (B, H, W) linear: blur once
    if sigma > 0:
        diff = ndimage.gaussian_filter(diff, sigma=(0, sigma, sigma), mode="mirror")
    error = np.square(diff, dtype=np.float32)                             # (B, H, W)
    return error if brain is None else error * np.asarray(brain, bool)


def median_map(error: np.ndarray, size: int, brain: np.ndarray | None = None) -> np.ndarray:
    """A size x size median filter of each (B, H, W) slice of a heat map (mirrored at the image's edge), zero
    outside `brain` when given (the filter may not spread the map beyond it). size 0 or 1: unchanged."""
    error = np.asarray(error)
    if size <= 1:
        return error
    out = ndimage.median_filter(error, size=(1, size, size), mode="mirror")   # (B, H, W)
    return out if brain is None else out * np.asarray(brain, bool)


def _disk(radius: int) -> np.ndarray:
    """(1, 2r + 1, 2r + 1) bool: the in-plane pixels within Euclidean distance r of the centre."""
    g = np.arange(-radius, radius + 1)
    return (g[:, None] ** 2 + g[None, :] ** 2 <= radius ** 2)[None]


def erode_brain(brain: np.ndarray, px: int) -> np.ndarray:
    """The (B, H, W) brain mask less every pixel within px pixels (Euclidean, in plane) of a non-brain pixel; beyond
    the image's edge counts as non-brain. px 0: unchanged."""
    brain = np.asarray(brain, bool)
    if px <= 0:
        return brain
    return ndimage.binary_erosion(brain, structure=_disk(px), border_value=0)   # (B, H, W)


def keep_persistent(mask: np.ndarray, slices: int) -> np.ndarray:
    """3-D consistency on a (Z, H, W) mask of consecutive slices: keep a 3-D connected region (6-connected: faces)
    only when it spans at least `slices` consecutive slices. slices 0 or 1: unchanged."""
    mask = np.asarray(mask, bool)
    if slices <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))   # (Z, H, W) 1..n
    spans = np.array([box[0].stop - box[0].start for box in ndimage.find_objects(labels)])  # (n,) slices spanned
    keep = np.concatenate(([False], spans >= slices))                     # (n + 1,) label -> kept
    return keep[labels]                                                   # (Z, H, W)


def with_min_area(pp: PostProcess, min_area: int) -> PostProcess:
    """pp that also drops connected regions smaller than min_area pixels: pp's own steps when it is enabled, else
    that alone (no dilation, every other region kept). min_area 0: pp itself."""
    if min_area <= 0:
        return pp
    if pp.enabled:
        return replace(pp, min_area=max(pp.min_area, min_area))
    return replace(pp, enabled=True, dilate=False, keep_largest=0, min_area=min_area)


MAP_OPTION_FIELDS = ("lowpass", "median", "erode", "normative", "min_area", "persist")


@dataclass(frozen=True)
class MapOptions:
    """How a heat map and its mask are cleaned beyond the paper; every default is off (the paper's maps exactly).

    Order: E (low-pass or raw) -> median -> eroded brain -> healthy norm subtracted -> threshold ->
    post-processing with min_area -> persist.
    """
    lowpass: float = 0      # Gaussian sigma (model pixels) applied to x0 and x0_hat alike before E; 0: raw E
    median: int = 0         # odd median window (pixels) over each slice's heat map; 0: none
    erode: int = 0          # E zeroed within this many pixels of the brain mask's rim; 0: the whole brain
    normative: bool = False  # the checkpoint's healthy norm N subtracted: E - N (core/normative.py); False: E
    min_area: int = 0       # connected regions (per slice) smaller than this many pixels are dropped
    persist: int = 0        # whole volumes: a 3-D region is kept when it spans at least this many slices

    def __post_init__(self):
        if not (math.isfinite(self.lowpass) and self.lowpass >= 0):
            raise ValueError(f"the low-pass sigma must be 0 (off) or a positive number of pixels, not {self.lowpass}")
        for field, value in (("median", self.median), ("erode", self.erode), ("min_area", self.min_area),
                             ("persist", self.persist)):
            if int(value) != value or value < 0:
                raise ValueError(f"{field} must be a whole number, 0 (off) or more, not {value}")
            object.__setattr__(self, field, int(value))
        object.__setattr__(self, "lowpass", float(self.lowpass))
        if self.normative not in (True, False, 0, 1):
            raise ValueError(f"normative is on or off, not {self.normative!r}")
        object.__setattr__(self, "normative", bool(self.normative))
        if self.median and self.median % 2 == 0:
            raise ValueError(f"the median window must be odd (3, 5, ...), not {self.median}")

    @property
    def name(self) -> str:
        """The method-name suffix, e.g. '_lp1_med3_er2_nm_min20_3d3'; '' for the defaults."""
        parts = [f"_lp{self.lowpass:g}" if self.lowpass else "", f"_med{self.median}" if self.median else "",
                 f"_er{self.erode}" if self.erode else "", "_nm" if self.normative else "",
                 f"_min{self.min_area}" if self.min_area else "",
                 f"_3d{self.persist}" if self.persist else ""]
        return "".join(parts)

    @property
    def label(self) -> str:
        """In words for a table row, e.g. ', low-pass σ 1 px, median 3×3'; '' for the defaults."""
        parts = [f"low-pass σ {self.lowpass:g} px" if self.lowpass else "",
                 f"median {self.median}×{self.median}" if self.median else "",
                 f"brain eroded {self.erode} px" if self.erode else "",
                 "healthy norm subtracted" if self.normative else "",
                 f"regions ≥ {self.min_area} px" if self.min_area else "",
                 f"3-D regions over ≥ {self.persist} slices (whole volumes)" if self.persist else ""]
        return "".join(f", {p}" for p in parts if p)

    @property
    def map_level(self) -> bool:
        """Whether the heat map itself changes (lowpass, median, erode, normative), not only the mask."""
        return bool(self.lowpass or self.median or self.erode or self.normative)

    @property
    def map_key(self) -> tuple[float, int, int, bool]:
        """What the heat map depends on: options with equal keys share one map (and its AUROC, AUPRC)."""
        return self.lowpass, self.median, self.erode, self.normative

    @property
    def norm_key(self) -> tuple[float, int, int]:
        """The cleaning before the healthy norm: a NormativeMap fits heat maps made with the same."""
        return self.lowpass, self.median, self.erode

    def to_json(self) -> dict:
        return {**{k: getattr(self, k) for k in MAP_OPTION_FIELDS}, "name": self.name}

    def clean_map(self, error: np.ndarray, brain: np.ndarray | None, x0: np.ndarray | None = None,
                  x0_hat: np.ndarray | None = None, norm: np.ndarray | None = None, signed: bool = False) -> np.ndarray:
        """The heat map (B, H, W) with lowpass, median, erode and the healthy norm applied, from the raw E (zero
        outside the brain) and, for lowpass, x0 and x0_hat (B, H, W), for normative the norm's slices `norm`
        (B, H, W; NormativeMap.model_slices). signed: the excess keeps its sign (normative.excess). Without any of
        them: error itself."""
        if not self.map_level:
            return error
        if self.lowpass:
            if x0 is None or x0_hat is None:
                raise ValueError("the low-pass heat map needs the slices x0 and their reconstructions x0_hat")
            error = lowpass_error(x0, x0_hat, self.lowpass, brain)
        error = median_map(error, self.median, brain)
        if self.erode:
            if brain is None:
                raise ValueError("eroding the brain needs the brain mask")
            brain = erode_brain(brain, self.erode)
            error = error * brain
        if self.normative:
            if norm is None or brain is None:
                raise ValueError("subtracting the healthy norm needs the norm's slices and the brain mask")
            error = excess(error, norm, brain, signed)
        return np.asarray(error, np.float32)                              # (B, H, W)

    def postprocess(self, pp: PostProcess) -> PostProcess:
        """pp with min_area (see with_min_area)."""
        return with_min_area(pp, self.min_area)

    def volume_mask(self, mask: np.ndarray) -> np.ndarray:
        """A whole volume's (Z, H, W) mask of consecutive slices after persist (keep_persistent)."""
        return keep_persistent(mask, self.persist) if self.persist else mask

    def without_persist(self) -> MapOptions:
        """The options that apply to lone slices (the paper's 4-slice protocol): all but persist."""
        return replace(self, persist=0)
