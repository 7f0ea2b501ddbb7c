"""Execution of a routed iteration: which layer launches run, and what each costs.

Two execution policies decide how tokens that took different paths share launches:

- ``layer_major``: one launch per (pass, layer) slot for every token of the iteration that visits it
  (what a runtime can do when routes go up the layer stack within a pass);
- ``step_sync``: every routing step is a barrier; at step s, tokens are grouped by the layer they
  chose and each group is one launch, so a layer chosen at two steps runs (and reads its weights)
  twice.

Loads are built per (request, group) and aggregated into one `LayerLoad` over groups, which the
tabulated cost model prices. KV entries held per (request, slot) decide the attention work.
"""

from __future__ import annotations

import numpy as np

from radsim.cost import LayerLoad

POLICIES = ("layer_major", "step_sync")


def slot_load(
    visits: np.ndarray, new: np.ndarray, held: np.ndarray, kv_policy: str, num_layers: int
) -> LayerLoad:
    """Layer-major load: `visits` (R, W) per request and slot, `new` (R,) tokens, `held` (R, W) entries."""
    v = visits if visits.dtype == np.float64 else visits.astype(np.float64)
    if kv_policy == "none":
        return _aggregate(v, v, v, held)
    # skippers write K/V only in the first pass (copy/compute); later passes behave as `none`
    kv = v.copy()
    kv[:, :num_layers] = new.astype(np.float64)[:, None]
    q = kv if kv_policy == "compute" else v
    return _aggregate(q, kv, v, held)


def decode_load(
    visits: np.ndarray, context: np.ndarray, held: np.ndarray | None, kv_policy: str, num_layers: int
) -> LayerLoad:
    """Layer-major load of rows that decode one token each: the closed form of `slot_load`.

    `visits` (D, W) are 0 or 1, `context` (D,) the tokens each row holds in the KV cache and `held`
    (D, W) its entries per slot; under copy/compute a first-pass slot holds `context` entries, so
    `held` may be None when there is no later pass. A query then attends to its held entries and
    to itself: pairs = held entries read = sum over querying rows of (held + 1).
    """
    rows, width = visits.shape
    if kv_policy == "none":
        assert held is not None
        visitors = visits.sum(axis=0)
        pairs = np.einsum("rw,rw->w", visits, held) + visitors
        return LayerLoad(visitors, visitors, visitors, visitors, pairs, pairs)
    weights = np.empty((2, rows))
    weights[0] = 1.0
    np.add(context, 1.0, out=weights[1])
    visitors, pairs = weights @ visits  # (W,) each: first-pass rows hold `context` entries
    kv_rows = visitors.copy()
    kv_rows[:num_layers] = rows  # every row writes a first-pass entry, visited or not
    q_rows = visitors
    if kv_policy == "compute":  # attention runs for every row in every first-pass layer
        q_rows = kv_rows
        pairs[:num_layers] = weights[1].sum()
    if width > num_layers:  # later passes behave as `none`
        assert held is not None
        later = visits[:, num_layers:]
        pairs[num_layers:] = np.einsum("rw,rw->w", later, held[:, num_layers:]) + visitors[num_layers:]
    return LayerLoad(q_rows, kv_rows, visitors, visitors, pairs, pairs)


def add_loads(a: LayerLoad, b: LayerLoad) -> LayerLoad:
    """Load of two disjoint sets of rows in the same launches (every field is a sum over rows)."""
    return LayerLoad(
        a.q_rows + b.q_rows,
        a.kv_rows + b.kv_rows,
        a.mlp_rows + b.mlp_rows,
        a.visitors + b.visitors,
        a.pairs + b.pairs,
        a.held + b.held,
    )


def _aggregate(q: np.ndarray, kv: np.ndarray, v: np.ndarray, c: np.ndarray) -> LayerLoad:
    """Sum per-(request, group) rows into per-group loads (the rules of `LayerLoad.from_batch`).

    pairs = sum q c + q (kv + 1) / 2 and held = sum over rows with queries of c + kv, as einsums.
    """
    queried = (q > 0).astype(np.float64)
    pairs = np.einsum("rw,rw->w", q, c) + np.einsum("rw,rw->w", q, kv + 1.0) / 2.0
    held = np.einsum("rw,rw->w", queried, c) + np.einsum("rw,rw->w", queried, kv)
    v_rows = v.sum(axis=0)
    q_rows = v_rows if q is v else q.sum(axis=0)
    kv_rows = v_rows if kv is v else kv.sum(axis=0)
    return LayerLoad(q_rows, kv_rows, v_rows, v_rows, pairs, held)


def step_load(
    request: np.ndarray,
    step: np.ndarray,
    layer: np.ndarray,
    slot: np.ndarray,
    held: np.ndarray,
    kv_policy: str,
    num_layers: int,
) -> LayerLoad:
    """Step-synchronous load from visit rows (request row, step, layer, slot) of the iteration.

    Groups are (step, layer). Under `copy`/`compute` the K/V work of skippers is charged to the
    layer-major slot structure instead (it does not depend on steps): callers add `skipper_load`.
    """
    if request.size == 0:
        z = np.zeros(0)
        return LayerLoad(z, z, z, z, z, z)
    group = step.astype(np.int64) * num_layers + layer
    rows = held.shape[0]
    key = group * rows + request
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    v = counts.astype(np.float64)
    c = held[uniq % rows, slot[np.unique(inverse, return_index=True)[1]]].astype(np.float64)
    pairs, held_rows = v * c + v * (v + 1.0) / 2.0, c + v
    groups, which = np.unique(uniq // rows, return_inverse=True)
    g = len(groups)
    total = lambda x: np.bincount(which, weights=x, minlength=g)  # noqa: E731
    rows_v = total(v)
    return LayerLoad(rows_v, rows_v, rows_v, rows_v, total(pairs), total(held_rows))


def skipper_load(visits: np.ndarray, new: np.ndarray, held: np.ndarray, num_layers: int) -> LayerLoad:
    """K/V projections and writes of tokens that skip first-pass layers (copy policy), per layer."""
    first = visits[:, :num_layers].astype(np.float64)
    skippers = new.astype(np.float64)[:, None] - first
    z = np.zeros(num_layers)
    kv = skippers.sum(axis=0)
    return LayerLoad(z, kv, z, z, z, z)
