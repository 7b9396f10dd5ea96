"""The main window: wires state, panels, planes, controls and the inference worker; menus, status line, screenshot."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QByteArray, QRect, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QMainWindow, QMessageBox, QSpinBox, QStackedWidget,
                               QVBoxLayout, QWidget)

from .. import __version__
from ..core.anomaly import CONSENSUS_TIMESTEPS
from ..core.hygiene import MapOptions
from ..core.resources import default_checkpoint
from ..core.volume import NIFTI_SUFFIXES, VolumeError
from . import texts
from .controls import ControlPanel
from .coords import voxel_at
from .exports import ExportsMixin
from .input_options import BrainMenu, ask_series, input_summary
from .panels import ImagePanels, MarkedSlider, ScorePlot
from .reading import ReadingRoom
from .results import SliceView, VolumeMaps, volume_maps
from .settings import VALID, Settings
from .state import ViewState
from .worker import Session, SliceRequest, VolumeRun, WorkerThread, cuda_available

AUTO_WINDOW_PERCENTILES = (0.5, 99.5)   # of the brain's model-space intensities, for the grey window
SCREENSHOT_SIZE = (1500, 980)
PAGE_STEP = 10                          # slices per PageUp / PageDown
HYGIENE = ("lowpass", "median", "erode", "normative", "min_area")   # state fields of the slice's map options
RESTORED = ("timestep", "threshold", "postprocess", "consensus", "votes", "seed", "draws", "persist") + HYGIENE + (
    "device", "mask_style", "mask_opacity", "layout")


class MainWindow(ExportsMixin, QMainWindow):
    """Four linked panels, slice browser and score plot, controls; all model work goes through the worker."""

    result_shown = Signal(int)           # the panels now show this slice's result
    error_shown = Signal(str)            # an error reached the user
    run_done = Signal(bool)              # a whole-volume run ended: completed (False: cancelled or failed)
    exported = Signal(list)              # NIfTI paths written
    screenshot_done = Signal(bool, str)  # --screenshot finished: ok, one-line error

    def __init__(self, settings: Settings, screenshot: Path | None = None):
        super().__init__()
        self.settings = settings
        self._screenshot = screenshot         # pending --screenshot path; None once written or failed
        self._read_only = screenshot is not None  # --screenshot runs neither read nor write the user's settings
        self.devices = ["auto", "cpu"] + (["cuda"] if cuda_available() else [])
        restored = {} if self._read_only else {k: settings[k] for k in RESTORED}
        if restored.get("device") not in self.devices:
            restored.pop("device", None)
        self.state = ViewState(**restored)
        self.session: Session | None = None
        self._request_id = 0
        self._shown: SliceView | None = None
        self._failed = False                 # the newest request failed (its error was shown)
        self._scores: dict[tuple, np.ndarray] = {}
        self._run: VolumeRun | None = None
        self._run_id = 0
        self._after_run: Callable[[], object] | None = None   # an export waiting for the whole-volume run
        self._superseded = False  # the running volume's λ or seed changed under it: start the current one after it
        self._initial_slice: int | None = None
        self._user_checkpoint: Path | None = None   # a checkpoint the user chose: the default once it loads
        self._auto_checkpoint = False               # the checkpoint follows the volume (resources.default_checkpoint)
        self._checkpoint_path: Path | None = None   # the checkpoint loaded or being loaded
        self.pinned_settings: set[str] = set()      # state fields the command line set: no checkpoint overrides them
        self._settings_from: Path | None = None     # the checkpoint whose recommended settings were applied
        self._checkpoint_note: str | None = None    # why no checkpoint was loaded at start
        self._error_box: QMessageBox | None = None
        self._volume_maps: tuple = (None, None)     # (settings key, VolumeMaps of the whole volume)
        self._pending_reference: Path | None = None  # --reference: loaded once its volume is open

        self.threads = WorkerThread()
        self.worker = self.threads.worker  # its signals reach the slots below queued, on this (GUI) thread
        self.worker.session_changed.connect(self._on_session)
        self.worker.series_listed.connect(self._on_series_listed)
        self.worker.slice_ready.connect(self._on_slice_ready)
        self.worker.run_progress.connect(self._on_run_progress)
        self.worker.run_finished.connect(self._on_run_finished)
        self.worker.failed.connect(self._on_failed)

        self._build()
        self.state.changed.connect(self._on_state)
        self.setAcceptDrops(True)
        self.setWindowTitle(texts.WINDOW_TITLE)
        if screenshot:
            self.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen)
            self.resize(*SCREENSHOT_SIZE)
        elif not (settings["geometry"] and self.restoreGeometry(QByteArray(base64.b64decode(settings["geometry"])))):
            self.resize(1400, 920)
        self.threads.start()

    # Building
    def _build(self) -> None:
        self.panels = ImagePanels()
        self.panels.wheel_steps.connect(lambda n: self.step_slice(n))
        self.panels.level_drag.connect(self.on_level_drag)
        self.panels.hovered.connect(lambda u, v: self.show_cursor(self.state.slice, u, v))
        self.panels.left.connect(lambda: self.show_cursor(None))
        self.reading = ReadingRoom(self)
        self.views = QStackedWidget()                # the layouts: four axial panels, three planes
        self.views.addWidget(self.panels)
        self.views.addWidget(self.reading.planes)
        self.score_plot = ScorePlot()
        self.score_plot.slice_clicked.connect(lambda z: self.state.set(slice=z))
        self.slice_slider = MarkedSlider()
        self.slice_slider.setToolTip(texts.SLICE_TOOLTIP)
        self.slice_slider.setPageStep(PAGE_STEP)
        self.slice_slider.valueChanged.connect(lambda z: self.state.set(slice=int(z)))
        self.slice_spin = QSpinBox()
        self.slice_spin.setToolTip(texts.SLICE_TOOLTIP)
        self.slice_spin.valueChanged.connect(lambda z: self.state.set(slice=int(z)))
        self.slice_of = QLabel("")
        self.range_label = QLabel("")
        planes = [v.canvas for v in self.reading.planes.views.values()]
        for view in [p.canvas for p in self.panels.panels] + planes + [self.score_plot]:
            view.setAcceptDrops(False)   # drops go to the window, which opens them

        slice_row = QHBoxLayout()
        slice_row.addWidget(QLabel(texts.SLICE_LABEL))
        slice_row.addWidget(self.slice_slider, 1)
        slice_row.addWidget(self.slice_spin)
        slice_row.addWidget(self.slice_of)
        slice_row.addWidget(self.range_label)
        viewer = QWidget()
        column = QVBoxLayout(viewer)
        column.setContentsMargins(0, 0, 0, 0)
        self.notice = QLabel("")                     # warnings about the input the user must see (modality, skull)
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("background: #fff3c4; color: #5c4400; padding: 4px 8px; border-radius: 3px")
        self.notice.hide()
        self.input_label = QLabel("")                # how the brain was found
        self.input_label.setWordWrap(True)
        self.input_label.setStyleSheet("color: #555")
        column.addWidget(self.notice)
        column.addWidget(self.views, 1)
        column.addWidget(self.input_label)
        column.addWidget(self.reading.overlap_label)
        column.addWidget(self.score_plot)
        column.addLayout(slice_row)

        self.message = QLabel(texts.EMPTY_NO_VOLUME)
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        self.message.setMargin(40)
        self.message.setStyleSheet("font-size: 15px")
        self.pages = QStackedWidget()
        self.pages.addWidget(self.message)
        self.pages.addWidget(viewer)

        self.controls = ControlPanel(self.state, self.devices)
        self.controls.open_checkpoint.connect(self._open_checkpoint_dialog)
        self.controls.run_volume.connect(self.run_whole_volume)
        self.controls.cancel_run.connect(self.cancel_run)
        self.controls.auto_window.connect(self.auto_window)
        self.controls.export_nifti.connect(self._export_nifti_dialog)
        self.controls.export_png.connect(self._export_png_dialog)
        self.controls.export_report.connect(self._export_report_dialog)

        central = QWidget()
        row = QHBoxLayout(central)
        row.addWidget(self.pages, 1)
        row.addWidget(self.controls)
        self.setCentralWidget(central)
        self.cursor_label = QLabel("")
        self.statusBar().addPermanentWidget(self.cursor_label)
        self._build_menus()
        self._sync_mask_style()
        self._show_layout()
        self._update_titles()
        self.controls.show_available(False, False)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu(texts.MENU_FILE)
        self._add_action(file_menu, texts.ACTION_OPEN, self._open_volume_dialog, QKeySequence.StandardKey.Open)
        self._add_action(file_menu, texts.ACTION_OPEN_DICOM, self._open_dicom_dialog, "Ctrl+Shift+O")
        self.brain_menu = BrainMenu(file_menu.addMenu(texts.MENU_BRAIN), self)
        self.brain_menu.changed.connect(self._reopen)
        self.recent_menu = file_menu.addMenu(texts.MENU_RECENT)
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self._fill_recent_menu()
        self._add_action(file_menu, texts.ACTION_OPEN_CHECKPOINT, self._open_checkpoint_dialog)
        file_menu.addSeparator()
        self._add_action(file_menu, texts.ACTION_LOAD_REFERENCE, self._load_reference_dialog, "Ctrl+Shift+R")
        self.clear_reference_action = self._add_action(file_menu, texts.ACTION_CLEAR_REFERENCE,
                                                       self.reading.clear_reference)
        self.clear_reference_action.setEnabled(False)
        self.reading.reference_changed.connect(self._on_reference_changed)
        file_menu.addSeparator()
        self._add_action(file_menu, texts.ACTION_EXPORT_NIFTI, self._export_nifti_dialog, "Ctrl+E")
        self._add_action(file_menu, texts.ACTION_EXPORT_REPORT, self._export_report_dialog, "Ctrl+R")
        self._add_action(file_menu, texts.ACTION_EXPORT_PNG, self._export_png_dialog, "Ctrl+Shift+S")
        file_menu.addSeparator()
        self._add_action(file_menu, texts.ACTION_QUIT, self.close, QKeySequence.StandardKey.Quit)
        view_menu = self.menuBar().addMenu(texts.MENU_VIEW)
        layouts = QActionGroup(self)
        self.layout_actions = {}
        for name, text, shortcut in (("panels", texts.ACTION_LAYOUT_PANELS, "Ctrl+1"),
                                     ("planes", texts.ACTION_LAYOUT_PLANES, "Ctrl+2")):
            action = self._add_action(view_menu, text, lambda checked=False, n=name: self.state.set(layout=n),
                                      shortcut)
            action.setCheckable(True)
            layouts.addAction(action)
            self.layout_actions[name] = action
        view_menu.addSeparator()
        self._add_action(view_menu, texts.ACTION_RESET_VIEW, self._reset_view, "Ctrl+0")
        help_menu = self.menuBar().addMenu(texts.MENU_HELP)
        self._add_action(help_menu, texts.ACTION_MOUSE_HELP,
                         lambda: QMessageBox.information(self, texts.ACTION_MOUSE_HELP.replace("&", ""),
                                                         texts.HELP_MOUSE))
        self._add_action(help_menu, texts.ACTION_ABOUT,
                         lambda: QMessageBox.about(self, texts.APP_NAME, texts.HELP_ABOUT.format(version=__version__)))

    def _add_action(self, menu, text, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings["recent_files"]
        if not recent:
            self.recent_menu.addAction(texts.RECENT_EMPTY).setEnabled(False)
            return
        for i, path in enumerate(recent):
            action = self.recent_menu.addAction(texts.RECENT_ITEM.format(n=i + 1, name=Path(path).name))
            action.setToolTip(path)
            action.setData(path)
            action.triggered.connect(lambda checked=False, p=path: self.open_recent(p))
        self.recent_menu.addSeparator()
        self.recent_menu.addAction(texts.RECENT_CLEAR).triggered.connect(self._clear_recent)

    def _clear_recent(self) -> None:
        self.settings["recent_files"] = []
        self._save_settings()

    # Opening
    def start(self, volume: Path | None, checkpoint: Path | None, device: str | None = None,
              slice_index: int | None = None, volume_note: str | None = None,
              checkpoint_note: str | None = None, auto_checkpoint: bool = False, series: str | None = None,
              reference: Path | None = None) -> None:
        """Begin with these files (either may be None, with a note saying why): checkpoint first, then the volume,
        then a reference segmentation on its grid. With auto_checkpoint, volumes opened later bring their own
        default checkpoint (demo or general)."""
        self._pending_reference = reference
        if device is not None:
            self.state.set(device=device)
        self._initial_slice = slice_index
        self._auto_checkpoint = auto_checkpoint
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
        else:
            self._checkpoint_note = texts.STATUS_NO_CHECKPOINT.format(reason=checkpoint_note)
            self.statusBar().showMessage(self._checkpoint_note)
            if self._screenshot:
                self._finish_screenshot(False, checkpoint_note or texts.ERROR_NO_MODEL)
        if volume is not None:
            self.open_volume(volume, series)
        else:
            self.message.setText(volume_note or texts.EMPTY_NO_VOLUME)
            if volume_note:
                self.statusBar().showMessage(volume_note.split("\n")[0])
            if self._screenshot:
                self._finish_screenshot(False, volume_note or texts.ERROR_NO_VOLUME)

    def open_volume(self, path: str | Path, series: str | None = None) -> None:
        """Open a NIfTI file or a DICOM folder (asking for the series when several fit), read as the brain menu says."""
        path = Path(path)
        if path.is_dir() and series is None:
            self.statusBar().showMessage(texts.STATUS_LISTING.format(name=path.name))
            self.worker.list_series(path)                   # answered by _on_series_listed
            return
        self._open_read(path, series)

    @Slot(object, object)
    def _on_series_listed(self, folder: Path, series: list) -> None:
        """A DICOM folder's series, listed on the worker: open the obvious one, or the one the user picks."""
        try:
            chosen = ask_series(self, folder, series, ask=not self._read_only)
        except VolumeError as err:
            self._pending_reference = None
            self.show_error(texts.ERROR_VOLUME.format(message=err), str(err))
            return
        self._open_read(folder, chosen)

    def _open_read(self, path: Path, series: str | None) -> None:
        """Read a NIfTI file or a DICOM folder's series (None: the obvious one) on the worker."""
        self.statusBar().showMessage(texts.STATUS_OPENING.format(name=path.name))
        if self._auto_checkpoint:
            try:
                wanted = default_checkpoint(path)
            except FileNotFoundError:
                wanted = None
            if wanted is not None and wanted != self._checkpoint_path:
                self._load_checkpoint(wanted)                # queued first: the volume opens with it
        self.worker.open_volume(path, self.brain_menu.options(series))

    def _reopen(self) -> None:
        """The brain-extraction choice changed: read the volume on show again (same file, same series) with it."""
        scan = self.session.scan if self.session else None
        if scan is not None and scan.original.path is not None:
            series = scan.series
            self.open_volume(scan.original.path, None if series is None
                             else str(series.number if series.number is not None else series.uid))

    def open_checkpoint(self, path: str | Path) -> None:
        self._user_checkpoint = Path(path)
        self._auto_checkpoint = False
        self._load_checkpoint(Path(path))

    def _load_checkpoint(self, path: Path) -> None:
        self._checkpoint_path = path
        self.controls.show_model(self.session.model if self.session else None, self.state.device, loading=path.name)
        self.worker.load_checkpoint(path, self.state.device)

    def open_recent(self, path: str) -> None:
        if not Path(path).exists():
            self.settings.remove_recent(path)
            self._save_settings()
            self.show_error(texts.ERROR_RECENT_MISSING.format(path=path))
            return
        self.open_volume(path)

    def _open_volume_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, texts.DIALOG_OPEN_VOLUME, self.settings["last_directory"],
                                              texts.FILTER_NIFTI)
        if path:
            self.open_volume(path)

    def _open_dicom_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, texts.DIALOG_OPEN_DICOM, self.settings["last_directory"])
        if path:
            self.open_volume(path)

    def _open_checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, texts.DIALOG_OPEN_CHECKPOINT, self.settings["last_directory"],
                                              texts.FILTER_CHECKPOINT)
        if path:
            self.open_checkpoint(path)

    @staticmethod
    def _dropped(event) -> list[Path]:
        return [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]

    def dragEnterEvent(self, event) -> None:
        if any(p.is_dir() or p.name.lower().endswith(NIFTI_SUFFIXES + (".pt",)) for p in self._dropped(event)):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for path in self._dropped(event):
            if path.is_dir() or path.name.lower().endswith(NIFTI_SUFFIXES):
                self.open_volume(path)
            elif path.suffix.lower() == ".pt":
                self.open_checkpoint(path)
            else:
                self.show_error(texts.ERROR_DROP)
                continue
            event.acceptProposedAction()
            return

    # Worker → window
    @Slot(object)
    def _on_session(self, session: Session) -> None:
        old, self.session = self.session, session
        new_volume = session.volume is not None and (old is None or session.volume is not old.volume)
        new_geometry = session.model_volume is not None and (old is None
                                                             or session.model_volume is not old.model_volume)
        if old is None or session.key != old.key:
            self._scores.clear()
            self._shown = None
            if self._run is not None:
                self._on_run_finished(self._run.id, False, 0, 0.0)
        self.controls.show_model(session.model, session.device)
        self.controls.show_available(session.model_volume is not None, session.model is not None)
        if session.device != self.state.device:
            self.state.set(device=session.device)
        if session.model is not None and (old is None or session.model is not old.model):
            self._model_loaded(session)
        if old is None or session.scan is not old.scan or session.model is not old.model:
            self._show_input_notes(session)
        if new_geometry:
            mv = session.model_volume
            first, last = mv.slice_range
            self.panels.set_size(mv.image_size)
            for widget in (self.slice_slider, self.slice_spin):
                widget.blockSignals(True)
                widget.setRange(0, mv.n_slices - 1)
                widget.blockSignals(False)
            self.slice_slider.set_band(first, last)
            self.slice_of.setText(texts.SLICE_OF.format(last=mv.n_slices - 1))
            self.range_label.setText(texts.SLICE_RANGE.format(first=first, last=last))
            self.score_plot.set_volume(mv.n_slices, first, last)
            self.reading.new_volume(mv.data if session.display is None else session.display, mv)
            self._set_levels()
            self.pages.setCurrentIndex(1)
        if new_volume:
            self._volume_opened(session)
        elif new_geometry or session.key != (old.key if old else None):
            self._refresh_view()
            self._refresh_scores()
        self.reading.schedule()
        self._complete_for_regions()

    def _model_loaded(self, session: Session) -> None:
        model, rec = session.model, session.model.recommended
        if model.path != self._settings_from:              # a new checkpoint, not a new device: its own settings
            options = rec.map_options                      # what its threshold was calibrated with
            own = {"timestep": rec.timestep, "threshold": rec.threshold, "draws": rec.draws,
                   **{k: getattr(options, k) for k in HYGIENE + ("persist",)}}
            self.state.set(**{k: v for k, v in own.items() if k not in self.pinned_settings})
            self._settings_from = model.path
        self._checkpoint_path = model.path
        text = texts.STATUS_CHECKPOINT
        if self._user_checkpoint is not None and model.path == self._user_checkpoint:
            self.settings["default_checkpoint"] = str(model.path.resolve())
            self.settings["last_directory"] = str(model.path.resolve().parent)
            self._save_settings()
            self._user_checkpoint = None
            text = texts.STATUS_CHECKPOINT_DEFAULT
        self.statusBar().showMessage(text.format(name=model.name, preset=model.preset, device=model.device))

    def _show_input_notes(self, session: Session) -> None:
        line, warnings = input_summary(session)
        self.input_label.setText(line)
        self.notice.setText("\n".join(texts.WARNING_PREFIX + w for w in warnings))
        self.notice.setVisible(bool(warnings))

    def _volume_opened(self, session: Session) -> None:
        volume, mv = session.volume, session.model_volume
        first, last = mv.slice_range
        if volume.path is not None:
            self.setWindowTitle(texts.WINDOW_TITLE_FILE.format(name=volume.path.name))
            if not self._read_only:
                self.settings.add_recent(volume.path)
                self._save_settings()
        shape = "×".join(map(str, volume.native_shape))
        spacing = "×".join(f"{s:.3g}" for s in volume.spacing)
        name = volume.path.name if volume.path else texts.UNNAMED_VOLUME
        notes = session.notes + ((self._checkpoint_note,) if session.model is None and self._checkpoint_note else ())
        self.statusBar().showMessage(texts.STATUS_JOIN.join((texts.STATUS_OPENED.format(
            name=name, shape=shape, spacing=spacing, first=first, last=last),) + notes))
        self.auto_window()
        z, self._initial_slice = self._initial_slice, None
        if z is not None and not 0 <= z < mv.n_slices:
            self.show_error(texts.ERROR_SLICE_RANGE.format(slice=z, last=mv.n_slices - 1))
            z = None
        self.go_to_slice((first + last) // 2 if z is None else z)
        self._refresh_scores()
        reference, self._pending_reference = self._pending_reference, None
        if reference is not None:
            self.load_reference(reference)

    @Slot(int, int, object)
    def _on_slice_ready(self, request_id: int, session_key: int, view: SliceView) -> None:
        if self.session is None or session_key != self.session.key or request_id != self._request_id:
            return  # an answer to an old request: never shown
        self._show(self._clean(view))

    @Slot(str, object, str)
    def _on_failed(self, kind: str, job, message: str) -> None:
        if kind in ("volume", "series"):
            text = texts.ERROR_VOLUME.format(message=message)
            self._pending_reference = None                  # it belonged to the volume that failed
            self._restore_auto_checkpoint()
        elif kind == "checkpoint":
            text = texts.ERROR_CHECKPOINT.format(message=message)
            self._user_checkpoint = None
            self._checkpoint_path = self.session.model.path if self.session and self.session.model else None
            self.controls.show_model(self.session.model if self.session else None, self.state.device)
        elif kind == "draws":
            text = texts.ERROR_DRAWS.format(message=message)
        elif kind == "device":
            text = texts.ERROR_DEVICE.format(message=message)
            if self.session is not None:
                self.state.set(device=self.session.device)
        elif kind == "slice":
            text = texts.ERROR_SLICE.format(slice=job.slice, message=message)
            if job.id == self._request_id:
                self._failed = True   # the panels say so instead of "computing…"
                self._update_titles()
        else:
            text = texts.ERROR_RUN.format(message=message)
        self.show_error(text, message)

    def _restore_auto_checkpoint(self) -> None:
        """A volume failed to open after its checkpoint was queued: go back to the one for the volume on show."""
        volume = self.session.volume if self.session else None
        if not self._auto_checkpoint or volume is None or volume.path is None:
            return
        try:
            wanted = default_checkpoint(volume.path)
        except FileNotFoundError:
            return
        if wanted != self._checkpoint_path:
            self._load_checkpoint(wanted)

    def show_warning(self, text: str) -> None:
        """A problem the user should see that needs no action (e.g. settings reset); never in --screenshot runs."""
        self.statusBar().showMessage(" ".join(text.split()))
        if not self._read_only:
            box = QMessageBox(QMessageBox.Icon.Warning, texts.ERROR_TITLE, text, parent=self)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.open()

    def show_error(self, text: str, line: str | None = None) -> None:
        """Tell the user without blocking: a dialog (a --screenshot run fails with one line instead)."""
        self.statusBar().showMessage(" ".join(text.split()))
        if self._read_only:
            self._finish_screenshot(False, line or " ".join(text.split()))
            return
        if self._error_box is None:
            self._error_box = QMessageBox(QMessageBox.Icon.Critical, texts.ERROR_TITLE, "", parent=self)
        self._error_box.setText(text)
        self._error_box.open()
        self.error_shown.emit(text)

    # State → view
    def _on_state(self, name: str) -> None:
        if name == "slice":
            z = self.state.slice
            for widget in (self.slice_slider, self.slice_spin):
                widget.blockSignals(True)
                widget.setValue(z)
                widget.blockSignals(False)
            self.score_plot.set_current(z)
            self._refresh_view()
            self.reading.follow()
        elif name == "cursor":
            self.reading.follow()
        elif name in ("timestep", "consensus", "seed"):
            self._refresh_view()
            self._refresh_scores()
            self.reading.schedule()
            self._supersede_run()
            self._complete_for_regions()
        elif name in ("threshold", "postprocess", "votes", "persist"):
            self._refresh_mask()
            self._update_titles()
            self.reading.schedule()
            if name == "persist":
                self._complete_for_regions()
        elif name in HYGIENE:
            self._options_changed()
        elif name == "layout":
            self._show_layout()
        elif name == "window":
            self._set_levels()
        elif name in ("mask_style", "mask_opacity"):
            self._sync_mask_style()
        elif name == "draws":
            self.worker.set_draws(self.state.draws)
        elif name == "device":
            self.worker.set_device(self.state.device)
        self._update_titles()

    def _sync_mask_style(self) -> None:
        self.panels.set_mask_style(self.state.mask_style, self.state.mask_opacity)
        self.reading.planes.set_mask_style(self.state.mask_style, self.state.mask_opacity)

    def _show_layout(self) -> None:
        """Four axial panels (the default for one slice) or three planes with the lesion list."""
        planes = self.state.layout == "planes"
        self.views.setCurrentWidget(self.reading.planes if planes else self.panels)
        self.layout_actions[self.state.layout].setChecked(True)
        self.reading.schedule()

    def _reset_view(self) -> None:
        self.panels.reset_view()
        self.reading.planes.reset_view()

    def timesteps(self) -> tuple[int, ...]:
        return tuple(CONSENSUS_TIMESTEPS) if self.state.consensus else (self.state.timestep,)

    def _update_titles(self) -> None:
        ts = self.timesteps()
        if len(ts) > 1:
            recon = texts.PANEL_RECON_CONSENSUS.format(t=ts[0], n=len(ts))
            heat = texts.PANEL_HEAT_CONSENSUS.format(ts=", ".join(map(str, ts)))
            consensus = texts.PANEL_MASK_CONSENSUS.format(votes=self.state.votes, n=len(ts))
        else:
            recon, heat, consensus = texts.PANEL_RECON.format(t=ts[0]), texts.PANEL_HEAT, ""
        mask = texts.PANEL_MASK.format(threshold=self.state.threshold, consensus=consensus,
                                       pp=texts.PANEL_MASK_PP if self.state.postprocess else "")
        brief = self._options_brief()
        if brief:
            mask += texts.PANEL_HYGIENE.format(options=brief)
        if self.state.persist:
            done = self.volume_mask() is not None
            persist = texts.PANEL_MASK_PERSIST if done else texts.PANEL_MASK_PERSIST_PENDING
            mask += persist.format(n=self.state.persist)
        suffix = ""
        if self.session is not None and self.session.model_volume is not None:
            if self.session.model is None:
                suffix = texts.PANEL_STATE.format(state=texts.PANEL_NO_MODEL)
            elif self._failed:
                suffix = texts.PANEL_STATE.format(state=texts.PANEL_FAILED.format(slice=self.state.slice))
            elif self._shown is None:
                suffix = texts.PANEL_STATE.format(state=texts.PANEL_COMPUTING.format(slice=self.state.slice))
        self.panels.recon.title.setText(recon + suffix)
        self.panels.heat.title.setText(heat + suffix)
        self.panels.mask.title.setText(mask + suffix)

    def go_to_slice(self, z: int) -> None:
        """Show slice z, computing it if needed (also when z is already the current slice)."""
        if z == self.state.slice:
            self._refresh_view()
            self._update_titles()
        else:
            self.state.set(slice=z)

    def step_slice(self, steps: int) -> None:
        if self.session is not None and self.session.model_volume is not None:
            self.state.set(slice=int(np.clip(self.state.slice + steps, 0, self.session.model_volume.n_slices - 1)))

    def keyPressEvent(self, event) -> None:
        mv = self.session.model_volume if self.session else None
        key = event.key()
        steps = {Qt.Key.Key_Up: 1, Qt.Key.Key_Right: 1, Qt.Key.Key_Down: -1, Qt.Key.Key_Left: -1,
                 Qt.Key.Key_PageUp: PAGE_STEP, Qt.Key.Key_PageDown: -PAGE_STEP}
        if mv is not None and key in steps:
            self.step_slice(steps[key])
        elif mv is not None and key in (Qt.Key.Key_Home, Qt.Key.Key_End):
            self.state.set(slice=mv.slice_range[0 if key == Qt.Key.Key_Home else 1])
        else:
            super().keyPressEvent(event)

    def _refresh_view(self) -> None:
        """Show the current slice: its original at once, its result from the cache or from a new request."""
        s = self.session
        if s is None or s.model_volume is None:
            return
        z = self.state.slice
        self.panels.set_original(s.model_volume.data[z] if s.display is None else s.display[z],
                                 None if s.outline is None else s.outline[z])
        self.panels.set_reference(self.reading.reference_slice(z))
        self.show_cursor(None)
        self._request_id += 1
        self._failed = False
        view = self._view(z) if s.model is not None else None
        if view is not None:
            self.worker.supersede(self._request_id)
            self._show(view)
            return
        self._shown = None
        self.panels.clear_result()
        self._update_titles()
        if s.model is not None:
            self.worker.request_slice(SliceRequest(id=self._request_id, session=s.key, slice=z,
                                                   timesteps=self.timesteps(), seed=self.state.seed))

    def _show(self, view: SliceView) -> None:
        self._shown = view
        self.panels.set_result(view.recon, view.heat)
        self._refresh_mask()
        self._scores_for(view.timesteps, view.seed)[view.slice] = view.score(
            self.session.model_volume.brain_mask[view.slice])
        self._refresh_scores()
        self._update_titles()
        self.result_shown.emit(view.slice)
        if self._screenshot:
            QTimer.singleShot(0, self._take_screenshot)

    def _refresh_mask(self) -> None:
        """Threshold/post-processing/votes changed: recompute the mask from the shown heat map, no model call (with
        3-D persistence on, from every brain slice's cached result once the whole volume is computed)."""
        if self._shown is None:
            return
        volume = self.volume_mask()
        self.panels.set_mask(volume[self._shown.slice] if volume is not None
                             else self._shown.mask(self.state.threshold, self.state.postprocess, self.state.votes))
        self.reading.show_overlap()

    def volume_maps(self) -> VolumeMaps | None:
        """The whole volume's maps at the current settings once every brain slice is computed, else None.
        Remembered for the current settings."""
        s, st = self.session, self.state
        if s is None or s.model_volume is None or s.model is None:
            return None
        options = self.map_options()
        key = (s.key, self.timesteps(), st.seed, st.threshold, st.postprocess, st.votes, st.persist, options)
        if self._volume_maps[0] != key:
            maps = volume_maps(s.cache, s.model_volume, s.volume, self.timesteps(), st.seed, st.threshold,
                               st.postprocess, st.votes, st.persist, options, self._norm(options))
            self._volume_maps = (key, maps) if maps is not None else (None, None)  # incomplete: look again next time
        return self._volume_maps[1]

    def volume_mask(self) -> np.ndarray | None:
        """(Z, S, S) whole-volume mask with 3-D persistence applied, when it is on and every brain slice is
        computed; else None (masks are per slice)."""
        maps = self.volume_maps() if self.state.persist else None
        return None if maps is None else maps.mask

    # Map hygiene (core.hygiene.MapOptions)
    def map_options(self) -> MapOptions:
        """The heat-map and mask cleaning the state asks for (persist included; slices use all but persist)."""
        st = self.state
        return MapOptions(lowpass=st.lowpass, median=st.median, erode=st.erode,
                          normative=st.normative and self.norm_problem() is None, min_area=st.min_area,
                          persist=st.persist)

    def norm_problem(self) -> str | None:
        """Why the healthy norm cannot be subtracted at the current settings (one line), or None when it can."""
        model = self.session.model if self.session is not None else None
        if model is None or model.normative is None:
            return texts.NORM_NONE
        st = self.state
        return model.normative.mismatch(self.timesteps(), st.draws, (st.lowpass, st.median, st.erode))

    def _norm(self, options: MapOptions) -> np.ndarray | None:
        """The healthy norm's (Z, S, S) slices for this volume when options subtract it, else None."""
        if not options.normative:
            return None
        return self.session.model.normative.model_slices(self.session.model_volume)

    def _view(self, z: int, timesteps: tuple[int, ...] | None = None, seed: int | None = None) -> SliceView | None:
        """Slice z's view from the cache (None while a timestep is missing), cleaned by the current map options:
        every heat map, mask and score the window shows or writes comes from here."""
        s = self.session
        mv = s.model_volume
        options = self.map_options().without_persist()
        norm = self._norm(options)
        return s.cache.view(z, self.timesteps() if timesteps is None else timesteps,
                            self.state.seed if seed is None else seed, options, mv.data[z], mv.brain_mask[z],
                            None if norm is None else norm[z])

    def _clean(self, view: SliceView) -> SliceView:
        """A raw view from the worker, cleaned by the current map options."""
        options = self.map_options().without_persist()
        if options == MapOptions():
            return view
        mv = self.session.model_volume
        norm = self._norm(options)
        return view.cleaned(options, mv.data[view.slice], mv.brain_mask[view.slice],
                            None if norm is None else norm[view.slice])

    def _options_brief(self) -> str:
        """The active slice options for a panel title, e.g. 'median 3×3, rim 3 px'; '' when all are off."""
        def part(name: str) -> str:
            if name == "normative":
                return texts.PANEL_NORM if self.norm_problem() is None else texts.PANEL_NORM_OFF
            return texts.PANEL_HYGIENE_PARTS[name].format(v=getattr(self.state, name))
        return ", ".join(part(k) for k in HYGIENE if getattr(self.state, k))

    def _options_changed(self) -> None:
        """A map option changed: the shown slice's heat map and mask, the scores, titles and the reading room are
        recomputed from the cached raw results; never a model call."""
        self._scores.clear()                                # scores are percentiles of the (cleaned) heat map
        shown = self._shown
        if shown is not None and self.session is not None and self.session.model_volume is not None:
            view = self._view(shown.slice, shown.timesteps, shown.seed)
            if view is not None:
                self._shown = view
                self.panels.set_result(view.recon, view.heat)
                self._refresh_mask()
        self._refresh_scores()
        self._update_titles()
        self.reading.schedule()

    @property
    def shown(self) -> SliceView | None:
        """The result the panels show now (None while computing)."""
        return self._shown

    # Scores
    def _scores_for(self, timesteps: tuple[int, ...], seed: int) -> np.ndarray:
        """Per-slice scores for these settings (NaN: not computed), filled from the cache on first use."""
        key = (timesteps, seed)
        if key not in self._scores:
            mv = self.session.model_volume
            scores = np.full(mv.n_slices, np.nan)
            for z in range(mv.n_slices):
                view = self._view(z, timesteps, seed)
                if view is not None:
                    scores[z] = view.score(mv.brain_mask[z])
            self._scores[key] = scores
        return self._scores[key]

    def _refresh_scores(self) -> None:
        if self.session is None or self.session.model_volume is None:
            return
        scores = self._scores_for(self.timesteps(), self.state.seed)
        self.score_plot.set_scores(scores)
        if self._run is None:
            first, last = self.session.model_volume.slice_range
            self.controls.show_progress(False, int(np.isfinite(scores[first:last + 1]).sum()), last - first + 1)

    # Window / level (state in raw intensity; panels in model units)
    def _model_levels(self) -> tuple[float, float]:
        low, high = self.session.model_volume.intensity_range if self.session and self.session.model_volume else (-1, 1)
        if high <= low:
            return self.state.window
        return tuple((v - low) / (high - low) * 2 - 1 for v in self.state.window)

    def auto_window(self) -> None:
        """Robust percentiles of the brain's intensities over the whole volume."""
        mv = self.session.model_volume if self.session else None
        if mv is None:
            return
        brain = mv.data[mv.brain_mask]
        lo, hi = np.percentile(brain, AUTO_WINDOW_PERCENTILES) if brain.size else (-1.0, 1.0)
        low, high = mv.intensity_range
        if high <= low:
            low, high = -1.0, 1.0
        raw = [low + (v + 1) / 2 * (high - low) for v in (lo, hi)]
        if raw[1] <= raw[0]:
            raw[1] = raw[0] + max(abs(raw[0]) * 1e-3, 1e-3)
        self.state.set(window=(float(raw[0]), float(raw[1])))
        self._set_levels()

    def _set_levels(self) -> None:
        levels = self._model_levels()
        self.panels.set_levels(*levels)
        self.reading.planes.set_levels(*levels)

    def on_level_drag(self, dx: float, dy: float, finished: bool) -> None:
        low, high = self.state.window
        width, level = high - low, (low + high) / 2
        width = max(width * float(np.exp(dx / 200)), 1e-6)
        level = level - dy * width / 300
        self.state.set(window=(level - width / 2, level + width / 2))

    # Status line
    def show_cursor(self, z: int | None, u: float = 0.0, v: float = 0.0) -> None:
        """The status line: slice z's native voxel, intensity and heat under model point (u, v) of any plane;
        z None: the cursor is off the images (the current slice only)."""
        s = self.session
        if s is None or s.model_volume is None:
            self.cursor_label.setText("")
            return
        shown_z = self.state.slice if z is None else z
        parts = [texts.STATUS_SLICE.format(slice=shown_z, last=s.model_volume.n_slices - 1)]
        if z is not None:
            found = voxel_at(s.volume, s.model_volume, z, u, v)
            if found is None:
                parts.append(texts.STATUS_OUTSIDE)
            else:
                (i, j, k), value = found
                parts.append(texts.STATUS_VOXEL.format(i=i, j=j, k=k, value=value))
            heat = self._heat_at(z, int(v), int(u))
            if heat is not None:
                parts.append(texts.STATUS_HEAT.format(heat=heat))
        self.cursor_label.setText(texts.STATUS_SEPARATOR.join(parts))

    def _heat_at(self, z: int, row: int, column: int) -> float | None:
        """The heat map's value at a model pixel: the shown slice's, else the whole volume's when computed."""
        S = self.session.model_volume.image_size
        if not (0 <= row < S and 0 <= column < S):
            return None
        if self._shown is not None and self._shown.slice == z:
            return float(self._shown.heat[row, column])
        maps = self.volume_maps()
        return None if maps is None else float(maps.heat[z, row, column])

    # Whole volume
    def run_whole_volume(self) -> bool:
        """Start computing every brain slice (cached ones are skipped); False when there is nothing to do."""
        s = self.session
        if s is None or s.model is None or s.model_volume is None or self._run is not None:
            return False
        first, last = s.model_volume.slice_range
        total = sum(len(s.cache.missing(z, self.timesteps(), self.state.seed)) for z in range(first, last + 1))
        if total == 0:
            self.statusBar().showMessage(texts.STATUS_RUN_ALREADY)
            return False
        self._run_id += 1
        self._run = VolumeRun(id=self._run_id, session=s.key, timesteps=self.timesteps(), seed=self.state.seed,
                              first=first, last=last)
        self.controls.show_progress(True, 0, total)
        self.worker.run_volume(self._run)
        return True

    def _complete_for_regions(self) -> None:
        """3-D regions need every brain slice: while they are on, missing slices start the whole-volume run by
        themselves (new volume, checkpoint or device, regions switched on, λ or seed changed, a run ended)."""
        s = self.session
        if (self.state.persist and self._run is None and s is not None and s.model is not None
                and s.model_volume is not None and self.missing_slices()):
            self.run_whole_volume()

    def _supersede_run(self) -> None:
        """With 3-D regions on, a volume run for a λ or seed no longer asked for stops (unless an export waits on
        it); the current settings' run starts when it has ended (dragging λ computes the last value, not each)."""
        run = self._run
        if (self.state.persist and run is not None and self._after_run is None
                and (run.timesteps, run.seed) != (self.timesteps(), self.state.seed)):
            self._superseded = True
            self.worker.cancel_run()

    def cancel_run(self) -> None:
        self._after_run = None
        self._superseded = False
        self.worker.cancel_run()

    @property
    def running(self) -> bool:
        return self._run is not None

    @Slot(int, int, int, object)
    def _on_run_progress(self, run_id: int, done: int, total: int, slices: list[int]) -> None:
        run = self._run
        if run is None or run_id != run.id or self.session is None or run.session != self.session.key:
            return
        self.controls.show_progress(True, done, total)
        mv = self.session.model_volume
        scores = self._scores_for(run.timesteps, run.seed)
        for z in slices:
            view = self._view(z, run.timesteps, run.seed)
            if view is not None:
                scores[z] = view.score(mv.brain_mask[z])
        self._refresh_scores()
        if self._shown is None and self.state.slice in slices:
            view = self._view(self.state.slice)
            if view is not None:
                self._request_id += 1
                self.worker.supersede(self._request_id)
                self._show(view)

    @Slot(int, bool, int, float)
    def _on_run_finished(self, run_id: int, completed: bool, done: int, seconds: float) -> None:
        run = self._run
        if run is None or run_id != run.id:
            return
        self._run = None
        total = self.controls.progress.maximum()
        if completed:
            self.statusBar().showMessage(texts.STATUS_RUN_DONE.format(n=done, seconds=seconds))
        else:
            self.statusBar().showMessage(texts.STATUS_RUN_CANCELLED.format(done=done, total=total))
        self.controls.show_progress(False, 0, 1)
        self._refresh_scores()
        self._refresh_mask()                                    # 3-D persistence applies once the volume is complete
        self._update_titles()
        self.reading.refresh_volume()
        self.run_done.emit(completed)
        then, self._after_run = self._after_run, None
        if then is not None and completed:
            then()
        if completed or self._superseded:
            self._superseded = False
            self._complete_for_regions()                        # λ or seed moved during the run
        if self._screenshot:
            QTimer.singleShot(0, self._take_screenshot)

    def load_reference(self, path: str | Path) -> bool:
        """Show a segmentation on the input's grid beside the mask, with its overlap; an error dialog otherwise."""
        if self.session is None or self.session.volume is None:
            self.show_error(texts.ERROR_REFERENCE.format(message=texts.ERROR_NO_VOLUME))
            return False
        try:
            self.reading.load_reference(path)
        except VolumeError as err:
            self.show_error(texts.ERROR_REFERENCE.format(message=err), str(err))
            return False
        self.statusBar().showMessage(texts.STATUS_REFERENCE.format(name=Path(path).name))
        return True

    def _load_reference_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, texts.DIALOG_OPEN_REFERENCE, self.settings["last_directory"],
                                              texts.FILTER_NIFTI)
        if path:
            self.load_reference(path)

    def _on_reference_changed(self) -> None:
        self.clear_reference_action.setEnabled(self.reading.reference is not None)
        self.panels.set_reference(self.reading.reference_slice(self.state.slice))

    def panel_rects(self) -> list[QRect]:
        """The four image views in window coordinates (what a screenshot shows of each panel)."""
        return [QRect(self.panels.mapTo(self, r.topLeft()), r.size()) for r in self.panels.view_rects()]

    # Screenshot mode
    def _take_screenshot(self) -> None:
        """Save the window once it has settled: the shown slice's result, and the whole-volume run when 3-D regions
        started one (the mask then is the volume's, as the user sees it after waiting)."""
        if (self._screenshot is None or self._shown is None or self._shown.slice != self.state.slice
                or self._run is not None):
            return
        path, self._screenshot = self._screenshot, None
        if self.grab().save(str(path)):
            self.screenshot_done.emit(True, "")
        else:
            self.screenshot_done.emit(False, texts.ERROR_PNG.format(path=path))

    def _finish_screenshot(self, ok: bool, message: str) -> None:
        """Report a screenshot failure from inside the event loop (the app is not running it yet at startup)."""
        if self._screenshot is None:
            return
        self._screenshot = None
        QTimer.singleShot(0, lambda: self.screenshot_done.emit(ok, message))

    # Closing
    def _save_settings(self) -> None:
        if self._read_only:
            return
        problem = self.settings.save()
        if problem:
            self.statusBar().showMessage(problem)

    def closeEvent(self, event) -> None:
        if not self._read_only:
            self.settings["geometry"] = base64.b64encode(bytes(self.saveGeometry())).decode("ascii")
            for name in RESTORED:
                value = getattr(self.state, name)
                if name not in VALID or VALID[name](value):   # a checkpoint's option beyond the boxes: not kept
                    self.settings[name] = value
            self._save_settings()
        self.worker.cancel_run()
        self.threads.stop()
        super().closeEvent(event)
