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
