"""Cost in dollars: rental time plus electricity."""

from __future__ import annotations

import pytest

from radsim.cost.money import Pricing
from radsim.errors import ConfigError


def test_rental_plus_electricity(toy_gpu):
    # toy price 3.6 $/h = 0.001 $/s; 3.6e6 J = 1 kWh
    assert Pricing(0.1).cost_usd(toy_gpu, devices=2, time_s=10.0, energy_J=3.6e6) == pytest.approx(0.02 + 0.1)
    assert Pricing(0.0).cost_usd(toy_gpu, devices=1, time_s=3600.0, energy_J=1e9) == pytest.approx(3.6)


def test_negative_electricity_rejected():
    with pytest.raises(ConfigError, match="electricity"):
        Pricing(-1.0)
