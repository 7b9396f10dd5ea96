"""Builds the bundled demo: the MNI152 2009a T1 template with a synthetic tumour-like lesion, and its mask."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from sss_viewer.core.anomaly import PRECISION_HELP, PRECISIONS, Detector, detect_volume
from sss_viewer.core.checkpoint import load_checkpoint
from sss_viewer.core.metrics import dice
from sss_viewer.core.resources import DEMO_MASK, DEMO_VOLUME, resource
from sss_viewer.core.simplex import noise3
from sss_viewer.core.volume import VolumeError, load_mask, load_volume, prepare

CENTRE_MM = (30.0, -12.0, 26.0)   # lesion centre in MNI RAS mm: right fronto-parietal white matter
RADIUS_MM = 14.0                  # tumour (rim + core) mean radius
CORE_FRACTION = 0.75              # necrotic core radius / tumour radius
OEDEMA_MM = 7.0                   # oedema reaches this far beyond the tumour
MASS_EFFECT = 0.28                # fraction by which tissue near the centre is pushed outward
SEED = 2009                       # fixed: the demo is rebuilt bit for bit
MARGIN_VOXELS = 4                 # kept around the brain when cropping


def irregular_distance(shape: tuple[int, int, int], centre_vox: np.ndarray, spacing: np.ndarray,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from the lesion centre, and a smooth simplex perturbation (-1..1) that makes shapes irregular.

    The perturbation is evaluated only in a box that holds every lesion radius it can produce (0 elsewhere).
    """
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    offset = [(g - c) * s for g, c, s in zip(grids, centre_vox, spacing)]     # 3 x (X, Y, Z) in mm
    dist = np.sqrt(sum(o ** 2 for o in offset))
    reach = RADIUS_MM * 1.4 + OEDEMA_MM * 1.6
    box = tuple(slice(max(int(c - reach / s), 0), max(int(c + reach / s) + 2, 0)) for c, s in zip(centre_vox, spacing))
    coords = [torch.from_numpy(o[box] / 9.0) for o in offset]               # ~9 mm features
    wobble = np.zeros(shape, np.float32)
    wobble[box] = (noise3(*coords, seed=seed) + 0.5 * noise3(*(c * 2 for c in coords), seed=seed + 1)).numpy() / 1.5
    return dist, wobble


def build(template: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The lesioned, cropped template and its lesion mask (uint8), same grid and affine."""
    img = nib.load(str(template))
    if nib.aff2axcodes(img.affine) != ("R", "A", "S"):
        raise VolumeError(f"{template}: expected the RAS MNI152 2009a template")
    data = np.asarray(img.dataobj, dtype=np.float32)                         # (X, Y, Z) 0..255
    spacing = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    centre = np.linalg.solve(img.affine, [*CENTRE_MM, 1.0])[:3]
    dist, wobble = irregular_distance(data.shape, centre, spacing, SEED)
    brain = data > 0

    # Mass effect: out(p) = in(c + s(d) (p - c)), s = 1 - a exp(-(d / 2R)^2) < 1 near c pushes tissue outward.
    scale = 1.0 - MASS_EFFECT * np.exp(-(dist / (2 * RADIUS_MM)) ** 2)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in data.shape], indexing="ij")
    warped_coords = [c + scale * (g - c) for g, c in zip(grids, centre)]
    warped = ndimage.map_coordinates(data, warped_coords, order=1, mode="constant")

    radius = RADIUS_MM * (1.0 + 0.35 * wobble)                               # irregular boundary
    tumour = dist < radius
    core = dist < radius * CORE_FRACTION * (1.0 + 0.15 * wobble)
    rim = tumour & ~core
    oedema = (dist < radius + OEDEMA_MM * (1.0 + 0.5 * wobble)) & ~tumour & brain
    rng = np.random.default_rng(SEED)
    texture = ndimage.gaussian_filter(rng.standard_normal(data.shape).astype(np.float32), 1.0) * 25
    out = warped.copy()
    # T1 appearance: a CSF-dark necrotic core, a thin rim brighter than white matter, and oedema about as
    # dark as grey matter that still shows some of the anatomy beneath it.
    out[oedema] = 0.3 * warped[oedema] + 0.7 * (120 + texture[oedema])
    out[rim] = 245 + 0.4 * texture[rim]
    out[core] = 45 + 0.6 * texture[core]
    out = np.where(brain, np.clip(out, 1, 255), 0)
    lesion = (tumour | oedema) & brain

    xs, ys, zs = (np.flatnonzero(brain.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    lo = [max(int(v[0]) - MARGIN_VOXELS, 0) for v in (xs, ys, zs)]
    hi = [min(int(v[-1]) + MARGIN_VOXELS + 1, n) for v, n in zip((xs, ys, zs), data.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array(lo) + img.affine[:3, 3]
    volume = nib.Nifti1Image(np.round(out[crop]).astype(np.uint8), affine)
    mask = nib.Nifti1Image(lesion[crop].astype(np.uint8), affine)
    for im in (volume, mask):
        im.set_qform(affine, 4)                                                # 4 = MNI152 space
        im.set_sform(affine, 4)
    return volume, mask


def check(checkpoint: Path, template: Path | None = None, volume: Path | None = None,
          mask: Path | None = None, device: str = "cpu", precision: str = "auto") -> dict:
    """Demo quality at the checkpoint's recommended settings (the paper's lambda 300 and threshold 0.3 unless
    sss-calibrate chose others) with post-processing, in model space.

    lesion_dice: mean slice-wise Dice of the mask on the slices that hold the lesion; lesion_slices_hit:
    share of those slices where the mask touches the lesion; score_lesion_vs_other: mean per-slice
    anomaly score on lesion slices over that on the other brain slices; healthy_flagged: share of
    brain pixels flagged on the lesion-free template's brain slices, with the median flagged pixels per
    slice and the flagged volume in mL (with `template`).
    """
    ckpt = load_checkpoint(checkpoint)
    detector = Detector(ckpt.model, ckpt.preset, device=device, precision=precision)
    vol = load_volume(volume or resource(DEMO_VOLUME))
    mv = prepare(vol, ckpt.preset.preprocess)
    truth = mv.mask_to_model(load_mask(mask or resource(DEMO_MASK), vol))    # (Z, S, S)
    rec = ckpt.recommended
    result = detect_volume(detector, mv, (rec.timestep,), rec.threshold)
    lesion = [i for i, z in enumerate(result.slice_indices) if truth[z].any()]
    per_slice = [dice(result.mask[i], truth[result.first_slice + i]) for i in lesion]
    others = [i for i in range(len(result.scores)) if i not in set(lesion)]
    report = {"checkpoint": str(checkpoint), "step": ckpt.step, "precision": detector.precision,
              "timestep": rec.timestep, "threshold": rec.threshold,
              "lesion_slices": len(lesion),
              "lesion_dice": float(np.mean(per_slice)), "lesion_dice_min": float(np.min(per_slice)),
              "volume_dice": dice(result.mask, truth[result.slice_indices]),
              "lesion_slices_hit": float(np.mean([(result.mask[i] & truth[result.first_slice + i]).any()
                                                  for i in lesion])),
              "score_lesion_vs_other": float(result.scores[lesion].mean() / result.scores[others].mean())}
    if template is not None:
        healthy = prepare(load_volume(template), ckpt.preset.preprocess)
        clean = detect_volume(detector, healthy, (rec.timestep,), rec.threshold)
        brain = healthy.brain_mask[clean.slice_indices]
        report["healthy_flagged"] = float(clean.mask[brain].mean())
        report["healthy_flagged_pixels_per_slice_median"] = float(np.median(clean.mask.sum(axis=(1, 2))))
        report["healthy_flagged_ml"] = float(clean.mask.sum() * healthy.pixel_mm ** 2 * healthy.spacing[2] / 1000)
        report["healthy_slices_with_findings"] = int(clean.mask.any(axis=(1, 2)).sum())
        report["healthy_slices"] = len(clean.mask)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__)
    parser.add_argument("template", type=Path, help="MNI152 2009a T1 template (mni_icbm152_t1_tal_nlin_sym_09a)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "resources")
    parser.add_argument("--check", type=Path, metavar="CKPT",
                        help="instead of building, report the checkpoint's Dice on the demo and the template")
    parser.add_argument("--device", default="cpu", help="device of --check: cpu (default, as shipped) or cuda")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=f"of --check: {PRECISION_HELP}")
    args = parser.parse_args(argv)
    try:
        if args.check:
            print(json.dumps(check(args.check, args.template, device=args.device, precision=args.precision),
                             indent=2))
            return 0
        volume, mask = build(args.template)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for im, name in ((volume, DEMO_VOLUME), (mask, DEMO_MASK)):
        tmp = args.out / f".{name}.tmp.nii.gz"
        nib.save(im, str(tmp))
        tmp.replace(args.out / name)
    lesion_ml = float(mask.get_fdata().sum() * np.prod(mask.header.get_zooms()[:3]) / 1000)
    print(f"wrote {args.out / DEMO_VOLUME} {volume.shape} and its mask ({lesion_ml:.1f} mL lesion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
