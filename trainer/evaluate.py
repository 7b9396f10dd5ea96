"""sss-eval: the paper's evaluation (Table 2, Figure 8) of a checkpoint on labelled cases, SSS vs AnoDDPM."""

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import sss_viewer
from sss_viewer.cli import bad_input
from sss_viewer.core.anomaly import (CONSENSUS_TIMESTEPS, DEFAULT_THRESHOLD, PRECISION_HELP, PRECISIONS, PostProcess,
                                     consensus_mask, make_mask)
from sss_viewer.core.checkpoint import load_detector, preset_to_dict
from sss_viewer.core.config import PreprocessConfig
from sss_viewer.core.files import atomic_write_text
from sss_viewer.core.metrics import all_metrics, dice
from sss_viewer.core.inputs import open_scan
from sss_viewer.core.volume import ModelVolume, load_mask, prepare

from . import figures
from .data import healthy_scan
from .png import upscale, write_png

SLICES_PER_VOLUME = 4                                   # the paper: four equidistant slices per volume
METRICS = ("dice", "iou", "precision", "recall", "auc")
TABLE_COLUMNS = ("method", "n_slices", "dice_mean", "dice_std", "iou_mean", "iou_std", "precision_mean",
                 "precision_std", "recall_mean", "recall_std", "auc_mean", "auc_std", "time_per_slice_s")  # contract
SWEEP_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 21))  # 0.05, 0.10, ..., 1.00
FIGURE_ROWS = 4
FIGURE_PANEL_MIN = 192                                  # smallest panel side in the figure, pixels
FIGURE_HEAT_MAX = 1.0                                   # squared error shown at the top of the colormap
MANIFEST_COLUMNS = ("case", "modality", "image", "mask")


@dataclass(frozen=True)
class Method:
    """One row of Table 2: how heat maps at its timesteps become a mask."""
    name: str                    # contract name, e.g. "sss300_pp"
    label: str                   # row label in table.md
    timesteps: tuple[int, ...]   # one heat map per timestep
    iterative: bool              # AnoDDPM's reverse chain instead of one model call
    postprocess: bool            # 3x3 dilation + largest connected region

    def segment(self, errors: Sequence[np.ndarray], threshold: float) -> np.ndarray:
        """Mask from one (n, S, S) heat map per timestep: E > threshold (+ post-processing); several: majority vote."""
        masks = [make_mask(e, threshold, PostProcess(enabled=self.postprocess)) for e in errors]
        return masks[0] if len(masks) == 1 else consensus_mask(masks)

    @staticmethod
    def heat(errors: Sequence[np.ndarray]) -> np.ndarray:
        """The score map for AUC: the squared error, averaged over the timesteps."""
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
)}
DEFAULT_METHODS = ("sss250", "sss300", "sss250_pp", "sss300_pp", "consensus")
_METHOD_NAME = re.compile(r"^(sss|anoddpm)(\d{1,3})(_pp)?$")


def method_named(name: str) -> Method | None:
    """A METHODS entry, or the same kind at another timestep (sss<T>, sss<T>_pp, anoddpm<T>[_pp]); None if neither."""
    if name in METHODS:
        return METHODS[name]
    found = _METHOD_NAME.match(name)
    if found is None:
        return None
    kind, t, pp = found.group(1), int(found.group(2)), bool(found.group(3))
    label = f"{'AnoDDPM' if kind == 'anoddpm' else 'SSS'} t = {t}" + (" (with postprocessing)" if pp else "")
    return Method(name, label, (t,), kind == "anoddpm", pp)


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
    masks: dict[str, np.ndarray]              # per method: (n, S, S) bool on the protocol slices
    mask_seconds: dict[str, float]            # per method: thresholding + post-processing time
    volume_dice: dict[str, float]             # per single-step method: Dice over all brain slices


@dataclass
class Evaluation:
    methods: list[Method]
    threshold: float
    seed: int
    results: list[CaseResult]
    per_slice: list[dict]                     # one record per (method, case, slice)
    table: list[dict]                         # one row per method, TABLE_COLUMNS
    sweep: dict[str, dict]                    # per method: mean Dice per threshold, the best one
    healthy_fpr: dict[str, dict]              # per single-step method; empty without healthy volumes


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


def _volume_errors(detector, volume: ModelVolume, timesteps: Sequence[int], seed: int,
                   progress: _Progress) -> dict[int, np.ndarray]:
    """Single-step heat maps (n, S, S) of every brain slice (volume.slice_range) per timestep."""
    first, last = volume.slice_range
    idx = list(range(first, last + 1))
    return {t: detector.reconstruct(volume.data[first:last + 1], t, seed=seed, indices=idx,
                                    brain=volume.brain_mask[first:last + 1], progress=progress.start()).error
            for t in timesteps}


def evaluate_case(detector, case: Case, methods: Sequence[Method], threshold: float, seed: int,
                  progress: _Progress) -> CaseResult:
    """Reconstruct the protocol slices once per (timestep, chain) the methods need, then segment per method."""
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
    masks, mask_seconds = {}, {}
    for m in methods:
        start = time.perf_counter()
        masks[m.name] = m.segment([runs[k].error for k in m.keys()], threshold)
        mask_seconds[m.name] = time.perf_counter() - start

    single = [m for m in methods if not m.iterative]
    volume_dice = {}
    if single:
        first, last = case.volume.slice_range
        errors = _volume_errors(detector, case.volume, sorted({t for m in single for t in m.timesteps}), seed, progress)
        truth = case.truth[first:last + 1]                                  # (n_brain, S, S)
        volume_dice = {m.name: dice(m.segment([errors[t] for t in m.timesteps], threshold), truth) for m in single}
    return CaseResult(case=case, runs=runs, masks=masks, mask_seconds=mask_seconds, volume_dice=volume_dice)


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


def threshold_sweep(results: Sequence[CaseResult], methods: Sequence[Method],
                    thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> dict[str, dict]:
    """Mean protocol-slice Dice per threshold and the best threshold, per method (chosen on the test cases!)."""
    out = {}
    for m in methods:
        curve = []
        for thr in thresholds:
            scores = [dice(pred, r.case.truth[z])
                      for r in results
                      for z, pred in zip(r.case.slices, m.segment([r.runs[k].error for k in m.keys()], thr))]
            curve.append(float(np.mean(scores)))
        best = int(np.argmax(curve))
        out[m.name] = {"dice_mean": curve, "best_threshold": thresholds[best], "best_dice": curve[best]}
    return out


def healthy_false_positives(detector, healthy: Sequence[tuple[str, ModelVolume]], methods: Sequence[Method],
                            threshold: float, seed: int) -> dict[str, dict]:
    """Per single-step method: the fraction of brain pixels flagged over each healthy volume's brain slices."""
    single = [m for m in methods if not m.iterative]
    if not healthy or not single:
        return {}
    per_volume: dict[str, dict[str, float]] = {m.name: {} for m in single}
    for name, volume in healthy:
        first, last = volume.slice_range
        timesteps = sorted({t for m in single for t in m.timesteps})
        with tqdm(total=(last - first + 1) * len(timesteps), desc=f"healthy {name}", unit="slice", file=sys.stderr,
                  disable=None, leave=False) as bar:
            errors = _volume_errors(detector, volume, timesteps, seed, _Progress(bar))
        brain = volume.brain_mask[first:last + 1]                           # (n, S, S)
        for m in single:
            flagged = m.segment([errors[t] for t in m.timesteps], threshold) & brain
            per_volume[m.name][name] = float(np.count_nonzero(flagged) / max(1, np.count_nonzero(brain)))
    return {name: {"mean": float(np.mean(list(v.values()))), "per_volume": v} for name, v in per_volume.items()}


def evaluate(detector, cases: Sequence[Case], methods: Sequence[Method], threshold: float = DEFAULT_THRESHOLD,
             seed: int = 0, healthy: Sequence[tuple[str, ModelVolume]] = ()) -> Evaluation:
    """Run the protocol on every case with every method.

    `detector` is an anomaly.Detector or any object with its `reconstruct(slices, timestep, seed=, indices=,
    brain=, iterative=, progress=)` returning an anomaly.Reconstruction (tests pass an oracle).
    """
    if not cases:
        raise EvalError("no case to evaluate; check the manifest and --modality")
    first = cases[0]
    detector.reconstruct(first.volume.data[list(first.slices[:1])], methods[0].timesteps[0], seed=seed,
                         indices=list(first.slices[:1]))  # warm-up: one-off start-up costs stay out of the timings
    results = []
    for case in cases:
        lo, hi = case.volume.slice_range
        with tqdm(total=_work(len(case.slices), hi - lo + 1, methods), desc=case.name, unit="slice", file=sys.stderr,
                  disable=None, leave=False) as bar:
            results.append(evaluate_case(detector, case, methods, threshold, seed, _Progress(bar)))

    per_slice, table = [], []
    for m in methods:
        records = []
        for r in results:
            heat = m.heat([r.runs[k].error for k in m.keys()])             # (n, S, S)
            for i, z in enumerate(r.case.slices):
                scores = all_metrics(r.masks[m.name][i], heat[i], r.case.truth[z])
                records.append({"method": m.name, "case": r.case.name, "slice": z, **scores})
        per_slice += records
        n = len(records)
        seconds = sum(r.runs[k].seconds for r in results for k in m.keys())
        seconds += sum(r.mask_seconds[m.name] for r in results)
        row: dict = {"method": m.name, "n_slices": n}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([rec[metric] for rec in records])
        row["time_per_slice_s"] = seconds / n
        table.append(row)
    return Evaluation(methods=list(methods), threshold=threshold, seed=seed, results=results, per_slice=per_slice,
                      table=table, sweep=threshold_sweep(results, methods),
                      healthy_fpr=healthy_false_positives(detector, healthy, methods, threshold, seed))


# ----------------------------------------------------------------------------------------------- outputs

def _fmt(value: float, digits: int = 3) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table_csv(ev: Evaluation) -> str:
    lines = [",".join(TABLE_COLUMNS)]
    for row in ev.table:
        lines.append(",".join(str(row[c]) if c in ("method", "n_slices") else _fmt(row[c], 6) for c in TABLE_COLUMNS))
    return "\n".join(lines) + "\n"


def volume_dice_summary(ev: Evaluation) -> dict[str, dict]:
    """Per single-step method: mean ± std over cases of the Dice over all brain slices, and each case's value."""
    out = {}
    for m in ev.methods:
        if m.iterative:
            continue
        per_case = {r.case.name: r.volume_dice[m.name] for r in ev.results}
        mean, std = _mean_std(list(per_case.values()))
        out[m.name] = {"mean": mean, "std": std, "per_case": per_case}
    return out


def table_md(ev: Evaluation, source: str) -> str:
    """Table 2 of the paper for these cases, then the numbers beyond the paper."""
    n_cases = len(ev.results)
    n_slices = ev.table[0]["n_slices"] if ev.table else 0
    lines = [
        f"# sss-eval: {source}", "",
        f"Segmentation performance for a threshold of {ev.threshold:g} on {n_cases} volume(s), {n_slices} slices "
        f"(up to {SLICES_PER_VOLUME} equidistant axial slices within each volume's lesion range; mean ± std over "
        "slices). Dice, IoU, precision and recall on the binary mask; pixel-wise AUC of the heat map over the whole "
        "model-space slice. Time: seconds per slice (model calls plus masking, batched per volume). "
        f"Seed {ev.seed}.", "",
        *([f"Common regions: the masks at t = {', '.join(map(str, CONSENSUS_TIMESTEPS))}, each thresholded and "
           f"post-processed; a pixel is kept when at least {len(CONSENSUS_TIMESTEPS) // 2 + 1} of them flag it. "
           "Its heat map (for AUC) is the mean squared error over the timesteps.", ""]
          if any(m.name == "consensus" for m in ev.methods) else []),
        "| Method | Dice | IoU | Precision | Recall | AUC | Time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, row in zip(ev.methods, ev.table):
        cells = [f"{_fmt(row[f'{k}_mean'])} ± {_fmt(row[f'{k}_std'])}" for k in METRICS]
        lines.append(f"| {m.label} | " + " | ".join(cells) + f" | {_fmt(row['time_per_slice_s'])} |")
    vol = volume_dice_summary(ev)
    lines += [
        "", "## Beyond the paper", "",
        "- Volume Dice: the 3-D Dice over every brain slice of a volume (mean ± std over volumes); lesion voxels on "
        "slices outside the brain slice range are left out. Not computed for the iterative chain (lambda model calls "
        "per slice).",
        "- Best threshold: the threshold (0.05 to 1.00, step 0.05) with the highest mean protocol-slice Dice. It is "
        "**chosen on these same test cases, so its Dice is optimistic**; pick thresholds on separate data.",
    ]
    if ev.healthy_fpr:
        lines.append("- Healthy FPR: the fraction of brain pixels flagged over the brain slices of the healthy "
                     "volumes (mean over volumes; single-step methods only).")
    lines += ["", "| Method | Volume Dice | Best threshold | Dice at best threshold |"
              + (" Healthy FPR |" if ev.healthy_fpr else ""),
              "|---|---|---|---|" + ("---|" if ev.healthy_fpr else "")]
    for m in ev.methods:
        v = vol.get(m.name)
        s = ev.sweep[m.name]
        cells = [f"{_fmt(v['mean'])} ± {_fmt(v['std'])}" if v else "—", f"{s['best_threshold']:.2f}",
                 _fmt(s["best_dice"])]
        if ev.healthy_fpr:
            cells.append(_fmt(ev.healthy_fpr[m.name]["mean"], 4) if m.name in ev.healthy_fpr else "—")
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    fig = ev.methods[0]
    lines += ["", f"figure.png ({fig.label}): per row one slice; columns: original, reconstruction (x0_hat at "
              f"t = {fig.timesteps[0]}), heat map (squared error, inferno, 0 black to ≥ {FIGURE_HEAT_MAX:g} pale "
              "yellow), predicted mask, overlay on the original (yellow: hit, red: missed ground truth, blue: false "
              "alarm).", ""]
    return "\n".join(lines)


def figure(ev: Evaluation) -> np.ndarray:
    """Figure 8 of the paper, (H, W, 3) uint8: up to FIGURE_ROWS protocol slices spread over the cases, first method."""
    m = ev.methods[0]
    pairs = [(r, i) for r in ev.results for i in range(len(r.case.slices))]
    chosen = np.unique(np.round(np.linspace(0, len(pairs) - 1, min(FIGURE_ROWS, len(pairs)))).astype(int))
    size = ev.results[0].case.volume.image_size
    factor = max(1, math.ceil(FIGURE_PANEL_MIN / size))
    rows, labels = [], []
    for j in chosen:
        r, i = pairs[j]
        z = r.case.slices[i]
        errors = [r.runs[k].error for k in m.keys()]
        x0 = r.case.volume.data[z]                                          # (S, S)
        pred = r.masks[m.name][i]
        panels = [figures.grey(x0), figures.grey(r.runs[m.keys()[0]].recon[i]),
                  figures.inferno(m.heat(errors)[i], 0.0, FIGURE_HEAT_MAX), figures.mask_panel(pred),
                  figures.overlay(x0, r.case.truth[z], pred)]
        rows.append([upscale(p, factor) for p in panels])
        labels.append(f"{r.case.name} slice {z}")
    titles = ["original", "reconstruction", "heat map", "predicted mask", "truth overlay"]
    return figures.panel_grid(rows, titles, labels, title=f"{m.name}  threshold {ev.threshold:g}")


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
        "volume_dice": volume_dice_summary(ev),
        "threshold_sweep": {"note": "best threshold chosen on these test cases: optimistic, not a fair estimate",
                            "thresholds": list(SWEEP_THRESHOLDS), "per_method": ev.sweep},
        "healthy_false_positive_rate": ev.healthy_fpr or None,
        "per_slice": ev.per_slice,
        "versions": {"sss_viewer": sss_viewer.__version__, "python": platform.python_version(),
                     "torch": torch.__version__, "numpy": np.__version__},
    }


def write_results(ev: Evaluation, out_dir: str | os.PathLike, meta: dict, source: str = "") -> list[Path]:
    """table.csv, table.md, extra.json and figure.png in out_dir, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "table.csv", out / "table.md", out / "extra.json", out / "figure.png"]
    atomic_write_text(paths[0], table_csv(ev))
    atomic_write_text(paths[1], table_md(ev, source))
    atomic_write_text(paths[2], json.dumps(extra_json(ev, meta), indent=2, allow_nan=True) + "\n")
    write_png(paths[3], figure(ev))
    return paths


# ----------------------------------------------------------------------------------------------- command line

def parse_methods(text: str) -> list[Method]:
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [n for n in names if method_named(n) is None]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(METHODS)}, or sss<T>[_pp] at another timestep T")
    return [method_named(n) for n in names]


def default_methods(recommended_timestep: int) -> list[Method]:
    """DEFAULT_METHODS, plus the checkpoint's recommended timestep with and without post-processing."""
    names = dict.fromkeys(DEFAULT_METHODS)
    names.update(dict.fromkeys((f"sss{recommended_timestep}", f"sss{recommended_timestep}_pp")))
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
                   help=f"comma-separated, from {','.join(METHODS)}, or sss<T>[_pp] at any timestep T (default "
                        f"{','.join(DEFAULT_METHODS)}, plus sss<T>,sss<T>_pp at the checkpoint's recommended T); "
                        "the anoddpm* chains make lambda model calls per slice: slow on a CPU")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N] (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--seed", type=int, default=0, help="noise seed; equal seeds give equal tables (default 0)")
    p.add_argument("--max-cases", type=int, metavar="N", help="evaluate only the first N cases of the modality")
    p.add_argument("--cases", type=lambda t: [c.strip() for c in t.split(",") if c.strip()], metavar="C1,C2,...",
                   help="evaluate only these cases (names from the manifest's case column), e.g. to report "
                        "tumours and MS apart")
    p.add_argument("--healthy", type=Path, nargs="+", default=[], metavar="PATH",
                   help="healthy volumes for the false-positive rate (beyond the paper); a brain mask beside one "
                        "(as sss-train finds it) is applied first")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"squared-error threshold of the masks (default: the checkpoint's calibrated one, else "
                        f"{DEFAULT_THRESHOLD})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of sss-eval; returns the exit status (0 done, 2 bad input: nothing is written then)."""
    args = build_parser().parse_args(argv)

    fail = functools.partial(bad_input, "sss-eval")
    if args.max_cases is not None and args.max_cases < 1:
        return fail(f"--max-cases must be at least 1, not {args.max_cases}")
    if args.out.exists() and not args.out.is_dir():
        return fail(f"--out {args.out} is a file; give a folder")
    try:
        rows = read_manifest(args.manifest, args.modality, args.max_cases, args.cases)
    except EvalError as err:
        return fail(err)
    try:
        ckpt, detector = load_detector(args.checkpoint, args.device, precision=args.precision)
    except ValueError as err:  # CheckpointError or the device
        return fail(err)
    methods = args.methods or default_methods(ckpt.recommended.timestep)
    threshold = ckpt.recommended.threshold if args.threshold is None else args.threshold
    too_far = sorted({t for m in methods for t in m.timesteps if t >= ckpt.preset.diffusion.timesteps})
    if too_far:
        return fail(f"the checkpoint's diffusion has {ckpt.preset.diffusion.timesteps} steps; methods need {too_far}")

    status, cases, healthy = 0, [], []
    for row in rows:
        try:
            cases.append(prepare_case(row.case, row.image, row.mask, ckpt.preset.preprocess))
        except ValueError as err:  # VolumeError, EvalError: the message names the file
            status = fail(f"case {row.case}: {err}")
    for path in args.healthy:
        try:
            healthy.append((str(path), prepare(healthy_scan(path).volume, ckpt.preset.preprocess)))
        except ValueError as err:
            status = fail(err)
    if status:
        return status

    evaluation = evaluate(detector, cases, methods, threshold, args.seed, healthy)
    meta = {"manifest": str(args.manifest.resolve()), "modality": args.modality,
            "checkpoint": {"path": str(ckpt.path.resolve()), "sha256": ckpt.sha256, "step": ckpt.step,
                           "preset": preset_to_dict(ckpt.preset), "recommended": ckpt.recommended.to_payload()},
            "threshold_from": "command line" if args.threshold is not None else ckpt.recommended.source,
            "device": str(detector.device), "precision": detector.precision,
            "healthy": [str(p) for p in args.healthy]}
    try:
        paths = write_results(evaluation, args.out, meta, source=f"{args.manifest} ({args.modality})")
    except OSError as err:
        return fail(f"cannot write to {args.out} ({err.strerror}); check the folder's permissions and free space")
    for row in evaluation.table:
        print(f"{row['method']:>14}  dice {_fmt(row['dice_mean'])} ± {_fmt(row['dice_std'])}  "
              f"auc {_fmt(row['auc_mean'])}  {_fmt(row['time_per_slice_s'])} s/slice")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
