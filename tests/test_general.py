"""The bundled general T1 checkpoint: chosen for real scans (the demo keeps its own), calibrated, and quiet on a
healthy brain it never saw (resources/README.md gives its training data and held-out subjects)."""

import numpy as np
import pytest

from sss_viewer.core.anomaly import Detector, detect_volume
from sss_viewer.core.checkpoint import load_checkpoint
from sss_viewer.core.resources import DEMO_CHECKPOINT, DEMO_VOLUME, GENERAL_CHECKPOINT, default_checkpoint, resource
from sss_viewer.core.volume import prepare
from trainer.data import healthy_scan

HELD_OUT_FLAGGED_CEILING = 0.01   # the target: at most 1 % of an unseen healthy brain flagged by default


@pytest.fixture(scope="module")
def general():
    path = resource(GENERAL_CHECKPOINT)
    assert path.is_file(), f"{path} is missing: the general checkpoint ships with the project"
    return load_checkpoint(path)


def test_general_checkpoint_is_the_default_for_real_scans(general, tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_VIEWER_CONFIG_DIR", str(tmp_path))
    assert default_checkpoint() == resource(GENERAL_CHECKPOINT)
    assert default_checkpoint(resource(DEMO_VOLUME)) == resource(DEMO_CHECKPOINT)
    assert general.preset.model.image_size == 128 and general.preset.noise.standardize
    assert general.preset.preprocess.align == "mni-affine"   # trained on MNI-aligned brains: inference aligns too
    assert general.recommended.source.startswith("sss-calibrate") and 0 < general.recommended.threshold < 1
    assert resource(GENERAL_CHECKPOINT).stat().st_size < 50e6
    assert general.modality == "t1" and load_checkpoint(resource(DEMO_CHECKPOINT)).modality == "t1"


def test_unseen_healthy_brain_is_quiet_at_the_default_settings(general, real_data):
    image = real_data / "healthy-with-skull" / "niivue-fs-norm" / "t1.nii.gz"   # not trained on; calibrated on
    volume = prepare(healthy_scan(image).volume, general.preset.preprocess)
    rec = general.recommended
    detector = Detector(general.model, general.preset, "cpu", draws=rec.draws, normative=general.normative)
    result = detect_volume(detector, volume, (rec.timestep,), rec.threshold,
                           options=rec.map_options)                   # as sss-detect and the viewer run it
    brain = volume.brain_mask[result.slice_indices]
    flagged = np.count_nonzero(result.mask & brain) / np.count_nonzero(brain)
    assert flagged <= HELD_OUT_FLAGGED_CEILING, flagged
