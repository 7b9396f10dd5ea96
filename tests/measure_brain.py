"""Measure the brain-extraction step on the real data: the numbers README.md cites for it.

Usage: OMP_WAIT_POLICY=PASSIVE python tests/measure_brain.py [--no-deepbet]; data from $SSS_DATA or
../shared/data. Prints the machine, then four tables:

1. the skull-stripped verdict (``skull_verdict``) of every image, against the truth: healthy/ (masks, labels and
   probability maps skipped by name) and lesion-dev/ are skull-stripped, healthy-with-skull/ (but
   niivue-fs-norm) and with-skull/ have their skull;
2. deepbet (``BrainExtractor("cpu").mask``, defaults) on every healthy-with-skull/ and with-skull/ scan: Dice
   against ``brainmask.nii.gz`` (on the input's grid) where there is one, brain volumes;
3. lesion-dev: the share of each lesion (label > 0) inside the brain when extraction is forced, and what auto
   mode (``open_scan``) does: no extraction, as these scans are skull-stripped, so no lesion voxel is lost;
4. the time of ``BrainExtractor.mask`` per volume by size class, and the model load time.

--no-deepbet prints the verdicts only. Not a pytest test (no ``test_`` prefix); a run takes a few minutes on a CPU.
"""

import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sss_viewer.core.brain import BrainExtractor, skull_verdict  # noqa: E402
from sss_viewer.core.inputs import open_scan  # noqa: E402
from sss_viewer.core.volume import load_mask, load_volume  # noqa: E402

DATA = Path(os.environ.get("SSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NOT_IMAGES = ("mask", "seg", "label", "aseg", "gm", "wm", "csf", "prob")  # name parts of non-image files
SIZE_CLASSES = (2e6, 10e6, 20e6, np.inf)  # upper bounds in voxels of the timing's size classes


def name(p: Path) -> str:
    return str(p.relative_to(DATA))


def lesion_rows() -> list[dict]:
    with open(DATA / "lesion-dev" / "manifest.csv") as f:
        return list(csv.DictReader(f))


def labelled_images() -> list[tuple[Path, bool]]:
    """(image, truth) for every image the verdict must get right; truth True: skull-stripped."""
    out = [(p, True) for p in sorted(DATA.glob("healthy/*/*.nii*")) if not any(s in p.name.lower() for s in NOT_IMAGES)]
    out += [(p, p.parent.name == "niivue-fs-norm") for p in sorted(DATA.glob("healthy-with-skull/*/t1.nii.gz"))]
    out += [(p, False) for p in sorted(DATA.glob("with-skull/*.nii.gz"))]
    return out + [(DATA / "lesion-dev" / row["image"], True) for row in lesion_rows()]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def machine() -> str:
    cpu = platform.processor()
    if not cpu and Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    return (f"{cpu or 'unknown CPU'}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def verdicts() -> None:
    images = labelled_images()
    print(f"\n## 1. skull_verdict of every image ({len(images)})")
    print(f"{'file':48s} {'truth':8s} {'verdict':8s} ok  "
          f"{'bg':>6s} {'bg_share':>8s} {'fg_mL':>6s} {'dark':>5s} {'ms':>4s}")
    wrong = 0
    for p, truth in images:
        volume = load_volume(p)
        t = time.perf_counter()
        verdict = skull_verdict(volume)
        ms = 1000 * (time.perf_counter() - t)
        m, ok = verdict.measures, verdict.stripped == truth
        wrong += not ok
        print(f"{name(p):48s} {'stripped' if truth else 'skull':8s} {'stripped' if verdict.stripped else 'skull':8s} "
              f"{'yes' if ok else 'NO':3s} {m['background']:6.3g} {m['background_share']:8.3f} "
              f"{m['foreground_ml']:6.0f} {m['dark_share']:5.3f} {ms:4.0f}")
    print(f"wrong: {wrong} of {len(images)}")


def timed_mask(ex: BrainExtractor, volume, times: list) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    brain = ex.mask(volume)
    times.append((volume.data.size, time.perf_counter() - t))
    return brain, times[-1][1]


def extraction(ex: BrainExtractor, times: list) -> None:
    scans = sorted(DATA.glob("healthy-with-skull/*/t1.nii.gz")) + sorted(DATA.glob("with-skull/*.nii.gz"))
    print("\n## 2. BrainExtractor('cpu').mask (defaults) vs brainmask.nii.gz on the input's grid")
    print(f"{'file':48s} {'shape':16s} {'s':>5s} {'dice':>5s} {'ours_mL':>7s} {'ref_mL':>6s}")
    scores = []
    for p in scans:
        volume = load_volume(p)
        brain, s = timed_mask(ex, volume, times)
        ref_path = p.parent / "brainmask.nii.gz"
        ref = load_mask(ref_path, like=volume) if ref_path.is_file() else None
        ours_ml = brain.sum() * volume.voxel_volume_ml
        if ref is None:
            print(f"{name(p):48s} {str(volume.data.shape):16s} {s:5.1f} {'-':>5s} {ours_ml:7.0f} {'-':>6s}")
            continue
        scores.append(dice(brain, ref))
        print(f"{name(p):48s} {str(volume.data.shape):16s} {s:5.1f} {scores[-1]:5.3f} {ours_ml:7.0f} "
              f"{ref.sum() * volume.voxel_volume_ml:6.0f}")
    print(f"Dice over {len(scores)} reference masks: median {np.median(scores):.3f}, min {min(scores):.3f}")


def lesions(ex: BrainExtractor, times: list) -> None:
    print("\n## 3. lesion-dev: lesion share inside the brain, forced extraction vs auto mode (open_scan)")
    print(f"{'image':48s} {'lesion_mL':>9s} {'s':>5s} {'forced_in':>9s} {'auto_extraction':>15s} {'auto_in':>7s}")
    for row in lesion_rows():
        p = DATA / "lesion-dev" / row["image"]
        volume = load_volume(p)
        lesion = load_mask(DATA / "lesion-dev" / row["mask"], like=volume)
        brain, s = timed_mask(ex, volume, times)
        scan = open_scan(p)
        forced_in = np.count_nonzero(lesion & brain) / np.count_nonzero(lesion)
        auto_in = 1.0 if scan.brain is None else np.count_nonzero(lesion & scan.brain) / np.count_nonzero(lesion)
        print(f"{name(p):48s} {lesion.sum() * volume.voxel_volume_ml:9.1f} {s:5.1f} {forced_in:9.4f} "
              f"{scan.extraction:>15s} {auto_in:7.4f}")


def timing(times: list, load_s: float) -> None:
    print("\n## 4. BrainExtractor.mask time per volume (tables 2 and 3), on the machine above")
    print(f"model load (import deepbet, 2 TorchScript networks): {load_s:.2f} s")
    print(f"{'voxels':>10s} {'n':>3s} {'median_s':>8s} {'max_s':>6s}")
    low = 0
    for high in SIZE_CLASSES:
        ss = [s for size, s in times if low <= size < high]
        label = f"{low / 1e6:g}–{high / 1e6:g} M" if np.isfinite(high) else f"≥ {low / 1e6:g} M"
        if ss:
            print(f"{label:>10s} {len(ss):3d} {np.median(ss):8.1f} {max(ss):6.1f}")
        low = high
    print(f"{'all':>10s} {len(times):3d} {np.median([s for _, s in times]):8.1f} {max(s for _, s in times):6.1f}")


def main() -> None:
    print(f"data: {DATA}\nmachine: {machine()}")
    verdicts()
    if "--no-deepbet" in sys.argv[1:]:
        return
    ex, times = BrainExtractor("cpu"), []
    t = time.perf_counter()
    ex._load()                                   # timed apart, so that the per-volume times are the networks alone
    load_s = time.perf_counter() - t
    extraction(ex, times)
    lesions(ex, times)
    timing(times, load_s)


if __name__ == "__main__":
    main()
