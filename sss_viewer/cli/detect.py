"""sss-detect: whole-volume anomaly detection for NIfTI scans or DICOM folders, written as mask, error map and JSON."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

import sss_viewer
from sss_viewer.cli import add_map_options, bad_input, given_map_options
from sss_viewer.core.anomaly import (CONSENSUS_TIMESTEPS, DEFAULT_THRESHOLD, DEFAULT_TIMESTEP, PRECISION_HELP,
                                     PRECISIONS, Detector, PostProcess, detect_volume)
from sss_viewer.core.checkpoint import CheckpointError, LoadedCheckpoint, load_detector, preset_to_dict
from sss_viewer.core.files import atomic_write_text
from sss_viewer.core.hygiene import MapOptions
from sss_viewer.core.inputs import SKULL_HELP, SKULL_MODES, Scan, open_scan
from sss_viewer.core.lesions import Lesion, lesion_list
from sss_viewer.core.modality import check_modality
from sss_viewer.core.resources import default_checkpoint
from sss_viewer.core.volume import file_stem, prepare, write_nifti



class InputError(ValueError):
    """One input that cannot be processed; the message names the file and says what to do."""


def parse_timesteps(text: str) -> tuple[int, ...]:
    """'250,300,350,400' -> (250, 300, 350, 400), for argparse."""
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 250,300,350,400")
    if not steps:
        raise argparse.ArgumentTypeError("give at least one timestep, e.g. 250,300,350,400")
    return steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sss-detect",
        description="Detect anomalies in brain MRI volumes by single-step diffusion sampling. For each VOLUME "
                    "writes DIR/<stem>_mask.nii.gz (uint8 0/1), DIR/<stem>_error.nii.gz (float32 squared error) "
                    "and DIR/<stem>.json, on the input's own voxel grid (and DIR/<stem>_brainmask.nii.gz when the "
                    "brain was extracted, DIR/<stem>_report.pdf with --report).")
    p.add_argument("volumes", nargs="+", metavar="VOLUME",
                   help="input scans: .nii or .nii.gz files or DICOM folders (<stem>: the file or folder name)")
    p.add_argument("--series", metavar="S",
                   help="DICOM folders holding several series: the series number, UID or a part of its description "
                        "(default: the one anatomical 3-D series; an error lists them when that is ambiguous)")
    p.add_argument("--skull", choices=SKULL_MODES, default="auto", help=SKULL_HELP)
    p.add_argument("--brain-mask", type=Path, metavar="FILE",
                   help="your own brain mask (NIfTI on the input's grid, brain > 0) instead of extraction; "
                        "one input only")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--checkpoint", type=Path, metavar="CKPT",
                   help="model checkpoint (default: the settings' default checkpoint, else the bundled one for the "
                        "input: the demo checkpoint for the demo volume, the general T1 checkpoint for real scans)")
    p.add_argument("--timestep", type=int, default=None,
                   help=f"noise level lambda of single-step sampling (default: the checkpoint's recommended one, "
                        f"else {DEFAULT_TIMESTEP})")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"squared-error threshold of the mask, in model intensity space (default: the checkpoint's "
                        f"calibrated one, else {DEFAULT_THRESHOLD})")
    p.add_argument("--consensus", type=parse_timesteps, metavar="T1,T2,...",
                   help="common regions over these timesteps instead of --timestep (the paper: "
                        + ",".join(map(str, CONSENSUS_TIMESTEPS)) + ")")
    p.add_argument("--votes", type=int, metavar="K",
                   help="with --consensus: a pixel is kept when at least K timesteps flag it (default: a majority)")
    p.add_argument("--no-postprocess", action="store_true", help="skip the 3x3 dilation and largest-region step")
    add_map_options(p, "by default the checkpoint's own (those its threshold was calibrated with, sss-calibrate), "
                       "off for a checkpoint without them; any of these options replaces all of the checkpoint's "
                       "(the others are then off); recorded in the JSON's parameters.map_options; with --lowpass, "
                       "--median or --erode the error map written is the cleaned heat map the mask is thresholded "
                       "from")
    p.add_argument("--min-lesion-ml", type=float, default=0.0, metavar="ML",
                   help="leave regions smaller than ML millilitres out of the JSON's lesion list (the 26-connected "
                        "regions of the mask; the mask itself is unchanged; default 0: list all)")
    p.add_argument("--report", action="store_true",
                   help="also write DIR/<stem>_report.pdf, a report to read without the viewer: input, checkpoint, "
                        "settings, the lesion list and views of the largest regions")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N] (default auto)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; equal seeds give equal results (default 0)")
    p.add_argument("--draws", type=int, default=None, metavar="K",
                   help="noise draws per slice: the reconstruction is the mean of K single steps with different "
                        "noise (K model calls; default: the checkpoint's recommended number, else 1, the paper's)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="slices per model call (default 4 on a CPU, 16 on CUDA)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--compile", action="store_true",
                   help="compile the model with torch.compile first: a minute or more, then 1.5-2.2x the "
                        "model's throughput on an H200 (BENCHMARKS.md); pays off for many volumes")
    return p


@dataclass(frozen=True)
class Outputs:
    mask: Path
    error: Path
    report: Path
    brain: Path  # written only when the brain was extracted
    pdf: Path    # written only with --report

    @classmethod
    def for_input(cls, path: Path, out_dir: Path) -> Outputs:
        stem = file_stem(path)
        return cls(out_dir / f"{stem}_mask.nii.gz", out_dir / f"{stem}_error.nii.gz", out_dir / f"{stem}.json",
                   out_dir / f"{stem}_brainmask.nii.gz", out_dir / f"{stem}_report.pdf")

    def paths(self) -> tuple[Path, Path, Path, Path, Path]:
        return self.mask, self.error, self.report, self.brain, self.pdf


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def plan_outputs(inputs: list[Path], out_dir: Path) -> list[tuple[Path, Outputs | InputError]]:
    """Output names per input, in order; an InputError where they would overwrite an input or an earlier input's."""
    plan: list[tuple[Path, Outputs | InputError]] = []
    claimed: dict[str, Path] = {}
    for path in inputs:
        outs = Outputs.for_input(path, out_dir)
        clash = next(((o, i) for o in outs.paths() for i in inputs if _same_file(o, i)), None)
        if clash is not None:
            plan.append((path, InputError(f"{path}: its output {clash[0].name} would overwrite the input "
                                          f"{clash[1]}; choose another --out folder")))
            continue
        owner = next((claimed[str(o.resolve())] for o in outs.paths() if str(o.resolve()) in claimed), None)
        if owner is not None:
            plan.append((path, InputError(f"{path}: gives the same output names as {owner} in {out_dir}; "
                                          "rename one of them or run them with different --out folders")))
            continue
        claimed.update({str(o.resolve()): path for o in outs.paths()})
        plan.append((path, outs))
    return plan


def versions() -> dict[str, str]:
    return {"sss_viewer": sss_viewer.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "nibabel": nib.__version__}


def checkpoint_identity(ckpt: LoadedCheckpoint) -> dict:
    return {"path": str(ckpt.path.resolve()), "sha256": ckpt.sha256, "step": ckpt.step,
            "preset": preset_to_dict(ckpt.preset), "recommended": ckpt.recommended.to_payload()}


Lines = list[tuple[str, str]]
HYGIENE_LINES = (("lowpass", "low-pass sigma {:g} model px"), ("median", "median filter {:g} model px"),
                 ("erode", "rim erosion {:g} model px"), ("normative", "healthy norm subtracted"),
                 ("min_area", "slice regions under {:g} model px dropped"))


def report_lines(report: dict) -> tuple[Lines, Lines, Lines]:
    """The PDF report's input, model and settings lines (label, text), from the values the JSON records."""
    source, brain, modality = report["input"], report["brain"], report["modality"]
    params, options, ckpt = report["parameters"], report["parameters"]["map_options"], report["checkpoint"]
    size = " × ".join(f"{mm:.2f} ({axis})" for mm, axis in zip(source["voxel_mm"], ("R-L", "A-P", "I-S")))
    inputs = [("DICOM folder" if source["kind"] == "dicom" else "File", source["path"])]
    if source["series"] is not None:
        inputs.append(("Series", source["series"]["label"]))
    grid = " × ".join(map(str, source["shape"])) + f" voxels ({source['axcodes']}), voxel size {size} mm"
    inputs += [("Grid", grid),
               ("Brain", f"{brain['verdict']}; extraction: {brain['extraction']}"
                         + (f", {brain['brain_ml']:.0f} mL" if brain["brain_ml"] is not None else "")),
               ("Modality", f"{modality['input'] or 'not known'} ({modality['source']})")]
    inputs += [("Warning", warning) for warning in (brain["warning"], modality["warning"]) if warning]
    model = [("Checkpoint", Path(ckpt["path"]).name), ("SHA-256", ckpt["sha256"][:16] + "…"),
             ("Training step", str(ckpt["step"])), ("Modality", modality["model"] or "not recorded")]
    steps = ", ".join(map(str, params["timesteps"]))
    hygiene = ", ".join(text.format(options[key]) for key, text in HYGIENE_LINES if options[key])
    settings = [("Timesteps" if params["consensus"] else "Timestep",
                 f"{steps} (consensus: ≥ {params['votes']} agree)" if params["consensus"] else steps),
                ("Threshold", f"{params['threshold']:g} (from {params['settings_from']})"),
                ("Noise draws", f"{params['draws']} a slice, seed {params['seed']}"),
                ("Post-processing", "3 × 3 dilation, largest region of each slice kept" if params["postprocess"]
                 else "off"),
                ("Map hygiene", hygiene or "off (the paper's maps)"),
                ("3-D persistence", f"regions spanning ≥ {options['persist']} slices" if options["persist"]
                 else "off"),
                ("Minimum lesion size", f"{params['min_lesion_ml']:g} mL" if params["min_lesion_ml"]
                 else "0 mL (every region listed)"),
                ("Device", f"{params['device']}, {params['precision']}"
                           + (", compiled" if params["compiled"] else ""))]
    return inputs, model, settings


def write_pdf_report(path: Path, report: dict, scan: Scan, mask: np.ndarray, error: np.ndarray,
                     lesions: list[Lesion]) -> Path:
    """The PDF report of one input (sss_viewer.gui.report, which loads Qt: only when asked for); returns path."""
    from sss_viewer.gui.report import ReportContent, write_report
    inputs, model, settings = report_lines(report)
    write_report(path, ReportContent(title=Path(report["input"]["path"]).name, input_lines=inputs, model_lines=model,
                                     settings_lines=settings, volume=scan.original, heat=error, mask=mask,
                                     lesions=lesions, window=None, created=datetime.now().astimezone()))
    return path


@dataclass(frozen=True)
class Settings:
    """What one input runs at: the command line's values, else the checkpoint's recommended ones."""
    timesteps: tuple[int, ...]
    threshold: float
    source: str                 # where the values that were not given on the command line came from
    options: MapOptions         # map hygiene: the command line's, else the checkpoint's
    options_from: str           # "command line" or "checkpoint"
    normative_off: str | None = None  # why the checkpoint's options' healthy norm is not subtracted here, if so

    @classmethod
    def of(cls, args: argparse.Namespace, ckpt: LoadedCheckpoint, options: MapOptions | None, draws: int) -> Settings:
        """options: those given on the command line (None: none given, the checkpoint's apply). The checkpoint's
        healthy norm is dropped where it does not fit (another timestep or noise draws; the reason is kept);
        ValueError when the command line asks for it there."""
        rec = ckpt.recommended
        given = args.consensus is not None or args.timestep is not None, args.threshold is not None, options is not None
        timesteps = args.consensus or (args.timestep if given[0] else rec.timestep,)
        threshold = args.threshold if given[1] else rec.threshold
        options, why = options if given[2] else rec.map_options, None
        if options.normative:
            norm = ckpt.normative
            why = "the checkpoint has none" if norm is None else norm.mismatch(timesteps, draws, options.norm_key)
            if why and given[2]:
                raise ValueError(f"--normative on: {why}")
            options = replace(options, normative=False) if why else options
        return cls(timesteps, threshold, "command line" if all(given[:2]) else rec.source,
                   options, "command line" if given[2] else "checkpoint", why)


def process(path: Path, outs: Outputs, detector: Detector, ckpt: LoadedCheckpoint, args: argparse.Namespace,
            settings: Settings, pp: PostProcess) -> dict:
    """Detect on one volume and write its files (and its brain mask when extracted); on any failure none of them is
    left behind."""
    t_start = time.perf_counter()
    scan = open_scan(path, args.series, args.skull, args.brain_mask, detector.device)
    volume = scan.volume
    modality = check_modality(scan.modality, scan.modality_source, ckpt.modality)
    for warning in (scan.warning, modality.warning):
        if warning:
            print(f"sss-detect: warning: {path}: {warning}", file=sys.stderr)
    t_loaded = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:               # e.g. a failed registration's fallback
        warnings.simplefilter("always")
        model_volume = prepare(volume, ckpt.preset.preprocess, device=detector.volume_device)
    for warning in caught:
        print(f"sss-detect: warning: {path}: {warning.message}", file=sys.stderr)
    alignment = model_volume.alignment
    t_prepared = time.perf_counter()
    first, last = model_volume.slice_range
    timesteps = settings.timesteps
    with tqdm(total=(last - first + 1) * len(timesteps), desc=file_stem(path), unit="slice", file=sys.stderr,
              disable=None, leave=False) as bar:
        def progress(done: int, total: int) -> bool:
            bar.update(done - bar.n)
            return True
        result = detect_volume(detector, model_volume, timesteps, settings.threshold, pp, votes=args.votes,
                               seed=args.seed, progress=progress, options=settings.options)
    where = detector.volume_device
    mask = model_volume.to_canonical(result.mask, "nearest", result.first_slice, device=where)    # (X, Y, Z) bool
    error = model_volume.to_canonical(result.error, "linear", result.first_slice, device=where)   # (X, Y, Z) float32
    lesions = lesion_list(mask, error, volume, min_ml=args.min_lesion_ml)
    t_post = time.perf_counter()

    written: list[Path] = []
    try:
        written.append(write_nifti(mask, volume, outs.mask, kind="mask"))
        written.append(write_nifti(error, volume, outs.error, kind="error"))
        if scan.extraction == "deepbet":
            written.append(write_nifti(scan.brain, volume, outs.brain, kind="mask"))
        n_voxels = int(np.count_nonzero(mask))
        t_written = time.perf_counter()
        report = {
            "input": {"path": str(path.resolve()), "kind": "dicom" if scan.series else "nifti",
                      "series": scan.series_json(), "shape": list(volume.native_shape),
                      "axcodes": "".join(volume.axcodes), "voxel_mm": list(volume.spacing)},
            "brain": scan.to_json(outs.brain.name if scan.extraction == "deepbet" else None),
            "modality": modality.to_json(),
            "outputs": {"mask": outs.mask.name, "error": outs.error.name},
            "parameters": {"timesteps": list(timesteps), "consensus": len(timesteps) > 1,
                           "votes": (args.votes or len(timesteps) // 2 + 1) if len(timesteps) > 1 else None,
                           "threshold": settings.threshold, "settings_from": settings.source,
                           "postprocess": pp.enabled, "map_options": settings.options.to_json(),
                           "map_options_from": settings.options_from,
                           "normative_off": settings.normative_off,
                           "min_lesion_ml": args.min_lesion_ml, "seed": args.seed, "draws": detector.draws,
                           "batch_size": detector.batch_size, "device": str(detector.device),
                           "precision": detector.precision, "compiled": detector.compiled},
            "checkpoint": checkpoint_identity(ckpt),
            "timings_s": {"load": t_loaded - t_start, "preprocess": t_prepared - t_loaded, "model": result.seconds,
                          "postprocess": t_post - t_prepared - result.seconds, "write": t_written - t_post,
                          "total": t_written - t_start},
            "alignment": None if alignment is None else {
                "to": "MNI152 2009a (affine)", "registered": alignment.registered,
                "brain_overlap": alignment.overlap, "seconds": alignment.seconds,
                "aligned_to_input_voxel": alignment.matrix.tolist()},
            "slice_range": [first, last],
            "slice_axis": ("canonical RAS+ axial index (inferior to superior)" if alignment is None else
                           "axial index of the MNI-aligned grid (inferior to superior); mask and map are on the "
                           "input's voxels"),
            "slice_scores": [{"slice": int(k), "score": float(s)}
                             for k, s in zip(result.slice_indices, result.scores)],
            "mask_voxels": n_voxels,
            "lesion_volume_ml": n_voxels * volume.voxel_volume_ml,
            "lesions": [lesion.to_json() for lesion in lesions],
            "versions": versions(),
        }
        if args.report:
            written.append(write_pdf_report(outs.pdf, report, scan, mask, error, lesions))
            report["outputs"]["report"] = outs.pdf.name
            report["timings_s"]["report"] = time.perf_counter() - t_written
            report["timings_s"]["total"] = time.perf_counter() - t_start
        atomic_write_text(outs.report, json.dumps(report, indent=2) + "\n")
        written.append(outs.report)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of sss-detect; returns the exit status (0 all done, 2 any input or setup failed)."""
    args = build_parser().parse_args(argv)

    fail = functools.partial(bad_input, "sss-detect")
    if args.batch_size is not None and args.batch_size < 1:
        return fail(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.draws is not None and args.draws < 1:
        return fail(f"--draws must be at least 1, not {args.draws}")
    n_steps = len(args.consensus) if args.consensus else 1
    if args.votes is not None and not 1 <= args.votes <= n_steps:
        return fail(f"--votes {args.votes} must be between 1 and the {n_steps} consensus timesteps")
    if not (math.isfinite(args.min_lesion_ml) and args.min_lesion_ml >= 0):
        return fail(f"--min-lesion-ml must be a number of millilitres of at least 0, not {args.min_lesion_ml}")
    if args.out.exists() and not args.out.is_dir():
        return fail(f"--out {args.out} is a file; give a folder")
    try:
        options = given_map_options(args)
    except ValueError as err:
        return fail(err)
    if args.brain_mask is not None and len(args.volumes) > 1:
        return fail("--brain-mask belongs to one scan; run the inputs one at a time")
    inputs = [Path(v) for v in args.volumes]
    loaded: dict[Path, tuple[LoadedCheckpoint, Detector]] = {}

    def detector_for(volume: Path) -> tuple[LoadedCheckpoint, Detector, Settings]:
        """The checkpoint for this input (loaded once per file) and the settings it runs at; raises ValueError."""
        try:
            path = args.checkpoint or default_checkpoint(volume)
        except FileNotFoundError as err:           # nothing bundled and nothing chosen
            raise CheckpointError(str(err)) from err
        if path not in loaded:
            loaded[path] = load_detector(path, args.device, args.batch_size, compile=args.compile,
                                         precision=args.precision, draws=args.draws)
        ckpt, detector = loaded[path]
        settings = Settings.of(args, ckpt, options, detector.draws)
        bad_t = [t for t in settings.timesteps if not 0 <= t < ckpt.preset.diffusion.timesteps]
        if bad_t:
            raise ValueError(f"timestep(s) {bad_t} outside [0, {ckpt.preset.diffusion.timesteps}); "
                             "pick values in 250-400")
        return ckpt, detector, settings

    try:
        detector_for(inputs[0])                    # a bad checkpoint, device or timestep stops before any output
        args.out.mkdir(parents=True, exist_ok=True)
    except ValueError as err:  # CheckpointError, the device or the timesteps
        return fail(err)
    except OSError as err:
        return fail(f"cannot create the output folder {args.out} ({err.strerror}); check the path and permissions")

    pp = PostProcess(enabled=not args.no_postprocess)
    status = 0
    for path, outs in plan_outputs(inputs, args.out):
        if isinstance(outs, InputError):
            status = fail(outs)
            continue
        try:
            ckpt, detector, settings = detector_for(path)
            report = process(path, outs, detector, ckpt, args, settings, pp)
        except ValueError as err:  # VolumeError (the message names the file), CheckpointError
            status = fail(err)
            continue
        except torch.OutOfMemoryError:
            status = fail(f"{path}: out of GPU memory; lower --batch-size or use --device cpu")
            continue
        except OSError as err:
            status = fail(f"{path}: cannot write its outputs ({err.strerror}); check the folder's free space")
            continue
        n_regions = len(report["lesions"])
        print(f"{path}: {report['mask_voxels']} voxels flagged ({report['lesion_volume_ml']:.2f} mL), {n_regions} "
              f"region{'' if n_regions == 1 else 's'} -> "
              f"{', '.join(report['outputs'].values())}, {outs.report.name}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
