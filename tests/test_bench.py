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
                "slices_per_s_paper", "align_total_s", "device"):
        assert key in res, key
    assert res["device"] == "cpu" and res["slices_per_s_small"] > 0
    assert res["align_overlap"] > 0.9                                  # the tilted demo brain found the template
    assert "Whole volume end to end" in capsys.readouterr().out


def test_cuda_request_without_cuda_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(["--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_bench_imports_no_qt():
    """Every part but reading runs without a display toolkit: importing the bench loads no PySide6."""
    import subprocess
    import sys
    code = "import sys; import sss_viewer.cli.bench; sys.exit('PySide6' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert "reading" in bench.PARTS and "reading" not in bench.DEFAULT_PARTS


def test_reading_room_bench_needs_no_model(tmp_path, monkeypatch, capsys):
    """The reading part on a small volume, with building a UNet made an error: maps, lesions, moves, report."""
    from sss_viewer.core import unet

    def no_model(*args, **kwargs):
        raise AssertionError("the reading room bench built a model")
    monkeypatch.setattr(unet.UNet, "__init__", no_model)
    real = bench.bench_reading
    monkeypatch.setattr(bench, "bench_reading", lambda moves, repeats: real(
        shape=(48, 44, 30), preset_name="tiny", blobs=8, moves=4, repeats=1, widget_size=(600, 480)))
    assert bench.main(["--device", "cpu", "--parts", "reading", "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["reading_shape"] == [48, 44, 30] and res["reading_lesions"] >= 1
    for key in ("reading_canonical_mask_s", "reading_canonical_heat_s", "reading_lesion_list_s", "reading_report_s",
                *(f"reading_move_ms_{stat}_{mode}" for stat in ("median", "p95") for mode in ("contour", "fill", "heat"))):
        assert res[key] > 0, key
    for mode in ("contour", "fill", "heat"):
        assert res[f"reading_paints_per_move_{mode}"] >= 3, mode     # every move drew all three planes
    assert res["reading_report_pages"] >= 1 + min(res["reading_lesions"], 5)   # front page + a page per region
    assert "noise_speedup" not in res and "Reading room, no model" in capsys.readouterr().out
