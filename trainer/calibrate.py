"""sss-calibrate: the mask threshold of a checkpoint for a false-alarm budget on healthy volumes, stored in a copy."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sss_viewer.cli import add_map_options, bad_input, given_map_options
from sss_viewer.core.anomaly import PRECISION_HELP, PRECISIONS, PostProcess, make_mask, norm_slices
from sss_viewer.core.checkpoint import Recommended, atomic_torch_save, load_detector, read_checkpoint
from sss_viewer.core.hygiene import MapOptions, keep_persistent
from sss_viewer.core.normative import DEFAULT_SIGMA_MM, NormativeMap, NormativeSum
from sss_viewer.core.volume import ModelVolume, prepare

from .data import healthy_scan

THRESHOLDS = tuple(round(0.01 * k, 2) for k in range(1, 101))   # 0.01, 0.02, ..., 1.00: the coarse grid
FINE_STEP = 0.001                                               # the chosen threshold is refined to this step
DEFAULT_BUDGET = 0.005                                          # share of healthy brain pixels flagged


@dataclass(frozen=True)
class Curves:
    """Healthy volumes' flagged shares over a threshold grid, and the smallest threshold within the budget."""
    thresholds: tuple[float, ...]          # ascending: THRESHOLDS and the FINE_STEP steps below the chosen one
    flagged: dict[str, list[float]]        # per volume: share of brain pixels flagged at each of thresholds
    threshold: float                       # the smallest of thresholds from which on the mean stays within budget

    def at(self, threshold: float) -> dict[str, float]:
        """Each volume's flagged share at one of thresholds."""
        k = self.thresholds.index(threshold)
        return {name: curve[k] for name, curve in self.flagged.items()}


@dataclass(frozen=True)
class Calibration(Curves):
    timestep: int
    budget: float                          # largest mean share of healthy brain pixels flagged


def flagged_share(error: np.ndarray, brain: np.ndarray, threshold: float, pp: PostProcess = PostProcess(),
                  persist: int = 0) -> float:
    """Share of brain pixels in the post-processed mask at threshold; error and brain (n, S, S), with persist (the
    slices consecutive): 3-D regions spanning fewer slices dropped first."""
    total = max(1, int(np.count_nonzero(brain)))
    return float(np.count_nonzero(keep_persistent(make_mask(error, threshold, pp), persist) & brain) / total)


def calibrate(detector, volumes: Sequence[tuple[str, ModelVolume]], timestep: int, budget: float = DEFAULT_BUDGET,
              seed: int = 0, options: MapOptions = MapOptions()) -> Calibration:
    """Run single-step sampling over every brain slice of healthy volumes and make each volume's masks as the tools
    do (heat map cleaned by `options`, the detector's healthy norm subtracted when they say so, post-processed, 3-D
    persistence); the threshold is the smallest from which on the mean flagged share (over volumes) stays within
    budget (smallest_within_budget)."""
    heats, brains = {}, {}
    pp = options.postprocess(PostProcess())
    for name, volume in volumes:
        heats[name], brains[name] = _heat(detector, name, volume, timestep, seed, options)   # (n, S, S) each
    curves = smallest_within_budget(lambda name, t: flagged_share(heats[name], brains[name], t, pp, options.persist),
                                    list(heats), budget, "the checkpoint does not fit these scans")
    return Calibration(thresholds=curves.thresholds, flagged=curves.flagged, threshold=curves.threshold,
                       timestep=timestep, budget=budget)


def _heat(detector, name: str, volume: ModelVolume, timestep: int, seed: int,
          options: MapOptions) -> tuple[np.ndarray, np.ndarray]:
    """A volume's heat map over its brain slices, cleaned by options (with the detector's norm when they ask), and
    its brain mask: (n, S, S) each."""
    first, last = volume.slice_range
    x0, brain = volume.data[first:last + 1], volume.brain_mask[first:last + 1]          # (n, S, S) each
    with tqdm(total=last - first + 1, desc=Path(name).parent.name or name, unit="slice", file=sys.stderr,
              disable=None, leave=False) as bar:
        rec = detector.reconstruct(x0, timestep, seed=seed, indices=range(first, last + 1), brain=brain,
                                   progress=lambda done, _total: bar.update(done - bar.n) or True)
    norm = norm_slices(detector, volume, first, last) if options.normative else None
    return options.clean_map(rec.error, brain, x0, rec.recon, norm), brain


def healthy_norm(detector, volumes: Sequence[tuple[str, ModelVolume]], timestep: int, seed: int = 0,
                 options: MapOptions = MapOptions(), sigma_mm: float = DEFAULT_SIGMA_MM) -> NormativeMap:
    """The healthy norm of the detector's heat maps (cleaned by options up to the norm) over MNI-aligned healthy
    volumes, at this timestep and the detector's noise draws."""
    total = NormativeSum()
    before = replace(options, normative=False)
    for name, volume in volumes:
        total.add(Path(name).parent.name or name, volume, _heat(detector, name, volume, timestep, seed, before)[0])
    return total.build(timestep, detector.draws, options.norm_key, sigma_mm)


def smallest_within_budget(share: Callable[[str, float], float], volumes: Sequence[str], budget: float,
                           advice: str) -> Curves:
    """The smallest threshold from which on the mean of share(volume, threshold) over the volumes stays within
    budget: found on THRESHOLDS, then refined in FINE_STEP steps down to the coarse threshold below it (a 0.01 step
    is an eighth of a threshold near 0.08). ValueError (ending in `advice`) when even the largest flags more."""
    coarse = {v: [share(v, t) for t in THRESHOLDS] for v in volumes}
    k = THRESHOLDS.index(_first_within(THRESHOLDS, coarse, budget, advice))
    below = THRESHOLDS[k - 1] if k else 0.0
    fine = tuple(round(below + FINE_STEP * j, 3) for j in range(1, round((THRESHOLDS[k] - below) / FINE_STEP)))
    grid = THRESHOLDS[:k] + fine + THRESHOLDS[k:]
    flagged = {v: curve[:k] + [share(v, t) for t in fine] + curve[k:] for v, curve in coarse.items()}
    return Curves(thresholds=grid, flagged=flagged, threshold=_first_within(grid, flagged, budget, advice))


def _first_within(thresholds: tuple[float, ...], flagged: dict[str, list[float]], budget: float, advice: str) -> float:
    """The smallest of thresholds from which on the mean flagged share over the volumes' curves stays within
    budget."""
    mean = np.mean(list(flagged.values()), axis=0)                     # (len(thresholds),)
    over = np.flatnonzero(mean > budget)
    k = 0 if over.size == 0 else int(over[-1]) + 1
    if k == len(thresholds):
        raise ValueError(f"even the threshold {thresholds[-1]} flags {100 * mean[-1]:.2f} % of healthy brain "
                         f"pixels, over the budget of {100 * budget:g} %; {advice}")
    return thresholds[k]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sss-calibrate",
        description="Choose a checkpoint's mask threshold on healthy volumes it was not trained on: the smallest "
                    "threshold (on 0.01, ..., 1.00, refined to 0.001) that flags at most --budget of their brain "
                    "pixels (post-processed masks with the map hygiene asked for, mean over volumes). Writes a copy "
                    "of the checkpoint that sss-detect, sss-eval and sss-viewer then run at this threshold, timestep "
                    "and map hygiene by default, and prints the measurements as JSON.")
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="checkpoint made by sss-train")
    p.add_argument("--healthy", type=Path, nargs="+", required=True, metavar="PATH",
                   help="healthy volumes NOT used in training (a brain mask beside one is applied, as in sss-train)")
    p.add_argument("--out", type=Path, required=True, metavar="CKPT",
                   help="the calibrated copy (never the input itself): weights and settings, no optimiser state")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help=f"largest share of healthy brain pixels flagged (default {DEFAULT_BUDGET})")
    p.add_argument("--timestep", type=int, help="lambda to run at (default: the checkpoint's recommended one)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N] (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--draws", type=int, default=1, metavar="K",
                   help="noise draws averaged per slice, stored with the threshold (default 1)")
    add_map_options(p, "the threshold is calibrated on masks made with them and they are stored beside it, so "
                       "sss-detect and sss-viewer apply them by default (default: all off, the paper's maps)")
    p.add_argument("--normative-from", type=Path, nargs="+", metavar="PATH",
                   help="make the healthy norm (the mean heat map, on the MNI grid) from these healthy volumes, e.g. "
                        "the training scans, never the --healthy ones; stored in the copy and subtracted from heat "
                        "maps (--normative on); needs a checkpoint trained with --align mni-affine")
    p.add_argument("--normative-sigma", type=float, default=DEFAULT_SIGMA_MM, metavar="MM",
                   help=f"Gaussian smoothing of the healthy norm in mm (default {DEFAULT_SIGMA_MM:g})")
    p.add_argument("--half", action="store_true",
                   help="store the weights in half precision (half the file; measured with the rounded weights)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of sss-calibrate; 0 done, 2 bad input (nothing written then)."""
    args = build_parser().parse_args(argv)
    fail = functools.partial(bad_input, "sss-calibrate")
    if not 0 < args.budget < 1:
        return fail(f"--budget is a share of pixels between 0 and 1 (e.g. 0.005), not {args.budget}")
    if args.out.exists() and args.out.resolve() == args.checkpoint.resolve():
        return fail(f"--out {args.out} is the input checkpoint; write the calibrated copy to another file")
    try:
        options = given_map_options(args) or MapOptions()
    except ValueError as err:
        return fail(err)
    if args.normative_from:
        if args.normative == "off":
            return fail("--normative-from makes a healthy norm to subtract; drop --normative off")
        overlap = {p.resolve() for p in args.normative_from} & {p.resolve() for p in args.healthy}
        if overlap:
            return fail(f"{sorted(overlap)[0]} is both in --normative-from and --healthy; calibrate on other scans "
                        "than the norm was made from")
        if not (math.isfinite(args.normative_sigma) and args.normative_sigma >= 0):
            return fail(f"--normative-sigma is a smoothing in mm, 0 or more, not {args.normative_sigma}")
        options = replace(options, normative=True)
    try:
        ckpt, detector = load_detector(args.checkpoint, args.device, precision=args.precision, draws=args.draws)
        if args.half:
            with torch.no_grad():                    # the detector runs this model: measure what will be stored
                for tensor in ckpt.model.state_dict().values():
                    if tensor.is_floating_point():
                        tensor.copy_(tensor.half())
        timestep = ckpt.recommended.timestep if args.timestep is None else args.timestep
        if not 0 <= timestep < ckpt.preset.diffusion.timesteps:
            raise ValueError(f"--timestep {timestep} is outside [0, {ckpt.preset.diffusion.timesteps})")
        if args.normative_from:
            if ckpt.preset.preprocess.align != "mni-affine":
                raise ValueError(f"{args.checkpoint.name} runs on scans as read; the healthy norm needs a checkpoint "
                                 "trained on MNI-aligned brains (sss-train --align mni-affine)")
            norm_volumes = [(str(p), prepare(healthy_scan(p).volume, ckpt.preset.preprocess))
                            for p in args.normative_from]
            detector.normative = healthy_norm(detector, norm_volumes, timestep, args.seed, options,
                                              args.normative_sigma)
        elif options.normative:
            why = ("it has none" if detector.normative is None else
                   detector.normative.mismatch((timestep,), args.draws, options.norm_key))
            if why:
                raise ValueError(f"--normative on: the checkpoint's healthy norm does not fit ({why}); make one "
                                 "with --normative-from")
        volumes = [(str(p), prepare(healthy_scan(p).volume, ckpt.preset.preprocess))
                   for p in args.healthy]
        result = calibrate(detector, volumes, timestep, args.budget, args.seed, options)
    except ValueError as err:  # CheckpointError, VolumeError, the device, a budget no threshold meets
        return fail(err)
    names = ", ".join(Path(name).parent.name or name for name in result.flagged)
    norm = detector.normative if options.normative else None
    source = (f"sss-calibrate: threshold for at most {100 * args.budget:g} % of healthy brain pixels flagged "
              f"(post-processed{options.label}, lambda {timestep}, {args.draws} noise draw(s), seed {args.seed}) on "
              f"{len(volumes)} volume(s): {names}"
              + (f"; healthy norm of {len(norm.volumes)} volume(s): {', '.join(norm.volumes)}" if norm else ""))
    payload = read_checkpoint(args.checkpoint)
    payload.pop("train_state", None)     # a copy to run, not to resume: a ckpt_N.pt's optimiser state is dropped
    payload["recommended"] = Recommended(timestep=timestep, threshold=result.threshold, source=source,
                                         draws=args.draws, map_options=options).to_payload()
    if args.normative_from:
        payload["normative"] = detector.normative.to_payload()
    if args.half:
        payload["ema"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["ema"].items()}
    try:
        atomic_torch_save(payload, args.out)
    except OSError as err:
        return fail(f"cannot write {args.out} ({err.strerror}); check the folder's permissions and free space")
    report = {"checkpoint": str(args.checkpoint), "out": str(args.out), "timestep": timestep, "draws": args.draws,
              "map_options": options.to_json(),
              "normative": None if norm is None else {"volumes": list(norm.volumes), "sigma_mm": norm.sigma_mm,
                                                      "timestep": norm.timestep, "made_now": bool(args.normative_from)},
              "budget": args.budget, "threshold": result.threshold, "flagged_at_threshold": result.at(result.threshold),
              "thresholds": list(result.thresholds), "flagged": result.flagged, "device": str(detector.device),
              "precision": detector.precision}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
