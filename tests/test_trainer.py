"""sss-train: a tiny run end to end, exact resume after SIGTERM, crash-safe checkpoints, DDP on two CPU processes,
the slice cache, file selection, augmentation, PNG output and bad-data errors."""

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from sss_viewer.core.anomaly import Detector, native_bf16
from sss_viewer.core.checkpoint import load_checkpoint, read_checkpoint
from sss_viewer.core.config import PRESETS
from sss_viewer.core.inputs import open_scan
from sss_viewer.core.unet import UNet
from trainer import cli
from trainer import data as data_module
from trainer.data import (Augment, CachedVolume, DataError, SliceSet, augment, brain_mask_for, cached_volume,
                          find_volumes, is_mask_or_label, modality_of, oblique_plane)
from trainer.loop import Interrupted, TrainConfig, checkpoints, step_seed, train
from trainer.png import encode_png, grid

ROOT = Path(__file__).resolve().parents[1]


def make_brain(path: Path, seed: int, shape=(40, 48, 24)) -> Path:
    """A synthetic skull-stripped 'brain': a textured ellipsoid with dark 'ventricles', zero background."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    vol = np.where(r < 1, 600 + 200 * (r < 0.5) + 800 * texture, 0)
    vol[(x / 0.15) ** 2 + (y / 0.3) ** 2 + (z / 0.4) ** 2 < 1] = 150
    vol[r >= 1] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([4.0, 4.0, 6.0, 1.0])), str(path))
    return path


def make_mask(path: Path, like: Path) -> Path:
    img = nib.load(str(like))
    nib.save(nib.Nifti1Image((img.get_fdata() > 0).astype(np.uint8), img.affine), str(path))
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SSS_VIEWER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def brains(tmp_path) -> Path:
    """Two subjects in the NFBS layout: sub<i>/t1.nii.gz beside sub<i>/brainmask.nii.gz (which must be skipped)."""
    root = tmp_path / "data"
    for i in range(2):
        make_mask(root / f"sub{i}" / "brainmask.nii.gz", make_brain(root / f"sub{i}" / "t1.nii.gz", seed=i))
    return root


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    settings = dict(preset="tiny", batch_size=2, device="cpu", progress=False, preview_every=0)
    settings.update(kw)
    return TrainConfig(data=(str(data),), out=out, **settings)


def test_tiny_run_writes_checkpoint_that_loads_and_detects(brains, tmp_path):
    out = tmp_path / "run"
    model_path = train(tiny(brains, out, steps=3, save_every=2, preview_every=2))
    assert model_path == out / "model.pt"
    assert [s for s, _ in checkpoints(out)] == [2, 3]
    for name in ("last.pt", "log.jsonl", "preview_2.png", "preview_3.png", "loss.png"):
        assert (out / name).is_file(), name
    assert (out / "preview_3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "lr", "steps_per_s", "slices_per_s", "grad_norm"} <= set(records[0])
    assert records[0]["lr"] == 1e-4 and all(np.isfinite(r["loss"]) for r in records)

    last = read_checkpoint(out / "last.pt")
    assert last["step"] == 3 and "train_state" in last and os.path.samefile(out / "last.pt", out / "ckpt_3.pt")
    assert "train_state" not in read_checkpoint(model_path)

    loaded = load_checkpoint(model_path)
    assert loaded.step == 3 and loaded.preset == PRESETS["tiny"]
    sha = data_module.file_sha256(brains / "sub0" / "t1.nii.gz")[:12]
    for text in ("tiny preset", "steps: 3", f"sha256:{sha}", "torch", "wall time", str(brains / "sub1" / "t1.nii.gz")):
        assert text in loaded.provenance, text
    assert f"{brains / 'sub0' / 'brainmask.nii.gz'}  sha256" not in loaded.provenance      # a mask, not a volume
    assert "sha256:" + sha + "  brain mask brainmask.nii.gz" in loaded.provenance            # applied to its image
    assert loaded.modality == "t1"                                     # named by the files: recorded for the tools

    slices = cached_volume(brains / "sub0" / "t1.nii.gz", loaded.preset.preprocess).slices[:3]
    result = Detector(loaded.model, loaded.preset, device="cpu").reconstruct(np.array(slices), timestep=300)
    assert result.recon.shape == (3, 32, 32) and np.isfinite(result.error).all()


def assert_same_training_state(a_path: Path, b_path: Path) -> None:
    """EMA weights, raw weights and Adam moments of two checkpoints agree to float tolerance."""
    a, b = read_checkpoint(a_path), read_checkpoint(b_path)
    assert a["step"] == b["step"]
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["train_state"]["model"][key], b["train_state"]["model"][key],
                                   rtol=1e-5, atol=1e-6)
    opt_a, opt_b = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    for k in opt_a:
        torch.testing.assert_close(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_resume_equals_uninterrupted_run_after_stop_or_sigterm(brains, tmp_path, monkeypatch):
    full, done, part = tmp_path / "full", tmp_path / "done", tmp_path / "part"
    train(tiny(brains, full, steps=4, save_every=100))
    state = read_checkpoint(full / "last.pt")
    assert not torch.equal(state["ema"]["input_conv.weight"], state["train_state"]["model"]["input_conv.weight"])

    train(tiny(brains, done, steps=2))                                 # N steps, a finished run ...
    with pytest.raises(ValueError, match="--resume"):
        train(tiny(brains, done, steps=4))
    train(tiny(brains, done, steps=4, resume=True))                    # ... continued to 2N
    assert_same_training_state(full / "last.pt", done / "last.pt")

    real_sample, calls = SliceSet.sample, []

    def sample_then_signal(self, batch, generator, **kw):
        calls.append(batch)
        if len(calls) == 2:                      # during step 2: as if `kill -TERM` arrived mid-step
            os.kill(os.getpid(), signal.SIGTERM)
        return real_sample(self, batch, generator, **kw)

    monkeypatch.setattr(SliceSet, "sample", sample_then_signal)
    with pytest.raises(Interrupted) as stopped:
        train(tiny(brains, part, steps=4, save_every=100))
    monkeypatch.setattr(SliceSet, "sample", real_sample)
    assert stopped.value.step == 2 and stopped.value.checkpoint == part / "ckpt_2.pt"
    assert [s for s, _ in checkpoints(part)] == [2] and load_checkpoint(part / "model.pt").step == 2
    train(tiny(brains, part, steps=4, resume=True))
    assert_same_training_state(full / "last.pt", part / "last.pt")
    steps = [json.loads(line)["step"] for line in (part / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert len(read_checkpoint(part / "last.pt")["train_state"]["sessions"]) == 2


KILL_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
import torch
from trainer.loop import TrainConfig, train
real_save, saves = torch.save, []
def dying_save(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:                          # the second checkpoint: half a file, then SIGKILL
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
train(TrainConfig(data=(sys.argv[1],), out=Path(sys.argv[2]), preset="tiny", steps=4, batch_size=2,
                  save_every=2, preview_every=0, device="cpu", progress=False))
"""


def test_killed_while_saving_leaves_previous_checkpoint_loadable(brains, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_SAVING, str(brains), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [s for s, _ in checkpoints(out)] == [2]
    assert list(out.glob(".ckpt_4.pt.*.tmp")), "the half-written temporary should be all that step 4 left"
    assert load_checkpoint(out / "ckpt_2.pt").step == 2 and read_checkpoint(out / "last.pt")["step"] == 2

    train(tiny(brains, out, steps=4, resume=True))
    assert [s for s, _ in checkpoints(out)] == [2, 4] and load_checkpoint(out / "model.pt").step == 4
    assert not list(out.glob(".*.tmp"))


def test_ddp_two_cpu_processes_rank0_writes(brains, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.cli",
           "--data", str(brains), "--out", str(out), "--preset", "tiny", "--steps", "2", "--batch-size", "2",
           "--device", "cpu", "--preview-every", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model.pt") == 1                          # only rank 0 reports
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_2.pt", "last.pt", "log.jsonl", "loss.png", "model.pt",
                                                     "preview_2.png"]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    loaded = load_checkpoint(out / "model.pt")
    assert loaded.step == 2 and "batch 2 x 2 process(es)" in loaded.provenance
    assert read_checkpoint(out / "last.pt")["train_state"]["world_size"] == 2


def test_ranks_and_steps_draw_different_batches(brains):
    volumes = [cached_volume(p, PRESETS["tiny"].preprocess) for p in find_volumes([str(brains)])]
    data = SliceSet(volumes)
    seeds = {step_seed(0, step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2 ** 63 for s in seeds)
    batches = [data.sample(8, torch.Generator().manual_seed(step_seed(0, 3, rank))) for rank in (0, 1)]
    assert batches[0].shape == (8, 1, 32, 32) and not torch.equal(*batches)
    again = data.sample(8, torch.Generator().manual_seed(step_seed(0, 3, 0)))
    assert torch.equal(batches[0], again)


def test_cache_reused_then_rebuilt_for_changed_file_or_parameters(brains, cache, monkeypatch):
    path, cfg = brains / "sub0" / "t1.nii.gz", PRESETS["tiny"].preprocess
    first = cached_volume(path, cfg)
    assert not first.from_cache and first.slices.dtype == np.float32 and isinstance(first.slices, np.memmap)
    entries = sorted((cache / "slices").iterdir())
    assert [p.suffix for p in entries] == [".json", ".npy"]

    real_prepare = data_module.prepare
    monkeypatch.setattr(data_module, "prepare", lambda *a, **k: pytest.fail("preprocessed a cached volume"))
    second = cached_volume(path, cfg)
    assert second.from_cache and np.array_equal(first.slices, second.slices)
    monkeypatch.setattr(data_module, "prepare", real_prepare)

    make_brain(path, seed=99)                                          # the file changes
    changed = cached_volume(path, cfg)
    assert not changed.from_cache and not np.array_equal(np.asarray(changed.slices), np.asarray(first.slices))
    assert len(list((cache / "slices").glob("*.npy"))) == 1             # the stale entry is gone

    other = cached_volume(path, replace(cfg, percentile_high=95.0))    # other preprocessing: its own entry
    assert not other.from_cache and len(list((cache / "slices").glob("*.npy"))) == 2

    npy = next(p for p in (cache / "slices").glob("*.npy") if p.stem in str(changed.slices.filename))
    npy.write_bytes(npy.read_bytes()[:100])                            # a damaged entry is rebuilt
    assert not cached_volume(path, cfg).from_cache and cached_volume(path, cfg).from_cache


def test_file_selection_skips_masks_and_labels_and_checks_modality(tmp_path):
    for name in ("brainmask.nii.gz", "brainmask_t1.nii.gz", "aseg.nii.gz", "gm.nii.gz", "wm.nii.gz",
                 "gmwm_labels.nii.gz", "sub-01_desc-brain_mask.nii.gz", "lesion.nii", "c1_prob.nii",
                 "sub-01_dseg.nii.gz", "T1_seg.nii.gz"):
        assert is_mask_or_label(name), name
    for name in ("t1.nii.gz", "IXI002-Guys-0828-T1.nii.gz", "sub-01_T1w.nii.gz", "brain.nii", "mprage.nii.gz"):
        assert not is_mask_or_label(name), name
    assert modality_of("a/IXI002-Guys-0828-T2.nii.gz") == "t2"
    assert modality_of("a/BraTS-GLI-00000-000-t2f.nii.gz") == "flair"
    assert modality_of("sub/t1/brain.nii.gz") == "t1" and modality_of("x/brain.nii.gz") is None

    root = tmp_path / "mixed"
    for rel in ("a/t1.nii.gz", "a/t2.nii.gz", "a/brainmask.nii.gz", "b/T1w.nii", "b/aseg.nii.gz", "c/notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    with pytest.raises(DataError, match=r"mixes modalities \(2 t1, 1 t2\).*--modality t1"):
        find_volumes([str(root)])
    assert [p.name for p in find_volumes([str(root)], modality="T1w")] == ["t1.nii.gz", "T1w.nii"]
    assert [p.name for p in find_volumes([str(root / "*" / "t1*")])] == ["t1.nii.gz"]
    assert [p.name for p in find_volumes([str(root / "a" / "brainmask.nii.gz")])] == ["brainmask.nii.gz"]
    with pytest.raises(DataError, match="matches nothing"):
        find_volumes([str(root / "*.nii.gz")])
    with pytest.raises(DataError, match="unknown modality"):
        find_volumes([str(root)], modality="ct")


def test_augment_keeps_background_and_range(brains):
    volume = cached_volume(brains / "sub0" / "t1.nii.gz", PRESETS["tiny"].preprocess)
    x0 = torch.from_numpy(np.array(volume.slices[4:8])).unsqueeze(1)            # (4, 1, 32, 32)
    moved = augment(x0, torch.Generator().manual_seed(0))
    assert moved.shape == x0.shape and moved.min() >= -1 and moved.max() <= 1
    assert torch.all(moved[:, :, :2, :2] == -1)                                  # background corners stay -1
    assert not torch.allclose(moved, x0)
    assert torch.equal(moved, augment(x0, torch.Generator().manual_seed(0)))


def test_brain_mask_beside_an_image_is_found_and_applied(tmp_path, cache):
    img = make_brain(tmp_path / "a" / "t1.nii.gz", seed=3)
    assert brain_mask_for(img) is None
    skull = nib.load(str(img))
    data = skull.get_fdata()
    outside = data == 0
    data[outside] = np.random.default_rng(0).uniform(30, 60, np.count_nonzero(outside))  # a 'skull' around it
    nib.save(nib.Nifti1Image(data.astype(np.float32), skull.affine), str(img))
    for name in ("brainmask.nii.gz", "brainmask_t1.nii", "t1_brainmask.nii.gz"):      # lowest priority first
        mask = make_mask(tmp_path / "a" / name, make_brain(tmp_path / "ref.nii.gz", seed=3))
        assert brain_mask_for(img) == mask
    other = make_brain(tmp_path / "a" / "IXI002-Guys-T1.nii.gz", seed=4)
    assert brain_mask_for(other) == tmp_path / "a" / "brainmask.nii.gz"     # the folder's lone mask ...
    own = make_mask(tmp_path / "a" / "IXI002-Guys-T1_brainmask.nii", other)
    assert brain_mask_for(other) == own                                # ... unless it has its own
    volume = open_scan(img, brain_mask=brain_mask_for(img)).volume
    inside = nib.load(str(mask)).get_fdata() > 0
    assert volume.data.min() == 0 and np.count_nonzero(volume.data) == np.count_nonzero(inside)
    cfg = PRESETS["tiny"].preprocess
    with_mask, without = cached_volume(img, cfg, mask=mask), cached_volume(img, cfg)
    assert with_mask.mask == mask and without.mask is None                # two cache entries, one per mask
    assert not np.array_equal(np.asarray(with_mask.slices), np.asarray(without.slices))
    assert with_mask.slices.min() == -1 and np.isclose(with_mask.z_ratio, 6.0 / cached_pixel_mm(img, mask))
    empty = tmp_path / "a" / "empty_brainmask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(inside.shape, np.uint8), skull.affine), str(empty))
    with pytest.raises(ValueError, match="empty"):
        open_scan(img, brain_mask=empty)


def test_scan_without_mask_is_brain_extracted_when_it_has_a_skull(tmp_path, cache, monkeypatch):
    """No mask beside a with-skull scan: the automatic check sends it to brain extraction (deepbet stood in for by
    the true mask here), the cache entry records it, and a skull-stripped scan is used as it is."""
    from sss_viewer.core import inputs
    from sss_viewer.core.brain import Verdict

    img = make_brain(tmp_path / "b" / "t1.nii.gz", seed=5)
    clean = nib.load(str(img)).get_fdata()
    brain = clean > 0                                                   # native (X, Y, Z) = canonical (RAS grid)
    data = np.where(brain, clean, np.random.default_rng(1).uniform(30, 60, clean.shape))
    nib.save(nib.Nifti1Image(data.astype(np.float32), nib.load(str(img)).affine), str(img))
    calls = []
    monkeypatch.setattr(inputs, "skull_verdict", lambda volume: Verdict(False, "a skull", {}))
    monkeypatch.setattr(inputs, "extractor", lambda device="cpu": type("Fake", (), {
        "mask": lambda self, volume: calls.append(volume) or brain})())
    cfg = PRESETS["tiny"].preprocess
    extracted = cached_volume(img, cfg)
    assert extracted.extraction == "deepbet" and len(calls) == 1 and not extracted.from_cache
    again = cached_volume(img, cfg)
    assert again.from_cache and again.extraction == "deepbet" and len(calls) == 1   # the cache remembers it
    assert np.array_equal(np.asarray(again.slices), np.asarray(extracted.slices))
    monkeypatch.setattr(inputs, "skull_verdict", lambda volume: Verdict(True, "stripped", {}))
    other = make_brain(tmp_path / "c" / "t1.nii.gz", seed=6)
    assert cached_volume(other, cfg).extraction == "none" and len(calls) == 1


def cached_pixel_mm(img: Path, mask: Path) -> float:
    from sss_viewer.core.volume import prepare
    return prepare(open_scan(img, brain_mask=mask).volume, PRESETS["tiny"].preprocess).pixel_mm


def test_oblique_plane_samples_the_tilted_plane():
    n, s = 40, 16
    z = np.arange(n, dtype=np.float32)[:, None, None]
    stack = np.broadcast_to(z / n - 0.5, (n, s, s)).copy()               # each slice holds its depth
    volume = CachedVolume(path=Path("x"), sha256="", slices=stack, first_slice=0, from_cache=True, z_ratio=0.5)
    assert torch.equal(oblique_plane(volume, 20, 0.0, 0.0), torch.from_numpy(stack[20]))
    pitch = np.radians(10)
    plane = oblique_plane(volume, 20, pitch, 0.0).numpy()
    rows = np.arange(s) + 0.5 - s / 2
    expect = (20 + rows * np.sin(pitch) / 0.5) / n - 0.5                 # depth grows down the rows, not across
    np.testing.assert_allclose(plane, np.broadcast_to(expect[:, None], (s, s)), atol=1e-5)
    roll = oblique_plane(volume, 20, 0.0, pitch).numpy()
    np.testing.assert_allclose(roll, plane.T, atol=1e-5)
    top = oblique_plane(volume, n - 1, np.radians(30), 0.0).numpy()        # beyond the stack: its last slice
    assert top.max() <= stack[-1].max() + 1e-6


def test_three_axis_augmentation_draws_new_planes_deterministically(brains):
    volumes = [cached_volume(p, PRESETS["tiny"].preprocess) for p in find_volumes([str(brains)])]
    data = SliceSet(volumes)
    flat = data.sample(6, torch.Generator().manual_seed(5))
    tilted = data.sample(6, torch.Generator().manual_seed(5), tilt_deg=10)
    assert tilted.shape == flat.shape and not torch.equal(tilted, flat)
    assert torch.equal(tilted, data.sample(6, torch.Generator().manual_seed(5), tilt_deg=10))
    assert tilted.min() >= -1 and tilted.max() <= 1


def test_intensity_augmentation_keeps_the_background(brains):
    volume = cached_volume(brains / "sub0" / "t1.nii.gz", PRESETS["tiny"].preprocess)
    x0 = torch.from_numpy(np.array(volume.slices[4:8])).unsqueeze(1)            # (4, 1, 32, 32)
    still = Augment(rotation_deg=0, tilt_deg=0, scale=0, shift_px=0, flip=False, elastic_px=0, gamma=1,
                    brightness=0, bias=0, noise=0)
    np.testing.assert_allclose(augment(x0, torch.Generator().manual_seed(0), still), x0, atol=1e-5)
    noisy = augment(x0, torch.Generator().manual_seed(0), replace(still, bias=0.3, noise=0.05))
    brain = x0 > -1
    assert torch.equal(noisy[~brain], x0[~brain])                          # background untouched
    assert (noisy[brain] - x0[brain]).abs().mean() > 0.02


def _decode_png(data: bytes) -> tuple[tuple[int, int, int], bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(tag + body)
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)[:4]
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    return header, zlib.decompress(idat)


def test_png_encoder_round_trips_grey_and_rgb():
    grey = (np.arange(12 * 7) % 256).astype(np.uint8).reshape(12, 7)
    (w, h, depth, colour), raw = _decode_png(encode_png(grey))
    assert (w, h, depth, colour) == (7, 12, 8, 0)
    assert np.array_equal(np.frombuffer(raw, np.uint8).reshape(12, 8)[:, 1:], grey)
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    (w, h, _, colour), raw = _decode_png(encode_png(rgb))
    assert colour == 2 and np.array_equal(np.frombuffer(raw, np.uint8).reshape(12, 22)[:, 1:].reshape(12, 7, 3), rgb)
    tiled = grid([grey, grey, grey], columns=2, pad=1)
    assert tiled.shape == (2 * 12 + 3, 2 * 7 + 3) and np.array_equal(tiled[1:13, 9:16], grey)


@pytest.mark.parametrize("case", ["empty", "unreadable", "mixed", "too_small", "no_resume"])
def test_bad_data_exits_2_with_one_line(case, tmp_path, capsys, brains):
    data, out = tmp_path / "bad", tmp_path / "out"
    data.mkdir()
    expect = {"empty": "no NIfTI volumes found", "unreadable": "not a readable NIfTI",
              "mixed": "mixes modalities", "too_small": "fewer than 16", "no_resume": "--resume"}[case]
    if case == "unreadable":
        (data / "t1.nii.gz").write_bytes(b"not a nifti at all")
    elif case == "mixed":
        make_brain(data / "t1.nii.gz", 0)
        make_brain(data / "flair.nii.gz", 1)
    elif case == "too_small":
        make_brain(data / "t1.nii.gz", 0, shape=(40, 48, 8))
    elif case == "no_resume":
        data = brains
        (out / "ckpt_5.pt").parent.mkdir()
        (out / "ckpt_5.pt").write_bytes(b"x")
    code = cli.main(["--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sss-train: error: ") and expect in err[0], err


def test_init_starts_a_new_run_from_a_checkpoints_weights_with_unit_noise(brains, tmp_path, capsys):
    first = train(tiny(brains, tmp_path / "a", steps=2))
    out = tmp_path / "b"
    model_path = train(tiny(brains, out, steps=1, lr=1e-12, init=first, unit_noise=True))
    start, tuned = read_checkpoint(first), read_checkpoint(out / "last.pt")
    assert tuned["step"] == 1                                     # a new run: its own steps, fresh optimiser
    for key, value in start["ema"].items():                       # lr ~0: the raw weights are still the init's
        torch.testing.assert_close(tuned["train_state"]["model"][key], value, rtol=0, atol=1e-9)
    loaded = load_checkpoint(model_path)
    assert loaded.preset.noise.standardize and not PRESETS["tiny"].noise.standardize
    assert f"initialised from {first}" in loaded.provenance and "steps: 2" in loaded.provenance

    base = ["--data", str(brains), "--device", "cpu", "--steps", "1"]
    assert cli.main(base + ["--out", str(tmp_path / "c"), "--preset", "small", "--init", str(first)]) == 2
    assert "differs from the small preset" in capsys.readouterr().err
    assert cli.main(base + ["--out", str(out), "--resume", "--init", str(first)]) == 2
    assert "--init starts a new run" in capsys.readouterr().err
    assert cli.main(base + ["--out", str(out), "--resume", "--preset", "tiny", "--steps", "2"]) == 2
    assert "differs from the tiny preset" in capsys.readouterr().err            # the run has unit noise
    assert cli.main(base + ["--out", str(out), "--resume", "--preset", "tiny", "--unit-noise", "--steps", "2"]) == 0
    assert f"initialised from {first}" in load_checkpoint(out / "model.pt").provenance


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_precision_sets_the_forward_autocast_and_is_recorded(brains, tmp_path, monkeypatch, precision):
    real_forward, autocast = UNet.forward, []

    def spy(self, x, t):
        autocast.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real_forward(self, x, t)

    monkeypatch.setattr(UNet, "forward", spy)
    out = tmp_path / precision
    model_path = train(tiny(brains, out, steps=2, precision=precision, preview_every=2))
    expect = {"fp32": "fp32", "bf16": "bf16", "auto": "bf16" if native_bf16(torch.device("cpu")) else "fp32"}[precision]
    assert autocast and set(autocast) == {expect == "bf16"}                 # training steps and the preview
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert read_checkpoint(out / "last.pt")["train_state"]["sessions"][-1]["precision"] == expect
    assert f"1 x cpu, {expect}: " in load_checkpoint(model_path).provenance


def test_unknown_precision_is_a_clear_error(brains, tmp_path, capsys):
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16"):
        train(tiny(brains, tmp_path / "x", steps=1, precision="fp16"))
    with pytest.raises(SystemExit):
        cli.main(["--data", str(brains), "--out", str(tmp_path / "y"), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_max_timestep_caps_the_training_timesteps(brains, tmp_path, monkeypatch):
    from sss_viewer.core.diffusion import Diffusion
    seen, real = [], Diffusion.q_sample

    def spy(self, x0, t, eps):
        seen.append(t.clone())
        return real(self, x0, t, eps)

    monkeypatch.setattr(Diffusion, "q_sample", spy)
    model = train(tiny(brains, tmp_path / "capped", steps=6, max_timestep=3))
    drawn = torch.cat(seen[:6])                                         # the steps' draws (previews come after)
    assert drawn.max() < 3 and len(drawn.unique()) > 1
    assert "timesteps below 3" in load_checkpoint(model).provenance
    with pytest.raises(ValueError, match="max-timestep"):
        train(tiny(brains, tmp_path / "bad", steps=1, max_timestep=0))
