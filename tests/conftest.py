"""Shared fixtures: offscreen Qt, tiny configs, and the path to the real data beside the project."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

DATA = Path(os.environ.get("SSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def real_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} is absent")
    return DATA


@pytest.fixture
def tiny_preset():
    from sss_viewer.core.config import PRESETS
    return PRESETS["tiny"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: tiny_checkpoint(preprocess, step=..) saves a tiny-preset checkpoint and returns its path.

    The weights are perturbed from a fixed seed (a fresh UNet's zeroed output layer would predict eps = 0);
    Gaussian noise keeps the tests fast.
    """
    import torch

    from sss_viewer.core.checkpoint import save_checkpoint
    from sss_viewer.core.config import PRESETS, NoiseConfig, Preset
    from sss_viewer.core.unet import UNet

    def make(preprocess, step: int = 0, provenance: str = "") -> Path:
        preset = Preset(model=PRESETS["tiny"].model, noise=NoiseConfig(kind="gaussian"), preprocess=preprocess)
        torch.manual_seed(0)
        model = UNet(preset.model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
        save_checkpoint(path, preset, model.state_dict(), step=step, provenance=provenance)
        return path

    return make


@pytest.fixture(autouse=True)
def _collect_on_main_thread():
    """Once a viewer has confined the cycle collector to the GUI thread, run its due collections between tests."""
    yield
    import sys
    if "PySide6.QtCore" in sys.modules:
        from PySide6.QtCore import QCoreApplication
        app = QCoreApplication.instance()
        collector = getattr(app, "sss_gc_collector", None) if app is not None else None
        if collector is not None:
            collector.collect_if_due()


@pytest.fixture
def shown(qtbot):
    """shown(widget, width, height): the widget owned by qtbot, sized, shown and exposed; returned."""
    def show(widget, width: int, height: int):
        qtbot.addWidget(widget)
        widget.resize(width, height)
        widget.show()
        qtbot.waitExposed(widget)
        return widget
    return show
