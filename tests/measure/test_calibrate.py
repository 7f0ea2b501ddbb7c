"""Calibration: the fits recover known figures, and a calibrated file loads and changes the roofline."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import numpy as np
import pytest

from radsim.cost.kernels import elementwise, gemm, gemm_efficiency
from radsim.measure.calibrate import fit_gemm, fit_streamed_half_rows, write_toml
from radsim.spec.hardware import load_hardware, parse_hardware


def _gemm_results(e: float, h: float, peak: float) -> list[dict]:
    out = []
    for m in (1, 4, 16, 64, 256):
        flops = 2.0 * m * 576 * 576
        out.append(dict(rows=m, flops=flops, time_s=flops / (peak * e * m / (m + h))))
    return out


def test_fit_gemm_recovers_efficiency_and_half_rows():
    e, h = fit_gemm(_gemm_results(0.8, 5.0, 1e11), 1e11, launch_s=0.0)
    assert e == pytest.approx(0.8, rel=1e-6) and h == pytest.approx(5.0, rel=1e-6)
    assert fit_streamed_half_rows(_gemm_results(0.8, 20.0, 1e11)[1:], 1e11, 0.8, 0.0) == pytest.approx(20.0)


def test_datasheet_files_ignore_calibrated_figures():
    hw = load_hardware("epyc_9655")
    assert hw.gemm_half_rows is None and gemm_efficiency(hw, 1) == hw.gemm_efficiency


def test_calibrated_gemm_curve_and_gemv():
    hw = replace(load_hardware("epyc_2core"), gemm_half_rows=4.0, gemm_half_rows_streamed=20.0)
    assert float(gemm_efficiency(hw, 4)) == pytest.approx(hw.gemm_efficiency / 2)
    assert float(gemm_efficiency(hw, 20, resident=False)) == pytest.approx(hw.gemm_efficiency / 2)
    assert float(gemm_efficiency(hw, 1)) == hw.gemm_efficiency  # a matrix-vector product
    big = gemm(hw, hw.fp32_dense_flops, 4.0, 576, 576, 4.0, 4.0, resident=True)
    plain = gemm(replace(hw, gemm_half_rows=None), hw.fp32_dense_flops, 4.0, 576, 576, 4.0, 4.0)
    assert float(big.compute_time_s) == pytest.approx(2 * float(plain.compute_time_s))


def test_cache_and_elementwise_bandwidths():
    hw = replace(load_hardware("epyc_2core"), cache_bandwidth_Bps=40e9, elementwise_bandwidth_Bps=5e9)
    k = elementwise(hw, 100.0, 1000, 1.0, 4.0, reads=1.0, resident=True)
    assert float(k.time_s) == pytest.approx(100 * 1000 * 8 / 5e9 + hw.kernel_launch_overhead_s)
    g = gemm(hw, hw.fp32_dense_flops, 1.0, 1000, 1000, 4.0, 4.0, resident=True)
    assert float(g.memory_time_s) == pytest.approx((4e6 + 8000) / 40e9)


def test_written_file_loads_with_its_sources(tmp_path):
    prior = load_hardware("epyc_2core")
    figures = {k: (getattr(prior, k), prior.sources[k]) for k in prior.sources}
    figures["gemm_half_rows"] = (5.25, "measured: GEMM benchmark, test")
    path = tmp_path / "cal.toml"
    write_toml(path, "calibrated test", prior, figures, "a header\nof two lines")
    hw = parse_hardware(tomllib.loads(path.read_text()), path)
    assert hw.gemm_half_rows == 5.25 and hw.sources["gemm_half_rows"].startswith("measured")
    assert hw.compute_units == prior.compute_units and np.isclose(hw.fp32_dense_flops, prior.fp32_dense_flops)


def test_a_rendered_file_keeps_kernel_tables_and_every_digit_of_whole_numbers(tmp_path):
    from radsim.measure.calibrate import toml_text
    from radsim.spec.hardware import hw_dir

    prior = load_hardware("h100_sxm")
    raw = tomllib.loads((hw_dir() / "h100_sxm.toml").read_text())
    figures = {k: (getattr(prior, k), prior.sources[k]) for k in prior.sources if k != "kernel_tables"}
    figures["kernel_tables"] = (raw["kernel_tables"]["value"], raw["kernel_tables"]["source"])
    path = tmp_path / "cal.toml"
    hw = parse_hardware(tomllib.loads(toml_text(path, "calibrated test", prior, figures, "header")), path)
    assert not path.exists()  # rendering writes nothing
    assert hw.memory_capacity_bytes == prior.memory_capacity_bytes == 85899345920
    assert hw.kernel_tables is not None and hw.sources["kernel_tables"] == prior.sources["kernel_tables"]
