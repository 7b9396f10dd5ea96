"""Tests for volume.py: orientation by the affine, exact model-space round trips, bad inputs, safe writing."""

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from sss_viewer.core import volume as volmod
from sss_viewer.core.config import PreprocessConfig
from sss_viewer.core.volume import (Volume, VolumeError, load_mask, load_volume, prepare, stretch_contrast,
                                    write_nifti)

ORIENTATIONS = ["RAS", "LAS", "LPS", "LIA", "PIR"]
RAS = axcodes2ornt(("R", "A", "S"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def synthetic_brain(shape, centre, radii, cube):
    """Canonical (X, Y, Z) image: a textured ellipsoid 'brain' (zero background) and a brighter cube inside it."""
    grid = np.indices(shape, dtype=np.float64)  # (3, X, Y, Z)
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    brain = r2 <= 1.0
    image = np.where(brain, 100.0 + 10.0 * np.sin(grid[0] / 3.0) + 5.0 * grid[1] / shape[1], 0.0)
    mask = np.zeros(shape, dtype=bool)
    mask[cube] = True
    assert (brain[mask]).all(), "the cube must lie inside the brain"
    image[mask] = 180.0
    return image.astype(np.float32), mask


def save_oriented(canonical: np.ndarray, canonical_affine: np.ndarray, codes: str, path: Path,
                  image_class=nib.Nifti1Image) -> np.ndarray:
    """Save a canonical array in the orientation `codes` (same physical object); return the native array."""
    to_native = ornt_transform(RAS, axcodes2ornt(tuple(codes)))
    native = apply_orientation(canonical, to_native)
    affine = canonical_affine @ inv_ornt_aff(to_native, canonical.shape)
    assert "".join(nib.aff2axcodes(affine)) == codes
    image_class(np.ascontiguousarray(native), affine).to_filename(str(path))
    return native


# An ellipsoid whose in-plane bounding box has even sides (24 × 28 voxels), so that with a 32-pixel
# model square and margin 2/28 the model pixels fall exactly on voxel centres (scale 1).
SHAPE = (36, 40, 20)
SPACING = (1.0, 1.0, 2.5)
CANONICAL_AFFINE = np.array([[1.0, 0, 0, -18], [0, 1.0, 0, -21], [0, 0, 2.5, -30], [0, 0, 0, 1]])
CUBE = (slice(21, 27), slice(24, 30), slice(8, 12))  # right-anterior of the centre
EXACT_CFG = PreprocessConfig(image_size=32, margin=2 / 28)


@pytest.fixture(scope="module")
def brain():
    image, cube = synthetic_brain(SHAPE, (17.5, 19.5, 9.5), (12, 14, 8), CUBE)
    return image, cube


def test_synthetic_box_is_even(brain):
    image, _ = brain
    xs = np.flatnonzero(image.any(axis=(1, 2)))
    ys = np.flatnonzero(image.any(axis=(0, 2)))
    assert (xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1) == (24, 28)


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_orientations_round_trip_exactly(brain, codes, tmp_path):
    image, cube = brain
    image_class = nib.Nifti2Image if codes == "PIR" else nib.Nifti1Image
    src = tmp_path / f"brain_{codes}.nii.gz"
    native_image = save_oriented(image, CANONICAL_AFFINE, codes, src, image_class)
    native_cube = apply_orientation(cube, ornt_transform(RAS, axcodes2ornt(tuple(codes))))

    vol = load_volume(src)
    assert "".join(vol.axcodes) == codes
    np.testing.assert_array_equal(vol.data, image)  # canonical data identical whatever the file's layout
    assert vol.spacing == SPACING
    np.testing.assert_allclose(vol.canonical_affine, CANONICAL_AFFINE, atol=1e-6)
    np.testing.assert_array_equal(vol.to_native(vol.data), native_image)
    assert vol.n_slices == SHAPE[2] and vol.native_shape == native_image.shape

    mv = prepare(vol, EXACT_CFG)
    assert mv.pixel_mm == pytest.approx(1.0)
    assert mv.data.shape == (SHAPE[2], 32, 32) and mv.data.dtype == np.float32
    back = mv.to_canonical(mv.mask_to_model(cube), order="nearest")  # (X, Y, Z) bool
    np.testing.assert_array_equal(back, cube)
    np.testing.assert_array_equal(vol.to_native(back), native_cube)

    out = write_nifti(back, vol, tmp_path / "out" / f"mask_{codes}.nii.gz", kind="mask")
    written = nib.load(str(out))
    assert isinstance(written, image_class)
    np.testing.assert_array_equal(written.affine, nib.load(str(src)).affine)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), native_cube.astype(np.uint8))
    for field in ("qform_code", "sform_code"):
        assert written.header[field] == vol.header[field]
    assert (written.header["cal_min"], written.header["cal_max"]) == (0, 1)


def test_scale_one_model_data_is_the_stretched_volume(brain):
    image, _ = brain
    vol = Volume.from_array(image, CANONICAL_AFFINE)
    mv = prepare(vol, EXACT_CFG)
    brain_mask = image > 0
    low, high = np.percentile(image[brain_mask], [EXACT_CFG.percentile_low, EXACT_CFG.percentile_high])
    assert mv.intensity_range == pytest.approx((low, high))
    expected = stretch_contrast(image, brain_mask, low, high)  # (X, Y, Z)
    inside = mv.to_canonical(np.ones_like(mv.data), order="nearest") > 0  # voxels covered by the model square
    back = mv.to_canonical(mv.data, order="linear")
    np.testing.assert_allclose(back[inside], expected[inside], atol=1e-5)
    assert mv.data.min() >= -1 and mv.data.max() <= 1
    np.testing.assert_allclose(mv.data[~mv.brain_mask], -1, atol=1e-5)  # background


def test_display_layout_is_radiological(brain):
    """Model row 0 is anterior, model column 0 is the patient's right; axial_slice uses the same layout."""
    image, cube = brain
    vol = Volume.from_array(image, CANONICAL_AFFINE)
    mv = prepare(vol, EXACT_CFG)
    rows, cols = np.nonzero(mv.mask_to_model(cube)[10])
    assert rows.mean() < 16 and cols.mean() < 16  # the cube is right-anterior: top-left
    k = 10
    shown = vol.axial_slice(k)  # (Y, X)
    assert shown.shape == (SHAPE[1], SHAPE[0])
    assert shown[0, 0] == image[-1, -1, k] and shown[-1, -1] == image[0, 0, k]
    assert vol.pixel_aspect == 1.0


def test_upsampled_round_trip_is_exact(brain):
    """When model pixels are smaller than voxels (the paper's 256 px), every mask voxel comes back exactly."""
    image, cube = brain
    mv = prepare(image, PreprocessConfig(image_size=72))
    assert mv.pixel_mm < 1
    np.testing.assert_array_equal(mv.to_canonical(mv.mask_to_model(cube), order="nearest"), cube)


def test_downscaled_round_trip_is_close(tmp_path):
    image, cube = synthetic_brain((70, 80, 12), (34.5, 39.5, 5.5), (28, 34, 6),
                                  (slice(27, 51), slice(31, 55), slice(4, 8)))
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    save_oriented(image, affine, "LPS", tmp_path / "big.nii")
    vol = load_volume(tmp_path / "big.nii")
    mv = prepare(vol, PreprocessConfig(image_size=32))
    assert mv.pixel_mm > 2
    back = mv.to_canonical(mv.mask_to_model(cube), order="nearest")
    assert dice(back, cube) > 0.95
    # A smooth heat map survives the round trip (bilinear both ways) away from the brain's edge.
    ramp = np.where(image > 0, 1.0 + np.linspace(0, 1, 70)[:, None, None], 0.0).astype(np.float32)  # (X, Y, Z)
    heat = prepare(ramp, PreprocessConfig(image_size=32, percentile_low=0, percentile_high=100))
    restored = heat.to_canonical(heat.data, order="linear")  # (X, Y, Z)
    expected = stretch_contrast(ramp, image > 0, *heat.intensity_range)
    interior = synthetic_brain((70, 80, 12), (34.5, 39.5, 5.5), (22, 28, 4), cube)[0] > 0
    np.testing.assert_allclose(restored[interior], expected[interior], atol=0.02)


def test_anisotropic_spacing_keeps_shape_round():
    """A circle of radius 28 mm sampled on a 1 × 2 mm grid is round in model space."""
    x, y = np.meshgrid(np.arange(64) - 31.5, (np.arange(32) - 15.5) * 2.0, indexing="ij")
    disc = (x ** 2 + y ** 2 <= 28 ** 2)[:, :, None].repeat(3, axis=2)  # (X, Y, Z)
    mv = prepare(disc * 50.0 + 0.0, PreprocessConfig(image_size=32, margin=0.1), spacing=(1.0, 2.0, 3.0))
    shown = mv.brain_mask[1]  # (S, S)
    rows, cols = np.flatnonzero(shown.any(axis=1)), np.flatnonzero(shown.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert abs(height - width) <= 1
    radius_px = 28 / mv.pixel_mm
    assert shown.sum() == pytest.approx(np.pi * radius_px ** 2, rel=0.06)


def test_slice_range_drops_small_end_slices(brain):
    image, _ = brain
    mv = prepare(image, EXACT_CFG, spacing=SPACING)
    areas = (image > 0).sum(axis=(0, 1))
    first, last = mv.slice_range
    assert areas[first] >= 0.25 * areas.max() > areas[first - 1]
    assert areas[last] >= 0.25 * areas.max() > areas[last + 1]
    assert mv.brain_mask[first:last + 1].any(axis=(1, 2)).all()


def test_background_level_handles_z_scored_data(brain):
    """A constant negative background (z-scored BraTS 2013) is background, not brain."""
    image, cube = brain
    shifted = np.where(image > 0, (image - 120.0) / 30.0, -4.0).astype(np.float32)
    a, b = prepare(image, EXACT_CFG), prepare(shifted, EXACT_CFG)
    assert b.background == -4.0 and b.brain_box == a.brain_box
    np.testing.assert_allclose(a.data, b.data, atol=1e-5)


SCANNER_AFFINE = np.array([[1.0, 0, 0, -90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])  # 1 mm RAS, real origin


def nifti(tmp_path: Path, data, name="x.nii.gz", affine=None) -> Path:
    path = tmp_path / name
    nib.Nifti1Image(np.asarray(data), SCANNER_AFFINE if affine is None else affine).to_filename(str(path))
    return path


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("data, message", [
    (RNG.random((8, 8), dtype=np.float32), "2-D"),
    (RNG.random((6, 6, 6, 2, 2), dtype=np.float32), "5-D"),
    (np.zeros((6, 6, 6), np.float32), "constant"),
    (np.full((6, 6, 6), np.nan, np.float32), "no finite values"),
    (np.where(RNG.random((6, 6, 6)) > 0.9, np.inf, 1.0).astype(np.float32), "NaN/inf voxels"),
])
def test_bad_contents_raise(tmp_path, data, message):
    with pytest.raises(VolumeError, match=message):
        load_volume(nifti(tmp_path, data))


def test_empty_volume_raises():
    with pytest.raises(VolumeError, match="empty"):
        Volume.from_array(np.zeros((0, 5, 5)))


def test_too_large_raises(tmp_path, monkeypatch):
    path = nifti(tmp_path, RNG.random((6, 6, 6), dtype=np.float32))
    monkeypatch.setattr(volmod, "MAX_VOXELS", 100)
    with pytest.raises(VolumeError, match="over the 100 limit"):
        load_volume(path)


def test_bad_files_raise(tmp_path):
    good = nifti(tmp_path, RNG.random((24, 24, 24), dtype=np.float32), "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(RNG.bytes(4000))
    junk_plain = tmp_path / "junk.nii"
    junk_plain.write_bytes(RNG.bytes(4000))
    not_gzip_inside = tmp_path / "plain_but_gz.nii.gz"
    not_gzip_inside.write_bytes(gzip.decompress(good.read_bytes())[:300])
    for path, message in [(truncated, "truncated or corrupt"), (junk, "not a readable NIfTI"),
                          (junk_plain, "not a readable NIfTI"), (not_gzip_inside, "not a readable NIfTI"),
                          (tmp_path / "missing.nii.gz", "does not exist"), (tmp_path / "scan.mgz", "not a .nii")]:
        with pytest.raises(VolumeError, match=message) as info:
            load_volume(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_four_d_warns_and_takes_first(tmp_path):
    data = RNG.random((6, 7, 8, 3), dtype=np.float32)
    with pytest.warns(UserWarning, match="using the first one"):
        vol = load_volume(nifti(tmp_path, data))
    np.testing.assert_array_equal(vol.data, data[..., 0])


def test_trailing_singleton_dimension_is_3d(tmp_path, recwarn):
    data = RNG.random((6, 7, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(load_volume(nifti(tmp_path, data)).data, data[..., 0])
    assert not recwarn.list


def test_identity_affine_warns_that_the_orientation_may_be_lost(tmp_path):
    data = RNG.random((6, 7, 8), dtype=np.float32)
    with pytest.warns(UserWarning, match="identity affine.*check that the slices look axial"):
        vol = load_volume(nifti(tmp_path, data, affine=np.eye(4)))
    np.testing.assert_array_equal(vol.data, data)  # still read, as RAS


def test_load_mask_checks_grid(brain, tmp_path):
    image, cube = brain
    img_path = tmp_path / "img.nii.gz"
    save_oriented(image, CANONICAL_AFFINE, "LAS", img_path)
    vol = load_volume(img_path)
    save_oriented(cube.astype(np.uint8), CANONICAL_AFFINE, "PIR", tmp_path / "cube.nii.gz")  # other layout, same grid
    np.testing.assert_array_equal(load_mask(tmp_path / "cube.nii.gz", vol), cube)
    empty = save_oriented(np.zeros(SHAPE, np.uint8), CANONICAL_AFFINE, "LAS", tmp_path / "empty.nii.gz")
    assert not load_mask(tmp_path / "empty.nii.gz", vol).any() and empty.shape == vol.native_shape
    shifted = CANONICAL_AFFINE + np.pad(np.ones((3, 1)), ((0, 1), (3, 0)))
    save_oriented(cube.astype(np.uint8), shifted, "LAS", tmp_path / "shifted.nii.gz")
    with pytest.raises(VolumeError, match="not on the grid"):
        load_mask(tmp_path / "shifted.nii.gz", vol)


def test_write_refuses_input_and_bad_arrays(brain, tmp_path):
    image, cube = brain
    src = tmp_path / "scan.nii.gz"
    save_oriented(image, CANONICAL_AFFINE, "LIA", src)
    before = src.read_bytes()
    vol = load_volume(src)
    with pytest.raises(VolumeError, match="refusing to overwrite"):
        write_nifti(cube, vol, tmp_path / "." / "scan.nii.gz")
    assert src.read_bytes() == before
    with pytest.raises(VolumeError, match="only 0 and 1"):
        write_nifti(cube * 0.5, vol, tmp_path / "m.nii.gz")
    with pytest.raises(VolumeError, match="canonical shape"):
        write_nifti(cube[:-1], vol, tmp_path / "m.nii.gz")
    with pytest.raises(VolumeError, match=".nii or .nii.gz"):
        write_nifti(cube, vol, tmp_path / "m.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_error_map_written_in_native_layout(brain, tmp_path):
    image, _ = brain
    src = tmp_path / "scan.nii"
    save_oriented(image, CANONICAL_AFFINE, "PIR", src)
    vol = load_volume(src)
    error = vol.to_native(np.square(image / image.max()))  # (native axes)
    out = write_nifti(error, vol, tmp_path / "err.nii.gz", kind="error", space="native")
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(written.dataobj), error)
    assert written.header["cal_min"] == 0 and 0 < written.header["cal_max"] <= error.max()
    np.testing.assert_array_equal(written.affine, nib.load(str(src)).affine)


def test_failed_write_leaves_no_file(brain, tmp_path, monkeypatch):
    image, cube = brain
    vol = Volume.from_array(image, CANONICAL_AFFINE)

    def disk_full(img, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(volmod.nib, "save", disk_full)
    with pytest.raises(VolumeError, match="free space"):
        write_nifti(cube, vol, tmp_path / "mask.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_model_maps_are_checked(brain):
    image, _ = brain
    mv = prepare(image, EXACT_CFG)
    with pytest.raises(VolumeError, match=r"\(n, 32, 32\)"):
        mv.to_canonical(np.zeros((3, 16, 16)))
    with pytest.raises(VolumeError, match="outside"):
        mv.to_canonical(np.zeros((3, 32, 32)), first_slice=SHAPE[2] - 2)
    part = mv.to_canonical(np.ones((2, 32, 32), bool), order="nearest", first_slice=5)
    assert part.dtype == bool and part[:, :, 5].sum() == 32 * 32  # scale 1: one voxel per model pixel
    assert (part[:, :, 6] == part[:, :, 5]).all() and not part[:, :, :5].any() and not part[:, :, 7:].any()


# Real scans beside the project (skipped when absent): every file loads; scans lie axial, anterior up.
DATA = Path(os.environ.get("SSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL = sorted(p for sub in ("healthy", "with-skull", "lesion-dev") for p in (DATA / sub).rglob("*.nii.gz"))
SCAN_NAMES = {"t1.nii.gz", "t2.nii.gz", "flair.nii.gz", "t1ce.nii.gz", "niivue-chris-t1.nii.gz",
              "brainchop-t1-crop.nii.gz"}  # the rest are labels and masks: loaded only


def first_mask_per_case() -> dict[Path, Path]:
    """Image → lesion mask, for the first manifest row of each lesion case."""
    manifest = DATA / "lesion-dev" / "manifest.csv"
    pairs: dict[str, tuple[Path, Path]] = {}
    for line in manifest.read_text().splitlines()[1:] if manifest.is_file() else []:
        case, _, image, mask, _ = line.split(",")
        pairs.setdefault(case, (manifest.parent / image, manifest.parent / mask))
    return dict(pairs.values())


LESION_MASKS = first_mask_per_case()


@pytest.mark.skipif(not REAL, reason=f"no real data under {DATA}")
@pytest.mark.parametrize("path", REAL, ids=lambda p: str(p.relative_to(DATA)))
def test_real_file_loads(path):
    vol = load_volume(path)
    assert vol.data.ndim == 3 and vol.data.dtype == np.float32 and np.isfinite(vol.data).all()
    if path.name not in SCAN_NAMES:
        return
    mv = prepare(vol, PreprocessConfig(image_size=128))
    first, last = mv.slice_range
    rows, cols = np.nonzero(mv.brain_mask[(first + last) // 2])
    assert 0.4 < rows.mean() / 128 < 0.6 and 0.4 < cols.mean() / 128 < 0.6  # brain centred
    box = mv.brain_mask.any(axis=0)
    height = np.ptp(np.flatnonzero(box.any(axis=1))) + 1  # anterior-posterior extent
    width = np.ptp(np.flatnonzero(box.any(axis=0))) + 1  # left-right extent
    assert 1.0 <= height / width <= 1.5  # heads are longer front to back than side to side
    if path in LESION_MASKS:  # the lesion mask shares the scan's grid and lies in its brain
        lesion = load_mask(LESION_MASKS[path], vol)
        assert lesion.any() and (vol.data[lesion] > mv.background).mean() > 0.95
        assert mv.mask_to_model(lesion)[first:last + 1].any()


SAME_SCAN = [DATA / "with-skull" / "brainchop-t1-crop.nii.gz", DATA / "with-skull" / "niivue-chris-t1.nii.gz"]


@pytest.mark.skipif(not all(p.is_file() for p in SAME_SCAN), reason="the two with-skull scans are absent")
def test_real_same_scan_in_two_orientations_agrees():
    """One subject stored LIA (1 mm) and RAS (0.88 mm): through the affines the canonical data coincide."""
    from scipy.ndimage import map_coordinates
    lia, ras = (load_volume(p) for p in SAME_SCAN)
    idx = np.indices(lia.data.shape)[:, ::4, ::4, ::4].reshape(3, -1)  # canonical voxels of the LIA scan
    to_ras = np.linalg.inv(ras.canonical_affine) @ lia.canonical_affine
    sampled = map_coordinates(ras.data, to_ras[:3, :3] @ idx + to_ras[:3, 3:], order=1)
    for data, expected in [(lia.data, "same"), (lia.data[::-1], "mirrored")]:
        values = data[::4, ::4, ::4].reshape(-1)
        both = (values > 0) & (sampled > 0)
        r = np.corrcoef(values[both], sampled[both])[0, 1]
        assert (r > 0.99) if expected == "same" else (r < 0.9)


# The resampling is separable sparse algebra; these references are the 2-D F.grid_sample it replaces.
import dataclasses  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def reference_to_model(mv, canonical, mode, fill):
    """(Z, S, S): one 2-D grid_sample over all slices at k × k sub-pixels, then k × k average pooling."""
    X, Y, _ = mv.canonical_shape
    sx, sy, _ = mv.spacing
    cx, cy = mv.centre
    k = 1 if mode == "nearest" else max(1, math.ceil(mv.pixel_mm / min(mv.spacing[:2]) - 1e-6))
    n = k * mv.image_size
    offset = (np.arange(n) + 0.5 - n / 2) * (mv.pixel_mm / k)
    x, y = cx - offset / sx, cy - offset / sy
    grid = np.empty((1, n, n, 2))
    grid[0, :, :, 0] = ((2 * y + 1) / Y - 1)[:, None]
    grid[0, :, :, 1] = ((2 * x + 1) / X - 1)[None, :]
    src = torch.from_numpy(np.asarray(canonical, dtype=np.float32) - fill)[None].permute(0, 3, 1, 2)
    out = F.grid_sample(src, torch.from_numpy(grid).float(), mode=mode, padding_mode="zeros", align_corners=False)
    return (F.avg_pool2d(out, k) if k > 1 else out)[0].numpy() + fill


def reference_to_canonical(mv, maps, mode, first_slice):
    """(X, Y, Z): 2-D grid_sample of the maps at every canonical voxel; other slices 0."""
    X, Y, _ = mv.canonical_shape
    sx, sy, _ = mv.spacing
    cx, cy = mv.centre
    S = mv.image_size
    c = (cx - np.arange(X)) * sx / mv.pixel_mm + S / 2 - 0.5
    r = (cy - np.arange(Y)) * sy / mv.pixel_mm + S / 2 - 0.5
    grid = np.empty((1, X, Y, 2))
    grid[0, :, :, 0] = ((2 * c + 1) / S - 1)[:, None]
    grid[0, :, :, 1] = ((2 * r + 1) / S - 1)[None, :]
    sampled = F.grid_sample(torch.from_numpy(maps.astype(np.float32))[None], torch.from_numpy(grid).float(),
                            mode=mode, padding_mode="zeros", align_corners=False)[0]  # (n, X, Y)
    out = np.zeros(mv.canonical_shape, dtype=np.float32)
    out[:, :, first_slice:first_slice + maps.shape[0]] = sampled.permute(1, 2, 0).numpy()
    return out


# (canonical shape, spacing, S, margin, shift of the square's centre in voxels, scale of the model pixel):
# enlarging and shrinking (k up to 4), anisotropic voxels, odd sizes, squares reaching outside the volume.
RESAMPLING_CASES = [
    ((40, 48, 24), (1.0, 1.0, 2.0), 32, 0.05, (0.0, 0.0), 1.0),
    ((40, 48, 24), (1.0, 1.0, 2.0), 96, 0.3, (3.3, -2.7), 1.0),
    ((61, 37, 5), (0.7, 1.3, 3.0), 32, 0.05, (-20.2, 9.6), 1.0),
    ((64, 64, 7), (1.0, 1.0, 1.0), 16, 0.0, (0.5, 0.5), 1.0),
    ((90, 70, 4), (0.5, 0.6, 4.0), 24, 0.1, (7.0, -11.0), 2.3),
    ((33, 29, 6), (2.0, 1.5, 2.0), 40, 0.2, (0.0, 0.0), 0.37),
    ((50, 50, 3), (1.0, 1.0, 1.0), 25, 0.05, (0.25, -0.25), 1.0),
]


@pytest.fixture(params=range(len(RESAMPLING_CASES)), ids=lambda i: f"case{i}")
def resampling_case(request):
    shape, spacing, size, margin, shift, scale = RESAMPLING_CASES[request.param]
    rng = np.random.default_rng(request.param)
    image = np.where(rng.random(shape) < 0.8, 50 + 100 * rng.random(shape), 0).astype(np.float32)  # (X, Y, Z)
    image[: shape[0] // 5] = 0  # an off-centre brain box
    mv = prepare(image, PreprocessConfig(image_size=size, margin=margin), spacing=spacing)
    mv = dataclasses.replace(mv, centre=(mv.centre[0] + shift[0], mv.centre[1] + shift[1]),
                             pixel_mm=mv.pixel_mm * scale)
    return mv, image, rng


# Resampling runs on the host (NumPy/scipy, sparse products) or on a torch device (dense separable products and
# gathers; here the CPU's), where its result stays.
def to_model(mv, array, mode, fill, device):
    if device is None:
        return mv._to_model(array, mode, fill)
    out = mv._to_model(torch.from_numpy(array).to(device), mode, fill)
    assert isinstance(out, torch.Tensor) and out.device == torch.device(device)
    return out.numpy()


@pytest.mark.parametrize("device", [None, "cpu"], ids=["host", "torch"])
def test_to_model_matches_grid_sample(resampling_case, device):
    mv, image, rng = resampling_case
    for values, fill in [(image, 0.0), (rng.standard_normal(image.shape).astype(np.float32), -1.0)]:
        new = to_model(mv, values, "bilinear", fill, device)
        assert new.dtype == np.float32 and new.shape == (mv.n_slices, mv.image_size, mv.image_size)
        np.testing.assert_allclose(new, reference_to_model(mv, values, "bilinear", fill),
                                   rtol=0, atol=1e-5 * np.ptp(values))
    mask = rng.random(image.shape) < 0.3
    new = to_model(mv, mask, "nearest", 0.0, device)
    assert new.dtype == bool
    np.testing.assert_array_equal(new, reference_to_model(mv, mask, "nearest", 0.0) > 0.5)
    labels = rng.integers(0, 4, image.shape)
    np.testing.assert_array_equal(to_model(mv, labels.astype(np.float32), "nearest", -1.0, device),
                                  np.where(reference_to_model(mv, np.ones_like(labels), "nearest", 0.0) > 0.5,
                                           reference_to_model(mv, labels, "nearest", 0.0), -1.0))


@pytest.mark.parametrize("device", [None, "cpu"], ids=["host", "torch"])
def test_to_canonical_matches_grid_sample(resampling_case, device):
    mv, _, rng = resampling_case
    S, Z = mv.image_size, mv.n_slices
    for first, n in [(0, Z), (1, Z - 2), (Z - 1, 1)]:
        heat = rng.standard_normal((n, S, S)).astype(np.float32) * 10
        np.testing.assert_allclose(mv.to_canonical(heat, "linear", first, device),
                                   reference_to_canonical(mv, heat, "bilinear", first),
                                   rtol=0, atol=1e-5 * np.ptp(heat))
        mask = rng.random((n, S, S)) < 0.5
        back = mv.to_canonical(mask, "nearest", first, device)
        assert back.dtype == bool
        np.testing.assert_array_equal(back, reference_to_canonical(mv, mask, "nearest", first) > 0.5)
        labels = rng.integers(0, 5, (n, S, S))
        out = mv.to_canonical(labels, "nearest", first, device)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, reference_to_canonical(mv, labels, "nearest", first))


def test_prepare_on_a_torch_device_equals_the_host(resampling_case):
    _, image, _ = resampling_case
    cfg = PreprocessConfig(image_size=24, margin=0.1)
    host, torch_cpu = prepare(image, cfg), prepare(image, cfg, device="cpu")
    np.testing.assert_allclose(torch_cpu.data, host.data, rtol=0, atol=1e-6)   # [-1, 1]: float32 sums' order
    np.testing.assert_array_equal(torch_cpu.brain_mask, host.brain_mask)
    assert (torch_cpu.slice_range, torch_cpu.centre, torch_cpu.intensity_range) == \
        (host.slice_range, host.centre, host.intensity_range)
    brain = image > 0
    np.testing.assert_array_equal(stretch_contrast(torch.from_numpy(image), torch.from_numpy(brain), 60.0, 120.0),
                                  stretch_contrast(image, brain, 60.0, 120.0))


def test_nearest_ties_round_half_to_even():
    """Model pixels exactly half a voxel apart: grid_sample's round-half-to-even picks the same neighbour."""
    image = np.zeros((16, 16, 2), np.float32)
    image[4:12, 4:12] = 1.0
    mv = prepare(image, PreprocessConfig(image_size=16, margin=0.0))
    assert mv.centre == (7.5, 7.5)
    shrunk = dataclasses.replace(mv, pixel_mm=2.0)  # model pixel centres at canonical x = 22.5 - 2c: all ties
    labels = np.arange(16 * 16 * 2, dtype=np.float32).reshape(16, 16, 2)
    np.testing.assert_array_equal(shrunk._to_model(labels, "nearest", 0.0),
                                  reference_to_model(shrunk, labels, "nearest", 0.0))
    enlarged = dataclasses.replace(mv, pixel_mm=0.5)  # canonical voxels at model c = 22.5 - 2x: all ties
    maps = np.arange(2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16)
    np.testing.assert_array_equal(enlarged.to_canonical(maps, "nearest"),
                                  reference_to_canonical(enlarged, maps, "nearest", 0))


@pytest.mark.parametrize("n", [1, 2, 3, 100, 1001])
def test_percentiles_equal_numpy(n):
    rng = np.random.default_rng(n)
    for values in [rng.standard_normal(n).astype(np.float32), rng.integers(0, 5, n).astype(np.float32)]:
        q = (0.0, 1.0, 37.5, 50.0, 99.0, 100.0)
        expect = tuple(float(v) for v in np.percentile(values, q))
        assert tuple(volmod.percentile(values.copy(), p) for p in q) == expect
        assert tuple(volmod.percentile(torch.from_numpy(values), p) for p in q) == expect     # on a device
