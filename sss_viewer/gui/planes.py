"""Axial, coronal and sagittal planes of the model-space volume, linked by a crosshair, with the heat map or mask."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QTransform
from PySide6.QtWidgets import QComboBox, QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from . import texts
from .panels import (CONTOUR_COLOR, HEAT_COLORMAP, HEAT_RANGE, MASK_COLOR, REFERENCE_COLOR, SlicePanel,
                     SliceViewBox)

PLANES = ("axial", "coronal", "sagittal")
THROUGH_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}   # position in (z, v, u) of each plane's through-plane axis
WHEEL_SIGN = {"axial": 1, "coronal": 1, "sagittal": -1}    # a notch away from the user moves into the screen
OVERLAY_MODES = ("mask", "heat", "none")
CROSSHAIR_PEN = pg.mkPen(255, 255, 255, 110, width=1)


def _heat_lut() -> np.ndarray:
    """Inferno colours whose alpha grows linearly with the heat: transparent at 0, opaque at the top."""
    lut = pg.colormap.get(HEAT_COLORMAP).getLookupTable(0.0, 1.0, 256, alpha=True)   # (256, 4) uint8
    lut[:, 3] = np.linspace(0, 255, 256).round().astype(np.uint8)
    return lut


HEAT_LUT = _heat_lut()


def plane_image(data: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One plane of a (Z, S, S) array as displayed: row 0 at the top, column 0 on the left.

    axial: data[z] (rows A → P, columns R → L); coronal: data[:, v, :] with superior at the top (columns R → L);
    sagittal: data[:, :, u] with superior at the top (columns A → P).
    """
    if plane == "axial":
        return data[index]              # (S, S)
    if plane == "coronal":
        return data[::-1, index, :]     # (Z, S)
    return data[::-1, :, index]         # (Z, S)


def index_to_view(plane: str, cursor: tuple[int, int, int], n_slices: int, z_ratio: float) -> tuple[float, float]:
    """View coordinates (x, y) of the centre of voxel cursor = (z, v, u) in a plane."""
    z, v, u = cursor
    if plane == "axial":
        return u + 0.5, v + 0.5
    y = (n_slices - 1 - z + 0.5) * z_ratio
    return (u + 0.5, y) if plane == "coronal" else (v + 0.5, y)


def view_to_index(plane: str, x: float, y: float, cursor: tuple[int, int, int], shape: tuple[int, int, int],
                  z_ratio: float) -> tuple[int, int, int]:
    """The voxel (z, v, u) under view point (x, y) of a plane, clamped to the volume of `shape` (Z, S, S); the
    through-plane index comes from `cursor`."""
    n_z, n_v, n_u = shape
    z, v, u = cursor
    if plane == "axial":
        return z, _clamp(y, n_v), _clamp(x, n_u)
    z = n_z - 1 - _clamp(y / z_ratio, n_z)
    return (z, v, _clamp(x, n_u)) if plane == "coronal" else (z, _clamp(x, n_v), u)


def _clamp(position: float, n: int) -> int:
    return int(np.clip(np.floor(position), 0, n - 1))


class PlaneViewBox(SliceViewBox):
    """A SliceViewBox where a left click, or a left drag that starts on the image, points at the image."""

    pointed = Signal(float, float)   # view coordinates

    def __init__(self):
        super().__init__()
        self.image_rect = QRectF()   # the image in view coordinates; empty before a volume
        self._pointing = False

    def _on_image(self, pos: QPointF) -> bool:
        return self.image_rect.contains(self.mapToView(pos))

    def mouseClickEvent(self, ev) -> None:
        if ev.button() == Qt.MouseButton.LeftButton and self._on_image(ev.pos()):
            ev.accept()
            self._point(ev.pos())
            return
        super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None) -> None:
        if ev.button() == Qt.MouseButton.LeftButton:
            if ev.isStart():
                self._pointing = self._on_image(ev.buttonDownPos())
            if self._pointing:
                ev.accept()
                self._point(ev.pos())
                self._pointing = not ev.isFinish()
                return
        super().mouseDragEvent(ev, axis)

    def _point(self, pos: QPointF) -> None:
        p = self.mapToView(pos)
        self.pointed.emit(p.x(), p.y())


class PlaneView(SlicePanel):
    """One plane: a title and an image view framed by its orientation letters, with the overlay, the reference
    contour and a crosshair."""

    pointed = Signal(float, float)   # view coordinates of a left click or drag on the image
    hovered = Signal(float, float)   # view coordinates under the mouse, on the image
    left = Signal()                  # the mouse left the image

    def __init__(self, plane: str):
        super().__init__(texts.PLANE_NAMES[plane], view=PlaneViewBox(), letters=texts.PLANE_LETTERS[plane],
                         tooltip=texts.PLANE_TOOLTIP)
        self.plane = plane
        self.canvas.setAcceptDrops(False)   # drops go to the window, which opens them

        self.image = pg.ImageItem()
        self.heat = pg.ImageItem()
        self.heat.setLookupTable(HEAT_LUT)
        self.fill = pg.ImageItem()
        self.contour = pg.IsocurveItem(level=0.5, pen=pg.mkPen(CONTOUR_COLOR, width=2))
        self.reference = pg.IsocurveItem(level=0.5, pen=pg.mkPen(REFERENCE_COLOR, width=1.5))
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=CROSSHAIR_PEN)
        self.hline = pg.InfiniteLine(angle=0, movable=False, pen=CROSSHAIR_PEN)
        for item in (self.image, self.heat, self.fill, self.contour, self.reference, self.vline, self.hline):
            self.view.addItem(item)
        self.view.pointed.connect(self.pointed)
        self.canvas.scene().sigMouseMoved.connect(self._mouse_moved)

    def set_geometry(self, rows: int, cols: int, y_scale: float) -> None:
        """Images of rows × cols pixels, each pixel y_scale view units high."""
        for item in (self.image, self.heat, self.fill, self.contour, self.reference):   # isocurves are in pixels too
            item.setTransform(QTransform.fromScale(1.0, y_scale))
        self.view.image_rect = QRectF(0.0, 0.0, cols, rows * y_scale)

    def reset_view(self) -> None:
        if not self.view.image_rect.isEmpty():
            self.view.setRange(self.view.image_rect, padding=0.02)

    def set_image(self, image: np.ndarray, levels: tuple[float, float]) -> None:
        self.image.setImage(image, levels=levels, autoLevels=False)

    def set_heat(self, heat: np.ndarray | None) -> None:
        if heat is None:
            self.heat.clear()
        else:
            self.heat.setImage(heat, levels=HEAT_RANGE, autoLevels=False)

    def set_mask(self, mask: np.ndarray | None, style: str, opacity: float) -> None:
        if mask is not None and style == "fill":
            rgba = np.zeros(mask.shape + (4,), np.uint8)   # (rows, cols, 4)
            rgba[mask] = (*MASK_COLOR, round(255 * opacity))
            self.fill.setImage(rgba, levels=(0, 255), autoLevels=False)
        else:
            self.fill.clear()
        self.contour.setData(None if mask is None or style == "fill" else mask.astype(np.float32))
        self.contour.setOpacity(max(opacity, 0.15))

    def set_reference(self, reference: np.ndarray | None) -> None:
        self.reference.setData(None if reference is None else reference.astype(np.float32))

    def set_crosshair(self, x: float, y: float) -> None:
        self.vline.setValue(x)
        self.hline.setValue(y)

    def _mouse_moved(self, pos: QPointF) -> None:
        if self.view.sceneBoundingRect().contains(pos):
            p = self.view.mapSceneToView(pos)
            if self.view.image_rect.contains(p):
                self.hovered.emit(p.x(), p.y())
                return
        self.left.emit()

    def leaveEvent(self, event) -> None:
        self.left.emit()
        super().leaveEvent(event)


class OrthoViews(QWidget):
    """Axial, coronal and sagittal planes through one cursor voxel (z, v, u) of a model-space volume, in a 2 × 2
    grid whose bottom-right cell holds a widget of the owner's, under an overlay chooser.

    It only displays: the owner feeds the volume, levels, overlay and reference, and moves the cursor.
    """

    cursor_moved = Signal(int, int, int)         # (z, v, u) the user pointed at or stepped to
    hovered = Signal(int, int, int)              # (z, v, u) under the mouse
    left = Signal()                              # the mouse left the images
    level_drag = Signal(float, float, bool)      # right-drag: dx, dy in screen pixels, finished

    def __init__(self):
        super().__init__()
        self.views = {plane: PlaneView(plane) for plane in PLANES}
        self.overlay_combo = QComboBox()
        for mode in OVERLAY_MODES:
            self.overlay_combo.addItem(texts.OVERLAY_MODES[mode], mode)
        self.overlay_combo.currentIndexChanged.connect(lambda _: self._redraw(PLANES))
        self.note = QLabel(texts.PLANES_NOTE)
        self.note.setWordWrap(True)
        self.corner = QWidget()

        top = QHBoxLayout()
        top.addWidget(QLabel(texts.OVERLAY_LABEL))
        top.addWidget(self.overlay_combo)
        top.addWidget(self.note, 1)
        top.addStretch()   # takes the note's place when it hides
        self.grid = QGridLayout()
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(6)
        for (row, col), plane in zip(((0, 0), (0, 1), (1, 0)), PLANES):
            self.grid.addWidget(self.views[plane], row, col)
        self.grid.addWidget(self.corner, 1, 1)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(top)
        box.addLayout(self.grid, 1)

        for plane, view in self.views.items():
            view.pointed.connect(lambda x, y, plane=plane: self._on_pointed(plane, x, y))
            view.hovered.connect(lambda x, y, plane=plane: self.hovered.emit(*self._index_at(plane, x, y)))
            view.left.connect(self.left)
            view.view.wheel_steps.connect(lambda n, plane=plane: self._on_wheel(plane, n))
            view.view.level_drag.connect(self.level_drag)

        self._data: np.ndarray | None = None   # (Z, S, S)
        self._z_ratio = 1.0
        self._cursor = (0, 0, 0)
        self._levels = (-1.0, 1.0)
        self._heat: np.ndarray | None = None   # (Z, S, S) float
        self._mask: np.ndarray | None = None   # (Z, S, S) bool
        self._reference: np.ndarray | None = None   # (Z, S, S) bool
        self._style = "contour"
        self._opacity = 0.6

    # Owner's API
    @property
    def cursor(self) -> tuple[int, int, int]:
        """(z, v, u): axial slice, row (A → P), column (R → L)."""
        return self._cursor

    @property
    def overlay_mode(self) -> str:
        """'mask', 'heat' or 'none', as chosen in the combo box."""
        return self.overlay_combo.currentData()

    def set_corner(self, widget: QWidget) -> None:
        """Put the owner's widget in the bottom-right cell, in place of the previous one."""
        self.grid.removeWidget(self.corner)
        self.corner.setParent(None)
        self.corner = widget
        self.grid.addWidget(widget, 1, 1)

    def set_volume(self, data: np.ndarray, z_ratio: float) -> None:
        """A new volume (Z, S, S) with slices z_ratio axial pixels apart: clears the overlay and reference, centres
        the cursor and fits the views."""
        self._data, self._z_ratio = data, z_ratio
        self._heat = self._mask = self._reference = None
        n_z, n_v, n_u = data.shape
        self._cursor = (n_z // 2, n_v // 2, n_u // 2)
        self.views["axial"].set_geometry(n_v, n_u, 1.0)
        self.views["coronal"].set_geometry(n_z, n_u, z_ratio)
        self.views["sagittal"].set_geometry(n_z, n_v, z_ratio)
        self.note.setVisible(True)
        self._redraw(PLANES)
        self._draw_crosshair()
        self.reset_view()

    def set_levels(self, low: float, high: float) -> None:
        """Window of the grey images (data units)."""
        self._levels = (low, high)
        for view in self.views.values():
            if view.image.image is not None:
                view.image.setLevels(self._levels)

    def set_overlay(self, heat: np.ndarray | None, mask: np.ndarray | None) -> None:
        """The whole-volume heat map (Z, S, S) and mask (Z, S, S); both None until a whole-volume run, and then
        the note says where the results will appear."""
        self._heat, self._mask = heat, mask
        self.note.setVisible(heat is None and mask is None)
        self._redraw(PLANES)

    def set_reference(self, reference: np.ndarray | None) -> None:
        """A reference mask (Z, S, S) bool, drawn as a contour in REFERENCE_COLOR, or None."""
        self._reference = reference
        self._redraw(PLANES)

    def set_mask_style(self, style: str, opacity: float) -> None:
        """'contour' or 'fill', and the overlay's opacity in [0, 1]."""
        self._style, self._opacity = style, opacity
        self._redraw(PLANES)

    def set_cursor(self, z: int, v: int, u: int) -> None:
        """Move the crosshair and the planes through (z, v, u), clamped to the volume; emits nothing."""
        if self._data is None:
            return
        cursor = tuple(int(np.clip(i, 0, n - 1)) for i, n in zip((z, v, u), self._data.shape))
        moved = [plane for plane in PLANES if cursor[THROUGH_AXIS[plane]] != self._cursor[THROUGH_AXIS[plane]]]
        self._cursor = cursor
        self._redraw(moved)
        self._draw_crosshair()

    def reset_view(self) -> None:
        for view in self.views.values():
            view.reset_view()

    # Drawing
    def _redraw(self, planes) -> None:
        """Slice the volume and its overlays again for these planes."""
        if self._data is None:
            return
        mode = self.overlay_mode
        heat = self._heat if mode == "heat" else None
        mask = self._mask if mode == "mask" else None
        for plane in planes:
            view, index = self.views[plane], self._cursor[THROUGH_AXIS[plane]]
            view.title.setText(texts.PLANE_TITLE.format(name=texts.PLANE_NAMES[plane], index=index,
                                                        last=self._data.shape[THROUGH_AXIS[plane]] - 1))
            view.set_image(plane_image(self._data, plane, index), self._levels)
            view.set_heat(None if heat is None else plane_image(heat, plane, index))
            view.set_mask(None if mask is None else plane_image(mask, plane, index), self._style, self._opacity)
            view.set_reference(None if self._reference is None else plane_image(self._reference, plane, index))

    def _draw_crosshair(self) -> None:
        for plane, view in self.views.items():
            view.set_crosshair(*index_to_view(plane, self._cursor, self._data.shape[0], self._z_ratio))

    # User input
    def _index_at(self, plane: str, x: float, y: float) -> tuple[int, int, int]:
        return view_to_index(plane, x, y, self._cursor, self._data.shape, self._z_ratio)

    def _move(self, cursor: tuple[int, int, int]) -> None:
        """The user moved the cursor: follow, and tell the owner when it changed."""
        before = self._cursor
        self.set_cursor(*cursor)
        if self._cursor != before:
            self.cursor_moved.emit(*self._cursor)

    def _on_pointed(self, plane: str, x: float, y: float) -> None:
        if self._data is not None:
            self._move(self._index_at(plane, x, y))

    def _on_wheel(self, plane: str, steps: int) -> None:
        if self._data is not None:
            cursor = list(self._cursor)
            cursor[THROUGH_AXIS[plane]] += WHEEL_SIGN[plane] * steps
            self._move(tuple(cursor))
