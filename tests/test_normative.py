"""The healthy norm (core/normative.py): made on the MNI grid from healthy heat maps, sampled back like a scan,
subtracted as MapOptions.normative, stored by sss-calibrate --normative-from and applied by sss-detect and sss-eval."""

import contextlib
import csv
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sss_viewer.cli.detect import main as detect_main
from sss_viewer.core.align import Alignment, aligned_grid
from sss_viewer.core.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from sss_viewer.core.config import PreprocessConfig
from sss_viewer.core.hygiene import MapOptions, erode_brain
from sss_viewer.core.normative import FLOOR, NormativeSum, excess
from sss_viewer.core.volume import prepare
from test_align import CFG as ALIGNED, make_subject
from trainer import calibrate as cal
from trainer.evaluate import main as eval_main, method_named

SIZE = 32


def aligned_volume(seed: int):
    """A brain-like ellipsoid on the aligned 1 mm grid, prepared at SIZE and marked as aligned (no registration)."""
    shape, affine = aligned_grid()
    g = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    inside = (((g - centre) / np.array([70, 85, 60], np.float32)[:, None, None, None]) ** 2).sum(axis=0) < 1
    rng = np.random.default_rng(seed)
    data = np.where(inside, 100 + rng.normal(0, 5, shape), 0).astype(np.float32)
    mv = prepare(data, PreprocessConfig(image_size=SIZE))
    identity = Alignment(matrix=np.eye(4), shape=shape, affine=affine, input_shape=shape, offset=0.0, overlap=1.0,
                         seconds=0.0, registered=True)
    return replace(mv, alignment=identity)


@pytest.fixture(scope="module")
def volumes():
    return [aligned_volume(0), aligned_volume(1)]


def left_heat(mv, level: float) -> np.ndarray:
    """(n, S, S) heat `level` on the model columns of the brain's right half (the subject's left: radiological
    layout) and 0 on the others, over the volume's brain slices."""
    first, last = mv.slice_range
    heat = np.zeros((last - first + 1, SIZE, SIZE), np.float32)
    heat[:, :, SIZE // 2:] = level
    return heat * mv.brain_mask[first:last + 1]


def test_the_norm_is_the_mean_healthy_heat_where_it_usually_is(volumes):
    total = NormativeSum()
    for k, (mv, level) in enumerate(zip(volumes, (0.2, 0.4))):
        total.add(f"v{k}", mv, left_heat(mv, level))
    norm = total.build(timestep=100, draws=1, map_key=(0.0, 0, 0))
    assert norm.mean.shape == tuple(n // 2 for n in aligned_grid()[0]) and norm.volumes == ("v0", "v1")
    mv = volumes[0]
    first, last = mv.slice_range
    slices = norm.model_slices(mv)[first:last + 1]                        # (n, S, S)
    z = (last - first) // 2
    core = erode_brain(mv.brain_mask[first + z][None], 2)[0]              # away from the rim, sampled with outside
    core[:, SIZE // 2 - 3:SIZE // 2 + 3] = False                           # and from the step, smoothed across it
    hot, cold = core.copy(), core.copy()
    hot[:, :SIZE // 2], cold[:, SIZE // 2:] = False, False
    np.testing.assert_allclose(slices[z][hot], 0.3, atol=0.03)            # the mean of 0.2 and 0.4
    assert np.abs(slices[z][cold]).max() < 0.03                            # where healthy heat is never seen
    heat = np.full((1, SIZE, SIZE), 0.5, np.float32) * mv.brain_mask[first + z]
    beyond = excess(heat, slices[z][None], mv.brain_mask[first + z][None])[0]
    np.testing.assert_allclose(beyond[hot], 0.2, atol=0.03)                # 0.5 less the usual 0.3
    np.testing.assert_allclose(beyond[cold], 0.5, atol=0.03)               # nothing usual to take away
    assert norm.model_slices(mv) is norm.model_slices(mv)                  # sampled once per volume


def test_excess_signed_ranks_and_clipped_shows():
    heat = np.array([[[0.0, 0.1, 0.5]]], np.float32)
    norm = np.array([[[0.2, 0.2, 0.2]]], np.float32)
    inside = np.array([[[False, True, True]]])
    np.testing.assert_allclose(excess(heat, norm, inside), [[[0.0, 0.0, 0.3]]], atol=1e-7)
    np.testing.assert_allclose(excess(heat, norm, inside, signed=True), [[[FLOOR, -0.1, 0.3]]], atol=1e-7)
    options = MapOptions(normative=True)
    assert options.map_level and options.name == "_nm" and "healthy norm" in options.label
    np.testing.assert_allclose(options.clean_map(heat, inside, norm=norm), excess(heat, norm, inside))
    with pytest.raises(ValueError, match="norm's slices"):
        options.clean_map(heat, inside)
    with pytest.raises(ValueError, match="on or off"):
        MapOptions(normative=2)
    m = method_named("sss100_med3_nm_3d3_pp")
    assert m.options == MapOptions(median=3, normative=True, persist=3) and m.name == "sss100_med3_nm_3d3_pp"


def test_the_norm_fits_only_its_own_heat_maps(volumes):
    total = NormativeSum()
    total.add("v0", volumes[0], left_heat(volumes[0], 0.2))
    norm = total.build(timestep=100, draws=1, map_key=(0.0, 3, 0))
    assert norm.mismatch((100,), 1, (0.0, 3, 0)) is None
    assert "λ 100 alone" in norm.mismatch((150,), 1, (0.0, 3, 0))
    assert "λ 100 alone" in norm.mismatch((250, 300, 350, 400), 1, (0.0, 3, 0))
    assert "noise draw" in norm.mismatch((100,), 4, (0.0, 3, 0))
    assert "median" in norm.mismatch((100,), 1, (0.0, 0, 0))
    with pytest.raises(ValueError, match="aligned to the MNI template"):
        norm.model_slices(replace(volumes[0], alignment=None))
    with pytest.raises(ValueError, match="no healthy volume"):
        NormativeSum().build(100, 1, (0.0, 0, 0))


def test_a_checkpoint_keeps_its_norm_and_refuses_a_damaged_one(volumes, tiny_checkpoint, tmp_path):
    total = NormativeSum()
    total.add("v0", volumes[0], left_heat(volumes[0], 0.2))
    norm = total.build(timestep=100, draws=1, map_key=(0.0, 0, 0))
    payload = read_checkpoint(tiny_checkpoint(ALIGNED))
    payload["normative"] = norm.to_payload()
    torch.save(payload, tmp_path / "normed.pt")
    loaded = load_checkpoint(tmp_path / "normed.pt").normative
    np.testing.assert_allclose(loaded.mean, norm.mean, atol=1e-3)          # kept in float16
    assert (loaded.timestep, loaded.draws, loaded.map_key, loaded.volumes) == (100, 1, (0.0, 0, 0), ("v0",))
    payload["normative"]["mean"] = torch.zeros(3, 3, 3, dtype=torch.float16)
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="damaged healthy norm"):
        load_checkpoint(tmp_path / "damaged.pt")


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> list[Path]:
    """Three copies of the template seen through a known affine (test_align): two for the norm, one held out."""
    folder = tmp_path_factory.mktemp("subjects")
    first = make_subject(folder / "s0" / "t1.nii.gz")
    for k in (1, 2):
        (folder / f"s{k}").mkdir()
        shutil.copy(first, folder / f"s{k}" / "t1.nii.gz")
    return [folder / f"s{k}" / "t1.nii.gz" for k in range(3)]


CALIBRATE = ["--timestep", "40", "--budget", "0.05", "--device", "cpu"]


@pytest.fixture(scope="module")
def normed(subjects, tiny_checkpoint, tmp_path_factory) -> tuple[Path, dict, dict]:
    """sss-calibrate on the held-out subject with a norm made from the other two, and without one: (the normed
    checkpoint, its report, the plain run's report)."""
    ckpt, folder = tiny_checkpoint(ALIGNED), tmp_path_factory.mktemp("normed")
    reports = []
    for name, extra in (("normed", ["--normative-from", *map(str, subjects[:2])]), ("plain", [])):
        out = folder / f"{name}.pt"
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
            mp.setenv("SSS_VIEWER_CACHE_DIR", str(folder / "cache"))
            assert cal.main([str(ckpt), "--healthy", str(subjects[2]), *CALIBRATE, "--out", str(out), *extra]) == 0
        reports.append(json.loads(printed.getvalue()))
    return folder / "normed.pt", *reports


def test_sss_calibrate_makes_the_norm_and_the_tools_subtract_it(subjects, normed, tmp_path, capsys):
    out, report, plain = normed
    assert report["map_options"]["normative"] and report["normative"]["volumes"] == ["s0", "s1"]
    loaded = load_checkpoint(out)
    assert loaded.recommended.map_options == MapOptions(normative=True) and loaded.normative.timestep == 40
    assert "healthy norm of 2 volume(s): s0, s1" in loaded.recommended.source
    # the same scans without the norm: a threshold at least as high for the same budget
    assert plain["threshold"] >= report["threshold"] and not plain["map_options"]["normative"]

    # sss-detect: the checkpoint's norm by default; its heat map is the raw one less the norm, never above it
    for name, extra in (("normed", []), ("raw", ["--normative", "off"])):
        assert detect_main([str(subjects[2]), "--checkpoint", str(out), "--device", "cpu",
                            "--out", str(tmp_path / name), *extra]) == 0
    capsys.readouterr()
    import nibabel as nib
    normed, raw = (np.asarray(nib.load(str(tmp_path / d / "t1_error.nii.gz")).dataobj) for d in ("normed", "raw"))
    assert (normed <= raw + 1e-5).all() and normed.sum() < raw.sum()
    params = json.loads((tmp_path / "normed" / "t1.json").read_text())["parameters"]
    assert params["map_options"]["normative"] and params["normative_off"] is None
    # another timestep: the norm does not fit, so the checkpoint's is dropped and the JSON says why ...
    assert detect_main([str(subjects[2]), "--checkpoint", str(out), "--device", "cpu", "--timestep", "60",
                        "--out", str(tmp_path / "t60")]) == 0
    params = json.loads((tmp_path / "t60" / "t1.json").read_text())["parameters"]
    assert not params["map_options"]["normative"] and "λ 40 alone" in params["normative_off"]
    # ... and asking for it there is refused in one line
    assert detect_main([str(subjects[2]), "--checkpoint", str(out), "--device", "cpu", "--timestep", "60",
                        "--normative", "on", "--out", str(tmp_path / "refused")]) == 2
    assert "--normative on: the healthy norm is for λ 40 alone" in capsys.readouterr().err


def test_sss_eval_scores_the_norm_by_its_signed_excess(subjects, normed, tiny_checkpoint, tmp_path, capsys):
    import nibabel as nib
    image = nib.load(str(subjects[2]))
    lesion = np.zeros(image.shape, np.uint8)
    lesion[40:50, 35:45, 50:60] = 1                                      # a block inside the brain, ten slices
    nib.save(nib.Nifti1Image(lesion, image.affine), str(tmp_path / "seg.nii.gz"))
    (tmp_path / "manifest.csv").write_text(f"case,modality,image,mask\ns2,t1,{subjects[2]},{tmp_path / 'seg.nii.gz'}\n")
    args = ["--manifest", str(tmp_path / "manifest.csv"), "--modality", "t1", "--methods", "sss40_pp,sss40_nm_pp",
            "--device", "cpu", "--threshold", "0.05"]
    assert eval_main([*args, "--checkpoint", str(normed[0]), "--out", str(tmp_path / "eval")]) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "eval" / "table.csv"))}
    assert set(rows) == {"sss40_pp", "sss40_nm_pp"} and float(rows["sss40_nm_pp"]["auc_mean"]) > 0.5
    capsys.readouterr()
    plain = tiny_checkpoint(ALIGNED)
    assert eval_main([*args, "--checkpoint", str(plain), "--out", str(tmp_path / "refused")]) == 2
    assert "sss40_nm_pp subtracts the healthy norm, but the checkpoint has none" in capsys.readouterr().err


def test_sss_calibrate_refuses_a_norm_it_cannot_make(subjects, tiny_checkpoint, tmp_path, capsys):
    native = tiny_checkpoint(PreprocessConfig(image_size=32))
    base = ["--healthy", str(subjects[2]), "--device", "cpu", "--out", str(tmp_path / "x.pt")]
    assert cal.main([str(native), *base, "--normative-from", str(subjects[0])]) == 2
    assert "MNI-aligned brains" in capsys.readouterr().err
    aligned = tiny_checkpoint(ALIGNED)
    assert cal.main([str(aligned), *base, "--normative-from", str(subjects[2])]) == 2
    assert "both in --normative-from and --healthy" in capsys.readouterr().err
    assert cal.main([str(aligned), *base, "--normative", "on"]) == 2
    assert "it has none" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_the_viewer_subtracts_the_checkpoints_norm_where_it_fits(qtbot, subjects, normed, tmp_path, monkeypatch):
    pytest.importorskip("pytestqt")
    from sss_viewer.gui import texts
    from sss_viewer.gui.main_window import MainWindow
    from sss_viewer.gui.settings import Settings

    monkeypatch.setenv("SSS_VIEWER_CONFIG_DIR", str(tmp_path / "config"))
    w = MainWindow(Settings.load())
    qtbot.addWidget(w)
    assert not w.controls.normative_box.isEnabled()                      # no checkpoint, no norm
    w.start(subjects[2], normed[0], device="cpu")
    qtbot.waitUntil(lambda: w.shown is not None, timeout=60_000)
    st, mv, z = w.state, w.session.model_volume, w.state.slice
    assert st.normative and st.timestep == 40 and w.controls.normative_box.isChecked()
    assert w.controls.normative_box.isEnabled() and "healthy norm" in w.panels.mask.title.text()
    raw = w.session.cache.view(z, (40,), st.seed)
    norm = w.session.model.normative.model_slices(mv)[z]
    expected = excess(raw.errors, norm[None], mv.brain_mask[z][None])[0]
    assert np.allclose(w.panels.heat_image.image, expected) and (expected <= raw.heat + 1e-6).all()
    assert not np.allclose(expected, raw.heat)
    w.grab().save(str(tmp_path / "normative.png"))

    w.controls.normative_box.setChecked(False)                           # off: the raw map, no model call
    assert not st.normative and np.allclose(w.panels.heat_image.image, raw.heat)
    w.controls.normative_box.setChecked(True)
    st.set(timestep=60)                                                  # another λ: the norm does not fit there
    qtbot.waitUntil(lambda: w.shown is not None and w.shown.timesteps == (60,), timeout=60_000)
    assert texts.PANEL_NORM_OFF in w.panels.mask.title.text() and "λ 40 alone" in w.norm_problem()
    assert np.allclose(w.panels.heat_image.image, w.session.cache.view(z, (60,), st.seed).heat)
    w.close()
