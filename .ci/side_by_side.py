"""Before/after on this machine: a module as of a git revision beside the working tree's, timed alternately.

    python .ci/side_by_side.py REV noise     octave noise fields, warm (the grid seen before) and cold
    python .ci/side_by_side.py REV volume    prepare, to_canonical, mask_to_model, masks and scores on a
                                             150-slice volume
    python .ci/side_by_side.py REV volume --device cuda      the same, the current code on the GPU

Each case runs both versions in turn in one process (best of the repeats), so both see the same load, and
prints the largest difference between their results. Used for the before/after tables of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sss_viewer.cli.bench import synthetic_volume  # noqa: E402
from sss_viewer.core import anomaly, simplex, volume  # noqa: E402
from sss_viewer.core.config import PRESETS, NoiseConfig  # noqa: E402


def module_at(rev: str, module) -> object:
    """`module` (a sss_viewer.core module) as of git revision rev, imported beside the current one."""
    path = Path(module.__file__).relative_to(ROOT)
    source = subprocess.run(["git", "show", f"{rev}:{path.as_posix()}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    file = Path(tempfile.mkdtemp()) / path.name
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{module.__package__}._before_{path.stem}", file)
    before = sys.modules[spec.name] = importlib.util.module_from_spec(spec)   # (dataclasses look it up)
    spec.loader.exec_module(before)                      # its relative imports resolve in sss_viewer.core
    return before


def best(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls, and the last result."""
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, out


def report(name: str, times: dict[str, float], before, after) -> None:
    a, b = (np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v, np.float64) for v in (before, after))
    print(f"{name:<48} before {1000 * times['before']:8.1f} ms   after {1000 * times['after']:8.1f} ms   "
          f"{times['before'] / times['after']:5.1f}x   max |diff| {np.abs(a - b).max():.1e}")


def compare_noise(before) -> None:
    cfg = NoiseConfig(standardize=False)
    first_seed = [1000]

    def fields(module, b: int, s: int, cold: bool):
        if cold:
            module.forget_geometry()
        first_seed[0] += b                               # new seeds every call, as the slices of a volume
        return module.octave_noise((b, s, s), torch.arange(first_seed[0], first_seed[0] + b), cfg, z=300.0)

    for b, s, cold, repeats in [(1, 128, False, 5), (4, 128, False, 5), (1, 256, False, 3), (150, 128, False, 2),
                                (1, 128, True, 3), (8, 256, True, 2)]:
        for module in (before, simplex):                 # the grid seen (twice: the current code builds then)
            fields(module, b, s, False)
            fields(module, b, s, False)
        times = {}
        for _ in range(repeats):
            for label, module in (("before", before), ("after", simplex)):
                t, _ = best(lambda: fields(module, b, s, cold), 1)
                times[label] = min(times.get(label, t), t)
        seed = first_seed[0]
        old = fields(before, b, s, False)
        first_seed[0] = seed
        report(f"octave noise {b} x {s}², {'cold' if cold else 'warm'}", times, old, fields(simplex, b, s, False))
    for b, s in [(1, 256), (150, 256)]:
        print(f"torch operations of one warm call, {b} x {s}², GPU-sized pieces: before "
              f"{count_noise_ops(before, b, s)}, after {count_noise_ops(simplex, b, s)}")


class _CountOps(TorchDispatchMode):
    """Counts the torch operations run inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_noise_ops(module, b: int, s: int) -> int:
    """Torch operations of one warm octave-noise call of b s x s fields, as a GPU would run them: the points in
    one piece (the accelerator's chunking) and the seeds' shuffle, which runs on the host in any case, left
    out. On a GPU each operation is about one kernel launch."""
    cfg, seeds = NoiseConfig(standardize=False), torch.arange(1, b + 1)
    perm = module._permutations(seeds)
    saved = module._permutations, module._CPU_CHUNK
    module._permutations, module._CPU_CHUNK = (lambda _: perm), module._DEVICE_CHUNK
    try:
        for _ in range(2):
            module.octave_noise((b, s, s), seeds, cfg, z=300.0)            # the grid seen (and built)
        with _CountOps() as ops:
            module.octave_noise((b, s, s), seeds, cfg, z=300.0)
    finally:
        module._permutations, module._CPU_CHUNK = saved
    return ops.count


def heat_maps(mv) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, blobby (Z, S, S) squared-error map over mv's brain (2.3 % of it above the default threshold) and
    the brain mask: the input of the masks and scores."""
    from scipy import ndimage
    field = ndimage.uniform_filter(np.random.default_rng(0).standard_normal(mv.data.shape, np.float32), (1, 9, 9))
    error = np.square(field / field.std()) * 0.06 * mv.brain_mask                 # (Z, S, S)
    return error.astype(np.float32), mv.brain_mask


def compare_volume(before, before_anomaly, device: str | None) -> None:
    """The volume stages; `device` (the current code's torch device for prepare, to_canonical and the masks and
    scores, which then start from the error map already there) or the host."""
    data = synthetic_volume(150, 256)
    on = {"before": {}, "after": {} if device is None else {"device": device}}
    for preset in ("paper", "small"):
        cfg = PRESETS[preset].preprocess
        cases = {"prepare": lambda m, mv, kw: m.prepare(data, cfg, **kw).data,
                 "to_canonical, linear": lambda m, mv, kw: mv.to_canonical(np.square(mv.data + 0.5), "linear", **kw),
                 "to_canonical, nearest": lambda m, mv, kw: mv.to_canonical(mv.data > 0.2, "nearest", **kw),
                 "mask_to_model": lambda m, mv, kw: mv.mask_to_model(data > 110)}
        models = {"before": before.prepare(data, cfg), "after": volume.prepare(data, cfg, **on["after"])}
        for name, case in cases.items():
            times, out = {}, {}
            for _ in range(2):
                for label, module in (("before", before), ("after", volume)):
                    t, out[label] = best(lambda: case(module, models[label], on[label]), 3)
                    times[label] = min(times.get(label, t), t)
            report(f"{name}, {preset} ({cfg.image_size}²), 150 slices", times, out["before"], out["after"])
        error, brain = heat_maps(models["before"])
        inputs = {"before": (error, brain), "after": (error, brain) if device is None else
                  (torch.from_numpy(error).to(device), torch.from_numpy(brain).to(device))}

        def masks_and_scores(module, error, brain):                        # both, as one array on the host
            mask = module.make_mask(error)
            mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else mask
            return np.concatenate([mask.ravel(), module.slice_scores(error, brain)])

        times, out = {}, {}
        for _ in range(2):
            for label, module in (("before", before_anomaly), ("after", anomaly)):
                t, out[label] = best(lambda: masks_and_scores(module, *inputs[label]), 3)
                times[label] = min(times.get(label, t), t)
        report(f"masks and scores, {preset} ({cfg.image_size}²), 150 slices", times, out["before"], out["after"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the git revision to compare against, e.g. HEAD~1")
    parser.add_argument("what", choices=("noise", "volume"))
    parser.add_argument("--device", help="volume: run the current code's stages on this torch device (e.g. cuda)")
    args = parser.parse_args()
    if args.what == "noise":
        compare_noise(module_at(args.rev, simplex))
    else:
        compare_volume(module_at(args.rev, volume), module_at(args.rev, anomaly), args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
