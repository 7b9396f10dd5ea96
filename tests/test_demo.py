"""The bundled demo works end to end: the shipped checkpoint runs on the demo volume and touches its lesion.

The demo's acceptance targets, at the default settings (lambda 300, threshold 0.3, post-processing):
slice-wise Dice >= 0.5 on the lesion's slices, and a near-empty mask on the healthy template (the
shipped checkpoint measures 0.603 and 1.5 % of brain pixels; resources/README.md).
"""

import pytest

from sss_viewer.core.resources import DEMO_CHECKPOINT, resource
from trainer.demo import check

LESION_DICE_FLOOR = 0.5          # the target
HEALTHY_FLAGGED_CEILING = 0.03   # share of the template's brain pixels; a misfit model flags 5-20 %


@pytest.fixture(scope="module")
def demo_checkpoint():
    path = resource(DEMO_CHECKPOINT)
    assert path.is_file(), f"{path} is missing: the demo checkpoint ships with the project"
    return path


def test_demo_lesion_is_found_at_default_settings(demo_checkpoint):
    report = check(demo_checkpoint)
    assert report["lesion_slices"] >= 20
    assert report["lesion_dice"] >= LESION_DICE_FLOOR, report


def test_healthy_template_is_flagged_less(demo_checkpoint, real_data):
    report = check(demo_checkpoint, template=real_data / "healthy" / "mni152-2009a" / "t1.nii.gz")
    assert report["healthy_flagged"] < HEALTHY_FLAGGED_CEILING, report
