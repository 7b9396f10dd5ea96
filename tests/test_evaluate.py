"""sss-eval: slice selection, metrics hand-computed with an oracle detector, tables, figure PNG, bad inputs."""

import csv
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sss_viewer.core.anomaly import Reconstruction
from sss_viewer.core.checkpoint import Recommended
from sss_viewer.core.config import PreprocessConfig
from sss_viewer.core.hygiene import MapOptions
from trainer import evaluate as ev
from trainer import figures
from trainer.baselines import IntensityBaseline, budget_threshold
from trainer.png import write_png

RAS_1MM = np.array([[1.0, 0, 0, -8], [0, 1, 0, -8], [0, 0, 1, -8], [0, 0, 0, 1]])  # not the identity, which warns

NO_MARGIN = PreprocessConfig(image_size=32, margin=0.0)  # 32 mm brain box: 1 mm model pixels, canonical flipped


def synthetic_case(tmp_path: Path, name: str = "case", lesion: bool = True,
                   blob: float | None = None) -> tuple[Path, Path]:
    """32 x 32 x 8 RAS volume, brain (100..193) on slices 1..6 filling the plane, an 8 x 8 lesion on slices 2..5,
    of intensity `blob` when given (else it looks like brain)."""
    g = np.indices((32, 32, 8), dtype=np.float32)
    image = np.where((g[2] >= 1) & (g[2] <= 6), 100 + g[0] + 2 * g[1], 0).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    if lesion:
        mask[10:18, 12:20, 2:6] = 2          # any label > 0 is anomalous
    if blob is not None:
        image[10:18, 12:20, 2:6] = blob
    nib.Nifti1Image(image, RAS_1MM).to_filename(str(tmp_path / f"{name}.nii.gz"))
    nib.Nifti1Image(mask, RAS_1MM).to_filename(str(tmp_path / f"{name}_seg.nii.gz"))
    return tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz"


# In model space (row = 31 - y, column = 31 - x) the lesion is rows 12..19, columns 14..21. The oracle flags
# the same 8 x 8 square shifted right by SHIFT[z] columns on lesion slice z, nothing elsewhere.
TRUTH_ROWS, TRUTH_COLS = slice(12, 20), slice(14, 22)
SHIFT = {2: 0, 3: 2, 4: 4, 5: 6}


class OracleDetector:
    """Detector stand-in: its heat map is exactly 1 on the shifted square and 0 elsewhere; records its calls."""

    def __init__(self):
        self.calls = []

    def reconstruct(self, slices, timestep, seed=0, indices=None, brain=None, iterative=False, progress=None):
        self.calls.append((timestep, iterative, tuple(indices)))
        error = np.zeros(slices.shape, np.float32)                           # (B, S, S)
        for i, z in enumerate(indices):
            if z in SHIFT:
                error[i, TRUTH_ROWS, 14 + SHIFT[z]:22 + SHIFT[z]] = 1.0
        if brain is not None:
            error *= brain
        return Reconstruction(slices=np.asarray(indices), timestep=timestep, recon=slices - np.sqrt(error),
                              error=error)


def expected(tp_cols: dict[int, int], pred_px: dict[int, int]) -> dict[str, list[float]]:
    """Per-slice metrics from counts: truth 64 px in a 1024-px slice, TP = 8 rows x tp_cols, pred_px flagged."""
    out = {k: [] for k in ev.METRICS}
    for z in sorted(tp_cols):
        tp = 8 * tp_cols[z]
        fp, fn = pred_px[z] - tp, 64 - tp
        out["dice"].append(2 * tp / (2 * tp + fp + fn))
        out["iou"].append(tp / (tp + fp + fn))
        out["precision"].append(tp / (tp + fp))
        out["recall"].append(tp / (tp + fn))
        out["auc"].append((1 + tp / 64 - fp / 960) / 2)   # binary score: AUC = (1 + TPR - FPR) / 2
    return out


def test_select_slices_equidistant_within_lesion_range():
    truth = np.zeros((40, 4, 4), bool)
    truth[10:30, 1, 1] = True                                                # L = 20 slices
    assert ev.select_slices(truth, (0, 39)) == (12, 17, 22, 27)              # middles of 4 parts, spacing 5
    truth[:] = False
    truth[10:14, 1, 1] = True
    assert ev.select_slices(truth, (0, 39)) == (10, 11, 12, 13)
    truth[:] = False
    truth[[10, 11, 12, 27, 28, 29], 1, 1] = True                             # two lesions with a gap
    assert ev.select_slices(truth, (0, 39)) == (12, 27)
    truth[:] = False
    truth[2:6, 1, 1] = True
    assert ev.select_slices(truth, (4, 30)) == (4, 5)                        # brain slices only
    with pytest.raises(ev.EvalError):
        ev.select_slices(truth, (8, 30))


def test_oracle_metrics_are_exactly_as_hand_computed(tmp_path):
    image, mask = synthetic_case(tmp_path)
    case = ev.prepare_case("c1", image, mask, NO_MARGIN)
    assert case.slices == (2, 3, 4, 5) and case.volume.slice_range == (1, 6)
    expect_truth = np.zeros((32, 32), bool)
    expect_truth[TRUTH_ROWS, TRUTH_COLS] = True
    for z in range(8):
        np.testing.assert_array_equal(case.truth[z], expect_truth if z in SHIFT else False)

    healthy = ev.prepare_case("h", *synthetic_case(tmp_path, "h"), NO_MARGIN).volume
    methods = [ev.METHODS[n] for n in ("sss300", "sss250_pp", "consensus", "anoddpm300")]
    oracle = OracleDetector()
    result = ev.evaluate(oracle, [case], methods, threshold=0.3, seed=0, healthy=[("h", healthy)])

    raw = expected({z: 8 - s for z, s in SHIFT.items()}, {z: 64 for z in SHIFT})
    # Post-processed: the square dilated to 10 x 10 (rows 11..20, columns 13+s..22+s) overlaps 8 rows of truth.
    pp = expected({z: min(21, 22 + s) - max(14, 13 + s) + 1 for z, s in SHIFT.items()}, {z: 100 for z in SHIFT})
    pp["auc"] = raw["auc"]                                                  # AUC scores the heat map, not the mask
    rows = {r["method"]: r for r in result.table}
    assert list(rows) == ["sss300", "sss250_pp", "consensus", "anoddpm300"]
    for name, want in (("sss300", raw), ("anoddpm300", raw), ("sss250_pp", pp), ("consensus", pp)):
        assert rows[name]["n_slices"] == 4
        for metric, values in want.items():
            assert rows[name][f"{metric}_mean"] == pytest.approx(np.mean(values), abs=1e-12), (name, metric)
            assert rows[name][f"{metric}_std"] == pytest.approx(np.std(values), abs=1e-12), (name, metric)
        assert 0 < rows[name]["time_per_slice_s"] < 1
    assert rows["sss300"]["dice_mean"] == pytest.approx(0.625)             # (1 + 0.75 + 0.5 + 0.25) / 4

    # The iterative chain is used for anoddpm*, single steps for the rest, at the methods' timesteps.
    protocol = (2, 3, 4, 5)
    assert {(t, it) for t, it, idx in oracle.calls if idx == protocol} == {
        (300, False), (250, False), (350, False), (400, False), (300, True)}
    assert not any(it for t, it, idx in oracle.calls if idx != protocol)

    vol = ev.volume_dice_summary(result)
    assert vol["sss300"]["mean"] == pytest.approx(2 * 8 * (8 + 6 + 4 + 2) / (256 + 256))  # all brain slices
    assert "anoddpm300" not in vol
    # Over the 6 x 1024 brain pixels: 256 flagged (score 1), 160 of them lesion; 256 lesion pixels. A binary heat
    # map has two thresholds: recall and precision 160/256 at the first, then recall 1 and precision 256/6144.
    per_volume = result.results[0].volume["sss300"]
    assert per_volume["dice"] == per_volume["best_dice"] == pytest.approx(0.625)          # any E in (0, 1) alike
    assert per_volume["best_threshold"] == 0.01                                           # the lowest of the best
    assert per_volume["auroc"] == pytest.approx((1 + 160 / 256 - 96 / 5888) / 2)
    assert per_volume["auprc"] == pytest.approx((160 / 256) ** 2 + (96 / 256) * (256 / 6144))
    assert per_volume["slice_dice"] == pytest.approx(0.625)                # the protocol's, without 3-D regions
    assert result.results[0].volume["consensus"]["auprc"] == pytest.approx(per_volume["auprc"])  # same heat map
    assert "anoddpm300" not in result.results[0].volume
    sweep = result.sweep["sss300"]
    assert sweep["best_threshold"] == 0.01 and sweep["best_dice"] == pytest.approx(0.625)
    assert sweep["dice_mean"][-1] == 0.0                   # E > 1.0 flags nothing
    # The healthy volume gets the same flagged squares: 4 x 64 of its 6 x 1024 brain pixels.
    assert result.healthy_fpr["sss300"]["mean"] == pytest.approx(256 / 6144)
    assert result.healthy_fpr["consensus"]["mean"] == pytest.approx(400 / 6144)
    assert "anoddpm300" not in result.healthy_fpr


class TwoSquaresDetector(OracleDetector):
    """Heat LEVELS[z] = (on the lesion, on a lesion-sized square at the corner): slice 2 wants a high threshold,
    slice 3 a low one, 4 and 5 any."""
    LEVELS = {2: (0.9, 0.3), 3: (0.2, 0.6), 4: (1.0, 0.0), 5: (1.0, 0.0)}

    def reconstruct(self, slices, timestep, seed=0, indices=None, brain=None, iterative=False, progress=None):
        error = np.zeros(slices.shape, np.float32)                           # (B, S, S)
        for i, z in enumerate(indices):
            lesion, corner = self.LEVELS.get(z, (0.0, 0.0))
            error[i, TRUTH_ROWS, TRUTH_COLS], error[i, :8, :8] = lesion, corner
        return Reconstruction(slices=np.asarray(indices), timestep=timestep, recon=slices - np.sqrt(error),
                              error=error)


def test_threshold_sweep_best_threshold_and_ceiling(tmp_path):
    case = ev.prepare_case("c1", *synthetic_case(tmp_path), NO_MARGIN)
    result = ev.evaluate(TwoSquaresDetector(), [case], [ev.METHODS["sss300"]], threshold=0.37, seed=0)
    sweep = result.sweep["sss300"]
    assert sweep["thresholds"] == sorted([*ev.SWEEP_THRESHOLDS, 0.37])      # and the one the masks used
    both = 2 * 64 / (128 + 64)                                               # the lesion and the corner flagged
    # One threshold for all: below 0.2 both squares on slices 2 and 3 (the best); from 0.3 to 0.6 slice 2 alone
    # right and slice 3 wrong.
    assert sweep["best_threshold"] == 0.01 and sweep["best_dice"] == pytest.approx((2 * both + 2) / 4)
    for thr in (0.37, 0.4):
        assert sweep["dice_mean"][sweep["thresholds"].index(thr)] == pytest.approx((1 + 0 + 2) / 4)
    # Each slice its own: slice 2 is perfect from 0.3 on, slice 3 cannot beat both squares.
    assert sweep["ceiling_dice"] == pytest.approx((1 + both + 2) / 4)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint(NO_MARGIN, step=11)


def read_png(path: Path) -> np.ndarray:
    """Decode our own PNG layout (8-bit RGB, filter 0 rows) and check every chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_round_trip_and_inferno_ends(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_png(write_png(tmp_path / "x.png", rgb)), rgb)
    ramp = figures.inferno(np.array([[-1.0, 0.0, 0.5, 1.0, 9.0]]))
    assert ramp[0, 0].tolist() == [0, 0, 4] == ramp[0, 1].tolist() and ramp[0, 2].tolist() == [188, 55, 84]
    assert ramp[0, 3].tolist() == [252, 255, 164] == ramp[0, 4].tolist()


def write_manifest(tmp_path: Path, rows: list[list[str]]) -> Path:
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["case", "modality", "image", "mask", "mask_source"], *rows])
    return path


def test_cli_writes_tables_and_figure_deterministically(tmp_path, checkpoint, capsys):
    synthetic_case(tmp_path, "c1")
    healthy, _ = synthetic_case(tmp_path, "h", lesion=False)
    manifest = write_manifest(tmp_path, [["c1", "t1", "c1.nii.gz", "c1_seg.nii.gz", "expert"],
                                         ["c1", "flair", "nope.nii.gz", "nope.nii.gz", "expert"]])
    outs = [tmp_path / "a", tmp_path / "b"]
    methods = ["sss300_pp", "sss250", "intensity", "intensity_pp"]
    for out in outs:
        status = ev.main(["--manifest", str(manifest), "--out", str(out), "--checkpoint", str(checkpoint),
                          "--device", "cpu", "--methods", ",".join(methods), "--healthy", str(healthy),
                          "--seed", "5"])
        assert status == 0
    assert capsys.readouterr().err.strip() == ""
    with open(outs[0] / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(ev.TABLE_COLUMNS) == [
        "method", "n_slices", "dice_mean", "dice_std", "iou_mean", "iou_std", "precision_mean", "precision_std",
        "recall_mean", "recall_std", "auc_mean", "auc_std", "time_per_slice_s"]                   # the contract
    assert [r["method"] for r in table] == methods and all(r["n_slices"] == "4" for r in table)
    md = (outs[0] / "table.md").read_text()
    assert md.index("| Method | Dice | IoU | Precision | Recall | AUC | Time (s) |") < md.index("⌈Dice⌉")
    assert "SSS t = 300 (with postprocessing)" in md and "optimistic" in md and "Healthy FPR" in md
    assert ("| Method | Threshold | Volume Dice | ⌈Dice⌉ (optimistic) | AUROC | AUPRC | Slice Dice, volume mask | "
            "Healthy FPR | Best slice threshold | Slice Dice at it (optimistic) |") in md
    assert "**Optimistic: the threshold is chosen on the test data**" in md and "average precision" in md
    assert "| Intensity threshold (no model) | 1.0000 |" in md and "Intensity threshold (no model, with post" in md
    # The ramp's top 1 % is clipped to 1 in model space: more than the 0.5 % budget, so the threshold is the ceiling.
    assert "calibrated to flag at most 0.5 % of the brain pixels of the --healthy volume(s)" in md
    assert "It flags nothing" in md
    extra = [json.loads((o / "extra.json").read_text()) for o in outs]
    assert extra[0]["per_slice"] == extra[1]["per_slice"]                 # same seed, same numbers
    assert extra[0]["cases"][0]["slices"] == [2, 3, 4, 5]
    assert extra[0]["checkpoint"]["step"] == 11 and set(extra[0]["volume_dice"]) == set(methods)
    assert set(extra[0]["healthy_false_positive_rate"]) == set(methods)
    per_method = extra[0]["volume_metrics"]["per_method"]
    assert set(per_method) == set(methods)
    assert set(per_method["intensity"]) == {"dice", "best_dice", "auroc", "auprc", "slice_dice", "best_threshold"}
    assert set(per_method["sss250"]["auprc"]) == {"mean", "std", "per_case"}
    assert extra[0]["intensity_baseline"]["threshold"] == 1.0 and extra[0]["intensity_baseline"]["sign"] == -1
    image = read_png(outs[0] / "figure.png")
    assert image.shape[1] > 5 * 192 and image.shape[0] > 4 * 192           # 5 columns, 4 rows of slices


def test_cli_several_seeds_pool_table_2_and_keep_each_seed(tmp_path, checkpoint, capsys):
    synthetic_case(tmp_path, "c1")
    healthy, _ = synthetic_case(tmp_path, "h", lesion=False)
    manifest = write_manifest(tmp_path, [["c1", "t1", "c1.nii.gz", "c1_seg.nii.gz", "expert"]])
    common = ["--manifest", str(manifest), "--checkpoint", str(checkpoint), "--device", "cpu", "--methods",
              "sss300_pp,sss250,intensity", "--healthy", str(healthy)]
    assert ev.main([*common, "--out", str(tmp_path / "one"), "--seed", "6"]) == 0
    assert ev.main([*common, "--out", str(tmp_path / "both"), "--seeds", "5,6,5"]) == 0
    assert capsys.readouterr().err.strip() == ""
    both = tmp_path / "both"
    assert {p.name for p in both.iterdir()} == {"table.csv", "table.md", "extra.json", "figure.png", "seed-5", "seed-6"}
    one = json.loads((tmp_path / "one" / "extra.json").read_text())
    seed6 = json.loads((both / "seed-6" / "extra.json").read_text())
    assert seed6["per_slice"] == one["per_slice"] and seed6["seed"] == 6     # a seed's run as if alone
    seed5 = json.loads((both / "seed-5" / "extra.json").read_text())
    auc = {s: [r["auc"] for r in x["per_slice"] if r["method"] == "sss250"] for s, x in ((5, seed5), (6, seed6))}
    assert auc[5] != auc[6]                                                   # the seeds drew different noise

    def rows(path: Path) -> dict[str, dict]:
        with open(path) as f:
            return {r["method"]: r for r in csv.DictReader(f)}

    pooled, per_seed = rows(both / "table.csv"), [rows(both / f"seed-{s}" / "table.csv") for s in (5, 6)]
    for name, row in pooled.items():
        assert row["n_slices"] == "8"                                         # 4 protocol slices x 2 seeds
        assert float(row["auc_mean"]) == pytest.approx(np.mean([float(t[name]["auc_mean"]) for t in per_seed]),
                                                       abs=2e-6)
        records = [r["dice"] for x in (seed5, seed6) for r in x["per_slice"] if r["method"] == name]
        assert float(row["dice_std"]) == pytest.approx(np.std(records), abs=2e-6)
    summary = json.loads((both / "extra.json").read_text())
    assert summary["seeds"] == [5, 6] and summary["seed_dirs"] == ["seed-5", "seed-6"]
    spread = summary["across_seeds"]["sss250"]["auc"]
    assert spread["per_seed"] == {"5": pytest.approx(np.nanmean(auc[5])), "6": pytest.approx(np.nanmean(auc[6]))}
    assert spread["mean"] == pytest.approx(np.mean(list(spread["per_seed"].values())))
    assert "threshold" not in summary["across_seeds"]["intensity"]           # the baseline has no noise
    assert set(summary["across_seeds"]["sss300_pp"]) == set(ev.SEED_METRICS)
    ceiling = [json.loads((both / f"seed-{s}" / "extra.json").read_text())["threshold_sweep"]["per_method"]["sss250"]
               ["ceiling_dice"] for s in (5, 6)]
    assert summary["across_seeds"]["sss250"]["ceiling_dice"]["per_seed"] == {"5": ceiling[0], "6": ceiling[1]}
    md = (both / "table.md").read_text()
    assert "Noise seeds 5, 6" in md and "## Across noise seeds" in md and "seed-<N>/" in md
    threshold = summary["across_seeds"]["sss250"]["threshold"]["per_seed"]["5"]
    assert f"| SSS t = 250 | {threshold:.3f} / {threshold:.3f} ({threshold:.3f} ± 0.000) | " in md   # no calibration
    assert f"{spread['per_seed']['5']:.3f} / {spread['per_seed']['6']:.3f} ({spread['mean']:.3f} ± " in md
    read_png(both / "figure.png")

    for bad in (["--seed", "1", "--seeds", "2,3"], ["--seeds", "a,b"], ["--seeds", ","]):
        with pytest.raises(SystemExit) as exc:
            ev.main([*common, "--out", str(tmp_path / "bad"), *bad])
        assert exc.value.code == 2 and "seed" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, checkpoint, capsys):
    image, _ = synthetic_case(tmp_path, "c1")
    synthetic_case(tmp_path, "empty", lesion=False)
    out = tmp_path / "out"

    def run(manifest, *extra) -> list[str]:
        status = ev.main(["--manifest", str(manifest), "--out", str(out), "--checkpoint", str(checkpoint),
                          "--device", "cpu", *extra])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and not out.exists()
        return lines

    assert "does-not-exist.csv" in run(tmp_path / "does-not-exist.csv")[0]
    (tmp_path / "nomask.csv").write_text("case,modality,image\nc1,t1,c1.nii.gz\n")
    assert "mask" in run(tmp_path / "nomask.csv")[0]
    good = write_manifest(tmp_path, [["c1", "t1", "c1.nii.gz", "c1_seg.nii.gz", "expert"]])
    assert "flair" in run(good, "--modality", "flair")[0]
    lines = run(write_manifest(tmp_path, [["c1", "t1", "c1.nii.gz", "c1_seg.nii.gz", ""],
                                          ["e", "t1", "empty.nii.gz", "empty_seg.nii.gz", ""],
                                          ["m", "t1", "missing.nii.gz", "c1_seg.nii.gz", ""]]))
    assert len(lines) == 2 and "empty_seg.nii.gz" in lines[0] and "missing.nii.gz" in lines[1]
    (tmp_path / "bad.pt").write_bytes(b"junk")
    lines = run(good, "--checkpoint", str(tmp_path / "bad.pt"))
    assert len(lines) == 1 and "bad.pt" in lines[0]
    with pytest.raises(SystemExit) as exc:
        ev.main(["--manifest", str(good), "--out", str(out), "--methods", "sss300,nope"])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err
    assert ev.build_parser().parse_args(["--manifest", "m", "--out", "o"]).methods is None   # the checkpoint's
    assert [m.name for m in ev.default_methods(Recommended())] == list(ev.DEFAULT_METHODS)
    models = [n for n in ev.DEFAULT_METHODS if n not in ev.BASELINES]
    assert [m.name for m in ev.default_methods(Recommended(timestep=200))] == models + ["sss200", "sss200_pp",
                                                                                       *ev.BASELINES]
    stored = Recommended(timestep=100, map_options=MapOptions(median=3, persist=3))   # and its own map options
    assert [m.name for m in ev.default_methods(stored)] == models + ["sss100", "sss100_pp", "sss100_med3_3d3_pp",
                                                                     *ev.BASELINES]
    assert ev.BASELINES == ("intensity", "intensity_pp") and set(ev.BASELINES) <= set(ev.DEFAULT_METHODS)
    dwi = write_manifest(tmp_path, [["c1", "dwi", "c1.nii.gz", "c1_seg.nii.gz", ""]])
    lines = run(dwi, "--modality", "dwi", "--methods", "intensity")
    assert len(lines) == 1 and "dwi" in lines[0] and "intensity" in lines[0]


def test_methods_at_any_timestep_and_case_selection(tmp_path):
    assert ev.method_named("sss300_pp") is ev.METHODS["sss300_pp"]
    m = ev.method_named("sss175_pp")
    assert (m.timesteps, m.iterative, m.postprocess, m.label) == ((175,), False, True,
                                                                  "SSS t = 175 (with postprocessing)")
    assert ev.method_named("anoddpm90").iterative and ev.method_named("sss") is None
    assert ev.method_named("sss3000") is None and ev.method_named("ssx200") is None
    assert ev.method_named("sss300").options == MapOptions() == ev.method_named("anoddpm90_pp").options
    manifest = write_manifest(tmp_path, [["a", "t1", "a.nii.gz", "a_seg.nii.gz", ""],
                                         ["b", "t1", "b.nii.gz", "b_seg.nii.gz", ""],
                                         ["b", "flair", "bf.nii.gz", "b_seg.nii.gz", ""]])
    assert [r.case for r in ev.read_manifest(manifest, "t1", cases=["b"])] == ["b"]
    with pytest.raises(ev.EvalError, match="case.*c"):
        ev.read_manifest(manifest, "t1", cases=["b", "c"])


def test_intensity_baseline_threshold_and_blobs(tmp_path):
    """The baseline's threshold is the healthy-calibrated one, and it finds a bright blob on a FLAIR-like case and a
    dark one on a T1-like case: each clipped to the end of model space, the brain's ramp well inside."""
    healthy = ev.prepare_case("h", *synthetic_case(tmp_path, "h"), NO_MARGIN).volume
    data = np.full(healthy.data.shape, -1.0, np.float32)                   # (8, 32, 32)
    data[1:7] = 0.0                                                         # the brain slices: 6 x 1024 pixels
    data[3, :2, :20] = (0.5 + 0.01 * np.arange(40)).reshape(2, 20)        # 0.50, 0.51, ..., 0.89
    bright = [("h", replace(healthy, data=data))]
    dark = [("h", replace(healthy, data=-data))]
    # 0.5 % of 6144 pixels = 30.72: at most 30 above the threshold, so it is the 31st highest score, 0.59.
    assert budget_threshold(np.r_[np.zeros(6104), 0.5 + 0.01 * np.arange(40)], 0.005) == pytest.approx(0.59)
    assert budget_threshold(np.r_[np.zeros(990), np.ones(10)], 0.005) == 1.0   # ties at it stay unflagged
    methods = [ev.METHODS["intensity"], ev.METHODS["intensity_pp"]]
    for modality, blob, calibration in (("flair", 400.0, bright), ("t1", 20.0, dark)):
        case = ev.prepare_case(modality, *synthetic_case(tmp_path, modality, blob=blob), NO_MARGIN)
        baseline = IntensityBaseline.calibrate(modality, calibration)
        assert baseline.sign == (1 if modality == "flair" else -1)
        assert baseline.threshold == pytest.approx(0.59, abs=1e-6)
        oracle = OracleDetector()
        result = ev.evaluate(oracle, [case], methods, healthy=calibration, intensity=baseline)
        assert oracle.calls == []                                           # no model call at all
        rows = {r["method"]: r for r in result.table}
        assert rows["intensity"]["dice_mean"] == 1.0 and rows["intensity"]["auc_mean"] == 1.0
        assert rows["intensity_pp"]["dice_mean"] == pytest.approx(2 * 64 / (100 + 64))   # dilated to 10 x 10
        assert result.results[0].thresholds["intensity"] == baseline.threshold
        per_volume = result.results[0].volume["intensity"]
        assert [per_volume[k] for k in ev.VOLUME_METRICS] == [1.0] * 5   # Dice, ⌈Dice⌉, AUROC, AUPRC, slice Dice
        assert result.healthy_fpr["intensity"]["mean"] == pytest.approx(30 / 6144)
        md = ev.table_md(result, "synthetic")
        assert "reconstruction (none: black" in md and f"shows lesions {'bright' if blob > 100 else 'dark'}" in md
        assert ev.figure(result).shape[2] == 3                              # no model: a black reconstruction
        wrong_way = IntensityBaseline.calibrate("t1" if modality == "flair" else "flair", calibration)
        assert ev.evaluate(oracle, [case], methods[:1], intensity=wrong_way).table[0]["recall_mean"] == 0.0

    own = IntensityBaseline.calibrate("flair", [])                          # no healthy volumes: each case's own
    first, last = case.volume.slice_range
    brain = case.volume.brain_mask[first:last + 1]
    assert own.threshold is None
    assert own.threshold_for(case.volume) == budget_threshold(-case.volume.data[first:last + 1][brain], 0.005)
    assert "that case's own brain" in own.describe()
    assert "Cross-modality" in IntensityBaseline.calibrate("flair", bright, ["t1"]).describe()
    with pytest.raises(ev.EvalError, match="IntensityBaseline"):
        ev.evaluate(OracleDetector(), [case], methods)


def test_method_names_with_map_hygiene_round_trip():
    for name in ("sss300_lp1_med3_er2_min20_3d3_pp", "sss250_lp1.5", "sss300_med5", "sss300_er2_pp", "sss175_min20",
                 "sss300_3d3", "anoddpm250_med3_pp", "sss100_nm_3d3_pp", "sss100_er2_nm"):
        m = ev.method_named(name)
        assert m.name == name and ev.method_named(m.name) == m
        kind = "anoddpm" if m.iterative else "sss"
        assert f"{kind}{m.timesteps[0]}{m.options.name}{'_pp' if m.postprocess else ''}" == name
    m = ev.method_named("sss300_lp1_med3_er2_min20_3d3_pp")
    assert m.options == MapOptions(lowpass=1, median=3, erode=2, min_area=20, persist=3) and m.postprocess
    assert m.label == ("SSS t = 300, low-pass σ 1 px, median 3×3, brain eroded 2 px, regions ≥ 20 px, 3-D regions "
                       "over ≥ 3 slices (whole volumes) (with postprocessing)")
    assert ev.method_named("sss300_lp1.0_med03").name == "sss300_lp1_med3"          # canonical
    assert ev.method_named("sss300_med0_pp") is ev.METHODS["sss300_pp"]
    for bad in ("sss300_pp_med3", "sss300_med3_lp1", "sss300_lp", "sss300_3d", "consensus_med3", "sss300_nm_er2"):
        assert ev.method_named(bad) is None, bad                                    # fixed order, values required
    with pytest.raises(ValueError, match="odd"):
        ev.method_named("sss300_med4")
    assert [m.name for m in ev.parse_methods("sss300_med3,sss300_med03,sss300")] == ["sss300_med3", "sss300"]
    with pytest.raises(Exception, match="odd"):
        ev.parse_methods("sss300_med4")
    methods_help = next(a.help for a in ev.build_parser()._actions if "--methods" in a.option_strings)
    assert "sss<T>[_lp<sigma>][_med<k>][_er<px>][_nm][_min<px>][_3d<n>][_pp]" in methods_help


def test_map_hygiene_in_the_protocol_and_volume_metrics(tmp_path):
    """Oracle squares (8 x 8 on lesion slices 2..5): _3d5 empties the volume masks and leaves the protocol slices,
    _3d4 keeps them; _min65 drops every square; _er2 leaves these (far from the rim) alone; _lp1 blurs the map."""
    case = ev.prepare_case("c1", *synthetic_case(tmp_path), NO_MARGIN)
    healthy = ev.prepare_case("h", *synthetic_case(tmp_path, "h"), NO_MARGIN).volume
    names = ("sss300", "sss300_3d5", "sss300_3d4", "sss300_min65", "sss300_min64", "sss300_er2", "sss300_lp1",
             "sss300_med3_pp")
    methods = [ev.method_named(n) for n in names]
    result = ev.evaluate(OracleDetector(), [case], methods, threshold=0.3, healthy=[("h", healthy)])
    rows = {r["method"]: r for r in result.table}
    vol = result.results[0].volume
    for name in ("sss300_3d5", "sss300_3d4", "sss300_min64", "sss300_er2"):   # the protocol: no persist
        assert rows[name]["dice_mean"] == rows["sss300"]["dice_mean"] == pytest.approx(0.625)
    assert vol["sss300_3d5"]["dice"] == 0.0 and vol["sss300_3d5"]["best_dice"] == 0.0
    assert vol["sss300_3d5"]["slice_dice"] == 0.0 and vol["sss300_3d4"]["slice_dice"] == pytest.approx(0.625)
    assert result.healthy_fpr["sss300_3d5"]["mean"] == 0.0
    for name in ("sss300_3d4", "sss300_min64", "sss300_er2"):
        assert vol[name]["dice"] == vol["sss300"]["dice"] and vol[name]["auprc"] == vol["sss300"]["auprc"]
        assert result.healthy_fpr[name]["mean"] == result.healthy_fpr["sss300"]["mean"]
    assert rows["sss300_min65"]["dice_mean"] == 0.0 and vol["sss300_min65"]["dice"] == 0.0
    assert rows["sss300_min65"]["auc_mean"] == rows["sss300"]["auc_mean"]   # the map itself is unchanged
    # Low-pass: the blurred square's error is below 1 at its rim, so the 0.3 mask shrinks (and the AUC changes).
    lp = result.results[0].maps(ev.method_named("sss300_lp1"))[0]           # (4, 32, 32)
    assert lp.max() < 1.0 and lp[0, 15, 17] > 0.9 and lp[0, 12, 14] < 0.3
    assert rows["sss300_lp1"]["auc_mean"] != rows["sss300"]["auc_mean"]
    assert rows["sss300_med3_pp"]["dice_mean"] > 0
    md = ev.table_md(result, "synthetic")
    assert "| SSS t = 300, 3-D regions over ≥ 5 slices (whole volumes) |" in md
    assert "has no neighbouring slices, so its masks are made without it" in md
    extra = ev.extra_json(result, {})
    assert extra["map_options"]["per_method"]["sss300_lp1"]["lowpass"] == 1.0
    assert extra["map_options"]["per_method"]["sss300"]["name"] == ""
    plain = ev.evaluate(OracleDetector(), [case], methods[:1], threshold=0.3)
    assert "Map hygiene" not in ev.table_md(plain, "synthetic")              # the paper's rows: the paper's text


# --calibrate: a graded oracle. On lesion slices z (2..5) the shifted square has error 0.655 and 16 lone pixels,
# far from it and from each other (rows 2 and 6, every 4th column), 0.345; nothing elsewhere.
LONE_ROWS, LONE_COLS = (2, 6), tuple(range(2, 32, 4))


class GradedDetector(OracleDetector):
    def reconstruct(self, slices, timestep, seed=0, indices=None, brain=None, iterative=False, progress=None):
        rec = super().reconstruct(slices, timestep, seed, indices, brain, iterative, progress)
        error = 0.655 * rec.error                                            # (B, S, S): the square
        for i, z in enumerate(indices):
            if z in SHIFT:
                error[i][np.ix_(LONE_ROWS, LONE_COLS)] = 0.345
        if brain is not None:
            error *= brain
        return Reconstruction(slices=rec.slices, timestep=timestep, recon=slices - np.sqrt(error), error=error)


def test_calibrate_gives_each_method_its_own_healthy_threshold(tmp_path):
    """Healthy volume: 6 x 1024 brain pixels; on 4 slices a 64-px square (0.655) and 16 lone pixels (0.345).
    Budget 5 % = 307.2 px. sss300: 320 px below 0.345, 256 from 0.345 to 0.654, 0 from 0.655 (float32 0.345 and
    0.655 lie just below) -> 0.35 on the coarse grid, 0.345 refined. sss300_min2 drops the lone pixels: at most 256
    -> 0.001. sss300_pp: the square dilated to 10 x 10, largest region only: 400 px up to 0.654 -> 0.655.
    sss300_3d5 spans 4 slices only: nothing -> 0.001. anoddpm300 keeps the run's 0.3."""
    case = ev.prepare_case("c1", *synthetic_case(tmp_path), NO_MARGIN)
    healthy = [("h/h.nii.gz", ev.prepare_case("h", *synthetic_case(tmp_path, "h"), NO_MARGIN).volume)]
    names = ("sss300", "sss300_min2", "sss300_pp", "sss300_3d5", "anoddpm300")
    methods = [ev.method_named(n) for n in names]
    detector = GradedDetector()
    result = ev.evaluate(detector, [case], methods, threshold=0.3, healthy=healthy, budget=0.05)
    calls = list(detector.calls)
    want = {"sss300": 0.345, "sss300_min2": 0.001, "sss300_pp": 0.655, "sss300_3d5": 0.001}
    assert result.calibration.thresholds == want
    assert result.results[0].thresholds == {**want, "anoddpm300": 0.3}
    curves = result.calibration.flagged
    assert set(curves) == set(want) and list(curves["sss300"]) == ["h/h.nii.gz"]
    grids = {name: c.thresholds for name, c in result.calibration.curves.items()}
    assert grids["sss300"] == ev.THRESHOLDS[:34] + tuple(round(0.341 + 0.001 * j, 3) for j in range(9)) \
        + ev.THRESHOLDS[34:]
    sss = dict(zip(grids["sss300"], curves["sss300"]["h/h.nii.gz"]))
    assert sss[0.344] == pytest.approx(320 / 6144) and sss[0.345] == sss[0.65] == pytest.approx(256 / 6144)
    assert sss[0.66] == 0.0
    pp = dict(zip(grids["sss300_pp"], curves["sss300_pp"]["h/h.nii.gz"]))
    assert pp[0.01] == pp[0.654] == pytest.approx(400 / 6144) and pp[0.655] == 0.0
    # The plain methods' curves are sss-calibrate's own (flagged_share with the same post-processing).
    from sss_viewer.core.anomaly import PostProcess
    from trainer.calibrate import flagged_share
    first, last = healthy[0][1].slice_range
    rec = detector.reconstruct(healthy[0][1].data[first:last + 1], 300, indices=range(first, last + 1),
                               brain=healthy[0][1].brain_mask[first:last + 1])
    for name, pp_on in (("sss300", False), ("sss300_pp", True)):
        assert curves[name]["h/h.nii.gz"] == [flagged_share(rec.error, healthy[0][1].brain_mask[first:last + 1], t,
                                                            PostProcess(enabled=pp_on)) for t in grids[name]]
    # Each method's healthy FPR is at its own threshold, within the budget, and is the curve at that threshold.
    for name in want:
        assert result.healthy_fpr[name]["mean"] <= 0.05
        assert result.healthy_fpr[name]["per_volume"] == result.calibration.at_threshold(name)
    assert result.healthy_fpr["sss300"]["mean"] == pytest.approx(256 / 6144)
    assert result.healthy_fpr["sss300_pp"]["mean"] == 0.0 and "anoddpm300" not in result.healthy_fpr
    # The protocol and volume metrics use the own thresholds: sss300 at 0.35 loses the lone pixels (the oracle's
    # 0.625), sss300_pp at 0.66 flags nothing; anoddpm300 at 0.3 keeps them.
    rows = {r["method"]: r for r in result.table}
    assert rows["sss300"]["dice_mean"] == rows["sss300_min2"]["dice_mean"] == pytest.approx(0.625)
    assert rows["sss300_pp"]["dice_mean"] == 0.0 and rows["anoddpm300"]["dice_mean"] < 0.625
    assert result.results[0].volume["sss300"]["dice"] == pytest.approx(0.625)
    assert result.results[0].volume["sss300_pp"]["dice"] == 0.0
    # The healthy volume is reconstructed once (at 300, all its 6 brain slices), before the cases.
    assert [c for c in calls if c[2] == tuple(range(1, 7))] == [(300, False, tuple(range(1, 7)))] * 2   # + the case
    assert calls[0] == (300, False, tuple(range(1, 7)))
    md = ev.table_md(result, "synthetic")
    assert "at each method's own threshold (the Threshold column below; 0.3 for the iterative chain)" in md
    assert ("the smallest of 0.01, 0.02, ..., 1.00, refined in 0.001 steps below it, from which on its "
            "whole-volume masks (with its map options, 3-D persistence and post-processing) flag at most 5 % of the "
            "brain pixels of the 1 --healthy volume(s) (h;" in md)
    for name, t in (("sss300", "0.345"), ("sss300_min2", "0.001"), ("sss300_pp", "0.655"), ("anoddpm300", "0.3")):
        assert f"| {ev.method_named(name).label} | {t} |" in md
    cal = ev.extra_json(result, {})["calibration"]
    assert cal["budget"] == 0.05 and cal["volumes"] == ["h/h.nii.gz"]
    assert cal["per_method"]["sss300"]["thresholds"] == list(grids["sss300"]) and len(grids["sss300"]) == 109
    assert {n: v["threshold"] for n, v in cal["per_method"].items()} == want
    assert cal["per_method"]["sss300"]["mean_flagged_at_threshold"] == pytest.approx(256 / 6144)
    assert cal["per_method"]["sss300"]["flagged_at_threshold"] == {"h/h.nii.gz": pytest.approx(256 / 6144)}
    # A budget no threshold meets names the method; no healthy volumes: nothing to calibrate on.
    class Hot(GradedDetector):                                               # the square at 1.31: over 1.00
        def reconstruct(self, slices, timestep, **kw):
            rec = super().reconstruct(slices, timestep, **kw)
            return replace(rec, error=2 * rec.error)

    with pytest.raises(ev.EvalError, match="sss300_pp: even the threshold 1.0 flags 6.51 %.*budget of 5 %"):
        ev.evaluate(Hot(), [case], methods[2:3], threshold=0.3, healthy=healthy, budget=0.05)
    with pytest.raises(ev.EvalError, match="--healthy"):
        ev.evaluate(GradedDetector(), [case], methods, threshold=0.3, budget=0.05)

    # Without a budget: every model method at the run's threshold, as before, and no calibration anywhere.
    plain = ev.evaluate(GradedDetector(), [case], methods, threshold=0.3, healthy=healthy)
    assert plain.calibration is None and set(plain.results[0].thresholds.values()) == {0.3}
    assert plain.healthy_fpr["sss300"]["mean"] == pytest.approx(320 / 6144)        # over the 5 % budget
    assert plain.healthy_fpr["sss300_pp"]["mean"] == pytest.approx(400 / 6144)
    md = ev.table_md(plain, "synthetic")
    assert "for a threshold of 0.3 on 1 volume(s)" in md and "--calibrate" not in md
    assert "- Threshold: the one the masks used (the run's; the intensity baseline's own)." in md
    assert f"| {ev.method_named('sss300_pp').label} | 0.3 |" in md
    assert "calibration" not in ev.extra_json(plain, {})


def test_cli_calibrate(tmp_path, checkpoint, capsys, monkeypatch):
    synthetic_case(tmp_path, "c1")
    healthy, _ = synthetic_case(tmp_path, "h", lesion=False)
    manifest = write_manifest(tmp_path, [["c1", "t1", "c1.nii.gz", "c1_seg.nii.gz", "expert"]])
    out = tmp_path / "out"
    # Without --healthy: one line, exit 2, before any work (not even the missing manifest and checkpoint are read).
    status = ev.main(["--manifest", str(tmp_path / "missing.csv"), "--out", str(out), "--checkpoint",
                      str(tmp_path / "missing.pt"), "--calibrate"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "--healthy" in lines[0] and not out.exists()
    for extra in (["--budget", "0.01"], ["--calibrate", "--healthy", str(healthy), "--budget", "1.5"]):
        status = ev.main(["--manifest", str(manifest), "--out", str(out), "--checkpoint", str(checkpoint), *extra])
        assert status == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()

    args = ["--manifest", str(manifest), "--out", str(out), "--checkpoint", str(checkpoint), "--device", "cpu",
            "--methods", "sss300,sss300_pp,anoddpm300", "--healthy", str(healthy), "--calibrate", "--budget", "0.05",
            "--threshold", "0.3"]
    # The untrained tiny model flags nearly every pixel even at 1.00: no threshold meets the budget, one line.
    assert ev.main(args) == 2 and not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "sss300: even the threshold 1.0" in lines[0] and "budget of 5 %" in lines[0]

    real = ev.load_detector

    def graded(*a, **kw):
        ckpt, detector = real(*a, **kw)
        oracle = GradedDetector()
        oracle.device, oracle.precision, oracle.draws = detector.device, detector.precision, detector.draws
        return ckpt, oracle

    monkeypatch.setattr(ev, "load_detector", graded)
    assert ev.main(args) == 0 and capsys.readouterr().err.strip() == ""
    extra = json.loads((out / "extra.json").read_text())
    cal = extra["calibration"]
    assert cal["budget"] == 0.05 and cal["volumes"] == [str(healthy)]
    assert {n: v["threshold"] for n, v in cal["per_method"].items()} == {"sss300": 0.345, "sss300_pp": 0.655}
    for name, entry in cal["per_method"].items():
        assert extra["healthy_false_positive_rate"][name]["mean"] == entry["mean_flagged_at_threshold"] <= 0.05
    assert extra["threshold"] == 0.3 and "anoddpm300" not in cal["per_method"]
    md = (out / "table.md").read_text()
    assert "Thresholds (--calibrate)" in md and "| SSS t = 300 (with postprocessing) | 0.655 |" in md
    assert "| SSS t = 300 | 0.345 |" in md and "| AnoDDPM t = 300 | 0.3 |" in md
