"""Synthetic routes: which layers each token visits, for use until (or instead of) real traces."""

from __future__ import annotations

import numpy as np

from radsim.errors import ConfigError


def layers_for_fraction(num_layers: int, depth_fraction: float) -> int:
    """Layers each token visits for a depth fraction: round(f x L), at least one."""
    if not 0.0 < depth_fraction <= 1.0:
        raise ConfigError(f"--depth-fraction must be in (0, 1], got {depth_fraction}")
    return max(1, int(round(depth_fraction * num_layers)))


def random_layer_visits(rng: np.random.Generator, tokens: int, num_layers: int, k: int) -> np.ndarray:
    """A (tokens, num_layers) boolean mask where each token visits `k` layers chosen uniformly."""
    if k >= num_layers:
        return np.ones((tokens, num_layers), dtype=bool)
    keys = rng.random((tokens, num_layers), dtype=np.float32)
    chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
    mask = np.zeros((tokens, num_layers), dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask
