"""The inference thread: one worker object on a QThread holds the model, the device and the open volume."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PySide6.QtCore import QObject, QThread, Signal, Slot

from ..core.anomaly import Detector, resolve_device
from ..core.checkpoint import LoadedCheckpoint, Recommended, load_checkpoint
from ..core.config import PRESETS, Preset, PreprocessConfig
from ..core.inputs import Scan, folder_series, open_scan
from ..core.normative import NormativeMap
from ..core.volume import ModelVolume, Volume, prepare
from . import texts
from .gc_guard import collect_on_gui_thread
from .results import ResultCache, SliceResult

CPU_CHUNK = 4  # default slices per model call in whole-volume runs on the CPU: keeps cancel and scrolling snappy
# torch's CPU threads: one core stays free for the GUI thread (on 2 shared cores, 2 spinning torch threads
# made a tiny model call 20x slower and stalled painting).
INFERENCE_THREADS = max(1, (os.cpu_count() or 2) - 1)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def preset_name(preset: Preset) -> str:
    """The PRESETS name whose model matches, else 'custom'."""
    return next((name for name, p in PRESETS.items() if p.model == preset.model), "custom")


@dataclass(frozen=True)
class ModelInfo:
    """What the window shows about the loaded checkpoint."""
    name: str
    path: Path
    preset: str
    image_size: int
    step: int
    device: str  # the device the model runs on, e.g. "cpu", "cuda:0"
    precision: str  # its arithmetic: "bf16" or "fp32" (Detector.precision)
    recommended: Recommended  # the timestep and threshold the checkpoint is meant to run at
    modality: str | None      # the MR contrast it was trained on; None when the file does not say
    draws: int                # noise draws averaged per slice (Detector.draws)
    normative: NormativeMap | None = None  # the checkpoint's healthy norm; None: it has none


@dataclass(frozen=True, eq=False)
class Session:
    """The worker's current volume and model; results of one session never belong to another."""
    key: int
    volume: Volume | None
    model_volume: ModelVolume | None
    model: ModelInfo | None
    device: str                  # the device asked for: "auto", "cpu" or "cuda"
    cache: ResultCache
    notes: tuple[str, ...] = ()  # warnings raised while opening the volume (e.g. 4-D input)
    scan: Scan | None = None     # how the volume was read: series, brain extraction, modality
    display: np.ndarray | None = None  # (Z, S, S) the scan before brain extraction, model space; None: not extracted
    outline: np.ndarray | None = None  # (Z, S, S) bool the brain mask applied, model space; None: not extracted


@dataclass(frozen=True)
class SliceRequest:
    """Compute one slice's view; only the newest request id is ever computed or answered."""
    id: int
    session: int
    slice: int
    timesteps: tuple[int, ...]
    seed: int


@dataclass(frozen=True)
class VolumeRun:
    """Compute slices first..last (inclusive) at every timestep, skipping cached results."""
    id: int
    session: int
    timesteps: tuple[int, ...]
    seed: int
    first: int
    last: int


@dataclass(frozen=True)
class InputOptions:
    """How a volume is read: DICOM series, brain extraction mode, or the user's own brain mask."""
    series: str | None = None
    skull: str = "auto"              # inputs.SKULL_MODES
    brain_mask: Path | None = None


@dataclass(frozen=True)
class _OpenVolume:
    path: Path
    options: InputOptions = InputOptions()


@dataclass(frozen=True)
class _ListSeries:
    path: Path


@dataclass(frozen=True)
class _LoadCheckpoint:
    path: Path
    device: str


@dataclass(frozen=True)
class _SetDevice:
    device: str


@dataclass(frozen=True)
class _SetDraws:
    draws: int


_KINDS = {_OpenVolume: "volume", _ListSeries: "series", _LoadCheckpoint: "checkpoint", _SetDevice: "device", _SetDraws: "draws",
          SliceRequest: "slice",
          VolumeRun: "run"}


def describe(err: BaseException, device: str) -> str:
    """One readable sentence for an exception raised by the core or by torch."""
    detail = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return texts.ERROR_OUT_OF_MEMORY.format(device=device, detail=detail[:200])
    if isinstance(err, ValueError):  # VolumeError, CheckpointError and the core's checks say what to do
        return detail
    return texts.ERROR_UNEXPECTED.format(kind=type(err).__name__, detail=detail)


class InferenceWorker(QObject):
    """Runs on its own QThread: jobs (open, load, device) in order, then the newest slice request, then volume runs.

    GUI-thread methods only queue work under a lock. A single "latest request" slot means requests
    that arrive while the model runs replace each other: scrubbing over 100 slices costs a few calls.
    """

    session_changed = Signal(object)              # Session
    slice_ready = Signal(int, int, object)        # request id, session key, SliceView
    run_progress = Signal(int, int, int, object)  # run id, done, total, slice indices just computed
    run_finished = Signal(int, bool, int, float)  # run id, completed, done, seconds
    series_listed = Signal(object, object)        # DICOM folder, its series (dicom.Series list)
    failed = Signal(str, object, str)             # kind (volume, series, checkpoint, ...), job, message

    def __init__(self):
        super().__init__()
        self._cond = threading.Condition()
        self._jobs: deque = deque()
        self._slice: SliceRequest | None = None
        self._run: VolumeRun | None = None
        self._latest = 0        # newest slice request id the GUI cares about
        self._stop = False
        self._cancel = threading.Event()
        self._calls = 0
        self._checkpoint: LoadedCheckpoint | None = None
        self._detector: Detector | None = None
        self._model_info: ModelInfo | None = None
        self._device = "auto"
        self._draws = 1          # noise draws asked for; every Detector made from now on uses them
        self._volume: Volume | None = None
        self._scan: Scan | None = None
        self._model_volume: ModelVolume | None = None
        self._display: np.ndarray | None = None
        self._outline: np.ndarray | None = None
        self._notes: tuple[str, ...] = ()
        self.cpu_chunk = CPU_CHUNK
        self._session = Session(key=0, volume=None, model_volume=None, model=None, device="auto",
                                cache=ResultCache())

    @property
    def model_calls(self) -> int:
        """How many times the model has run (one call per batch per timestep)."""
        with self._cond:
            return self._calls

    # GUI-thread side: queue work, never compute.
    def _push(self, job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def open_volume(self, path: str | Path, options: InputOptions = InputOptions()) -> None:
        self._push(_OpenVolume(Path(path), options))

    def list_series(self, folder: str | Path) -> None:
        """Read a DICOM folder's headers here, off the GUI thread (a large study takes seconds)."""
        self._push(_ListSeries(Path(folder)))

    def load_checkpoint(self, path: str | Path, device: str) -> None:
        self._push(_LoadCheckpoint(Path(path), device))

    def set_device(self, device: str) -> None:
        self._push(_SetDevice(device))

    def set_draws(self, draws: int) -> None:
        self._push(_SetDraws(draws))

    def request_slice(self, request: SliceRequest) -> None:
        """Make request the newest; a pending older one is dropped before it starts."""
        with self._cond:
            self._latest = request.id
            self._slice = request
            self._cond.notify()

    def supersede(self, request_id: int) -> None:
        """The GUI needs nothing for request_id (e.g. a cache hit): drop the pending request, ignore older ones."""
        with self._cond:
            self._latest = request_id
            self._slice = None

    def run_volume(self, run: VolumeRun) -> None:
        with self._cond:
            self._cancel.clear()
            self._run = run
            self._cond.notify()

    def cancel_run(self) -> None:
        """Stop the running whole-volume run after its current batch (or drop it if it has not started)."""
        with self._cond:
            self._cancel.set()
            pending, self._run = self._run, None
        if pending is not None:
            self.run_finished.emit(pending.id, False, 0, 0.0)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cancel.set()
            self._cond.notify()

    # Worker-thread side.
    @Slot()
    def loop(self) -> None:
        """The thread's body: wait for work, do it, until stop()."""
        torch.set_num_threads(INFERENCE_THREADS)
        while True:
            with self._cond:
                while not (self._stop or self._jobs or self._slice or self._run):
                    self._cond.wait()
                if self._stop:
                    break
                if self._jobs:
                    job = self._jobs.popleft()
                elif self._slice is not None:
                    job, self._slice = self._slice, None
                else:
                    job, self._run = self._run, None
            self._handle(job)
        QThread.currentThread().quit()

    def _handle(self, job) -> None:
        try:
            if isinstance(job, _OpenVolume):
                self._open_volume(job)
            elif isinstance(job, _ListSeries):
                self.series_listed.emit(job.path, folder_series(job.path))
            elif isinstance(job, _LoadCheckpoint):
                self._load_checkpoint(job)
            elif isinstance(job, _SetDevice):
                self._set_device(job)
            elif isinstance(job, _SetDraws):
                self._set_draws(job)
            elif isinstance(job, SliceRequest):
                self._compute_slice(job)
            else:
                self._compute_run(job)
        except Exception as err:  # the thread must survive anything a job raises; the user gets the message
            device = str(self._detector.device) if self._detector is not None else self._device
            self.failed.emit(_KINDS[type(job)], job, describe(err, device))

    def _publish(self, new_results: bool) -> None:
        """Emit the current state as a Session; new_results starts a fresh key and cache."""
        old = self._session
        self._session = Session(key=old.key + 1 if new_results else old.key, volume=self._volume,
                                model_volume=self._model_volume, model=self._model_info, device=self._device,
                                cache=ResultCache() if new_results else old.cache, notes=self._notes,
                                scan=self._scan, display=self._display, outline=self._outline)
        self.session_changed.emit(self._session)

    def _use_model(self, checkpoint: LoadedCheckpoint, detector: Detector, device: str) -> None:
        """Adopt a model (new checkpoint or device); ModelInfo is made once per adoption, so `is` tells change."""
        self._checkpoint, self._detector, self._device = checkpoint, detector, device
        self._model_info = ModelInfo(name=checkpoint.name, path=checkpoint.path, preset=preset_name(checkpoint.preset),
                                     image_size=checkpoint.preset.model.image_size, step=checkpoint.step,
                                     device=str(detector.device), precision=detector.precision,
                                     recommended=checkpoint.recommended, modality=checkpoint.modality,
                                     draws=detector.draws, normative=checkpoint.normative)

    def _preprocess(self) -> PreprocessConfig:
        return self._checkpoint.preset.preprocess if self._checkpoint is not None else PreprocessConfig()

    @staticmethod
    def _geometry(scan: Scan, cfg: PreprocessConfig) -> tuple[ModelVolume, np.ndarray | None, np.ndarray | None]:
        """Model-space volume of the scan, and (when its brain was extracted) the scan before it and the outline."""
        mv = prepare(scan.volume, cfg)
        if scan.brain is None:
            return mv, None, None
        return mv, mv.image_to_model(scan.original.data), mv.mask_to_model(scan.brain)  # (Z, S, S) twice

    def _open_volume(self, job: _OpenVolume) -> None:
        device = self._detector.device if self._detector is not None else "cpu"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            o = job.options
            scan = open_scan(job.path, o.series, o.skull, o.brain_mask, device)
            geometry = self._geometry(scan, self._preprocess())
        self._scan, self._volume = scan, scan.volume
        self._model_volume, self._display, self._outline = geometry
        self._notes = tuple(str(w.message) for w in caught)
        self._publish(new_results=True)

    def _load_checkpoint(self, job: _LoadCheckpoint) -> None:
        ckpt = load_checkpoint(job.path, "cpu")
        detector = Detector(ckpt.model, ckpt.preset, job.device, draws=self._draws)
        geometry = (self._model_volume, self._display, self._outline)
        if self._scan is not None and self._model_volume.cfg != ckpt.preset.preprocess:
            geometry = self._geometry(self._scan, ckpt.preset.preprocess)
        self._use_model(ckpt, detector, job.device)
        self._model_volume, self._display, self._outline = geometry
        self._publish(new_results=True)

    def _set_device(self, job: _SetDevice) -> None:
        if self._detector is None:
            resolve_device(job.device)
            self._device = job.device
            self._publish(new_results=False)
            return
        if resolve_device(job.device) == self._detector.device:
            self._device = job.device
            self._publish(new_results=False)
            return
        self._use_model(self._checkpoint, Detector(self._checkpoint.model, self._checkpoint.preset, job.device,
                                                   draws=self._draws), job.device)
        self._publish(new_results=True)

    def _set_draws(self, job: _SetDraws) -> None:
        """Average K noise draws per slice from now on: a new Detector and fresh results (other numbers)."""
        self._draws = job.draws
        if self._detector is None or self._detector.draws == job.draws:
            return
        self._use_model(self._checkpoint, Detector(self._checkpoint.model, self._checkpoint.preset, self._device,
                                                   draws=job.draws), self._device)
        self._publish(new_results=True)

    def _reconstruct(self, indices: list[int], timestep: int, seed: int) -> None:
        """One model call on model-space slices `indices`; results go to the session's cache."""
        mv = self._model_volume
        rec = self._detector.reconstruct(mv.data[indices], timestep, seed=seed, indices=indices,
                                         brain=mv.brain_mask[indices])
        with self._cond:
            self._calls += 1
        for i, z in enumerate(indices):
            result = SliceResult(recon=rec.recon[i].copy(), error=rec.error[i].copy())  # copies free the batch
            self._session.cache.put(z, timestep, seed, result)

    def _is_latest(self, request: SliceRequest) -> bool:
        with self._cond:
            return request.id == self._latest

    def _compute_slice(self, request: SliceRequest) -> None:
        session = self._session
        if request.session != session.key or self._detector is None or self._model_volume is None:
            return
        for t in session.cache.missing(request.slice, request.timesteps, request.seed):
            if not self._is_latest(request):
                return  # a newer request arrived: drop this one before the next model call
            self._reconstruct([request.slice], t, request.seed)
        view = session.cache.view(request.slice, request.timesteps, request.seed)
        if view is not None and self._is_latest(request):
            self.slice_ready.emit(request.id, session.key, view)

    def _serve_pending(self) -> bool:
        """Between batches of a run: answer a waiting slice request first; False when the run must stop."""
        with self._cond:
            if self._stop or self._jobs or self._cancel.is_set():
                return False
            request, self._slice = self._slice, None
        if request is not None:
            self._handle(request)
        return True

    def _compute_run(self, run: VolumeRun) -> None:
        session = self._session
        start = time.perf_counter()
        done, completed = 0, False
        try:
            if run.session != session.key or self._detector is None:
                return
            todo = [z for z in range(run.first, run.last + 1) if session.cache.missing(z, run.timesteps, run.seed)]
            total = sum(len(session.cache.missing(z, run.timesteps, run.seed)) for z in todo)
            chunk = self._detector.batch_size if self._detector.cuda else self.cpu_chunk
            for begin in range(0, len(todo), chunk):
                zs = todo[begin:begin + chunk]
                for t in run.timesteps:
                    missing = [z for z in zs if session.cache.get(z, t, run.seed) is None]
                    if not missing:
                        continue
                    if not self._serve_pending():
                        return
                    self._reconstruct(missing, t, run.seed)
                    done += len(missing)
                    self.run_progress.emit(run.id, done, total, missing)
            completed = True
        finally:
            self.run_finished.emit(run.id, completed, done, time.perf_counter() - start)


@dataclass
class WorkerThread:
    """The worker and the QThread it lives on; stop() waits for the current model call to end."""
    worker: InferenceWorker = field(default_factory=InferenceWorker)
    thread: QThread = field(default_factory=QThread)

    def start(self) -> None:
        collect_on_gui_thread()
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.loop)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.quit()
        self.thread.wait()
