"""MNI alignment (core/align.py): a known affine recovered, results mapped back onto the input's voxels, the
fallback for a failed registration, the checkpoint's record of it, and sss-train --align."""

import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sss_viewer.core import align as align_module
from sss_viewer.core.align import aligned_grid, template
from sss_viewer.core.checkpoint import load_checkpoint
from sss_viewer.core.config import PreprocessConfig, config_from_dict, config_to_dict
from sss_viewer.core.volume import VolumeError, load_volume, prepare
from sss_viewer.gui.coords import canonical_to_model, model_to_canonical
from trainer.loop import TrainConfig, train

CFG = PreprocessConfig(image_size=32, align="mni-affine")


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return r


# scan world → template world: the subject's head is tilted, smaller and off centre
SCAN_TO_TEMPLATE = rotation(0, 9) @ rotation(2, -7) @ np.diag([1.1, 1.05, 1.1, 1.0])
SCAN_TO_TEMPLATE[:3, 3] = (6.0, -9.0, 4.0)


def make_subject(path: Path, skull: float = 0.0, a_mm: float = 2.0) -> Path:
    """The template seen through SCAN_TO_TEMPLATE, on a LIA grid of 2 mm voxels (`a_mm` along A; voxel axes: x
    flipped, z and y swapped)."""
    data, affine = template()
    scan_affine = np.array([[-2.0, 0, 0, 90], [0, 0, a_mm, -120], [0, -2.0, 0, 100], [0, 0, 0, 1]])  # LIA
    shape = (90, 80, int(round(220 / a_mm)))  # (L, I, A) voxels
    to_template_voxel = np.linalg.inv(affine) @ SCAN_TO_TEMPLATE @ scan_affine
    scan = ndimage.affine_transform(data, to_template_voxel, output_shape=shape, order=1)  # (L, I, A)
    scan[scan < 1] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(scan.astype(np.float32) + skull, scan_affine), str(path))
    return path


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return make_subject(tmp_path_factory.mktemp("align") / "t1.nii.gz")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def known_affine_error_mm(volume, alignment) -> np.ndarray:
    """Distance (mm) between where the found and the true map put each template brain voxel in the input."""
    data, affine = template()
    shape, grid = aligned_grid()
    world = (affine @ np.c_[np.argwhere(data > 0), np.ones(np.count_nonzero(data > 0))].T)  # (4, N)
    found = alignment.matrix @ np.linalg.inv(grid) @ world
    truth = np.linalg.inv(volume.canonical_affine) @ np.linalg.inv(SCAN_TO_TEMPLATE) @ world
    return np.linalg.norm(volume.spacing * (found - truth)[:3].T, axis=1)  # (N,)


def test_registration_recovers_a_known_affine(subject):
    volume = load_volume(subject)
    aligned, alignment = align_module.align(volume)
    assert alignment.registered and alignment.overlap > 0.9
    shape, grid = aligned_grid()
    assert aligned.data.shape == alignment.shape == shape and aligned.spacing == (1.0, 1.0, 1.0)
    error_mm = known_affine_error_mm(volume, alignment)
    assert error_mm.mean() < 1.5 and error_mm.max() < 4.0
    # the aligned brain sits on the template's
    data, _ = template()
    coarse = aligned.data[::2, ::2, ::2] > 0
    assert dice(coarse, data > 0) > 0.9


def test_a_large_fine_scan_is_registered_from_a_binned_copy(tmp_path, monkeypatch):
    import SimpleITK as sitk

    volume = load_volume(make_subject(tmp_path / "fine.nii.gz", a_mm=0.8))   # 0.8 mm along A: canonical y
    assert volume.spacing == pytest.approx((2.0, 0.8, 2.0))
    binned, bin_shrink = [], sitk.BinShrink
    monkeypatch.setattr(sitk, "BinShrink", lambda image, factors: binned.append(factors) or bin_shrink(image, factors))
    monkeypatch.setattr(align_module, "REGISTER_MAX_VOXELS", volume.data.size - 1)   # just too large
    _, alignment = align_module.align(volume)
    assert binned == [[1, 2, 1]]                         # only the fine axis
    assert alignment.registered and alignment.input_shape == volume.data.shape
    error_mm = known_affine_error_mm(volume, alignment)
    assert error_mm.mean() < 1.5 and error_mm.max() < 4.0


def test_registration_runs_on_one_itk_thread_and_restores_the_count(subject, monkeypatch):
    import SimpleITK as sitk

    before, during = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), []
    execute = sitk.ImageRegistrationMethod.Execute
    monkeypatch.setattr(sitk.ImageRegistrationMethod, "Execute", lambda self, *images: during.append(
        sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()) or execute(self, *images))
    first = align_module.align(load_volume(subject))[1].matrix
    assert during == [1] and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    assert np.array_equal(align_module.align(load_volume(subject))[1].matrix, first)     # bit for bit


def test_aligned_prepare_maps_results_back_onto_the_input_voxels(subject):
    volume = load_volume(subject)
    mv = prepare(volume, CFG)
    assert mv.alignment is not None and mv.cfg == CFG
    assert mv.canonical_shape == mv.alignment.shape != volume.data.shape
    brain = volume.data > 0  # (X, Y, Z) of the input
    back = mv.to_canonical(mv.brain_mask, "nearest")
    assert back.shape == volume.data.shape and back.dtype == bool
    assert dice(back, brain) > 0.9
    heat = mv.to_canonical(mv.brain_mask.astype(np.float32), "linear")
    assert heat.shape == volume.data.shape and dice(heat > 0.5, brain) > 0.9
    assert dice(mv.mask_to_model(brain), mv.brain_mask) > 0.9
    shown = mv.image_to_model(volume.data)  # (Z, S, S): the model's own input, resampled the same way
    assert np.abs(shown - mv.data)[mv.brain_mask].mean() < 0.05
    # the model pixel deepest in the brain names an input voxel inside the brain, and the way back finds it
    depth = ndimage.distance_transform_edt(mv.brain_mask)  # (Z, S, S)
    z, v, u = (int(i) for i in np.unravel_index(depth.argmax(), depth.shape))
    x, y, k = model_to_canonical(mv, z, u + 0.5, v + 0.5)
    assert brain[x, y, k]
    z2, v2, u2 = canonical_to_model(mv, x, y, k)
    assert abs(z2 - z) <= 2 and abs(v2 - v) <= 1 and abs(u2 - u) <= 1


def test_a_failed_registration_falls_back_to_the_centre_of_mass_with_a_warning(subject, monkeypatch):
    real = align_module._register

    def lost(fixed, moving):
        _, start = real(fixed, moving)
        return np.diag([3.0, 3.0, 3.0, 1.0]) @ start, start  # the optimiser ran off: three times too large

    monkeypatch.setattr(align_module, "_register", lost)
    with pytest.warns(UserWarning, match="registration to the MNI template failed"):
        _, alignment = align_module.align(load_volume(subject))
    assert not alignment.registered and alignment.overlap > align_module.MIN_OVERLAP


def test_without_simpleitk_an_aligned_checkpoint_says_what_to_install(subject, monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(VolumeError, match="pip install SimpleITK"):
        prepare(load_volume(subject), CFG)


def test_alignment_is_recorded_and_checked():
    assert config_from_dict(PreprocessConfig, config_to_dict(CFG)) == CFG
    old = {k: v for k, v in config_to_dict(CFG).items() if k != "align"}   # a checkpoint from before alignment
    assert config_from_dict(PreprocessConfig, old).align == "none"
    with pytest.raises(ValueError, match="align must be"):
        PreprocessConfig(align="mni-nonlinear")


def test_sss_train_align_trains_on_aligned_slices_and_records_it(subject, tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_VIEWER_CACHE_DIR", str(tmp_path / "cache"))
    cfg = TrainConfig(data=(str(subject),), out=tmp_path / "run", preset="tiny", batch_size=2, device="cpu",
                      progress=False, preview_every=0, steps=1, align="mni-affine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # a clean registration, no fallback
        checkpoint = load_checkpoint(train(cfg))
    assert checkpoint.preset.preprocess.align == "mni-affine"
    (entry,) = (tmp_path / "cache" / "slices").glob("*.npy")
    slices = np.load(entry)
    mv = prepare(load_volume(subject), checkpoint.preset.preprocess)
    first, last = mv.slice_range
    np.testing.assert_allclose(slices, mv.data[first:last + 1], atol=0.05)  # ITK threads: not bit for bit


def test_viewer_shows_the_aligned_scan_and_answers_on_the_inputs_voxels(qtbot, subject, tiny_checkpoint, tmp_path,
                                                                         monkeypatch):
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import Qt

    from sss_viewer.gui import texts
    from sss_viewer.gui.main_window import MainWindow
    from sss_viewer.gui.settings import Settings

    monkeypatch.setenv("SSS_VIEWER_CONFIG_DIR", str(tmp_path / "config"))
    w = MainWindow(Settings.load())
    qtbot.addWidget(w)
    w.start(subject, tiny_checkpoint(CFG), device="cpu")
    qtbot.waitUntil(lambda: w.shown is not None, timeout=60_000)
    mv, volume = w.session.model_volume, w.session.volume
    assert mv.alignment is not None and "aligned to the MNI template" in w.input_label.text()
    native = np.asarray(nib.load(str(subject)).dataobj)  # (L, I, A)

    depth = ndimage.distance_transform_edt(mv.brain_mask[w.state.slice])  # hover the brain's deepest pixel
    v, u = np.unravel_index(depth.argmax(), depth.shape)
    w.panels.hovered.emit(u + 0.5, v + 0.5)
    x, y, k = model_to_canonical(mv, w.state.slice, u + 0.5, v + 0.5)
    i, j, kk = np.rint(np.linalg.inv(nib.load(str(subject)).affine) @ volume.canonical_affine @ [x, y, k, 1])[:3]
    i, j, kk = int(i), int(j), int(kk)
    assert native[i, j, kk] > 0
    assert texts.STATUS_VOXEL.format(i=i, j=j, k=kk, value=native[i, j, kk]) in w.cursor_label.text()

    w.state.set(threshold=0.0, postprocess=False)                     # mask = every brain pixel with error > 0
    with qtbot.waitSignal(w.exported, timeout=120_000) as done:
        w.export_nifti(tmp_path / "out", compute_missing=True)
    mask = nib.load(str(done.args[0][0]))
    assert mask.shape == native.shape and np.allclose(mask.affine, nib.load(str(subject)).affine)
    assert dice(np.asarray(mask.dataobj) > 0, native > 0) > 0.85

    brain = w.volume_maps().lesions[0]   # the whole brain, one region: the table counts slices as the slider does
    first, last = mv.slice_range
    view_first, view_last, view_peak = brain.view_slices
    assert abs(view_first - first) <= 2 and abs(view_last - last) <= 2 and brain.slices != (view_first, view_last)
    w.reading.table.set_lesions([brain])
    cell = w.reading.table.proxy.index(0, 4)
    assert cell.data() == texts.LESION_SLICES.format(first=view_first, last=view_last)
    assert f"the scan's own axial slices {brain.slices[0]}–{brain.slices[1]}" in cell.data(Qt.ItemDataRole.ToolTipRole)
    w.reading.jump_to(brain)
    assert w.state.slice == view_peak
    w.close()
