"""Three linked planes (pytest-qt, offscreen): orientation, clicks and the wheel, cursor, overlay, aspect."""

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel  # noqa: E402

from sss_viewer.gui import texts  # noqa: E402
from sss_viewer.gui.planes import (HEAT_LUT, PLANES, THROUGH_AXIS, OrthoViews, index_to_view,  # noqa: E402
                                   plane_image, view_to_index)

Z, S, Z_RATIO = 12, 16, 2.0
BRIGHT = (9, 3, 5)   # (z, v, u): superior, anterior, patient's right


def volume() -> np.ndarray:
    data = np.full((Z, S, S), -1.0, np.float32)   # (Z, S, S)
    data[BRIGHT] = 1.0
    return data


def ellipsoid(shape=(40, 64, 64)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured ellipsoid head (Z, S, S) with a blob off-centre (anterior right), its mask and a reference."""
    z, v, u = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    inside = ((z - 20) / 17) ** 2 + ((v - 32) / 28) ** 2 + ((u - 32) / 23) ** 2 < 1
    data = np.where(inside, 0.2 * np.sin(v / 3) * np.cos(u / 4), -1.0).astype(np.float32)
    blob = ((z - 26) / 5) ** 2 + ((v - 18) / 6) ** 2 + ((u - 22) / 6) ** 2 < 1
    data[blob] = 0.9
    reference = ((z - 26) / 6) ** 2 + ((v - 18) / 7) ** 2 + ((u - 22) / 7) ** 2 < 1
    return data, blob, reference


@pytest.fixture
def ortho(shown):
    w = shown(OrthoViews(), 900, 800)
    w.set_volume(volume(), Z_RATIO)
    QApplication.processEvents()
    return w


def screen_pos(w: OrthoViews, plane: str, cursor: tuple[int, int, int]) -> QPoint:
    """Where voxel `cursor` is drawn in a plane, in its canvas viewport's pixels."""
    view = w.views[plane]
    x, y = index_to_view(plane, cursor, Z, Z_RATIO)
    return view.canvas.mapFromScene(view.view.mapViewToScene(QPointF(x, y)))


def test_orientation_of_each_plane():
    data = volume()
    z, v, u = BRIGHT
    axial = plane_image(data, "axial", z)
    np.testing.assert_array_equal(axial, data[z])
    coronal = plane_image(data, "coronal", v)                  # (Z, S), superior at the top
    assert coronal.shape == (Z, S) and coronal[Z - 1 - z, u] == 1.0 and coronal.sum() == 1.0 - (Z * S - 1)
    np.testing.assert_array_equal(coronal[0], data[Z - 1, v])  # top row: the most superior slice
    sagittal = plane_image(data, "sagittal", u)                # (Z, S), columns v: anterior on the left
    assert sagittal.shape == (Z, S) and sagittal[Z - 1 - z, v] == 1.0
    np.testing.assert_array_equal(sagittal[:, 0], data[::-1, 0, u])
    for plane in PLANES:                                       # the voxel centre maps back to the voxel
        assert view_to_index(plane, *index_to_view(plane, BRIGHT, Z, Z_RATIO), BRIGHT, data.shape, Z_RATIO) == BRIGHT
    assert view_to_index("coronal", -5.0, 1e6, BRIGHT, data.shape, Z_RATIO) == (0, v, 0)   # clamped
    assert view_to_index("sagittal", 99.0, -3.0, BRIGHT, data.shape, Z_RATIO) == (Z - 1, S - 1, u)


def test_letters_titles_and_aspect(ortho):
    assert [texts.PLANE_LETTERS[p] for p in PLANES] == [("A", "P", "R", "L"), ("S", "I", "R", "L"),
                                                          ("S", "I", "A", "P")]
    for plane, view in ortho.views.items():
        layout = view.canvas.ci
        top, bottom, left, right = (layout.getItem(row, col).text for row, col in ((0, 1), (2, 1), (1, 0), (1, 2)))
        assert (top, bottom, left, right) == texts.PLANE_LETTERS[plane]
    assert ortho.views["axial"].title.text() == texts.PLANE_TITLE.format(name="Axial", index=Z // 2, last=Z - 1)
    for plane in ("coronal", "sagittal"):
        view = ortho.views[plane]
        rect = view.image.mapRectToView(view.image.boundingRect())
        assert (rect.width(), rect.height()) == pytest.approx((S, Z * Z_RATIO))
        assert view.view.state["aspectLocked"] == 1.0
    rect = ortho.views["axial"].image.mapRectToView(ortho.views["axial"].image.boundingRect())
    assert (rect.width(), rect.height()) == pytest.approx((S, S))


@pytest.mark.parametrize("plane, target", [("axial", (6, 2, 13)), ("coronal", (1, 8, 14)),
                                           ("sagittal", (10, 13, 8))])
def test_click_moves_the_cursor_in_the_plane(qtbot, ortho, plane, target):
    ortho.set_cursor(6, 8, 8)
    expect = list(target)
    through = THROUGH_AXIS[plane]
    expect[through] = ortho.cursor[through]                   # the through-plane index is kept
    view = ortho.views[plane]
    with qtbot.waitSignal(ortho.cursor_moved, timeout=2000) as blocker:
        qtbot.mouseClick(view.canvas.viewport(), Qt.MouseButton.LeftButton, pos=screen_pos(ortho, plane, target))
    assert tuple(blocker.args) == tuple(expect) == ortho.cursor
    x, y = index_to_view(plane, ortho.cursor, Z, Z_RATIO)
    assert (view.vline.value(), view.hline.value()) == pytest.approx((x, y))


def move(qtbot, widget, pos: QPoint) -> None:
    """A mouse move, after pyqtgraph's rate limit (mouseRateLimit: 100 moves a second) lets the next one through."""
    qtbot.wait(15)
    qtbot.mouseMove(widget, pos=pos)


def test_drag_on_the_image_moves_the_cursor_and_beside_it_pans(qtbot, ortho):
    view = ortho.views["axial"]
    moves = []
    ortho.cursor_moved.connect(lambda *c: moves.append(c))
    viewport = view.canvas.viewport()
    start, end = screen_pos(ortho, "axial", (6, 4, 4)), screen_pos(ortho, "axial", (6, 11, 12))
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=start)
    for t in np.linspace(0, 1, 6)[1:]:
        move(qtbot, viewport, start + (end - start) * t)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=end)
    assert moves and moves[-1] == (6, 11, 12) == ortho.cursor
    before = view.view.viewRange()
    outside = screen_pos(ortho, "axial", (6, 8, -2))         # beside the image, in the view: a drag pans
    moves.clear()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=outside)
    for step in range(1, 6):
        move(qtbot, viewport, outside + QPoint(0, 8 * step))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=outside + QPoint(0, 40))
    assert not moves and view.view.viewRange() != before


def wheel(widget, pos: QPoint, notches: int, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    event = QWheelEvent(QPointF(pos), QPointF(widget.mapToGlobal(pos)), QPoint(0, 0), QPoint(0, 120 * notches),
                        Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


def test_wheel_steps_the_through_plane_axis(qtbot, ortho):
    ortho.set_cursor(6, 8, 8)
    for plane, notches, expect in (("axial", 2, (8, 8, 8)), ("coronal", -3, (8, 5, 8)), ("sagittal", 1, (8, 5, 7)),
                                   ("axial", 50, (Z - 1, 5, 7))):
        viewport = ortho.views[plane].canvas.viewport()
        with qtbot.waitSignal(ortho.cursor_moved, timeout=2000) as blocker:
            wheel(viewport, screen_pos(ortho, plane, ortho.cursor), notches)
        assert tuple(blocker.args) == expect == ortho.cursor
    view = ortho.views["coronal"].view
    before = view.viewRange()
    with qtbot.assertNotEmitted(ortho.cursor_moved):
        wheel(ortho.views["coronal"].canvas.viewport(), screen_pos(ortho, "coronal", ortho.cursor), 1,
              Qt.KeyboardModifier.ControlModifier)
    assert view.viewRange() != before                          # Ctrl + wheel zooms


def test_hover_and_leave(qtbot, ortho):
    view = ortho.views["sagittal"]
    ortho.set_cursor(6, 8, 5)
    seen, left = [], []
    ortho.hovered.connect(lambda *c: seen.append(c))
    ortho.left.connect(lambda: left.append(True))
    move(qtbot, view.canvas.viewport(), screen_pos(ortho, "sagittal", (2, 11, 5)))
    assert seen[-1] == (2, 11, 5) and ortho.cursor == (6, 8, 5) and not left
    move(qtbot, view.canvas.viewport(), screen_pos(ortho, "sagittal", (2, -3, 5)))   # beside the image
    assert left and len(seen) == 1


def test_set_cursor_redraws_without_signals(qtbot, ortho):
    data = volume()
    with qtbot.assertNotEmitted(ortho.cursor_moved), qtbot.assertNotEmitted(ortho.hovered):
        ortho.set_cursor(*BRIGHT)
    assert ortho.cursor == BRIGHT
    for plane in PLANES:
        view, index = ortho.views[plane], BRIGHT[THROUGH_AXIS[plane]]
        np.testing.assert_array_equal(view.image.image, plane_image(data, plane, index))
        assert view.image.image.max() == 1.0                    # every plane passes through the bright voxel
        assert (view.vline.value(), view.hline.value()) == pytest.approx(index_to_view(plane, BRIGHT, Z, Z_RATIO))
    ortho.set_cursor(-4, 99, 3)                                 # clamped
    assert ortho.cursor == (0, S - 1, 3)
    assert ortho.views["coronal"].title.text() == texts.PLANE_TITLE.format(name="Coronal", index=S - 1, last=S - 1)


def test_overlay_note_combo_and_style(qtbot, ortho):
    rng = np.random.default_rng(0)
    heat = rng.random((Z, S, S)).astype(np.float32)
    mask = heat > 0.7
    reference = np.zeros((Z, S, S), bool)
    reference[4:8, 4:10, 4:10] = True
    axial = ortho.views["axial"]
    assert ortho.note.isVisible() and ortho.note.text() == texts.PLANES_NOTE
    assert axial.heat.image is None and axial.fill.image is None and axial.contour.data is None

    ortho.set_cursor(6, 7, 7)
    ortho.set_overlay(heat, mask)
    ortho.set_reference(reference)
    assert not ortho.note.isVisible()
    assert ortho.overlay_mode == "mask" and ortho.overlay_combo.currentText() == texts.OVERLAY_MODES["mask"]
    np.testing.assert_array_equal(axial.contour.data, mask[6].astype(np.float32))
    np.testing.assert_array_equal(ortho.views["sagittal"].reference.data, plane_image(reference, "sagittal", 7))
    assert axial.heat.image is None and axial.fill.image is None

    contour = ortho.views["coronal"].contour                    # on the mask's pixel edges, in view units
    rows, cols = np.nonzero(plane_image(mask, "coronal", 7))
    rect = contour.mapRectToView(contour.boundingRect())
    assert (rect.left(), rect.right()) == pytest.approx((cols.min(), cols.max() + 1))
    assert (rect.top(), rect.bottom()) == pytest.approx((rows.min() * Z_RATIO, (rows.max() + 1) * Z_RATIO))

    ortho.set_mask_style("fill", 0.5)
    assert axial.contour.data is None
    fill = ortho.views["coronal"].fill.image                    # (Z, S, 4)
    np.testing.assert_array_equal(fill[..., 3] > 0, plane_image(mask, "coronal", 7))
    assert fill[..., 3].max() == 128

    ortho.overlay_combo.setCurrentIndex(ortho.overlay_combo.findData("heat"))
    assert axial.fill.image is None and axial.contour.data is None
    np.testing.assert_array_equal(axial.heat.image, heat[6])
    assert HEAT_LUT[0, 3] == 0 and HEAT_LUT[-1, 3] == 255 and np.all(np.diff(HEAT_LUT[:, 3].astype(int)) >= 0)
    assert axial.reference.data is not None                     # the reference stays, whatever the overlay

    ortho.overlay_combo.setCurrentIndex(ortho.overlay_combo.findData("none"))
    assert all(v.heat.image is None and v.fill.image is None and v.contour.data is None
               for v in ortho.views.values())
    ortho.set_volume(volume(), Z_RATIO)                        # a new volume clears overlay and reference
    assert ortho.note.isVisible() and axial.reference.data is None


def test_levels_and_corner(ortho):
    ortho.set_levels(-0.5, 0.25)
    assert all(tuple(v.image.levels) == (-0.5, 0.25) for v in ortho.views.values())
    corner = QLabel("corner")
    ortho.set_corner(corner)
    assert ortho.grid.itemAtPosition(1, 1).widget() is corner and ortho.corner is corner
    ortho.set_corner(QLabel("another"))
    assert corner.parent() is None


def test_heat_renders_transparent_at_zero(qtbot):
    w = OrthoViews()
    qtbot.addWidget(w)
    w.resize(600, 600)
    w.set_volume(np.zeros((4, 8, 8), np.float32), 1.0)
    heat = np.zeros((4, 8, 8), np.float32)
    heat[:, :, 4:] = 1.0
    w.set_overlay(heat, heat > 0.5)
    w.overlay_combo.setCurrentIndex(w.overlay_combo.findData("heat"))
    item = w.views["axial"].heat
    item.render()
    rgba = item.qimage.convertToFormat(item.qimage.Format.Format_RGBA8888)
    assert rgba.pixelColor(1, 3).alpha() == 0 and rgba.pixelColor(6, 3).alpha() == 255


def test_screenshot(shown, tmp_path):
    """A whole widget with an ellipsoid, mask and reference; saved for a look (/tmp/planes_check.png)."""
    data, mask, reference = ellipsoid()
    w = shown(OrthoViews(), 900, 800)
    w.set_volume(data, 1.6)
    w.set_overlay(np.where(mask, 0.8, 0.0).astype(np.float32), mask)
    w.set_reference(reference)
    w.set_cursor(26, 18, 22)
    w.reset_view()
    QApplication.processEvents()
    image = w.grab()
    assert image.save(str(tmp_path / "planes.png"))
    image.save("/tmp/planes_check.png")
