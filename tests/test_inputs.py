"""open_scan: NIfTI or DICOM in, the brain by verdict, mode or mask file, the modality, what the user is told."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sss_viewer.core import inputs
from sss_viewer.core.brain import Verdict
from sss_viewer.core.volume import VolumeError

AFFINE = np.diag([-1.0, 1.0, 1.5, 1.0])  # LAS


def head_and_brain(shape=(24, 28, 20)) -> tuple[np.ndarray, np.ndarray]:
    """(head, brain): a textured ellipsoid 'brain' inside a bright shell of 'scalp', and its mask (native)."""
    g = np.indices(shape, dtype=np.float64)
    r = np.sqrt(sum(((gi - (n - 1) / 2) / (0.5 * n)) ** 2 for gi, n in zip(g, shape)))
    brain = r < 0.7
    head = np.where(brain, 100 + 10 * np.sin(g[0]), np.where(r < 0.95, 200.0, 0.0))
    return head.astype(np.float32), brain


class FakeExtractor:
    """Stands in for deepbet: returns the mask it was given and counts its calls."""
    def __init__(self, mask: np.ndarray):
        self.brain, self.calls = mask, 0

    def mask(self, volume):
        self.calls += 1
        return self.brain


@pytest.fixture
def head(tmp_path, monkeypatch):
    data, brain = head_and_brain()
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.Nifti1Image(data, AFFINE).to_filename(str(path))
    mask = tmp_path / "sub-01_brainmask.nii.gz"
    nib.Nifti1Image(brain.astype(np.uint8), AFFINE).to_filename(str(mask))
    canonical = brain[::-1]                                             # LAS → RAS: x flipped
    fake = FakeExtractor(canonical)
    monkeypatch.setattr(inputs, "extractor", lambda device="cpu": fake)
    return path, mask, canonical, fake


def with_verdict(monkeypatch, stripped: bool) -> None:
    monkeypatch.setattr(inputs, "skull_verdict", lambda volume: Verdict(stripped, "measured", {"x": 1.0}))


@pytest.mark.parametrize("mode, stripped, extracted", [
    ("auto", False, True), ("auto", True, False), ("force", True, True), ("off", False, False)])
def test_modes_decide_extraction(head, monkeypatch, mode, stripped, extracted):
    path, _, brain, fake = head
    with_verdict(monkeypatch, stripped)
    scan = inputs.open_scan(path, skull=mode)
    assert fake.calls == int(extracted) and scan.extraction == ("deepbet" if extracted else "none")
    assert scan.skull == mode and scan.verdict.stripped == stripped
    if extracted:
        assert np.array_equal(scan.brain, brain)
        assert (scan.volume.data[~brain] == 0).all()                   # outside: the background
        np.testing.assert_array_equal(scan.volume.data[brain], scan.original.data[brain])
    else:
        assert scan.brain is None and scan.volume is scan.original
    assert (scan.warning is not None) == (mode == "off" and not stripped)
    assert scan.modality == "t1" and scan.modality_source == "file name"
    report = scan.to_json("x_brainmask.nii.gz" if extracted else None)
    assert report["verdict"] == ("skull-stripped" if stripped else "with skull") and report["mode"] == mode
    assert (report["brain_ml"] is not None) == extracted


def test_mask_file_wins_and_is_checked(head, monkeypatch, tmp_path):
    path, mask, brain, fake = head
    with_verdict(monkeypatch, False)
    scan = inputs.open_scan(path, skull="auto", brain_mask=mask)
    assert fake.calls == 0 and scan.skull == "mask file" and scan.extraction == f"mask file {mask}"
    assert np.array_equal(scan.brain, brain)
    empty = tmp_path / "empty_mask.nii.gz"
    nib.Nifti1Image(np.zeros(brain.shape, np.uint8), AFFINE).to_filename(str(empty))
    with pytest.raises(VolumeError, match="empty"):
        inputs.open_scan(path, brain_mask=empty)
    other = tmp_path / "other_grid_mask.nii.gz"
    nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), AFFINE).to_filename(str(other))
    with pytest.raises(VolumeError, match="not on the grid"):
        inputs.open_scan(path, brain_mask=other)
    with pytest.raises(ValueError, match="skull must be"):
        inputs.open_scan(path, skull="sometimes")


def test_folders_without_dicom_and_modality_from_tags(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError, match="without DICOM"):
        inputs.open_scan(tmp_path / "empty")
    assert inputs.input_modality(Path("a/brain.nii.gz"), None) == (None, "nothing in the file or folder name names one")
    assert inputs.extraction_device("cpu") == "cpu" and inputs.extraction_device("cuda:7") in ("cpu", "cuda:7")
