"""Executor: per-(request, group) loads aggregate exactly as the cost model's routed batches."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.cost import KV_POLICIES, LayerLoad, RoutedBatch
from radsim.executor import slot_load, step_load

LAYERS = 4


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_slot_load_matches_routed_batches(policy):
    rng = np.random.default_rng(0)
    rows, width = 5, 2 * LAYERS  # two passes
    new = rng.integers(1, 6, rows)
    visits = np.minimum(rng.integers(0, 3, (rows, width)), new[:, None]).astype(float)
    held = rng.integers(0, 50, (rows, width)).astype(float)
    load = slot_load(visits, new, held, policy, LAYERS)
    for slot in range(width):
        # second-pass slots behave as `none`: no K/V for skippers
        slot_policy = policy if slot < LAYERS else "none"
        expected = LayerLoad.from_batch(RoutedBatch.of(new, held[:, slot], visits[:, slot]), slot_policy)
        for field in ("q_rows", "kv_rows", "mlp_rows", "visitors", "pairs", "held"):
            assert getattr(load, field)[slot] == pytest.approx(float(getattr(expected, field))), (slot, field)


def test_step_load_groups_by_step_and_layer():
    # request 0 visits layer 1 at step 0 and layer 2 at step 1; request 1 visits layer 2 at step 0
    request = np.array([0, 0, 1])
    step = np.array([0, 1, 0])
    layer = np.array([1, 2, 2])
    held = np.zeros((2, LAYERS))
    held[0, 2], held[1, 2] = 10.0, 20.0
    load = step_load(request, step, layer, layer, held, "none", LAYERS)
    # three groups: (0, 1), (0, 2), (1, 2): layer 2 launches twice, once per step
    assert load.visitors.tolist() == [1.0, 1.0, 1.0]
    assert sorted(load.held.tolist()) == [1.0, 11.0, 21.0]


@pytest.mark.parametrize("policy", ["none", "copy"])
def test_decode_fast_path_matches_the_general_aggregation(policy):
    from radsim.executor import _aggregate

    rng = np.random.default_rng(1)
    rows, width = 7, 2 * LAYERS
    visits = (rng.random((rows, width)) < 0.5).astype(float)
    held = rng.integers(0, 40, (rows, width)).astype(float)
    fast = slot_load(visits, np.ones(rows, dtype=int), held, policy, LAYERS)
    kv = visits.copy()
    if policy == "copy":
        kv[:, :LAYERS] = 1.0
    general = _aggregate(visits, kv, visits, held)
    for field in ("q_rows", "kv_rows", "mlp_rows", "visitors", "pairs", "held"):
        np.testing.assert_allclose(getattr(fast, field), getattr(general, field))
