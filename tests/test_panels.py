"""The four axial panels: the hovered point echoed in the other three, hidden when the mouse leaves."""

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QPoint, QPointF  # noqa: E402

from sss_viewer.gui.panels import ImagePanels  # noqa: E402
from test_planes import move  # noqa: E402

S = 32


@pytest.fixture
def panels(shown):
    p = shown(ImagePanels(), 800, 800)
    p.set_size(S)
    p.set_original(np.linspace(-1, 1, S * S, dtype=np.float32).reshape(S, S))
    return p


def at(panel, x: float, y: float) -> QPoint:
    """Where model point (x = column, y = row) is drawn in a panel's canvas viewport."""
    return panel.canvas.mapFromScene(panel.view.mapViewToScene(QPointF(x, y)))


def test_hover_marks_the_point_in_the_other_panels(qtbot, panels):
    hovered = []
    panels.hovered.connect(lambda u, v: hovered.append((u, v)))
    recon = panels.recon
    move(qtbot, recon.canvas.viewport(), at(recon, 10.5, 20.5))
    u, v = hovered[-1]
    assert (u, v) == pytest.approx((10.5, 20.5), abs=0.5)
    for panel, marker in zip(panels.panels, panels.markers):
        if panel is recon:
            assert not marker.isVisible()                      # the mouse pointer is already there
        else:
            assert marker.isVisible()
            xs, ys = marker.getData()
            assert (xs[0], ys[0]) == (u, v)                     # the same model point in every other panel
    move(qtbot, recon.canvas.viewport(), at(recon, -6.0, 20.5))  # beside the image: no point, no marks
    assert not any(m.isVisible() for m in panels.markers)


def test_markers_hide_on_leave_and_on_a_new_volume(qtbot, panels):
    heat = panels.heat
    move(qtbot, heat.canvas.viewport(), at(heat, 5.0, 5.0))
    assert sum(m.isVisible() for m in panels.markers) == 3
    panels.set_size(S)
    assert not any(m.isVisible() for m in panels.markers)
