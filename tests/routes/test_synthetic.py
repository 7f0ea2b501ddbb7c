"""Synthetic routes: exact depth per token, uniform layer choice, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.errors import ConfigError
from radsim.routes.synthetic import exact_visits, layers_for_fraction


def test_each_token_visits_exactly_k_layers():
    mask = exact_visits(np.random.default_rng(0), 5000, 32, 10)
    assert (mask.sum(axis=1) == 10).all()
    # every layer is chosen with probability k/L: 5000 * 10/32 = 1562.5 expected
    assert np.abs(mask.sum(axis=0) - 1562.5).max() < 150


def test_full_depth_and_determinism():
    assert exact_visits(np.random.default_rng(0), 3, 8, 8).all()
    a = exact_visits(np.random.default_rng(7), 100, 16, 5)
    b = exact_visits(np.random.default_rng(7), 100, 16, 5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("fraction", "k"), [(1.0, 32), (0.5, 16), (0.6, 19), (0.001, 1)])
def test_layers_for_fraction(fraction, k):
    assert layers_for_fraction(32, fraction) == k


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01])
def test_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="depth_fraction"):
        layers_for_fraction(32, fraction)
