"""A PDF report of one detection, to read without the app: input, model, settings, lesion list, largest regions.

Page 1: heading, the research-only notice, the input, model and settings lines, a summary and the lesion list (every
region, continued on the next pages when it does not fit). Then one page for each of the MAX_REGIONS largest regions:
its most affected axial slice as the original, the heat map and the mask overlay, whole and close up, and a coronal
and a sagittal view through its centre. Views are radiological (the patient's right on the image's left) and drawn
to scale in millimetres, so non-square voxels keep the anatomy's proportions. Text is real PDF text (searchable).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QLineF, QMarginsF, QRectF, Qt
from PySide6.QtGui import (QColor, QFont, QGuiApplication, QImage, QPageLayout, QPageSize, QPainter, QPdfWriter, QPen,
                           QTextOption)
from PySide6.QtWidgets import QApplication
from scipy import ndimage

import sss_viewer
from sss_viewer.core.files import atomic_write_bytes
from sss_viewer.core.lesions import CONNECTIVITY, Lesion
from sss_viewer.core.volume import Volume

from .panels import CONTOUR_COLOR, HEAT_COLORMAP, HEAT_RANGE, MASK_COLOR

MAX_REGIONS = 5                        # region pages: the largest regions
WINDOW_PERCENTILES = (0.5, 99.5)       # default grey window: these percentiles of the nonzero voxels
MASK_OPACITY = 0.6                     # the mask's fill over the grey image (the viewer's default)
OUTLINE_PX = 3                         # outline of the region a page is about, in image pixels (0.5 mm)
DISCLAIMER = ("Research tool — not a diagnosis. The anomaly maps come from a model trained on healthy brains; "
              "a radiologist must review every finding.")
NO_REGION = "No region flagged at these settings."
TABLE_NOTE = ("Centre: mean position of the region's voxels in scanner RAS millimetres (+ is the patient's right, "
              "anterior, superior). Voxel: the voxel nearest to it, 0-based index in the input file's array. Axial "
              "slices: canonical index, inferior to superior. Heat: squared error in model intensity units.")
LEGEND = ("Red: flagged voxels (every region). Green: outline of region {n}; the green ticks at the image edges "
          "point at its centre. Radiological orientation: the patient's right is on the image's left. Heat map: "
          "squared error from {low:g} (black) to {high:g} or more (pale yellow).")

RESOLUTION_DPI = 150                   # device units of the PDF; images get one pixel per unit
MM_PER_INCH = 25.4
MARGIN_MM = 15.0
FOOTER_MM = 9.0                        # band at the foot of every page for the footer line
GAP_MM = 4.0
LABEL_MM = 40.0                        # label column of the input, model and settings lines
LETTER_MM = 4.5                        # band around each image for its orientation letters
TICK_MM = 2.5                          # centre ticks at the image edges
COLORBAR_MM = 3.0
AXIAL_ROW_MM = 62.0                    # a row of three axial views, titles and letters included
ZOOM_MIN_MM = 30.0                     # side of the smallest close-up
ZOOM_FACTOR = 1.6                      # close-up side / the region's larger in-plane extent
ROW_SPACING = 1.5                      # table row height / text line height
TITLE_PT, HEADING_PT, BODY_PT, TABLE_PT, SMALL_PT = 18.0, 11.0, 9.0, 8.5, 7.5

TEXT_COLOR = QColor(20, 20, 20)
MUTED_COLOR = QColor(95, 95, 95)
WARN_COLOR = QColor(150, 20, 20)
WARN_FILL = QColor(253, 236, 234)
RULE_COLOR = QColor(170, 170, 170)
HEADER_FILL = QColor(222, 222, 222)
STRIPE_FILL = QColor(244, 244, 244)

# Table columns: heading and relative width.
COLUMNS = (("#", 6), ("Volume (mL)", 18), ("Centre R, A, S (mm)", 36), ("Voxel (i, j, k)", 26),
           ("Axial slices", 18), ("Peak heat", 16), ("Mean heat", 16))
# Display planes by the canonical axis they cut: name and orientation letters (top, bottom, left, right).
PLANES = {2: ("Axial", ("A", "P", "R", "L")), 1: ("Coronal", ("S", "I", "R", "L")),
          0: ("Sagittal", ("S", "I", "A", "P"))}

_app: QGuiApplication | None = None


class ReportError(OSError):
    """The report could not be written: errno, strerror and filename as the system gave them; str() is one line
    that says what to do."""

    def __str__(self) -> str:
        return (f"cannot write the report {self.filename} ({self.strerror}); check that its folder exists and is "
                "writable, and has free space")


@dataclass(frozen=True)
class ReportContent:
    """Everything the report shows; the arrays are canonical (X, Y, Z) on volume's grid."""

    title: str                                  # the input's name
    input_lines: list[tuple[str, str]]          # (label, text): path, series, grid, brain extraction, ...
    model_lines: list[tuple[str, str]]          # checkpoint name, sha256 prefix, step, modality
    settings_lines: list[tuple[str, str]]       # timesteps, threshold and its source, draws, post-processing, ...
    volume: Volume                              # the image shown, and the geometry
    heat: np.ndarray                            # (X, Y, Z) float squared error
    mask: np.ndarray                            # (X, Y, Z) bool
    lesions: list[Lesion]                       # largest first (lesion_list), every one listed
    window: tuple[float, float] | None          # grey window in raw intensities; None: WINDOW_PERCENTILES
    created: datetime


def ensure_app() -> QGuiApplication:
    """The running Qt application, or a new one (offscreen unless QT_QPA_PLATFORM says otherwise) for the command
    line. A QApplication, so widgets may still follow in the same process."""
    global _app
    app = QGuiApplication.instance()
    if app is not None:
        return app
    argv = [sys.argv[0] if sys.argv and sys.argv[0] else "sss-viewer"]
    if "QT_QPA_PLATFORM" not in os.environ:
        argv += ["-platform", "offscreen"]
    _app = QApplication(argv)
    return _app


def plane(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` of a canonical (X, Y, Z) array across `axis`, in radiological display layout (rows, columns).

    axis 2 (axial): rows anterior → posterior, columns the patient's right → left;
    axis 1 (coronal): rows superior → inferior, columns right → left;
    axis 0 (sagittal): rows superior → inferior, columns anterior → posterior.
    """
    return np.take(array, index, axis=axis)[::-1, ::-1].T


def _other_axes(axis: int) -> tuple[int, int]:
    """The canonical axes along a plane's columns and rows."""
    cols, rows = (a for a in range(3) if a != axis)
    return cols, rows


def display_spacing(spacing: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """Millimetres per row and per column of plane(…, axis, …)."""
    cols, rows = _other_axes(axis)
    return spacing[rows], spacing[cols]


def display_point(point: tuple[int, int, int], shape: tuple[int, int, int], axis: int) -> tuple[int, int]:
    """(row, column) of canonical voxel `point` in plane(…, axis, …)."""
    cols, rows = _other_axes(axis)
    return shape[rows] - 1 - point[rows], shape[cols] - 1 - point[cols]


def _resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D array resampled to (rows, columns) by nearest neighbour (each output pixel takes the voxel it lies in)."""
    rows = ((np.arange(size[0]) + 0.5) * image.shape[0] / size[0]).astype(int)
    cols = ((np.arange(size[1]) + 0.5) * image.shape[1] / size[1]).astype(int)
    return image[np.ix_(rows, cols)]


def _grey_rgb(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """(H, W) intensities → (H, W, 3) uint8 grey, window low → black, high → white."""
    low, high = window
    grey = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    return np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)


def _heat_rgb(heat: np.ndarray) -> np.ndarray:
    """(H, W) squared error → (H, W, 3) uint8 in the viewer's colour map over HEAT_RANGE."""
    low, high = HEAT_RANGE
    index = np.rint(np.clip((heat - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.intp)
    return _heat_lut()[index]


@functools.lru_cache(maxsize=1)
def _heat_lut() -> np.ndarray:
    """(256, 3) uint8 colours of HEAT_COLORMAP from low to high."""
    return pg.colormap.get(HEAT_COLORMAP).getLookupTable(0.0, 1.0, 256, alpha=False)


def _overlay_rgb(grey: np.ndarray, mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(H, W, 3) grey with the (H, W) mask blended in MASK_COLOR and the region outlined just outside in
    CONTOUR_COLOR."""
    out = grey.astype(np.float32)
    out[mask] = out[mask] * (1.0 - MASK_OPACITY) + np.asarray(MASK_COLOR, np.float32) * MASK_OPACITY
    out[ndimage.binary_dilation(region, iterations=OUTLINE_PX) & ~region] = CONTOUR_COLOR
    return np.rint(out).astype(np.uint8)


def _qimage(rgb: np.ndarray) -> QImage:
    """(H, W, 3) uint8 → a QImage that owns its pixels."""
    rgb = np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    return QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def _window(volume: Volume, window: tuple[float, float] | None) -> tuple[float, float]:
    """The grey window: the given one, else WINDOW_PERCENTILES of the nonzero voxels (never empty)."""
    if window is None:
        values = volume.data[volume.data != 0]
        window = tuple(float(v) for v in np.percentile(values if values.size else volume.data, WINDOW_PERCENTILES))
    low, high = window
    return (low, high) if high > low else (low, low + 1.0)


def _region_ids(labels: np.ndarray, n: int, lesions: list[Lesion]) -> list[int | None]:
    """Each lesion's label in `labels` (the mask's regions 1..n), matched by size and nearest centre voxel as
    lesion_list computes them; None when the mask holds no such region."""
    inside = np.nonzero(labels)                                                     # 3 × (m,)
    region = labels[inside] - 1                                                     # (m,)
    counts = np.bincount(region, minlength=n)                                       # (n,)
    centres = np.stack([np.bincount(region, axis, n) for axis in inside], axis=1) / counts[:, None]
    nearest = np.clip(np.floor(centres + 0.5).astype(int), 0, np.asarray(labels.shape) - 1)  # (n, 3)
    found = {(int(c), tuple(int(v) for v in p)): i + 1 for i, (c, p) in enumerate(zip(counts, nearest))}
    return [found.get((lesion.voxels, tuple(lesion.centre_canonical))) for lesion in lesions]


@dataclass(frozen=True)
class _Maps:
    """What the views are drawn from: canonical (X, Y, Z) arrays, the grey window and the mask's regions."""

    grey: np.ndarray                  # (X, Y, Z) image intensities
    heat: np.ndarray                  # (X, Y, Z) squared error
    mask: np.ndarray                  # (X, Y, Z) bool
    labels: np.ndarray                # (X, Y, Z) int: the mask's 26-connected regions 1..n, 0 outside
    window: tuple[float, float]

    def view(self, axis: int, index: int, kind: str, region: int | None, size: tuple[int, int]) -> np.ndarray:
        """(rows, columns, 3) uint8 picture of plane(…, axis, index) at `size`: kind "grey", "heat" or "overlay"
        (the mask, with region `region`'s outline)."""
        def shown(array: np.ndarray) -> np.ndarray:
            return _resize_nearest(plane(array, axis, index), size)                 # (rows, columns)
        if kind == "heat":
            return _heat_rgb(shown(self.heat))
        grey = _grey_rgb(shown(self.grey), self.window)
        if kind == "grey":
            return grey
        outline = shown(self.labels) == region if region is not None else np.zeros(size, bool)
        return _overlay_rgb(grey, shown(self.mask), outline)

    def crop(self, xs: slice, ys: slice) -> _Maps:
        """The same maps cut to canonical x and y ranges (views, not copies)."""
        return _Maps(grey=self.grey[xs, ys], heat=self.heat[xs, ys], mask=self.mask[xs, ys],
                     labels=self.labels[xs, ys], window=self.window)


class _Page:
    """Drawing on the printable area of the current page, in device units (RESOLUTION_DPI per inch)."""

    def __init__(self, painter: QPainter, writer: QPdfWriter, footer: str):
        self.painter = painter
        self.writer = writer
        self.footer = footer
        self.total = 0                            # pages in all, once known
        self.number = 1
        self.width = float(writer.width())
        self.height = float(writer.height())

    def mm(self, value: float) -> float:
        return value * self.writer.resolution() / MM_PER_INCH

    @property
    def bottom(self) -> float:
        """Lowest y the page's content may reach (the footer lies below)."""
        return self.height - self.mm(FOOTER_MM)

    def font(self, size: float, bold: bool = False) -> None:
        font = QFont()
        font.setPointSizeF(size)
        font.setBold(bold)
        self.painter.setFont(font)

    def line_height(self, size: float, bold: bool = False) -> float:
        self.font(size, bold)
        return self.painter.fontMetrics().height()

    def measure(self, width: float, text: str, size: float, bold: bool = False,
                align: Qt.AlignmentFlag = Qt.AlignmentFlag.AlignLeft) -> tuple[float, QTextOption]:
        """The height of text wrapped to `width` (at word boundaries, inside words too long for a line), and the
        option that wraps it so; leaves the font set."""
        self.font(size, bold)
        option = QTextOption(align)
        option.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        return self.painter.boundingRect(QRectF(0, 0, width, self.height), text, option).height(), option

    def text(self, x: float, y: float, width: float, text: str, size: float, bold: bool = False,
             color: QColor = TEXT_COLOR, align: Qt.AlignmentFlag = Qt.AlignmentFlag.AlignLeft) -> float:
        """Draw text wrapped to `width` from (x, y) down; return its height."""
        height, option = self.measure(width, text, size, bold, align)
        self.painter.setPen(color)
        self.painter.drawText(QRectF(x, y, width, height), text, option)
        return height

    def heading(self, y: float, text: str) -> float:
        """A section heading at y; returns the y below it."""
        return y + self.text(0, y, self.width, text, HEADING_PT, bold=True) + self.mm(1.0)

    def finish(self) -> None:
        """The footer of the current page: a rule, the report's name and the page number."""
        y = self.height - self.mm(FOOTER_MM) + self.mm(3.0)
        self.painter.setPen(QPen(RULE_COLOR, self.mm(0.2)))
        self.painter.drawLine(QLineF(0, y, self.width, y))
        self.text(0, y + self.mm(1.0), self.width * 0.8, self.footer, SMALL_PT, color=MUTED_COLOR)
        self.text(0, y + self.mm(1.0), self.width, f"Page {self.number} of {self.total}", SMALL_PT,
                  color=MUTED_COLOR, align=Qt.AlignmentFlag.AlignRight)

    def new_page(self) -> None:
        self.finish()
        self.writer.newPage()
        self.number += 1


def _fmt_ml(volume_ml: float) -> str:
    return f"{volume_ml:.3f}"


def _slices(lesion: Lesion) -> str:
    first, last = lesion.slices
    return f"{first}–{last}" if last != first else str(first)


def _row(lesion: Lesion) -> tuple[str, ...]:
    """A lesion's cells in the table, in COLUMNS order."""
    return (str(lesion.label), _fmt_ml(lesion.volume_ml), "{:.1f}, {:.1f}, {:.1f}".format(*lesion.centre_ras_mm),
            "{}, {}, {}".format(*lesion.centre_voxel), _slices(lesion), f"{lesion.peak_heat:.3f}",
            f"{lesion.mean_heat:.3f}")


def _caption(lesion: Lesion) -> str:
    x, y, z = lesion.centre_ras_mm
    i, j, k = lesion.centre_voxel
    slices = "slice" if lesion.slices[0] == lesion.slices[1] else "slices"
    return (f"Region {lesion.label}: {_fmt_ml(lesion.volume_ml)} mL, centre R/A/S ({x:.1f}, {y:.1f}, {z:.1f}) mm, "
            f"voxel ({i}, {j}, {k}), {slices} {_slices(lesion)}")


def _draw_lines(page: _Page, y: float, title: str, lines: list[tuple[str, str]]) -> float:
    """A heading and its (label, text) lines in two columns; returns the y below them."""
    y = page.heading(y, title)
    label_width = page.mm(LABEL_MM)
    for label, text in lines:
        used = page.text(0, y, label_width - page.mm(2.0), label, BODY_PT, bold=True)
        used = max(used, page.text(label_width, y, page.width - label_width, text, BODY_PT))
        y += used + page.mm(0.6)
    return y + page.mm(GAP_MM - 0.6)


def _draw_notice(page: _Page, y: float) -> float:
    """The research-only notice in a framed box; returns the y below it."""
    pad = page.mm(2.5)
    text_height = page.measure(page.width - 2 * pad, DISCLAIMER, BODY_PT + 0.5, bold=True)[0]
    page.painter.setPen(QPen(WARN_COLOR, page.mm(0.5)))
    page.painter.setBrush(WARN_FILL)
    page.painter.drawRect(QRectF(0, y, page.width, text_height + 2 * pad))
    page.painter.setBrush(Qt.BrushStyle.NoBrush)
    page.text(pad, y + pad, page.width - 2 * pad, DISCLAIMER, BODY_PT + 0.5, bold=True, color=WARN_COLOR)
    return y + text_height + 2 * pad + page.mm(GAP_MM)


def _summary(content: ReportContent) -> str:
    n = len(content.lesions)
    flagged = int(np.count_nonzero(content.mask))
    ml = content.volume.voxel_volume_ml
    listed = sum(lesion.volume_ml for lesion in content.lesions)
    text = (f"{n} region{'' if n == 1 else 's'} listed, {_fmt_ml(listed)} mL; the whole mask holds {flagged} "
            f"voxel{'' if flagged == 1 else 's'}, {_fmt_ml(flagged * ml)} mL.")
    if n > MAX_REGIONS:
        return text + f" The {MAX_REGIONS} largest are shown on the following pages."
    if n > 1:
        return text + " Each is shown on the following pages."
    return text + (" It is shown on the next page." if n else "")


def _draw_front(page: _Page, content: ReportContent) -> float:
    """Page 1 down to the lesion table: returns the y where the table starts."""
    page.text(0, 0, page.width, content.created.isoformat(sep=" ", timespec="minutes"), BODY_PT,
              color=MUTED_COLOR, align=Qt.AlignmentFlag.AlignRight)
    y = page.text(0, 0, page.width, "sss-viewer report", TITLE_PT, bold=True)
    y += page.text(0, y, page.width, content.title, HEADING_PT + 2, bold=True) + page.mm(GAP_MM)
    y = _draw_notice(page, y)
    for title, lines in (("Input", content.input_lines), ("Model", content.model_lines),
                         ("Settings", content.settings_lines)):
        y = _draw_lines(page, y, title, lines)
    y = page.heading(y, "Findings")
    y += page.text(0, y, page.width, _summary(content), BODY_PT) + page.mm(GAP_MM)
    if not content.lesions:
        return y + page.text(0, y, page.width, NO_REGION, HEADING_PT, bold=True)
    y = page.heading(y, "Lesion list")
    return y + page.text(0, y, page.width, TABLE_NOTE, SMALL_PT, color=MUTED_COLOR) + page.mm(1.5)


def _row_height(page: _Page) -> float:
    return page.line_height(TABLE_PT) * ROW_SPACING


def _rows_fitting(page: _Page, y: float) -> int:
    """Table rows (below the heading row) that fit between y and the page's bottom."""
    return max(0, int((page.bottom - y) / _row_height(page)) - 1)


def _draw_table(page: _Page, y: float, lesions: list[Lesion]) -> None:
    """The heading row and one row per lesion from y down."""
    row_height = _row_height(page)
    scale = page.width / sum(width for _, width in COLUMNS)
    edges = np.cumsum([0] + [width * scale for _, width in COLUMNS])       # (columns + 1,) x of the column edges
    rows = [tuple(name for name, _ in COLUMNS)] + [_row(lesion) for lesion in lesions]
    for i, cells in enumerate(rows):
        top = y + i * row_height
        fill = HEADER_FILL if i == 0 else STRIPE_FILL if i % 2 == 0 else None
        if fill is not None:
            page.painter.fillRect(QRectF(0, top, page.width, row_height), fill)
        page.font(TABLE_PT, bold=i == 0)
        page.painter.setPen(TEXT_COLOR)
        for cell, left, right in zip(cells, edges[:-1], edges[1:]):
            page.painter.drawText(QRectF(left, top, right - left, row_height), Qt.AlignmentFlag.AlignCenter, cell)
    page.painter.setPen(QPen(RULE_COLOR, page.mm(0.2)))
    page.painter.drawLine(QLineF(0, y + len(rows) * row_height, page.width, y + len(rows) * row_height))


def _table_pages(n: int, first: int, per_page: int) -> list[tuple[int, int]]:
    """(start, stop) of the lesions listed on page 1 (first rows fit there) and each continuation page."""
    chunks = [(0, min(n, first))]
    while chunks[-1][1] < n:
        start = chunks[-1][1]
        chunks.append((start, min(n, start + per_page)))
    return chunks


def _fit(box: QRectF, height_mm: float, width_mm: float) -> QRectF:
    """The largest rectangle of this physical aspect in box, centred across it, at its top."""
    scale = min(box.width() / width_mm, box.height() / height_mm)
    width, height = width_mm * scale, height_mm * scale
    return QRectF(box.center().x() - width / 2, box.top(), width, height)


def _draw_view(page: _Page, cell: QRectF, title: str, axis: int, shape: tuple[int, int, int],
               spacing: tuple[float, float, float], centre: tuple[int, int, int],
               picture: Callable[[tuple[int, int]], np.ndarray]) -> QRectF:
    """One view in cell: its title, the image to scale with orientation letters and ticks at `centre`; returns the
    image's rectangle. picture(size) gives the (rows, columns, 3) image at that size."""
    title_height = page.text(cell.left(), cell.top(), cell.width(), title, BODY_PT, bold=True,
                             align=Qt.AlignmentFlag.AlignHCenter)
    letter = page.mm(LETTER_MM)
    box = QRectF(cell.left() + letter, cell.top() + title_height + letter, cell.width() - 2 * letter,
                 cell.height() - title_height - 2 * letter)
    cols, rows = _other_axes(axis)
    row_mm, col_mm = display_spacing(spacing, axis)
    rect = _fit(box, shape[rows] * row_mm, shape[cols] * col_mm)
    size = (max(1, round(rect.height())), max(1, round(rect.width())))
    page.painter.drawImage(rect, _qimage(picture(size)))
    _draw_letters(page, rect, PLANES[axis][1])
    row, col = display_point(centre, shape, axis)
    _draw_ticks(page, rect, rect.left() + (col + 0.5) * rect.width() / shape[cols],
                rect.top() + (row + 0.5) * rect.height() / shape[rows])
    return rect


def _draw_letters(page: _Page, rect: QRectF, letters: tuple[str, str, str, str]) -> None:
    """Orientation letters (top, bottom, left, right) outside the middle of each edge of an image."""
    band = page.mm(LETTER_MM)
    page.font(BODY_PT, bold=True)
    page.painter.setPen(MUTED_COLOR)
    for text, spot in zip(letters, (QRectF(rect.left(), rect.top() - band, rect.width(), band),
                                    QRectF(rect.left(), rect.bottom(), rect.width(), band),
                                    QRectF(rect.left() - band, rect.top(), band, rect.height()),
                                    QRectF(rect.right(), rect.top(), band, rect.height()))):
        page.painter.drawText(spot, Qt.AlignmentFlag.AlignCenter, text)


def _draw_ticks(page: _Page, rect: QRectF, x: float, y: float) -> None:
    """Short marks from each edge of an image in at the point (x, y)'s column and row."""
    tick = page.mm(TICK_MM)
    page.painter.setPen(QPen(QColor(*CONTOUR_COLOR), page.mm(0.5)))
    for line in (QLineF(x, rect.top(), x, rect.top() + tick), QLineF(x, rect.bottom(), x, rect.bottom() - tick),
                 QLineF(rect.left(), y, rect.left() + tick, y), QLineF(rect.right(), y, rect.right() - tick, y)):
        page.painter.drawLine(line)


def _draw_colorbar(page: _Page, x: float, y: float, width: float) -> None:
    """The heat map's colour bar across `width` from (x, y), with its range below."""
    bar = QRectF(x, y, width, page.mm(COLORBAR_MM))
    page.painter.drawImage(bar, _qimage(_heat_lut()[None]))                        # (1, 256, 3)
    page.painter.setPen(QPen(RULE_COLOR, page.mm(0.2)))
    page.painter.drawRect(bar)
    low, high = HEAT_RANGE
    labels = y + page.mm(COLORBAR_MM + 0.5)
    page.text(x, labels, width, f"{low:g}", SMALL_PT)
    page.text(x, labels, width, "squared error", SMALL_PT, color=MUTED_COLOR, align=Qt.AlignmentFlag.AlignHCenter)
    page.text(x, labels, width, f"≥ {high:g}", SMALL_PT, align=Qt.AlignmentFlag.AlignRight)


def _zoom(lesion: Lesion, box: tuple[slice, ...] | None, shape: tuple[int, int, int],
          spacing: tuple[float, float, float]) -> tuple[slice, slice]:
    """Canonical x and y ranges of a region's close-up: a square ZOOM_FACTOR times its larger in-plane extent (at
    least ZOOM_MIN_MM) around its centre, moved inside the volume. box: the region's bounding box, if known."""
    extent = max((s.stop - s.start) * mm for s, mm in zip(box[:2], spacing)) if box is not None else 0.0
    side = max(ZOOM_MIN_MM, ZOOM_FACTOR * extent)
    ranges = []
    for axis in (0, 1):
        n = min(shape[axis], max(1, round(side / spacing[axis])))
        start = min(max(0, lesion.centre_canonical[axis] - n // 2), shape[axis] - n)
        ranges.append(slice(start, start + n))
    return ranges[0], ranges[1]


def _draw_axial_row(page: _Page, maps: _Maps, y: float, titles: tuple[str, str, str], index: int,
                    centre: tuple[int, int, int], region: int | None, spacing: tuple[float, float, float]
                    ) -> list[QRectF]:
    """Axial slice `index` as the original, the heat map and the mask side by side from y; returns their images'
    rectangles."""
    gap = page.mm(GAP_MM)
    width = (page.width - 2 * gap) / 3
    return [_draw_view(page, QRectF(i * (width + gap), y, width, page.mm(AXIAL_ROW_MM)), title, 2, maps.mask.shape,
                       spacing, centre, lambda size, kind=kind: maps.view(2, index, kind, region, size))
            for i, (title, kind) in enumerate(zip(titles, ("grey", "heat", "overlay")))]


def _draw_region(page: _Page, maps: _Maps, lesion: Lesion, region: int | None, box: tuple[slice, ...] | None,
                 spacing: tuple[float, float, float]) -> None:
    """A region's page: its caption; its most affected axial slice three ways, whole and close up; coronal and
    sagittal views through its centre; the legend."""
    y = page.text(0, 0, page.width, _caption(lesion), HEADING_PT, bold=True)
    details = (f"{lesion.voxels} voxels; heat peak {lesion.peak_heat:.3f}, mean {lesion.mean_heat:.3f}; axial slice "
               f"{lesion.peak_slice} holds most of its voxels.")
    gap = page.mm(GAP_MM)
    y += page.text(0, y, page.width, details, BODY_PT, color=MUTED_COLOR) + gap
    centre, axial = lesion.centre_canonical, lesion.peak_slice
    heat = _draw_axial_row(page, maps, y, (f"Axial {axial}: original", "Heat map", "Mask"), axial, centre, region,
                           spacing)[1]
    _draw_colorbar(page, heat.left(), heat.bottom() + page.mm(LETTER_MM), heat.width())
    y += page.mm(AXIAL_ROW_MM + LETTER_MM + COLORBAR_MM) + page.line_height(SMALL_PT) + gap

    xs, ys = _zoom(lesion, box, maps.mask.shape, spacing)
    title = f"Close-up, {(xs.stop - xs.start) * spacing[0]:.0f} × {(ys.stop - ys.start) * spacing[1]:.0f} mm"
    _draw_axial_row(page, maps.crop(xs, ys), y, (title, "Heat map", "Mask"), axial,
                    (centre[0] - xs.start, centre[1] - ys.start, centre[2]), region, spacing)
    y += page.mm(AXIAL_ROW_MM) + gap

    legend = LEGEND.format(n=lesion.label, low=HEAT_RANGE[0], high=HEAT_RANGE[1])
    height = page.bottom - y - page.measure(page.width, legend, SMALL_PT)[0] - gap
    width = (page.width - gap) / 2
    rects = [_draw_view(page, QRectF(i * (width + gap), y, width, height), f"{PLANES[axis][0]}, through the centre",
                        axis, maps.mask.shape, spacing, centre,
                        lambda size, axis=axis, index=index: maps.view(axis, index, "overlay", region, size))
             for i, (axis, index) in enumerate(((1, centre[1]), (0, centre[0])))]
    y = max(rect.bottom() for rect in rects) + page.mm(LETTER_MM) + gap
    page.text(0, y, page.width, legend, SMALL_PT, color=MUTED_COLOR)


def _check(content: ReportContent) -> None:
    shape = content.volume.data.shape
    for name, array in (("heat map", content.heat), ("mask", content.mask)):
        if np.shape(array) != shape:
            raise ValueError(f"the report's {name} has shape {np.shape(array)}, not the volume's canonical {shape}; "
                             "bring it onto the volume's grid first")


def _render(content: ReportContent, device: QBuffer) -> int:
    """Paint the report into device; returns the number of pages."""
    writer = QPdfWriter(device)
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setPageOrientation(QPageLayout.Orientation.Portrait)
    writer.setResolution(RESOLUTION_DPI)
    writer.setPageMargins(QMarginsF(MARGIN_MM, MARGIN_MM, MARGIN_MM, MARGIN_MM), QPageLayout.Unit.Millimeter)
    writer.setTitle(f"sss-viewer report: {content.title}")
    writer.setCreator(f"sss-viewer {sss_viewer.__version__}")
    painter = QPainter()
    if not painter.begin(writer):
        raise RuntimeError("Qt's PDF writer would not start drawing the report")
    try:
        mask = np.asarray(content.mask, bool)                                      # (X, Y, Z)
        labels, n = ndimage.label(mask, structure=CONNECTIVITY)                    # (X, Y, Z) int
        regions = content.lesions[:MAX_REGIONS]
        maps = _Maps(grey=content.volume.data, heat=np.asarray(content.heat), mask=mask, labels=labels,
                     window=_window(content.volume, content.window))
        page = _Page(painter, writer, f"sss-viewer report · {content.title} · research tool, not a diagnosis")
        y = _draw_front(page, content)
        chunks = _table_pages(len(content.lesions), _rows_fitting(page, y),
                              _rows_fitting(page, page.line_height(HEADING_PT, bold=True) + page.mm(1.0)))
        page.total = len(chunks) + len(regions)
        for i, (start, stop) in enumerate(chunks):
            if i:
                page.new_page()
                y = page.heading(0, "Lesion list (continued)")
            if stop > start:
                _draw_table(page, y, content.lesions[start:stop])
        boxes = ndimage.find_objects(labels)                                       # each region's bounding box
        for lesion, region in zip(regions, _region_ids(labels, n, regions)):
            page.new_page()
            _draw_region(page, maps, lesion, region, boxes[region - 1] if region is not None else None,
                         content.volume.spacing)
        page.finish()
    finally:
        painter.end()
    return page.total


def write_report(path: str | os.PathLike, content: ReportContent) -> int:
    """Write the PDF report to path, atomically (a failure leaves no file); returns its number of pages.

    Makes a Qt application when none runs (ensure_app). Raises ValueError for arrays off the volume's grid and
    ReportError (an OSError, str() one line) when the file cannot be written.
    """
    ensure_app()
    _check(content)
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    pages = _render(content, buffer)
    buffer.close()
    try:
        atomic_write_bytes(path, bytes(data))
    except OSError as err:
        raise ReportError(err.errno, err.strerror or str(err), str(path)) from err
    return pages
