"""sss-detect: three outputs on the input's grid, the JSON report, the PDF report, an exact oracle cube, bad inputs and
checkpoints."""

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from sss_viewer.cli import detect
from sss_viewer.core import checkpoint as checkpoint_module
from sss_viewer.core.checkpoint import LoadedCheckpoint, Recommended
from sss_viewer.core.config import PRESETS, NoiseConfig, Preset, PreprocessConfig
from sss_viewer.core.diffusion import Diffusion
from sss_viewer.core.hygiene import MapOptions
from sss_viewer.core.volume import file_stem
from test_no_qt import QT_BLOCK

LAS_1MM2 = np.diag([-1.0, 1.0, 2.0, 1.0])  # x flipped (L), 2 mm slices


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint(PRESETS["tiny"].preprocess, step=7, provenance="test")


def brain_volume(shape=(26, 30, 8)) -> np.ndarray:
    """Native float32 array: a textured ellipsoid on a zero background, empty first and last slices."""
    g = np.indices(shape, dtype=np.float64)
    centre = [(n - 1) / 2 for n in shape]
    r2 = sum(((gi - c) / (0.45 * n)) ** 2 for gi, c, n in zip(g[:2], centre[:2], shape[:2]))
    inside = (r2 <= 1.0) & (g[2] >= 1) & (g[2] <= shape[2] - 2)
    return np.where(inside, 100 + 20 * np.sin(g[0] / 2) + 3 * g[1], 0).astype(np.float32)


def save(arr: np.ndarray, path: Path, affine=LAS_1MM2) -> Path:
    nib.Nifti1Image(arr, affine).to_filename(str(path))
    return path


def run(argv, capsys) -> tuple[int, list[str]]:
    status = detect.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.strip()]


def test_three_outputs_on_the_input_grid(tmp_path, checkpoint, capsys):
    src = save(brain_volume(), tmp_path / "sub-01_T1w.nii.gz")
    out = tmp_path / "out"
    status, errors = run([src, "--out", out, "--checkpoint", checkpoint, "--device", "cpu", "--seed", "3"], capsys)
    assert status == 0 and errors == []
    assert sorted(p.name for p in out.iterdir()) == ["sub-01_T1w.json", "sub-01_T1w_error.nii.gz",
                                                     "sub-01_T1w_mask.nii.gz"]
    mask_img = nib.load(str(out / "sub-01_T1w_mask.nii.gz"))
    error_img = nib.load(str(out / "sub-01_T1w_error.nii.gz"))
    for img in (mask_img, error_img):
        assert img.shape == (26, 30, 8)
        np.testing.assert_allclose(img.affine, LAS_1MM2)
    mask = np.asarray(mask_img.dataobj)
    error = np.asarray(error_img.dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert error.dtype == np.float32 and (error >= 0).all() and error.max() > 0

    report = json.loads((out / "sub-01_T1w.json").read_text())
    for key in ("input", "outputs", "parameters", "checkpoint", "timings_s", "slice_range", "slice_scores",
                "mask_voxels", "lesion_volume_ml", "versions"):
        assert key in report
    ck = report["checkpoint"]
    assert ck["step"] == 7 and len(ck["sha256"]) == 64 and Path(ck["path"]) == checkpoint.resolve()
    assert ck["preset"]["model"]["image_size"] == 32 and ck["preset"]["noise"]["kind"] == "gaussian"
    assert set(report["timings_s"]) == {"load", "preprocess", "model", "postprocess", "write", "total"}
    assert report["parameters"]["timesteps"] == [300] and report["parameters"]["seed"] == 3
    assert report["parameters"]["postprocess"] is True and report["parameters"]["threshold"] == 0.3
    assert report["parameters"]["map_options"] == {"lowpass": 0.0, "median": 0, "erode": 0, "normative": False,
                                                   "min_area": 0, "persist": 0, "name": ""}   # the paper's maps
    assert report["parameters"]["normative_off"] is None
    first, last = report["slice_range"]
    assert (first, last) == (1, 6)
    assert [s["slice"] for s in report["slice_scores"]] == list(range(first, last + 1))
    assert report["mask_voxels"] == int(mask.sum())
    assert report["lesion_volume_ml"] == pytest.approx(mask.sum() * 2.0 / 1000)  # 1 x 1 x 2 mm voxels
    assert mask[:, :, [0, 7]].sum() == 0 and error[:, :, [0, 7]].sum() == 0  # slices outside the range stay 0
    assert report["versions"]["sss_viewer"]


def test_consensus_options_and_determinism(tmp_path, checkpoint, capsys):
    src = save(brain_volume(), tmp_path / "scan.nii")
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        status, _ = run([src, "--out", out, "--checkpoint", checkpoint, "--device", "cpu", "--consensus",
                         "250,300,400", "--votes", "2", "--no-postprocess", "--batch-size", "6"], capsys)
        assert status == 0
        outs.append(out)
    params = json.loads((outs[0] / "scan.json").read_text())["parameters"]
    assert params["timesteps"] == [250, 300, 400] and params["votes"] == 2 and params["postprocess"] is False
    for name in ("scan_mask.nii.gz", "scan_error.nii.gz"):
        a, b = (np.asarray(nib.load(str(o / name)).dataobj) for o in outs)
        np.testing.assert_array_equal(a, b)


class Oracle(torch.nn.Module):
    """eps that makes x0_hat = -1 (the healthy tissue in model space): eps = (x_t + sqrt(abar_t)) / sqrt(1 - abar_t)."""

    def __init__(self, abar: torch.Tensor):
        super().__init__()
        self.abar = abar

    def forward(self, x, t):
        a = self.abar[t.cpu()].to(x).reshape(-1, 1, 1, 1)
        return (x + a.sqrt()) / (1 - a).sqrt()


def test_oracle_finds_the_cube_exactly(tmp_path, monkeypatch, capsys):
    # 32 x 32 in-plane brain of 1 mm pixels, no margin: model space is the canonical slice, flipped, exactly.
    preset = Preset(model=PRESETS["tiny"].model, noise=NoiseConfig(kind="gaussian"),
                    preprocess=PreprocessConfig(image_size=32, margin=0.0))
    native = np.zeros((32, 32, 8), np.float32)
    native[:, :, 1:7] = 100.0
    cube = np.zeros(native.shape, bool)
    cube[5:11, 20:26, 2:6] = True                       # 144 voxels = 2.3% of the brain: the 99th percentile → +1
    native[cube] = 200.0
    src = save(native, tmp_path / "cube.nii.gz", affine=np.diag([-1.0, -1.0, 1.5, 1.0]))  # LPS
    abar = Diffusion(preset.diffusion, preset.noise).alphas_cumprod.float()
    fake = LoadedCheckpoint(model=Oracle(abar), preset=preset, step=0, provenance="", path=tmp_path / "oracle.pt",
                            sha256="0" * 64)
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda path: fake)
    status, _ = run([src, "--out", tmp_path / "out", "--checkpoint", "unused.pt", "--device", "cpu",
                     "--no-postprocess"], capsys)
    assert status == 0
    mask = np.asarray(nib.load(str(tmp_path / "out" / "cube_mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask.astype(bool), cube)
    error = np.asarray(nib.load(str(tmp_path / "out" / "cube_error.nii.gz")).dataobj)
    np.testing.assert_allclose(error[cube], 4.0, atol=1e-3)   # (x0 - x0_hat)^2 = (1 - (-1))^2
    assert error[~cube].max() < 1e-3
    report = json.loads((tmp_path / "out" / "cube.json").read_text())
    assert report["lesion_volume_ml"] == pytest.approx(144 * 1.5 / 1000)
    scores = {s["slice"]: s["score"] for s in report["slice_scores"]}
    assert min(scores[k] for k in range(2, 6)) > 3.9 and max(scores[k] for k in (1, 6)) < 1e-3

    status, _ = run([src, "--out", tmp_path / "pp", "--checkpoint", "unused.pt", "--device", "cpu"], capsys)
    mask = np.asarray(nib.load(str(tmp_path / "pp" / "cube_mask.nii.gz")).dataobj).astype(bool)
    dilated = np.stack([ndimage.binary_dilation(cube[:, :, k], np.ones((3, 3))) for k in range(8)], axis=2)
    np.testing.assert_array_equal(mask, dilated)       # 3x3 dilation in each axial slice, one region kept

    # Map hygiene: the cube spans 4 slices, so --persist 4 keeps it and --persist 5 drops it; a 2-pixel erosion
    # leaves a 6 x 6 square well inside the brain; regions under 37 px go, 36 px stay; a 3 x 3 median takes the
    # square's corners; a slight low-pass keeps it.
    corners = np.zeros_like(cube)
    corners[np.ix_([5, 10], [20, 25], range(2, 6))] = True
    for flags, kept in ((["--persist", "4", "--erode", "2", "--min-area", "36"], cube), (["--persist", "5"], None),
                        (["--min-area", "37"], None), (["--median", "3"], cube & ~corners),
                        (["--lowpass", "0.5"], cube)):
        out = tmp_path / "_".join(flags)
        status, _ = run([src, "--out", out, "--checkpoint", "unused.pt", "--device", "cpu", "--no-postprocess",
                         *flags], capsys)
        assert status == 0
        mask = np.asarray(nib.load(str(out / "cube_mask.nii.gz")).dataobj).astype(bool)
        np.testing.assert_array_equal(mask, np.zeros_like(cube) if kept is None else kept, err_msg=str(flags))
        options = json.loads((out / "cube.json").read_text())["parameters"]["map_options"]
        given = {flags[i].lstrip("-").replace("-", "_"): float(flags[i + 1]) for i in range(0, len(flags), 2)}
        assert {k: options[k] for k in given} == given
    assert options["name"] == "_lp0.5" and options["median"] == 0
    status, errors = run([src, "--out", tmp_path / "bad", "--checkpoint", "unused.pt", "--median", "4"], capsys)
    assert status == 2 and len(errors) == 1 and "odd" in errors[0] and not (tmp_path / "bad").exists()


def test_lesion_list_in_the_json_and_the_summary(tmp_path, monkeypatch, capsys):
    # The oracle flags exactly the bright voxels: a 6 x 6 x 4 cube and a 2 x 2 x 2 one, on an LPS grid of 1.5 mm slices.
    preset = Preset(model=PRESETS["tiny"].model, noise=NoiseConfig(kind="gaussian"),
                    preprocess=PreprocessConfig(image_size=32, margin=0.0))
    native = np.zeros((32, 32, 8), np.float32)
    native[:, :, 1:7] = 100.0
    native[5:11, 20:26, 2:6] = 200.0                    # 144 voxels, native centre (7.5, 22.5, 3.5)
    native[20:22, 5:7, 3:5] = 200.0                     # 8 voxels, native centre (20.5, 5.5, 3.5)
    src = save(native, tmp_path / "cubes.nii.gz", affine=np.diag([-1.0, -1.0, 1.5, 1.0]))  # LPS
    abar = Diffusion(preset.diffusion, preset.noise).alphas_cumprod.float()
    fake = LoadedCheckpoint(model=Oracle(abar), preset=preset, step=0, provenance="", path=tmp_path / "oracle.pt",
                            sha256="0" * 64)
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda path: fake)
    common = ["--checkpoint", "unused.pt", "--device", "cpu", "--no-postprocess"]
    assert detect.main([str(src), "--out", str(tmp_path / "all"), *common]) == 0
    assert "152 voxels flagged (0.23 mL), 2 regions -> " in capsys.readouterr().out
    report = json.loads((tmp_path / "all" / "cubes.json").read_text())
    assert report["parameters"]["min_lesion_ml"] == 0.0 and report["mask_voxels"] == 152
    big, small = report["lesions"]
    assert (big["label"], big["voxels"], small["label"], small["voxels"]) == (1, 144, 2, 8)
    assert big["volume_ml"] == pytest.approx(0.216) and small["volume_ml"] == pytest.approx(0.012)
    assert big["centre_ras_mm"] == pytest.approx([-7.5, -22.5, 5.25])   # affine @ native centre
    assert small["centre_ras_mm"] == pytest.approx([-20.5, -5.5, 5.25])
    # Half-voxel centres round up along each RAS+ axis (canonical 23.5 -> 24, i.e. native 7; z 3.5 -> 4).
    assert big["centre_voxel"] == [7, 22, 4] and small["centre_voxel"] == [20, 5, 4]
    assert big["slices"] == [2, 5] and small["slices"] == [3, 4]
    for lesion in (big, small):
        assert lesion["peak_heat"] == pytest.approx(4.0, abs=1e-3)       # (x0 - x0_hat)^2 = (1 - (-1))^2
        assert lesion["mean_heat"] == pytest.approx(4.0, abs=1e-3)

    assert detect.main([str(src), "--out", str(tmp_path / "big"), *common, "--min-lesion-ml", "0.05"]) == 0
    assert "(0.23 mL), 1 region -> " in capsys.readouterr().out
    report = json.loads((tmp_path / "big" / "cubes.json").read_text())
    assert [l["voxels"] for l in report["lesions"]] == [144] and report["mask_voxels"] == 152
    assert report["parameters"]["min_lesion_ml"] == 0.05
    for bad in ("-1", "nan"):
        status, errors = run([src, "--out", tmp_path / "bad", *common, "--min-lesion-ml", bad], capsys)
        assert status == 2 and len(errors) == 1 and "--min-lesion-ml" in errors[0] and not (tmp_path / "bad").exists()


def test_bad_inputs_are_reported_and_leave_nothing(tmp_path, checkpoint, capsys):
    good = save(brain_volume(), tmp_path / "good.nii.gz")
    full = gzip.compress(nib.Nifti1Image(brain_volume(), LAS_1MM2).to_bytes())
    (tmp_path / "truncated.nii.gz").write_bytes(full[: len(full) // 2])
    (tmp_path / "random.nii.gz").write_bytes(np.random.default_rng(0).bytes(4000))
    save(np.ones((20, 20), np.float32), tmp_path / "flat2d.nii.gz")
    save(np.full((20, 20, 6), np.nan, np.float32), tmp_path / "nan.nii.gz")
    bad = ["truncated.nii.gz", "random.nii.gz", "flat2d.nii.gz", "nan.nii.gz", "missing.nii.gz"]
    out = tmp_path / "out"
    status, errors = run([tmp_path / bad[0], tmp_path / bad[1], good, *(tmp_path / b for b in bad[2:]),
                          "--out", out, "--checkpoint", checkpoint, "--device", "cpu"], capsys)
    assert status == 2
    assert len(errors) == len(bad)
    for name in bad:
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good_error.nii.gz", "good_mask.nii.gz"]


def test_never_overwrites_an_input(tmp_path, checkpoint, capsys):
    # In their own folder, scan.nii.gz's mask output would be the other input scan_mask.nii.gz.
    a = save(brain_volume(), tmp_path / "scan.nii.gz")
    b = save(brain_volume()[::-1].copy(), tmp_path / "scan_mask.nii.gz")
    (tmp_path / "other").mkdir()
    c = save(brain_volume(), tmp_path / "other" / "scan_mask.nii")            # same output names as b
    before = a.read_bytes(), b.read_bytes()
    status, errors = run([a, b, c, "--out", tmp_path, "--checkpoint", checkpoint, "--device", "cpu"], capsys)
    assert status == 2 and len(errors) == 2
    assert str(a) in errors[0] and "overwrite" in errors[0]
    assert str(c) in errors[1] and "same output names" in errors[1]
    assert (a.read_bytes(), b.read_bytes()) == before
    assert not (tmp_path / "scan.json").exists() and (tmp_path / "scan_mask_mask.nii.gz").is_file()


@pytest.mark.parametrize("content", [None, b"not a checkpoint at all"])
def test_bad_checkpoint_exits_2(tmp_path, capsys, content):
    src = save(brain_volume(), tmp_path / "scan.nii.gz")
    ckpt = tmp_path / "bad.pt"
    if content is not None:
        ckpt.write_bytes(content)
    status, errors = run([src, "--out", tmp_path / "out", "--checkpoint", ckpt, "--device", "cpu"], capsys)
    assert status == 2 and len(errors) == 1 and "bad.pt" in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_recommended_settings_are_the_defaults_and_the_command_line_wins(tmp_path, checkpoint, capsys):
    payload = torch.load(checkpoint, weights_only=True)
    payload["recommended"] = {"timestep": 120, "threshold": 0.07, "source": "test calibration"}
    calibrated = tmp_path / "calibrated.pt"
    torch.save(payload, calibrated)
    src = save(brain_volume(), tmp_path / "a.nii.gz")
    base = [src, "--checkpoint", calibrated, "--device", "cpu"]
    assert run(base + ["--out", tmp_path / "rec"], capsys)[0] == 0
    params = json.loads((tmp_path / "rec" / "a.json").read_text())["parameters"]
    assert (params["timesteps"], params["threshold"], params["settings_from"]) == ([120], 0.07, "test calibration")
    assert run(base + ["--out", tmp_path / "cli", "--timestep", "200", "--threshold", "0.2"], capsys)[0] == 0
    params = json.loads((tmp_path / "cli" / "a.json").read_text())["parameters"]
    assert (params["timesteps"], params["threshold"], params["settings_from"]) == ([200], 0.2, "command line")
    assert run([src, "--checkpoint", checkpoint, "--device", "cpu", "--out", tmp_path / "old"], capsys)[0] == 0
    params = json.loads((tmp_path / "old" / "a.json").read_text())["parameters"]   # no recommendation: the paper's
    assert (params["timesteps"], params["threshold"], params["settings_from"]) == ([300], 0.3, "paper defaults")


def test_map_options_from_the_checkpoint_unless_the_command_line_gives_any(tmp_path, checkpoint, capsys):
    payload = torch.load(checkpoint, weights_only=True)
    payload["recommended"] = Recommended(timestep=300, threshold=0.3, source="test",
                                         map_options=MapOptions(median=3, erode=2, persist=2)).to_payload()
    calibrated = tmp_path / "hygiene.pt"
    torch.save(payload, calibrated)
    src = save(brain_volume(), tmp_path / "a.nii.gz")
    base = [src, "--checkpoint", calibrated, "--device", "cpu"]
    for flags, want, source in (([], MapOptions(median=3, erode=2, persist=2), "checkpoint"),
                                (["--median", "5"], MapOptions(median=5), "command line"),     # all replaced
                                (["--median", "0"], MapOptions(), "command line")):            # the paper's maps
        out = tmp_path / ("_".join(flags) or "default")
        assert run([*base, "--out", out, *flags], capsys)[0] == 0
        params = json.loads((out / "a.json").read_text())["parameters"]
        assert params["map_options"] == want.to_json() and params["map_options_from"] == source, flags
    assert run([src, "--checkpoint", checkpoint, "--device", "cpu", "--out", tmp_path / "old"], capsys)[0] == 0
    params = json.loads((tmp_path / "old" / "a.json").read_text())["parameters"]    # a checkpoint without options
    assert params["map_options"] == MapOptions().to_json() and params["map_options_from"] == "checkpoint"


def test_each_input_gets_its_bundled_checkpoint(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from sss_viewer.core import resources
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    demo = save(brain_volume(), bundle / resources.DEMO_VOLUME)
    for name, step in ((resources.DEMO_CHECKPOINT, 1), (resources.GENERAL_CHECKPOINT, 2)):
        (bundle / name).write_bytes(tiny_checkpoint(PRESETS["tiny"].preprocess, step=step).read_bytes())
    monkeypatch.setattr(resources, "resource_dir", lambda: bundle)
    monkeypatch.setenv("SSS_VIEWER_CONFIG_DIR", str(tmp_path / "config"))
    copy = tmp_path / "copy_of_demo.nii.gz"
    copy.write_bytes(demo.read_bytes())
    other = save(brain_volume()[::-1].copy(), tmp_path / "patient.nii.gz")
    assert run([demo, copy, other, "--out", tmp_path / "out", "--device", "cpu"], capsys)[0] == 0
    steps = {p: json.loads((tmp_path / "out" / f"{p}.json").read_text())["checkpoint"]["step"]
             for p in ("demo_t1", "copy_of_demo", "patient")}
    assert steps == {"demo_t1": 1, "copy_of_demo": 1, "patient": 2}
    assert resources.default_checkpoint() == bundle / resources.GENERAL_CHECKPOINT      # no volume: a real scan
    (bundle / resources.GENERAL_CHECKPOINT).unlink()
    assert resources.default_checkpoint(other) == bundle / resources.DEMO_CHECKPOINT    # not installed: the demo's


def write_dicom_series(folder: Path, native: np.ndarray, number: int, description: str, **tags) -> None:
    """An axial DICOM series of a native (X, Y, Z) array: image k is slice z = k, rows along y (LPS, 1 mm)."""
    from dicom_files import write_image
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(native.shape[2]):
        write_image(folder / f"{number}_{k:03d}.dcm", native[:, :, k].T.round(), (0.0, 0.0, 2.0 * k),
                    (1, 0, 0), (0, 1, 0), spacing=(1.0, 1.0), uid=f"1.2.826.0.1.{number}", number=number,
                    description=description, instance=k + 1, **tags)


def test_dicom_folder_in_nifti_out_on_the_series_grid(tmp_path, checkpoint, capsys):
    study = tmp_path / "study"
    write_dicom_series(study / "a", brain_volume(), 5, "t1_mprage_ax")
    write_dicom_series(study / "b", brain_volume()[:, :, :6], 6, "flair_ax")
    (study / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    base = ["--out", out, "--checkpoint", checkpoint, "--device", "cpu"]
    status, errors = run([study, *base], capsys)                        # two fitting series: ambiguous
    assert status == 2 and len(errors) == 1 and "#5" in errors[0] and "#6" in errors[0] and "--series" in errors[0]
    assert not out.exists() or not any(out.iterdir())

    status, errors = run([study, "--series", "5", *base], capsys)
    assert status == 0 and errors == []
    report = json.loads((out / "study.json").read_text())
    assert report["input"]["kind"] == "dicom" and report["input"]["series"]["number"] == 5
    assert report["modality"]["input"] == "t1" and "SeriesDescription" in report["modality"]["source"]
    assert report["brain"]["verdict"] == "skull-stripped" and report["brain"]["extraction"] == "none"
    mask = nib.load(str(out / "study_mask.nii.gz"))
    assert mask.shape == (26, 30, 8)
    x, y, z = 3, 4, 5          # dcm2niix's layout: rows bottom-up, so voxel (x, y, z) is pixel row 29 - y of image z
    np.testing.assert_allclose(mask.affine @ [x, y, z, 1], [-x, -(29 - y), 2 * z, 1], atol=1e-4)   # RAS of LPS


def test_brain_mask_file_skull_off_and_modality_warnings(tmp_path, checkpoint, capsys):
    brain = brain_volume()
    head = np.where(brain > 0, brain, 60.0).astype(np.float32)          # (X, Y, Z): everything outside is 'scalp'
    src = save(head, tmp_path / "case_flair.nii.gz")
    mask = save((brain > 0).astype(np.uint8), tmp_path / "case_brainmask.nii.gz")
    t1_model = tmp_path / "t1.pt"
    payload = torch.load(checkpoint, weights_only=True)
    checkpoint_module.save_checkpoint(t1_model, checkpoint_module.preset_from_dict(payload["configs"]),
                                      payload["ema"], step=0, modality="t1")
    out = tmp_path / "out"
    base = ["--out", out, "--checkpoint", t1_model, "--device", "cpu"]

    status, errors = run([src, "--brain-mask", mask, *base], capsys)
    assert status == 0 and len(errors) == 1 and "FLAIR" in errors[0] and "T1" in errors[0]
    report = json.loads((out / "case_flair.json").read_text())
    assert report["brain"]["extraction"].startswith("mask file") and report["brain"]["mode"] == "mask file"
    assert report["brain"]["brain_ml"] == pytest.approx(np.count_nonzero(brain) * 2 / 1000)
    assert report["modality"] == {"input": "flair", "source": "file name", "model": "t1",
                                  "warning": errors[0].split(": ", 3)[-1]}
    flagged = np.asarray(nib.load(str(out / "case_flair_mask.nii.gz")).dataobj) > 0
    near_brain = ndimage.binary_dilation(brain > 0, iterations=2)      # the mask's 3×3 dilation may reach the rim
    assert flagged.any() and not (flagged & ~near_brain).any()          # the 'scalp' is never flagged
    assert not (out / "case_flair_brainmask.nii.gz").exists()            # the user's own mask is not copied

    status, errors = run([src, mask, "--brain-mask", mask, *base], capsys)
    assert status == 2 and "one scan" in errors[0]

    status, errors = run([src, "--skull", "off", *base], capsys)
    verdict = json.loads((out / "case_flair.json").read_text())["brain"]
    assert status == 0 and verdict["mode"] == "off" and verdict["extraction"] == "none"


@pytest.mark.parametrize("case", ["dicom/trio-b17", "with-skull/niivue-chris-t1.nii.gz"])
def test_real_scan_with_skull_is_brain_extracted(real_data, tmp_path, capsys, case):
    """A scanner's DICOM study and a NIfTI head, as a new user gives them: the brain is extracted first and the
    bundled checkpoint flags at most 2 % of it (before extraction: the whole head)."""
    out = tmp_path / "out"
    status, errors = run([real_data / case, "--out", out, "--device", "cpu"], capsys)
    assert status == 0 and errors == []
    stem = file_stem(Path(case))
    report = json.loads((out / f"{stem}.json").read_text())
    assert report["brain"]["verdict"] == "with skull" and report["brain"]["extraction"] == "deepbet"
    assert 1000 < report["brain"]["brain_ml"] < 2000
    assert report["lesion_volume_ml"] <= 0.02 * report["brain"]["brain_ml"]
    brain = nib.load(str(out / f"{stem}_brainmask.nii.gz"))
    if case.startswith("dicom"):                                        # the series' grid is dcm2niix's
        reference = nib.load(str(real_data / "healthy-with-skull/dcm2nii-trio-b17/t1.nii.gz"))
        assert brain.shape == reference.shape
        np.testing.assert_allclose(brain.affine, reference.affine, atol=0.01)


def test_noise_draws_from_the_command_line_or_the_checkpoint(tmp_path, checkpoint, capsys):
    src = save(brain_volume(), tmp_path / "sub-01_T1w.nii.gz")
    base = [src, "--checkpoint", checkpoint, "--device", "cpu"]
    status, errors = run([*base, "--out", tmp_path / "a", "--draws", "0"], capsys)
    assert status == 2 and "--draws" in errors[0]
    assert run([*base, "--out", tmp_path / "one"], capsys)[0] == 0
    assert run([*base, "--out", tmp_path / "two", "--draws", "2"], capsys)[0] == 0
    one, two = (json.loads((tmp_path / d / "sub-01_T1w.json").read_text()) for d in ("one", "two"))
    assert one["parameters"]["draws"] == 1 and two["parameters"]["draws"] == 2
    e1, e2 = (np.asarray(nib.load(str(tmp_path / d / "sub-01_T1w_error.nii.gz")).dataobj) for d in ("one", "two"))
    assert not np.allclose(e1, e2)
    payload = torch.load(checkpoint, weights_only=True)                 # a checkpoint calibrated with 2 draws
    payload["recommended"] = {"timestep": 300, "threshold": 0.3, "source": "test", "draws": 2}
    torch.save(payload, tmp_path / "k2.pt")
    assert run([src, "--checkpoint", tmp_path / "k2.pt", "--device", "cpu", "--out", tmp_path / "k2"], capsys)[0] == 0
    k2 = tmp_path / "k2" / "sub-01_T1w_error.nii.gz"
    assert np.array_equal(np.asarray(nib.load(str(k2)).dataobj), e2)


def test_report_flag_writes_a_pdf_the_json_names(tmp_path, checkpoint, capsys):
    import pypdfium2 as pdfium
    assert "--report" in detect.build_parser().format_help()
    src = save(brain_volume(), tmp_path / "sub-01_T1w.nii.gz")
    out = tmp_path / "out"
    status, errors = run([src, "--out", out, "--checkpoint", checkpoint, "--device", "cpu", "--report"], capsys)
    assert status == 0 and errors == []
    assert sorted(p.name for p in out.iterdir()) == ["sub-01_T1w.json", "sub-01_T1w_error.nii.gz",
                                                     "sub-01_T1w_mask.nii.gz", "sub-01_T1w_report.pdf"]
    report = json.loads((out / "sub-01_T1w.json").read_text())
    assert report["outputs"] == {"mask": "sub-01_T1w_mask.nii.gz", "error": "sub-01_T1w_error.nii.gz",
                                 "report": "sub-01_T1w_report.pdf"}
    assert report["timings_s"]["report"] > 0
    doc = pdfium.PdfDocument(str(out / "sub-01_T1w_report.pdf"))
    assert len(doc) == 1 + min(len(report["lesions"]), 5)
    first = " ".join(doc[0].get_textpage().get_text_range().split())
    for needed in ("sub-01_T1w.nii.gz", "tiny.pt", report["checkpoint"]["sha256"][:16], "not a diagnosis",
                   f"{len(report['lesions'])} region"):
        assert needed in first, needed


def test_a_failed_write_leaves_no_report_behind(tmp_path, checkpoint, monkeypatch, capsys):
    def full_disk(path, text):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(detect, "atomic_write_text", full_disk)                # the JSON, written after the PDF
    src = save(brain_volume(), tmp_path / "scan.nii.gz")
    status, errors = run([src, "--out", tmp_path / "out", "--checkpoint", checkpoint, "--device", "cpu", "--report"],
                         capsys)
    assert status == 2 and len(errors) == 1 and "No space left on device" in errors[0]
    assert not any((tmp_path / "out").iterdir())


QT_BLOCKED_DETECT = QT_BLOCK + """
from sss_viewer.cli import detect
status = detect.main(sys.argv[1:])
assert not any(m.split('.')[0] in ('PySide6', 'pyqtgraph') for m in sys.modules)
sys.exit(status)
"""


def test_detect_without_report_never_loads_qt(tmp_path, checkpoint):
    import subprocess
    import sys
    src = save(brain_volume(), tmp_path / "scan.nii.gz")
    args = [str(src), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--device", "cpu"]
    done = subprocess.run([sys.executable, "-c", QT_BLOCKED_DETECT, *args], capture_output=True, text=True,
                          cwd=Path(detect.__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "scan.json").is_file() and not (tmp_path / "out" / "scan_report.pdf").exists()
