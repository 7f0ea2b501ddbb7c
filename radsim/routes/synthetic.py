"""Synthetic routes: which layers each token visits, drawn from a depth fraction instead of a trace.

Two depth distributions, named once here and selectable in every engine (`DEPTH_DISTRIBUTIONS`):

- ``exact``: every token visits exactly round(f x L) distinct layers (at least one), chosen
  uniformly, in increasing order: the depth of every token is the same.
- ``bernoulli``: every token visits each layer independently with probability f (at least one
  layer): depths spread as Binomial(L, f), as a router's do.

Two route shapes use them: ``random`` (the chosen layers anywhere in the stack) and ``early_exit``
(layers 0..k-1, with k drawn from the distribution). `parametric` builds a route book of either,
optionally with reuse (a token revisits one of its layers in a second pass).
"""

from __future__ import annotations

import numpy as np

from radsim.errors import ConfigError
from radsim.routes.book import RouteBook, book_from_visits

DEPTH_DISTRIBUTIONS = ("exact", "bernoulli")
ROUTE_SHAPES = ("random", "early_exit")


def layers_for_fraction(num_layers: int, depth_fraction: float) -> int:
    """Layers each token visits for a depth fraction under ``exact``: round(f x L), at least one."""
    if not 0.0 < depth_fraction <= 1.0:
        raise ConfigError(f"depth_fraction must be in (0, 1], got {depth_fraction}")
    return max(1, int(round(depth_fraction * num_layers)))


def mean_layers(num_layers: int, depth_fraction: float, distribution: str) -> float:
    """Expected layers visited per token (``bernoulli``: f x L, ignoring the at-least-one rule)."""
    check_distribution(distribution)
    if distribution == "exact":
        return float(layers_for_fraction(num_layers, depth_fraction))
    layers_for_fraction(num_layers, depth_fraction)  # range check
    return max(1.0, depth_fraction * num_layers)


def is_routed(num_layers: int, depth_fraction: float, distribution: str) -> bool:
    """Whether some token skips a layer, so that a router runs."""
    if distribution == "exact":
        return layers_for_fraction(num_layers, depth_fraction) < num_layers
    return depth_fraction < 1.0


def check_distribution(distribution: str) -> None:
    """Raise unless `distribution` is one of `DEPTH_DISTRIBUTIONS`."""
    if distribution not in DEPTH_DISTRIBUTIONS:
        raise ConfigError(f"depth_distribution '{distribution}'; allowed: {', '.join(DEPTH_DISTRIBUTIONS)}")


def exact_visits(rng: np.random.Generator, tokens: int, num_layers: int, k: int) -> np.ndarray:
    """A (tokens, num_layers) boolean mask where each token visits `k` layers chosen uniformly."""
    if k >= num_layers:
        return np.ones((tokens, num_layers), dtype=bool)
    keys = rng.random((tokens, num_layers), dtype=np.float32)
    # the k smallest keys: those up to the k-th smallest, unless keys tie with it
    mask = keys <= np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    ties = np.flatnonzero(np.count_nonzero(mask, axis=1) != k)
    if ties.size:  # rare (float32 keys): the k that a partition of the indices picks
        mask[ties] = _chosen(keys[ties], k)
    return mask


def _chosen(keys: np.ndarray, k: int) -> np.ndarray:
    """The mask of the `k` keys of each row that `np.argpartition` puts first (ties broken as it does)."""
    chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
    mask = np.zeros(keys.shape, dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


def bernoulli_visits(rng: np.random.Generator, tokens: int, num_layers: int, fraction: float) -> np.ndarray:
    """A (tokens, num_layers) mask: each layer with probability `fraction`, at least one per token."""
    visit = rng.random((tokens, num_layers)) < fraction
    empty = ~visit.any(axis=1)
    visit[empty, rng.integers(num_layers, size=int(empty.sum()))] = True
    return visit


def depth_visits(
    rng: np.random.Generator, tokens: int, num_layers: int, fraction: float, distribution: str
) -> np.ndarray:
    """A (tokens, num_layers) visit mask under the named depth distribution."""
    check_distribution(distribution)
    if distribution == "exact":
        return exact_visits(rng, tokens, num_layers, layers_for_fraction(num_layers, fraction))
    if fraction >= 1.0:
        return np.ones((tokens, num_layers), dtype=bool)
    return bernoulli_visits(rng, tokens, num_layers, fraction)


def parametric(
    num_layers: int,
    depth_fraction: float = 1.0,
    reuse_prob: float = 0.0,
    seed: int = 0,
    sequences: int = 64,
    seq_len: int = 256,
    distribution: str = "exact",
    shape: str = "random",
) -> RouteBook:
    """A route book of synthetic routes: layers from `depth_visits` (``random``) or a prefix of the
    stack whose length the distribution draws (``early_exit``); with probability `reuse_prob` a token
    then revisits one of the layers it visited, at random, in a second pass (``random`` only)."""
    if not 0 < depth_fraction <= 1 or not 0 <= reuse_prob <= 1:
        raise ConfigError("depth_fraction must be in (0, 1] and reuse_prob in [0, 1]")
    check_distribution(distribution)
    if shape not in ROUTE_SHAPES:
        raise ConfigError(f"route_shape '{shape}'; allowed: {', '.join(ROUTE_SHAPES)}")
    rng = np.random.default_rng(seed)
    n = sequences * seq_len
    starts = np.arange(0, n, seq_len)
    if shape == "early_exit":
        if reuse_prob:
            raise ConfigError("route_shape 'early_exit' has no reuse; leave reuse_prob at 0")
        return _early_exit(rng, n, num_layers, depth_fraction, distribution, seed, starts)
    visit = depth_visits(rng, n, num_layers, depth_fraction, distribution)
    token, layer = np.nonzero(visit)
    reusers = np.flatnonzero(rng.random(n) < reuse_prob)
    if reusers.size:
        counts = visit[reusers].sum(axis=1)
        pick = (rng.random(reusers.size) * counts).astype(np.int64)
        extra_layer = np.array([np.flatnonzero(visit[t])[k] for t, k in zip(reusers, pick, strict=True)])
        token = np.concatenate([token, reusers])
        layer = np.concatenate([layer, extra_layer])
        order = np.lexsort((np.r_[np.zeros(len(token) - reusers.size), np.ones(reusers.size)], token))
        token, layer = token[order], layer[order]
    name = f"parametric({distribution} depth={depth_fraction:g}, reuse={reuse_prob:g}, seed={seed})"
    return book_from_visits(token, layer, num_layers, starts, name)


def _early_exit(
    rng, n: int, num_layers: int, fraction: float, distribution: str, seed: int, starts
) -> RouteBook:
    """Each token runs layers 0..k-1 in order and leaves: k = round(f L) (exact) or Binomial(L, f) >= 1.

    Every token of a batch needs a prefix of the stack, so a decode step launches the deepest token's layers.
    """
    if distribution == "exact":
        depth = np.full(n, layers_for_fraction(num_layers, fraction))
    else:
        depth = np.maximum(rng.binomial(num_layers, fraction, n), 1)
    token = np.repeat(np.arange(n), depth)
    layer = np.arange(token.size) - np.repeat(np.cumsum(depth) - depth, depth)
    name = f"early_exit({distribution} depth={fraction:g}, seed={seed})"
    return book_from_visits(token, layer, num_layers, starts, name)


def sequential(num_layers: int) -> RouteBook:
    """Every token visits every layer once, in order."""
    return parametric(num_layers, 1.0, 0.0, sequences=1, seq_len=256)
