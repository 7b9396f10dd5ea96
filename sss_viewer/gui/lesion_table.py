"""The lesion list: the whole-volume mask's 3-D regions in a sortable table with a size filter and CSV export.

A click on a row (or Enter, or a double-click) picks its region.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QPushButton,
                               QTableView, QVBoxLayout, QWidget)

from ..core.lesions import Lesion, write_lesions_csv
from . import texts

MIN_SIZE_RANGE = (0.0, 1000.0)              # mL
MIN_SIZE_STEP = 0.01                        # mL
MIN_SIZE_DECIMALS = 3
MIN_SIZE_SLACK = 1e-9                       # mL: a region exactly at the minimum stays despite float rounding
CSV_SUFFIX = ".csv"
ROW_PADDING = 4                             # px between rows, above the font's height
SORT_ROLE = Qt.ItemDataRole.UserRole        # a cell's rank in its column's order (ints: numeric sorting)
LABEL_ROLE = Qt.ItemDataRole.UserRole + 1   # the row's lesion label, on every cell
NUMBER_ALIGN = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


@dataclass(frozen=True)
class Column:
    text: Callable[[Lesion], str]           # what the cell shows
    key: Callable[[Lesion], object]         # what it sorts by (tuples: lexicographically)
    first_order: Qt.SortOrder               # the order of a first click on its header


ASCENDING, DESCENDING = Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder


def shown_slices(lesion: Lesion) -> tuple[int, int, int]:
    """First, last and peak slice as the slider counts them: the aligned grid's on an aligned checkpoint."""
    return lesion.view_slices or (*lesion.slices, lesion.peak_slice)


def slices_tooltip(lesion: Lesion) -> str:
    first, last, peak = shown_slices(lesion)
    if lesion.view_slices is None:
        return texts.LESION_SLICES_TOOLTIP.format(first=first, last=last, peak=peak)
    return texts.LESION_SLICES_ALIGNED_TOOLTIP.format(first=first, last=last, peak=peak, scan_first=lesion.slices[0],
                                                      scan_last=lesion.slices[1])

COLUMNS = (  # in the order of texts.LESIONS_COLUMNS
    Column(lambda l: str(l.label), lambda l: l.label, ASCENDING),
    Column(lambda l: texts.LESION_VOLUME.format(ml=l.volume_ml), lambda l: l.volume_ml, DESCENDING),
    Column(lambda l: str(l.voxels), lambda l: l.voxels, DESCENDING),
    Column(lambda l: texts.LESION_CENTRE.format(r=l.centre_ras_mm[0], a=l.centre_ras_mm[1], s=l.centre_ras_mm[2]),
           lambda l: l.centre_ras_mm, ASCENDING),
    Column(lambda l: texts.LESION_SLICES.format(first=shown_slices(l)[0], last=shown_slices(l)[1]),
           lambda l: shown_slices(l)[:2], ASCENDING),
    Column(lambda l: texts.LESION_HEAT.format(heat=l.peak_heat), lambda l: l.peak_heat, DESCENDING),
    Column(lambda l: texts.LESION_HEAT.format(heat=l.mean_heat), lambda l: l.mean_heat, DESCENDING),
    Column(lambda l: texts.LESION_VOXEL.format(i=l.centre_voxel[0], j=l.centre_voxel[1], k=l.centre_voxel[2]),
           lambda l: l.centre_voxel, ASCENDING),
)
VOLUME_COLUMN = 1
SLICES_COLUMN = 4


class LesionTable(QWidget):
    """The regions of set_lesions' list at or above the minimum size, one row each, largest first by default.

    Nothing is recomputed here: the minimum size filters the given list. `chosen` may repeat a lesion
    (a double-click is a click, then an activation).
    """

    chosen = Signal(object)           # the Lesion of a clicked or activated (Enter, double-click) row
    min_size_changed = Signal(float)  # mL
    error = Signal(str)               # a one-line message: an export failed
    exported = Signal(str)            # a one-line status message: an export succeeded

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._lesions: list[Lesion] | None = None
        self._by_label: dict[int, Lesion] = {}
        self.export_path = texts.LESIONS_FILE  # where the export dialog starts; the window may set a folder/name

        self.min_spin = QDoubleSpinBox()
        self.min_spin.setRange(*MIN_SIZE_RANGE)
        self.min_spin.setSingleStep(MIN_SIZE_STEP)
        self.min_spin.setDecimals(MIN_SIZE_DECIMALS)
        self.min_spin.setToolTip(texts.LESIONS_MIN_SIZE_TOOLTIP)
        self.min_spin.valueChanged.connect(self._min_size_edited)
        min_label = QLabel(texts.LESIONS_MIN_SIZE)
        min_label.setBuddy(self.min_spin)
        self.export_button = QPushButton(texts.BUTTON_EXPORT_LESIONS)
        self.export_button.setToolTip(texts.LESIONS_EXPORT_TOOLTIP)
        self.export_button.clicked.connect(self._export_dialog)
        self.summary = QLabel()
        self.summary.setWordWrap(True)

        self.model = QStandardItemModel(0, len(COLUMNS))
        self.model.setHorizontalHeaderLabels(list(texts.LESIONS_COLUMNS))
        for c, (column, tip) in enumerate(zip(COLUMNS, texts.LESIONS_COLUMN_TOOLTIPS, strict=True)):
            self.model.setHeaderData(c, Qt.Orientation.Horizontal, tip, Qt.ItemDataRole.ToolTipRole)
            self.model.setHeaderData(c, Qt.Orientation.Horizontal, column.first_order.value,  # the header reads an int
                                     Qt.ItemDataRole.InitialSortOrderRole)
        self.proxy = QSortFilterProxyModel()
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setToolTip(texts.LESIONS_TABLE_TOOLTIP)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setWordWrap(False)
        self.view.verticalHeader().hide()
        self.view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + ROW_PADDING)
        self.view.horizontalHeader().setHighlightSections(False)
        self.view.horizontalHeader().setStretchLastSection(True)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(VOLUME_COLUMN, DESCENDING)
        self.view.clicked.connect(self._choose)
        self.view.activated.connect(self._choose)

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(min_label)
        top.addWidget(self.min_spin)
        top.addStretch(1)
        top.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.view, 1)
        self.set_lesions(None)

    # Input
    def set_lesions(self, lesions: list[Lesion] | None) -> None:
        """The whole-volume mask's regions (core.lesions.lesion_list, best with min_ml = 0), or None before a run."""
        self._lesions = None if lesions is None else list(lesions)
        self._by_label = {l.label: l for l in self._lesions or []}
        self._refill()

    def min_size(self) -> float:
        return float(self.min_spin.value())

    def set_min_size(self, ml: float) -> None:
        """Set the minimum size (mL, clamped to the box's range); emits min_size_changed when it changes."""
        self.min_spin.setValue(ml)

    # Output
    def lesions_shown(self) -> list[Lesion]:
        """The regions at or above the minimum size, in the given list's order (largest first)."""
        low = self.min_size() - MIN_SIZE_SLACK
        return [l for l in self._lesions or [] if l.volume_ml >= low]

    def export_csv(self, path: str | os.PathLike) -> bool:
        """Write the shown regions (lesions_shown's order) to path atomically; on failure emit `error`, False."""
        shown = self.lesions_shown()
        try:
            write_lesions_csv(path, shown)
        except OSError as e:
            self.error.emit(texts.ERROR_LESIONS_CSV.format(path=os.fspath(path), reason=e.strerror or e))
            return False
        self.exported.emit(texts.STATUS_LESIONS_CSV.format(n=len(shown), path=os.fspath(path)))
        return True

    # Internals
    def _refill(self) -> None:
        """Rebuild the rows from the list and the minimum size, keeping the sort and the selected region."""
        selected = self._selected_label()
        shown = self.lesions_shown()
        self.model.removeRows(0, self.model.rowCount())
        ranks = [self._ranks(column, shown) for column in COLUMNS]     # (columns, rows)
        for r, lesion in enumerate(shown):
            row = []
            for c, column in enumerate(COLUMNS):
                item = QStandardItem(column.text(lesion))
                item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
                item.setData(ranks[c][r], SORT_ROLE)
                item.setData(lesion.label, LABEL_ROLE)
                item.setTextAlignment(NUMBER_ALIGN)
                row.append(item)
            row[SLICES_COLUMN].setToolTip(slices_tooltip(lesion))
            self.model.appendRow(row)
        self.view.resizeColumnsToContents()
        if selected in {l.label for l in shown}:
            match = self.proxy.match(self.proxy.index(0, 0), LABEL_ROLE, selected, 1, Qt.MatchFlag.MatchExactly)
            self.view.selectRow(match[0].row())
        self.export_button.setEnabled(self._lesions is not None)
        if self._lesions is None:
            self.summary.setText(texts.LESIONS_NONE)
        else:
            total = sum(l.volume_ml for l in self._lesions)
            summary = texts.LESIONS_SUMMARY_ONE if len(self._lesions) == 1 else texts.LESIONS_SUMMARY
            self.summary.setText(summary.format(n=len(self._lesions), ml=total, shown=len(shown)))

    @staticmethod
    def _ranks(column: Column, lesions: list[Lesion]) -> list[int]:
        """Each lesion's rank by the column's key, ties equal (a stable sort then keeps them in list order)."""
        keys = [column.key(l) for l in lesions]
        rank = {key: i for i, key in enumerate(sorted(set(keys)))}
        return [rank[key] for key in keys]

    def _selected_label(self) -> int | None:
        rows = self.view.selectionModel().selectedRows()
        return rows[0].data(LABEL_ROLE) if rows else None

    def _choose(self, index: QModelIndex) -> None:
        self.chosen.emit(self._by_label[index.data(LABEL_ROLE)])

    def _min_size_edited(self, value: float) -> None:
        self._refill()
        self.min_size_changed.emit(float(value))

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, texts.DIALOG_SAVE_LESIONS, self.export_path, texts.FILTER_CSV)
        if path:
            self.export_csv(path if path.lower().endswith(CSV_SUFFIX) else path + CSV_SUFFIX)
