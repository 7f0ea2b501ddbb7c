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


class _CoarseKeys:
    """A generator whose keys tie often (a few levels only): `exact_visits` must then pick what
    `np.argpartition` picks, as it did before it looked for the k-th key first."""

    def __init__(self, seed: int, levels: int) -> None:
        self.rng, self.levels = np.random.default_rng(seed), levels

    def random(self, shape, dtype=np.float64):
        return (np.floor(self.rng.random(shape) * self.levels) / self.levels).astype(dtype)


@pytest.mark.parametrize("levels", [2, 3, 17, 1000, 2**24])
@pytest.mark.parametrize(("layers", "k"), [(8, 3), (32, 16), (80, 40), (12, 11)])
def test_exact_visits_pick_the_argpartition_choice_even_when_keys_tie(levels, layers, k):
    mask = exact_visits(_CoarseKeys(1, levels), 3000, layers, k)  # type: ignore[arg-type]
    keys = _CoarseKeys(1, levels).random((3000, layers), dtype=np.float32)
    chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
    expected = np.zeros_like(mask)
    np.put_along_axis(expected, chosen, True, axis=1)
    np.testing.assert_array_equal(mask, expected)
