"""CUDA path: the same noise, reconstructions, training and sss-detect results as on the CPU (skipped without a GPU)."""

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sss_viewer.cli import detect
from sss_viewer.core.anomaly import Detector, PostProcess, detect_volume, make_mask, slice_scores
from sss_viewer.core.checkpoint import load_checkpoint, read_checkpoint
from sss_viewer.core.config import PRESETS, NoiseConfig
from sss_viewer.core.diffusion import Diffusion
from sss_viewer.core.simplex import noise3, octave_noise
from sss_viewer.core.unet import UNet
from sss_viewer.core.volume import prepare
from trainer.loop import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_noise_on_the_gpu_equals_the_cpu():
    seeds = torch.tensor([0, 1, 12345, 2 ** 31 - 2])
    cfg = NoiseConfig()
    for z in (0.0, 300.0, 300.0, 300.0, torch.tensor([250.0, 300.0, 350.0, 400.0])):   # 300: summed, then
        gpu = octave_noise((4, 64, 64), seeds, cfg, z=z, device=CUDA)                    # the grid operator
        assert gpu.device.type == "cuda"
        # float64 inside, float32 out: fused multiply-adds on the GPU may move a value by one float32 step
        torch.testing.assert_close(gpu.cpu(), octave_noise((4, 64, 64), seeds, cfg, z=z), rtol=0, atol=1e-6)
    xs = torch.linspace(-1e6, 1e6, 4001, dtype=torch.float64)
    torch.testing.assert_close(noise3(xs.cuda(), xs.cuda() * 0.7, 3.5, seed=-7).cpu(),
                               noise3(xs, xs * 0.7, 3.5, seed=-7), rtol=0, atol=1e-12)


def test_bf16_reconstruction_matches_fp32_cpu():
    """The detector's bf16 forward on the GPU against fp32 on the CPU, same weights and seeds."""
    preset = PRESETS["small"]
    torch.manual_seed(0)
    model = UNet(preset.model)
    with torch.no_grad():                      # a fresh UNet's zeroed output layer would predict eps = 0
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    slices = np.tanh(rng.standard_normal((5, 128, 128))).astype(np.float32)
    ref = Detector(copy.deepcopy(model), preset, device="cpu").reconstruct(slices, 300, seed=4)
    gpu = Detector(UNet(preset.model), preset, device="cuda", batch_size=2)
    gpu.model.load_state_dict(model.state_dict())
    out = gpu.reconstruct(slices, 300, seed=4)
    spread = float(np.abs(ref.recon - slices).mean())
    assert np.abs(out.recon - ref.recon).mean() < 0.05 * spread          # bf16 keeps ~3 significant digits
    assert np.corrcoef(out.recon.ravel(), ref.recon.ravel())[0, 1] > 0.995
    assert np.corrcoef(out.error.ravel(), ref.error.ravel())[0, 1] > 0.99


def test_compiled_detector_on_the_gpu_matches_eager():
    preset = PRESETS["small"]
    torch.manual_seed(0)
    model = UNet(preset.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    slices = np.tanh(np.random.default_rng(1).standard_normal((5, 128, 128))).astype(np.float32)
    eager = Detector(copy.deepcopy(model), preset, device="cuda", batch_size=4).reconstruct(slices, 300, seed=4)
    compiled = Detector(model, preset, device="cuda", batch_size=4, compile=True).reconstruct(slices, 300, seed=4)
    spread = float(np.abs(eager.recon - slices).mean())
    assert np.abs(compiled.recon - eager.recon).mean() < 0.02 * spread        # both bf16; fused differently
    assert np.corrcoef(compiled.error.ravel(), eager.error.ravel())[0, 1] > 0.999


def test_volume_stages_on_the_gpu_equal_the_host():
    rng = np.random.default_rng(2)
    image = np.where(rng.random((70, 80, 30)) < 0.8, 50 + 100 * rng.random((70, 80, 30)), 0).astype(np.float32)
    cfg = PRESETS["tiny"].preprocess
    host, gpu = prepare(image, cfg, spacing=(0.8, 1.1, 2.0)), prepare(image, cfg, spacing=(0.8, 1.1, 2.0),
                                                                     device=CUDA)
    np.testing.assert_allclose(gpu.data, host.data, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(gpu.brain_mask, host.brain_mask)
    heat = rng.random(host.data.shape).astype(np.float32)
    np.testing.assert_allclose(host.to_canonical(heat, "linear", device=CUDA), host.to_canonical(heat, "linear"),
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(host.to_canonical(heat > 0.5, "nearest", device=CUDA),
                                  host.to_canonical(heat > 0.5, "nearest"))


def test_post_processing_and_scores_on_the_gpu_equal_the_host():
    rng = np.random.default_rng(5)
    error = (rng.random((20, 64, 64), np.float32) ** 6).cumsum(axis=2) / 8              # streaky blobs
    brain = rng.random(error.shape) < 0.9
    for pp in (PostProcess(), PostProcess(keep_largest=2, min_area=3), PostProcess(dilate=False, keep_largest=-1),
               PostProcess(keep_largest=0, min_area=5)):
        for threshold in (0.3, 1.0):
            np.testing.assert_array_equal(make_mask(torch.from_numpy(error).to(CUDA), threshold, pp).cpu().numpy(),
                                          make_mask(error, threshold, pp))
    np.testing.assert_array_equal(slice_scores(torch.from_numpy(error).to(CUDA), torch.from_numpy(brain).to(CUDA)),
                                  slice_scores(error, brain))


def test_whole_volume_on_the_gpu_keeps_the_host_semantics():
    """detect_volume with a GPU detector stays on the GPU to the end: its mask and scores are what the host
    makes of its own error map."""
    preset = PRESETS["tiny"]
    torch.manual_seed(0)
    model = UNet(preset.model)
    torch.nn.init.normal_(model.out[-1].weight, std=0.1)
    rng = np.random.default_rng(6)
    image = np.where(rng.random((40, 44, 12)) < 0.9, 60 + 40 * rng.random((40, 44, 12)), 0).astype(np.float32)
    mv = prepare(image, preset.preprocess, device=CUDA)
    assert mv.on_device(CUDA)[0] is mv.resident[0]                          # prepare's tensors, not copies
    result = detect_volume(Detector(model, preset, device="cuda", batch_size=5), mv, threshold=2.0)
    first, last = mv.slice_range
    assert result.mask.any()
    np.testing.assert_array_equal(result.mask, make_mask(result.error, 2.0))
    np.testing.assert_array_equal(result.scores, slice_scores(result.error, mv.brain_mask[first:last + 1]))


def test_iterative_chain_runs_on_the_gpu():
    preset = PRESETS["tiny"]
    torch.manual_seed(0)
    det = Detector(UNet(preset.model), preset, device="cuda")
    x = np.zeros((2, 32, 32), np.float32)
    result = det.reconstruct(x, 20, iterative=True)
    assert result.recon.shape == (2, 32, 32) and np.isfinite(result.recon).all()


def test_diffusion_tables_follow_the_sample_device():
    preset = PRESETS["tiny"]
    d = Diffusion(preset.diffusion, preset.noise)
    x0 = torch.zeros(3, 1, 32, 32, device=CUDA)
    t = torch.tensor([0, 500, 999], device=CUDA)
    x_t = d.q_sample(x0, t, d.noise_like(x0, t, seeds=torch.arange(3)))
    assert x_t.device.type == "cuda"
    torch.testing.assert_close(x_t.cpu(), d.q_sample(x0.cpu(), t.cpu(), d.noise_like(x0.cpu(), t.cpu(),
                                                                                    seeds=torch.arange(3))))


def brain_nifti(path: Path, seed: int, shape=(40, 48, 24)) -> Path:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2
    vol = np.where(r < 1, 600 + 200 * (r < 0.5) + 50 * rng.standard_normal(shape), 0).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, np.diag([4.0, 4.0, 6.0, 1.0])), str(path))
    return path


def test_training_on_the_gpu_saves_a_cpu_loadable_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_VIEWER_CACHE_DIR", str(tmp_path / "cache"))
    brain_nifti(tmp_path / "data" / "a" / "t1.nii.gz", 0)
    out = tmp_path / "run"
    cfg = TrainConfig(data=(str(tmp_path / "data"),), out=out, preset="tiny", steps=4, batch_size=4, device="cuda",
                      progress=False, preview_every=2, save_every=2)
    model_path = train(cfg)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(np.isfinite(r["loss"]) for r in records)
    state = read_checkpoint(out / "last.pt")
    assert all(t.device.type == "cpu" for t in state["ema"].values())
    assert "cuda" in state["train_state"]["sessions"][-1]["device"]
    loaded = load_checkpoint(model_path)
    scan = nib.load(str(tmp_path / "data" / "a" / "t1.nii.gz")).get_fdata(dtype=np.float32)
    mv = prepare(scan, loaded.preset.preprocess)
    result = detect_volume(Detector(loaded.model, loaded.preset, device="cuda"), mv)
    assert np.isfinite(result.error).all()
    cfg2 = TrainConfig(**{**cfg.__dict__, "steps": 6, "resume": True})
    train(cfg2)
    assert read_checkpoint(out / "last.pt")["step"] == 6


def test_detect_cli_on_cuda_matches_cpu(tmp_path, tiny_checkpoint, capsys):
    ckpt = tiny_checkpoint(PRESETS["tiny"].preprocess, step=1)
    src = brain_nifti(tmp_path / "scan.nii.gz", 3)
    for device in ("cuda", "cpu"):
        assert detect.main([str(src), "--out", str(tmp_path / device), "--checkpoint", str(ckpt),
                            "--device", device]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "cuda" / "scan.json").read_text())
    assert "cuda" in json.dumps(report)
    gpu = np.asarray(nib.load(str(tmp_path / "cuda" / "scan_error.nii.gz")).dataobj)
    cpu = np.asarray(nib.load(str(tmp_path / "cpu" / "scan_error.nii.gz")).dataobj)
    assert np.corrcoef(gpu.ravel(), cpu.ravel())[0, 1] > 0.98
