"""The tabulated cost model gives the cost model's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radsim.cost.iteration import head_cost
from radsim.cost.layer import KV_POLICIES, Execution, LayerLoad, RoutedBatch, load_cost
from radsim.cost.table import CostTable
from radsim.spec.arch import load_arch
from radsim.spec.hardware import load_hardware

HW, ARCH = load_hardware("h100_sxm"), load_arch("llama3.1-8b")
TABLES = {
    (p, tp): CostTable(HW, ARCH, Execution("bf16", tp=tp, kv_policy=p, routed=True), max_rows=512)
    for p in KV_POLICIES
    for tp in (1, 2)
}


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(KV_POLICIES),
    tp=st.sampled_from([1, 2]),
    seed=st.integers(0, 10_000),
    groups=st.integers(1, 40),
    seqs=st.integers(1, 16),
    big=st.booleans(),
)
def test_table_equals_cost_model(policy, tp, seed, groups, seqs, big):
    rng = np.random.default_rng(seed)
    high = 200 if big else 30  # big: some row counts exceed the table and fall back
    n = rng.integers(0, high, (groups, seqs)).astype(float)
    v = np.floor(n * rng.random((groups, seqs)))
    c = rng.integers(0, 4000, (groups, seqs)).astype(float)
    table = TABLES[(policy, tp)]
    load = LayerLoad.from_batch(RoutedBatch.of(n, c, v), policy)
    direct = load_cost(HW, ARCH, table.exe, load)
    got = table.layers(load)
    assert got.time_s == pytest.approx(direct.time_s.sum(), rel=1e-12)
    assert got.energy_J == pytest.approx(direct.energy_J.sum(), rel=1e-12)
    assert got.flops == pytest.approx(direct.flops.sum(), rel=1e-12)
    assert got.bytes == pytest.approx(direct.bytes.sum(), rel=1e-12)


@pytest.mark.parametrize(("new", "logits"), [(0, 0), (1, 1), (300, 64), (600, 2)])
def test_head_table(new, logits):
    table = TABLES[("none", 1)]
    direct = head_cost(HW, ARCH, table.exe, float(new), float(logits))
    got = table.head(new, logits)
    assert got.time_s == pytest.approx(direct.time_s.sum(), rel=1e-12)
    assert got.energy_J == pytest.approx(direct.energy_J.sum(), rel=1e-12)


FINEDEEP = load_arch("llama3.1-8b-finedeep")
FINEDEEP_TABLES = {
    (p, launch): CostTable(
        HW, FINEDEEP, Execution("bf16", kv_policy=p, routed=True, expert_launch=launch), max_rows=256
    )
    for p in KV_POLICIES
    for launch in ("per_expert", "grouped")
}


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(KV_POLICIES),
    launch=st.sampled_from(["per_expert", "grouped"]),
    seed=st.integers(0, 10_000),
    groups=st.integers(1, 40),
    seqs=st.integers(1, 16),
    big=st.booleans(),
)
def test_finedeep_table_equals_cost_model(policy, launch, seed, groups, seqs, big):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 100 if big else 20, (groups, seqs)).astype(float)
    v = np.floor(n * rng.random((groups, seqs)))
    c = rng.integers(0, 4000, (groups, seqs)).astype(float)
    table = FINEDEEP_TABLES[(policy, launch)]
    load = LayerLoad.from_batch(RoutedBatch.of(n, c, v), policy)
    direct = load_cost(HW, FINEDEEP, table.exe, load)
    got = table.layers(load)
    assert got.time_s == pytest.approx(direct.time_s.sum(), rel=1e-12)
    assert got.energy_J == pytest.approx(direct.energy_J.sum(), rel=1e-12)
    assert got.flops == pytest.approx(direct.flops.sum(), rel=1e-12)
    assert got.bytes == pytest.approx(direct.bytes.sum(), rel=1e-12)
