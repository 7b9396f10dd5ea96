"""Checkpoints: save/load round trip is bit-exact; foreign, truncated and malicious files are refused."""

import os

import pytest
import torch

from sss_viewer.core.checkpoint import CheckpointError, Recommended, load_checkpoint, save_checkpoint
from sss_viewer.core.config import NoiseConfig, Preset
from sss_viewer.core.unet import UNet


def make_checkpoint(path, preset):
    torch.manual_seed(0)
    model = UNet(preset.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_checkpoint(path, preset, model.state_dict(), step=42, provenance="unit test")
    return model


def test_round_trip_is_bit_exact_and_keeps_configs(tmp_path, tiny_preset):
    preset = Preset(model=tiny_preset.model, preprocess=tiny_preset.preprocess,
                    noise=NoiseConfig(standardize=True, octaves=4))
    model = make_checkpoint(tmp_path / "m.pt", preset).eval()
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.preset == preset and loaded.step == 42 and loaded.provenance == "unit test"
    assert len(loaded.sha256) == 64
    x, t = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([5, 300])
    with torch.no_grad():
        assert torch.equal(model(x, t), loaded.model(x, t))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"format": "sss-viewer-checkpoint", "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_foreign_truncated_and_missing_files(tmp_path, tiny_preset):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an sss-viewer checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    make_checkpoint(tmp_path / "good.pt", tiny_preset)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_weights_not_matching_config_are_refused(tmp_path, tiny_preset):
    model = UNet(tiny_preset.model)
    state = model.state_dict()
    state.pop(next(iter(state)))
    save_checkpoint(tmp_path / "bad.pt", tiny_preset, state, step=0)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "bad.pt")


def test_recommended_settings_round_trip_and_default(tmp_path, tiny_preset):
    model = UNet(tiny_preset.model)
    save_checkpoint(tmp_path / "plain.pt", tiny_preset, model.state_dict(), step=1)
    assert load_checkpoint(tmp_path / "plain.pt").recommended == Recommended()       # the paper's 300 and 0.3
    rec = Recommended(timestep=180, threshold=0.12, source="unit test")
    save_checkpoint(tmp_path / "rec.pt", tiny_preset, model.state_dict(), step=1, recommended=rec)
    assert load_checkpoint(tmp_path / "rec.pt").recommended == rec
    payload = torch.load(tmp_path / "rec.pt", weights_only=True)
    payload["recommended"] = {"timestep": "soon"}
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="recommended"):
        load_checkpoint(tmp_path / "damaged.pt")
