"""The tabulated cost model gives the cost model's numbers, on every hardware file, and the simulator
charges each iteration what validation prices for it."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radsim.cost.iteration import IterationBreakdown, head_cost, iteration_cost
from radsim.cost.kernels import ADDITIVE
from radsim.cost.layer import (
    DTYPE_BYTES,
    KV_POLICIES,
    Execution,
    LayerLoad,
    RoutedBatch,
    attention_coefficients,
    load_cost,
    weights_resident,
)
from radsim.cost.table import CostTable, LaunchPrices
from radsim.routes.book import RouteBook
from radsim.routes.synthetic import parametric, sequential
from radsim.sim.engine import SimConfig, Simulation
from radsim.sim.scheduler import Batch, Scheduler, SchedulerConfig
from radsim.sim.workload import Request
from radsim.spec.arch import Arch, load_arch
from radsim.spec.hardware import Hardware, list_hardware, load_hardware

ROOT = Path(__file__).resolve().parents[2]
CALIBRATED_CPU = ROOT / "measurements" / "epyc-genoa-vm" / "calibrated.toml"

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


# -- every hardware file -----------------------------------------------------------------------------
HARDWARE_FILES = [*list_hardware(), *(str(p) for p in sorted(ROOT.glob("measurements/*/calibrated.toml")))]
GRID_ARCHS = ("llama3.1-8b", "smollm2-135m", "llama3.1-8b-finedeep", "finedeep-scratch")
GRID_MAX_ROWS = 256


def _grid() -> list[tuple[str, str, str, int]]:
    """(hardware file, architecture, dtype, tp): every dtype the device and the cost model both know;
    tp=2 on GPUs for the Llama-3.1-8B architectures."""
    cases = []
    for name in HARDWARE_FILES:
        hw = load_hardware(name)
        for arch in GRID_ARCHS:
            tps = (1, 2) if hw.kind == "gpu" and arch.startswith("llama") else (1,)
            cases += [(name, arch, d, tp) for d in hw.dtypes() if d in DTYPE_BYTES for tp in tps]
    return cases


GRID = _grid()


def _grid_id(case: tuple[str, str, str, int]) -> str:
    name, arch, dtype, tp = case
    return f"{Path(name).parent.name if name.endswith('.toml') else name}-{arch}-{dtype}-tp{tp}"


def _random_loads(rng: np.random.Generator, policy: str) -> list[LayerLoad]:
    """Loads as `LayerLoad.from_batch` aggregates them: prefill chunks, decode rows, idle groups."""
    groups, seqs = 6, 5
    prefill = rng.integers(0, 48, (groups, seqs)).astype(float)  # <= 235 rows: within the table
    decode = np.ones((groups, seqs))
    loads = []
    for n in (prefill, decode):
        v = np.floor((n + 1) * rng.random((groups, seqs)))  # some groups every token visits
        v = np.minimum(v, n)
        v[0] = 0.0  # a group nobody visits
        c = rng.integers(0, 3000, (groups, seqs)).astype(float)
        loads.append(LayerLoad.from_batch(RoutedBatch.of(n, c, v), policy))
    return loads


def _assert_layers_match(hw: Hardware, arch: Arch, table: CostTable, load: LayerLoad) -> None:
    """Every group's time, energy, FLOPs and bytes from the table equal the cost model's, rel 1e-9."""
    direct = load_cost(hw, arch, table.exe, load)
    expected = np.stack([direct.time_s, direct.energy_J, direct.flops, direct.bytes]).sum(axis=1)
    matrix = np.stack([load.q_rows, load.kv_rows, load.visitors, load.pairs, load.held])
    for g in range(matrix.shape[1]):
        got = table.layer_totals(matrix[:, g : g + 1])
        assert got == pytest.approx(expected[:, g], rel=1e-9, abs=1e-300), (table.exe, g)


@pytest.mark.parametrize("case", GRID, ids=[_grid_id(c) for c in GRID])
def test_table_equals_cost_model_on_every_hardware_file(case):
    name, arch_name, dtype, tp = case
    hw, arch = load_hardware(name), load_arch(arch_name)
    rng = np.random.default_rng(zlib.crc32(_grid_id(case).encode()))
    for policy in KV_POLICIES:
        for routed in (False, True):
            exe = Execution(dtype, tp=tp, kv_policy=policy, routed=routed)
            table = CostTable(hw, arch, exe, max_rows=GRID_MAX_ROWS)
            for load in _random_loads(rng, policy):
                _assert_layers_match(hw, arch, table, load)
    for new, logits in ((0, 0), (1, 1), *rng.integers(0, GRID_MAX_ROWS + 1, (3, 2)).tolist()):
        direct = head_cost(hw, arch, table.exe, float(new), float(logits))
        expected = [direct.time_s.sum(), direct.energy_J.sum(), direct.flops.sum(), direct.bytes.sum()]
        assert table.head_totals(new, logits) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def _every_hardware_file() -> list[str]:
    return [*list_hardware(), *(str(p) for p in sorted(ROOT.glob("measurements/*/calibrated.toml")))]


def _iterations(layers: int, rng: np.random.Generator):
    """(new_tokens, context, visits) of iterations: prefill chunks and decode steps with every token
    visiting every layer (one load per layer), and routed ones (each layer its own load)."""
    for seqs, prompt in ((1, 7), (3, 512), (1, 8192)):  # prefill chunks of whole prompts
        new = np.full(seqs, float(prompt))
        yield new, np.zeros((layers, seqs)), np.tile(new, (layers, 1))
    for batch, held in ((1, 512), (64, 2600), (256, 1000)):  # decode steps
        yield np.ones(batch), np.full((layers, batch), float(held)), np.ones((layers, batch))
    visits = rng.integers(0, 2, (layers, 8)).astype(np.float64)  # routed: layers differ
    yield np.ones(8), np.full((layers, 8), 300.0), visits
    new = np.full(2, 40.0)  # routed prefill, and one whose visits are equal across layers but partial
    yield new, np.zeros((layers, 2)), rng.integers(0, 41, (layers, 2)).astype(np.float64)
    yield new, np.zeros((layers, 2)), np.full((layers, 2), 13.0)


@pytest.mark.parametrize(
    "hw_name", _every_hardware_file(), ids=lambda n: Path(n).parent.name if "/" in n else n
)
def test_iteration_layers_equal_the_cost_model_on_every_hardware_file(hw_name):
    """`LaunchPrices.iteration_layers` (the study's roofline data) gives `iteration_cost`'s layers to
    the last bit, every operator and layer, under every KV policy, with and without a router."""
    hw = load_hardware(hw_name)
    dtype = "bf16" if hw.bf16_dense_flops else "fp32"
    rng = np.random.default_rng(zlib.crc32(Path(hw_name).stem.encode()))
    cases = [("smollm2-135m", 1), ("llama3.1-8b", 2), ("llama3.1-8b-finedeep", 1)]
    for arch_name, tp in cases:
        arch = load_arch(arch_name)
        for policy in KV_POLICIES:
            for routed in (False, True):
                exe = Execution(dtype, tp=tp, kv_policy=policy, routed=routed)
                prices = LaunchPrices(hw, arch, exe)
                for new, context, visits in _iterations(arch.num_layers, rng):
                    expected = iteration_cost(hw, arch, exe, new, context, visits, 1).layers
                    got = prices.iteration_layers(new, context, visits)
                    for field in ADDITIVE:
                        np.testing.assert_array_equal(
                            getattr(got, field),
                            getattr(expected, field),
                            err_msg=f"{arch_name} {exe} {field}",
                        )


def test_grid_covers_calibrated_attention_and_resident_weights():
    # the calibrated CPU file has its own attention efficiency and a cache bandwidth; a model
    # small enough for its last-level cache (finedeep-scratch in fp32) runs from the cache
    hw = load_hardware(CALIBRATED_CPU)
    assert str(CALIBRATED_CPU) in HARDWARE_FILES
    assert hw.attention_efficiency is not None and hw.attention_efficiency != hw.gemm_efficiency
    exe = Execution("fp32")
    assert not weights_resident(hw, load_arch("smollm2-135m"), exe)  # 538 MB of fp32 weights
    small = load_arch("finedeep-scratch")
    assert weights_resident(hw, small, exe)
    assert attention_coefficients(hw, small, exe).bandwidth_Bps == hw.cache_bandwidth_Bps
    assert (str(CALIBRATED_CPU), "finedeep-scratch", "fp32", 1) in GRID


# -- the simulator charges what validation prices ----------------------------------------------------
SIM_ARCH = load_arch("smollm2-135m")
SIM_ROUTES = {
    "sequential": sequential(SIM_ARCH.num_layers),
    "parametric": parametric(SIM_ARCH.num_layers, depth_fraction=0.5, seed=3, sequences=8, seq_len=32),
}
# prompts longer than the token budget: chunks of a prompt attend to the chunks before them
SIM_REQUESTS = [Request(0, 0.0, 150, 3), Request(1, 0.0, 90, 2), Request(2, 0.0, 40, 4)]


def _validation_price(sim: Simulation, batch: Batch, sched: Scheduler) -> IterationBreakdown:
    """`iteration_cost` of the batch's rows (what `radsim.measure.validate.predict_config` prices):
    per layer, each row's new tokens, the entries it holds and its visits."""
    layers = sim.cfg.arch.num_layers
    assert sched.columns.max() < layers  # one pass: slot columns are layers
    rows = np.concatenate([batch.decode_rows, batch.prefill_rows])
    context, visits = np.zeros((layers, rows.size)), np.zeros((layers, rows.size))
    context[sched.columns] = sched.held_entries(rows).T
    visits[sched.columns] = batch.slot_visits.T
    exe = sim.cfg.exe
    return iteration_cost(sim.cfg.hw, sim.cfg.arch, exe, batch.new_tokens, context, visits, batch.logit_rows)


def _simulation(book: RouteBook, exe: Execution, execution: str) -> tuple[Simulation, Scheduler]:
    """A static batch of `SIM_REQUESTS` on the calibrated CPU, queued (with their routes) at t=0."""
    sched_cfg = SchedulerConfig(policy="static", max_batch=4, max_tokens_per_iteration=128)
    cfg = SimConfig(load_hardware(CALIBRATED_CPU), SIM_ARCH, exe, sched_cfg, execution_policy=execution)
    sim = Simulation(cfg, book, SIM_REQUESTS)
    sched = sim.replicas[0].scheduler
    rng = np.random.default_rng(0)
    for request in SIM_REQUESTS:
        sched.arrive(request, book.assign(rng, request.prompt_tokens + request.output_tokens))
    return sim, sched


# layer-major launches are what validation prices; step_sync launches match them for sequential
# routes only (routing step s is layer s), and refuses the compute policy
SIM_CASES = [
    *((routes, policy, "layer_major") for routes in sorted(SIM_ROUTES) for policy in KV_POLICIES),
    ("sequential", "none", "step_sync"),
    ("sequential", "copy", "step_sync"),
]


@pytest.mark.parametrize(("routes", "policy", "execution"), SIM_CASES)
def test_simulator_charges_what_validation_prices(routes, policy, execution):
    exe = Execution("fp32", kv_policy=policy, routed=routes != "sequential")
    sim, sched = _simulation(SIM_ROUTES[routes], exe, execution)
    now, steps = 0.0, []
    while (batch := sched.next_batch(now)) is not None:  # the prefill, then every decode step
        charged = sim.iteration_totals(batch, sched)
        priced = _validation_price(sim, batch, sched)
        assert charged[:2] == pytest.approx([priced.time_s, priced.energy_J], rel=1e-9)
        assert charged[2:] == pytest.approx([priced.flops, priced.bytes], rel=1e-9)
        steps.append((batch.prefill_tokens, batch.decode_tokens))
        now += float(charged[0])
        sched.finish(batch, now)
    assert sum(p > 0 for p, _ in steps) >= 2 and any(d > 0 for _, d in steps)  # chunks, then decodes
