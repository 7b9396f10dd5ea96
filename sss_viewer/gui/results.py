"""Cached single-step results per (slice, timestep, seed); the maps and score of a slice and of a whole volume."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..core.anomaly import PostProcess, consensus_mask, make_mask, slice_scores
from ..core.hygiene import MapOptions, keep_persistent
from ..core.lesions import Lesion, lesion_list
from ..core.volume import ModelVolume, Volume
from .coords import view_slice

CACHE_BYTES = 1 << 30  # results kept per session before the least recently used are dropped


@dataclass(frozen=True, eq=False)
class SliceResult:
    """One model call's output for one slice at one timestep."""
    recon: np.ndarray  # (S, S) x0_hat
    error: np.ndarray  # (S, S) squared error, zero outside the brain


@dataclass(frozen=True, eq=False)
class SliceView:
    """What the panels show for one slice: one timestep, or the consensus of several, its heat maps cleaned by
    `options` (hygiene.MapOptions; the defaults: the paper's raw maps)."""
    slice: int
    timesteps: tuple[int, ...]
    seed: int
    recon: np.ndarray   # (S, S) reconstruction at timesteps[0]
    errors: np.ndarray  # (K, S, S) heat map per timestep: the squared error, cleaned by options
    options: MapOptions = field(default_factory=MapOptions)  # what cleaned errors; its min_area applies to mask()
    recons: np.ndarray | None = field(default=None, repr=False)  # (K, S, S) x0_hat per timestep (raw views only)

    @property
    def heat(self) -> np.ndarray:
        """(S, S) heat map: the error, or its mean over the consensus timesteps."""
        return self.errors[0] if len(self.errors) == 1 else self.errors.mean(axis=0)

    def mask(self, threshold: float, postprocess: bool, votes: int) -> np.ndarray:
        """(S, S) bool: thresholded (and post-processed, small regions dropped by options.min_area) error; with several
        timesteps, pixels ≥ votes agree on."""
        pp = self.options.postprocess(PostProcess(enabled=postprocess))
        masks = [make_mask(e, threshold, pp) for e in self.errors]
        return masks[0] if len(masks) == 1 else consensus_mask(masks, votes)

    def score(self, brain: np.ndarray) -> float:
        """The slice's anomaly score (99th percentile of the heat map inside the brain)."""
        return float(slice_scores(self.heat[None], brain[None])[0])

    def cleaned(self, options: MapOptions, x0: np.ndarray | None = None,
                brain: np.ndarray | None = None, norm: np.ndarray | None = None) -> SliceView:
        """This raw view (the cache's results) with each timestep's error cleaned by options.clean_map: x0 the
        model-space slice (S, S), brain its mask (S, S) and norm the healthy norm's slice (S, S, for normative);
        low-pass compares x0 with each timestep's own recon. No model call; options off: the same maps."""
        if self.options != MapOptions():
            raise ValueError("only a raw view (no map options) can be cleaned")
        errors = self.errors
        if options.map_level:
            if brain is None or (options.lowpass and (x0 is None or self.recons is None)):
                raise ValueError("cleaning a heat map needs the slice's brain mask (and for low-pass the slice x0)")
            shape = errors.shape                                                  # (K, S, S)
            errors = options.clean_map(errors, np.broadcast_to(np.asarray(brain, bool), shape),
                                       None if x0 is None else np.broadcast_to(np.asarray(x0, np.float32), shape),
                                       self.recons, None if norm is None else np.broadcast_to(norm, shape))
        return SliceView(slice=self.slice, timesteps=self.timesteps, seed=self.seed, recon=self.recon,
                         errors=np.asarray(errors, np.float32), options=options)


class ResultCache:
    """Thread-safe LRU store of SliceResult keyed by (slice, timestep, seed); the worker writes, the GUI reads."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self._items: OrderedDict[tuple[int, int, int], SliceResult] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, z: int, timestep: int, seed: int, result: SliceResult) -> None:
        key = (z, timestep, seed)
        size = result.recon.nbytes + result.error.nbytes
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.recon.nbytes + old.error.nbytes
            self._items[key] = result
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.recon.nbytes + dropped.error.nbytes

    def get(self, z: int, timestep: int, seed: int) -> SliceResult | None:
        with self._lock:
            result = self._items.get((z, timestep, seed))
            if result is not None:
                self._items.move_to_end((z, timestep, seed))
            return result

    def missing(self, z: int, timesteps: Sequence[int], seed: int) -> list[int]:
        """The timesteps of this view with no cached result."""
        with self._lock:
            return [t for t in timesteps if (z, t, seed) not in self._items]

    def view(self, z: int, timesteps: Sequence[int], seed: int, options: MapOptions = MapOptions(),
             x0: np.ndarray | None = None, brain: np.ndarray | None = None,
             norm: np.ndarray | None = None) -> SliceView | None:
        """The slice's view when every timestep is cached, else None; its maps cleaned by options (x0: the
        model-space slice (S, S), brain: its mask (S, S), needed when options change the heat map; norm: the
        healthy norm's slice (S, S), when they subtract it).
        The cache keeps the raw results: an option change never needs the model."""
        results = [self.get(z, t, seed) for t in timesteps]
        if any(r is None for r in results):
            return None
        raw = SliceView(slice=z, timesteps=tuple(timesteps), seed=seed, recon=results[0].recon,
                        errors=np.stack([r.error for r in results]),            # (K, S, S)
                        recons=np.stack([r.recon for r in results]))            # (K, S, S)
        return raw if options == MapOptions() else raw.cleaned(options, x0, brain, norm)


class VolumeMaps:
    """A whole volume's heat map and mask at one set of settings: in model space for the views, and on demand on
    the input's canonical grid with its lesion list (as sss-detect writes them), for the table, overlap and report."""

    def __init__(self, model_volume: ModelVolume, volume: Volume, heat: np.ndarray, mask: np.ndarray):
        self.model_volume, self.volume = model_volume, volume
        self.heat = heat            # (Z, S, S) float32, 0 on slices outside the brain range
        self.mask = mask            # (Z, S, S) bool

    @cached_property
    def canonical_heat(self) -> np.ndarray:
        return self.model_volume.to_canonical(self.heat, "linear")      # (X, Y, Z)

    @cached_property
    def canonical_mask(self) -> np.ndarray:
        return self.model_volume.to_canonical(self.mask, "nearest")     # (X, Y, Z) bool

    @cached_property
    def lesions(self) -> list[Lesion]:
        """Every 26-connected region of the canonical mask, largest first (the table filters by size), with its
        slices on the slider's grid when that is an aligned one."""
        return lesion_list(self.canonical_mask, self.canonical_heat, self.volume,
                           view_slice=view_slice(self.model_volume))


def volume_maps(cache: ResultCache, model_volume: ModelVolume, volume: Volume, timesteps: Sequence[int], seed: int,
                threshold: float, postprocess: bool, votes: int, persist: int,
                options: MapOptions = MapOptions(), norm: np.ndarray | None = None) -> VolumeMaps | None:
    """The maps of a volume whose brain slices are all cached, each slice's heat map and mask cleaned by options
    (all but its persist; norm: the healthy norm's (Z, S, S) slices when they subtract it), 3-D regions spanning
    fewer than `persist` slices removed from the mask (hygiene.keep_persistent); None while any of them is
    missing."""
    first, last = model_volume.slice_range
    options = options.without_persist()
    views = [cache.view(z, timesteps, seed, options, model_volume.data[z], model_volume.brain_mask[z],
                        None if norm is None else norm[z]) for z in range(first, last + 1)]
    if any(v is None for v in views):
        return None
    S = model_volume.image_size
    heat = np.zeros((model_volume.n_slices, S, S), np.float32)                # (Z, S, S)
    mask = np.zeros(heat.shape, bool)                                         # (Z, S, S)
    for view in views:
        heat[view.slice] = view.heat
        mask[view.slice] = view.mask(threshold, postprocess, votes)
    return VolumeMaps(model_volume, volume, heat, keep_persistent(mask, persist))
