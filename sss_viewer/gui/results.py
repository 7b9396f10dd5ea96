"""Cached single-step results per (slice, timestep, seed), and the heat map, mask and score a view derives from them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.anomaly import PostProcess, consensus_mask, make_mask, slice_scores
from ..core.hygiene import keep_persistent

CACHE_BYTES = 1 << 30  # results kept per session before the least recently used are dropped


@dataclass(frozen=True, eq=False)
class SliceResult:
    """One model call's output for one slice at one timestep."""
    recon: np.ndarray  # (S, S) x0_hat
    error: np.ndarray  # (S, S) squared error, zero outside the brain


@dataclass(frozen=True, eq=False)
class SliceView:
    """What the panels show for one slice: one timestep, or the consensus of several."""
    slice: int
    timesteps: tuple[int, ...]
    seed: int
    recon: np.ndarray   # (S, S) reconstruction at timesteps[0]
    errors: np.ndarray  # (K, S, S) squared error per timestep

    @property
    def heat(self) -> np.ndarray:
        """(S, S) heat map: the error, or its mean over the consensus timesteps."""
        return self.errors[0] if len(self.errors) == 1 else self.errors.mean(axis=0)

    def mask(self, threshold: float, postprocess: bool, votes: int) -> np.ndarray:
        """(S, S) bool: thresholded (and post-processed) error; with several timesteps, pixels ≥ votes agree on."""
        pp = PostProcess(enabled=postprocess)
        masks = [make_mask(e, threshold, pp) for e in self.errors]
        return masks[0] if len(masks) == 1 else consensus_mask(masks, votes)

    def score(self, brain: np.ndarray) -> float:
        """The slice's anomaly score (99th percentile of the heat map inside the brain)."""
        return float(slice_scores(self.heat[None], brain[None])[0])


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

    def view(self, z: int, timesteps: Sequence[int], seed: int) -> SliceView | None:
        """The slice's view when every timestep is cached, else None."""
        results = [self.get(z, t, seed) for t in timesteps]
        if any(r is None for r in results):
            return None
        return SliceView(slice=z, timesteps=tuple(timesteps), seed=seed, recon=results[0].recon,
                         errors=np.stack([r.error for r in results]))  # (K, S, S)


def volume_mask(cache: ResultCache, slices: Sequence[int], n_slices: int, timesteps: Sequence[int], seed: int,
                threshold: float, postprocess: bool, votes: int, persist: int) -> np.ndarray | None:
    """(Z, S, S) mask of a whole volume whose `slices` are all cached, 3-D regions spanning fewer than `persist`
    slices removed (hygiene.keep_persistent); None while any of them is missing."""
    views = [cache.view(z, timesteps, seed) for z in slices]
    if not views or any(v is None for v in views):
        return None
    mask = np.zeros((n_slices,) + views[0].recon.shape, bool)                 # (Z, S, S)
    for z, view in zip(slices, views):
        mask[z] = view.mask(threshold, postprocess, votes)
    return keep_persistent(mask, persist)
