"""Execution of a routed iteration: which layer launches run, and what each must do.

Two execution policies decide how tokens that took different paths share launches:

- ``layer_major``: one launch per (pass, layer) slot for every token of the iteration that visits it
  (what a runtime can do when routes go up the layer stack within a pass);
- ``step_sync``: every routing step is a barrier; at step s, tokens are grouped by the layer they
  chose and each group is one launch, so a layer chosen at two steps runs (and reads its weights)
  twice.

Loads are built per (request, group) and summed over requests into a *load matrix* of shape
(5, groups) whose rows are `LOAD_ROWS`, the fields of `radsim.cost.layer.LayerLoad` (its MLP rows always
equal its visitors); the tabulated cost model prices the matrix. Every row is a sum over requests,
so the loads of disjoint sets of requests add. KV entries held per (request, slot) decide the
attention work.
"""

from __future__ import annotations

import functools

import numpy as np

from radsim.cost.layer import LayerLoad

EXECUTION_POLICIES = ("layer_major", "step_sync")
LOAD_ROWS = ("q_rows", "kv_rows", "visitors", "pairs", "held")
Q, KV, VISITORS, PAIRS, HELD = range(len(LOAD_ROWS))


@functools.cache
def ones(n: int) -> np.ndarray:
    """A read-only vector of n ones: `x @ ones(n)` sums rows faster than `x.sum(axis=-1)`."""
    vector = np.ones(n)
    vector.flags.writeable = False
    return vector


def as_layer_load(load: np.ndarray) -> LayerLoad:
    """The cost model's view of a load matrix."""
    return LayerLoad(load[Q], load[KV], load[VISITORS], load[VISITORS], load[PAIRS], load[HELD])


def slot_load(
    visits: np.ndarray, new: np.ndarray, held: np.ndarray, kv_policy: str, num_layers: int
) -> np.ndarray:
    """Layer-major load: `visits` (R, W) per request and slot, `new` (R,) tokens, `held` (R, W) entries."""
    v = visits if visits.dtype == np.float64 else visits.astype(np.float64)
    if v.shape[0] == 1:
        return _one_row(v[0], float(new[0]), held[0], kv_policy, num_layers)
    if kv_policy == "none":
        return _aggregate(v, v, v, held)
    # skippers write K/V only in the first pass (copy/compute); later passes behave as `none`
    kv = v.copy()
    kv[:, :num_layers] = new.astype(np.float64)[:, None]
    q = kv if kv_policy == "compute" else v
    return _aggregate(q, kv, v, held)


def decode_load(
    visits: np.ndarray, context: np.ndarray, held: np.ndarray | None, kv_policy: str, num_layers: int
) -> np.ndarray:
    """Layer-major load of rows that decode one token each: the closed form of `slot_load`.

    `visits` (D, W) are 0 or 1, `context` (D,) the tokens each row holds in the KV cache and `held`
    (D, W) its entries per slot; under copy/compute a first-pass slot holds `context` entries, so
    `held` may be None when there is no later pass. A query attends to its held entries and to
    itself: pairs = held entries read = the sum over querying rows of (held + 1).
    """
    rows, width = visits.shape
    if kv_policy == "none":
        assert held is not None
        load = np.empty((len(LOAD_ROWS), width))
        one = ones(rows)
        load[:PAIRS] = one @ visits  # a product sums rows faster than sum(axis=0)
        load[PAIRS:] = one @ (visits * (held + 1.0))
        return load
    weights = np.empty((len(LOAD_ROWS), rows))
    weights[:PAIRS] = 1.0
    np.add(context, 1.0, out=weights[PAIRS])
    weights[HELD] = weights[PAIRS]
    load = weights @ visits  # rows of every field but the first pass's K/V writes
    load[KV, :num_layers] = rows  # every row writes a first-pass entry, visited or not
    if kv_policy == "compute":  # attention runs for every row in every first-pass layer
        load[Q, :num_layers] = rows
        load[PAIRS:, :num_layers] = weights[PAIRS].sum()
    if width > num_layers:  # later passes behave as `none`
        assert held is not None
        later = visits[:, num_layers:]
        load[PAIRS:, num_layers:] = np.einsum("rw,rw->w", later, held[:, num_layers:] + 1.0)
    return load


def _one_row(v: np.ndarray, new: float, c: np.ndarray, kv_policy: str, num_layers: int) -> np.ndarray:
    """`slot_load` of one request: `v` (W,) visits, `new` tokens, `c` (W,) held entries."""
    load = np.empty((len(LOAD_ROWS), v.size))
    load[VISITORS] = v
    load[KV] = v
    if kv_policy != "none":
        load[KV, :num_layers] = new
    q = load[KV] if kv_policy == "compute" else v
    load[Q] = q
    load[PAIRS] = q * (c + (load[KV] + 1.0) * 0.5)
    load[HELD] = (q > 0) * (c + load[KV])
    return load


def _aggregate(q: np.ndarray, kv: np.ndarray, v: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Sum per-(request, group) rows into per-group loads (the rules of `LayerLoad.from_batch`).

    pairs = sum q c + q (kv + 1) / 2 and held = sum over rows with queries of c + kv.
    """
    load = np.empty((len(LOAD_ROWS), q.shape[1]))
    one = ones(q.shape[0])  # products sum rows faster than sum(axis=0)
    load[Q] = one @ q
    load[KV] = load[Q] if kv is q else one @ kv
    load[VISITORS] = load[Q] if v is q else one @ v
    load[PAIRS] = one @ (q * (c + (kv + 1.0) * 0.5))
    load[HELD] = one @ ((q > 0) * (c + kv))
    return load


def step_load(
    request: np.ndarray,
    step: np.ndarray,
    layer: np.ndarray,
    slot: np.ndarray,
    held: np.ndarray,
    kv_policy: str,
    num_layers: int,
    num_steps: int | None = None,
) -> np.ndarray:
    """Step-synchronous load from visit rows (request row, step, layer, slot) of the iteration.

    Groups are (step, layer): column `step * num_layers + layer` of the result, for `num_steps`
    steps (default: the iteration's); groups nobody visits are zero and cost nothing. Tokens of one
    request in one group attend as a causal block over the request's held entries. Under
    `copy`/`compute` the K/V work of skippers is charged to the layer-major slot structure instead
    (it does not depend on steps): callers add `skipper_load`.
    """
    steps = num_steps if num_steps is not None else (int(step.max()) + 1 if step.size else 0)
    width = steps * num_layers
    load = np.zeros((len(LOAD_ROWS), width))
    if request.size == 0:
        return load
    rows = held.shape[0]
    key = (step.astype(np.int64) * num_layers + layer) * rows + request
    v = np.bincount(key, minlength=width * rows).astype(np.float64)  # tokens of a request in a group
    # held entries of the request's slot (tokens of one request and group share it unless their
    # passes differ; then the mean)
    c = np.bincount(key, weights=held[request, slot], minlength=width * rows)
    np.divide(c, v, out=c, where=v > 0)
    per_request = np.stack([v, v * c + v * (v + 1.0) / 2.0, np.where(v > 0, c + v, 0.0)])
    summed = per_request.reshape(3, width, rows) @ ones(rows)
    load[:PAIRS] = summed[0]
    load[PAIRS] = summed[1]
    load[HELD] = summed[2]
    return load


def step_decode_load(
    steps: np.ndarray, slots: np.ndarray, held: np.ndarray, num_layers: int, num_steps: int
) -> np.ndarray:
    """`step_load` of rows that decode one token each: `steps` (D, S) layer per routing step (-1
    past the end), `slots` (D, S) its slot, `held` (D, W) entries. One token per request and group,
    so a visitor reads its held entries and itself: pairs = held = sum of (held + 1)."""
    row, step = np.nonzero(steps >= 0)
    width = num_steps * num_layers
    group = step * num_layers + steps[row, step]
    load = np.empty((len(LOAD_ROWS), width))
    load[:PAIRS] = np.bincount(group, minlength=width)
    load[PAIRS] = np.bincount(group, weights=held[row, slots[row, step]] + 1.0, minlength=width)
    load[HELD] = load[PAIRS]
    return load


def skipper_load(visits: np.ndarray, new: np.ndarray, num_layers: int) -> np.ndarray:
    """K/V projections and writes of tokens that skip first-pass layers (copy policy), per layer."""
    skippers = new.astype(np.float64)[:, None] - visits[:, :num_layers]
    load = np.zeros((len(LOAD_ROWS), num_layers))
    load[KV] = skippers.sum(axis=0)
    return load
