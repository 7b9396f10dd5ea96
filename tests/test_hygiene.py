"""Map hygiene: each option against a hand-made example, MapOptions' names and checks, and detect_volume's wiring."""

import numpy as np
import pytest
import torch

from sss_viewer.core.anomaly import Detector, PostProcess, detect_volume, make_mask, postprocess
from sss_viewer.core.hygiene import (MapOptions, erode_brain, keep_persistent, lowpass_error, median_map,
                                     with_min_area)
from sss_viewer.core.volume import prepare


def test_erode_removes_a_thin_bright_rim():
    brain = np.zeros((1, 12, 12), bool)
    brain[0, 2:10, 2:10] = True                                             # an 8 x 8 brain
    error = np.zeros((1, 12, 12), np.float32)
    error[0, 2:10, 2:10] = 0.9                                              # the brain's own rim: bright ...
    error[0, 3:9, 3:9] = 0.0
    error[0, 5:7, 5:7] = 0.8                                                # ... and a 2 x 2 anomaly inside
    for px, side in ((1, 6), (2, 4), (3, 2)):                               # a disk erodes a square by px a side
        want = np.zeros_like(brain)
        want[0, 2 + px:10 - px, 2 + px:10 - px] = True
        np.testing.assert_array_equal(erode_brain(brain, px), want)
    np.testing.assert_array_equal(erode_brain(brain, 0), brain)
    cleaned = MapOptions(erode=1).clean_map(error, brain)
    expect = np.zeros_like(error)
    expect[0, 5:7, 5:7] = 0.8
    np.testing.assert_array_equal(cleaned, expect)
    np.testing.assert_array_equal(make_mask(cleaned, 0.3, PostProcess(enabled=False)), expect > 0)
    edge = np.ones((1, 5, 5), bool)                                         # beyond the image is not brain
    assert erode_brain(edge, 1).sum() == 9


def test_median_removes_salt_noise_and_keeps_a_blob():
    error = np.zeros((2, 16, 16), np.float32)
    error[0, 4:9, 4:9] = 1.0                                                # a 5 x 5 blob
    salt = [(0, 1, 13), (0, 12, 2), (0, 14, 14), (1, 7, 7), (1, 0, 0)]
    for p in salt:
        error[p] = 5.0
    out = median_map(error, 3)
    want = np.zeros_like(error)
    want[0, 4:9, 4:9] = 1.0
    want[0, [4, 4, 8, 8], [4, 8, 4, 8]] = 0.0                               # a corner sees 4 blob pixels of 9
    np.testing.assert_array_equal(out, want)
    brain = np.ones_like(error, dtype=bool)
    brain[0, :, 6:] = False                                                 # never beyond the brain
    np.testing.assert_array_equal(median_map(error, 3, brain), want * brain)
    assert median_map(error, 0) is error and median_map(error, 1) is error


def test_persist_keeps_regions_over_enough_slices():
    mask = np.zeros((6, 10, 10), bool)
    mask[1, 1:3, 1:3] = True                                                # on one slice only
    mask[2:5, 6:9, 6:9] = True                                              # spans slices 2, 3, 4
    mask[2, 1, 6], mask[3, 2, 7] = True, True                               # touch across slices only diagonally
    three = np.zeros_like(mask)
    three[2:5, 6:9, 6:9] = True
    np.testing.assert_array_equal(keep_persistent(mask, 2), three)
    np.testing.assert_array_equal(keep_persistent(mask, 3), three)
    assert not keep_persistent(mask, 4).any()
    np.testing.assert_array_equal(keep_persistent(mask, 1), mask)
    np.testing.assert_array_equal(MapOptions(persist=2).volume_mask(mask), three)
    np.testing.assert_array_equal(MapOptions(persist=2).without_persist().volume_mask(mask), mask)


def test_lowpass_hides_a_checkerboard_and_keeps_a_blob():
    g = np.indices((32, 32))
    base = np.linspace(-1, 1, 32, dtype=np.float32)[None, :] * np.ones((32, 1), np.float32)
    checker = 0.5 * (-1.0) ** (g[0] + g[1])                                 # the highest frequency there is
    x0_hat = base[None]                                                     # (1, 32, 32)
    x0 = (base + checker)[None].astype(np.float32)
    raw = lowpass_error(x0, x0_hat, 0)
    np.testing.assert_allclose(raw, 0.25, rtol=1e-6)                        # the raw squared error: 0.25 everywhere
    assert lowpass_error(x0, x0_hat, 1.0).max() < 1e-6                     # like with like: nothing left
    blob = x0.copy()
    blob[0, 10:18, 10:18] += 1.0                                            # an 8 x 8 difference besides
    smooth = lowpass_error(blob, x0_hat, 1.0)
    assert smooth[0, 13:15, 13:15].min() > 0.9 and smooth[0, :, 25:].max() < 1e-6
    brain = np.zeros((1, 32, 32), bool)
    brain[0, :, :16] = True
    np.testing.assert_array_equal(lowpass_error(blob, x0_hat, 1.0, brain), smooth * brain)
    with pytest.raises(ValueError, match="x0_hat"):
        MapOptions(lowpass=1).clean_map(raw, None)


def test_min_area_drops_small_regions_with_or_without_postprocessing():
    mask = np.zeros((1, 12, 12), bool)
    mask[0, 1:3, 1:3] = True                                                # 4 px
    mask[0, 6:10, 6:10] = True                                              # 16 px
    mask[0, 1, 9] = True                                                    # 1 px
    plain = with_min_area(PostProcess(enabled=False), 5)
    assert plain == PostProcess(enabled=True, dilate=False, keep_largest=0, min_area=5)
    want = np.zeros_like(mask)
    want[0, 6:10, 6:10] = True
    np.testing.assert_array_equal(postprocess(mask, plain), want)
    assert with_min_area(PostProcess(), 5) == PostProcess(min_area=5)
    assert with_min_area(PostProcess(enabled=False), 0) == PostProcess(enabled=False)
    assert MapOptions(min_area=20).postprocess(PostProcess()) == PostProcess(min_area=20)


def test_map_options_names_checks_and_defaults():
    assert MapOptions().name == "" and MapOptions().label == "" and not MapOptions().map_level
    full = MapOptions(lowpass=1, median=3, erode=2, normative=True, min_area=20, persist=3)
    assert full.name == "_lp1_med3_er2_nm_min20_3d3"
    assert MapOptions(lowpass=1.5).name == "_lp1.5" and MapOptions(persist=2).name == "_3d2"
    assert full.to_json() == {"lowpass": 1.0, "median": 3, "erode": 2, "normative": True, "min_area": 20,
                              "persist": 3, "name": "_lp1_med3_er2_nm_min20_3d3"}
    assert full.without_persist() == MapOptions(lowpass=1, median=3, erode=2, normative=True, min_area=20)
    assert full.map_key == (1.0, 3, 2, True) and full.norm_key == (1.0, 3, 2)
    assert MapOptions(min_area=5, persist=2).map_level is False
    for bad in ({"median": 2}, {"median": -3}, {"erode": -1}, {"lowpass": -0.5}, {"lowpass": float("nan")},
                {"persist": 1.5}):
        with pytest.raises(ValueError):
            MapOptions(**bad)
    error = np.ones((1, 4, 4), np.float32)
    assert MapOptions(min_area=3, persist=2).clean_map(error, None) is error    # the map itself is untouched


class Shrink(torch.nn.Module):
    """A model whose eps depends on its input, smoothly: eps = 0.5 x_t (no weights)."""

    def forward(self, x, t):
        return 0.5 * x


@pytest.mark.parametrize("where", ["host", "device"])
def test_detect_volume_applies_the_options(tiny_preset, monkeypatch, where):
    """detect_volume with options equals the hygiene functions applied by hand to its default result's maps; the
    defaults give the default result; a GPU-style detector (tensors until the end) gives the host's."""
    rng = np.random.default_rng(2)
    image = np.where(rng.random((40, 44, 9)) < 0.9, 60 + 40 * rng.random((40, 44, 9)), 0).astype(np.float32)
    mv = prepare(image, tiny_preset.preprocess)
    det = Detector(Shrink(), tiny_preset, device="cpu", batch_size=4, precision="fp32")
    if where == "device":
        monkeypatch.setattr(Detector, "volume_device", property(lambda self: self.device))
    first, last = mv.slice_range
    x0, brain = mv.data[first:last + 1], mv.brain_mask[first:last + 1]    # (n, S, S) each
    base = detect_volume(det, mv, threshold=0.05)
    same = detect_volume(det, mv, threshold=0.05, options=MapOptions())
    for a, b in ((base.recon, same.recon), (base.error, same.error), (base.mask, same.mask),
                 (base.scores, same.scores)):
        np.testing.assert_array_equal(a, b)
    assert 0 < base.mask.mean() < 0.9
    options = MapOptions(lowpass=1.0, median=3, erode=2, min_area=6, persist=2)
    got = detect_volume(det, mv, threshold=0.05, options=options)
    error = median_map(lowpass_error(x0, base.recon, 1.0, brain), 3, brain) * erode_brain(brain, 2)
    np.testing.assert_allclose(got.error, error, rtol=1e-5, atol=1e-7)
    mask = keep_persistent(make_mask(got.error, 0.05, PostProcess(min_area=6)), 2)
    np.testing.assert_array_equal(got.mask, mask)
    assert got.mask.sum() != base.mask.sum()
    np.testing.assert_array_equal(got.recon, base.recon)
