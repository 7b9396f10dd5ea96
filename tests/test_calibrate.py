"""sss-calibrate: the flagged share per threshold by hand, the threshold within the budget, and the written copy."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sss_viewer.core.checkpoint import load_checkpoint, load_detector
from sss_viewer.core.config import PRESETS
from sss_viewer.core.hygiene import MapOptions
from sss_viewer.core.volume import load_volume, prepare
from trainer import calibrate as cal

RAS_1MM = np.array([[1.0, 0, 0, -8], [0, 1, 0, -8], [0, 0, 1, -8], [0, 0, 0, 1]])  # not the identity, which warns


def test_flagged_share_by_hand():
    brain = np.zeros((1, 12, 12), bool)
    brain[0, 1:11, 1:11] = True                                          # 100 brain pixels
    error = np.zeros((1, 12, 12), np.float32)
    error[0, 4:7, 4:7] = 0.5                                             # a 3 x 3 block ...
    error[0, 9, 9] = 0.2                                                 # ... and one weaker pixel
    curve = {t: cal.flagged_share(error, brain, t) for t in (0.1, 0.3, 0.5, 1.0)}
    assert curve[0.1] == 0.25               # the largest region after the 3 x 3 dilation: the 5 x 5 block
    assert curve[0.3] == 0.25 and curve[0.5] == 0.0 and curve[1.0] == 0.0


def test_the_threshold_is_refined_below_the_coarse_grid():
    """A share that drops within budget at 0.083 (two volumes, one of them always clean): the coarse grid gives
    0.09, the refinement 0.083; the curves cover both grids, and a clean model refines to the first fine step."""
    share = lambda volume, t: 0.0 if volume == "b" or t >= 0.083 else 0.02                  # noqa: E731
    curves = cal.smallest_within_budget(share, ["a", "b"], 0.005, "advice")
    assert curves.threshold == 0.083
    assert curves.thresholds == cal.THRESHOLDS[:8] + tuple(round(0.081 + 0.001 * j, 3) for j in range(9)) \
        + cal.THRESHOLDS[8:]
    assert curves.at(0.082) == {"a": 0.02, "b": 0.0} and curves.at(0.083) == {"a": 0.0, "b": 0.0}
    assert list(curves.thresholds) == sorted(curves.thresholds) and len(curves.flagged["a"]) == 109
    assert cal.smallest_within_budget(lambda v, t: 0.0, ["a"], 0.005, "advice").threshold == 0.001
    with pytest.raises(ValueError, match="over the budget of 0.5 %; advice"):
        cal.smallest_within_budget(lambda v, t: 0.01, ["a"], 0.005, "advice")


def brain(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    g = np.indices((30, 30, 12), dtype=np.float64)
    inside = ((g[0] - 14.5) / 13) ** 2 + ((g[1] - 14.5) / 12) ** 2 < 1
    data = np.where(inside, 100 + 10 * rng.normal(size=g[0].shape), 0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, RAS_1MM), str(path))
    return path


def test_threshold_is_the_smallest_within_the_budget(tmp_path, tiny_checkpoint):
    ckpt, detector = load_detector(tiny_checkpoint(PRESETS["tiny"].preprocess), "cpu")
    volumes = [(str(p), prepare(load_volume(p), ckpt.preset.preprocess))
               for p in (brain(tmp_path / "a.nii.gz", 0), brain(tmp_path / "b.nii.gz", 1))]
    result = cal.calibrate(detector, volumes, timestep=40, budget=0.02)
    mean = np.mean(list(result.flagged.values()), axis=0)
    k = result.thresholds.index(result.threshold)
    assert np.all(mean[k:] <= 0.02) and (k == 0 or mean[k - 1] > 0.02)
    assert 0 < k and set(result.at(result.threshold)) == {v[0] for v in volumes}
    with pytest.raises(ValueError, match="budget"):
        cal.calibrate(detector, volumes, timestep=300, budget=1e-9)    # a model that flags everything


def test_cli_writes_a_calibrated_copy(tmp_path, tiny_checkpoint, capsys):
    source = tiny_checkpoint(PRESETS["tiny"].preprocess, step=5)
    payload = torch.load(source, weights_only=True)
    payload["train_state"] = {"optimizer": {"exp_avg": torch.ones(3)}, "preset_name": "tiny"}  # as a ckpt_N.pt holds
    torch.save(payload, source)
    healthy = brain(tmp_path / "h.nii.gz", 2)
    out = tmp_path / "calibrated.pt"
    assert cal.main([str(source), "--healthy", str(healthy), "--out", str(out), "--budget", "0.05",
                     "--timestep", "40", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "train_state" not in torch.load(out, weights_only=True)                     # weights to run, not resume
    loaded = load_checkpoint(out)
    assert loaded.recommended.timestep == 40 and loaded.recommended.threshold == report["threshold"]
    assert "5 %" in loaded.recommended.source and "h.nii.gz" not in loaded.recommended.source
    assert loaded.step == 5 and all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                                      load_checkpoint(source).model.state_dict().values()))
    half = tmp_path / "half.pt"
    assert cal.main([str(source), "--healthy", str(healthy), "--out", str(half), "--budget", "0.05",
                     "--timestep", "40", "--device", "cpu", "--half"]) == 0
    report_half = json.loads(capsys.readouterr().out)
    stored = torch.load(half, weights_only=True)["ema"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert half.stat().st_size < 0.6 * out.stat().st_size
    assert load_checkpoint(half).recommended.threshold == report_half["threshold"]   # loads as fp32 weights
    before = source.read_bytes()
    for argv in ([str(source), "--healthy", str(healthy), "--out", str(source)],          # never over the input
                 [str(source), "--healthy", str(healthy), "--out", str(out), "--budget", "2"],
                 [str(source), "--healthy", str(tmp_path / "none.nii.gz"), "--out", str(tmp_path / "x.pt")]):
        assert cal.main(argv + ["--device", "cpu"]) == 2
        assert len([line for line in capsys.readouterr().err.splitlines() if line.strip()]) == 1
    assert source.read_bytes() == before and not (tmp_path / "x.pt").exists()


def test_map_options_are_calibrated_as_sss_eval_does_and_stored(tmp_path, tiny_checkpoint, capsys):
    """With map hygiene the flagged shares are those of sss-eval --calibrate's whole-volume masks of the same method,
    and the options are written beside the threshold."""
    from trainer import evaluate as ev
    ckpt, detector = load_detector(tiny_checkpoint(PRESETS["tiny"].preprocess), "cpu")
    volumes = [(str(p), prepare(load_volume(p), ckpt.preset.preprocess))
               for p in (brain(tmp_path / "a.nii.gz", 0), brain(tmp_path / "b.nii.gz", 1))]
    options = MapOptions(median=3, erode=1, min_area=4, persist=2)
    ours = cal.calibrate(detector, volumes, timestep=40, budget=0.02, options=options)
    method = ev.method_named("sss40" + options.name + "_pp")
    theirs = ev.calibrate_methods(list(ev.healthy_runs(detector, volumes, [method], seed=0)), [method], 0.02)
    assert ours.flagged == theirs.flagged[method.name] and ours.threshold == theirs.thresholds[method.name]
    assert ours.flagged != cal.calibrate(detector, volumes, timestep=40, budget=0.02).flagged

    source = tiny_checkpoint(PRESETS["tiny"].preprocess)
    out = tmp_path / "hygiene.pt"
    assert cal.main([str(source), "--healthy", str(tmp_path / "a.nii.gz"), "--out", str(out), "--budget", "0.05",
                     "--timestep", "40", "--device", "cpu", "--median", "3", "--persist", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    rec = load_checkpoint(out).recommended
    assert rec.map_options == MapOptions(median=3, persist=2) and report["map_options"]["name"] == "_med3_3d2"
    assert "median 3×3" in rec.source and rec.threshold == report["threshold"]
    assert cal.main([str(source), "--healthy", str(tmp_path / "a.nii.gz"), "--out", str(tmp_path / "x.pt"),
                     "--median", "2", "--device", "cpu"]) == 2                       # even: refused, nothing written
    assert "odd" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
