"""Tests for dicom.py: synthetic series read back exactly in any orientation, series picking, bad input, dcm2niix."""

import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_files import ds_text, write_image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

from sss_viewer.core import dicom
from sss_viewer.core.dicom import Series, find_series, is_dicom_folder, pick_series, read_series
from sss_viewer.core.inputs import read_input
from sss_viewer.core.volume import VolumeError, load_volume, write_nifti

SHAPE = (5, 6, 7)  # (N, R, C): slices, rows, columns of a synthetic series


def load(folder: Path, series: str | None = None):
    """A DICOM folder as every tool reads it (inputs.read_input)."""
    return read_input(folder, series)[0]


def rotation(ax: float, az: float) -> np.ndarray:
    """Rotation by ax degrees about x, then az degrees about z."""
    a, b = np.radians(ax), np.radians(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


# (row cosines r, column cosines c) in LPS; the slice normal is r × c
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "oblique": tuple(tuple(rotation(20, 10) @ v) for v in ((1, 0, 0), (0, 1, 0))),
}


def write_series(folder: Path, orientation="axial", step=2.0, reverse_names=False, seed=0, shape=SHAPE,
                 origin=(-3.0, 4.5, 10.25), **kwargs) -> dict:
    """A synthetic series of random int16 images (orientation: a name in ORIENTATIONS or (r, c)); returns what
    the reader must give back (LPS geometry)."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(-500, 2000, size=shape).astype(np.int16)  # (N, R, C)
    cosines = ORIENTATIONS[orientation] if isinstance(orientation, str) else orientation
    r, c = (np.array([float(t) for t in ds_text(v, 8)]) for v in cosines)
    positions = np.array([[float(t) for t in ds_text(np.add(origin, k * step * np.cross(r, c)), 6)]
                          for k in range(shape[0])])  # (N, 3) LPS
    for k in range(shape[0]):
        index = shape[0] - 1 - k if reverse_names else k
        write_image(folder / f"IM{index + 1:04d}.dcm", pixels[k], positions[k], r, c, instance=index + 1, **kwargs)
    return dict(pixels=pixels, positions=positions, r=r, c=c, spacing=kwargs.get("spacing", (0.9, 1.1)))


def world_of_pixels(truth: dict) -> np.ndarray:
    """RAS world coordinates (N, R, C, 3) of every pixel written: p_k + i Δcol r + j Δrow c, LPS → RAS."""
    n, rows, cols = truth["pixels"].shape
    d_row, d_col = truth["spacing"]
    k, j, i = np.indices((n, rows, cols))
    lps = truth["positions"][k] + (i * d_col)[..., None] * truth["r"] + (j * d_row)[..., None] * truth["c"]
    return lps * np.array([-1.0, -1.0, 1.0])


def assert_same_voxels(volume, truth: dict) -> None:
    """Every written pixel is a canonical voxel at the same world position, with the same value."""
    world = world_of_pixels(truth).reshape(-1, 3)  # (N·R·C, 3)
    inverse = np.linalg.inv(volume.canonical_affine)
    voxel = world @ inverse[:3, :3].T + inverse[:3, 3]  # (N·R·C, 3) canonical indices
    index = np.rint(voxel).astype(int)
    np.testing.assert_allclose(voxel, index, atol=1e-4)
    assert volume.data.size == world.shape[0]
    np.testing.assert_array_equal(volume.data[tuple(index.T)], truth["pixels"].reshape(-1).astype(np.float32))


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("reverse_names", [False, True])
def test_synthetic_series_read_back_exactly(tmp_path, orientation, reverse_names):
    truth = write_series(tmp_path / "s", orientation, reverse_names=reverse_names, seed=len(orientation))
    volume = load(tmp_path / "s")
    assert_same_voxels(volume, truth)
    assert volume.path == tmp_path / "s"
    assert sorted(volume.spacing) == pytest.approx(sorted((0.9, 1.1, 2.0)))
    assert volume.header.get_qform(coded=True)[1] == 1 and volume.header.get_sform(coded=True)[1] == 1
    np.testing.assert_allclose(volume.header.get_best_affine(), volume.affine, atol=1e-5)


def test_native_layout_is_dcm2niix(tmp_path):
    """2-D stacks: (columns, rows bottom-up, slices ascending along r × c); 3-D acquisitions: closest RAS+."""
    truth = write_series(tmp_path / "a", "axial", step=-2.0, reverse_names=True)
    native, affine = read_series(find_series(tmp_path / "a")[0])
    n, rows, cols = SHAPE
    assert native.shape == (cols, rows, n)
    np.testing.assert_array_equal(native[:, :, 0], truth["pixels"][-1, ::-1].T)  # lowest slice first, rows flipped
    assert nib.aff2axcodes(affine) == ("L", "A", "S")
    write_series(tmp_path / "s", "sagittal", MRAcquisitionType="3D")
    native, affine = read_series(find_series(tmp_path / "s")[0])
    assert native.shape == (n, cols, rows) and nib.aff2axcodes(affine) == ("R", "A", "S")


def test_strongly_oblique_3d_acquisition_as_dcm2niix(tmp_path):
    """dcm2niix reorders a 3-D acquisition tilted 47° about x to RIA (checked with dcm2niix v1.0.20260724),
    where nibabel's closest canonical layout would be RAS."""
    tilted = tuple(rotation(47, -2) @ v for v in ((1, 0, 0), (0, 1, 0)))
    truth = write_series(tmp_path / "s", tilted, MRAcquisitionType="3D")
    volume = load(tmp_path / "s")
    assert volume.axcodes == ("R", "I", "A") and volume.native_shape == (7, 6, 5)
    assert_same_voxels(volume, truth)


def test_rescale_slope_and_intercept(tmp_path):
    truth = write_series(tmp_path / "s", RescaleSlope="0.5", RescaleIntercept="-100")
    volume = load(tmp_path / "s")
    assert_same_voxels(volume, dict(truth, pixels=truth["pixels"] * 0.5 - 100))


def test_results_written_on_the_series_grid(tmp_path):
    write_series(tmp_path / "s", "oblique")
    volume = load(tmp_path / "s")
    out = write_nifti(volume.data > 500, volume, tmp_path / "mask.nii.gz")
    image = nib.load(out)
    assert image.shape == volume.native_shape
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-5)
    np.testing.assert_array_equal(load_volume(out).data > 0, volume.data > 500)


def test_find_series_skips_non_dicom_and_sorts_by_number(tmp_path):
    write_series(tmp_path / "b" / "deep", uid="1.2.3.20", number=20, description="t2_tse")
    write_series(tmp_path / "a", uid="1.2.3.5", number=5, description="t1_mprage")
    (tmp_path / "a" / "IM0001.dcm.nfo").write_text("# Dicom-File-Format\n(0008,0060) CS [MR]\n")
    (tmp_path / "notes.txt").write_text("scanner notes")
    report = Dataset()  # a DICOM file that is no image (a report): skipped
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID = "1.2.3.99"
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    series = find_series(tmp_path)
    assert [s.number for s in series] == [5, 20]
    assert [s.label() for s in series] == ['#5 "t1_mprage" 5 images 6×7', '#20 "t2_tse" 5 images 6×7']
    assert series[0].tags["Modality"] == "MR" and series[0].tags["ImageType"] == "ORIGINAL\\PRIMARY\\M\\ND"
    assert is_dicom_folder(tmp_path) and not is_dicom_folder(tmp_path / "notes.txt")


def make_series(number: int, description: str, n: int = 176, image_type: str = "ORIGINAL\\PRIMARY\\M\\ND",
                acquisition: str = "3D", **tags) -> Series:
    """A Series as find_series would list it (no files on disk)."""
    text = {k: "" for k in dicom.TAG_KEYWORDS}
    text.update(SeriesDescription=description, ProtocolName=description, ImageType=image_type,
                MRAcquisitionType=acquisition, Modality="MR", **tags)
    return Series(uid=f"1.2.3.{number}", number=number, description=description,
                  files=tuple(Path(f"{number}/{i}.dcm") for i in range(n)), rows=256, columns=256, tags=text)


def test_anatomical_excludes_localizers_field_maps_phase_and_small_series():
    assert make_series(19, "t1_MPRAGE").anatomical
    assert not make_series(1, "AAHead_Scout_64ch-head-coil").anatomical
    assert not make_series(2, "localizer", image_type="ORIGINAL\\PRIMARY\\M\\ND").anatomical
    assert not make_series(3, "gre_field_mapping", 36, acquisition="2D").anatomical
    assert not make_series(4, "t1_mprage", image_type="ORIGINAL\\PRIMARY\\P\\ND").anatomical
    assert not make_series(5, "t1_mprage_MPR_tra", image_type="DERIVED\\SECONDARY\\MPR").anatomical
    assert not make_series(6, "ep2d_DTI_20_dir", 42, acquisition="2D").anatomical
    assert not make_series(7, "t1_mprage", 12).anatomical
    assert make_series(8, "t2_tse_tra", 30, acquisition="2D").anatomical


def test_pick_series_automatic():
    t1 = make_series(19, "t1_MPRAGE")
    assert pick_series([make_series(1, "localizer"), make_series(2, "field_map", 36), t1]) is t1
    t2 = make_series(3, "t2_tse_tra", 200, acquisition="2D")
    assert pick_series([t2, t1]) is t1  # a 3-D acquisition first
    with pytest.raises(VolumeError, match=r"2 series could be .*#19 .*; #20 .*choose one with --series"):
        pick_series([t1, make_series(20, "t1_MPRAGE_post")])
    with pytest.raises(VolumeError, match=r"no series looks like an anatomical .*choose one with --series"):
        pick_series([make_series(1, "localizer"), make_series(2, "t1_mprage", 8)])
    assert pick_series([make_series(2, "t1_mprage", 8)]).number == 2  # a folder's only series


def test_pick_series_wanted():
    series = [make_series(2, "gre_field_mapping"), make_series(3, "gre_field_mapping_ph"),
              make_series(19, "t1_MPRAGE"), make_series(20, "t1_MPRAGE_post")]
    assert pick_series(series, "19").number == 19 and pick_series(series, 19).number == 19
    assert pick_series(series, "1.2.3.3").number == 3
    assert pick_series(series, "POST").number == 20
    assert pick_series(series, "t1_mprage").number == 19  # the exact description wins over a longer one
    with pytest.raises(VolumeError, match=r"several series match 'field' \(#2 .*; #3 .*\).*--series"):
        pick_series(series, "field")
    with pytest.raises(VolumeError, match=r"no series matches 'flair' \(#2 .*; #20 .*\).*--series"):
        pick_series(series, "flair")


def test_multi_volume_series_uses_the_first_volume(tmp_path):
    truth = write_series(tmp_path / "s", seed=1)
    second = write_series(tmp_path / "tmp", seed=2)
    for k, path in enumerate(sorted((tmp_path / "tmp").iterdir())):
        write_image(tmp_path / "s" / f"V2_{k}.dcm", second["pixels"][k], second["positions"][k], second["r"],
                    second["c"], instance=100 + k, AcquisitionNumber=2)
    with pytest.warns(UserWarning, match="holds 2 volumes; using the first"):
        volume = load(tmp_path / "s")
    assert_same_voxels(volume, truth)


def error_for(folder: Path, match: str) -> str:
    with pytest.raises(VolumeError, match=match) as info:
        load(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_slice(tmp_path):
    write_series(tmp_path / "s")
    (tmp_path / "s" / "IM0003.dcm").unlink()
    message = error_for(tmp_path / "s", r"spacing .* is 4 mm between .*IM0002.dcm and .*IM0004.dcm but 2 mm "
                                        r"elsewhere: a slice is missing")
    assert "re-export" in message


def test_mixed_sizes_and_orientations(tmp_path):
    truth = write_series(tmp_path / "size")
    write_image(tmp_path / "size" / "IM0003.dcm", truth["pixels"][2, :5], truth["positions"][2], truth["r"],
                truth["c"])
    error_for(tmp_path / "size", r"IM0003.dcm is 5×7 pixels, not 6×7 .* mixes image sizes")
    truth = write_series(tmp_path / "turned")
    write_image(tmp_path / "turned" / "IM0004.dcm", truth["pixels"][3], truth["positions"][3], (0, 1, 0),
                (0, 0, -1))
    error_for(tmp_path / "turned", r"IM0004.dcm is oriented differently from .*IM0001.dcm.* mixes slice orientations")


def test_single_image(tmp_path):
    write_series(tmp_path / "s", shape=(1, 6, 7))
    error_for(tmp_path / "s", r"IM0001.dcm is a single 2-D image")


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_compressed_pixels_without_a_decoder(tmp_path, syntax):
    write_series(tmp_path / "s", syntax=syntax)
    error_for(tmp_path / "s", rf"IM0001.dcm: pixel data compressed as {re.escape(syntax.name)}, which this reader "
                              r"cannot decode .*dcm2niix")


def test_truncated_files(tmp_path):
    write_series(tmp_path / "pixels")
    path = tmp_path / "pixels" / "IM0002.dcm"
    path.write_bytes(path.read_bytes()[:-20])
    error_for(tmp_path / "pixels", r"IM0002.dcm: its pixel data cannot be read .*truncated or damaged")
    write_series(tmp_path / "header")
    path = tmp_path / "header" / "IM0005.dcm"
    path.write_bytes(path.read_bytes()[:400])
    error_for(tmp_path / "header", r"IM0005.dcm is a damaged DICOM image .*truncated")


def test_unreadable_file(tmp_path):
    write_series(tmp_path / "s")
    (tmp_path / "s" / "IM0006.dcm").symlink_to(tmp_path / "gone.dcm")
    assert is_dicom_folder(tmp_path / "s")
    error_for(tmp_path / "s", r"IM0006.dcm cannot be read .*permissions")


def test_no_dicom_and_missing_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    error_for(tmp_path, r"folder without DICOM files")
    assert not is_dicom_folder(tmp_path) and not is_dicom_folder(tmp_path / "absent")
    error_for(tmp_path / "absent", r"absent does not exist")
    with pytest.raises(VolumeError, match=r"absent does not exist or is not a folder"):
        find_series(tmp_path / "absent")


def test_size_limit_and_values(tmp_path, monkeypatch):
    write_series(tmp_path / "s")
    monkeypatch.setattr(dicom, "MAX_VOXELS", 100)
    error_for(tmp_path / "s", r"has 210 voxels, over the 100 limit")
    monkeypatch.undo()
    truth = write_series(tmp_path / "flat")
    for k in range(SHAPE[0]):
        write_image(tmp_path / "flat" / f"IM{k + 1:04d}.dcm", np.full(SHAPE[1:], 7, np.int16), truth["positions"][k],
                    truth["r"], truth["c"])
    error_for(tmp_path / "flat", r"is constant")


# --- the real Siemens study, against dcm2niix -------------------------------------------------------------------

@pytest.fixture(scope="module")
def trio():
    from conftest import DATA
    folder = DATA / "dicom" / "trio-b17"
    if not folder.is_dir():
        pytest.skip(f"DICOM sample {folder} is absent")
    return folder, find_series(folder)


def test_trio_series_and_automatic_pick(trio):
    folder, series = trio
    assert [s.label() for s in series] == ['#2 "gre_field_mapping" 36 images 64×64',
                                           '#3 "gre_field_mapping" 36 images 64×64',
                                           '#19 "t1_MPRAGEcr_noGRAPPA" 176 images 256×256']
    assert [s.anatomical for s in series] == [False, False, True]
    assert pick_series(series).number == 19
    assert pick_series(series, "3").tags["ImageType"] == "ORIGINAL\\PRIMARY\\P\\ND"
    assert pick_series(series, series[0].uid).number == 2
    phase = load(folder / "gre_field_mapping_3")  # a folder's only series
    assert phase.native_shape == (64, 64, 36) and phase.axcodes == ("L", "A", "S")


def test_trio_t1_matches_dcm2niix(trio):
    """The T1 as dcm2niix converted it: same array layout and values, affine within 0.01 mm."""
    folder, series = trio
    reference = folder.parents[1] / "healthy-with-skull" / "dcm2nii-trio-b17" / "t1.nii.gz"
    if not reference.is_file():
        pytest.skip(f"dcm2niix conversion {reference} is absent")
    image = nib.load(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        native, affine = read_series(pick_series(series))
    assert native.shape == image.shape == (176, 256, 256)
    assert np.abs(affine - image.affine).max() < 0.01
    np.testing.assert_array_equal(native, np.asarray(image.dataobj))
