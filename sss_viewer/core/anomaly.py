"""Anomaly detection on slices: single-step reconstruction, squared-error heat map, mask, post-processing, consensus."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .config import Preset
from .diffusion import Diffusion
from .hygiene import MapOptions
from .normative import NormativeMap
from .volume import ModelVolume, lerp, percentile

DEFAULT_TIMESTEP = 300
DEFAULT_THRESHOLD = 0.3
CONSENSUS_TIMESTEPS = (250, 300, 350, 400)
DEFAULT_BATCH = {"cpu": 4, "cuda": 16}   # slices per model call; on 2 CPU cores 4 beats 16 (BENCHMARKS.md)
PRECISIONS = ("auto", "fp32", "bf16")     # the UNet's arithmetic; auto: bf16 where it is native (native_bf16)
PRECISION_HELP = ("the UNet's arithmetic: auto (default) is bf16 on a GPU and on a CPU with AMX/AVX-512 BF16, "
                  "else fp32; fp32 reproduces full-precision results everywhere")
_SEED_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)   # odd multipliers for hashing (seed, slice, timestep)
DRAW_SEED_STEP = 1_000_003   # noise draw j of seed s uses seed s + j * DRAW_SEED_STEP (draw 0: the seed itself)


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


def heat_map(x0: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """E_sq = (x0 - x0_hat)^2   (paper eq. 10)."""
    return (x0 - x0_hat).square()


def _dilate_in_plane(mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """3x3 binary dilation of each slice of a (B, H, W) bool stack (zero border): OR of row, then column shifts.
    An array or a tensor (on its device)."""
    rows = mask.clone() if isinstance(mask, torch.Tensor) else mask.copy()
    rows[:, 1:] |= mask[:, :-1]
    rows[:, :-1] |= mask[:, 1:]
    out = rows.clone() if isinstance(rows, torch.Tensor) else rows.copy()
    out[:, :, 1:] |= rows[:, :, :-1]
    out[:, :, :-1] |= rows[:, :, 1:]
    return out                                                            # (B, H, W)


def _pack_rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, slice, np.ndarray]:
    """Rows of a non-empty (B, H, W) bool stack that hold pixels, stacked as one image, a blank row after each run."""
    # A run is consecutive rows of one slice, so the image's 4-connected regions are the slices' regions, in the
    # same raster order. Returns rows (R,) (indices into the (B*H, W) stack), at (R,) (their image rows), the
    # columns that hold pixels and the image of those columns.
    b, h, w = mask.shape
    flat = mask.reshape(b * h, w)                                         # (B*H, W)
    rows = np.flatnonzero(flat.any(axis=1))                               # (R,)
    run_end = np.ones(len(rows), bool)                                    # (R,) a blank row follows this one
    run_end[:-1] = (np.diff(rows) > 1) | (rows[1:] % h == 0)
    at = np.arange(len(rows))                                             # (R,)
    at[1:] += np.cumsum(run_end[:-1])
    busy = flat[rows]                                                     # (R, W)
    cols = np.flatnonzero(busy.any(axis=0))
    span = slice(cols[0], cols[-1] + 1)
    packed = np.zeros((at[-1] + 1, span.stop - span.start), bool)         # (P, W')
    packed[at] = busy[:, span]
    return rows, at, span, packed


def _regions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-connected regions of each slice of a (B, H, W) bool tensor, on its device: the flat indices of its
    pixels (N,), ascending, and each pixel's region (N,), numbered 0, 1, ... in raster order over the stack (as
    ndimage.label's labels - 1).

    Every pixel starts named by itself (its place among the N). A sweep gives each run of pixels along a row,
    then along a column, its smallest name, then replaces every name by that pixel's own (pointer jumping).
    Names only fall and always name a pixel of the same region, so at the fixed point each region carries its
    first pixel's name: a handful of sweeps for blob-like regions.
    """
    b, h, w = mask.shape
    flat = mask.reshape(-1)
    pixels = torch.nonzero(flat).squeeze(1)                               # (N,) ascending
    place = torch.cumsum(flat, 0) - 1                                     # (B*H*W,) index among the N
    runs = []
    for dim, start in ((2, mask[:, :, 1:] & ~mask[:, :, :-1]), (1, mask[:, 1:] & ~mask[:, :-1])):
        first = mask.clone()                                              # (B, H, W) a run starts here
        first.narrow(dim, 1, mask.shape[dim] - 1).copy_(start)
        at = torch.where(first, torch.arange(flat.numel(), device=mask.device).view(b, h, w), -1)
        runs.append(place[at.cummax(dim).values.reshape(-1)[pixels]])     # (N,) the run's first pixel
    name = torch.arange(len(pixels), device=mask.device)                 # (N,)
    while True:
        before = name
        for run in runs:
            smallest = torch.full_like(name, len(name)).scatter_reduce_(0, run, name, "amin")
            name = smallest[run]
        name = name[name]
        if torch.equal(name, before):
            break
    return pixels, torch.unique(name, return_inverse=True)[1]


def _postprocess_tensor(out: torch.Tensor, pp: PostProcess) -> torch.Tensor:
    """postprocess's region step for a dilated (B, H, W) bool tensor with pixels, on its device (in place)."""
    pixels, region = _regions(out)                                        # (N,), (N,)
    areas = torch.bincount(region)                                        # (n,)
    keep = areas >= pp.min_area                                           # (n,)
    if pp.keep_largest:
        n, plane = len(areas), out.shape[1] * out.shape[2]
        slice_of = torch.zeros_like(areas).scatter_reduce_(0, region, pixels // plane, "amax")  # (n,) ascending
        # by slice, larger area, lower label: one integer key, (slice · (plane + 1) + plane - area) · n + label
        order = torch.argsort((slice_of * (plane + 1) + plane - areas) * n + torch.arange(n, device=out.device))
        start = torch.searchsorted(slice_of, slice_of)                    # (n,) first label of the region's slice
        rank = torch.empty_like(areas)                                    # (n,) place by area within its slice
        rank[order] = torch.arange(n, device=out.device) - start[order]
        k = pp.keep_largest                                               # a negative k drops |k| smallest
        keep &= rank < (k if k > 0 else torch.searchsorted(slice_of, slice_of, right=True) - start + k)
    out.view(-1)[pixels] = keep[region]
    return out


def _postprocess_array(out: np.ndarray, pp: PostProcess) -> np.ndarray:
    """postprocess's region step for a dilated (B, H, W) bool array with pixels, on the host (in place)."""
    rows, at, span, packed = _pack_rows(out)                              # (R,), (R,), W' columns, (P, W')
    labels, n = ndimage.label(packed)                                     # (P, W') 1..n in raster order over the stack
    ids = labels[packed]                                                  # (N,) region of each pixel
    areas = np.bincount(ids, minlength=n + 1)[1:]                         # (n,)
    keep = areas >= pp.min_area                                           # (n,)
    if pp.keep_largest:
        top_row = np.searchsorted(np.maximum.accumulate(labels.max(axis=1)), np.arange(1, n + 1))  # (n,) in image
        slice_of = (rows // out.shape[1])[np.searchsorted(at, top_row)]   # (n,) slice of each region, ascending
        order = np.lexsort((-areas, slice_of))                            # by slice, larger area, lower label
        start = np.searchsorted(slice_of, slice_of)                       # (n,) first label of the region's slice
        rank = np.empty(n, np.intp)                                       # (n,) place by area within its slice
        rank[order] = np.arange(n) - start[order]
        k = pp.keep_largest                                               # order[:k]: a negative k drops |k| smallest
        keep &= rank < (k if k > 0 else np.searchsorted(slice_of, slice_of, "right") - start + k)
    lut = np.concatenate(([False], keep))                                 # (n + 1,) label -> kept
    packed[packed] = lut[ids]
    out.reshape(-1, out.shape[2])[rows, span] = packed[at]                # the rest is empty already
    return out                                                            # (B, H, W)


def postprocess(mask: np.ndarray | torch.Tensor, pp: PostProcess = PostProcess()) -> np.ndarray | torch.Tensor:
    """Apply pp to a (H, W) or (B, H, W) boolean mask, each slice on its own (in one pass over the stack).
    An array on the host, or a tensor on its device (the same result)."""
    if mask.ndim == 2:
        return postprocess(mask[None], pp)[0]
    tensor = isinstance(mask, torch.Tensor)
    mask = mask.bool().contiguous() if tensor else np.asarray(mask, bool)
    if not pp.enabled:
        return mask
    out = _dilate_in_plane(mask) if pp.dilate else (mask.clone() if tensor else mask.copy())  # (B, H, W) our own
    if (pp.keep_largest == 0 and pp.min_area <= 0) or not out.any():
        return out
    return _postprocess_tensor(out, pp) if tensor else _postprocess_array(out, pp)


def make_mask(error: np.ndarray | torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
              pp: PostProcess = PostProcess()) -> np.ndarray | torch.Tensor:
    """E_seg = postprocess(E_sq > threshold)."""
    return postprocess(error > threshold, pp)


def consensus_mask(masks: Sequence[np.ndarray | torch.Tensor], votes: int | None = None) -> np.ndarray | torch.Tensor:
    """Common regions: pixels flagged by at least `votes` of the masks (default: a strict majority)."""
    need = votes if votes is not None else len(masks) // 2 + 1
    if not 1 <= need <= len(masks):
        raise ValueError(f"vote threshold {need} must be between 1 and the {len(masks)} timesteps")
    if isinstance(masks[0], torch.Tensor):
        return torch.stack([m.bool() for m in masks]).sum(dim=0) >= need
    return np.stack([np.asarray(m, bool) for m in masks]).sum(axis=0) >= need   # (K, ...) summed


def _slice_scores_tensor(error: torch.Tensor, brain: torch.Tensor | None) -> np.ndarray:
    """slice_scores on error's device: each slice's brain values sorted at once (the rest +inf, after them)."""
    flat = error.reshape(len(error), -1)                                  # (B, H*W)
    if not flat.is_floating_point():
        flat = flat.double()                                              # as the host path
    inside = torch.ones_like(flat, dtype=torch.bool) if brain is None else brain.reshape(flat.shape)
    ordered = flat.masked_fill(~inside, float("inf")).sort(dim=1).values  # (B, H*W) brain values first
    counts = inside.sum(dim=1).cpu().numpy()                              # (B,)
    position = (counts - 1) * (99 / 100)                                  # (B,) as percentile's, per slice
    k = np.minimum(position.astype(np.int64), counts - 1).clip(0)
    pair = torch.from_numpy(np.stack([k, np.minimum(k + 1, counts - 1).clip(0)], axis=1)).to(flat.device)
    a, b = ordered.gather(1, pair).cpu().numpy().T                        # (B,) each
    has_nan = (flat.isnan() & inside).any(dim=1).cpu().numpy()            # (B,)
    empty = (counts == 0) | has_nan
    a[empty] = b[empty] = 0
    scores = lerp(a, b, position - k).astype(np.float32)
    scores[has_nan] = np.nan
    return scores


def slice_scores(error: np.ndarray | torch.Tensor, brain: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Per-slice anomaly score: the 99th percentile of the heat map inside the brain (volume.percentile),
    (B, H, W) -> (B,) float32; 0 for a slice without brain, NaN for one that holds a NaN. Arrays on the host,
    or tensors on their device (the same scores)."""
    if isinstance(error, torch.Tensor):
        return _slice_scores_tensor(error, brain)
    error = np.asarray(error)
    if error.dtype.kind != "f":
        error = error.astype(np.float64)                                  # np.percentile's integer arithmetic
    if brain is None:
        values = error.reshape(-1).copy()                                 # (B * H * W,) slice after slice
        counts = np.full(len(error), np.prod(error.shape[1:], dtype=np.intp))
    else:
        values = error[brain]                                             # (N,) brain values, slice after slice
        counts = np.count_nonzero(brain, axis=tuple(range(1, brain.ndim)))  # (B,)
    scores = np.zeros(len(error), np.float32)
    for i, (start, n) in enumerate(zip(np.cumsum(counts) - counts, counts)):
        seg = values[start:start + n]                                     # (n,) a view: reordered in place
        if n:
            scores[i] = np.nan if np.isnan(seg).any() else percentile(seg, 99)
    return scores


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


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix arithmetic is native on device: a CUDA GPU, or a CPU with AMX or AVX-512 BF16
    instructions (there oneDNN's bf16 convolutions, with channels_last, ran the UNets 1.6-5.3x faster than
    fp32, BENCHMARKS.md; elsewhere bf16 is emulated and slower)."""
    if device.type == "cuda":
        return True
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def describe_machine(device: torch.device) -> str:
    """Platform, Python and torch versions and the device's name (a CPU's model and core count), for records."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"CPU {name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{platform.platform()}; Python {platform.python_version()}; torch {torch.__version__}; {name}"


class Detector:
    """Runs single-step sampling (or the iterative chain) batched over slices on one device."""

    def __init__(self, model: torch.nn.Module, preset: Preset, device: str | torch.device = "auto",
                 batch_size: int | None = None, compile: bool = False, precision: str = "auto", draws: int = 1,
                 normative: NormativeMap | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if draws < 1:
            raise ValueError(f"the number of noise draws must be at least 1, not {draws}")
        # Single step with K noise draws: x0_hat = mean over j of x0_hat(seed + j * DRAW_SEED_STEP), K model calls.
        self.draws = draws
        self.normative = normative                  # the checkpoint's healthy norm (MapOptions.normative), or None
        self.device = resolve_device(device)
        self.preset = preset
        self.diffusion = Diffusion(preset.diffusion, preset.noise)
        self.batch_size = batch_size or DEFAULT_BATCH.get(self.device.type, DEFAULT_BATCH["cpu"])
        self.cuda = self.device.type == "cuda"
        self.precision = ("bf16" if native_bf16(self.device) else "fp32") if precision == "auto" else precision
        # Layout: contiguous on CUDA (channels_last was 1.3x slower in bf16 on an H200), channels_last for bf16
        # on a CPU (oneDNN's blocked bf16 kernels: 1.2-2.4x over contiguous bf16 there); BENCHMARKS.md.
        self.layout = torch.channels_last if self.precision == "bf16" and not self.cuda else torch.contiguous_format
        self.model = model.to(self.device).eval().to(memory_format=self.layout)
        # torch.compile: one graph for one input shape, so every call is padded to batch_size slices; the
        # first call compiles (a minute or more).
        self.compiled = compile
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model

    @property
    def volume_device(self) -> torch.device | None:
        """Where a volume's preprocessing and mapping back run: this GPU, or None for the host (faster there)."""
        return self.device if self.cuda else None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = len(x)
        if self.compiled and b < self.batch_size:                        # pad to the compiled shape
            x = torch.cat([x, x.new_zeros(self.batch_size - b, *x.shape[1:])])
            t = torch.cat([t, t[:1].expand(self.batch_size - b)])
        with self._autocast():
            return self._forward(x.contiguous(memory_format=self.layout), t)[:b].float()

    def reconstruct(self, slices: np.ndarray, timestep: int = DEFAULT_TIMESTEP, seed: int = 0,
                    indices: Sequence[int] | None = None, brain: np.ndarray | None = None,
                    iterative: bool = False, progress: Callable[[int, int], bool] | None = None) -> Reconstruction:
        """x0_hat and E for model-space slices (B, S, S); indices name the slices for their noise seeds.

        progress(done, total) is called after each batch (or chain step); returning False cancels with
        InterruptedError.
        """
        indices = list(range(len(slices))) if indices is None else list(indices)
        recon = np.empty_like(slices, dtype=np.float32)                  # (B, S, S)
        error = np.empty_like(recon)                                      # (B, S, S)
        for start, x0_hat, err in self.batches(slices, timestep, seed, indices, brain, iterative, progress):
            recon[start:start + len(x0_hat)] = x0_hat.cpu().numpy()       # (b, S, S)
            error[start:start + len(x0_hat)] = err.cpu().numpy()
        return Reconstruction(slices=np.asarray(indices), timestep=timestep, recon=recon, error=error)

    def batches(self, slices: np.ndarray | torch.Tensor, timestep: int, seed: int, indices: Sequence[int],
                brain: np.ndarray | torch.Tensor | None = None, iterative: bool = False,
                progress: Callable[[int, int], bool] | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """reconstruct's batches as they finish: (first slice's place, x0_hat (b, S, S), E (b, S, S)) on this
        device, from slices and brain on the host or already there."""
        calls_per_slice = timestep + 1 if iterative else self.draws
        done, total = 0, len(slices) * calls_per_slice
        for start in range(0, len(slices), self.batch_size):
            idx = indices[start:start + self.batch_size]
            with torch.inference_mode():
                x0 = self._on_device(slices[start:start + len(idx)], torch.float32).unsqueeze(1)  # (b, 1, S, S)
                seeds = slice_seeds(seed, idx, timestep)                      # (b,)
                if iterative:
                    # Fresh noise each step from a generator tied to the batch's first slice.
                    gen = torch.Generator().manual_seed(int(seeds[0]))
                    for step in self.diffusion.iterative(self._eps, x0, timestep, generator=gen, seeds=seeds):
                        x0_hat = step.x
                        done += len(idx)
                        if progress is not None and progress(done, total) is False:
                            raise InterruptedError("cancelled")
                else:
                    x0_hat = torch.zeros_like(x0)                           # (b, 1, S, S) mean over the draws
                    for j in range(self.draws):
                        draw_seeds = seeds if j == 0 else slice_seeds(seed + j * DRAW_SEED_STEP, idx, timestep)
                        x0_hat += self.diffusion.single_step(self._eps, x0, timestep, seeds=draw_seeds) / self.draws
                        done += len(idx)
                        if progress is not None and progress(done, total) is False:
                            raise InterruptedError("cancelled")
                err = heat_map(x0, x0_hat)[:, 0]                             # (b, S, S)
                if brain is not None:
                    err *= self._on_device(brain[start:start + len(idx)], torch.bool)
            yield start, x0_hat[:, 0], err

    def _on_device(self, a: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """An array (copied: inputs may be read-only) or a tensor, on this device."""
        if isinstance(a, torch.Tensor):
            return a.to(self.device, dtype)
        return torch.tensor(a, dtype=dtype).to(self.device, non_blocking=True)


def _host(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor's values as a host array; an array as it is."""
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else a


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


def norm_slices(detector: Detector, volume: ModelVolume, first: int, last: int) -> np.ndarray:
    """The detector's healthy norm on slices first..last of the volume, (n, S, S); ValueError without one."""
    if detector.normative is None:
        raise ValueError("this checkpoint has no healthy norm; make one with sss-calibrate --normative-from")
    return detector.normative.model_slices(volume)[first:last + 1]


@torch.inference_mode()
def detect_volume(detector: Detector, volume: ModelVolume, timesteps: Sequence[int] = (DEFAULT_TIMESTEP,),
                  threshold: float = DEFAULT_THRESHOLD, pp: PostProcess = PostProcess(), votes: int | None = None,
                  seed: int = 0, slices: tuple[int, int] | None = None,
                  progress: Callable[[int, int], bool] | None = None,
                  options: MapOptions = MapOptions()) -> VolumeDetection:
    """Single-step detection on every slice of volume.slice_range (or `slices`, inclusive), batched.

    One timestep: mask = postprocess(E > threshold). Several (common regions): each timestep's mask is
    made that way and a pixel is kept when at least `votes` of them agree (default a majority).
    With a GPU detector (its volume_device) everything up to the results stays on the GPU.
    `options` (hygiene.MapOptions, all off by default) clean each timestep's heat map (lowpass, median, erode: on
    the host) before the threshold, add min_area to pp, and keep the volume mask's 3-D regions over at least
    `persist` slices; the returned error is the cleaned heat map (mean over the timesteps). options.normative
    subtracts the detector's healthy norm (ValueError when it has none).
    """
    first, last = volume.slice_range if slices is None else slices
    where = detector.volume_device
    x0, brain = volume.on_device(where) if where is not None else (volume.data, volume.brain_mask)
    x0, brain = x0[first:last + 1], brain[first:last + 1]                 # (n, S, S) each
    idx = list(range(first, last + 1))
    total = len(idx) * len(timesteps)
    start = time.perf_counter()
    runs = []                                                             # (recon, error) per timestep
    for k, t in enumerate(timesteps):
        step = None if progress is None else (lambda d, _t, k=k: progress(k * len(idx) + d, total))
        if where is None:
            r = detector.reconstruct(x0, t, seed=seed, indices=idx, brain=brain, progress=step)
            runs.append((r.recon, r.error))
        else:                                                             # kept on the GPU until the end
            done = list(detector.batches(x0, t, seed, idx, brain, progress=step))
            runs.append(tuple(torch.cat([d[j] for d in done]) for j in (1, 2)))
    if where is not None and where.type == "cuda":
        torch.cuda.synchronize(where)
    seconds = time.perf_counter() - start
    if options.map_level:                                                 # hygiene's maps: NumPy on the host
        x0, brain = _host(x0), _host(brain)
        norm = norm_slices(detector, volume, first, last) if options.normative else None  # (n, S, S)
        runs = [(r, options.clean_map(_host(e), brain, x0, r, norm)) for r, e in ((_host(r), e) for r, e in runs)]
    pp = options.postprocess(pp)
    masks = [make_mask(error, threshold, pp) for _, error in runs]
    mask = masks[0] if len(masks) == 1 else consensus_mask(masks, votes)
    errors = [e for _, e in runs]
    error = errors[0] if len(errors) == 1 else (torch.stack(errors).mean(dim=0) if isinstance(errors[0], torch.Tensor)
                                                else np.mean(errors, axis=0))
    scores = slice_scores(error, brain)
    recon, error, mask = (_host(v) for v in (runs[0][0], error, mask))
    mask = options.volume_mask(mask)                                      # (n, S, S) 3-D consistency
    return VolumeDetection(first_slice=first, timesteps=tuple(timesteps), recon=recon, error=error, mask=mask,
                           scores=scores, seconds=seconds)
