"""Engine: schedule, q_sample, single-step and iterative sampling with an oracle, UNet presets, detector."""

import functools

import numpy as np
import pytest
import torch

from sss_viewer.core.anomaly import (Detector, PostProcess, consensus_mask, detect_volume, make_mask, native_bf16,
                                     postprocess, slice_scores, slice_seeds)
from sss_viewer.core.config import PRESETS, DiffusionConfig, NoiseConfig
from sss_viewer.core.diffusion import Diffusion
from sss_viewer.core.unet import AttentionBlock, UNet, count_parameters
from sss_viewer.core.volume import prepare

ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))       # independent float64 reference


def oracle_for(x0: torch.Tensor):
    """A 'model' that returns the true noise: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    def eps(x_t, t):
        a = torch.as_tensor(ABAR, dtype=x_t.dtype)[t].reshape(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    return eps


def smooth_image(b=2, s=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(b, 1, s, s, generator=g), 5, 1, 2)
    return (x * 2 - 1).to(dtype)                                           # (B, 1, S, S)


def test_schedule_matches_running_product():
    d = Diffusion(DiffusionConfig(), NoiseConfig())
    running, prod = [], 1.0
    for beta in np.linspace(1e-4, 0.02, 1000):
        prod *= 1 - beta
        running.append(prod)
    assert d.betas.dtype == torch.float64
    assert float(d.betas[0]) == pytest.approx(1e-4) and float(d.betas[-1]) == pytest.approx(0.02)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), running, rtol=1e-12)


def test_q_sample_closed_form():
    d = Diffusion(DiffusionConfig(), NoiseConfig())
    x0, eps = smooth_image(), torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 299])
    x_t = d.q_sample(x0, t, eps)
    for i, ti in enumerate(t.tolist()):
        expect = np.sqrt(ABAR[ti]) * x0[i].numpy() + np.sqrt(1 - ABAR[ti]) * eps[i].numpy()
        np.testing.assert_allclose(x_t[i].numpy(), expect, atol=1e-6)


@pytest.mark.parametrize("kind", ["simplex", "gaussian"])
@pytest.mark.parametrize("lam", [1, 50, 250, 300, 400, 600, 999])
def test_single_step_with_oracle_recovers_x0(kind, lam):
    d = Diffusion(DiffusionConfig(), NoiseConfig(kind=kind))
    x0 = smooth_image(dtype=torch.float64)
    x0_hat = d.single_step(oracle_for(x0), x0, lam, generator=torch.Generator().manual_seed(lam))
    assert torch.max(torch.abs(x0_hat - x0)) < 1e-5


def test_single_step_float32_oracle_in_paper_band():
    d = Diffusion(DiffusionConfig(), NoiseConfig())
    x0 = smooth_image()
    for lam in (250, 300, 350, 400):
        assert torch.max(torch.abs(d.single_step(oracle_for(x0), x0, lam, seeds=torch.tensor([1, 2])) - x0)) < 1e-5


def test_iterative_chain_with_oracle_ends_near_x0_and_yields_each_step():
    d = Diffusion(DiffusionConfig(), NoiseConfig())
    x0 = smooth_image(s=16)
    steps = list(d.iterative(oracle_for(x0), x0, 100, generator=torch.Generator().manual_seed(0)))
    assert [s.t for s in steps] == list(range(100, -1, -1))
    assert steps[-1].done == steps[-1].total == 101
    assert torch.mean(torch.abs(steps[-1].x - x0)) < 0.02
    start_err = torch.mean(torch.abs(steps[0].x - x0))
    assert start_err > 5 * torch.mean(torch.abs(steps[-1].x - x0))


def test_iterative_chain_can_be_cancelled():
    d = Diffusion(DiffusionConfig(), NoiseConfig(kind="gaussian"))
    x0 = smooth_image(s=16)
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)
    for step in d.iterative(model, x0, 300):
        if step.done == 5:
            break
    assert calls == [300, 299, 298, 297, 296]


def test_bad_timestep_is_a_clear_error():
    d = Diffusion(DiffusionConfig(), NoiseConfig())
    with pytest.raises(ValueError, match="outside"):
        d.single_step(lambda x, t: x, smooth_image(), 1000)


def test_paper_preset_matches_table_1():
    cfg = PRESETS["paper"].model
    assert (cfg.image_size, cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.num_heads, cfg.dropout) == \
        (256, 128, (1, 1, 2, 3, 4), 2, 2, 0.0)
    with torch.device("meta"):
        model = UNet(cfg)
        sizes = []
        for m in model.modules():
            if isinstance(m, AttentionBlock):
                m.register_forward_hook(lambda mod, inp, out: sizes.append((inp[0].shape[1], inp[0].shape[-1])))
        out = model(torch.zeros(1, 1, 256, 256), torch.zeros(1, dtype=torch.long))
    assert out.shape == (1, 1, 256, 256)
    n = count_parameters(model)
    assert 85e6 < n < 95e6, n                        # "about 90 M"
    # 2 (down) + 3 (up) blocks at each of 32 and 16 with attention, plus the middle block at 16.
    assert sorted(set(s for _, s in sizes)) == [16, 32]
    assert sum(1 for _, s in sizes if s == 32) == 5 and sum(1 for _, s in sizes if s == 16) == 6
    assert {c for c, s in sizes if s == 32} == {3 * 128} and {c for c, s in sizes if s == 16} == {4 * 128}


def test_unet_is_deterministic_and_shape_preserving(tiny_preset):
    torch.manual_seed(0)
    model = UNet(tiny_preset.model).eval()
    for p in model.parameters():                     # break the zero init so the output depends on x and t
        torch.nn.init.normal_(p, std=0.1)
    x = smooth_image()
    with torch.no_grad():
        a, b = model(x, torch.tensor([10, 500])), model(x, torch.tensor([10, 500]))
        c = model(x, torch.tensor([11, 500]))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a[0], c[0])


def model_and_slices(preset, b=5):
    """A tiny UNet whose output depends on its input (its zeroed last layer perturbed) and b smooth slices."""
    torch.manual_seed(0)
    model = UNet(preset.model)
    torch.nn.init.normal_(model.out[-1].weight, std=0.1)
    return model, smooth_image(b=b)[:, 0].numpy()


def test_detector_result_independent_of_batching(tiny_preset):
    """In fp32 a slice's result does not depend on its batch (in bf16 only to bf16's precision)."""
    model, slices = model_and_slices(tiny_preset)
    det = functools.partial(Detector, model, tiny_preset, device="cpu", precision="fp32")
    whole = det(batch_size=5).reconstruct(slices, 300, seed=7)
    one = det(batch_size=2).reconstruct(slices[3:4], 300, seed=7, indices=[3])
    np.testing.assert_allclose(one.recon[0], whole.recon[3], atol=1e-5)
    other_seed = det().reconstruct(slices[3:4], 300, seed=8, indices=[3])
    assert not np.allclose(other_seed.recon[0], whole.recon[3])
    np.testing.assert_allclose(whole.error, (slices - whole.recon) ** 2, rtol=1e-6)


def test_noise_draws_average_single_steps_with_their_own_seeds(tiny_preset):
    """K draws: x0_hat is the mean of K single steps, draw j seeded as the paper's step at seed + j * DRAW_SEED_STEP;
    K = 1 is the paper's single step exactly; progress counts K calls per slice."""
    from sss_viewer.core.anomaly import DRAW_SEED_STEP
    model, slices = model_and_slices(tiny_preset)
    det = functools.partial(Detector, model, tiny_preset, device="cpu", precision="fp32", batch_size=2)
    draws = [det().reconstruct(slices, 250, seed=3 + j * DRAW_SEED_STEP).recon for j in range(3)]
    calls = []
    three = det(draws=3).reconstruct(slices, 250, seed=3, progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_allclose(three.recon, np.mean(draws, axis=0), atol=1e-5)
    np.testing.assert_allclose(three.error, (slices - three.recon) ** 2, rtol=1e-5, atol=1e-7)
    assert calls[-1] == (3 * len(slices), 3 * len(slices))
    assert np.array_equal(det(draws=1).reconstruct(slices, 250, seed=3).recon, draws[0])
    with pytest.raises(ValueError, match="at least 1"):
        det(draws=0)


def test_compiled_detector_pads_to_one_shape_and_matches_eager(tiny_preset):
    """torch.compile (inductor, C++ on a CPU; tens of seconds): 5 slices in batches of 3, the last padded."""
    model, slices = model_and_slices(tiny_preset)
    eager = Detector(model, tiny_preset, device="cpu", batch_size=3, precision="fp32").reconstruct(slices, 300, seed=2)
    compiled = Detector(model, tiny_preset, device="cpu", batch_size=3, compile=True, precision="fp32")
    shapes = []
    compiled.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    out = compiled.reconstruct(slices, 300, seed=2)
    assert compiled.compiled and out.recon.shape == (5, 32, 32)
    np.testing.assert_allclose(out.recon, eager.recon, atol=1e-5)
    np.testing.assert_allclose(out.error, eager.error, rtol=1e-5, atol=1e-5)
    assert shapes == [(3, 1, 32, 32)] * 2


def test_bf16_on_the_cpu_is_close_to_fp32_and_auto_follows_the_hardware(tiny_preset):
    model, slices = model_and_slices(tiny_preset)
    fp32 = Detector(model, tiny_preset, device="cpu", precision="fp32")
    bf16 = Detector(model, tiny_preset, device="cpu", precision="bf16")
    assert bf16.layout == torch.channels_last and fp32.layout == torch.contiguous_format
    x, t = torch.from_numpy(slices[:, None]), torch.full((5,), 300)
    with torch.inference_mode():
        eps32, eps16 = fp32._eps(x, t), bf16._eps(x, t)
    assert eps16.dtype == torch.float32 and 0 < (eps16 - eps32).abs().mean() < 0.03 * eps32.abs().mean()
    a, b = fp32.reconstruct(slices, 300, seed=1), bf16.reconstruct(slices, 300, seed=1)
    assert np.abs(a.recon - b.recon).mean() < 0.03 * np.abs(a.recon - slices).mean()
    native = native_bf16(torch.device("cpu"))
    assert Detector(model, tiny_preset, device="cpu").precision == ("bf16" if native else "fp32")
    with pytest.raises(ValueError, match="precision"):
        Detector(model, tiny_preset, device="cpu", precision="fp16")


def test_detector_progress_and_cancel(tiny_preset):
    det = Detector(UNet(tiny_preset.model), tiny_preset, device="cpu", batch_size=2)
    seen = []
    det.reconstruct(smooth_image(b=5)[:, 0].numpy(), 250, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(InterruptedError):
        det.reconstruct(smooth_image(b=2)[:, 0].numpy(), 20, iterative=True, progress=lambda d, t: d < 10)


@pytest.mark.parametrize("timesteps", [(300,), (250, 300, 350)])
def test_detect_volume_kept_on_the_device_equals_the_host(tiny_preset, monkeypatch, timesteps):
    """A GPU detector's whole-volume path (tensors on its device until the results), run on the CPU."""
    model, _ = model_and_slices(tiny_preset)
    rng = np.random.default_rng(4)
    image = np.where(rng.random((40, 44, 9)) < 0.9, 60 + 40 * rng.random((40, 44, 9)), 0).astype(np.float32)
    mv = prepare(image, tiny_preset.preprocess)
    det = Detector(model, tiny_preset, device="cpu", batch_size=3, precision="fp32")
    assert det.volume_device is None
    runs = {}
    for where in ("host", "device"):
        if where == "device":
            monkeypatch.setattr(Detector, "volume_device", property(lambda self: self.device))
            monkeypatch.setattr(Detector, "reconstruct", "not the device path")           # (not callable)
        seen = []
        runs[where] = detect_volume(det, mv, timesteps, threshold=2.0, progress=lambda d, t: seen.append((d, t)))
        runs[where + " progress"] = seen
    host, device = runs["host"], runs["device"]
    assert runs["host progress"] == runs["device progress"] and runs["host progress"][-1] == (9 * len(timesteps),) * 2
    np.testing.assert_array_equal(device.recon, host.recon)
    np.testing.assert_allclose(device.error, host.error, rtol=1e-6, atol=0)        # a mean: summed in another order
    assert 0 < host.mask.mean() < 0.5
    np.testing.assert_array_equal(device.mask, host.mask)
    np.testing.assert_array_equal(device.scores, host.scores)
    on_device = prepare(image, tiny_preset.preprocess, device="cpu")
    assert on_device.on_device("cpu")[0] is on_device.resident[0]           # prepare's tensors, not copies
    np.testing.assert_array_equal(on_device.resident[1].numpy(), on_device.brain_mask)


def test_slice_seeds_differ_per_slice_and_timestep():
    a = slice_seeds(0, [0, 1, 2], 300)
    assert len(set(a.tolist())) == 3
    assert not torch.equal(a, slice_seeds(0, [0, 1, 2], 250)) and not torch.equal(a, slice_seeds(1, [0, 1, 2], 300))


def test_postprocess_dilates_and_keeps_largest():
    m = np.zeros((12, 12), bool)
    m[2:4, 2:4] = True            # 4 px region
    m[8, 8] = True                # 1 px region
    out = postprocess(m, PostProcess())
    expect = np.zeros_like(m)
    expect[1:5, 1:5] = True       # the 2x2 block dilated by 3x3, the speck removed
    np.testing.assert_array_equal(out, expect)
    both = postprocess(m, PostProcess(keep_largest=0))
    assert both[7:10, 7:10].all() and both.sum() == 16 + 9
    none = postprocess(m, PostProcess(dilate=False, keep_largest=0, min_area=2))
    np.testing.assert_array_equal(none, m & ~(np.arange(144).reshape(12, 12) == 8 * 12 + 8))
    np.testing.assert_array_equal(postprocess(m, PostProcess(enabled=False)), m)


def test_mask_threshold_consensus_and_scores():
    e = np.array([[[0.1, 0.5], [0.31, 0.3]]], np.float32)
    np.testing.assert_array_equal(make_mask(e, 0.3, PostProcess(enabled=False)), [[[0, 1], [1, 0]]])
    a, b, c = (np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool), np.array([1, 0, 0, 1], bool))
    np.testing.assert_array_equal(consensus_mask([a, b, c]), [1, 0, 0, 0])
    np.testing.assert_array_equal(consensus_mask([a, b, c], votes=1), [1, 1, 1, 1])
    with pytest.raises(ValueError):
        consensus_mask([a, b], votes=3)
    err = np.zeros((2, 10, 10), np.float32)
    err[1, :5] = 1.0
    np.testing.assert_allclose(slice_scores(err), [0.0, 1.0])


def test_gaussian_noise_follows_per_slice_seeds(tiny_preset):
    from dataclasses import replace
    preset = replace(tiny_preset, noise=NoiseConfig(kind="gaussian"))
    torch.manual_seed(0)
    model = UNet(preset.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    slices = smooth_image(b=4)[:, 0].numpy()
    whole = Detector(model, preset, device="cpu", batch_size=4, precision="fp32").reconstruct(slices, 300, seed=3)
    torch.manual_seed(123)                                    # the global generator must not matter
    part = Detector(model, preset, device="cpu", batch_size=1, precision="fp32").reconstruct(slices[2:], 300, seed=3,
                                                                                           indices=[2, 3])
    np.testing.assert_allclose(part.recon, whole.recon[2:], atol=1e-5)


def on(where, *arrays):
    """The arrays as they are (the host path), or as CPU tensors: the code path a GPU detector runs."""
    return arrays if where == "host" else tuple(None if a is None else torch.from_numpy(np.array(a)) for a in arrays)


def back(a):
    return a.numpy() if isinstance(a, torch.Tensor) else a


HOST_AND_TENSOR = pytest.mark.parametrize("where", ["host", "tensor"])


def _postprocess_per_slice(mask, pp):
    """Reference: the former slice-by-slice postprocess (3x3 dilation, 4-connected labels, stable argsort by area)."""
    from scipy import ndimage
    if not pp.enabled:
        return np.asarray(mask, bool)
    if mask.ndim == 3:
        return np.stack([_postprocess_per_slice(m, pp) for m in mask])
    out = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)) if pp.dilate else np.asarray(mask, bool)
    if pp.keep_largest == 0 and pp.min_area <= 0:
        return out
    labels, n = ndimage.label(out)
    if n == 0:
        return out
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    if pp.keep_largest:
        order = order[:pp.keep_largest]
    keep = order[areas[order] >= pp.min_area] + 1
    return np.isin(labels, keep)


PP_CASES = [PostProcess(), PostProcess(keep_largest=2), PostProcess(keep_largest=0), PostProcess(dilate=False),
            PostProcess(dilate=False, keep_largest=2, min_area=3), PostProcess(keep_largest=0, min_area=12),
            PostProcess(dilate=False, keep_largest=0, min_area=2), PostProcess(dilate=False, keep_largest=0),
            PostProcess(keep_largest=-1), PostProcess(enabled=False)]


@HOST_AND_TENSOR
@pytest.mark.parametrize("pp", PP_CASES, ids=repr)
def test_postprocess_stack_equals_per_slice_reference(pp, where):
    rng = np.random.default_rng(7)
    for shape, density in [((6, 17, 23), 0.08), ((5, 32, 32), 0.02), ((3, 9, 9), 0.4), ((4, 1, 12), 0.3)]:
        m = rng.random(shape) < density
        m[-2, -1, :] = m[-1, 0, :] = True                                  # last row of a slice, first of the next
        m[1] = False                                                       # a slice without regions
        out = back(postprocess(*on(where, m), pp))
        assert out.dtype == bool and out.shape == m.shape
        np.testing.assert_array_equal(out, _postprocess_per_slice(m, pp))
        for s in m:                                                        # the 2-D path
            np.testing.assert_array_equal(back(postprocess(*on(where, s), pp)), _postprocess_per_slice(s, pp))
    empty = np.zeros((3, 8, 8), bool)
    np.testing.assert_array_equal(back(postprocess(*on(where, empty), pp)), empty)


@HOST_AND_TENSOR
@pytest.mark.parametrize("pp", PP_CASES[:3] + PP_CASES[4:5], ids=repr)
def test_postprocess_area_ties_keep_the_earlier_region(pp, where):
    m = np.zeros((3, 12, 12), bool)
    m[0, 1, 8:10] = m[0, 4, 1:3] = m[0, 9, 5:7] = True                    # three 2-px regions, raster order: 1, 2, 3
    m[1, 2:4, 2] = m[1, 8, 8:10] = True                                    # a tie across rows
    m[1, 5:8, 5] = True                                                    # and one larger region
    m[2] = m[0].T                                                          # ties in other raster order
    np.testing.assert_array_equal(back(postprocess(*on(where, m), pp)), _postprocess_per_slice(m, pp))


@HOST_AND_TENSOR
def test_postprocess_keeps_slices_and_row_ends_apart(where):
    from scipy import ndimage
    m = np.zeros((2, 5, 5), bool)
    m[0, 4, :2] = m[1, 0, :2] = True                                       # 2 px at the end of 0 and the start of 1
    m[0, 1, 4] = m[0, 2, 0] = True                                         # 1 px each, neighbours only when flattened
    m[1, 3, 1:4] = True                                                    # slice 1's largest
    expect = np.zeros_like(m)
    expect[0, 4, :2] = expect[1, 3, 1:4] = True
    np.testing.assert_array_equal(back(postprocess(*on(where, m), PostProcess(dilate=False, min_area=2))), expect)
    grown = [ndimage.binary_dilation(s, np.ones((3, 3), bool)) for s in m]    # no wrap across rows or slices
    np.testing.assert_array_equal(back(postprocess(*on(where, m), PostProcess(keep_largest=0))), grown)


def long_regions(n: int) -> np.ndarray:
    """(2, n, n) bool: a serpentine path through every other row, and a spiral, one region each."""
    serpentine = np.zeros((n, n), bool)
    serpentine[::2] = True
    for r in range(1, n, 2):
        serpentine[r, n - 1 if r % 4 == 1 else 0] = True
    spiral = np.zeros((n, n), bool)
    lo, hi = 0, n - 1
    while lo <= hi:
        spiral[lo, lo:hi + 1] = spiral[lo:hi + 1, hi] = spiral[hi, lo:hi + 1] = True   # top, right, bottom
        spiral[lo + 2:hi + 1, lo] = True                                   # left, stopping short of the top
        if lo + 2 <= hi - 2:
            spiral[lo + 2, lo + 1] = True                                  # into the next ring
        lo, hi = lo + 2, hi - 2
    return np.stack([serpentine, spiral])


def test_tensor_regions_follow_long_winding_paths():
    """The tensor path's region sweeps converge on paths that wind across the whole slice (one region each)."""
    from scipy import ndimage
    m = long_regions(63)
    assert [ndimage.label(s)[1] for s in m] == [1, 1]
    m[:, 30, 30] ^= True                                                   # cut both paths in two
    assert [ndimage.label(s)[1] for s in m] == [2, 2]
    pp = PostProcess(dilate=False)
    for case in (m, np.ascontiguousarray(m[:, ::-1, ::-1])):              # the first pixel at either end
        np.testing.assert_array_equal(back(postprocess(torch.from_numpy(case), pp)), _postprocess_per_slice(case, pp))


@HOST_AND_TENSOR
def test_slice_scores_equal_numpy_percentile_per_slice(where):
    rng = np.random.default_rng(3)
    slice_scores_on = lambda error, brain=None: slice_scores(*on(where, error, brain))  # noqa: E731
    for shape in [(100, 16, 16), (4, 33, 21), (3, 1, 5)]:
        for error in [rng.random(shape, np.float32) ** 4,                     # continuous
                      rng.integers(0, 3, shape).astype(np.float32),           # mostly ties
                      rng.standard_normal(shape)]:                            # float64, signed
            brain = rng.random(shape) < rng.uniform(0.2, 1.0, (shape[0], 1, 1))   # weights below and above 0.5
            brain[0] = False                                                  # a slice without brain
            brain[1] = False
            brain[1, 0, 0] = True                                             # a single brain pixel
            expect = [np.percentile(e[b], [99])[0] if b.any() else 0.0 for e, b in zip(error, brain)]
            got = slice_scores_on(error, brain)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, np.array(expect, np.float32))
            whole = np.percentile(error.reshape(len(error), -1), [99], axis=1)[0].astype(np.float32)
            np.testing.assert_array_equal(slice_scores_on(error), whole)
    error = rng.random((2, 8, 8), np.float32)
    error[1, 3, 3] = np.nan
    everywhere = np.ones(error.shape, bool)
    np.testing.assert_array_equal(slice_scores_on(error, everywhere),
                                  np.array([np.percentile(error[0], [99])[0], np.nan], np.float32))
    np.testing.assert_array_equal(slice_scores_on(error[:1], np.zeros((1, 8, 8), bool)), [0.0])
    error[:, 0, 0] = np.inf                                                # numpy's lerp gives NaN for a lone inf
    single = np.zeros(error.shape, bool)
    single[:, 0, 0] = True
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(slice_scores_on(error[:1], single[:1]), [np.percentile(error[0, 0, :1], [99])[0]])
