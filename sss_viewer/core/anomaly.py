"""Anomaly detection on slices: single-step reconstruction, squared-error heat map, mask, post-processing, consensus."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .config import Preset
from .diffusion import Diffusion
from .volume import ModelVolume

DEFAULT_TIMESTEP = 300
DEFAULT_THRESHOLD = 0.3
CONSENSUS_TIMESTEPS = (250, 300, 350, 400)
DEFAULT_BATCH = {"cpu": 4, "cuda": 16}   # slices per model call; on 2 CPU cores 4 beats 16 (BENCHMARKS.md)
_SEED_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)   # odd multipliers for hashing (seed, slice, timestep)


@dataclass(frozen=True)
class PostProcess:
    """Mask clean-up: 3x3 dilation, then keep the k largest connected regions of at least min_area pixels."""
    enabled: bool = True
    dilate: bool = True
    keep_largest: int = 1       # 0 keeps every region
    min_area: int = 0           # pixels; smaller regions are dropped


def slice_seeds(seed: int, slice_indices: Sequence[int], timestep: int) -> torch.Tensor:
    """One noise seed per (user seed, slice, timestep), so a slice's result never depends on its batch."""
    idx = torch.as_tensor(list(slice_indices), dtype=torch.int64)
    mixed = (seed * _SEED_MIX[0] + (idx + 1) * _SEED_MIX[1] + (timestep + 1) * _SEED_MIX[2]) % (2 ** 31 - 1)
    return mixed                                                          # (B,)


def heat_map(x0: np.ndarray, x0_hat: np.ndarray) -> np.ndarray:
    """E_sq = (x0 - x0_hat)^2   (paper eq. 10)."""
    return np.square(x0 - x0_hat, dtype=np.float32)


def postprocess(mask: np.ndarray, pp: PostProcess = PostProcess()) -> np.ndarray:
    """Apply pp to a (H, W) or (B, H, W) boolean mask, each slice on its own."""
    if not pp.enabled:
        return np.asarray(mask, bool)
    if mask.ndim == 3:
        return np.stack([postprocess(m, pp) for m in mask])
    out = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)) if pp.dilate else np.asarray(mask, bool)
    if pp.keep_largest == 0 and pp.min_area <= 0:
        return out
    labels, n = ndimage.label(out)
    if n == 0:
        return out
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]             # (n,)
    order = np.argsort(-areas, kind="stable")
    if pp.keep_largest:
        order = order[:pp.keep_largest]
    keep = order[areas[order] >= pp.min_area] + 1
    return np.isin(labels, keep)


def make_mask(error: np.ndarray, threshold: float = DEFAULT_THRESHOLD, pp: PostProcess = PostProcess()) -> np.ndarray:
    """E_seg = postprocess(E_sq > threshold)."""
    return postprocess(error > threshold, pp)


def consensus_mask(masks: Sequence[np.ndarray], votes: int | None = None) -> np.ndarray:
    """Common regions: pixels flagged by at least `votes` of the masks (default: a strict majority)."""
    stack = np.stack([np.asarray(m, bool) for m in masks])               # (K, ...)
    need = votes if votes is not None else len(masks) // 2 + 1
    if not 1 <= need <= len(masks):
        raise ValueError(f"vote threshold {need} must be between 1 and the {len(masks)} timesteps")
    return stack.sum(axis=0) >= need


def slice_scores(error: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """Per-slice anomaly score: the 99th percentile of the heat map inside the brain, (B, H, W) -> (B,)."""
    if brain is None:
        return np.percentile(error.reshape(len(error), -1), 99, axis=1).astype(np.float32)
    return np.array([np.percentile(e[b], 99) if b.any() else 0.0 for e, b in zip(error, brain)], np.float32)


@dataclass
class Reconstruction:
    """Single-step results for a batch of model-space slices."""
    slices: np.ndarray          # (B,) slice indices
    timestep: int
    recon: np.ndarray           # (B, S, S) x0_hat, float32
    error: np.ndarray           # (B, S, S) squared error, zero outside the brain when a brain mask was given


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but this PyTorch has no usable GPU; use --device cpu")
    return device


class Detector:
    """Runs single-step sampling (or the iterative chain) batched over slices on one device."""

    def __init__(self, model: torch.nn.Module, preset: Preset, device: str | torch.device = "auto",
                 batch_size: int | None = None):
        self.device = resolve_device(device)
        self.preset = preset
        self.diffusion = Diffusion(preset.diffusion, preset.noise)
        self.batch_size = batch_size or DEFAULT_BATCH.get(self.device.type, DEFAULT_BATCH["cpu"])
        self.cuda = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model(x, t).float()

    @torch.inference_mode()
    def reconstruct(self, slices: np.ndarray, timestep: int = DEFAULT_TIMESTEP, seed: int = 0,
                    indices: Sequence[int] | None = None, brain: np.ndarray | None = None,
                    iterative: bool = False, progress: Callable[[int, int], bool] | None = None) -> Reconstruction:
        """x0_hat and E for model-space slices (B, S, S); indices name the slices for their noise seeds.

        progress(done, total) is called after each batch (or chain step); returning False cancels with
        InterruptedError.
        """
        indices = list(range(len(slices))) if indices is None else list(indices)
        recon = np.empty_like(slices, dtype=np.float32)                  # (B, S, S)
        calls_per_slice = timestep + 1 if iterative else 1
        done, total = 0, len(slices) * calls_per_slice
        for start in range(0, len(slices), self.batch_size):
            idx = indices[start:start + self.batch_size]
            x0 = torch.tensor(slices[start:start + len(idx)], dtype=torch.float32)  # a copy: inputs may be read-only
            x0 = x0.to(self.device, non_blocking=True).unsqueeze(1)          # (b, 1, S, S)
            seeds = slice_seeds(seed, idx, timestep)                          # (b,)
            if iterative:
                # Fresh noise each step from a generator tied to the batch's first slice.
                gen = torch.Generator().manual_seed(int(seeds[0]))
                for step in self.diffusion.iterative(self._eps, x0, timestep, generator=gen, seeds=seeds):
                    x0_hat = step.x
                    done += len(idx)
                    if progress is not None and progress(done, total) is False:
                        raise InterruptedError("cancelled")
            else:
                x0_hat = self.diffusion.single_step(self._eps, x0, timestep, seeds=seeds)
                done += len(idx)
                if progress is not None and progress(done, total) is False:
                    raise InterruptedError("cancelled")
            recon[start:start + len(idx)] = x0_hat[:, 0].float().cpu().numpy()  # (b, S, S)
        error = heat_map(np.asarray(slices, np.float32), recon)
        if brain is not None:
            error *= brain
        return Reconstruction(slices=np.asarray(indices), timestep=timestep, recon=recon, error=error)


@dataclass
class VolumeDetection:
    """Whole-volume result in model space for the contiguous slices first_slice .. first_slice + n - 1."""
    first_slice: int
    timesteps: tuple[int, ...]
    recon: np.ndarray           # (n, S, S) x0_hat at timesteps[0]
    error: np.ndarray           # (n, S, S) squared error, mean over the timesteps
    mask: np.ndarray            # (n, S, S) bool, thresholded and post-processed (consensus over timesteps)
    scores: np.ndarray          # (n,) per-slice anomaly score (see slice_scores)
    seconds: float              # wall time of the model part

    @property
    def slice_indices(self) -> np.ndarray:
        return np.arange(self.first_slice, self.first_slice + len(self.mask))


def detect_volume(detector: Detector, volume: ModelVolume, timesteps: Sequence[int] = (DEFAULT_TIMESTEP,),
                  threshold: float = DEFAULT_THRESHOLD, pp: PostProcess = PostProcess(), votes: int | None = None,
                  seed: int = 0, slices: tuple[int, int] | None = None,
                  progress: Callable[[int, int], bool] | None = None) -> VolumeDetection:
    """Single-step detection on every slice of volume.slice_range (or `slices`, inclusive), batched.

    One timestep: mask = postprocess(E > threshold). Several (common regions): each timestep's mask is
    made that way and a pixel is kept when at least `votes` of them agree (default a majority).
    """
    first, last = volume.slice_range if slices is None else slices
    x0 = volume.data[first:last + 1]                                      # (n, S, S)
    brain = volume.brain_mask[first:last + 1]                             # (n, S, S)
    idx = list(range(first, last + 1))
    total = len(idx) * len(timesteps)
    start = time.perf_counter()
    runs = []
    for k, t in enumerate(timesteps):
        step = None if progress is None else (lambda d, _t, k=k: progress(k * len(idx) + d, total))
        runs.append(detector.reconstruct(x0, t, seed=seed, indices=idx, brain=brain, progress=step))
    seconds = time.perf_counter() - start
    masks = [make_mask(r.error, threshold, pp) for r in runs]
    mask = masks[0] if len(masks) == 1 else consensus_mask(masks, votes)
    error = runs[0].error if len(runs) == 1 else np.mean([r.error for r in runs], axis=0)
    return VolumeDetection(first_slice=first, timesteps=tuple(timesteps), recon=runs[0].recon, error=error,
                           mask=mask, scores=slice_scores(error, brain), seconds=seconds)
