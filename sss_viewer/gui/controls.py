"""The control column: model and device, detection settings, display, whole-volume run and export."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout,
                               QLabel, QProgressBar, QPushButton, QScrollArea, QSlider, QSpinBox, QVBoxLayout, QWidget)

from ..core.anomaly import CONSENSUS_TIMESTEPS, DEFAULT_THRESHOLD
from . import texts
from .panels import MarkedSlider
from .settings import (DRAWS_MAX, ERODE_MAX, LOWPASS_MAX, MIN_AREA_MAX, PERSIST_MAX, SEED_MAX, THRESHOLD_RANGE,
                       TIMESTEP_RANGE)
from .state import ViewState
from .worker import ModelInfo

PAPER_BAND = (250, 400)     # the timesteps the paper found best, marked on the slider
THRESHOLD_STEPS = 200       # threshold slider positions over THRESHOLD_RANGE
LOWPASS_STEP = 0.5          # low-pass sigma box step (model pixels)
MIN_AREA_STEP = 5           # min region box step (pixels)


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w, 1 if isinstance(w, QSlider) else 0)
    return box


class ControlPanel(QScrollArea):
    """Writes user input into the ViewState and mirrors the state back; buttons become signals."""

    open_checkpoint = Signal()
    run_volume = Signal()
    cancel_run = Signal()
    auto_window = Signal()
    export_nifti = Signal()
    export_png = Signal()
    export_report = Signal()

    def __init__(self, state: ViewState, devices: list[str]):
        super().__init__()
        self.state = state
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        column = QVBoxLayout(body)
        column.addWidget(self._model_group(devices))
        column.addWidget(self._detection_group())
        column.addWidget(self._display_group())
        column.addWidget(self._volume_group())
        column.addWidget(self._export_group())
        column.addStretch(1)
        self.setWidget(body)
        self.setMinimumWidth(body.sizeHint().width() + self.verticalScrollBar().sizeHint().width() + 4)
        state.changed.connect(self.sync)
        for name in ("timestep", "threshold", "postprocess", "consensus", "votes", "seed", "draws", "persist",
                     "lowpass", "median", "erode", "normative", "min_area", "device", "mask_style", "mask_opacity",
                     "window"):
            self.sync(name)

    # Building
    def _model_group(self, devices: list[str]) -> QGroupBox:
        group = QGroupBox(texts.GROUP_MODEL)
        form = QFormLayout(group)
        self.model_label = QLabel(texts.MODEL_NONE)
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.device_combo = QComboBox()
        for device in devices:
            self.device_combo.addItem(device, device)
        self.device_combo.currentIndexChanged.connect(
            lambda i: self.state.set(device=self.device_combo.itemData(i)))
        self.device_label = QLabel("")
        open_button = QPushButton(texts.BUTTON_OPEN_CHECKPOINT)
        open_button.clicked.connect(self.open_checkpoint)
        form.addRow(self.model_label)
        form.addRow(texts.DEVICE_LABEL, _row(self.device_combo, self.device_label))
        form.addRow(open_button)
        return group

    def _detection_group(self) -> QGroupBox:
        group = QGroupBox(texts.GROUP_DETECTION)
        form = QFormLayout(group)
        self.timestep_slider = MarkedSlider()
        self.timestep_slider.setRange(*TIMESTEP_RANGE)
        self.timestep_slider.setPageStep(50)
        self.timestep_slider.set_band(*PAPER_BAND)
        self.timestep_spin = QSpinBox()
        self.timestep_spin.setRange(*TIMESTEP_RANGE)
        self.timestep_spin.setSingleStep(10)
        for w in (self.timestep_slider, self.timestep_spin):
            w.setToolTip(texts.TIMESTEP_TOOLTIP)
            w.valueChanged.connect(lambda v: self.state.set(timestep=int(v)))
        self.timestep_note = QLabel(texts.TIMESTEP_CONSENSUS.format(ts=", ".join(map(str, CONSENSUS_TIMESTEPS))))
        self.threshold_slider = MarkedSlider()
        self.threshold_slider.setRange(0, THRESHOLD_STEPS)
        self.threshold_slider.set_marks(self._position_of(DEFAULT_THRESHOLD))
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(*THRESHOLD_RANGE)
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setSingleStep(0.01)
        for w in (self.threshold_slider, self.threshold_spin):
            w.setToolTip(texts.THRESHOLD_TOOLTIP)
        self.threshold_slider.valueChanged.connect(lambda v: self.state.set(threshold=self._threshold_of(v)))
        self.threshold_spin.valueChanged.connect(lambda v: self.state.set(threshold=round(float(v), 3)))
        self.postprocess_box = QCheckBox(texts.POSTPROCESS_LABEL)
        self.postprocess_box.toggled.connect(lambda on: self.state.set(postprocess=on))
        self.consensus_box = QCheckBox(texts.CONSENSUS_LABEL.format(ts="/".join(map(str, CONSENSUS_TIMESTEPS))))
        self.consensus_box.toggled.connect(lambda on: self.state.set(consensus=on))
        self.votes_spin = QSpinBox()
        self.votes_spin.setRange(1, len(CONSENSUS_TIMESTEPS))
        self.votes_spin.setToolTip(texts.VOTES_TOOLTIP)
        self.votes_spin.valueChanged.connect(lambda v: self.state.set(votes=int(v)))
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, SEED_MAX)
        self.seed_spin.valueChanged.connect(lambda v: self.state.set(seed=int(v)))
        self.draws_spin = QSpinBox()
        self.draws_spin.setRange(1, DRAWS_MAX)
        self.draws_spin.setToolTip(texts.DRAWS_TOOLTIP)
        self.draws_spin.valueChanged.connect(lambda v: self.state.set(draws=int(v)))
        self.persist_spin = QSpinBox()
        self.persist_spin.setRange(0, PERSIST_MAX)
        self.persist_spin.setSpecialValueText(texts.PERSIST_OFF)
        self.persist_spin.setToolTip(texts.PERSIST_TOOLTIP)
        self.persist_spin.valueChanged.connect(lambda v: self.state.set(persist=int(v)))
        form.addRow(texts.TIMESTEP_LABEL, _row(self.timestep_slider, self.timestep_spin))
        form.addRow(self.timestep_note)
        form.addRow(texts.THRESHOLD_LABEL, _row(self.threshold_slider, self.threshold_spin))
        form.addRow(self.postprocess_box)
        form.addRow(self.consensus_box)
        form.addRow(texts.VOTES_LABEL, self.votes_spin)
        form.addRow(texts.SEED_LABEL, self.seed_spin)
        form.addRow(texts.DRAWS_LABEL, self.draws_spin)
        form.addRow(texts.PERSIST_LABEL, self.persist_spin)
        form.addRow(self._hygiene_grid())
        return group

    def _hygiene_grid(self) -> QWidget:
        """Map hygiene (core.hygiene.MapOptions), two compact rows: low-pass and median, rim erosion and min region."""
        self.lowpass_spin = QDoubleSpinBox()
        self.lowpass_spin.setRange(0.0, LOWPASS_MAX)
        self.lowpass_spin.setDecimals(1)
        self.lowpass_spin.setSingleStep(LOWPASS_STEP)
        self.lowpass_spin.valueChanged.connect(lambda v: self.state.set(lowpass=round(float(v), 1)))
        self.median_combo = QComboBox()
        for n in texts.MEDIAN_CHOICES:
            self.median_combo.addItem(texts.MEDIAN_ITEM.format(n=n) if n else texts.MEDIAN_OFF, n)
        self.median_combo.currentIndexChanged.connect(
            lambda i: self.state.set(median=int(self.median_combo.itemData(i))))
        self.erode_spin = QSpinBox()
        self.erode_spin.setRange(0, ERODE_MAX)
        self.erode_spin.valueChanged.connect(lambda v: self.state.set(erode=int(v)))
        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(0, MIN_AREA_MAX)
        self.min_area_spin.setSingleStep(MIN_AREA_STEP)
        self.min_area_spin.valueChanged.connect(lambda v: self.state.set(min_area=int(v)))
        for spin in (self.lowpass_spin, self.erode_spin, self.min_area_spin):
            spin.setSpecialValueText(texts.HYGIENE_OFF)
            spin.setSuffix(texts.HYGIENE_PX)
        self.normative_box = QCheckBox(texts.NORM_LABEL)
        self.normative_box.setToolTip(texts.NORM_TOOLTIP)
        self.normative_box.setEnabled(False)                              # until a checkpoint with a norm loads
        self.normative_box.toggled.connect(lambda on: self.state.set(normative=bool(on)))
        box = QWidget()
        grid = QGridLayout(box)
        grid.setContentsMargins(0, 0, 0, 0)
        cells = ((texts.LOWPASS_LABEL, self.lowpass_spin, texts.LOWPASS_TOOLTIP),
                 (texts.MEDIAN_LABEL, self.median_combo, texts.MEDIAN_TOOLTIP),
                 (texts.ERODE_LABEL, self.erode_spin, texts.ERODE_TOOLTIP),
                 (texts.MIN_AREA_LABEL, self.min_area_spin, texts.MIN_AREA_TOOLTIP))
        for i, (text, widget, tip) in enumerate(cells):
            label = QLabel(text)
            label.setBuddy(widget)
            for w in (label, widget):
                w.setToolTip(tip)
            grid.addWidget(label, i // 2, 2 * (i % 2))
            grid.addWidget(widget, i // 2, 2 * (i % 2) + 1)
        grid.addWidget(self.normative_box, 2, 0, 1, 4)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        self.hygiene_box = box
        return box

    def _display_group(self) -> QGroupBox:
        group = QGroupBox(texts.GROUP_DISPLAY)
        form = QFormLayout(group)
        self.style_combo = QComboBox()
        for key, label in texts.MASK_STYLES.items():
            self.style_combo.addItem(label, key)
        self.style_combo.currentIndexChanged.connect(
            lambda i: self.state.set(mask_style=self.style_combo.itemData(i)))
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.valueChanged.connect(lambda v: self.state.set(mask_opacity=v / 100))
        self.window_spin = QDoubleSpinBox()
        self.level_spin = QDoubleSpinBox()
        for spin in (self.window_spin, self.level_spin):
            spin.setToolTip(texts.WINDOW_TOOLTIP)
            spin.setRange(-1e9, 1e9)
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(self._window_edited)
        self.window_spin.setMinimum(1e-6)
        auto = QPushButton(texts.BUTTON_AUTO_WINDOW)
        auto.setToolTip(texts.AUTO_WINDOW_TOOLTIP)
        auto.clicked.connect(self.auto_window)
        form.addRow(texts.MASK_STYLE_LABEL, self.style_combo)
        form.addRow(texts.OPACITY_LABEL, self.opacity_slider)
        form.addRow(texts.WINDOW_LABEL, self.window_spin)
        form.addRow(texts.LEVEL_LABEL, _row(self.level_spin, auto))
        self.window_widgets = (self.window_spin, self.level_spin, auto)
        return group

    def _volume_group(self) -> QGroupBox:
        group = QGroupBox(texts.GROUP_VOLUME)
        layout = QVBoxLayout(group)
        self.run_button = QPushButton(texts.BUTTON_RUN_VOLUME)
        self.run_button.clicked.connect(self.run_volume)
        self.cancel_button = QPushButton(texts.BUTTON_CANCEL)
        self.cancel_button.clicked.connect(self.cancel_run)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setFormat("")
        self.progress.setValue(0)
        layout.addWidget(_row(self.run_button, self.cancel_button))
        layout.addWidget(self.progress)
        self.volume_group = group
        return group

    def _export_group(self) -> QGroupBox:
        group = QGroupBox(texts.GROUP_EXPORT)
        nifti = QPushButton(texts.BUTTON_EXPORT_NIFTI)
        nifti.clicked.connect(self.export_nifti)
        png = QPushButton(texts.BUTTON_EXPORT_PNG)
        png.clicked.connect(self.export_png)
        report = QPushButton(texts.BUTTON_EXPORT_REPORT)
        report.setToolTip(texts.EXPORT_REPORT_TOOLTIP)
        report.clicked.connect(self.export_report)
        layout = QVBoxLayout(group)
        layout.addWidget(_row(nifti, png))
        layout.addWidget(report)
        self.export_group = group
        return group

    # State → widgets
    @staticmethod
    def _threshold_of(position: int) -> float:
        low, high = THRESHOLD_RANGE
        return round(low + (high - low) * position / THRESHOLD_STEPS, 3)

    @staticmethod
    def _position_of(threshold: float) -> int:
        low, high = THRESHOLD_RANGE
        return round((threshold - low) / (high - low) * THRESHOLD_STEPS)

    def _set(self, widget, value) -> None:
        widget.blockSignals(True)
        widget.setValue(value)
        widget.blockSignals(False)

    def sync(self, name: str) -> None:
        s = self.state
        if name == "timestep":
            self._set(self.timestep_slider, s.timestep)
            self._set(self.timestep_spin, s.timestep)
        elif name == "threshold":
            self._set(self.threshold_slider, self._position_of(s.threshold))
            self._set(self.threshold_spin, s.threshold)
        elif name == "postprocess":
            self.postprocess_box.setChecked(s.postprocess)
        elif name == "consensus":
            self.consensus_box.setChecked(s.consensus)
            self.timestep_slider.setEnabled(not s.consensus)
            self.timestep_spin.setEnabled(not s.consensus)
            self.timestep_note.setVisible(s.consensus)
            self.votes_spin.setEnabled(s.consensus)
        elif name == "votes":
            self._set(self.votes_spin, s.votes)
        elif name == "seed":
            self._set(self.seed_spin, s.seed)
        elif name == "draws":
            self._set(self.draws_spin, s.draws)
        elif name == "persist":
            self.persist_spin.setMaximum(max(PERSIST_MAX, s.persist))        # a checkpoint's may lie beyond the box
            self._set(self.persist_spin, s.persist)
        elif name == "lowpass":
            self.lowpass_spin.setMaximum(max(LOWPASS_MAX, s.lowpass))
            self._set(self.lowpass_spin, s.lowpass)
        elif name == "median":
            if self.median_combo.findData(s.median) < 0:
                self.median_combo.addItem(texts.MEDIAN_ITEM.format(n=s.median), s.median)
            self.median_combo.blockSignals(True)
            self.median_combo.setCurrentIndex(self.median_combo.findData(s.median))
            self.median_combo.blockSignals(False)
        elif name == "erode":
            self.erode_spin.setMaximum(max(ERODE_MAX, s.erode))
            self._set(self.erode_spin, s.erode)
        elif name == "min_area":
            self.min_area_spin.setMaximum(max(MIN_AREA_MAX, s.min_area))
            self._set(self.min_area_spin, s.min_area)
        elif name == "normative":
            self.normative_box.blockSignals(True)
            self.normative_box.setChecked(s.normative)
            self.normative_box.blockSignals(False)
        elif name == "device":
            self.device_combo.blockSignals(True)
            self.device_combo.setCurrentIndex(max(0, self.device_combo.findData(s.device)))
            self.device_combo.blockSignals(False)
        elif name == "mask_style":
            self.style_combo.blockSignals(True)
            self.style_combo.setCurrentIndex(self.style_combo.findData(s.mask_style))
            self.style_combo.blockSignals(False)
        elif name == "mask_opacity":
            self._set(self.opacity_slider, round(s.mask_opacity * 100))
        elif name == "window":
            low, high = s.window
            width = high - low
            decimals = 1 if width >= 20 else 3
            for spin in (self.window_spin, self.level_spin):
                spin.setDecimals(decimals)
                spin.setSingleStep(max(width / 50, 10 ** -decimals))
            self._set(self.window_spin, width)
            self._set(self.level_spin, (low + high) / 2)

    def _window_edited(self) -> None:
        width, level = self.window_spin.value(), self.level_spin.value()
        self.state.set(window=(level - width / 2, level + width / 2))

    # Other inputs from the window
    def show_model(self, model: ModelInfo | None, device: str, loading: str | None = None) -> None:
        if loading:
            self.model_label.setText(texts.MODEL_LOADING.format(name=loading))
        elif model is None:
            self.model_label.setText(texts.MODEL_NONE)
        else:
            rec = model.recommended
            self.model_label.setText(texts.MODEL_INFO.format(name=model.name, preset=model.preset,
                                                             size=model.image_size, step=model.step,
                                                             timestep=rec.timestep, threshold=rec.threshold)
                                     + (texts.MODEL_DRAWS.format(draws=rec.draws) if rec.draws > 1 else "")
                                     + rec.map_options.label)
            self.model_label.setToolTip(texts.MODEL_TOOLTIP.format(path=model.path, source=rec.source))
            self.threshold_slider.set_marks(self._position_of(DEFAULT_THRESHOLD), self._position_of(rec.threshold))
        self.normative_box.setEnabled(model is not None and model.normative is not None)
        self.device_label.setText(texts.DEVICE_ACTIVE.format(device=model.device, precision=model.precision)
                                  if model else "")

    def show_available(self, volume: bool, model: bool) -> None:
        """Enable what needs an open volume (window/level) and what also needs a model (run, export)."""
        for w in self.window_widgets:
            w.setEnabled(volume)
        self.volume_group.setEnabled(volume and model)
        self.export_group.setEnabled(volume and model)

    def show_progress(self, running: bool, done: int, total: int) -> None:
        """A run's progress (model results), or when idle how many brain slices have results."""
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.progress.setFormat(texts.RUN_PROGRESS if running else texts.RUN_IDLE)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
