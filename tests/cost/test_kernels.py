"""Kernel primitives: tile padding, roofline regimes, launch overhead, collectives."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.cost.kernels import allreduce, ceil_to, elementwise, gemm, idle, sum_kernels


def test_tile_padding_makes_small_gemms_cost_a_full_tile(toy_gpu):
    # toy tile is 16 x 16: 1 row and 16 rows occupy the same tile, so the same compute time
    one, sixteen, seventeen = (gemm(toy_gpu, 100e12, r, 64, 64, 2.0, 2.0) for r in (1, 16, 17))
    assert one.compute_time_s == sixteen.compute_time_s
    assert seventeen.compute_time_s == pytest.approx(2 * sixteen.compute_time_s)
    assert one.flops == 2 * 64 * 64 and sixteen.flops == 16 * 2 * 64 * 64


def test_gemm_regimes_and_weight_reads(toy_gpu):
    small = gemm(toy_gpu, 100e12, 1, 1024, 1024, 2.0, 2.0)
    large = gemm(toy_gpu, 100e12, 65536, 1024, 1024, 2.0, 2.0)
    assert small.memory_time_s > small.compute_time_s  # weight-read bound
    assert large.compute_time_s > large.memory_time_s  # compute bound
    assert small.weight_bytes == large.weight_bytes == 1024 * 1024 * 2
    assert small.time_s == pytest.approx(small.memory_time_s + toy_gpu.kernel_launch_overhead_s)


def test_no_rows_no_launch(toy_gpu):
    k = gemm(toy_gpu, 100e12, np.array([0.0, 4.0]), 64, 64, 2.0, 2.0)
    assert k.time_s[0] == 0 and k.weight_bytes[0] == 0 and k.launches[0] == 0
    assert k.launches[1] == 1


def test_elementwise_is_bytes_over_bandwidth(toy_gpu):
    k = elementwise(toy_gpu, 1000, 64, 5.0, 2.0, reads=2.0)
    assert k.act_bytes == 1000 * 64 * 2 * 3
    assert k.time_s == pytest.approx(1000 * 64 * 2 * 3 / 0.5e12 + 1e-6)


def test_allreduce_single_device_is_free(toy_gpu):
    k = allreduce(toy_gpu, np.array([8.0, 0.0]), 64, 2.0, tp=1)
    assert (k.time_s == 0).all() and (k.link_bytes == 0).all()


def test_sum_and_idle(toy_gpu):
    a = gemm(toy_gpu, 100e12, 4, 64, 64, 2.0, 2.0)
    total = sum_kernels([a, a, idle(np.float64(4))])
    assert total.time_s == pytest.approx(2 * a.time_s) and total.launches == 2


def test_ceil_to():
    np.testing.assert_array_equal(ceil_to(np.array([0.0, 1, 128, 129]), 128), [0, 128, 128, 256])
