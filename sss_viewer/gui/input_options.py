"""How the viewer reads a scan: the brain-extraction menu, the DICOM series choice, and what it tells the user."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMenu, QWidget

from ..core.dicom import Series, pick_series
from ..core.inputs import SKULL_MODES
from ..core.modality import check_modality
from ..core.volume import VolumeError
from . import texts
from .worker import InputOptions, Session


class BrainMenu(QObject):
    """The Brain Extraction menu: a mode (auto, force, off) or the user's own mask file; `changed` asks to reopen."""

    changed = Signal()

    def __init__(self, menu: QMenu, parent: QWidget, skull: str = "auto", brain_mask: Path | None = None):
        super().__init__(parent)
        self._parent = parent
        self.brain_mask = brain_mask
        self.group = QActionGroup(self)
        self.modes: dict[str, QAction] = {}
        for mode in SKULL_MODES:
            action = QAction(texts.ACTION_SKULL[mode], self, checkable=True)
            action.setChecked(mode == skull and brain_mask is None)
            action.triggered.connect(lambda _=False, m=mode: self.set_mode(m))
            self.group.addAction(action)
            menu.addAction(action)
            self.modes[mode] = action
        menu.addSeparator()
        self.mask_action = QAction(texts.ACTION_BRAIN_MASK, self, checkable=True)
        self.mask_action.setChecked(brain_mask is not None)
        self.mask_action.triggered.connect(self._choose_mask)
        self.group.addAction(self.mask_action)
        menu.addAction(self.mask_action)

    @property
    def skull(self) -> str:
        return next((m for m, a in self.modes.items() if a.isChecked()), "auto")

    def set_mode(self, mode: str) -> None:
        self.brain_mask = None
        self.modes[mode].setChecked(True)
        self.changed.emit()

    def set_mask(self, path: Path) -> None:
        self.brain_mask = Path(path)
        self.mask_action.setChecked(True)
        self.changed.emit()

    def _choose_mask(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self._parent, texts.DIALOG_BRAIN_MASK, "", texts.FILTER_NIFTI)
        if path:
            self.set_mask(Path(path))
        else:   # cancelled: the previous choice stays
            (self.mask_action if self.brain_mask is not None else self.modes[self.skull]).setChecked(True)

    def options(self, series: str | None = None) -> InputOptions:
        return InputOptions(series=series, skull=self.skull, brain_mask=self.brain_mask)


def ask_series(parent: QWidget, folder: Path, series: list[Series], ask: bool = True) -> str | None:
    """The series to read from a DICOM folder's listed series: None when one is the obvious choice, else the
    user's pick.

    Raises VolumeError when the folder is ambiguous and asking is not allowed, or when the user cancels (the
    message then says so).
    """
    try:
        pick_series(series, None)
        return None
    except VolumeError:
        if not ask or len(series) < 2:
            raise
    labels = [s.label() for s in series]
    label, ok = QInputDialog.getItem(parent, texts.DIALOG_SERIES, texts.DIALOG_SERIES_LABEL.format(folder=folder.name),
                                     labels, 0, False)
    if not ok:
        raise VolumeError(f"{folder}: no series chosen")
    chosen = series[labels.index(label)]
    return str(chosen.number) if chosen.number is not None else chosen.uid


def input_summary(session: Session) -> tuple[str, list[str]]:
    """(one line on how the brain was found, warnings the user must see) for the session's scan and model."""
    scan = session.scan
    if scan is None:
        return "", []
    if scan.extraction == "deepbet":
        line = texts.BRAIN_EXTRACTED.format(reason=scan.verdict.reason)
    elif scan.brain is not None:
        line = texts.BRAIN_FROM_MASK.format(name=Path(scan.extraction.split(" ", 2)[-1]).name)
    else:
        line = texts.BRAIN_AS_IS.format(reason=scan.verdict.reason)
    if scan.series is not None:
        line = texts.DICOM_SERIES.format(label=scan.series.label()) + line
    alignment = session.model_volume.alignment if session.model_volume is not None else None
    if alignment is not None:
        line += texts.ALIGNED.format(overlap=alignment.overlap, seconds=alignment.seconds)
    warnings = [w for w in (scan.warning,) if w]
    if session.model is not None:
        check = check_modality(scan.modality, scan.modality_source, session.model.modality)
        if check.warning:
            warnings.append(check.warning)
    return line, warnings
