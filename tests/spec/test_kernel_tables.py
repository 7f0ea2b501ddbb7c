"""Measured kernel tables: exact on their points, monotone, a fallback where they end, held-out error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radsim.cost.kernels import allreduce, gemm
from radsim.measure.tables import held_out_errors
from radsim.spec.hardware import load_hardware
from radsim.spec.kernel_tables import AllReduceCurve, GemmTable, load_kernel_tables

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "radsim/spec/kernel_tables").glob("*/*.npz"))


def _grid() -> GemmTable:
    m, n, k = np.array([1.0, 16.0, 17.0, 128.0]), np.array([64.0, 128.0]), np.array([64.0, 256.0])
    latency = 1e-6 * (5.0 + m[:, None, None] * n[None, :, None] * k[None, None, :] / 1e4)
    return GemmTable(m, n, k, latency)


def test_interpolation_is_exact_on_table_points():
    table = _grid()
    m, n, k = np.meshgrid(table.m, table.n, table.k, indexing="ij")
    np.testing.assert_allclose(table.time_s(m, n, k), table.latency_s, rtol=1e-12)
    curve = AllReduceCurve(np.array([256.0, 4096.0, 65536.0]), np.array([4e-6, 5e-6, 9e-6]))
    np.testing.assert_allclose(curve.time_s(curve.message_bytes), curve.latency_s, rtol=1e-12)


def test_beyond_the_table_time_grows_in_proportion_and_empty_launches_cost_nothing():
    table = _grid()
    largest = table.time_s(128, 128, 256)
    assert table.time_s(256, 128, 256) == pytest.approx(2 * largest)
    assert table.time_s(128, 256, 512) == pytest.approx(4 * largest)
    assert table.time_s(0, 128, 256) == 0.0
    curve = AllReduceCurve(np.array([256.0, 4096.0]), np.array([4e-6, 8e-6]))
    assert curve.time_s(16.0) == pytest.approx(4e-6) and curve.time_s(8192.0) == pytest.approx(16e-6)


def test_a_slow_outlier_does_not_make_less_work_cost_more():
    table = _grid()
    spiked = table.latency_s.copy()
    spiked[1, 0, 0] *= 10.0  # a bad measurement at m=16
    table = GemmTable(table.m, table.n, table.k, spiked)
    assert table.time_s(16, 64, 64) <= table.time_s(17, 64, 64)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_tables_are_monotone(path):
    tables = load_kernel_tables(path)
    rng = np.random.default_rng(0)
    for grid in tables.gemm.values():
        m = rng.integers(1, 40000, 2000).astype(float)
        n = 2.0 ** rng.uniform(5, 17, 2000)
        k = 2.0 ** rng.uniform(5, 17, 2000)
        base = grid.time_s(m, n, k)
        for grown in ((m * 1.3, n, k), (m, n * 1.3, k), (m, n, k * 1.3), (m + 1, n, k)):
            assert (grid.time_s(*grown) >= base * (1 - 1e-12)).all()
    for by_gpus in tables.allreduce.values():
        for curve in by_gpus.values():
            b = np.sort(2.0 ** rng.uniform(6, 30, 500))
            assert (np.diff(curve.time_s(b)) >= -1e-15).all()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_held_out_median_error(path):
    """Half of each table left out and interpolated: GEMM median error <= 5% per dtype, all-reduce <= 10%."""
    rows = held_out_errors(load_kernel_tables(path))
    for r in rows:
        if r["op"] == "gemm" and r["axis"] == "all":
            assert r["median_ape"] <= 5.0, r
        if r["op"] == "all_reduce" or (r["op"] == "decode_attention" and r["axis"] == "all"):
            assert r["median_ape"] <= 10.0, r
    assert any(r["op"] == "decode_attention" for r in rows)
    assert {r["kind"] for r in rows if r["op"] == "gemm"} >= {"bf16"}


def test_the_cost_model_takes_measured_times_and_falls_back_to_the_roofline():
    hw = load_hardware("h100_sxm")
    assert hw.kernel_tables is not None and "aiconfigurator-core" in hw.kernel_tables.source
    bare = replace(hw, kernel_tables=None)
    rows = np.array([1.0, 64.0, 4096.0])
    measured = gemm(hw, hw.peak_flops("bf16"), rows, 6144, 4096, 2.0, 2.0, dtype="bf16")
    expected = hw.kernel_tables.gemm_time_s("bf16", rows, 6144, 4096)
    np.testing.assert_allclose(measured.time_s, expected)
    # fp32 has no table, a GEMM without a dtype is the roofline, and so is a device without tables
    for dtype in ("fp32", None):
        a = gemm(hw, hw.peak_flops("fp32"), rows, 6144, 4096, 4.0, 4.0, dtype=dtype)
        b = gemm(bare, hw.peak_flops("fp32"), rows, 6144, 4096, 4.0, 4.0, dtype="fp32")
        np.testing.assert_allclose(a.time_s, b.time_s)
    # all-reduce: measured for the group sizes of the tables (custom all-reduce for a decode step's
    # 16 KB), the roofline for the others
    decode = allreduce(hw, np.array([2.0]), 4096, 2.0, 2)
    assert decode.time_s[0] == pytest.approx(
        hw.kernel_tables.allreduce["vLLM_custom_graph"][2].time_s(16384.0)
    )
    assert decode.time_s[0] < allreduce(bare, np.array([2.0]), 4096, 2.0, 2).time_s[0]
    odd = allreduce(hw, np.array([2.0]), 4096, 2.0, 3)
    np.testing.assert_allclose(odd.time_s, allreduce(bare, np.array([2.0]), 4096, 2.0, 3).time_s)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 20000), extra=st.integers(1, 5000))
def test_more_rows_never_cost_less_on_h100(rows, extra):
    hw = load_hardware("h100_sxm")
    peak = hw.peak_flops("bf16")
    a = gemm(hw, peak, np.array([float(rows)]), 14336, 4096, 2.0, 2.0, dtype="bf16").time_s[0]
    b = gemm(hw, peak, np.array([float(rows + extra)]), 14336, 4096, 2.0, 2.0, dtype="bf16").time_s[0]
    # multilinear weights over equal corners of the envelope round in the last bits (1e-16 relative)
    assert b >= a * (1 - 1e-12)


def test_attention_tables_cover_the_shipped_head_geometries():
    """Decode and prefill attention of Llama-3.1-8B's heads (32 over 8 KV heads of 128) at tp 1 and 2."""
    tables = load_hardware("h100_sxm").kernel_tables
    assert tables is not None
    for heads, kv_heads in ((32, 8), (16, 4)):
        for phase in ("generation", "context"):
            table = tables.attention_table(heads, kv_heads, 128, "bf16", phase=phase)
            assert table is not None and (table.time_s(8, 1024) > 0).all()
    assert tables.attention_table(9, 3, 64, "bf16") is None  # SmolLM2-135M's heads are not measured


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_gemm_interpolation_is_scipys_bit_for_bit(path):
    from scipy.interpolate import RegularGridInterpolator

    rng = np.random.default_rng(0)
    for table in load_kernel_tables(path).gemm.values():
        axes = (table.m, np.log2(table.n), np.log2(table.k))
        scipy = RegularGridInterpolator(axes, np.log(table.envelope_s))
        inside = np.stack([rng.uniform(a[0], a[-1], 5000) for a in axes], axis=1)
        on_grid = np.stack([rng.choice(a, 2000) for a in axes], axis=1)
        ends = np.array([[a[0] for a in axes], [a[-1] for a in axes]])
        for points in (inside, on_grid, ends):
            np.testing.assert_array_equal(table._interpolator(points), scipy(points))


def test_attention_tables_are_read_when_first_asked_for():
    path = SHIPPED[0]
    load_kernel_tables.cache_clear()
    tables = load_kernel_tables(path)
    assert tables.generation_attention._tables is None  # type: ignore[attr-defined]
    with np.load(path) as data:
        expected = {k.split("/")[1] for k in data.files if k.startswith("generation_attention/")}
    assert set(tables.generation_attention) == expected and len(tables.generation_attention) > 0


def test_decode_attention_fit_is_scipys_non_negative_least_squares():
    from scipy.optimize import nnls

    from radsim.spec.kernel_tables import _nonnegative_fit

    rng = np.random.default_rng(0)
    for _ in range(50):
        u, v = rng.uniform(0.1, 2.0, 40), rng.uniform(-1.0, 2.0, 40) * rng.choice([1.0, -1.0])
        expected, _ = nnls(np.stack([u, v], axis=-1), np.ones(40))
        np.testing.assert_allclose(_nonnegative_fit(u, v), expected, rtol=1e-9, atol=1e-12)


def test_decode_attention_fit_is_monotone_and_zero_without_sequences():
    from radsim.spec.hardware import load_hardware

    fit = load_hardware("h100_sxm").kernel_tables.decode_attention_fit(32, 8, 128, "bf16")
    assert fit.floor_s > 0 and fit.s_per_entry > 0 and fit.median_ape < 10
    assert fit.time_s(0, 0) == 0 and fit.time_s(4, 2000) < fit.time_s(4, 2001) <= fit.time_s(5, 2001)
