"""The four linked image panels, the slice slider with its marked band, and the per-slice score plot."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRect, Qt, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (QGridLayout, QLabel, QSizePolicy, QSlider, QStyle, QStyleOptionSlider, QVBoxLayout,
                               QWidget)

from . import texts

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

HEAT_RANGE = (0.0, 1.0)           # heat-map colour range; the threshold slider spans the same values
HEAT_COLORMAP = "inferno"
MASK_COLOR = (255, 64, 64)        # overlay fill
CONTOUR_COLOR = (80, 255, 120)    # overlay contour: green stands out on grey and differs from the fill
BRAIN_COLOR = (90, 200, 255)      # outline of an extracted brain (dashed): cyan, apart from the mask's green
REFERENCE_COLOR = (255, 210, 0)   # outline of a loaded reference segmentation: yellow, apart from green and cyan
MARKER_COLOR = (0, 230, 255)      # the hovered point echoed in the other panels
LETTER_COLOR = "#f0c040"
BAND_COLOR = QColor(90, 160, 255, 110)
MARK_COLORS = (QColor(150, 150, 150), QColor(230, 120, 20))   # slider marks: the paper's value, the checkpoint's
COLORBAR_WIDTH = 64               # colour bar with its axis; the other panels reserve the same width


def _blank(width: int) -> pg.GraphicsWidget:
    item = pg.GraphicsWidget()
    item.setFixedWidth(width)
    return item


class SliceViewBox(pg.ViewBox):
    """A ViewBox where the wheel browses slices (Ctrl+wheel zooms) and right-drag adjusts window/level."""

    wheel_steps = Signal(int)                    # +1 per notch away from the user
    level_drag = Signal(float, float, bool)      # dx, dy in screen pixels since the last event, finished

    def __init__(self):
        super().__init__(invertY=True, lockAspect=1.0, enableMenu=False)
        self.setMouseMode(pg.ViewBox.PanMode)
        self._wheel_rest = 0

    def wheelEvent(self, ev, axis=None):
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            return
        self._wheel_rest += ev.delta()
        steps = int(self._wheel_rest / 120)
        self._wheel_rest -= steps * 120
        if steps:
            self.wheel_steps.emit(steps)
        ev.accept()

    def mouseDragEvent(self, ev, axis=None):
        if ev.button() == Qt.MouseButton.RightButton:
            ev.accept()
            d = ev.screenPos() - ev.lastScreenPos()
            self.level_drag.emit(d.x(), d.y(), ev.isFinish())
            return
        super().mouseDragEvent(ev, axis)


class TitleLabel(QLabel):
    """A bold one-line panel title that never widens its panel: elided (…) when too long, the full text as tooltip."""

    def __init__(self, text: str):
        super().__init__(text)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet("font-weight: bold")
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setToolTip(text)

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())
        painter.drawText(self.contentsRect(), int(self.alignment()), text)


class SlicePanel(QWidget):
    """One panel: a title and an image view framed by orientation letters (axial: A top, P bottom, R left, L right),
    with a side item beside the view (the colour bar, or a blank of its width)."""

    def __init__(self, title: str, side: pg.GraphicsWidget | None = None, view: pg.ViewBox | None = None,
                 letters: tuple[str, str, str, str] = (texts.ORIENT_TOP, texts.ORIENT_BOTTOM, texts.ORIENT_LEFT,
                                                       texts.ORIENT_RIGHT), tooltip: str = texts.ORIENT_TOOLTIP):
        super().__init__()
        self.title = TitleLabel(title)
        self.canvas = pg.GraphicsLayoutWidget()
        self.canvas.setMinimumSize(220, 200)
        self.canvas.setToolTip(tooltip)
        layout = self.canvas.ci
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(0)
        self.view = SliceViewBox() if view is None else view
        top, bottom, left, right = letters
        for text, row, col in ((top, 0, 1), (left, 1, 0), (right, 1, 2), (bottom, 2, 1)):
            layout.addLabel(text, row=row, col=col, color=LETTER_COLOR, size="11pt", bold=True)
        layout.addItem(self.view, row=1, col=1)
        if side is not None:
            layout.addItem(side, row=1, col=3)  # every view of the four panels gets the same size
        layout.layout.setRowStretchFactor(1, 1)
        layout.layout.setColumnStretchFactor(1, 1)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(self.title)
        box.addWidget(self.canvas, 1)


class ImagePanels(QWidget):
    """Original, reconstruction, heat map and mask overlay, with zoom, pan and the hovered point linked across all
    four (a small cross marks it in the panels the mouse is not over)."""

    wheel_steps = Signal(int)
    level_drag = Signal(float, float, bool)
    hovered = Signal(float, float)   # model-space point under the cursor (u = column, v = row)
    left = Signal()                  # the cursor left the images

    def __init__(self):
        super().__init__()
        cmap = pg.colormap.get(HEAT_COLORMAP)
        self.colorbar = pg.ColorBarItem(values=HEAT_RANGE, colorMap=cmap, interactive=False, width=14,
                                        label=texts.COLORBAR_LABEL)
        self.colorbar.setFixedWidth(COLORBAR_WIDTH)
        self.original = SlicePanel(texts.PANEL_ORIGINAL, _blank(COLORBAR_WIDTH))
        self.recon = SlicePanel(texts.PANEL_RECON.format(t=""), _blank(COLORBAR_WIDTH))
        self.heat = SlicePanel(texts.PANEL_HEAT, self.colorbar)
        self.mask = SlicePanel(texts.PANEL_MASK.format(threshold=0, pp="", consensus=""), _blank(COLORBAR_WIDTH))
        self.panels = (self.original, self.recon, self.heat, self.mask)

        self.original_image = pg.ImageItem()
        self.recon_image = pg.ImageItem()
        self.heat_image = pg.ImageItem()
        self.mask_base = pg.ImageItem()
        self.mask_fill = pg.ImageItem()
        self.mask_contour = pg.IsocurveItem(level=0.5, pen=pg.mkPen(CONTOUR_COLOR, width=2))
        self.brain_contour = pg.IsocurveItem(level=0.5,
                                             pen=pg.mkPen(BRAIN_COLOR, width=1.5, style=Qt.PenStyle.DashLine))
        self.reference_contour = pg.IsocurveItem(level=0.5, pen=pg.mkPen(REFERENCE_COLOR, width=2))
        self.colorbar.setImageItem(self.heat_image)
        self.original.view.addItem(self.original_image)
        self.original.view.addItem(self.brain_contour)
        self.recon.view.addItem(self.recon_image)
        self.heat.view.addItem(self.heat_image)
        for item in (self.mask_base, self.mask_fill, self.mask_contour, self.reference_contour):
            self.mask.view.addItem(item)

        self.markers = []
        for panel in self.panels:
            marker = pg.ScatterPlotItem(size=15, symbol="+", pen=pg.mkPen(MARKER_COLOR, width=1.5), brush=None,
                                        pxMode=True)
            marker.setZValue(10)
            marker.hide()
            panel.view.addItem(marker)
            self.markers.append(marker)

        main = self.original.view
        for panel in self.panels:
            if panel.view is not main:
                panel.view.setXLink(main)
                panel.view.setYLink(main)
            panel.view.wheel_steps.connect(self.wheel_steps)
            panel.view.level_drag.connect(self.level_drag)
            panel.canvas.scene().sigMouseMoved.connect(self._mouse_moved)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        for i, panel in enumerate(self.panels):
            grid.addWidget(panel, i // 2, i % 2)
        self._levels = (-1.0, 1.0)
        self._size = 0
        self._style = "contour"
        self._opacity = 0.6
        self._mask: np.ndarray | None = None

    def _mouse_moved(self, pos: QPointF) -> None:
        for panel in self.panels:
            if panel.canvas.scene() is self.sender() and panel.view.sceneBoundingRect().contains(pos):
                p = panel.view.mapSceneToView(pos)
                if self._size and 0 <= p.x() < self._size and 0 <= p.y() < self._size:
                    self.show_marker(p.x(), p.y(), under_mouse=panel)
                    self.hovered.emit(p.x(), p.y())
                    return
        self.show_marker(None)
        self.left.emit()

    def show_marker(self, x: float | None, y: float = 0.0, under_mouse: SlicePanel | None = None) -> None:
        """Mark model point (x = column, y = row) in every panel but the one under the mouse; None hides them."""
        for panel, marker in zip(self.panels, self.markers):
            if x is None or panel is under_mouse:
                marker.hide()
            else:
                marker.setData([x], [y])
                marker.show()

    def leaveEvent(self, event) -> None:
        self.show_marker(None)
        self.left.emit()
        super().leaveEvent(event)

    def view_rects(self) -> list[QRect]:
        """Each panel's image view, in this widget's coordinates (for checks of rendered output)."""
        rects = []
        for panel in self.panels:
            r = panel.view.sceneBoundingRect().toAlignedRect()
            top_left = panel.canvas.mapTo(self, panel.canvas.mapFromScene(r.topLeft()))
            rects.append(QRect(top_left, r.size()))
        return rects

    def reset_view(self) -> None:
        if self._size:
            self.original.view.setRange(xRange=(0, self._size), yRange=(0, self._size), padding=0.02)

    def set_size(self, size: int) -> None:
        """A new model-space size S: clear everything and fit the S × S square."""
        self._size = size
        for item in (self.original_image, self.recon_image, self.heat_image, self.mask_base, self.mask_fill):
            item.clear()
        self.mask_contour.setData(None)
        self.brain_contour.setData(None)
        self.reference_contour.setData(None)
        self._mask = None
        self.show_marker(None)
        self.reset_view()

    def set_levels(self, low: float, high: float) -> None:
        """Window of the grey images (model intensity units)."""
        self._levels = (low, high)
        for item in (self.original_image, self.recon_image, self.mask_base):
            if item.image is not None:
                item.setLevels(self._levels)

    def set_original(self, image: np.ndarray, brain: np.ndarray | None = None) -> None:
        """The slice as read (S, S), with the outline of the brain the model was given when it was extracted."""
        self.original_image.setImage(image, levels=self._levels, autoLevels=False)
        self.mask_base.setImage(image, levels=self._levels, autoLevels=False)
        self.brain_contour.setData(None if brain is None else brain.astype(np.float32))

    def set_reference(self, reference: np.ndarray | None) -> None:
        """The reference segmentation's outline (S, S) over the mask panel; None hides it."""
        self.reference_contour.setData(None if reference is None else reference.astype(np.float32))

    def set_result(self, recon: np.ndarray, heat: np.ndarray) -> None:
        self.recon_image.setImage(recon, levels=self._levels, autoLevels=False)
        self.heat_image.setImage(heat, autoLevels=False)
        self.colorbar.setLevels(HEAT_RANGE)

    def clear_result(self) -> None:
        for item in (self.recon_image, self.heat_image, self.mask_fill):
            item.clear()
        self.mask_contour.setData(None)
        self._mask = None

    def set_mask(self, mask: np.ndarray) -> None:
        self._mask = mask
        self._draw_mask()

    def shown_mask(self) -> np.ndarray | None:
        """(S, S) bool mask on show; None while the slice's result is computing."""
        return self._mask

    def set_mask_style(self, style: str, opacity: float) -> None:
        self._style, self._opacity = style, opacity
        self._draw_mask()

    def _draw_mask(self) -> None:
        if self._mask is None:
            return
        if self._style == "fill":
            rgba = np.zeros(self._mask.shape + (4,), np.uint8)  # (S, S, 4)
            rgba[self._mask] = (*MASK_COLOR, round(255 * self._opacity))
            self.mask_fill.setImage(rgba, levels=(0, 255), autoLevels=False)
            self.mask_contour.setData(None)
        else:
            self.mask_fill.clear()
            self.mask_contour.setData(self._mask.astype(np.float32))
            self.mask_contour.setOpacity(max(self._opacity, 0.15))


class MarkedSlider(QSlider):
    """A horizontal slider that shades one band of its range (the brain slices, the paper's timesteps) and draws
    tick marks at given values (the paper's threshold in grey, the checkpoint's calibrated one in orange)."""

    def __init__(self, parent=None):
        super().__init__(Qt.Orientation.Horizontal, parent)
        self._band: tuple[int, int] | None = None
        self.marks: tuple[int, ...] = ()

    def set_band(self, low: int, high: int) -> None:
        self._band = (low, high)
        self.update()

    def set_marks(self, *values: int) -> None:
        """Tick marks at these slider values, coloured in the order of MARK_COLORS."""
        self.marks = values
        self.update()

    def paintEvent(self, event) -> None:
        if (self._band is not None or self.marks) and self.maximum() > self.minimum():
            opt = QStyleOptionSlider()
            self.initStyleOption(opt)
            groove = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                                 QStyle.SubControl.SC_SliderGroove, self)
            handle = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                                 QStyle.SubControl.SC_SliderHandle, self)
            span = groove.width() - handle.width()
            x0 = groove.x() + handle.width() / 2

            def x(value: int) -> float:
                return x0 + span * (value - self.minimum()) / (self.maximum() - self.minimum())

            painter = QPainter(self)
            if self._band is not None:
                painter.fillRect(int(x(self._band[0])), groove.center().y() - 5,
                                 max(2, int(x(self._band[1]) - x(self._band[0]))), 10, BAND_COLOR)
            for value, color in zip(self.marks, MARK_COLORS):
                painter.fillRect(int(x(value)) - 1, groove.top() - 3, 3, groove.height() + 6, color)
            painter.end()
        super().paintEvent(event)


class ScorePlot(pg.PlotWidget):
    """Per-slice anomaly scores along the volume; a click jumps to the nearest slice."""

    slice_clicked = Signal(int)

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(110)
        self.setMaximumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(texts.SCORE_TOOLTIP)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.setLabel("left", texts.SCORE_AXIS_LEFT)
        self.setLabel("bottom", texts.SCORE_AXIS_BOTTOM)
        self.band = pg.LinearRegionItem(movable=False, brush=pg.mkBrush(90, 160, 255, 40),
                                        pen=pg.mkPen(90, 160, 255, 90))
        self.curve = pg.PlotDataItem(pen=pg.mkPen(255, 170, 60, width=1.5), symbol="o", symbolSize=4,
                                     symbolBrush=(255, 170, 60), symbolPen=None, connect="finite")
        self.cursor = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(255, 255, 255, 160, width=1))
        for item in (self.band, self.curve, self.cursor):
            self.addItem(item)
        self.scene().sigMouseClicked.connect(self._clicked)
        self._n = 0

    def set_volume(self, n_slices: int, first: int, last: int) -> None:
        self._n = n_slices
        self.band.setRegion((first - 0.5, last + 0.5))
        self.setXRange(-0.5, n_slices - 0.5, padding=0.01)
        self.set_scores(np.full(n_slices, np.nan))

    def set_scores(self, scores: np.ndarray) -> None:
        finite = np.isfinite(scores)
        if finite.any():
            self.curve.setData(np.arange(len(scores)), scores)
            self.setYRange(0, max(float(scores[finite].max()) * 1.1, 1e-3), padding=0)
        else:
            self.curve.setData([], [])
            self.setYRange(0, 1, padding=0)

    def set_current(self, z: int) -> None:
        self.cursor.setValue(z)

    def _clicked(self, ev) -> None:
        if self._n and ev.button() == Qt.MouseButton.LeftButton:
            x = self.getPlotItem().vb.mapSceneToView(ev.scenePos()).x()
            self.slice_clicked.emit(int(np.clip(round(x), 0, self._n - 1)))
