"""The window's exports: the mask and heat map as NIfTI on the input's grid, the panels as PNG, the PDF report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QFileDialog, QMessageBox

from ..core.volume import VolumeError, file_stem, write_nifti
from . import texts


def _ranges(indices: list[int]) -> str:
    """[3, 4, 5, 9] → '3–5, 9'."""
    parts, start = [], None
    for i, z in enumerate(indices):
        if start is None:
            start = z
        if i + 1 == len(indices) or indices[i + 1] != z + 1:
            parts.append(str(start) if start == z else f"{start}–{z}")
            start = None
    return ", ".join(parts)


class ExportsMixin:
    """MainWindow's export actions (it provides session, state, settings, the run, the reading room, show_error)."""

    def _computed_slices(self) -> list[int]:
        scores = self._scores_for(self.timesteps(), self.state.seed)
        return [int(z) for z in np.flatnonzero(np.isfinite(scores))]

    def missing_slices(self) -> list[int]:
        """Brain slices with no result yet for the current settings."""
        if self.session is None or self.session.model_volume is None:
            return []
        first, last = self.session.model_volume.slice_range
        done = set(self._computed_slices())
        return [z for z in range(first, last + 1) if z not in done]

    def export_nifti(self, folder: str | Path, compute_missing: bool) -> list[Path] | None:
        """Write <stem>_mask.nii.gz and <stem>_error.nii.gz on the input's grid.

        compute_missing: run the missing brain slices first (written when the run ends, returns None),
        or write now with only the computed slices (the others are 0).
        """
        if self.session is None or self.session.volume is None:
            self.show_error(texts.ERROR_EXPORT.format(message=texts.ERROR_NO_VOLUME))
            return None
        if compute_missing and self.missing_slices():
            if self._run is None and not self.run_whole_volume():
                return self._write_exports(Path(folder))
            self._after_run = lambda: self._write_exports(Path(folder))
            self.statusBar().showMessage(texts.EXPORT_RUNNING.format(n=len(self.missing_slices())))
            return None
        return self._write_exports(Path(folder))

    def _write_exports(self, folder: Path) -> list[Path] | None:
        s = self.session
        mv, volume = s.model_volume, s.volume
        computed = self._computed_slices()
        if not computed:
            self.show_error(texts.ERROR_EXPORT.format(message=texts.ERROR_NOTHING_TO_EXPORT))
            return None
        S = mv.image_size
        heat = np.zeros((mv.n_slices, S, S), np.float32)  # (Z, S, S)
        mask = np.zeros((mv.n_slices, S, S), bool)        # (Z, S, S)
        for z in computed:
            view = self._view(z)
            heat[z] = view.heat
            mask[z] = view.mask(self.state.threshold, self.state.postprocess, self.state.votes)
        persistent = self.volume_mask()
        if persistent is not None:
            mask = persistent
        stem = file_stem(volume.path) if volume.path else texts.UNNAMED_VOLUME
        try:
            mask_path = write_nifti(mv.to_canonical(mask, "nearest"), volume, folder / f"{stem}_mask.nii.gz", "mask")
            error_path = write_nifti(mv.to_canonical(heat, "linear"), volume, folder / f"{stem}_error.nii.gz",
                                     "error")
        except VolumeError as err:
            self.show_error(texts.ERROR_EXPORT.format(message=err))
            return None
        first, last = mv.slice_range
        n_brain = last - first + 1
        if not self.missing_slices() and len(computed) == n_brain:
            what = texts.EXPORT_ALL.format(n=n_brain)
        else:
            what = texts.EXPORT_PARTIAL.format(n=len(computed), ranges=_ranges(computed))
        self.statusBar().showMessage(texts.STATUS_EXPORTED.format(mask=mask_path.name, error=error_path.name,
                                                                  what=what))
        self.exported.emit([mask_path, error_path])
        return [mask_path, error_path]

    def _export_nifti_dialog(self) -> None:
        if self.session is None or self.session.volume is None:
            self.show_error(texts.ERROR_EXPORT.format(message=texts.ERROR_NO_VOLUME))
            return
        folder = QFileDialog.getExistingDirectory(self, texts.DIALOG_EXPORT_FOLDER, self.settings["last_directory"])
        if not folder:
            return
        missing = self.missing_slices()
        compute = False
        if missing:
            first, last = self.session.model_volume.slice_range
            box = QMessageBox(QMessageBox.Icon.Question, texts.EXPORT_MISSING_TITLE,
                              texts.EXPORT_MISSING_TEXT.format(missing=len(missing), total=last - first + 1,
                                                               computed=len(self._computed_slices())), parent=self)
            run = box.addButton(texts.EXPORT_RUN_MISSING, QMessageBox.ButtonRole.AcceptRole)
            existing = box.addButton(texts.EXPORT_EXISTING, QMessageBox.ButtonRole.AcceptRole)
            box.addButton(QMessageBox.StandardButton.Cancel)
            box.exec()
            if box.clickedButton() not in (run, existing):
                return
            compute = box.clickedButton() is run
        self.export_nifti(folder, compute)

    def save_panels_png(self, path: str | Path) -> bool:
        ok = self.panels.grab().save(str(path))
        if ok:
            self.statusBar().showMessage(texts.STATUS_PNG.format(path=path))
        else:
            self.show_error(texts.ERROR_EXPORT.format(message=texts.ERROR_PNG.format(path=path)))
        return ok

    def _export_png_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, texts.DIALOG_SAVE_PNG, self.settings["last_directory"],
                                              texts.FILTER_PNG)
        if path:
            self.save_panels_png(path if path.lower().endswith(".png") else path + ".png")

    def export_report(self, path: str | Path, compute_missing: bool = True) -> Path | None:
        """Write the PDF report of the whole volume at the current settings; missing brain slices are computed first
        when compute_missing (the report is written when that run ends: returns None), else it is an error."""
        s = self.session
        if s is None or s.volume is None or s.model is None:
            self.show_error(texts.ERROR_REPORT.format(message=texts.ERROR_NO_MODEL if s and s.volume
                                                      else texts.ERROR_NO_VOLUME))
            return None
        missing = self.missing_slices()
        if not missing:
            return self.reading.write_report(path)
        if not compute_missing:
            self.show_error(texts.ERROR_REPORT.format(message=texts.ERROR_REPORT_INCOMPLETE))
            return None
        if self._run is None:
            self.run_whole_volume()
        self._after_run = lambda: self.reading.write_report(path)
        self.statusBar().showMessage(texts.REPORT_RUNNING.format(n=len(missing)))
        return None

    def _export_report_dialog(self) -> None:
        if self.session is None or self.session.volume is None:
            self.show_error(texts.ERROR_REPORT.format(message=texts.ERROR_NO_VOLUME))
            return
        volume = self.session.volume
        stem = file_stem(volume.path) if volume.path else texts.UNNAMED_VOLUME
        suggested = str(Path(self.settings["last_directory"] or ".") / f"{stem}_report.pdf")
        path, _ = QFileDialog.getSaveFileName(self, texts.DIALOG_SAVE_REPORT, suggested, texts.FILTER_PDF)
        if not path:
            return
        path = path if path.lower().endswith(".pdf") else path + ".pdf"
        missing = self.missing_slices()
        if missing:
            first, last = self.session.model_volume.slice_range
            answer = QMessageBox.question(self, texts.REPORT_MISSING_TITLE,
                                          texts.REPORT_MISSING_TEXT.format(missing=len(missing),
                                                                           total=last - first + 1))
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.export_report(path)
