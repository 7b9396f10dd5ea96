"""The reading room in the window (pytest-qt, offscreen): linked planes, the lesion list, a reference, no model calls."""

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, Qt  # noqa: E402

from sss_viewer.core.metrics import overlap  # noqa: E402
from sss_viewer.gui.coords import canonical_to_model  # noqa: E402
from sss_viewer.gui.planes import index_to_view, plane_image  # noqa: E402
from test_gui import AFFINE, files, settings_dir, wait_for, window  # noqa: E402,F401

RUN_WAIT = 60_000  # ms, a whole tiny volume on the CPU


@pytest.fixture
def computed(qtbot, window):
    """The window after a whole-volume run at a threshold where the noisy tiny model flags many regions."""
    w = window
    w.worker.cpu_chunk = 16
    w.state.set(threshold=0.7, postprocess=False)
    with qtbot.waitSignal(w.run_done, timeout=RUN_WAIT):
        w.run_whole_volume()
    return w


def click_plane(qtbot, w, plane: str, cursor: tuple[int, int, int]) -> None:
    """Left-click the voxel `cursor` (z, v, u) where `plane` draws it."""
    planes = w.reading.planes
    view = planes.views[plane]
    x, y = index_to_view(plane, cursor, w.session.model_volume.n_slices, planes._z_ratio)
    pos = view.canvas.mapFromScene(view.view.mapViewToScene(QPointF(x, y)))
    qtbot.mouseClick(view.canvas.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def show_planes(qtbot, w) -> None:
    w.layout_actions["planes"].trigger()
    assert w.state.layout == "planes" and w.views.currentWidget() is w.reading.planes
    qtbot.waitExposed(w.reading.planes)


def test_planes_before_a_run_show_the_image_and_say_why(qtbot, window):
    w = window
    show_planes(qtbot, w)
    planes, mv = w.reading.planes, w.session.model_volume
    assert not planes.note.isHidden()                                   # the model works on axial slices
    assert planes.cursor[0] == w.state.slice
    z, v, u = planes.cursor
    np.testing.assert_array_equal(planes.views["coronal"].image.image, plane_image(mv.data, "coronal", v))
    assert w.reading.table.lesions_shown() == []
    w.layout_actions["panels"].trigger()                                # Ctrl+1: the four axial panels again
    assert w.views.currentWidget() is w.panels


def test_a_click_in_coronal_moves_the_axial_slice_and_the_sagittal_plane_without_the_model(qtbot, computed):
    w = computed
    show_planes(qtbot, w)
    planes, mv = w.reading.planes, w.session.model_volume
    assert planes.note.isHidden()                                       # results of the whole volume are on show
    calls = w.worker.model_calls
    first, last = mv.slice_range
    z0, v0, u0 = planes.cursor
    target = (first + 2 if z0 != first + 2 else first + 3, v0, 9)       # another slice, another column
    click_plane(qtbot, w, "coronal", target)
    assert w.state.slice == target[0] and w.state.cursor == (v0, 9)    # the axial slice and the sagittal plane
    assert planes.cursor == target
    np.testing.assert_array_equal(planes.views["sagittal"].image.image, plane_image(mv.data, "sagittal", 9))
    wait_for(qtbot, lambda: w.shown is not None and w.shown.slice == target[0])
    np.testing.assert_array_equal(w.panels.original_image.image, mv.data[target[0]])   # the axial panels follow
    click_plane(qtbot, w, "sagittal", (first + 4, 5, 9))               # sagittal: slice and row, same column
    assert w.state.slice == first + 4 and w.state.cursor == (5, 9)
    w.slice_slider.setValue(first + 1)                                  # the slider moves the planes' crosshair
    assert planes.cursor == (first + 1, 5, 9)
    for layout in ("panels", "planes", "panels"):
        w.layout_actions[layout].trigger()
    assert w.worker.model_calls == calls                                # cached results only: no model call


def test_a_lesion_row_jumps_every_view_to_its_region(qtbot, computed):
    w = computed
    show_planes(qtbot, w)
    table, mv = w.reading.table, w.session.model_volume
    wait_for(qtbot, lambda: len(table.lesions_shown()) > 1)
    lesions = w.volume_maps().lesions
    assert table.lesions_shown() == lesions                             # the list as sss-detect counts it
    assert sum(l.voxels for l in lesions) == int(w.volume_maps().canonical_mask.sum())
    target = lesions[1]
    rect = table.view.visualRect(table.proxy.index(1, 0))              # sorted by volume: the second largest
    with qtbot.waitSignal(table.chosen):
        qtbot.mouseClick(table.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    x, y, _ = target.centre_canonical
    z, v, u = canonical_to_model(mv, x, y, target.peak_slice)
    assert w.state.slice == target.peak_slice and w.state.cursor == (v, u)
    assert w.reading.planes.cursor == (z, v, u)
    table.min_spin.setValue(lesions[0].volume_ml - 0.001)               # the size filter keeps the largest only
    assert table.lesions_shown() == [lesions[0]]


def test_reference_overlay_counts_dice_precision_and_recall(qtbot, computed, tmp_path):
    w = computed
    mask_path, _ = w.export_nifti(tmp_path, compute_missing=False)
    mask = np.asanyarray(nib.load(str(mask_path)).dataobj) > 0          # (native) the whole-volume mask
    half = mask.copy()
    half[: mask.shape[0] // 2] = False                                  # a reference holding part of it
    tp, fp = int(half.sum()), int((mask & ~half).sum())
    assert tp > 0 and fp > 0
    ref_path = tmp_path / "reference.nii.gz"
    nib.save(nib.Nifti1Image(half.astype(np.uint8), AFFINE), str(ref_path))

    assert w.load_reference(ref_path)
    ref = w.reading.reference
    assert ref.canonical.sum() == tp and w.clear_reference_action.isEnabled()
    z = w.state.slice
    np.testing.assert_array_equal(w.panels.reference_contour.data, ref.model[z].astype(np.float32))
    text = w.reading.overlap_label.text()
    on_slice = overlap(w.panels.shown_mask(), ref.model[z])
    assert f"Dice {on_slice.dice:.3f}" in text.split("volume")[0]
    assert (f"volume: Dice {2 * tp / (2 * tp + fp):.3f} · precision {tp / (tp + fp):.3f} · recall 1.000"
            in text)                                                    # hand count on the input's voxels

    assert w.load_reference(ref_path) and w.reading.reference is not ref   # the same file again: counted anew
    assert w.reading.overlap_label.text() == text
    ref = w.reading.reference
    other = tmp_path / "other_grid.nii.gz"                              # another grid: refused, the old one kept
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.uint8), AFFINE), str(other))
    assert not w.load_reference(other)
    assert w._error_box.isVisible() and "not on the grid" in w._error_box.text()
    assert w.reading.reference is ref
    w.clear_reference_action.trigger()
    assert w.reading.reference is None and w.reading.overlap_label.isHidden()
    assert w.panels.reference_contour.data is None


def test_report_from_the_viewer_computes_the_missing_slices_first(qtbot, window, tmp_path):
    pdfium = pytest.importorskip("pypdfium2")
    w = window
    assert w.missing_slices()
    path = tmp_path / "report.pdf"
    assert w.export_report(path, compute_missing=False) is None        # incomplete and not asked to compute
    assert not path.exists() and "run the whole volume" in w._error_box.text()
    w._error_box.close()
    w.state.set(threshold=0.7, postprocess=False)
    with qtbot.waitSignal(w.run_done, timeout=RUN_WAIT):
        assert w.export_report(path) is None                            # written when the run ends
    assert path.exists() and not w.missing_slices()
    doc = pdfium.PdfDocument(str(path))
    lesions = w.volume_maps().lesions
    assert len(doc) >= 1 + min(5, len(lesions))                         # front page (+ table) and region pages
    front = doc[0].get_textpage().get_text_range()
    assert "brain.nii.gz" in front and "not a diagnosis" in front and "tiny0.pt" in front
    assert f"{len(lesions)} regions" in front and "0.7 (set in the viewer)" in front
    doc.close()


def test_command_line_reference_and_layout(qtbot, files, tmp_path):
    """sss-viewer VOLUME --reference SEG --layout planes: the planes on show, the reference loaded with the volume."""
    from sss_viewer.gui.app import launch, parse_args
    reference = tmp_path / "seg.nii.gz"
    native = np.asanyarray(nib.load(str(files["volume"])).dataobj) > 200       # the synthetic brain's bright blob
    nib.save(nib.Nifti1Image(native.astype(np.uint8), AFFINE), str(reference))
    w = launch(parse_args([str(files["volume"]), "--checkpoint", str(files["checkpoint"]), "--device", "cpu",
                           "--reference", str(reference), "--layout", "planes"]))
    qtbot.addWidget(w)
    wait_for(qtbot, lambda: w.reading.reference is not None)
    assert w.views.currentWidget() is w.reading.planes and w.state.layout == "planes"
    assert w.reading.reference.canonical.sum() == native.sum() > 0
    wait_for(qtbot, lambda: "slice" in w.reading.overlap_label.text() and not w.reading.overlap_label.isHidden())
    w.close()
