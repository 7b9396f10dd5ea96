"""The reading room: three linked planes, the lesion list, a reference segmentation with live overlap, the report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QLabel

from ..core.lesions import Lesion
from ..core.metrics import Overlap, overlap
from ..core.volume import ModelVolume, Volume, file_stem, load_mask
from . import texts
from .coords import canonical_to_model
from .input_options import input_summary
from .lesion_table import LesionTable
from .planes import OrthoViews
from .results import VolumeMaps

if TYPE_CHECKING:
    from .main_window import MainWindow

REFRESH_MS = 150   # whole-volume maps, lesions and overlap follow a slider drag this long after it stops


@dataclass(frozen=True, eq=False)
class Reference:
    """A segmentation on the input's grid, shown beside the mask and compared with it (equal only to itself: it holds
    arrays)."""
    path: Path
    canonical: np.ndarray   # (X, Y, Z) bool, the input's canonical grid
    model: np.ndarray       # (Z, S, S) bool, nearest-neighbour in model space (what the views draw)


def load_reference(path: str | Path, volume: Volume, model_volume: ModelVolume) -> Reference:
    """Read a label file (> 0 inside) on the input's grid; VolumeError, naming both grids, for any other grid."""
    canonical = load_mask(path, like=volume)                       # (X, Y, Z) bool
    return Reference(Path(path), canonical, model_volume.mask_to_model(canonical))


def overlap_text(name: str, z: int, on_slice: Overlap, on_volume: Overlap | None) -> str:
    """One line: the reference's name, then Dice/precision/recall on the slice and, once computed, the volume."""
    def scores(o: Overlap) -> str:
        return texts.OVERLAP_SCORES.format(dice=o.dice, precision=o.precision, recall=o.recall)
    volume = scores(on_volume) if on_volume is not None else texts.OVERLAP_VOLUME_PENDING
    return texts.OVERLAP_LINE.format(name=name, slice=z, on_slice=scores(on_slice), on_volume=volume)


class ReadingRoom(QObject):
    """Drives the three-plane view, the lesion table and the reference overlay from the window's state and results;
    never calls the model (the window's whole-volume run fills the cache they read)."""

    reference_changed = Signal()

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window
        self.planes = OrthoViews()
        self.table = LesionTable()
        self.planes.set_corner(self.table)
        self.overlap_label = QLabel("")
        self.overlap_label.setWordWrap(True)
        self.overlap_label.setToolTip(texts.OVERLAP_TOOLTIP)
        self.overlap_label.hide()
        self.reference: Reference | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh_volume)

        state = window.state
        self.planes.cursor_moved.connect(lambda z, v, u: state.set(slice=z, cursor=(v, u)))
        self.planes.hovered.connect(lambda z, v, u: window.show_cursor(z, u + 0.5, v + 0.5))
        self.planes.left.connect(lambda: window.show_cursor(None))
        self.planes.level_drag.connect(window.on_level_drag)
        self.table.chosen.connect(self.jump_to)
        self.table.error.connect(lambda message: window.show_error(texts.ERROR_EXPORT.format(message=message)))
        self.table.exported.connect(window.statusBar().showMessage)
        self._volume_overlap: tuple = (None, None)   # (maps, reference) → Overlap, recounted when either changes

    # Volume and cursor
    def new_volume(self, display: np.ndarray, model_volume: ModelVolume) -> None:
        """A new volume on show: its planes without results, no lesions, no reference, the crosshair at the centre."""
        self.reference = None
        self.planes.set_volume(display, model_volume.spacing[2] / model_volume.pixel_mm)
        self.table.set_lesions(None)
        path = self.window.session.volume.path
        if path is not None:
            self.table.export_path = str(path.parent / f"{file_stem(path)}_lesions.csv")
        self.overlap_label.hide()
        centre = model_volume.image_size // 2
        self.window.state.set(cursor=(centre, centre))
        self.reference_changed.emit()

    def follow(self) -> None:
        """The slice or the crosshair moved: the planes follow, the slice's overlap is recounted (no model call)."""
        state = self.window.state
        self.planes.set_cursor(state.slice, *state.cursor)
        self.show_overlap()

    def jump_to(self, lesion: Lesion) -> None:
        """Every view to a region: its most affected axial slice, the crosshair at its centre."""
        mv = self.window.session.model_volume
        x, y, _ = lesion.centre_canonical
        z, v, u = canonical_to_model(mv, x, y, lesion.peak_slice)
        if lesion.view_slices is not None:  # an aligned grid: the table's peak slice, as the slider counts
            z = lesion.view_slices[2]
        self.window.state.set(slice=z, cursor=(v, u))

    # Whole-volume results
    def schedule(self) -> None:
        """Settings or results changed: refresh the volume's overlay, lesions and overlap shortly (drags coalesce)."""
        self._timer.start()

    def maps(self) -> VolumeMaps | None:
        return self.window.volume_maps()

    def refresh_volume(self) -> None:
        self._timer.stop()
        maps = self.maps()
        self.planes.set_overlay(None if maps is None else maps.heat, None if maps is None else maps.mask)
        if self.window.state.layout == "planes":
            self.table.set_lesions(None if maps is None else maps.lesions)
        self.show_overlap()

    # Reference
    def load_reference(self, path: str | Path) -> None:
        """Show a segmentation beside the mask; VolumeError (shown by the caller) when it is not on the input's grid."""
        s = self.window.session
        self.reference = load_reference(path, s.volume, s.model_volume)
        self.planes.set_reference(self.reference.model)
        self.reference_changed.emit()
        self.show_overlap()

    def clear_reference(self) -> None:
        self.reference = None
        self.planes.set_reference(None)
        self.overlap_label.hide()
        self.reference_changed.emit()

    def reference_slice(self, z: int) -> np.ndarray | None:
        return None if self.reference is None else self.reference.model[z]

    def show_overlap(self) -> None:
        """Dice, precision and recall of the mask against the reference: the shown slice on the model's grid (what
        is drawn), the whole volume on the input's voxels once every brain slice is computed (as sss-eval counts)."""
        ref, w = self.reference, self.window
        if ref is None:
            return
        z = w.state.slice
        mask = w.panels.shown_mask()
        if mask is None:
            self.overlap_label.setText(texts.OVERLAP_COMPUTING.format(name=ref.path.name, slice=z))
        else:
            maps = self.maps()
            if maps is not None and self._volume_overlap[0] != (maps, ref):
                self._volume_overlap = ((maps, ref), overlap(maps.canonical_mask, ref.canonical))
            on_volume = None if maps is None else self._volume_overlap[1]
            self.overlap_label.setText(overlap_text(ref.path.name, z, overlap(mask, ref.model[z]), on_volume))
        self.overlap_label.show()

    # Report
    def report_content(self, maps: VolumeMaps):
        """What the PDF says: the input, the model, the settings of the mask on show, its lesions (the table's size
        filter applied), and the images on the input's canonical grid."""
        from .report import ReportContent
        w, s, st = self.window, self.window.session, self.window.state
        volume, model = s.volume, s.model
        line, warnings = input_summary(s)
        input_lines = [(texts.REPORT_FILE, str(volume.path) if volume.path else texts.UNNAMED_VOLUME),
                       (texts.REPORT_GRID, texts.REPORT_GRID_TEXT.format(
                           shape=" × ".join(map(str, volume.native_shape)), axcodes="".join(volume.axcodes),
                           spacing=" × ".join(f"{mm:.2f}" for mm in volume.spacing)))]
        input_lines += [(texts.REPORT_BRAIN, line)] if line else []
        input_lines += [(texts.REPORT_WARNING, text) for text in warnings]
        model_lines = [(texts.REPORT_CHECKPOINT, model.name),
                       (texts.REPORT_MODEL, texts.REPORT_MODEL_TEXT.format(
                           preset=model.preset, size=model.image_size, step=model.step,
                           modality=(model.modality or texts.REPORT_NOT_RECORDED).upper()))]
        ts = w.timesteps()
        options = w.map_options()
        calibrated = st.threshold == model.recommended.threshold
        same_options = options == model.recommended.map_options     # the calibration holds only with its own options
        settings_lines = [
            (texts.REPORT_TIMESTEP, ", ".join(map(str, ts)) + (texts.REPORT_VOTES.format(votes=st.votes, n=len(ts))
                                                               if len(ts) > 1 else "")),
            (texts.REPORT_THRESHOLD, texts.REPORT_THRESHOLD_TEXT.format(
                value=st.threshold, source=texts.REPORT_FROM_USER if not calibrated
                else texts.REPORT_FROM_CHECKPOINT if same_options else texts.REPORT_FROM_CHECKPOINT_OTHER)),
            (texts.REPORT_DRAWS, texts.REPORT_DRAWS_TEXT.format(draws=model.draws, seed=st.seed)),
            (texts.REPORT_POSTPROCESS, texts.REPORT_POSTPROCESS_ON if st.postprocess else texts.REPORT_OFF),
            (texts.REPORT_HYGIENE, options.without_persist().label.removeprefix(", ") or texts.REPORT_HYGIENE_OFF),
            (texts.REPORT_PERSIST, texts.REPORT_PERSIST_TEXT.format(n=st.persist) if st.persist else texts.REPORT_OFF),
            (texts.REPORT_MIN_SIZE, texts.REPORT_MIN_SIZE_TEXT.format(ml=self.table.min_size())),
            (texts.REPORT_DEVICE, f"{model.device}, {model.precision}"),
        ]
        low, high = st.window
        return ReportContent(title=volume.path.name if volume.path else texts.UNNAMED_VOLUME, input_lines=input_lines,
                             model_lines=model_lines, settings_lines=settings_lines,
                             volume=volume if s.scan is None else s.scan.original,
                             heat=maps.canonical_heat, mask=maps.canonical_mask,
                             lesions=self.table.lesions_shown(),
                             window=(low, high), created=datetime.now())

    def write_report(self, path: str | Path) -> Path | None:
        """Write the PDF for the current settings (the whole volume must be computed); errors go to the window."""
        from .report import write_report
        maps = self.maps()
        if maps is None:
            self.window.show_error(texts.ERROR_REPORT.format(message=texts.ERROR_REPORT_INCOMPLETE))
            return None
        self.table.set_lesions(maps.lesions)         # the report lists the table's rows (its size filter)
        try:
            pages = write_report(path, self.report_content(maps))
        except (OSError, ValueError) as err:
            self.window.show_error(texts.ERROR_REPORT.format(message=err))
            return None
        self.window.statusBar().showMessage(texts.STATUS_REPORT.format(path=path, pages=pages))
        return Path(path)

