"""Desktop viewer (pytest-qt, offscreen): slices, sliders, newest-wins worker, errors, export, screenshot."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from sss_viewer.core.checkpoint import save_checkpoint  # noqa: E402
from sss_viewer.core.config import PRESETS  # noqa: E402
from sss_viewer.core.resources import DEMO_CHECKPOINT, DEMO_VOLUME, default_checkpoint, resource  # noqa: E402
from sss_viewer.core.unet import UNet  # noqa: E402
from sss_viewer.gui import qtcompat, texts  # noqa: E402
from sss_viewer.gui.app import launch, main, parse_args  # noqa: E402
from sss_viewer.gui.coords import model_to_canonical  # noqa: E402
from sss_viewer.gui.main_window import MainWindow  # noqa: E402
from sss_viewer.gui.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30_000  # ms; tiny model calls take well under a second each
AFFINE = np.array([[-1.0, 0, 0, 14], [0, -1.2, 0, 20], [0, 0, 2.0, -60], [0, 0, 0, 1]])  # LPS, anisotropic


def synthetic_brain(shape=(28, 32, 64)) -> np.ndarray:
    """Canonical (X, Y, Z) ellipsoid 'brain' with texture and a bright blob, off-centre so flips show."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    inside = ((x - 12) / 11) ** 2 + ((y - 17) / 13) ** 2 + ((z - 32) / 28) ** 2 < 1
    texture = 100 + 30 * np.sin(x / 2.5) * np.cos(y / 3.0)
    data = np.where(inside, texture, 0.0)
    data[((x - 8) ** 2 + (y - 22) ** 2 + (z - 32) ** 2 < 9) & inside] = 250
    return data.astype(np.float32)


def save_lps(canonical: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(canonical[::-1, ::-1, :]), AFFINE), str(path))  # native L, P, S
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui")
    out = {"volume": save_lps(synthetic_brain(), root / "brain.nii.gz"),
           "bad_volume": root / "broken.nii.gz", "bad_checkpoint": root / "broken.pt"}
    out["bad_volume"].write_bytes(b"this is not a NIfTI file")
    out["bad_checkpoint"].write_bytes(b"nor is this a checkpoint")
    for name, seed in (("checkpoint", 0), ("checkpoint2", 1)):
        torch.manual_seed(seed)
        # Random weights everywhere (a fresh UNet's zeroed output layer would predict eps = 0 for any weights).
        weights = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                   for k, v in UNet(PRESETS["tiny"].model).state_dict().items()}
        out[name] = root / f"tiny{seed}.pt"
        save_checkpoint(out[name], PRESETS["tiny"], weights, step=seed)
    return out


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    monkeypatch.setenv("SSS_VIEWER_CONFIG_DIR", str(folder))
    return folder


def wait_for(qtbot, condition, timeout=WAIT):
    qtbot.waitUntil(condition, timeout=timeout)


@pytest.fixture
def window(qtbot, files):
    w = MainWindow(Settings.load())
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    w.start(files["volume"], files["checkpoint"], device="cpu")
    wait_for(qtbot, lambda: w.shown is not None or (w._error_box is not None and w._error_box.isVisible()))
    assert w.shown is not None, f"no first result: {w.statusBar().currentMessage()}"
    yield w
    w.close()


def images(w: MainWindow) -> dict[str, np.ndarray]:
    p = w.panels
    return {"original": p.original_image.image.copy(), "recon": p.recon_image.image.copy(),
            "heat": p.heat_image.image.copy(), "mask": p._mask.copy()}


def wait_result(qtbot, w: MainWindow, z: int, timesteps=None):
    wait_for(qtbot, lambda: w.shown is not None and w.shown.slice == z
             and (timesteps is None or w.shown.timesteps == timesteps))


def test_browse_slices_and_sliders(qtbot, window):
    w = window
    mv = w.session.model_volume
    first, last = mv.slice_range
    z0 = w.state.slice
    assert z0 == (first + last) // 2 and w.shown.slice == z0
    before = images(w)
    assert before["recon"].shape == (32, 32) and np.ptp(before["recon"]) > 0 and before["mask"].dtype == bool

    qtbot.keyClick(w.panels.original.canvas, Qt.Key.Key_Up)           # arrow key over a panel
    wait_result(qtbot, w, z0 + 1)
    after = images(w)
    assert not np.array_equal(before["original"], after["original"])
    assert not np.array_equal(before["recon"], after["recon"])
    qtbot.keyClick(w.panels.original.canvas, Qt.Key.Key_PageDown)
    wait_result(qtbot, w, z0 + 1 - 10)

    view = w.panels.mask.view                                           # wheel over a panel: one slice per notch
    canvas = w.panels.mask.canvas
    pos = QPointF(canvas.mapFromScene(view.sceneBoundingRect().center()))
    wheel = QWheelEvent(pos, QPointF(canvas.viewport().mapToGlobal(pos.toPoint())), QPoint(), QPoint(0, 240),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(canvas.viewport(), wheel)
    assert w.state.slice == z0 + 1 - 10 + 2
    wait_result(qtbot, w, w.state.slice)

    w.slice_slider.setValue(z0 + 3)                                     # slice slider
    wait_result(qtbot, w, z0 + 3)
    assert w.slice_spin.value() == z0 + 3

    recon_300 = images(w)["recon"]
    w.controls.timestep_slider.setValue(350)                            # timestep slider → a model call
    wait_result(qtbot, w, z0 + 3, (350,))
    assert not np.array_equal(recon_300, images(w)["recon"])
    assert texts.PANEL_RECON.format(t=350) in w.panels.recon.title.text()

    calls, request = w.worker.model_calls, w._request_id
    mask_before = images(w)["mask"]
    w.controls.threshold_slider.setValue(10)                            # threshold 0.05: mask grows, no model call
    assert w.state.threshold == pytest.approx(0.05)
    mask_low = images(w)["mask"]
    assert mask_low.sum() > mask_before.sum()
    w.controls.postprocess_box.setChecked(False)
    assert not np.array_equal(images(w)["mask"], mask_low)
    qtbot.wait(200)
    assert w.worker.model_calls == calls and w._request_id == request

    w.controls.timestep_slider.setValue(300)            # revisiting computed results: from the cache (timestep first:
    w.slice_slider.setValue(z0)                         # slice z0 at 350 was never computed, and would be requested)
    assert w.shown is not None and w.shown.slice == z0 and w.worker.model_calls == calls


def test_rapid_scrubbing_coalesces_and_stays_responsive(qtbot, window, monkeypatch):
    w = window
    detector = w.worker._detector
    reconstruct = detector.reconstruct

    def small_preset_speed(*args, **kwargs):  # the tiny model is ~30 ms; a 128 px `small` call is ~0.15 s
        time.sleep(0.15)
        return reconstruct(*args, **kwargs)

    monkeypatch.setattr(detector, "reconstruct", small_preset_speed)
    n = w.session.model_volume.n_slices
    positions = list(range(n)) + list(range(n - 1, n - 1 - (100 - n), -1))  # 100 positions, back and forth
    assert len(positions) == 100
    final = positions[-1]
    shown_pairs = []
    w.result_shown.connect(lambda z: shown_pairs.append((z, w.state.slice)))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    calls = w.worker.model_calls
    slowest = 0.0
    for z in positions:                                                 # ~100 positions a second, like a drag
        start = time.perf_counter()
        w.slice_slider.setValue(z)
        slowest = max(slowest, time.perf_counter() - start)
        qtbot.wait(10)
    wait_result(qtbot, w, final)
    timer.stop()
    made = w.worker.model_calls - calls
    assert w.state.slice == final and w.shown.slice == final
    assert np.array_equal(w.panels.recon_image.image, w.session.cache.get(final, 300, 0).recon)
    print(f"scrubbing 100 positions: {made} model calls")
    assert 1 <= made <= 20, f"{made} model calls for 100 slider positions"
    assert all(shown == current for shown, current in shown_pairs), "a stale slice reached the screen"
    assert slowest < 0.25, f"a slider step blocked the GUI thread for {slowest:.3f} s"
    gaps = np.diff(ticks)
    assert len(gaps) > 20 and gaps.max() < 1.0, f"event loop stalled for {gaps.max():.2f} s"


def test_none_true_false_survive_pyside_reference_leaks():
    """PySide6 6.12.0 on CPython 3.11 drops a reference to None per void call and to True per emit (qtcompat)."""
    leaks = qtcompat.leaked_references()
    if any(leaks.values()):
        assert sys.version_info < (3, 12)
        assert all(sys.getrefcount(obj) > qtcompat.RESERVE // 2 for obj in (None, True, False))
    else:
        assert not qtcompat.install()


def test_consensus_votes_and_seed(qtbot, window):
    w = window
    z = w.state.slice
    w.controls.consensus_box.setChecked(True)
    wait_result(qtbot, w, z, (250, 300, 350, 400))
    view = w.shown
    np.testing.assert_allclose(view.heat, view.errors.mean(axis=0), rtol=1e-6)
    assert not w.controls.timestep_slider.isEnabled()
    calls = w.worker.model_calls
    masks = {}
    for votes in (1, 4):
        w.controls.votes_spin.setValue(votes)
        masks[votes] = images(w)["mask"]
    assert masks[1].sum() >= masks[4].sum() and w.worker.model_calls == calls
    w.controls.consensus_box.setChecked(False)
    w.controls.seed_spin.setValue(7)
    wait_result(qtbot, w, z, (300,))
    assert w.shown.seed == 7 and w.worker.model_calls == calls + 1


def test_whole_volume_run_scores_and_cancel(qtbot, window):
    w = window
    w.worker.cpu_chunk = 16
    first, last = w.session.model_volume.slice_range
    with qtbot.waitSignal(w.run_done, timeout=60_000) as finished:
        w.controls.run_button.click()
        assert w.running and w.controls.cancel_button.isEnabled()
    assert finished.args[0] is True
    _, scores = w.score_plot.curve.getData()
    assert np.isfinite(scores[first:last + 1]).all()
    assert w.controls.progress.value() == last - first + 1
    calls = w.worker.model_calls
    for z in range(first, last + 1, 3):                                 # scrolling afterwards: instant, no model
        w.slice_slider.setValue(z)
        assert w.shown is not None and w.shown.slice == z
    assert w.worker.model_calls == calls

    vb = w.score_plot.getPlotItem().vb                                  # click on the score plot → jump
    target = first + 2
    pos = w.score_plot.mapFromScene(vb.mapViewToScene(QPointF(target, float(np.nanmax(scores)) / 2)))
    qtbot.mouseClick(w.score_plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    assert w.state.slice == target

    w.controls.seed_spin.setValue(3)                                    # new settings: run, then cancel
    wait_result(qtbot, w, target)
    with qtbot.waitSignal(w.run_done, timeout=WAIT) as cancelled:
        w.run_whole_volume()
        w.controls.cancel_button.click()
    assert cancelled.args[0] is False and not w.running and w.controls.run_button.isEnabled()
    assert np.isnan(w.score_plot.curve.getData()[1][first:last + 1]).any()


def test_bad_volume_shows_error_and_keeps_previous(qtbot, window, files):
    w = window
    path, shown = w.session.volume.path, w.shown
    with qtbot.waitSignal(w.error_shown, timeout=WAIT) as error:
        w.open_volume(files["bad_volume"])
    assert "broken.nii.gz" in error.args[0] and w._error_box.isVisible()
    assert w._error_box.text().startswith(texts.ERROR_VOLUME.split("\n")[0])
    assert w.session.volume.path == path and w.shown is shown and w.pages.currentIndex() == 1
    w._error_box.close()
    w.step_slice(1)                                                     # still working
    wait_result(qtbot, w, w.state.slice)


def test_out_of_memory_in_worker_reaches_user_and_app_continues(qtbot, window, monkeypatch):
    w = window
    detector = w.worker._detector
    reconstruct = detector.reconstruct

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(detector, "reconstruct", out_of_memory)
    with qtbot.waitSignal(w.error_shown, timeout=WAIT) as error:
        w.step_slice(1)
    assert "out of memory" in error.args[0] and "cpu" in error.args[0]
    assert w.shown is None and w.session.model is not None
    assert texts.PANEL_FAILED.format(slice=w.state.slice) in w.panels.heat.title.text()
    w._error_box.close()
    monkeypatch.setattr(detector, "reconstruct", reconstruct)
    w.step_slice(1)                                                     # the worker thread survived
    wait_result(qtbot, w, w.state.slice)


def test_checkpoint_and_device_switch_at_run_time(qtbot, window, files, settings_dir):
    w = window
    z, recon = w.state.slice, images(w)["recon"]
    key = w.session.key
    with qtbot.waitSignal(w.error_shown, timeout=WAIT) as error:        # bad checkpoint: message, model kept
        w.open_checkpoint(files["bad_checkpoint"])
    assert "broken.pt" in error.args[0] and w.session.model.path == files["checkpoint"]
    w._error_box.close()

    w.open_checkpoint(files["checkpoint2"])                             # good one: new session, recomputed
    wait_for(qtbot, lambda: w.session.key != key and w.shown is not None)
    assert w.session.model.path == files["checkpoint2"] and w.shown.slice == z
    assert not np.array_equal(recon, images(w)["recon"])
    assert "tiny1.pt" in w.controls.model_label.text() and "tiny" in w.controls.model_label.text()
    assert default_checkpoint() == files["checkpoint2"].resolve()      # remembered as the default

    if "cuda" not in w.devices:                                         # unusable device: message, stays on cpu
        with qtbot.waitSignal(w.error_shown, timeout=WAIT) as error:
            w.state.set(device="cuda")
        assert "CUDA" in error.args[0]
        wait_for(qtbot, lambda: w.state.device == "cpu")
        assert w.session.model.device == "cpu"
        w._error_box.close()
    w.controls.device_combo.setCurrentIndex(w.controls.device_combo.findData("auto"))
    wait_for(qtbot, lambda: w.session.device == "auto")


def test_checkpoint_follows_the_volume_and_brings_its_settings(qtbot, files, tmp_path, monkeypatch):
    payload = torch.load(files["checkpoint2"], weights_only=True)
    payload["recommended"] = {"timestep": 220, "threshold": 0.17, "source": "test"}
    general = tmp_path / "general.pt"
    torch.save(payload, general)
    patient = save_lps(synthetic_brain()[::-1].copy(), tmp_path / "patient.nii.gz")
    chosen = {str(files["volume"]): files["checkpoint"], str(patient): general}
    monkeypatch.setattr("sss_viewer.gui.main_window.default_checkpoint", lambda path: chosen[str(path)])
    w = MainWindow(Settings.load())
    qtbot.addWidget(w)
    w.start(files["volume"], files["checkpoint"], device="cpu", auto_checkpoint=True)
    wait_for(qtbot, lambda: w.shown is not None)
    assert (w.state.timestep, w.state.threshold) == (300, 0.3)          # no recommendation: the paper's
    w.open_volume(patient)                                              # a real scan: the general checkpoint
    wait_for(qtbot, lambda: w.session.model.path == general and w.session.volume.path == patient
             and w.shown is not None)
    assert (w.state.timestep, w.state.threshold) == (220, 0.17)
    assert w.controls.threshold_spin.value() == pytest.approx(0.17)
    assert "λ 220, threshold 0.17" in w.controls.model_label.text() and "test" in w.controls.model_label.toolTip()
    w.state.set(threshold=0.25)                                         # the user's choice stays ...
    w.state.set(device="auto")                                          # ... across a device change
    wait_for(qtbot, lambda: w.session.device == "auto")
    assert w.state.threshold == 0.25
    broken = tmp_path / "broken_patient.nii.gz"                         # a failed open: the checkpoint of the
    broken.write_bytes(b"not a NIfTI")                                  # volume on show comes back
    chosen[str(broken)] = files["checkpoint"]
    with qtbot.waitSignal(w.error_shown, timeout=WAIT):
        w.open_volume(broken)
    wait_for(qtbot, lambda: w.session.model.path == general and w._checkpoint_path == general)
    assert w.session.volume.path == patient
    w._error_box.close()
    w.open_checkpoint(files["checkpoint2"])                             # chosen by hand: no more switching
    wait_for(qtbot, lambda: w.session.model.path == files["checkpoint2"])
    w.open_volume(files["volume"])
    wait_for(qtbot, lambda: w.session.volume.path == files["volume"] and w.shown is not None)
    assert w.session.model.path == files["checkpoint2"]
    w.close()

    w = launch(parse_args([str(patient), "--threshold", "0.5", "--device", "cpu"]))   # the command line wins
    qtbot.addWidget(w)
    wait_for(qtbot, lambda: w.session is not None and w.session.model is not None and w.shown is not None)
    assert w.state.threshold == 0.5
    w.close()


def test_export_writes_aligned_nifti(qtbot, window, files, tmp_path):
    w = window
    native = nib.load(str(files["volume"]))
    brain_native = np.asarray(native.dataobj) > 0
    w.state.set(threshold=0.0, postprocess=False)                     # mask = every brain pixel with error > 0
    z = w.state.slice
    paths = w.export_nifti(tmp_path / "partial", compute_missing=False)  # only what exists: one slice
    mask = nib.load(str(paths[0]))
    assert paths[0].name == "brain_mask.nii.gz" and paths[1].name == "brain_error.nii.gz"
    assert mask.shape == native.shape and np.allclose(mask.affine, native.affine)
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    assert set(np.flatnonzero(data.any(axis=(0, 1)))) == {z}          # native z = canonical z for LPS
    assert "1 computed slices" in w.statusBar().currentMessage()

    w.worker.cpu_chunk = 16
    with qtbot.waitSignal(w.exported, timeout=60_000) as done:          # run the missing slices, then write
        assert w.export_nifti(tmp_path / "full", compute_missing=True) is None
    mask = np.asarray(nib.load(str(done.args[0][0])).dataobj) > 0
    error = nib.load(str(done.args[0][1]))
    first, last = w.session.model_volume.slice_range
    inside = slice(first, last + 1)
    overlap = (mask[..., inside] & brain_native[..., inside]).sum()
    dice = 2 * overlap / (mask[..., inside].sum() + brain_native[..., inside].sum())
    assert dice > 0.9, f"exported mask does not lie on the brain (Dice {dice:.3f})"
    err = np.asarray(error.dataobj)
    assert error.get_data_dtype() == np.float32 and np.allclose(error.affine, native.affine)
    assert (err[~brain_native] == 0).mean() > 0.95 and (err[brain_native] > 0).mean() > 0.5
    assert texts.EXPORT_ALL.format(n=last - first + 1) in w.statusBar().currentMessage()

    png = tmp_path / "panels.png"
    assert w.save_panels_png(png) and QImage(str(png)).width() > 200


def test_window_level_and_status_line(qtbot, window, files):
    w = window
    auto = w.state.window
    assert auto[0] < auto[1]
    w.controls.window_spin.setValue(50.0)
    w.controls.level_spin.setValue(120.0)
    assert w.state.window == pytest.approx((95.0, 145.0))
    levels = w.panels.original_image.getLevels()
    w.panels.level_drag.emit(40.0, -20.0, False)                         # right-drag: wider, brighter
    assert w.state.window[1] - w.state.window[0] > 50 and not np.allclose(w.panels.original_image.getLevels(), levels)
    w.controls.window_widgets[2].click()                                # Auto resets
    assert w.state.window == pytest.approx(auto)

    s, z = w.session, w.state.slice                                     # hover: native voxel and raw intensity
    mv, volume = s.model_volume, s.volume
    u, v = mv.image_size * 0.45, mv.image_size * 0.55
    w.panels.hovered.emit(u, v)
    text = w.cursor_label.text()
    x, y, k = model_to_canonical(mv, z, u, v)
    world = volume.canonical_affine @ [x, y, k, 1]                     # independent path: via world coordinates
    i, j, kk = np.rint(np.linalg.inv(AFFINE) @ world)[:3].astype(int)
    value = np.asarray(nib.load(str(files["volume"])).dataobj)[i, j, kk]
    assert texts.STATUS_VOXEL.format(i=i, j=j, k=kk, value=value) in text
    assert texts.STATUS_SLICE.format(slice=z, last=mv.n_slices - 1) in text and "heat" in text
    w.panels.hovered.emit(0.2, 0.2)                                     # a corner of the square lies outside
    assert texts.STATUS_OUTSIDE in w.cursor_label.text() or "voxel" in w.cursor_label.text()


def test_drop_and_recent_files(qtbot, window, files, settings_dir):
    w = window
    key = w.session.key
    def drag(path: Path) -> tuple[QMimeData, QDragEnterEvent]:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        enter = QDragEnterEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(w, enter)
        return mime, enter

    assert not drag(files["volume"].with_suffix(".txt"))[1].isAccepted()
    mime, enter = drag(files["volume"])
    assert enter.isAccepted()
    QApplication.sendEvent(w, QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                         Qt.KeyboardModifier.NoModifier, QEvent.Type.Drop))
    wait_for(qtbot, lambda: w.session.key != key and w.shown is not None)
    assert Settings.load().values["recent_files"][0] == str(files["volume"].resolve())
    w.recent_menu.aboutToShow.emit()
    actions = [a for a in w.recent_menu.actions() if a.data()]
    assert actions and actions[0].data() == str(files["volume"].resolve())
    with qtbot.waitSignal(w.error_shown, timeout=WAIT):
        w.open_recent(str(files["volume"].parent / "gone.nii.gz"))
    w._error_box.close()


def test_settings_restore_and_corrupt_file(qtbot, files, settings_dir):
    settings_dir.mkdir(parents=True)
    path = settings_dir / "settings.json"
    path.write_text("{not json")
    assert Settings.load(repair=False).warning and path.read_text() == "{not json"  # --screenshot: read only
    settings = Settings.load()
    assert settings.warning and "unreadable" in settings.warning and (settings_dir / "settings.json.bad").exists()
    assert settings.values["timestep"] == 300 and settings.save() is None and json.loads(path.read_text())
    path.write_text('{"timestep": 9999, "threshold": "high", "seed": 5, "consensus": true, "future_key": 1}')
    settings = Settings.load()
    assert "threshold" in settings.warning and "timestep" in settings.warning
    assert settings["timestep"] == 300 and settings["seed"] == 5 and settings["future_key"] == 1
    with pytest.raises(ValueError):
        settings["votes"] = 9
    w = MainWindow(settings)                                           # slider values come back
    qtbot.addWidget(w)
    assert w.state.seed == 5 and w.state.consensus and w.controls.seed_spin.value() == 5
    w.state.set(timestep=450, threshold=0.42)
    w.close()
    saved = Settings.load()
    assert saved.warning is None and saved["timestep"] == 450 and saved["threshold"] == 0.42 and saved["geometry"]
    assert not [p for p in settings_dir.iterdir() if p.name.endswith(".tmp")]
    assert saved["future_key"] == 1


def panel_contents(png: Path, rects) -> list[float]:
    """Standard deviation of the grey values inside each panel rectangle of a saved PNG."""
    image = QImage(str(png)).convertToFormat(QImage.Format.Format_Grayscale8)
    out = []
    for r in rects:
        crop = image.copy(r)
        arr = np.frombuffer(crop.constBits(), np.uint8, crop.sizeInBytes()).reshape(crop.height(), -1)[:, :crop.width()]
        out.append(float(arr.std()))
    return out


def screenshot_window(qtbot, argv):
    w = launch(parse_args(argv))
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.screenshot_done, timeout=60_000) as done:
        pass
    return w, done.args


def test_screenshot_shows_four_nonempty_panels(qtbot, files, tmp_path):
    png = tmp_path / "shot.png"
    w, (ok, message) = screenshot_window(qtbot, [str(files["volume"]), "--checkpoint", str(files["checkpoint"]),
                                                 "--slice", "30", "--timestep", "250", "--threshold", "0.1",
                                                 "--screenshot", str(png)])
    assert ok, message
    assert w.state.slice == 30 and w.shown.timesteps == (250,) and w.state.threshold == 0.1
    assert all(std > 5 for std in panel_contents(png, w.panel_rects()))
    assert not (tmp_path / "config" / "settings.json").exists()        # --screenshot leaves settings alone
    w.close()


def test_screenshot_waits_for_the_whole_volume_run_that_3d_regions_start(qtbot, files, tmp_path):
    from sss_viewer.core.checkpoint import Recommended, atomic_torch_save
    from sss_viewer.core.hygiene import MapOptions
    path = tmp_path / "regions.pt"
    payload = torch.load(files["checkpoint"], weights_only=True)
    payload["recommended"] = Recommended(timestep=250, threshold=0.1, source="test",
                                         map_options=MapOptions(persist=2)).to_payload()
    atomic_torch_save(payload, path)
    png = tmp_path / "settled.png"
    w, (ok, message) = screenshot_window(qtbot, [str(files["volume"]), "--checkpoint", str(path), "--slice", "30",
                                                 "--screenshot", str(png)])
    assert ok, message
    assert w.state.persist == 2 and not w.running and not w.missing_slices()    # the automatic run had ended
    volume = w.volume_mask()
    assert volume is not None and np.array_equal(w.panels.shown_mask(), volume[30])  # the saved mask: the volume's
    assert png.is_file()
    w.close()


def test_screenshot_errors_exit_2(qtbot, files, tmp_path, capsys):
    png = tmp_path / "never.png"
    assert main([str(files["bad_volume"]), "--checkpoint", str(files["checkpoint"]), "--screenshot", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.nii.gz" in err[0] and not png.exists()
    assert main([str(files["volume"]), "--checkpoint", str(files["bad_checkpoint"]), "--screenshot", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.pt" in err[0]
    assert main([str(files["volume"]), "--checkpoint", str(files["checkpoint"]), "--slice", "999",
                 "--screenshot", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "999" in err[0]
    with pytest.raises(SystemExit) as bad_arg:
        parse_args(["--timestep", "5000"])
    assert bad_arg.value.code == 2


def test_cli_screenshot_subprocess(files, tmp_path):
    png = tmp_path / "cli.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "SSS_VIEWER_CONFIG_DIR": str(tmp_path / "cfg"),
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "sss_viewer.gui.app", str(files["volume"]), "--checkpoint",
                          str(files["checkpoint"]), "--device", "cpu", "--screenshot", str(png)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert QImage(str(png)).width() > 1000


def test_no_argument_with_demo_missing_says_so_and_keeps_running(qtbot, tmp_path, monkeypatch):
    import sss_viewer.core.resources as resources
    import sss_viewer.gui.app as app
    monkeypatch.setattr(resources, "resource_dir", lambda: tmp_path)   # an installation without the demo files
    monkeypatch.setattr(app, "resource_dir", lambda: tmp_path)
    w = launch(parse_args([]))
    qtbot.addWidget(w)
    assert w.pages.currentIndex() == 0 and DEMO_VOLUME in w.message.text()   # the empty page names what is missing
    assert w.session is None or w.session.model is None
    assert w.controls.model_label.text() == texts.MODEL_NONE
    assert w.isVisible()
    w.close()


DEMO_MISSING = [f"resources/{name}" for name in (DEMO_VOLUME, DEMO_CHECKPOINT) if not resource(name).is_file()]


@pytest.mark.skipif(bool(DEMO_MISSING), reason=f"demo files absent: {', '.join(DEMO_MISSING)}")
def test_demo_screenshot_shows_four_nonempty_panels(qtbot, tmp_path):
    png = tmp_path / "demo.png"
    w, (ok, message) = screenshot_window(qtbot, ["--device", "cpu", "--screenshot", str(png)])
    assert ok, message
    assert w.session.volume.path == resource(DEMO_VOLUME)
    assert all(std > 5 for std in panel_contents(png, w.panel_rects()))
    w.close()


def test_brain_mask_file_outline_and_modality_warning(qtbot, files, tmp_path):
    """A scan with a 'skull' read through the user's brain mask: the original panel shows the scan as read with
    the brain's outline, the model sees the brain alone; a FLAIR name under a T1 model raises a visible warning."""
    brain = synthetic_brain()
    head = np.where(brain > 0, brain, 180.0).astype(np.float32)       # (X, Y, Z): a bright "scalp" everywhere
    scan = save_lps(head, tmp_path / "sub_flair.nii.gz")
    mask = save_lps((brain > 0).astype(np.uint8), tmp_path / "sub_brainmask.nii.gz")
    t1_model = tmp_path / "t1.pt"
    weights = torch.load(files["checkpoint"], weights_only=True)["ema"]
    save_checkpoint(t1_model, PRESETS["tiny"], weights, step=0, modality="t1")

    w = MainWindow(Settings.load())
    qtbot.addWidget(w)
    w.show()
    w.brain_menu.brain_mask = mask
    w.brain_menu.mask_action.setChecked(True)
    w.start(scan, t1_model, device="cpu")
    wait_for(qtbot, lambda: w.shown is not None)
    s = w.session
    assert s.scan.extraction.startswith("mask file") and s.outline is not None and s.display is not None
    z = w.state.slice
    assert np.array_equal(w.panels.original_image.image, s.display[z])     # the scan as read, scalp included
    assert s.display[z][~s.outline[z]].max() > s.model_volume.data[z][~s.outline[z]].max()
    assert w.panels.brain_contour.data is not None and w.panels.brain_contour.data.max() == 1
    assert "sub_brainmask.nii.gz" in w.input_label.text()
    assert not w.notice.isHidden() and "FLAIR" in w.notice.text() and "T1" in w.notice.text()

    key = s.key                                                         # Off: the scan as it is, no outline
    w.brain_menu.set_mode("off")
    wait_for(qtbot, lambda: w.session.key != key and w.shown is not None)
    assert w.session.scan.brain is None and w.session.outline is None
    assert w.panels.brain_contour.data is None
    w.grab().save(str(tmp_path / "brain_outline.png"))
    w.close()


def test_dicom_folder_by_drop_with_series_dialog(qtbot, window, tmp_path, monkeypatch):
    """A dropped study folder with two fitting series: the worker lists them (the window stays responsive), the
    viewer asks which (a dialog), then reads that one."""
    from dicom_files import write_image
    from sss_viewer.gui import input_options

    brain = synthetic_brain()                                          # canonical (X, Y, Z), 2 mm slices
    for number, name, n in ((4, "t1_mprage_ax", 64), (9, "t2_tse_ax", 60)):
        folder = tmp_path / "study" / name
        folder.mkdir(parents=True)
        for k in range(n):                                             # rows: posterior → anterior flipped (LPS)
            write_image(folder / f"{k:03d}.dcm", brain[::-1, ::-1, k].T.round(), (14.0, 20.0, -60.0 + 2 * k),
                        (1, 0, 0), (0, 1, 0), spacing=(1.0, 1.0), uid=f"1.2.826.0.9.{number}", number=number,
                        description=name, instance=k + 1)
    offered = []

    def pick(parent, title, label, items, current, editable):
        offered.extend(items)
        return items[1], True
    monkeypatch.setattr(input_options.QInputDialog, "getItem", pick)
    w, key = window, window.session.key
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "study"))])
    enter = QDragEnterEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(w, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(w, QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                         Qt.KeyboardModifier.NoModifier, QEvent.Type.Drop))
    assert "Listing the DICOM series" in w.statusBar().currentMessage() and not offered   # on the worker, not here
    wait_for(qtbot, lambda: w.session.key != key and w.shown is not None)
    assert offered == ['#4 "t1_mprage_ax" 64 images 32×28', '#9 "t2_tse_ax" 60 images 32×28']
    scan = w.session.scan
    assert scan.series.number == 9 and w.session.volume.data.shape == (28, 32, 60)
    np.testing.assert_array_equal(w.session.volume.data, brain[:, :, :60].round())   # the same voxels, canonical
    assert '#9 "t2_tse_ax"' in w.input_label.text()
    assert w.notice.isHidden()                                          # the tiny model does not record a modality


def test_noise_draws_rebuild_the_detector_and_come_from_the_checkpoint(qtbot, window, files, tmp_path):
    w = window
    z, one = w.state.slice, images(w)["recon"]
    key, calls = w.session.key, w.worker.model_calls
    w.controls.draws_spin.setValue(3)                                   # K draws: a new detector, fresh results
    wait_for(qtbot, lambda: w.session.key != key and w.session.model.draws == 3 and w.shown is not None
             and w.shown.slice == z)
    assert w.worker.model_calls == calls + 1 and not np.array_equal(images(w)["recon"], one)
    payload = torch.load(files["checkpoint2"], weights_only=True)
    payload["recommended"] = {"timestep": 300, "threshold": 0.3, "source": "test", "draws": 2}
    torch.save(payload, tmp_path / "k2.pt")
    w.open_checkpoint(tmp_path / "k2.pt")                               # its own number of draws
    wait_for(qtbot, lambda: w.session.model.path == tmp_path / "k2.pt" and w.session.model.draws == 2)
    assert w.state.draws == 2 and w.controls.draws_spin.value() == 2
    assert "2 noise draws" in w.controls.model_label.text()


def test_threshold_slider_marks_the_papers_and_the_checkpoints_thresholds(qtbot, window, files, tmp_path):
    w = window
    slider = w.controls.threshold_slider
    paper = w.controls._position_of(0.3)
    assert slider.marks == (paper, paper)                               # no calibration: both at the paper's 0.3
    payload = torch.load(files["checkpoint2"], weights_only=True)
    payload["recommended"] = {"timestep": 300, "threshold": 0.17, "source": "test"}
    torch.save(payload, tmp_path / "calibrated.pt")
    w.open_checkpoint(tmp_path / "calibrated.pt")
    wait_for(qtbot, lambda: w.session.model.path == tmp_path / "calibrated.pt")
    assert slider.marks == (paper, w.controls._position_of(0.17)) and slider.value() == slider.marks[1]
    w.controls.grab().save(str(tmp_path / "controls.png"))


def test_3d_persistence_computes_the_whole_volume_by_itself_then_applies(qtbot, window, tmp_path, monkeypatch):
    """Switching 3-D regions on starts the whole-volume run; per slice until every brain slice is computed, then
    regions spanning fewer slices than asked are dropped, on screen and in the export, without a model call."""
    from sss_viewer.core.hygiene import keep_persistent
    w = window
    w.worker.cpu_chunk = 16
    w.state.set(threshold=0.05, postprocess=False)                      # a noisy tiny model: many small regions
    z = w.state.slice
    per_slice = w.shown.mask(0.05, False, w.state.votes)
    assert not w.running
    with qtbot.waitSignal(w.run_done, timeout=60_000) as done:
        w.controls.persist_spin.setValue(3)
        assert w.running and w.volume_mask() is None                    # started by itself, not complete yet
        assert "when the volume is done" in w.panels.mask.title.text()
        assert np.array_equal(w.panels._mask, per_slice)                # meanwhile: the slice's own mask
    assert done.args == [True]
    calls = w.worker.model_calls
    first, last = w.session.model_volume.slice_range
    whole = np.stack([w.session.cache.view(k, w.timesteps(), w.state.seed).mask(0.05, False, w.state.votes)
                      if first <= k <= last else np.zeros_like(per_slice) for k in range(w.session.model_volume.n_slices)])
    expected = keep_persistent(whole, 3)
    assert np.array_equal(w.volume_mask(), expected) and np.array_equal(w.panels._mask, expected[z])
    assert expected.sum() < whole.sum()                                 # something was dropped
    assert "3-D regions ≥ 3 slices" in w.panels.mask.title.text()
    w.controls.persist_spin.setValue(0)                                 # off: the slice's own mask again
    assert np.array_equal(w.panels._mask, per_slice) and w.worker.model_calls == calls
    plain = nib.load(str(w.export_nifti(tmp_path / "plain", compute_missing=False)[0])).get_fdata() > 0
    w.controls.persist_spin.setValue(3)
    assert not w.running                                                # complete already: no second run
    kept = nib.load(str(w.export_nifti(tmp_path / "3d", compute_missing=False)[0])).get_fdata() > 0
    assert kept.sum() < plain.sum() and not (kept & ~plain).any()      # the export is the persistent mask
    with qtbot.waitSignal(w.run_done, timeout=60_000):                  # another λ: its volume, by itself
        w.state.set(timestep=w.state.timestep + 50)
        assert w.running
    assert w.volume_mask() is not None and w.worker.model_calls > calls
    ended = []                                                          # λ dragged during a run: the old one stops,
    w.run_done.connect(ended.append)                                    # the last λ's volume follows unasked
    cancels = []
    cancel = w.worker.cancel_run
    monkeypatch.setattr(w.worker, "cancel_run", lambda: (cancels.append(w._run), cancel()))
    w.state.set(timestep=w.state.timestep + 50)
    first = w._run
    w.state.set(timestep=w.state.timestep + 50)
    assert cancels == [first] and first.timesteps != w.timesteps()     # asked to stop at once
    wait_for(qtbot, lambda: len(ended) == 2, timeout=60_000)            # the first stopped (or had just ended)
    assert ended[1] is True and not w.running
    assert w.volume_mask() is not None and not w.missing_slices()
    w.worker.cpu_chunk = 1                                              # many batches: Cancel lands before the end
    w.state.set(timestep=w.state.timestep + 50)                          # Cancel by the user: nothing restarts
    w.cancel_run()
    wait_for(qtbot, lambda: not w.running)
    qtbot.wait(200)
    assert not w.running and w.volume_mask() is None


def test_folder_without_a_usable_series_is_an_error_dialog(qtbot, window, tmp_path):
    from dicom_files import write_image
    w = window
    path, shown = w.session.volume.path, w.shown
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with qtbot.waitSignal(w.error_shown, timeout=WAIT) as error:
        w.open_volume(tmp_path / "notes")
    assert "notes" in error.args[0] and w._error_box.isVisible()
    w._error_box.close()
    gap = tmp_path / "gap"                                              # slices 0, 1, 3: one is missing
    gap.mkdir()
    for k in (0, 1, 3):
        write_image(gap / f"{k}.dcm", np.full((6, 7), 100 + k, np.int16), (0.0, 0.0, 2.0 * k), (1, 0, 0), (0, 1, 0),
                    instance=k + 1)
    with qtbot.waitSignal(w.error_shown, timeout=WAIT) as error:
        w.open_volume(gap)
    assert "gap" in error.args[0] and w._error_box.isVisible()
    assert w.session.volume.path == path and w.shown is shown           # the previous volume stays
    w._error_box.close()


# Map hygiene (core.hygiene.MapOptions) in the viewer
def set_median(w: MainWindow, n: int) -> None:
    w.controls.median_combo.setCurrentIndex(w.controls.median_combo.findData(n))


def test_slice_view_cleans_each_timestep_with_its_own_reconstruction():
    from sss_viewer.core.hygiene import MapOptions
    from sss_viewer.gui.results import ResultCache, SliceResult
    rng = np.random.default_rng(0)
    x0 = rng.random((16, 16), np.float32)
    brain = np.zeros((16, 16), bool)
    brain[2:14, 3:13] = True
    cache = ResultCache()
    for t in (100, 200):
        recon = rng.random((16, 16), np.float32)
        cache.put(4, t, 0, SliceResult(recon=recon, error=np.square(x0 - recon) * brain))
    options = MapOptions(lowpass=1.0, median=3, erode=1, min_area=5)
    view = cache.view(4, (100, 200), 0, options, x0, brain)
    for k, t in enumerate((100, 200)):
        r = cache.get(4, t, 0)
        assert np.allclose(view.errors[k], options.clean_map(r.error[None], brain[None], x0[None], r.recon[None])[0])
    assert view.options == options and np.allclose(view.heat, view.errors.mean(axis=0))
    raw = cache.view(4, (100, 200), 0)
    assert np.array_equal(raw.errors[0], cache.get(4, 100, 0).error)       # the cache keeps the raw results
    with pytest.raises(ValueError):
        view.cleaned(options, x0, brain)                                    # never cleaned twice


def test_map_options_clean_the_shown_slice_from_the_cache_without_the_model(qtbot, window, tmp_path):
    from sss_viewer.core.anomaly import PostProcess, make_mask, slice_scores
    from sss_viewer.core.hygiene import MapOptions
    w = window
    mv, z, ts, seed = w.session.model_volume, w.state.slice, w.timesteps(), w.state.seed
    x0, brain = mv.data[z][None], mv.brain_mask[z][None]                 # (1, S, S)
    raw = w.session.cache.view(z, ts, seed)
    calls, request = w.worker.model_calls, w._request_id
    w.state.set(threshold=0.05, postprocess=False)
    raw_mask = raw.mask(0.05, False, w.state.votes)

    def expect(**kw):
        heat = MapOptions(**kw).clean_map(raw.errors, brain, x0, raw.recons)[0]
        assert np.allclose(w.panels.heat_image.image, heat) and np.allclose(w.shown.heat, heat)
        scores = w._scores_for(ts, seed)
        assert scores[z] == pytest.approx(float(slice_scores(heat[None], brain)[0]))
        return heat

    set_median(w, 3)
    assert w.state.median == 3
    heat = expect(median=3)
    assert not np.allclose(heat, raw.heat) and "median 3×3" in w.panels.mask.title.text()
    w.controls.erode_spin.setValue(2)
    expect(median=3, erode=2)
    assert "median 3×3, rim 2 px" in w.panels.mask.title.text()
    w.controls.lowpass_spin.setValue(1.0)
    assert w.state.lowpass == 1.0
    heat = expect(lowpass=1.0, median=3, erode=2)
    assert np.array_equal(w.panels._mask, make_mask(heat, 0.05, PostProcess(enabled=False)))
    w.controls.min_area_spin.setValue(20)                                 # the mask only: small regions dropped
    expect(lowpass=1.0, median=3, erode=2)
    pp = MapOptions(min_area=20).postprocess(PostProcess(enabled=False))
    assert np.array_equal(w.panels._mask, make_mask(heat, 0.05, pp))
    assert "regions ≥ 20 px" in w.panels.mask.title.text()
    for name in ("lowpass_spin", "erode_spin", "min_area_spin"):
        getattr(w.controls, name).setValue(0)
    set_median(w, 0)                                                     # all off: the paper's raw maps again
    assert np.array_equal(w.panels.heat_image.image, raw.heat) and np.array_equal(w.panels._mask, raw_mask)
    assert " · " not in w.panels.mask.title.text()
    assert w.worker.model_calls == calls and w._request_id == request   # never a model call

    w.state.set(median=3, erode=3)                                       # a look at the controls' layout
    width = w.controls.width()
    assert w.controls.lowpass_spin.text() == "off" and w.controls.erode_spin.text() == "3 px"
    w.grab().save(str(tmp_path / "hygiene_check.png"))
    assert w.controls.hygiene_box.width() <= width
    for label in w.controls.hygiene_box.findChildren(type(w.controls.model_label)):
        assert label.width() >= label.sizeHint().width(), f"{label.text()!r} is clipped"


def test_checkpoint_map_options_set_the_controls_unless_pinned(qtbot, window, files, tmp_path, settings_dir):
    from sss_viewer.core.checkpoint import Recommended, atomic_torch_save
    from sss_viewer.core.hygiene import MapOptions
    w = window
    path = tmp_path / "clean.pt"
    payload = torch.load(files["checkpoint2"], weights_only=True)       # a save_checkpoint file, recalibrated
    payload["recommended"] = Recommended(timestep=300, threshold=0.083, source="test",
                                         map_options=MapOptions(median=3, erode=2, persist=2)).to_payload()
    atomic_torch_save(payload, path)
    w.open_checkpoint(path)
    wait_for(qtbot, lambda: w.session.model.path == path and w.shown is not None)
    st, c = w.state, w.controls
    assert (st.median, st.erode, st.persist, st.lowpass, st.min_area, st.threshold) == (3, 2, 2, 0.0, 0, 0.083)
    assert c.threshold_spin.value() == 0.083                             # a refined calibration's third decimal
    assert c.median_combo.currentData() == 3 and c.erode_spin.value() == 2 and c.persist_spin.value() == 2
    assert "median 3×3, brain eroded 2 px" in c.model_label.text()
    assert "median 3×3, rim 2 px" in w.panels.mask.title.text()
    raw = w.session.cache.view(w.state.slice, w.timesteps(), w.state.seed)
    mv = w.session.model_volume
    cleaned = MapOptions(median=3, erode=2).clean_map(raw.errors, mv.brain_mask[st.slice][None],
                                                      mv.data[st.slice][None], raw.recons)[0]
    assert np.allclose(w.panels.heat_image.image, cleaned)               # the result came from the worker raw
    wait_for(qtbot, lambda: w.volume_mask() is not None, timeout=60_000)  # its 3-D regions: the volume, unasked
    w.close()
    assert Settings.load()["median"] == 3 and Settings.load()["erode"] == 2   # restored like persist

    w = MainWindow(Settings.load())
    qtbot.addWidget(w)
    assert (w.state.median, w.state.erode) == (3, 2) and w.controls.median_combo.currentData() == 3
    w.state.set(erode=12, median=7)                                      # a checkpoint's beyond the boxes: shown ...
    assert w.controls.erode_spin.value() == 12 and w.controls.median_combo.currentText() == "7×7"
    w.close()                                                            # ... and not saved where invalid
    assert Settings.load()["erode"] == 2 and Settings.load()["median"] == 7

    Settings(settings_dir / "settings.json").save()                      # back to the defaults
    w = launch(parse_args([str(files["volume"]), "--checkpoint", str(path), "--threshold", "0.5",
                           "--device", "cpu"]))                          # the command line wins for its own fields
    qtbot.addWidget(w)
    wait_for(qtbot, lambda: w.session is not None and w.session.model is not None and w.shown is not None)
    assert w.state.threshold == 0.5 and (w.state.median, w.state.erode) == (3, 2)
    w.close()
    Settings(settings_dir / "settings.json").save()
    w = MainWindow(Settings.load())
    qtbot.addWidget(w)
    w.pinned_settings = {"median"}                                       # a pinned option is not overridden
    w.start(files["volume"], path, device="cpu")
    wait_for(qtbot, lambda: w.session is not None and w.session.model is not None and w.shown is not None)
    assert w.state.median == 0 and w.state.erode == 2
    w.close()


def test_map_options_reach_the_whole_volume_export_and_report(qtbot, window, tmp_path):
    from sss_viewer.core.hygiene import MapOptions
    w = window
    w.worker.cpu_chunk = 16
    w.state.set(threshold=0.05, postprocess=False)
    with qtbot.waitSignal(w.run_done, timeout=60_000):
        w.run_whole_volume()
    calls = w.worker.model_calls
    mv = w.session.model_volume
    first, last = mv.slice_range
    raw = w.volume_maps()
    set_median(w, 3)
    w.controls.erode_spin.setValue(2)
    w.controls.min_area_spin.setValue(10)
    options = MapOptions(median=3, erode=2, min_area=10)
    maps = w.volume_maps()
    expected = np.zeros_like(raw.heat)
    for z in range(first, last + 1):
        view = w.session.cache.view(z, w.timesteps(), w.state.seed)
        expected[z] = options.clean_map(view.errors, mv.brain_mask[z][None], mv.data[z][None], view.recons)[0]
    assert np.allclose(maps.heat, expected) and not np.allclose(maps.heat, raw.heat)
    assert maps.mask.sum() < raw.mask.sum()                              # smaller and rim regions are gone
    scores = w._scores_for(w.timesteps(), w.state.seed)                   # the score plot follows the cleaned maps
    assert np.isfinite(scores[first:last + 1]).all()
    mask_path, error_path = w.export_nifti(tmp_path / "clean", compute_missing=False)
    error = np.asarray(nib.load(str(error_path)).dataobj)[::-1, ::-1, :]   # native LPS → canonical
    mask = np.asarray(nib.load(str(mask_path)).dataobj)[::-1, ::-1, :] > 0
    assert np.allclose(error, mv.to_canonical(expected, "linear"), atol=1e-6)
    assert np.array_equal(mask, maps.canonical_mask)
    lines = dict(w.reading.report_content(maps).settings_lines)
    assert lines[texts.REPORT_HYGIENE] == "median 3×3, brain eroded 2 px, regions ≥ 10 px"
    set_median(w, 0)
    for spin in (w.controls.erode_spin, w.controls.min_area_spin):
        spin.setValue(0)
    assert dict(w.reading.report_content(w.volume_maps()).settings_lines)[texts.REPORT_HYGIENE] == \
        texts.REPORT_HYGIENE_OFF
    assert np.array_equal(w.volume_maps().heat, raw.heat) and w.worker.model_calls == calls
