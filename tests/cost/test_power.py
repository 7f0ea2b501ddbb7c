"""Power model: idle floor, compute and memory terms, board-power cap."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.cost.power import average_power_W, idle_energy_J, op_energy_J


def test_idle_plus_activity(toy_gpu):
    # 1 ms, 10 GFLOP on a 100 TFLOP/s peak at 50% efficiency -> 0.2 of the 400 W headroom over 1 ms
    energy = op_energy_J(toy_gpu, 1e-3, 10e9, 100e12, 1e6)
    assert energy == pytest.approx(100 * 1e-3 + 400 * 10e9 / 50e12 + 1e-10 * 1e6)


def test_capped_at_board_power(toy_gpu):
    energy = op_energy_J(toy_gpu, 1e-3, 1e12, 100e12, 0.0)
    assert energy == pytest.approx(500 * 1e-3)


def test_vectorised_and_zero_time(toy_gpu):
    energy = op_energy_J(toy_gpu, np.array([0.0, 1e-3]), np.array([0.0, 0.0]), 100e12, np.array([0.0, 0.0]))
    np.testing.assert_allclose(energy, [0.0, 0.1])
    assert idle_energy_J(toy_gpu, 2.0) == pytest.approx(200.0)
    assert average_power_W(10.0, 0.0) == 0.0 and average_power_W(10.0, 2.0) == 5.0


def test_active_baseline_replaces_idle_while_kernels_run(toy_gpu):
    from dataclasses import replace

    busy = replace(toy_gpu, active_power_W=180.0)
    # the headroom of the compute term is over the active baseline: a GEMM at peak still hits the cap
    energy = op_energy_J(busy, 1e-3, 10e9, 100e12, 1e6)
    assert energy == pytest.approx(180 * 1e-3 + (500 - 180) * 10e9 / 50e12 + 1e-10 * 1e6)
    assert op_energy_J(busy, 1e-3, 1e12, 100e12, 0.0) == pytest.approx(500 * 1e-3)
    assert idle_energy_J(busy, 2.0) == pytest.approx(200.0)  # between kernels: idle power


def test_busy_memory_bound_decode_draws_more_than_idle_plus_bytes():
    from radsim.cost.estimate import Workload, estimate
    from radsim.cost.layer import Execution
    from radsim.spec.arch import load_arch
    from radsim.spec.hardware import load_hardware

    hw, arch = load_hardware("h100_sxm"), load_arch("llama3.1-8b")
    r = estimate(hw, arch, Execution("bf16"), Workload(8, 512, 128))
    assert hw.active_power_W is not None and hw.active_power_W > hw.idle_power_W
    bytes_W = r["dram_bytes_per_device"] * hw.memory_energy_J_per_byte / r["e2e_s"]
    assert r["avg_power_W"] > hw.idle_power_W + bytes_W + 0.5 * (hw.active_power_W - hw.idle_power_W)
    assert hw.idle_power_W <= r["avg_power_W"] <= hw.max_power_W


@pytest.mark.parametrize("stem", ["h100_sxm", "h200_sxm", "a100_sxm_80gb", "l40s", "mi300x"])
@pytest.mark.parametrize("batch", [1, 16, 256])
def test_power_bounds_on_shipped_devices(stem, batch):
    from radsim.cost.estimate import Workload, estimate
    from radsim.cost.layer import Execution
    from radsim.spec.arch import load_arch
    from radsim.spec.hardware import load_hardware

    hw = load_hardware(stem)
    r = estimate(hw, load_arch("llama3.1-8b"), Execution("bf16"), Workload(batch, 256, 16))
    assert hw.idle_power_W <= r["avg_power_W"] <= hw.max_power_W
