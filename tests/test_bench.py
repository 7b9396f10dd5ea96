"""sss-bench: each measurement runs on tiny settings and the JSON holds the contract keys (no timing assertions)."""

import json

import pytest
import torch

from sss_viewer.cli import bench
from sss_viewer.core.config import PRESETS

CPU = torch.device("cpu")


def test_noise_bench_checks_equality_with_the_package():
    r = bench.bench_noise(CPU, batch=1, size=24)
    assert r["noise_max_abs_diff"] < 1e-6
    assert r["noise_speedup"] == pytest.approx(r["noise_package_s"] / r["noise_ours_s"])


def test_single_step_vs_iterative_counts_every_chain_step():
    r = bench.bench_sss_vs_iterative("tiny", CPU, (4,))
    assert {"unet_call_s", "sss_s_4", "iterative_s_4", "sss_speedup_4", "sss_overhead_4"} <= set(r)
    assert r["sss_speedup_4"] == pytest.approx(r["iterative_s_4"] / r["sss_s_4"])


def test_flops_are_counted_from_the_model():
    from sss_viewer.core.unet import UNet
    tiny = PRESETS["tiny"].model
    flops = bench.count_flops(UNet(tiny), tiny.image_size)
    conv_in = 2 * 1 * tiny.base_channels * 9 * tiny.image_size ** 2        # the first 3x3 convolution alone
    assert flops > 10 * conv_in


def test_main_writes_the_contract_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.PRESETS, "small", PRESETS["tiny"])
    monkeypatch.setitem(bench.PRESETS, "paper", PRESETS["tiny"])
    real_noise = bench.bench_noise
    monkeypatch.setattr(bench, "bench_noise", lambda device, batch, size, package_fields=None:
                        real_noise(device, 1, 16))
    assert bench.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "b.json")]) == 0
    res = json.loads((tmp_path / "b.json").read_text())
    for key in ("noise_speedup", "noise_max_abs_diff", "sss_speedup_250", "sss_speedup_300", "slices_per_s_small",
                "slices_per_s_paper", "device"):
        assert key in res, key
    assert res["device"] == "cpu" and res["slices_per_s_small"] > 0
    assert "Whole volume end to end" in capsys.readouterr().out


def test_cuda_request_without_cuda_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(["--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err
