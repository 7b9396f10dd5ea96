"""sss-bench: simplex noise, single-step vs iterative, whole-volume throughput and memory, side by side in one run;
and, when asked for (--parts reading), the viewer's reading room on a whole volume, without the model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from . import bad_input
from ..core.anomaly import (DEFAULT_BATCH, DEFAULT_TIMESTEP, Detector, describe_machine, detect_volume,
                            native_bf16, resolve_device, slice_seeds)
from ..core.config import PRESETS, NoiseConfig
from ..core.resources import DEMO_VOLUME, resource
from ..core.simplex import forget_geometry, octave_noise
from ..core.unet import UNet
from ..core.volume import ModelVolume, Volume, load_volume, prepare


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of `repeats` calls after `warmup` calls (the least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


class PeakMemory:
    """Peak memory of a block: CUDA peak allocated, or on Linux the process's peak RSS (VmHWM, reset first)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, float("nan")

    @staticmethod
    def _vm_hwm_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        elif Path("/proc/self/status").exists():
            self.peak_mb = self._vm_hwm_mb()


def package_octave_field(seed: int, size: int, cfg: NoiseConfig, z: float) -> np.ndarray:
    """The same octave sum as octave_noise, from the opensimplex package (as AnoDDPM computed it)."""
    import opensimplex
    gen = opensimplex.OpenSimplex(seed)
    grid = np.arange(size, dtype=np.float64)
    field = np.zeros((size, size))
    for k in range(cfg.octaves):
        f = cfg.frequency * 2.0 ** k
        field += cfg.persistence ** k * gen.noise3array(grid * f, grid * f, np.array([z * f]))[0]  # (H, W)
    return field


def bench_noise(device: torch.device, batch: int, size: int = 256, package_fields: int | None = None) -> dict:
    """Vectorised octave noise for `batch` fields vs the opensimplex package on the first `package_fields`
    (default all) of them, per field, and their largest difference. Ours cold (nothing kept: the grid's
    first use, summed directly), and warm (the grid used before: its operator kept, as for a volume's later
    batches)."""
    cfg = NoiseConfig(standardize=False)
    seeds = torch.arange(1, batch + 1)
    n_ref = batch if package_fields is None else min(package_fields, batch)

    def cold() -> torch.Tensor:                      # the shared geometry recomputed, as the package does
        forget_geometry()
        return octave_noise((batch, size, size), seeds, cfg, z=300.0, device=device)
    ours_s = timed(cold, device)
    warm_s = timed(lambda: octave_noise((batch, size, size), seeds, cfg, z=300.0, device=device), device)
    ours = octave_noise((batch, size, size), seeds, cfg, z=300.0, device=device)[:n_ref].cpu().numpy()
    start = time.perf_counter()
    ref = np.stack([package_octave_field(int(s), size, cfg, 300.0) for s in seeds[:n_ref]])
    package_s = time.perf_counter() - start
    return {"noise_fields": batch, "noise_size": size, "noise_ours_s": ours_s, "noise_package_fields": n_ref,
            "noise_package_s": package_s, "noise_speedup": (package_s / n_ref) / (ours_s / batch),
            "noise_ours_warm_s": warm_s, "noise_speedup_warm": (package_s / n_ref) / (warm_s / batch),
            "noise_max_abs_diff": float(np.abs(ours - ref).max())}


def bench_matmul(device: torch.device, dtype: torch.dtype | None = None) -> dict:
    """Measured matrix-product peak (2 n^3 FLOPs per product): bf16 8192^3 on CUDA, fp32 (or dtype) 2048^3 on
    a CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, dtype or torch.float32)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sec = timed(lambda: a @ b, device, repeats=10 if device.type == "cuda" else 3, warmup=3)
    return {"matmul_n": n, "matmul_dtype": str(dtype).removeprefix("torch."),
            "matmul_peak_tflops": 2 * n ** 3 / sec / 1e12}


def bench_sss_vs_iterative(preset_name: str, device: torch.device, lambdas: tuple[int, ...],
                           pairs: int = 9, precision: str = "auto") -> dict:
    """One slice, one model: single-step vs the iterative chain at each lambda, and one bare UNet call.

    The single step is timed once with nothing kept (the first slice at a new lambda), then in `pairs`
    back-to-back (UNet call, single step) pairs: the best of each, and the overhead around the UNet call as
    the median of the pairs' ratios - 1 (each pair sees the same load, which drifts on a shared machine).
    The slice's noise alone is timed right after a UNet call too (median), as it runs in a single step.
    """
    preset = PRESETS[preset_name]
    torch.manual_seed(0)
    det = Detector(UNet(preset.model), preset, device=device, batch_size=1, precision=precision)
    s = preset.model.image_size
    slice_ = np.tanh(np.random.default_rng(0).standard_normal((1, s, s))).astype(np.float32)
    x = torch.from_numpy(slice_).to(device)[:, None]
    t = torch.full((1,), lambdas[0], device=device)

    def unet() -> None:
        with torch.inference_mode():
            det._eps(x, t)
    out, unet_s = {"sss_preset": preset_name, "sss_precision": det.precision}, float("inf")
    for lam in lambdas:
        forget_geometry()                                    # the first slice at a new lambda, then the next ones
        out[f"sss_first_s_{lam}"] = timed(lambda: det.reconstruct(slice_, lam), device, repeats=1, warmup=0)
        det.reconstruct(slice_, lam)
        unet()
        times = np.array([(timed(unet, device, 1, 0), timed(lambda: det.reconstruct(slice_, lam), device, 1, 0))
                          for _ in range(pairs)])             # (pairs, 2)
        unet_s = min(unet_s, times[:, 0].min())
        seeds = slice_seeds(0, [0], lam)                     # the slice's own, as reconstruct draws them

        def noise_after_unet() -> float:
            unet()
            return timed(lambda: det.diffusion.noise_like(x, lam, seeds=seeds), device, 1, 0)
        out[f"sss_noise_s_{lam}"] = float(np.median([noise_after_unet() for _ in range(pairs)]))
        iter_s = timed(lambda: det.reconstruct(slice_, lam, iterative=True), device, repeats=1, warmup=0)
        out[f"sss_s_{lam}"], out[f"iterative_s_{lam}"] = times[:, 1].min(), iter_s
        out[f"sss_speedup_{lam}"] = iter_s / times[:, 1].min()
        out[f"sss_overhead_{lam}"] = float(np.median(times[:, 1] / times[:, 0])) - 1   # around the UNet call
    out["unet_call_s"] = unet_s
    return out


def count_flops(model: torch.nn.Module, s: int) -> int:
    """Forward FLOPs for one slice, counted by torch's flop counter (a multiply-add is 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 1, s, s), torch.zeros(1, dtype=torch.long))
    return counter.get_total_flops()


def bench_throughput(preset_name: str, device: torch.device, batch_sizes: list[int],
                     variants: dict[str, dict]) -> dict:
    """Model slices/s per batch size and variant (bf16, channels_last, cudnn.benchmark, compile), FLOPs and
    peak memory."""
    preset = PRESETS[preset_name]
    s = preset.model.image_size
    torch.manual_seed(0)
    base = UNet(preset.model).eval()
    flops = count_flops(base, s)
    rows = []
    for name, opts in variants.items():
        model = UNet(preset.model).eval().to(device)
        model.load_state_dict(base.state_dict())
        if opts.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        fn = torch.compile(model) if opts.get("compile") else model
        torch.backends.cudnn.benchmark = bool(opts.get("cudnn_benchmark"))   # autotuned convolutions per shape
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if opts.get("bf16") else nullcontext()
        for b in batch_sizes:
            x = torch.randn(b, 1, s, s, device=device)
            if opts.get("channels_last"):
                x = x.contiguous(memory_format=torch.channels_last)
            t = torch.full((b,), 300, device=device)

            def call(fn=fn, x=x, t=t):
                with torch.inference_mode(), amp:
                    fn(x, t)
            with PeakMemory(device) as mem:
                sec = timed(call, device, repeats=3, warmup=2 if opts.get("compile") else 1)
            rows.append({"variant": name, "batch": b, "slices_per_s": b / sec,
                         "tflops": flops * b / sec / 1e12, "peak_mem_mb": mem.peak_mb})
        del model, fn
    torch.backends.cudnn.benchmark = False
    best = max(rows, key=lambda r: r["slices_per_s"])
    return {"preset": preset_name, "flops_per_slice": flops, "rows": rows, "best": best}


def synthetic_volume(n_slices: int, s: int) -> np.ndarray:
    """A canonical (X, Y, Z) = (s, s, n_slices) float32 volume: a noisy ellipsoid 'brain' on a zero background."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[-1:1:complex(0, n_slices), -1:1:complex(0, s), -1:1:complex(0, s)]
    inside = (xx ** 2 + yy ** 2 + 0.3 * zz ** 2) < 0.8
    data = np.where(inside, 100 + 20 * rng.standard_normal(inside.shape), 0).astype(np.float32)
    return np.ascontiguousarray(data.transpose(2, 1, 0))                      # (X, Y, Z)


def bench_volume(preset_name: str, device: torch.device, n_slices: int, batch: int, compile: bool = False,
                 precision: str = "auto") -> dict:
    """End to end on a synthetic brain volume: preprocessing, detection (noise + model), mapping back; the
    volume stages on the detector's volume_device (a GPU's, else the host), the UNet compiled or not."""
    preset = PRESETS[preset_name]
    s = preset.model.image_size
    data = synthetic_volume(n_slices, s)                                      # (X, Y, Z)
    torch.manual_seed(0)
    det = Detector(UNet(preset.model), preset, device=device, batch_size=batch, compile=compile, precision=precision)
    where = det.volume_device

    def run() -> dict:
        start = time.perf_counter()
        mv = prepare(data, preset.preprocess, device=where)
        t_prep = time.perf_counter()
        result = detect_volume(det, mv, slices=(0, n_slices - 1))
        t_det = time.perf_counter()
        mv.to_canonical(result.mask, "nearest", result.first_slice, device=where)
        mv.to_canonical(result.error, "linear", result.first_slice, device=where)
        t_back = time.perf_counter()
        return {"preprocess_s": t_prep - start, "detect_s": t_det - t_prep, "model_s": result.seconds,
                "postprocess_s": (t_det - t_prep) - result.seconds, "map_back_s": t_back - t_det,
                "volume_total_s": t_back - start}

    # CUDA: one full warm-up run (lazy kernel loading), then the best of three; a CPU: one run after
    # warming up on one batch.
    if device.type == "cuda":
        run()
    else:
        detect_volume(det, prepare(data[..., :batch], preset.preprocess))
    best = min((run() for _ in range(3 if device.type == "cuda" else 1)), key=lambda r: r["volume_total_s"])
    x, seeds = torch.zeros(batch, 1, s, s, device=device), torch.arange(batch)
    noise_s = timed(lambda: det.diffusion.noise_like(x, DEFAULT_TIMESTEP, seeds=seeds), device)
    best["noise_s"] = noise_s * -(-n_slices // batch)         # the noise fields alone, timed apart (in model_s)
    return {"volume_preset": preset_name, "volume_slices": n_slices, "volume_batch": batch,
            "volume_compiled": compile, "volume_precision": det.precision, **best}


def synthetic_findings(mv: ModelVolume, n_blobs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A model-space heat map (Z, S, S) float32 and mask (Z, S, S) bool for `mv`: a faint background error in the
    brain, and `n_blobs` ellipsoidal blobs (radii 1 to 10 model pixels, geometric steps; as thick in mm across
    slices) centred at random brain voxels of the kept slices, each masked inside and glowing around (heat peak
    0.3 to 1, Gaussian fall-off). Blobs may touch, so the lesion list can hold fewer regions. Both 0 outside the
    slice range, as a whole-volume run leaves them."""
    rng = np.random.default_rng(seed)
    n_z, s, _ = mv.data.shape
    first, last = mv.slice_range
    brain = mv.brain_mask.copy()                                              # (Z, S, S)
    brain[:first], brain[last + 1:] = False, False
    heat = np.where(brain, rng.gamma(1.0, 0.01, brain.shape), 0).astype(np.float32)   # (Z, S, S)
    mask = np.zeros(brain.shape, bool)
    centres = np.argwhere(brain)                                              # (m, 3) brain voxels
    slices_per_px = mv.pixel_mm / mv.spacing[2]
    for r, peak in zip(np.geomspace(1.0, 10.0, n_blobs), rng.uniform(0.3, 1.0, n_blobs)):
        cz, cv, cu = centres[rng.integers(len(centres))]
        rz, reach = r * slices_per_px, 2.0                                    # the glow reaches 2 radii
        box = tuple(slice(max(0, int(c - reach * rad)), min(n, int(c + reach * rad) + 2))
                    for c, rad, n in ((cz, rz, n_z), (cv, r, s), (cu, r, s)))
        z, v, u = np.ogrid[box]
        d2 = ((z - cz) / rz) ** 2 + ((v - cv) / r) ** 2 + ((u - cu) / r) ** 2     # box-shaped, squared radii
        inside = brain[box]
        mask[box] |= (d2 <= 1) & inside
        heat[box] = np.maximum(heat[box], np.where(inside, peak * np.exp(-d2), 0).astype(np.float32))
    return heat, mask


def _cursor_path(n: int, lows: tuple[int, int, int], highs: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """n cursor positions (z, v, u), each one voxel on from the last along every axis, bouncing between lows and
    highs (inclusive), from the middle: every move changes all three planes."""
    def bounce(i: int, lo: int, hi: int) -> int:
        span = max(hi - lo, 1)
        k = (i + span // 2) % (2 * span)
        return lo + (k if k <= span else 2 * span - k)
    return [tuple(bounce(i, lo, hi) for lo, hi in zip(lows, highs)) for i in range(1, n + 1)]


def bench_reading(shape: tuple[int, int, int] = (240, 240, 155), preset_name: str = "small", blobs: int = 40,
                  moves: int = 200, repeats: int = 5, widget_size: tuple[int, int] = (1000, 800)) -> dict:
    """The viewer's reading room on a synthetic volume, without any model call (nothing is built or loaded).

    A canonical volume of `shape` (X, Y, Z) voxels of 1 mm (BraTS: 240 x 240 x 155), prepared at the preset's
    preprocessing, and model-space results from synthetic_findings with `blobs` blobs. Times, median of
    `repeats` runs (after one untimed): the results mapped back to the canonical grid (VolumeMaps.canonical_mask
    and canonical_heat, as the lesion table, overlap and report use them) and lesion_list on them. Then
    OrthoViews shown at widget_size: `moves` crosshair moves (each one voxel along all three axes, so all three
    planes are sliced and drawn again), each set_cursor + processEvents + a synchronous repaint, in ms per move
    (median and 95th percentile) and the planes' paint events per move, with the mask overlay as contour, as
    fill, and the heat overlay. Last, write_report to a temporary PDF with every region listed (its MAX_REGIONS
    largest get a page): seconds, pages, bytes. Qt is imported here only (ensure_app: offscreen unless
    QT_QPA_PLATFORM says otherwise).
    """
    import tempfile
    from datetime import datetime

    from PySide6.QtCore import QEvent, QObject

    from ..core.lesions import lesion_list
    from ..gui.planes import OrthoViews
    from ..gui.report import ReportContent, ensure_app, write_report
    from ..gui.results import VolumeMaps

    preset = PRESETS[preset_name]
    x, y, z = shape
    data = synthetic_volume(z, max(x, y))[:x, :y]                             # (X, Y, Z)
    volume = Volume.from_array(data, name="synthetic volume")
    start = time.perf_counter()
    mv = prepare(volume, preset.preprocess)
    prepare_s = time.perf_counter() - start
    heat, mask = synthetic_findings(mv, blobs)                                # (Z, S, S) each

    def median_of(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times))
    to_mask_s = median_of(lambda: VolumeMaps(mv, volume, heat, mask).canonical_mask)
    to_heat_s = median_of(lambda: VolumeMaps(mv, volume, heat, mask).canonical_heat)
    maps = VolumeMaps(mv, volume, heat, mask)
    c_mask, c_heat = maps.canonical_mask, maps.canonical_heat                 # (X, Y, Z)
    lesions_s = median_of(lambda: lesion_list(c_mask, c_heat, volume))
    lesions = lesion_list(c_mask, c_heat, volume)

    class PaintCounter(QObject):
        """Counts the paint events of the planes' image areas (the proof that a move drew them)."""
        paints = 0

        def eventFilter(self, watched, event) -> bool:
            self.paints += event.type() == QEvent.Type.Paint
            return False

    app = ensure_app()
    planes = OrthoViews()
    planes.resize(*widget_size)
    planes.show()
    counter = PaintCounter()
    for view in planes.views.values():
        view.canvas.viewport().installEventFilter(counter)
    planes.set_volume(mv.data, mv.spacing[2] / mv.pixel_mm)
    planes.set_overlay(heat, mask)
    app.processEvents()
    brain = np.argwhere(mv.brain_mask[mv.slice_range[0]:mv.slice_range[1] + 1])   # the kept slices' brain
    lows = tuple(int(v) for v in brain.min(axis=0) + (mv.slice_range[0], 0, 0))
    highs = tuple(int(v) for v in brain.max(axis=0) + (mv.slice_range[0], 0, 0))
    path = _cursor_path(moves + 10, lows, highs)                              # the first 10 untimed
    out = {"reading_shape": list(shape), "reading_preset": preset_name, "reading_model_size": mv.image_size,
           "reading_blobs": blobs, "reading_mask_fraction": float(mask.mean()), "reading_lesions": len(lesions),
           "reading_prepare_s": prepare_s, "reading_canonical_mask_s": to_mask_s,
           "reading_canonical_heat_s": to_heat_s, "reading_lesion_list_s": lesions_s, "reading_moves": moves,
           "reading_widget_size": list(widget_size)}
    try:
        for mode, style in (("contour", "contour"), ("fill", "fill"), ("heat", "contour")):
            planes.overlay_combo.setCurrentIndex(planes.overlay_combo.findData("heat" if mode == "heat" else "mask"))
            planes.set_mask_style(style, 0.6)
            times = []
            for i, cursor in enumerate(path):
                if i == 10:
                    counter.paints = 0
                start = time.perf_counter()
                planes.set_cursor(*cursor)
                app.processEvents()       # the scene's updates: each plane's image area is painted here
                planes.repaint()          # and anything left, before the clock stops
                if i >= 10:
                    times.append(time.perf_counter() - start)
            ms = 1e3 * np.array(times)
            out[f"reading_paints_per_move_{mode}"] = counter.paints / moves
            out[f"reading_move_ms_median_{mode}"] = float(np.median(ms))
            out[f"reading_move_ms_p95_{mode}"] = float(np.percentile(ms, 95))
    finally:
        planes.close()
        planes.deleteLater()
        app.processEvents()

    content = ReportContent(title="synthetic volume", input_lines=[("Input", " × ".join(map(str, shape)) + " voxels")],
                            model_lines=[("Model", "none: synthetic results")], settings_lines=[],
                            volume=volume, heat=c_heat, mask=c_mask, lesions=lesions, window=None,
                            created=datetime.now())
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.pdf"
        start = time.perf_counter()
        pages = write_report(report, content)
        out["reading_report_s"] = time.perf_counter() - start
        out["reading_report_pages"], out["reading_report_bytes"] = pages, report.stat().st_size
    return out


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n## {title}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def bench_align(preset_name: str = "small") -> dict:
    """The MNI alignment's own cost (core/align.py) on a BraTS-sized scan (240 × 240 × 155, 1 mm): the bundled
    demo brain tilted (8°, −6°), scaled 1.1 and shifted onto that grid, registered and resampled, prepared for
    the preset, and a heat map and a mask mapped back onto its voxels (no model call: the volume part's)."""
    demo = load_volume(resource(DEMO_VOLUME))
    tilt = np.eye(4)
    tilt[:3, :3] = 1.1 * Rotation.from_euler("xz", [8, -6], degrees=True).as_matrix()
    tilt[:3, 3] = (4.0, -7.0, 5.0)
    grid = np.eye(4)
    grid[:3, 3] = (-120.0, -130.0, -70.0)                                    # scan voxel → world (mm)
    shape = (240, 240, 155)
    to_demo = np.linalg.inv(demo.canonical_affine) @ tilt @ grid              # scan voxel → demo voxel
    scan = Volume.from_array(ndimage.affine_transform(demo.data, to_demo, output_shape=shape, order=1), grid)
    cfg = replace(PRESETS[preset_name].preprocess, align="mni-affine")
    start = time.perf_counter()
    mv = prepare(scan, cfg)                                                    # registration + resampling + prepare
    t_prep = time.perf_counter()
    maps = np.zeros(mv.data.shape, np.float32)                                 # (Z, S, S)
    mv.to_canonical(maps, "linear")
    t_heat = time.perf_counter()
    mv.to_canonical(maps > 0, "nearest")
    t_mask = time.perf_counter()
    return {"align_shape": list(shape), "align_preset": preset_name, "align_registration_s": mv.alignment.seconds,
            "align_prepare_s": t_prep - start, "align_heat_back_s": t_heat - t_prep, "align_mask_back_s": t_mask - t_heat,
            "align_total_s": t_mask - start, "align_overlap": mv.alignment.overlap}


PARTS = ("noise", "sss", "throughput", "volume", "align", "compile", "reading")
DEFAULT_PARTS = PARTS[:-1]   # reading measures the viewer (Qt), not the engine: only when asked for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sss-bench", description=__doc__)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here (rewritten after each part)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer fields, slices and batch sizes")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="CUDA: leave out the torch.compile variants (their compilation takes minutes)")
    parser.add_argument("--parts", type=lambda v: v.split(","), default=list(DEFAULT_PARTS), metavar="P1,P2",
                        help=f"measure only these parts, of {','.join(PARTS)} (default all but reading, the "
                             "viewer's planes, lesion list and report without the model, which needs Qt; the "
                             "matrix-product peak is always measured)")
    args = parser.parse_args(argv)
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {','.join(PARTS)}")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return bad_input("sss-bench", e)
    cuda = device.type == "cuda"
    res: dict = {"device": str(device), "machine": describe_machine(device), "torch": torch.__version__,
                 "date": time.strftime("%Y-%m-%d")}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))

    res.update(bench_matmul(device))
    peaks = {"fp32": res["matmul_peak_tflops"], "bf16": res["matmul_peak_tflops"]}   # CUDA: both against bf16's
    rows = [(f"{res['matmul_dtype']} {res['matmul_n']}^3", f"{peaks['fp32']:.1f} TFLOP/s")]
    if not cuda and native_bf16(device):               # a CPU's bf16 rows against its own bf16 peak
        bf16 = bench_matmul(device, torch.bfloat16)
        res["matmul_bf16_peak_tflops"] = peaks["bf16"] = bf16["matmul_peak_tflops"]
        rows.append((f"bfloat16 {bf16['matmul_n']}^3", f"{peaks['bf16']:.1f} TFLOP/s"))
    print_table("Matrix-product peak, measured", rows)
    save()

    if "noise" in args.parts:
        noise_part(res, device, args.quick)
        save()
    if "sss" in args.parts:
        sss_part(res, device)
        save()
    if "throughput" in args.parts:
        for name in ("small", "paper"):
            throughput_part(res, name, device, args.quick, peaks)
            save()
    if "volume" in args.parts:
        # CUDA: both presets, the UNet as it is and (unless --no-compile) compiled; a CPU: small, in its
        # default precision and, where that is bf16, in fp32 too.
        compiles = (False, True) if args.compile else (False,)
        runs = ([(name, c, "auto") for c in compiles for name in ("small", "paper")] if cuda
                else [("small", False, "auto")] + ([("small", False, "fp32")] if native_bf16(device) else []))
        for name, compiled, precision in runs:
            vol = bench_volume(name, device, n_slices=150 if (cuda or not args.quick) else 40,
                               batch=150 if cuda else DEFAULT_BATCH["cpu"], compile=compiled, precision=precision)
            suffix = ("_compiled" if compiled else "") + ("_fp32" if precision == "fp32" else "")
            res.update({f"{k}_{name}{suffix}": v for k, v in vol.items()})
            if not suffix:       # the last plain run (paper on CUDA, small on a CPU) under the plain keys too
                res.update(vol)
            print_table(f"Whole volume end to end, {vol['volume_slices']} slices, {name} preset, batch "
                        f"{vol['volume_batch']}, {vol['volume_precision']}{', compiled UNet' if compiled else ''}",
                        [(k, f"{vol[k]:.3f} s") for k in ("preprocess_s", "noise_s", "model_s", "postprocess_s",
                                                          "map_back_s", "volume_total_s")])
            save()
    if "align" in args.parts:
        res.update(bench_align())
        print_table(f"MNI alignment, no model: {'x'.join(map(str, res['align_shape']))} scan, {res['align_preset']} "
                    f"preset (brain overlap with the template {res['align_overlap']:.3f})",
                    [(k, f"{res[k]:.3f} s") for k in ("align_registration_s", "align_prepare_s", "align_heat_back_s",
                                                       "align_mask_back_s", "align_total_s")])
        save()
    if "reading" in args.parts:
        reading_part(res, args.quick)
        save()
    if cuda and args.compile and "compile" in args.parts:   # last: compiling a UNet takes a minute or more
        for name in ("paper", "small"):
            tp = bench_throughput(name, device, [150], {"bf16+compile": {"bf16": True, "compile": True}})
            res.setdefault(f"throughput_{name}", []).extend(tp["rows"])
            res[f"compiled_slices_per_s_{name}"] = tp["best"]["slices_per_s"]
            print_table(f"Compiled, {name} preset", [
                (f"{r['variant']}, batch {r['batch']}", f"{r['slices_per_s']:.2f} slices/s, {r['tflops'] * 1e3:.1f} "
                 f"GFLOP/s ({100 * r['tflops'] / peaks['bf16']:.1f}% of the matmul peak)") for r in tp["rows"]])
            save()
    return 0


def noise_part(res: dict, device: torch.device, quick: bool) -> None:
    if device.type == "cuda":   # a volume's worth of fields on the GPU; the package's pure Python gets two of them
        res.update(bench_noise(device, batch=16 if quick else 150, size=256, package_fields=2))
    else:
        res.update(bench_noise(device, batch=2 if quick else 8, size=128 if quick else 256))
    print_table(f"Simplex noise: 6-octave {res['noise_size']}x{res['noise_size']} fields", [
        ("fields (ours / package)", f"{res['noise_fields']} / {res['noise_package_fields']}"),
        ("ours, cold / warm (s)", f"{res['noise_ours_s']:.4f} / {res['noise_ours_warm_s']:.4f}"),
        ("opensimplex package (s)", f"{res['noise_package_s']:.2f}"),
        ("speed-up per field, cold / warm", f"{res['noise_speedup']:.0f}x / {res['noise_speedup_warm']:.0f}x"),
        ("max |difference|", f"{res['noise_max_abs_diff']:.2e}")])


def sss_part(res: dict, device: torch.device) -> None:
    """The detector's default precision; on a CPU where that is bf16, fp32 too (keys ending in _fp32)."""
    cpu_bf16 = device.type == "cpu" and native_bf16(device)
    for precision, suffix in [("auto", "")] + ([("fp32", "_fp32")] if cpu_bf16 else []):
        r = bench_sss_vs_iterative("paper" if device.type == "cuda" else "small", device, (250, 300),
                                   precision=precision)
        res.update({k + suffix: v for k, v in r.items()})
        print_table(f"Single-step vs iterative, one slice, {r['sss_preset']} preset, {r['sss_precision']}", [
            ("one UNet call (s)", f"{r['unet_call_s']:.4f}")] + [
            (f"lambda={lam}: SSS / iterative (s)", f"{r[f'sss_s_{lam}']:.4f} / {r[f'iterative_s_{lam}']:.2f}  "
             f"ratio {r[f'sss_speedup_{lam}']:.0f}x, overhead {100 * r[f'sss_overhead_{lam}']:.1f}% (noise "
             f"{r[f'sss_noise_s_{lam}']:.4f} s; first slice at this lambda {r[f'sss_first_s_{lam}']:.4f} s)")
            for lam in (250, 300)])


def throughput_part(res: dict, name: str, device: torch.device, quick: bool, peaks: dict[str, float]) -> None:
    if device.type == "cuda":
        sizes = [1, 16] if quick else [1, 16, 64, 150]
        variants = {"fp32": {}, "bf16": {"bf16": True},
                    "bf16+channels_last": {"bf16": True, "channels_last": True},
                    "bf16+cudnn.benchmark": {"bf16": True, "cudnn_benchmark": True}}
    else:   # bf16 where the CPU has it natively (elsewhere it is emulated: slow, and not what the tools use)
        sizes = ([1, 8] if quick else [1, 4, 16]) if name == "small" else ([1] if quick else [1, 4])
        variants = {"fp32": {}}
        if native_bf16(device):
            variants.update({"bf16": {"bf16": True}, "bf16+channels_last": {"bf16": True, "channels_last": True}})
    tp = bench_throughput(name, device, sizes, variants)
    res[f"slices_per_s_{name}"] = tp["best"]["slices_per_s"]
    res[f"flops_per_slice_{name}"] = tp["flops_per_slice"]
    res[f"best_{name}"] = tp["best"]
    res[f"throughput_{name}"] = tp["rows"]
    for r in tp["rows"]:
        r["peak_fraction"] = r["tflops"] / peaks["bf16" if "bf16" in r["variant"] else "fp32"]
    res[f"peak_fraction_{name}"] = tp["best"]["peak_fraction"]
    print_table(f"Throughput, {name} preset ({tp['flops_per_slice'] / 1e9:.1f} GFLOP per slice)", [
        (f"{r['variant']}, batch {r['batch']}", f"{r['slices_per_s']:.2f} slices/s, {r['tflops'] * 1e3:.1f} "
         f"GFLOP/s ({100 * r['peak_fraction']:.1f}% of its type's matmul peak), peak {r['peak_mem_mb']:.0f} MB")
        for r in tp["rows"]])


def reading_part(res: dict, quick: bool) -> None:
    """The reading room on a BraTS-sized volume (240 x 240 x 155, 1 mm) at the small preset; no model call."""
    r = bench_reading(moves=50 if quick else 200, repeats=3 if quick else 5)
    res.update(r)
    x, y, z = r["reading_shape"]
    w, h = r["reading_widget_size"]
    print_table(f"Reading room, no model: {x}x{y}x{z} volume, {r['reading_preset']} preset "
                f"({r['reading_model_size']}^2 model space), {r['reading_lesions']} regions", [
        ("results to the canonical grid: mask / heat (s)",
         f"{r['reading_canonical_mask_s']:.3f} / {r['reading_canonical_heat_s']:.3f}"),
        ("lesion list (s)", f"{r['reading_lesion_list_s']:.3f}")] + [
        (f"crosshair move, 3 planes at {w}x{h}, {mode} (ms)",
         f"median {r[f'reading_move_ms_median_{mode}']:.1f}, 95th percentile {r[f'reading_move_ms_p95_{mode}']:.1f} "
         f"({r['reading_moves']} moves, {r[f'reading_paints_per_move_{mode}']:.2f} plane paints each)")
        for mode in ("contour", "fill", "heat")] + [
        ("PDF report (s)", f"{r['reading_report_s']:.2f}, {r['reading_report_pages']} pages, "
                           f"{r['reading_report_bytes'] / 1e6:.1f} MB")])


if __name__ == "__main__":
    sys.exit(main())
