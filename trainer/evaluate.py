"""sss-eval: the paper's evaluation (Table 2, Figure 8) of a checkpoint on labelled cases, SSS vs AnoDDPM and a
model-free baseline, plus the per-volume metrics the field reports."""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import sss_viewer
from sss_viewer.cli import bad_input
from sss_viewer.core.anomaly import (CONSENSUS_TIMESTEPS, DEFAULT_THRESHOLD, PRECISION_HELP, PRECISIONS, PostProcess,
                                     Reconstruction, consensus_mask, make_mask)
from sss_viewer.core.checkpoint import Recommended, load_detector, preset_to_dict
from sss_viewer.core.config import PreprocessConfig
from sss_viewer.core.files import atomic_write_text
from sss_viewer.core.hygiene import MapOptions, keep_persistent
from sss_viewer.core.metrics import all_metrics, average_precision, dice, roc_auc
from sss_viewer.core.inputs import open_scan
from sss_viewer.core.volume import ModelVolume, load_mask, prepare

from . import figures
from .baselines import IntensityBaseline, lesion_sign
from .calibrate import DEFAULT_BUDGET, FINE_STEP, THRESHOLDS, Curves, smallest_within_budget
from .data import healthy_scan
from .png import upscale, write_png

SLICES_PER_VOLUME = 4                                   # the paper: four equidistant slices per volume
METRICS = ("dice", "iou", "precision", "recall", "auc")
TABLE_COLUMNS = ("method", "n_slices", "dice_mean", "dice_std", "iou_mean", "iou_std", "precision_mean",
                 "precision_std", "recall_mean", "recall_std", "auc_mean", "auc_std", "time_per_slice_s")  # contract
# Best-threshold sweeps of the squared error: 0.01, ..., 0.04 (calibrated thresholds lie near 0.05), 0.05, ..., 1.00
SWEEP_THRESHOLDS = (0.01, 0.02, 0.03, 0.04) + tuple(round(0.05 * k, 2) for k in range(1, 21))
INTENSITY_SWEEP = tuple(round(0.05 * k, 2) for k in range(-20, 20))   # -1.00, -0.95, ..., 0.95: signed intensity
VOLUME_METRICS = ("dice", "best_dice", "auroc", "auprc", "slice_dice")  # per volume (slice_dice: its protocol
#                                                                          slices of the whole-volume mask)
FIGURE_ROWS = 4
FIGURE_PANEL_MIN = 192                                  # smallest panel side in the figure, pixels
FIGURE_HEAT_MAX = 1.0                                   # squared error shown at the top of the colormap
MANIFEST_COLUMNS = ("case", "modality", "image", "mask")


@dataclass(frozen=True)
class Method:
    """One row of Table 2: how heat maps at its timesteps (or the baseline's intensity score) become a mask."""
    name: str                    # contract name, e.g. "sss300_pp"
    label: str                   # row label in table.md
    timesteps: tuple[int, ...]   # one heat map per timestep; none: the model-free intensity baseline
    iterative: bool              # AnoDDPM's reverse chain instead of one model call
    postprocess: bool            # 3x3 dilation + largest connected region
    options: MapOptions = MapOptions()   # map hygiene beyond the paper (name suffixes _lp, _med, _er, _min, _3d)

    @property
    def model_free(self) -> bool:
        """The intensity baseline: its heat map is the signed image intensity (baselines.IntensityBaseline)."""
        return not self.timesteps

    @property
    def sweep(self) -> tuple[float, ...]:
        """The thresholds a best-threshold Dice tries, in the heat map's units."""
        return INTENSITY_SWEEP if self.model_free else SWEEP_THRESHOLDS

    def segment(self, errors: Sequence[np.ndarray], threshold: float, volume: bool = False) -> np.ndarray:
        """Mask from one (n, S, S) heat map per timestep: E > threshold (+ post-processing, + min_area); several:
        majority vote. volume: the maps are a whole volume's consecutive slices, so persist applies too."""
        pp = self.options.postprocess(PostProcess(enabled=self.postprocess))
        masks = [make_mask(e, threshold, pp) for e in errors]
        mask = masks[0] if len(masks) == 1 else consensus_mask(masks)
        return keep_persistent(mask, self.options.persist) if volume and self.options.persist else mask

    @staticmethod
    def heat(errors: Sequence[np.ndarray]) -> np.ndarray:
        """The score map for AUC: the one heat map, or the squared error averaged over the timesteps."""
        return errors[0] if len(errors) == 1 else np.mean(errors, axis=0)

    def keys(self) -> list[tuple[int, bool]]:
        """The reconstructions it needs, as (timestep, iterative)."""
        return [(t, self.iterative) for t in self.timesteps]


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("anoddpm250", "AnoDDPM t = 250", (250,), True, False),
    Method("anoddpm300", "AnoDDPM t = 300", (300,), True, False),
    Method("anoddpm250_pp", "AnoDDPM t = 250 (with postprocessing)", (250,), True, True),
    Method("anoddpm300_pp", "AnoDDPM t = 300 (with postprocessing)", (300,), True, True),
    Method("sss250", "SSS t = 250", (250,), False, False),
    Method("sss300", "SSS t = 300", (300,), False, False),
    Method("sss250_pp", "SSS t = 250 (with postprocessing)", (250,), False, True),
    Method("sss300_pp", "SSS t = 300 (with postprocessing)", (300,), False, True),
    # Common regions: the post-processed masks at 250, 300, 350, 400, a pixel kept when a majority (3 of 4) agree.
    Method("consensus", "SSS — common regions", CONSENSUS_TIMESTEPS, False, True),
    Method("intensity", "Intensity threshold (no model)", (), False, False),
    Method("intensity_pp", "Intensity threshold (no model, with postprocessing)", (), False, True),
)}
BASELINES = ("intensity", "intensity_pp")
DEFAULT_METHODS = ("sss250", "sss300", "sss250_pp", "sss300_pp", "consensus", *BASELINES)
_METHOD_NAME = re.compile(r"^(sss|anoddpm)(\d{1,3})(?:_lp(\d+(?:\.\d+)?))?(?:_med(\d+))?(?:_er(\d+))?(_nm)?"
                          r"(?:_min(\d+))?(?:_3d(\d+))?(_pp)?$")
METHOD_GRAMMAR = ("sss<T>[_lp<sigma>][_med<k>][_er<px>][_nm][_min<px>][_3d<n>][_pp] (anoddpm<T>... alike): T the "
                  "timestep; _lp<sigma> the error of both images low-pass filtered alike (Gaussian sigma, model "
                  "pixels, e.g. _lp1.5); _med<k> a k x k median filter of the heat map (k odd); _er<px> the brain "
                  "eroded by px pixels; _nm the checkpoint's healthy norm subtracted (sss-calibrate "
                  "--normative-from); _min<px> regions under px pixels dropped; _3d<n> whole volumes only: 3-D "
                  "regions kept when they span at least n slices; _pp the paper's dilation + largest region")


def method_named(name: str) -> Method | None:
    """A METHODS entry, or the same kind at another timestep with optional map hygiene (METHOD_GRAMMAR); None if
    neither. The name comes back canonical (sss300_lp1.0_med03 -> sss300_lp1_med3; zeros dropped); an option value
    that cannot be used (an even median window) raises ValueError."""
    if name in METHODS:
        return METHODS[name]
    found = _METHOD_NAME.match(name)
    if found is None:
        return None
    kind, t, lp, med, er, nm, area, persist, pp = found.groups()
    t, pp = int(t), bool(pp)
    options = MapOptions(lowpass=float(lp or 0), median=int(med or 0), erode=int(er or 0), normative=bool(nm),
                         min_area=int(area or 0), persist=int(persist or 0))
    canonical = f"{kind}{t}{options.name}" + ("_pp" if pp else "")
    if canonical in METHODS:
        return METHODS[canonical]
    label = (f"{'AnoDDPM' if kind == 'anoddpm' else 'SSS'} t = {t}{options.label}"
             + (" (with postprocessing)" if pp else ""))
    return Method(canonical, label, (t,), kind == "anoddpm", pp, options)


class EvalError(ValueError):
    """A manifest, case or option that cannot be evaluated; the message says what to fix."""


@dataclass(frozen=True)
class ManifestRow:
    case: str
    modality: str
    image: Path
    mask: Path
    mask_source: str


def read_manifest(path: str | os.PathLike, modality: str, max_cases: int | None = None,
                  cases: Sequence[str] | None = None) -> list[ManifestRow]:
    """Rows of `modality` (and of `cases`, when given) from a `case,modality,image,mask[,mask_source]` CSV, paths
    relative to its folder."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise EvalError(f"manifest {path} lacks the column(s) {', '.join(missing)}; its header must be "
                                "case,modality,image,mask[,mask_source]")
            rows = list(reader)
    except OSError as err:
        raise EvalError(f"cannot read the manifest {path} ({err.strerror}); check the path") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise EvalError(f"manifest {path} is not a readable CSV file ({err}); save it as UTF-8 CSV") from err
    chosen = [r for r in rows if (r["modality"] or "").strip().lower() == modality.lower()]
    if not chosen:
        present = sorted({(r["modality"] or "").strip() for r in rows} - {""})
        raise EvalError(f"manifest {path} has no row with modality {modality!r} (present: "
                        f"{', '.join(present) or 'none'}); pick one with --modality")
    if cases is not None:
        unknown = sorted(set(cases) - {(r["case"] or "").strip() for r in chosen})
        if unknown:
            raise EvalError(f"manifest {path} has no {modality} row for case(s) {', '.join(unknown)}; check --cases")
        chosen = [r for r in chosen if (r["case"] or "").strip() in cases]
    for n, r in enumerate(chosen):
        if not all((r[c] or "").strip() for c in MANIFEST_COLUMNS):
            raise EvalError(f"manifest {path}: a {modality} row ({n + 1}) has an empty case, image or mask field")
    chosen = chosen[:max_cases] if max_cases is not None else chosen
    return [ManifestRow(case=r["case"].strip(), modality=r["modality"].strip(), image=path.parent / r["image"].strip(),
                        mask=path.parent / r["mask"].strip(), mask_source=(r.get("mask_source") or "").strip())
            for r in chosen]


def select_slices(truth: np.ndarray, slice_range: tuple[int, int], n: int = SLICES_PER_VOLUME) -> tuple[int, ...]:
    """The paper's protocol: n equidistant axial slices within the range of brain slices that hold the anomaly.

    With the anomaly on slices a..b (L = b - a + 1 slices, inside `slice_range`), slice i is the middle of the
    i-th of n equal parts, round(a + (i + 1/2) L / n - 1/2): spacing L / n, none at the range's thin ends.
    A target slice without anomaly (a gap between lesions) gives way to the nearest one with anomaly.
    Fewer than n lesion slices give each of them once.
    """
    first, last = slice_range
    has = np.asarray(truth, bool).any(axis=(1, 2))                         # (Z,)
    lesion = np.flatnonzero(has[first:last + 1]) + first
    if lesion.size == 0:
        raise EvalError("no anomalous voxel lies inside the brain slices; is the mask empty, or the wrong file?")
    a, b = int(lesion[0]), int(lesion[-1])
    length = b - a + 1
    targets = np.floor(a + (np.arange(n) + 0.5) * length / n).astype(int)  # round(... - 1/2), halves up
    picked = {int(lesion[np.argmin(np.abs(lesion - t))]) for t in targets}
    return tuple(sorted(picked))


@dataclass(frozen=True, eq=False)
class Case:
    """One labelled volume in model space with the slices the protocol evaluates."""
    name: str
    volume: ModelVolume
    truth: np.ndarray            # (Z, S, S) bool ground truth, model space (same transform as the image)
    slices: tuple[int, ...]      # protocol slices (see select_slices)


def prepare_case(name: str, image: str | os.PathLike, mask: str | os.PathLike, cfg: PreprocessConfig) -> Case:
    """Load an image (a NIfTI file or a DICOM folder, its brain extracted when it has its skull) and its mask
    (label > 0 is anomalous) into model space; raises ValueError naming the file."""
    volume = open_scan(image).volume
    model_volume = prepare(volume, cfg)
    truth = model_volume.mask_to_model(load_mask(mask, like=volume))       # (Z, S, S)
    try:
        slices = select_slices(truth, model_volume.slice_range)
    except EvalError as err:
        raise EvalError(f"{mask}: {err}") from err
    return Case(name=name, volume=model_volume, truth=truth, slices=slices)


@dataclass
class Run:
    """One reconstruction of a case's protocol slices."""
    recon: np.ndarray            # (n, S, S) x0_hat
    error: np.ndarray            # (n, S, S) squared error, 0 outside the brain
    seconds: float               # model wall time for the n slices


@dataclass
class CaseResult:
    case: Case
    runs: dict[tuple[int, bool], Run]         # per (timestep, iterative)
    score: np.ndarray | None                  # (n, S, S) the intensity baseline's heat map; None without it
    thresholds: dict[str, float]              # per method: the threshold of its masks (the baseline's own)
    masks: dict[str, np.ndarray] = field(default_factory=dict)          # per method: (n, S, S) bool, protocol slices
    mask_seconds: dict[str, float] = field(default_factory=dict)        # per method: score, threshold, post-process
    volume: dict[str, dict[str, float]] = field(default_factory=dict)   # per non-iterative method: VOLUME_METRICS
    #                                         and best_threshold, over all brain slices
    cleaned: dict = field(default_factory=dict, repr=False)   # per (run key, MapOptions.map_key): its heat map
    norm: np.ndarray | None = field(default=None, repr=False)  # (Z, S, S) the healthy norm; None: no method uses it

    def maps(self, m: Method) -> list[np.ndarray]:
        """The method's (n, S, S) heat maps on the protocol slices: one per timestep (cleaned by its map options),
        or the baseline's score."""
        if m.model_free:
            return [self.score]
        if not m.options.map_level:
            return [self.runs[k].error for k in m.keys()]
        sel = list(self.case.slices)
        x0, brain = self.case.volume.data[sel], self.case.volume.brain_mask[sel]     # (n, S, S) each
        norm = None if self.norm is None else self.norm[sel]
        return [_cleaned(self.cleaned, (k, m.options.map_key), m.options, self.runs[k], x0, brain, norm)
                for k in m.keys()]


def _cleaned(cache: dict, key, options: MapOptions, run, x0: np.ndarray, brain: np.ndarray,
             norm: np.ndarray | None) -> np.ndarray:
    """options.clean_map of a run's (n, S, S) error (x0, brain and the healthy norm its slices), made once per key;
    the excess over the norm keeps its sign, so AUC ranks below-norm pixels rather than tying them at 0 (the masks
    are those of the heat map shown: every threshold is positive)."""
    if key not in cache:
        cache[key] = options.clean_map(run.error, brain, x0, run.recon, norm, signed=True)
    return cache[key]


def _norm(detector, volume: ModelVolume, methods: Sequence[Method]) -> np.ndarray | None:
    """The detector's healthy norm sampled like the volume, (Z, S, S), when a method subtracts it; else None."""
    if not any(m.options.normative for m in methods):
        return None
    norm = getattr(detector, "normative", None)
    if norm is None:
        raise EvalError("a method subtracts the healthy norm (_nm), and the checkpoint has none; make one with "
                        "sss-calibrate --normative-from")
    return norm.model_slices(volume)


@dataclass
class Evaluation:
    methods: list[Method]
    threshold: float
    seed: int
    results: list[CaseResult]
    per_slice: list[dict]                     # one record per (method, case, slice)
    table: list[dict]                         # one row per method, TABLE_COLUMNS
    sweep: dict[str, dict]                    # per method: mean Dice per threshold, the best one
    healthy_fpr: dict[str, dict]              # per non-iterative method; empty without healthy volumes
    intensity: IntensityBaseline | None       # the baseline's direction and threshold; None when not run
    calibration: MethodCalibration | None = None   # per-method thresholds from the healthy volumes (--calibrate)

    def threshold_of(self, m: Method) -> float:
        """A model method's mask threshold: its calibrated one, else the run's."""
        return self.calibration.thresholds.get(m.name, self.threshold) if self.calibration else self.threshold


class _Progress:
    """Feeds Detector.reconstruct's progress(done, total), one call at a time, into a tqdm bar."""

    def __init__(self, bar: tqdm):
        self.bar, self.done = bar, 0

    def start(self) -> _Progress:
        self.done = 0
        return self

    def __call__(self, done: int, total: int) -> bool:
        self.bar.update(done - self.done)
        self.done = done
        return True


def _volume_runs(detector, volume: ModelVolume, timesteps: Sequence[int], seed: int,
                 progress: _Progress) -> dict[int, Reconstruction]:
    """Single-step reconstructions and heat maps (n, S, S) of every brain slice (volume.slice_range) per timestep."""
    first, last = volume.slice_range
    idx = list(range(first, last + 1))
    return {t: detector.reconstruct(volume.data[first:last + 1], t, seed=seed, indices=idx,
                                    brain=volume.brain_mask[first:last + 1], progress=progress.start())
            for t in timesteps}


def _whole_maps(m: Method, runs: dict[int, Reconstruction], score: np.ndarray | None, volume: ModelVolume,
                cache: dict, norm: np.ndarray | None) -> list[np.ndarray]:
    """A non-iterative method's (n, S, S) heat maps over a volume's brain slices: per timestep (cleaned by its map
    options, made once per cache), or the baseline's."""
    if m.model_free:
        return [score]
    if not m.options.map_level:
        return [runs[t].error for t in m.timesteps]
    first, last = volume.slice_range
    x0, brain = volume.data[first:last + 1], volume.brain_mask[first:last + 1]     # (n, S, S) each
    norm = None if norm is None else norm[first:last + 1]
    return [_cleaned(cache, (t, m.options.map_key), m.options, runs[t], x0, brain, norm) for t in m.timesteps]


def dice_sweep(m: Method, maps: Sequence[np.ndarray], threshold: float, truth: np.ndarray) -> dict[str, float]:
    """Dice at `threshold` and the best Dice over m.sweep and it, with that threshold (the lowest on a tie):
    optimistic, the threshold is chosen on the test volume. maps and truth (n, S, S): a whole volume's consecutive
    slices (the method's persist applies)."""
    curve = {thr: dice(m.segment(maps, thr, volume=True), truth) for thr in sorted({*m.sweep, threshold})}
    best = max(curve, key=curve.get)
    return {"dice": curve[threshold], "best_dice": curve[best], "best_threshold": best}


def evaluate_case(detector, case: Case, methods: Sequence[Method], threshold: float, seed: int,
                  progress: _Progress, intensity: IntensityBaseline | None = None,
                  own: dict[str, float] | None = None) -> CaseResult:
    """Reconstruct the protocol slices once per (timestep, chain) the methods need, then segment per method; then
    the per-volume metrics of the non-iterative methods over every brain slice. own: per model method, a threshold
    of its own in place of `threshold` (--calibrate)."""
    sel = list(case.slices)
    x0 = case.volume.data[sel]                                              # (n, S, S)
    brain = case.volume.brain_mask[sel]                                     # (n, S, S)
    runs: dict[tuple[int, bool], Run] = {}
    for key in dict.fromkeys(k for m in methods for k in m.keys()):
        t, iterative = key
        start = time.perf_counter()
        rec = detector.reconstruct(x0, t, seed=seed, indices=sel, brain=brain, iterative=iterative,
                                   progress=progress.start())
        runs[key] = Run(recon=rec.recon, error=rec.error, seconds=time.perf_counter() - start)
    score, own_score, score_seconds = None, threshold, 0.0
    if any(m.model_free for m in methods):
        start = time.perf_counter()
        score, own_score = intensity.score(case.volume, sel), intensity.threshold_for(case.volume)  # (n, S, S), float
        score_seconds = time.perf_counter() - start
    result = CaseResult(case=case, runs=runs, score=score,
                        thresholds={m.name: own_score if m.model_free else (own or {}).get(m.name, threshold)
                                    for m in methods}, norm=_norm(detector, case.volume, methods))
    for m in methods:
        start = time.perf_counter()
        result.masks[m.name] = m.segment(result.maps(m), result.thresholds[m.name])
        result.mask_seconds[m.name] = time.perf_counter() - start + (score_seconds if m.model_free else 0.0)

    whole = [m for m in methods if not m.iterative]
    if whole:
        first, last = case.volume.slice_range
        recs = _volume_runs(detector, case.volume, sorted({t for m in whole for t in m.timesteps}), seed, progress)
        score = intensity.score(case.volume, slice(first, last + 1)) if intensity is not None else None
        inside = case.volume.brain_mask[first:last + 1]                     # (n_brain, S, S)
        truth = case.truth[first:last + 1]                                  # (n_brain, S, S)
        ranked: dict[tuple, dict[str, float]] = {}                         # per heat map: m and m_pp share one
        cache: dict = {}
        for m in whole:
            maps = _whole_maps(m, recs, score, case.volume, cache, result.norm)
            key = (m.timesteps, m.options.map_key)
            if key not in ranked:
                heat, lesion = m.heat(maps)[inside], truth[inside]          # (N,) each: the brain pixels
                ranked[key] = {"auroc": roc_auc(heat, lesion), "auprc": average_precision(heat, lesion)}
            result.volume[m.name] = {**dice_sweep(m, maps, result.thresholds[m.name], truth), **ranked[key],
                                     "slice_dice": protocol_slice_dice(m, maps, result.thresholds[m.name], truth,
                                                                       [z - first for z in case.slices])}
    return result


def protocol_slice_dice(m: Method, maps: Sequence[np.ndarray], threshold: float, truth: np.ndarray,
                        rows: Sequence[int]) -> float:
    """Mean Dice over the protocol slices (`rows` of the whole-volume maps and truth, (n, S, S)) of the
    whole-volume mask: what the viewer shows on those slices after a whole-volume run (the method's persist
    applies), where the protocol table's masks see one slice at a time."""
    mask = m.segment(maps, threshold, volume=True)                      # (n, S, S) bool
    return float(np.mean([dice(mask[r], truth[r]) for r in rows]))


def _work(case_slices: int, brain_slices: int, methods: Sequence[Method]) -> int:
    """Model calls × slices for one volume, for the progress bar."""
    keys = dict.fromkeys(k for m in methods for k in m.keys())
    protocol = sum(case_slices * (t + 1 if it else 1) for t, it in keys)
    single_t = {t for m in methods if not m.iterative for t in m.timesteps}
    return protocol + brain_slices * len(single_t)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0), NaN-aware (AUC is NaN on a one-class slice)."""
    arr = np.asarray(values, np.float64)
    if arr.size == 0 or np.isnan(arr).all():
        return math.nan, math.nan
    return float(np.nanmean(arr)), float(np.nanstd(arr))


def table_row(name: str, records: Sequence[dict], time_per_slice: float) -> dict:
    """One TABLE_COLUMNS row: each metric's mean and std over the per-slice records."""
    row: dict = {"method": name, "n_slices": len(records)}
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([rec[metric] for rec in records])
    row["time_per_slice_s"] = time_per_slice
    return row


def threshold_sweep(results: Sequence[CaseResult], methods: Sequence[Method]) -> dict[str, dict]:
    """Per method: the mean protocol-slice Dice at each threshold of m.sweep and the ones its masks used, the best
    threshold and its Dice (chosen on the test cases!), and the ceiling: the mean over slices of each slice's best
    Dice on that grid, what no one threshold of this heat map can beat."""
    out = {}
    for m in methods:
        grid = sorted({*m.sweep, *(r.thresholds[m.name] for r in results)})
        scores = np.array([[dice(pred, r.case.truth[z])
                            for r in results for z, pred in zip(r.case.slices, m.segment(r.maps(m), thr))]
                           for thr in grid])                                # (thresholds, slices)
        curve = scores.mean(axis=1).tolist()
        best = int(np.argmax(curve))
        out[m.name] = {"thresholds": grid, "dice_mean": curve, "best_threshold": grid[best],
                       "best_dice": curve[best], "ceiling_dice": float(scores.max(axis=0).mean())}
    return out


@dataclass
class HealthyRun:
    """One healthy volume's single-step reconstructions of every brain slice, made once for the false-alarm rates
    and (--calibrate) the per-method thresholds."""
    name: str
    volume: ModelVolume
    recs: dict[int, Reconstruction]          # per timestep, (n_brain, S, S)
    score: np.ndarray | None                 # (n_brain, S, S) the intensity baseline's heat map; None without it
    norm: np.ndarray | None = field(default=None, repr=False)  # (Z, S, S) the healthy norm; None: no method uses it
    cache: dict = field(default_factory=dict, repr=False)   # cleaned heat maps (see _whole_maps)

    @property
    def brain(self) -> np.ndarray:
        first, last = self.volume.slice_range
        return self.volume.brain_mask[first:last + 1]                       # (n_brain, S, S)

    def flagged(self, m: Method, threshold: float) -> float:
        """The share of brain pixels in m's whole-volume mask at threshold (map options, persist, post-processing)."""
        mask = m.segment(_whole_maps(m, self.recs, self.score, self.volume, self.cache, self.norm), threshold,
                         volume=True)
        return float(np.count_nonzero(mask & self.brain) / max(1, int(np.count_nonzero(self.brain))))


def healthy_runs(detector, healthy: Sequence[tuple[str, ModelVolume]], methods: Sequence[Method], seed: int,
                 intensity: IntensityBaseline | None = None):
    """Yield a HealthyRun per healthy volume, at the timesteps of the non-iterative methods (none: nothing)."""
    whole = [m for m in methods if not m.iterative]
    if not whole:
        return
    timesteps = sorted({t for m in whole for t in m.timesteps})
    for name, volume in healthy:
        first, last = volume.slice_range
        with tqdm(total=(last - first + 1) * len(timesteps), desc=f"healthy {name}", unit="slice", file=sys.stderr,
                  disable=None, leave=False) as bar:
            recs = _volume_runs(detector, volume, timesteps, seed, _Progress(bar))
        score = intensity.score(volume, slice(first, last + 1)) if intensity is not None else None
        yield HealthyRun(name, volume, recs, score, _norm(detector, volume, methods))


@dataclass(frozen=True)
class MethodCalibration:
    """--calibrate: each non-iterative model method's threshold on the healthy volumes, as sss-calibrate chooses it."""
    budget: float
    volumes: tuple[str, ...]
    curves: dict[str, Curves]                          # per method: flagged shares per volume and its threshold

    @property
    def thresholds(self) -> dict[str, float]:
        return {name: c.threshold for name, c in self.curves.items()}

    @property
    def flagged(self) -> dict[str, dict[str, list[float]]]:
        """Per method, per volume: flagged share at each of the method's grid of thresholds."""
        return {name: c.flagged for name, c in self.curves.items()}

    def at_threshold(self, name: str) -> dict[str, float]:
        """Each healthy volume's flagged share for a method at its own threshold."""
        return self.curves[name].at(self.curves[name].threshold)

    def to_json(self) -> dict:
        return {"budget": self.budget, "volumes": list(self.volumes),
                "rule": "per method: the smallest threshold from which on the mean (over the healthy volumes) share "
                        "of brain pixels flagged by its whole-volume masks (map options, 3-D persistence, "
                        "post-processing) stays within budget, as sss-calibrate: on 0.01, ..., 1.00, then refined "
                        f"in {FINE_STEP} steps below it",
                "per_method": {name: {"threshold": c.threshold, "flagged_at_threshold": at,
                                      "mean_flagged_at_threshold": float(np.mean(list(at.values()))),
                                      "thresholds": list(c.thresholds), "flagged": c.flagged}
                               for name, c in self.curves.items() for at in [self.at_threshold(name)]}}


def calibrate_methods(runs: Sequence[HealthyRun], methods: Sequence[Method], budget: float) -> MethodCalibration:
    """Each non-iterative model method's threshold on the healthy runs, by sss-calibrate's rule over the flagged
    shares of its whole-volume masks (made as it makes them) per volume."""
    by_name = {r.name: r for r in runs}
    curves = {}
    for m in methods:
        if m.iterative or m.model_free:
            continue
        try:
            curves[m.name] = smallest_within_budget(lambda v, t, m=m: by_name[v].flagged(m, t), list(by_name),
                                                    budget, "drop the method or raise --budget")
        except ValueError as err:
            raise EvalError(f"{m.name}: {err}") from err
    return MethodCalibration(budget=budget, volumes=tuple(by_name), curves=curves)


def healthy_false_positives(detector, healthy: Sequence[tuple[str, ModelVolume]], methods: Sequence[Method],
                            threshold: float, seed: int, intensity: IntensityBaseline | None = None,
                            own: dict[str, float] | None = None,
                            runs: Sequence[HealthyRun] | None = None) -> dict[str, dict]:
    """Per non-iterative method: the fraction of brain pixels flagged over each healthy volume's brain slices, at
    `threshold` (own: per model method, its own one instead). runs: the healthy reconstructions already made (else
    they are made here, one volume at a time)."""
    whole = [m for m in methods if not m.iterative]
    if not healthy or not whole:
        return {}
    per_volume: dict[str, dict[str, float]] = {m.name: {} for m in whole}
    for run in runs if runs is not None else healthy_runs(detector, healthy, methods, seed, intensity):
        for m in whole:
            at = intensity.threshold_for(run.volume) if m.model_free else (own or {}).get(m.name, threshold)
            per_volume[m.name][run.name] = run.flagged(m, at)
    return {name: {"mean": float(np.mean(list(v.values()))), "per_volume": v} for name, v in per_volume.items()}


def evaluate(detector, cases: Sequence[Case], methods: Sequence[Method], threshold: float = DEFAULT_THRESHOLD,
             seed: int = 0, healthy: Sequence[tuple[str, ModelVolume]] = (),
             intensity: IntensityBaseline | None = None, budget: float | None = None) -> Evaluation:
    """Run the protocol on every case with every method.

    `detector` is an anomaly.Detector or any object with its `reconstruct(slices, timestep, seed=, indices=,
    brain=, iterative=, progress=)` returning an anomaly.Reconstruction (tests pass an oracle). `intensity` (the
    cases' lesion direction and the calibrated threshold) is needed by the intensity* methods. budget (--calibrate):
    the healthy volumes are reconstructed first, and each non-iterative model method runs at its own threshold,
    chosen on them as sss-calibrate does (calibrate_methods); the iterative ones keep `threshold`.
    """
    if not cases:
        raise EvalError("no case to evaluate; check the manifest and --modality")
    if intensity is None and any(m.model_free for m in methods):
        raise EvalError("the intensity* methods need an IntensityBaseline (the modality and its healthy threshold)")
    runs, calibration, own = None, None, None
    if budget is not None:
        if not healthy:
            raise EvalError("calibrating each method's threshold needs healthy volumes (--healthy)")
        runs = list(healthy_runs(detector, healthy, methods, seed, intensity))    # made once, reused for the FPR
        calibration = calibrate_methods(runs, methods, budget)
        own = calibration.thresholds
    first = cases[0]
    model = next((m for m in methods if not m.model_free), None)
    if model is not None:
        detector.reconstruct(first.volume.data[list(first.slices[:1])], model.timesteps[0], seed=seed,
                             indices=list(first.slices[:1]))  # warm-up: one-off start-up costs stay out of the timings
    results = []
    for case in cases:
        lo, hi = case.volume.slice_range
        with tqdm(total=_work(len(case.slices), hi - lo + 1, methods), desc=case.name, unit="slice", file=sys.stderr,
                  disable=None, leave=False) as bar:
            results.append(evaluate_case(detector, case, methods, threshold, seed, _Progress(bar), intensity, own))

    per_slice, table = [], []
    for m in methods:
        records = []
        for r in results:
            heat = m.heat(r.maps(m))                                        # (n, S, S)
            for i, z in enumerate(r.case.slices):
                scores = all_metrics(r.masks[m.name][i], heat[i], r.case.truth[z])
                records.append({"method": m.name, "case": r.case.name, "slice": z, **scores})
        per_slice += records
        seconds = sum(r.runs[k].seconds for r in results for k in m.keys())
        seconds += sum(r.mask_seconds[m.name] for r in results)
        table.append(table_row(m.name, records, seconds / len(records)))
    return Evaluation(methods=list(methods), threshold=threshold, seed=seed, results=results, per_slice=per_slice,
                      table=table, sweep=threshold_sweep(results, methods),
                      healthy_fpr=healthy_false_positives(detector, healthy, methods, threshold, seed, intensity,
                                                          own, runs),
                      intensity=intensity, calibration=calibration)


# ----------------------------------------------------------------------------------------------- outputs

def _fmt(value: float, digits: int = 3) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table_csv(table: Sequence[dict]) -> str:
    lines = [",".join(TABLE_COLUMNS)]
    for row in table:
        lines.append(",".join(str(row[c]) if c in ("method", "n_slices") else _fmt(row[c], 6) for c in TABLE_COLUMNS))
    return "\n".join(lines) + "\n"


def volume_summary(ev: Evaluation) -> dict[str, dict]:
    """Per non-iterative method: each of VOLUME_METRICS as mean ± std over cases with each case's value, and each
    case's best threshold."""
    out = {}
    for m in ev.methods:
        if m.iterative:
            continue
        entry = {}
        for metric in VOLUME_METRICS:
            per_case = {r.case.name: r.volume[m.name][metric] for r in ev.results}
            mean, std = _mean_std(list(per_case.values()))
            entry[metric] = {"mean": mean, "std": std, "per_case": per_case}
        entry["best_threshold"] = {r.case.name: r.volume[m.name]["best_threshold"] for r in ev.results}
        out[m.name] = entry
    return out


def volume_dice_summary(ev: Evaluation) -> dict[str, dict]:
    """Per non-iterative method: mean ± std over cases of the Dice over all brain slices, and each case's value."""
    return {name: v["dice"] for name, v in volume_summary(ev).items()}


def _span(thresholds: Sequence[float]) -> str:
    """A threshold sweep in words: its even runs, each as first to last and step."""
    runs, start = [], 0
    steps = np.round(np.diff(thresholds), 6)                            # (n - 1,)
    for i in range(1, len(steps) + 1):
        if i == len(steps) or steps[i] != steps[start]:
            runs.append(f"{thresholds[start]:.2f} to {thresholds[i]:.2f} in steps of {steps[start]:.2f}")
            start = i
    return ", then ".join(runs)


def _threshold_text(ev: Evaluation, m: Method) -> str:
    """The threshold of a method's masks, as table.md and the figure show it."""
    if not m.model_free:
        return f"{ev.threshold_of(m):g}"
    return "per case" if ev.intensity.threshold is None else f"{ev.intensity.threshold:.4f}"


def _figure_method(ev: Evaluation) -> Method:
    """The method figure.png shows: the first that runs the model, else the first."""
    return next((m for m in ev.methods if not m.model_free), ev.methods[0])


def _hygiene_note(ev: Evaluation) -> str:
    """table.md's words on the map hygiene options its rows use."""
    persist = any(m.options.persist for m in ev.methods)
    norm = any(m.options.normative for m in ev.methods)
    return ("Map hygiene (beyond the paper; in the row labels): low-pass σ: the heat map is the squared difference of "
            "the slice and its reconstruction both blurred alike by a Gaussian of σ model pixels; median k×k: a "
            "median filter of each slice's heat map; brain eroded: the heat map zeroed within that many pixels of "
            "the brain mask's rim; regions ≥: connected regions of a slice's mask smaller than that are dropped "
            "(after the dilation with postprocessing)."
            + (" Healthy norm subtracted: the heat map less the checkpoint's healthy norm N (the mean heat map of "
               "healthy brains on the MNI grid, sss-calibrate --normative-from), E - N; masks threshold it as "
               "shown (below-norm pixels 0), AUC, AUROC and AUPRC rank its signed value (outside the brain "
               "lowest)." if norm else "")
            + (" 3-D regions over ≥ n slices: in a whole volume's mask a 3-D connected region (6-connected) is kept "
               "only when it spans at least n consecutive slices; **it applies to the per-volume metrics and the "
               "healthy FPR only: the paper's 4-slice protocol table has no neighbouring slices, so its masks are made "
               "without it**." if persist else "")
            + " AUC, AUROC and AUPRC score the cleaned heat map.")


def _calibration_note(cal: MethodCalibration) -> str:
    """table.md's sentence on how --calibrate chose the thresholds."""
    names = ", ".join(Path(v).parent.name or v for v in cal.volumes)
    return (f"Thresholds (--calibrate): each non-iterative model method's own, chosen as sss-calibrate does: the "
            f"smallest of {THRESHOLDS[0]:.2f}, {THRESHOLDS[1]:.2f}, ..., {THRESHOLDS[-1]:.2f}, refined in {FINE_STEP} "
            f"steps below it, from which on its whole-volume masks (with its map options, 3-D persistence and "
            f"post-processing) flag at most {100 * cal.budget:g} % of the brain pixels of the {len(cal.volumes)} "
            f"--healthy volume(s) ({names}; mean over volumes).")


def _table2_lines(methods: Sequence[Method], table: Sequence[dict]) -> list[str]:
    """Table 2 in markdown: per method each metric's mean ± std, and the time per slice."""
    lines = ["| Method | Dice | IoU | Precision | Recall | AUC | Time (s) |", "|---|---|---|---|---|---|---|"]
    for m, row in zip(methods, table):
        cells = [f"{_fmt(row[f'{k}_mean'])} ± {_fmt(row[f'{k}_std'])}" for k in METRICS]
        lines.append(f"| {m.label} | " + " | ".join(cells) + f" | {_fmt(row['time_per_slice_s'])} |")
    return lines


def table_md(ev: Evaluation, source: str) -> str:
    """Table 2 of the paper for these cases, then the per-volume metrics the field reports."""
    n_cases = len(ev.results)
    n_slices = ev.table[0]["n_slices"] if ev.table else 0
    cal = ev.calibration
    at = (f"at each method's own threshold (the Threshold column below; {ev.threshold:g} for the iterative chain)"
          if cal else f"for a threshold of {ev.threshold:g}")
    lines = [
        f"# sss-eval: {source}", "",
        f"Segmentation performance {at} on {n_cases} volume(s), {n_slices} slices "
        f"(up to {SLICES_PER_VOLUME} equidistant axial slices within each volume's lesion range; mean ± std over "
        "slices). Dice, IoU, precision and recall on the binary mask; pixel-wise AUC of the heat map over the whole "
        "model-space slice. Time: seconds per slice (model calls plus masking, batched per volume). "
        f"Seed {ev.seed}.", "",
        *([f"Common regions: the masks at t = {', '.join(map(str, CONSENSUS_TIMESTEPS))}, each thresholded and "
           f"post-processed; a pixel is kept when at least {len(CONSENSUS_TIMESTEPS) // 2 + 1} of them flag it. "
           "Its heat map (for AUC) is the mean squared error over the timesteps.", ""]
          if any(m.name == "consensus" for m in ev.methods) else []),
        *([_calibration_note(cal), ""] if cal else []),
        *([ev.intensity.describe(), ""] if any(m.model_free for m in ev.methods) else []),
        *([_hygiene_note(ev), ""] if any(m.options != MapOptions() for m in ev.methods) else []),
        *_table2_lines(ev.methods, ev.table),
    ]
    vol = volume_summary(ev)
    fpr = bool(ev.healthy_fpr)
    lines += [
        "", "## Beyond the paper: the metrics the field reports", "",
        f"Per volume, over all of its brain slices (lesion voxels on slices outside the brain slice range are left "
        f"out), mean ± std over the {n_cases} volume(s); not computed for the iterative chain (lambda model calls per "
        "slice).",
        "",
        ("- Threshold: the one the masks used (each model method's own, calibrated on the healthy volumes; the "
         "iterative chain's the run's; the intensity baseline's own)." if cal else
         "- Threshold: the one the masks used (the run's; the intensity baseline's own)."),
        "- Volume Dice: the 3-D Dice of the mask at that threshold: what a user gets.",
        f"- ⌈Dice⌉: each volume's best 3-D Dice over a threshold sweep (squared error {_span(SWEEP_THRESHOLDS)}, "
        f"signed intensity {_span(INTENSITY_SWEEP)}, plus the threshold used). **Optimistic: the threshold is chosen "
        "on the test data**, per volume.",
        "- AUROC, AUPRC: pixel-wise over the brain pixels of the volume's brain slices, of the heat map (free of any "
        "threshold, so equal with and without postprocessing); AUPRC is the average precision.",
        *(["- Healthy FPR: the fraction of brain pixels flagged over the brain slices of the healthy volumes (mean "
           "over volumes). The intensity baseline's is in-sample: its threshold was calibrated on them"
           + (", and so is each calibrated model method's (at most the budget by construction)." if cal else ".")]
          if fpr else []),
        "- Slice Dice, volume mask: the protocol slices' mean Dice (as in the table above) of the whole-volume mask at "
        "the threshold used: what the viewer shows on those slices after a whole-volume run; differs from the "
        "table above only where 3-D regions apply (and by the last bits of batched arithmetic).",
        "- Best slice threshold: the threshold of the sweep (plus the one used) with the highest mean protocol-slice "
        "Dice, and that Dice. It is **chosen on these same test cases, so its Dice is optimistic**; pick thresholds "
        "on separate data.",
        "- Slice Dice ceiling: the mean over the protocol slices of each slice's best Dice on the sweep: the most any "
        "one threshold, or any rule choosing a threshold per slice, can get from this heat map (post-processed as the "
        "method; the sweep's grid).",
        "",
        "| Method | Threshold | Volume Dice | ⌈Dice⌉ (optimistic) | AUROC | AUPRC | Slice Dice, volume mask |"
        + (" Healthy FPR |" if fpr else "")
        + " Best slice threshold | Slice Dice at it (optimistic) | Slice Dice ceiling |",
        "|---|---|---|---|---|---|---|" + ("---|" if fpr else "") + "---|---|---|",
    ]
    for m in ev.methods:
        v = vol.get(m.name)
        cells = [_threshold_text(ev, m)]
        cells += [f"{_fmt(v[k]['mean'])} ± {_fmt(v[k]['std'])}" if v else "—" for k in VOLUME_METRICS]
        if fpr:
            cells.append(_fmt(ev.healthy_fpr[m.name]["mean"], 4) if m.name in ev.healthy_fpr else "—")
        s = ev.sweep[m.name]
        cells += [f"{s['best_threshold']:.2f}", _fmt(s["best_dice"]), _fmt(s["ceiling_dice"])]
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    fig = _figure_method(ev)
    shown = ("reconstruction (none: black, the baseline has no model), heat map (signed intensity, inferno, -1 black "
             "to 1 pale yellow)" if fig.model_free else
             f"reconstruction (x0_hat at t = {fig.timesteps[0]}), heat map (squared error, inferno, 0 black to ≥ "
             f"{FIGURE_HEAT_MAX:g} pale yellow)")
    lines += ["", f"figure.png ({fig.label}): per row one slice; columns: original, {shown}, predicted mask, overlay "
              "on the original (yellow: hit, red: missed ground truth, blue: false alarm).", ""]
    return "\n".join(lines)


def figure(ev: Evaluation) -> np.ndarray:
    """Figure 8 of the paper, (H, W, 3) uint8: up to FIGURE_ROWS protocol slices spread over the cases, for
    _figure_method."""
    m = _figure_method(ev)
    heat_range = (-1.0, 1.0) if m.model_free else (0.0, FIGURE_HEAT_MAX)
    pairs = [(r, i) for r in ev.results for i in range(len(r.case.slices))]
    chosen = np.unique(np.round(np.linspace(0, len(pairs) - 1, min(FIGURE_ROWS, len(pairs)))).astype(int))
    size = ev.results[0].case.volume.image_size
    factor = max(1, math.ceil(FIGURE_PANEL_MIN / size))
    rows, labels = [], []
    for j in chosen:
        r, i = pairs[j]
        z = r.case.slices[i]
        x0 = r.case.volume.data[z]                                          # (S, S)
        recon = np.full_like(x0, -1.0) if m.model_free else r.runs[m.keys()[0]].recon[i]  # (S, S) black: no model
        pred = r.masks[m.name][i]
        panels = [figures.grey(x0), figures.grey(recon), figures.inferno(m.heat(r.maps(m))[i], *heat_range),
                  figures.mask_panel(pred), figures.overlay(x0, r.case.truth[z], pred)]
        rows.append([upscale(p, factor) for p in panels])
        labels.append(f"{r.case.name} slice {z}")
    titles = ["original", "reconstruction", "heat map", "predicted mask", "truth overlay"]
    return figures.panel_grid(rows, titles, labels, title=f"{m.name}  threshold {_threshold_text(ev, m)}")


def intensity_json(ev: Evaluation) -> dict | None:
    """The intensity baseline's direction, threshold and where it came from; None when it did not run."""
    b = ev.intensity
    if b is None:
        return None
    return {"modality": b.modality, "sign": b.sign, "budget": b.budget, "threshold": b.threshold,
            "threshold_from": "healthy volumes" if b.threshold is not None else "each case's own brain (no --healthy)",
            "healthy_modalities": list(b.healthy_modalities),
            "per_case_threshold": {r.case.name: b.threshold_for(r.case.volume) for r in ev.results}}


def extra_json(ev: Evaluation, meta: dict) -> dict:
    return {
        **meta,
        "threshold": ev.threshold, "seed": ev.seed, "methods": [m.name for m in ev.methods],
        "cases": [{"case": r.case.name, "slices": list(r.case.slices),
                   "brain_slice_range": list(r.case.volume.slice_range),
                   "lesion_slice_range": [int(z) for z in np.flatnonzero(r.case.truth.any(axis=(1, 2)))[[0, -1]]]}
                  for r in ev.results],
        "consensus": {"timesteps": list(CONSENSUS_TIMESTEPS), "votes": len(CONSENSUS_TIMESTEPS) // 2 + 1,
                      "masks": "each timestep thresholded and post-processed, then the majority vote"},
        "intensity_baseline": intensity_json(ev),
        "map_options": {"note": "map hygiene per method (hygiene.MapOptions; all 0: the paper's maps); persist applies "
                                "to whole volumes only (volume metrics, healthy FPR), not to the protocol slices",
                        "per_method": {m.name: m.options.to_json() for m in ev.methods if not m.model_free}},
        "volume_dice": volume_dice_summary(ev),
        "volume_metrics": {"note": "per volume over all its brain slices, mean and std over cases: dice at the "
                                   "threshold used; best_dice (the best-threshold Dice) and best_threshold chosen on "
                                   "the test volume: optimistic; auroc and auprc (average precision) of the heat map "
                                   "over the brain pixels; slice_dice: the mean Dice of the whole-volume mask on the "
                                   "protocol slices",
                           "per_method": volume_summary(ev)},
        "threshold_sweep": {"note": "best threshold chosen on these test cases: optimistic, not a fair estimate; "
                                    "ceiling_dice: the mean over the protocol slices of each one's best Dice on the "
                                    "sweep; thresholds: the squared-error sweep, each method's own under per_method",
                            "thresholds": list(SWEEP_THRESHOLDS), "per_method": ev.sweep},
        "healthy_false_positive_rate": ev.healthy_fpr or None,
        **({"calibration": ev.calibration.to_json()} if ev.calibration else {}),
        "per_slice": ev.per_slice,
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    return {"sss_viewer": sss_viewer.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__}


def write_results(ev: Evaluation, out_dir: str | os.PathLike, meta: dict, source: str = "") -> list[Path]:
    """table.csv, table.md, extra.json and figure.png in out_dir, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "table.csv", out / "table.md", out / "extra.json", out / "figure.png"]
    atomic_write_text(paths[0], table_csv(ev.table))
    atomic_write_text(paths[1], table_md(ev, source))
    atomic_write_text(paths[2], json.dumps(extra_json(ev, meta), indent=2, allow_nan=True) + "\n")
    write_png(paths[3], figure(ev))
    return paths


# ----------------------------------------------------------------------------------------------- several noise seeds

SEED_METRICS = {"threshold": "Threshold", "dice": "Slice Dice", "auc": "AUC", "volume_dice": "Volume Dice",
                "auroc": "AUROC", "healthy_fpr": "Healthy FPR", "best_dice": "Slice Dice at the best threshold "
                "(optimistic)", "ceiling_dice": "Slice Dice ceiling"}  # across_seeds' entries, their table.md heads


def pooled_table(evs: Sequence[Evaluation]) -> list[dict]:
    """Table 2 over several noise seeds: per method, each metric's mean and std over every seed's protocol slices
    (n_slices counts them all); the time per slice is the mean over seeds."""
    return [table_row(m.name, [rec for ev in evs for rec in ev.per_slice if rec["method"] == m.name],
                      float(np.mean([ev.table[i]["time_per_slice_s"] for ev in evs])))
            for i, m in enumerate(evs[0].methods)]


def across_seeds(evs: Sequence[Evaluation]) -> dict[str, dict]:
    """Per method, per SEED_METRICS entry it has: each seed's value and their mean and std over seeds (the spread
    one seed's row hides). threshold: a model method's; dice, auc: the seed's Table 2 means; volume_dice, auroc: its
    means over volumes; healthy_fpr: its mean over the healthy volumes; best_dice, ceiling_dice: its
    threshold_sweep's."""
    volumes = [volume_summary(ev) for ev in evs]
    out = {}
    for i, m in enumerate(evs[0].methods):
        values: dict[str, dict[int, float]] = {key: {} for key in SEED_METRICS}
        for ev, vol in zip(evs, volumes):
            if not m.model_free:
                values["threshold"][ev.seed] = ev.threshold_of(m)
            values["dice"][ev.seed], values["auc"][ev.seed] = ev.table[i]["dice_mean"], ev.table[i]["auc_mean"]
            if m.name in vol:
                values["volume_dice"][ev.seed] = vol[m.name]["dice"]["mean"]
                values["auroc"][ev.seed] = vol[m.name]["auroc"]["mean"]
            if m.name in ev.healthy_fpr:
                values["healthy_fpr"][ev.seed] = ev.healthy_fpr[m.name]["mean"]
            values["best_dice"][ev.seed] = ev.sweep[m.name]["best_dice"]
            values["ceiling_dice"][ev.seed] = ev.sweep[m.name]["ceiling_dice"]
        out[m.name] = {key: {"per_seed": v, "mean": mean, "std": std}
                       for key, v in values.items() if v for mean, std in [_mean_std(list(v.values()))]}
    return out


def seeds_md(evs: Sequence[Evaluation], source: str) -> str:
    """table.md of several noise seeds: Table 2 over all of them, then each seed's summary values side by side."""
    table, summary = pooled_table(evs), across_seeds(evs)
    seeds = ", ".join(str(ev.seed) for ev in evs)
    calibrated = "; each seed's thresholds calibrated again at that seed" if evs[0].calibration else ""
    lines = [
        f"# sss-eval: {source}", "",
        f"Noise seeds {seeds}: the same cases, protocol slices and methods run once per seed{calibrated}. Each "
        "seed's own table.md, table.csv, extra.json and figure.png are in seed-<N>/.", "",
        f"Table 2 over all seeds: mean ± std over the {table[0]['n_slices']} protocol slices of the {len(evs)} "
        f"seeds ({len(evs[0].results)} volume(s)); time per slice: the mean over seeds.", "",
        *_table2_lines(evs[0].methods, table),
        "", "## Across noise seeds", "",
        f"Per seed (in the order {seeds}) and, in brackets, mean ± std over the seeds. Slice Dice and AUC: the seed's "
        "Table 2 means; volume Dice and AUROC: its means over the volumes; healthy FPR: its mean over the --healthy "
        "volumes; the best threshold's Dice (chosen on these cases) and the ceiling: as in seed-<N>/table.md.", "",
        "| Method | " + " | ".join(SEED_METRICS.values()) + " |", "|---|" + "---|" * len(SEED_METRICS),
    ]
    for m in evs[0].methods:
        cells = []
        for key in SEED_METRICS:
            v, digits = summary[m.name].get(key), 4 if key == "healthy_fpr" else 3
            cells.append("—" if v is None else " / ".join(_fmt(x, digits) for x in v["per_seed"].values())
                         + f" ({_fmt(v['mean'], digits)} ± {_fmt(v['std'], digits)})")
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def write_seeds(evs: Sequence[Evaluation], out_dir: str | os.PathLike, meta: dict, source: str = "") -> list[Path]:
    """One seed: write_results. Several: each seed's outputs in out_dir/seed-<N>/, then in out_dir table.csv (Table
    2 over all seeds), table.md (seeds_md), extra.json (across_seeds) and figure.png (the first seed's)."""
    if len(evs) == 1:
        return write_results(evs[0], out_dir, meta, source)
    out = Path(out_dir)
    for ev in evs:
        write_results(ev, out / f"seed-{ev.seed}", meta, source)
    paths = [out / "table.csv", out / "table.md", out / "extra.json", out / "figure.png"]
    table = pooled_table(evs)
    atomic_write_text(paths[0], table_csv(table))
    atomic_write_text(paths[1], seeds_md(evs, source))
    summary = {**meta, "seeds": [ev.seed for ev in evs], "seed_dirs": [f"seed-{ev.seed}" for ev in evs],
               "methods": [m.name for m in evs[0].methods], "table": table, "across_seeds": across_seeds(evs),
               "versions": _versions()}
    atomic_write_text(paths[2], json.dumps(summary, indent=2, allow_nan=True) + "\n")
    write_png(paths[3], figure(evs[0]))
    return paths


# ----------------------------------------------------------------------------------------------- command line

def parse_methods(text: str) -> list[Method]:
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    try:
        found = {n: method_named(n) for n in names}
    except ValueError as err:                      # a name of the grammar with a value that cannot be used
        raise argparse.ArgumentTypeError(f"{err}; method names: {METHOD_GRAMMAR}") from err
    unknown = [n for n, m in found.items() if m is None]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(METHODS)}, or {METHOD_GRAMMAR}")
    return list({m.name: m for m in found.values()}.values())   # one row per canonical name


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = list(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2,3,4, not "
                                         f"{text!r}") from err
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed, e.g. 0,1,2,3,4")
    return seeds


def default_methods(recommended: Recommended) -> list[Method]:
    """DEFAULT_METHODS, plus the checkpoint's recommended timestep with and without post-processing and, when it
    stores map options, with them too (what sss-detect and sss-viewer run by default), before the baselines."""
    t, options = recommended.timestep, recommended.map_options.name
    names = dict.fromkeys(n for n in DEFAULT_METHODS if n not in BASELINES)
    names.update(dict.fromkeys((f"sss{t}", f"sss{t}_pp", f"sss{t}{options}_pp", *BASELINES)))
    return [method_named(n) for n in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sss-eval",
        description="Evaluate a checkpoint on labelled cases as the paper did (Table 2, Figure 8): 4 equidistant "
                    "slices per volume within the lesion range; Dice, IoU, precision, recall, AUC, time per slice. "
                    "Writes DIR/table.csv, DIR/table.md, DIR/extra.json and DIR/figure.png.")
    p.add_argument("--manifest", required=True, type=Path, metavar="CSV",
                   help="CSV with columns case,modality,image,mask[,mask_source]; paths relative to the CSV; "
                        "mask label > 0 is anomalous")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--checkpoint", type=Path, metavar="CKPT",
                   help="model checkpoint (default: the settings' default checkpoint, else the bundled demo one)")
    p.add_argument("--modality", default="t1", help="manifest rows to use (default t1)")
    p.add_argument("--methods", type=parse_methods, default=None, metavar="M1,M2,...",
                   help=f"comma-separated, from {','.join(METHODS)}, or {METHOD_GRAMMAR}, options in that order, "
                        "each off when absent, e.g. sss300_lp1_med3_er2_min20_3d3_pp (default "
                        f"{','.join(DEFAULT_METHODS)}, plus sss<T>,sss<T>_pp at the checkpoint's recommended T); "
                        "the anoddpm* chains make lambda model calls per slice: slow on a CPU; intensity[_pp] is the "
                        "model-free baseline (signed intensity above a threshold calibrated on --healthy)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N] (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="noise seed; equal seeds give equal tables (default 0)")
    seeds.add_argument("--seeds", type=parse_seeds, default=None, metavar="S1,S2,...",
                       help="run the evaluation once per noise seed (with --calibrate, calibrated at each) and report "
                            "Table 2 over all of them and each seed's values beside each other (each seed's own "
                            "outputs in DIR/seed-<N>/): one seed's row can be luck")
    p.add_argument("--draws", type=int, default=None, metavar="K",
                   help="noise draws averaged per slice by the single-step methods (default: the checkpoint's "
                        "recommended number, else 1)")
    p.add_argument("--max-cases", type=int, metavar="N", help="evaluate only the first N cases of the modality")
    p.add_argument("--cases", type=lambda t: [c.strip() for c in t.split(",") if c.strip()], metavar="C1,C2,...",
                   help="evaluate only these cases (names from the manifest's case column), e.g. to report "
                        "tumours and MS apart")
    p.add_argument("--healthy", type=Path, nargs="+", default=[], metavar="PATH",
                   help="healthy volumes for the false-positive rate (beyond the paper) and the intensity baseline's "
                        "threshold (give scans of --modality: other ones are named in table.md); a brain mask beside "
                        "one (as sss-train finds it) is applied first")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"squared-error threshold of the masks (default: the checkpoint's calibrated one, else "
                        f"{DEFAULT_THRESHOLD}); the intensity baseline has its own, from --healthy")
    p.add_argument("--calibrate", action="store_true",
                   help="each non-iterative model method at its own threshold, chosen on the --healthy volumes as "
                        "sss-calibrate does (the smallest of 0.01..1.00, refined to 0.001, within --budget, its "
                        "masks made with its map options); --threshold then applies to the anoddpm* chains only. "
                        "Needs --healthy")
    p.add_argument("--budget", type=float, default=None,
                   help=f"with --calibrate: largest mean share of healthy brain pixels a method flags (default "
                        f"{DEFAULT_BUDGET}); the intensity baseline keeps its own")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of sss-eval; returns the exit status (0 done, 2 bad input: nothing is written then)."""
    args = build_parser().parse_args(argv)

    fail = functools.partial(bad_input, "sss-eval")
    if args.calibrate and not args.healthy:
        return fail("--calibrate chooses each method's threshold on healthy volumes; give them with --healthy")
    if args.budget is not None and not args.calibrate:
        return fail("--budget applies to --calibrate only; add --calibrate or drop --budget")
    budget = (DEFAULT_BUDGET if args.budget is None else args.budget) if args.calibrate else None
    if budget is not None and not 0 < budget < 1:
        return fail(f"--budget is a share of pixels between 0 and 1 (e.g. 0.005), not {budget}")
    if args.max_cases is not None and args.max_cases < 1:
        return fail(f"--max-cases must be at least 1, not {args.max_cases}")
    if args.out.exists() and not args.out.is_dir():
        return fail(f"--out {args.out} is a file; give a folder")
    try:
        rows = read_manifest(args.manifest, args.modality, args.max_cases, args.cases)
    except EvalError as err:
        return fail(err)
    try:
        ckpt, detector = load_detector(args.checkpoint, args.device, precision=args.precision, draws=args.draws)
    except ValueError as err:  # CheckpointError or the device
        return fail(err)
    methods = args.methods or default_methods(ckpt.recommended)
    threshold = ckpt.recommended.threshold if args.threshold is None else args.threshold
    too_far = sorted({t for m in methods for t in m.timesteps if t >= ckpt.preset.diffusion.timesteps})
    if too_far:
        return fail(f"the checkpoint's diffusion has {ckpt.preset.diffusion.timesteps} steps; methods need {too_far}")
    for m in methods:
        if m.options.normative:
            why = ("it is made of single-step heat maps" if m.iterative else "the checkpoint has none"
                   if ckpt.normative is None
                   else ckpt.normative.mismatch(m.timesteps, detector.draws, m.options.norm_key))
            if why:
                return fail(f"{m.name} subtracts the healthy norm, but {why}; make one with sss-calibrate "
                            "--normative-from")
    if any(m.model_free for m in methods):
        try:
            lesion_sign(args.modality)
        except ValueError as err:
            return fail(err)

    status, cases, healthy, healthy_modalities = 0, [], [], []
    for row in rows:
        try:
            cases.append(prepare_case(row.case, row.image, row.mask, ckpt.preset.preprocess))
        except ValueError as err:  # VolumeError, EvalError: the message names the file
            status = fail(f"case {row.case}: {err}")
    for path in args.healthy:
        try:
            scan = healthy_scan(path)
            healthy.append((str(path), prepare(scan.volume, ckpt.preset.preprocess)))
            healthy_modalities.append(scan.modality)
        except ValueError as err:
            status = fail(err)
    if status:
        return status
    intensity = (IntensityBaseline.calibrate(args.modality, healthy, healthy_modalities)
                 if any(m.model_free for m in methods) else None)

    try:
        evaluations = [evaluate(detector, cases, methods, threshold, seed, healthy, intensity, budget)
                       for seed in args.seeds or [args.seed]]
    except EvalError as err:  # --calibrate: a method that no threshold keeps within the budget
        return fail(err)
    meta = {"manifest": str(args.manifest.resolve()), "modality": args.modality,
            "checkpoint": {"path": str(ckpt.path.resolve()), "sha256": ckpt.sha256, "step": ckpt.step,
                           "preset": preset_to_dict(ckpt.preset), "recommended": ckpt.recommended.to_payload()},
            "threshold_from": "command line" if args.threshold is not None else ckpt.recommended.source,
            "device": str(detector.device), "precision": detector.precision, "draws": detector.draws,
            "healthy": [str(p) for p in args.healthy], "healthy_modalities": healthy_modalities}
    try:
        paths = write_seeds(evaluations, args.out, meta, source=f"{args.manifest} ({args.modality})")
    except OSError as err:
        return fail(f"cannot write to {args.out} ({err.strerror}); check the folder's permissions and free space")
    if len(evaluations) > 1:
        print(f"over seeds {','.join(str(ev.seed) for ev in evaluations)}:")
    for row in pooled_table(evaluations):
        print(f"{row['method']:>14}  dice {_fmt(row['dice_mean'])} ± {_fmt(row['dice_std'])}  "
              f"auc {_fmt(row['auc_mean'])}  {_fmt(row['time_per_slice_s'])} s/slice")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
