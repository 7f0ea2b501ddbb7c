"""Executor: per-(request, group) loads aggregate exactly as the cost model's routed batches."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.cost.layer import KV_POLICIES, LayerLoad, RoutedBatch
from radsim.cost.loads import as_layer_load, decode_load, slot_load, step_decode_load, step_load

LAYERS = 4


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_slot_load_matches_routed_batches(policy):
    rng = np.random.default_rng(0)
    rows, width = 5, 2 * LAYERS  # two passes
    new = rng.integers(1, 6, rows)
    visits = np.minimum(rng.integers(0, 3, (rows, width)), new[:, None]).astype(float)
    held = rng.integers(0, 50, (rows, width)).astype(float)
    load = as_layer_load(slot_load(visits, new, held, policy, LAYERS))
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
    load = as_layer_load(step_load(request, step, layer, layer, held, "none", LAYERS))
    # three groups, columns step * LAYERS + layer: (0, 1), (0, 2), (1, 2): layer 2 launches twice
    assert load.visitors.tolist() == [0, 1, 1, 0, 0, 0, 1, 0]
    assert load.held.tolist() == [0, 1, 21, 0, 0, 0, 11, 0]


def test_step_decode_closed_form_matches_the_general_load():
    rng = np.random.default_rng(3)
    rows, steps = 6, 5
    layers = rng.integers(0, LAYERS, (rows, steps))
    layers[rng.random((rows, steps)) < 0.3] = -1
    layers[:, 0] = np.maximum(layers[:, 0], 0)  # every token visits at least one layer
    slots = np.where(layers >= 0, layers + LAYERS * (rng.random((rows, steps)) < 0.5), -1)
    held = rng.integers(0, 30, (rows, 2 * LAYERS)).astype(float)
    request, step = np.nonzero(layers >= 0)
    general = step_load(
        request, step, layers[request, step], slots[request, step], held, "none", LAYERS, steps
    )
    np.testing.assert_allclose(step_decode_load(layers, slots, held, LAYERS, steps), general)


@pytest.mark.parametrize("policy", KV_POLICIES)
@pytest.mark.parametrize("passes", [1, 2])
def test_decode_closed_form_matches_the_general_aggregation(policy, passes):
    rng = np.random.default_rng(1)
    rows, width = 7, passes * LAYERS
    visits = (rng.random((rows, width)) < 0.5).astype(float)
    context = rng.integers(0, 40, rows)
    held = rng.integers(0, 40, (rows, width)).astype(float)
    if policy != "none":  # every token holds a first-pass entry in every layer
        held[:, :LAYERS] = context[:, None]
    general = slot_load(visits, np.ones(rows, dtype=int), held, policy, LAYERS)
    implicit = held if passes > 1 or policy == "none" else None
    fast = decode_load(visits, context.astype(float), implicit, policy, LAYERS)
    np.testing.assert_allclose(fast, general)


def test_loads_of_disjoint_rows_add():
    rng = np.random.default_rng(2)
    visits = rng.integers(0, 3, (6, 2 * LAYERS)).astype(float)
    new = visits.max(axis=1).astype(int) + 1
    held = rng.integers(0, 30, visits.shape).astype(float)
    whole = slot_load(visits, new, held, "copy", LAYERS)
    parts = slot_load(visits[:2], new[:2], held[:2], "copy", LAYERS) + slot_load(
        visits[2:], new[2:], held[2:], "copy", LAYERS
    )
    np.testing.assert_allclose(whole, parts)


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_one_request_matches_the_general_aggregation(policy):
    from radsim.cost.loads import _aggregate

    rng = np.random.default_rng(4)
    visits = rng.integers(0, 4, (1, 2 * LAYERS)).astype(float)
    new = np.array([int(visits.max()) + 2])
    held = rng.integers(0, 30, visits.shape).astype(float)
    kv = visits.copy()
    if policy != "none":
        kv[:, :LAYERS] = new[0]
    q = kv if policy == "compute" else visits
    np.testing.assert_allclose(slot_load(visits, new, held, policy, LAYERS), _aggregate(q, kv, visits, held))
