"""The serving simulator: exact timelines on hand-checked cases, and invariants on random workloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radsim.cost.iteration import iteration_cost
from radsim.cost.layer import Execution
from radsim.cost.memory import activation_bytes, kv_entry_bytes, weights_bytes
from radsim.cost.money import Pricing
from radsim.errors import ConfigError
from radsim.routes.synthetic import parametric, sequential
from radsim.sim.engine import SimConfig, Simulation
from radsim.sim.metrics import SLO, summarize
from radsim.sim.scheduler import SchedulerConfig
from radsim.sim.workload import Request

EXE = Execution("fp16")


def _run(hw, arch, requests, **sched):
    cfg = SimConfig(hw, arch, EXE, SchedulerConfig(**sched))
    sim = Simulation(cfg, sequential(arch.num_layers), requests)
    sim.run()
    return sim


def _step(hw, arch, new, context, logits):
    """Independent cost of one sequential iteration, from the cost model (not the table)."""
    new, context = np.asarray(new, float), np.asarray(context, float)
    layers = arch.num_layers
    ctx = np.tile(context, (layers, 1))
    return iteration_cost(hw, arch, EXE, new, ctx, np.tile(new, (layers, 1)), logits)


def test_two_requests_exact_timeline(toy_gpu, tiny_arch):
    # A: prompt 4, output 3, at t=0. B: prompt 2, output 2, arrives during A's first decode.
    d1 = _step(toy_gpu, tiny_arch, [4], [0], 1)  # A prefills 4 tokens and emits its first token
    d2 = _step(toy_gpu, tiny_arch, [1], [4], 1)  # A decodes (4 entries held)
    b_at = d1.time_s + d2.time_s / 2
    d3 = _step(toy_gpu, tiny_arch, [1, 2], [5, 0], 2)  # A decodes, B prefills and emits
    d4 = _step(toy_gpu, tiny_arch, [1], [2], 1)  # B decodes its second token
    sim = _run(toy_gpu, tiny_arch, [Request(0, 0.0, 4, 3), Request(1, b_at, 2, 2)], max_batch=4)
    starts = [it.start_at for it in sim.timeline]
    durations = [it.time_s for it in sim.timeline]
    t1 = d1.time_s
    t2 = t1 + d2.time_s
    t3 = t2 + d3.time_s
    t4 = t3 + d4.time_s
    assert starts == pytest.approx([0.0, t1, t2, t3], rel=1e-12)
    assert durations == pytest.approx([d1.time_s, d2.time_s, d3.time_s, d4.time_s], rel=1e-12)
    assert [(it.prefill_tokens, it.decode_tokens) for it in sim.timeline] == [(4, 0), (0, 1), (2, 1), (0, 1)]
    done = {f.request.id: f for f in sim.replicas[0].scheduler.done}
    assert (done[0].first_token_at, done[0].done_at) == pytest.approx((t1, t3), rel=1e-12)
    assert (done[1].first_token_at, done[1].done_at) == pytest.approx((t3, t4), rel=1e-12)
    energy = sum(d.energy_J for d in (d1, d2, d3, d4))
    metrics = summarize(sim, SLO(), Pricing())
    assert metrics["energy_J"] == pytest.approx(energy, rel=1e-12)  # never idle
    assert metrics["ttft_s_mean"] == pytest.approx((t1 + t3 - b_at) / 2, rel=1e-12)
    assert metrics["tpot_s_mean"] == pytest.approx(((t3 - t1) / 2 + (t4 - t3) / 1) / 2, rel=1e-12)


def test_idle_gap_draws_idle_power(toy_gpu, tiny_arch):
    d = _step(toy_gpu, tiny_arch, [3], [0], 1)
    sim = _run(toy_gpu, tiny_arch, [Request(0, 0.0, 3, 1), Request(1, 1.0, 3, 1)])
    assert [it.start_at for it in sim.timeline] == pytest.approx([0.0, 1.0])
    metrics = summarize(sim, SLO(), Pricing())
    idle = (1.0 - d.time_s) * toy_gpu.idle_power_W
    assert metrics["energy_J"] == pytest.approx(2 * d.energy_J + idle, rel=1e-12)
    assert metrics["makespan_s"] == pytest.approx(1.0 + d.time_s)


def test_static_batching_waits_for_the_batch_to_finish(toy_gpu, tiny_arch):
    requests = [Request(0, 0.0, 2, 3), Request(1, 0.0, 2, 1), Request(2, 0.0, 2, 1)]
    sim = _run(toy_gpu, tiny_arch, requests, policy="static", max_batch=2)
    # iteration 1: prefill of requests 0 and 1; 2: decode of 0; 3: decode of 0; then request 2
    assert [(it.prefill_tokens, it.decode_tokens) for it in sim.timeline] == [(4, 0), (0, 1), (0, 1), (2, 0)]


def test_chunked_prefill_respects_the_token_budget(toy_gpu, tiny_arch):
    sim = _run(toy_gpu, tiny_arch, [Request(0, 0.0, 10, 2)], max_tokens_per_iteration=4)
    assert [it.prefill_tokens for it in sim.timeline] == [4, 4, 2, 0]
    unchunked = _run(
        toy_gpu, tiny_arch, [Request(0, 0.0, 10, 2)], max_tokens_per_iteration=4, chunked_prefill=False
    )
    assert [it.prefill_tokens for it in unchunked.timeline] == [10, 0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 12),
    max_batch=st.integers(1, 4),
    budget=st.integers(2, 16),
    kv_tokens=st.integers(24, 64),  # the longest request (16 tokens, with reuse) fits alone
    depth=st.sampled_from([1.0, 0.5]),
    reuse=st.sampled_from([0.0, 0.4]),
    kv_policy=st.sampled_from(["none", "copy", "compute"]),
    policy=st.sampled_from(["continuous", "static"]),
    execution=st.sampled_from(["layer_major", "step_sync"]),
)
def test_invariants_on_random_workloads(
    toy_gpu, tiny_arch, seed, n, max_batch, budget, kv_tokens, depth, reuse, kv_policy, policy, execution
):
    if kv_policy == "compute" and execution == "step_sync":
        execution = "layer_major"  # refused up front (test_step_sync_refuses_the_compute_policy)
    rng = np.random.default_rng(seed)
    exe = Execution("fp16", kv_policy=kv_policy, routed=depth < 1 or reuse > 0)
    # memory for the weights, the activations and KV entries of only `kv_tokens` tokens: forces preemption
    fixed = weights_bytes(tiny_arch, exe) + activation_bytes(tiny_arch, exe, budget, max_batch)
    memory = (
        fixed + kv_tokens * tiny_arch.num_layers * kv_entry_bytes(tiny_arch, exe)
    ) / toy_gpu.memory_capacity_bytes
    arrivals = np.sort(rng.uniform(0, 0.01, n))
    requests = [
        Request(i, float(t), int(rng.integers(1, 9)), int(rng.integers(1, 9))) for i, t in enumerate(arrivals)
    ]
    sched = SchedulerConfig(policy, max_batch, budget, True, memory_fraction=memory)
    cfg = SimConfig(toy_gpu, tiny_arch, exe, sched, execution_policy=execution, seed=seed)
    book = parametric(tiny_arch.num_layers, depth, reuse, seed=seed, sequences=4, seq_len=8)

    def run():
        sim = Simulation(cfg, book, requests)
        sim.run()
        return sim

    sim = run()
    scheduler = sim.replicas[0].scheduler
    capacity = scheduler.capacity_entries * scheduler.entry_bytes
    assert all(it.kv_bytes <= capacity + 1e-6 for it in sim.timeline)
    assert scheduler.entries_used == pytest.approx(0.0, abs=1e-9)  # everything freed at the end
    done = sorted(f.request.id for f in scheduler.done)
    assert done == list(range(n))  # every request completes exactly once
    # inter-token gaps telescope per request, across preemptions too: first token to last
    assert scheduler.itl_count == sum(r.output_tokens - 1 for r in requests)
    span = sum(f.done_at - f.first_token_at for f in scheduler.done)
    assert scheduler.itl_sum == pytest.approx(span, rel=1e-9, abs=1e-12)
    metrics = summarize(sim, SLO(), Pricing())
    busy = sum(it.time_s for it in sim.timeline)
    idle = metrics["makespan_s"] - busy  # both counted from the first arrival
    integrated = sum(it.energy_J for it in sim.timeline) + idle * toy_gpu.idle_power_W
    assert metrics["energy_J"] == pytest.approx(integrated, rel=1e-9)
    assert metrics == summarize(run(), SLO(), Pricing())  # same inputs and seed, same numbers


def test_preemption_recomputes_and_everything_completes(toy_gpu, tiny_arch):
    exe = Execution("fp16")
    fixed = weights_bytes(tiny_arch, exe) + activation_bytes(tiny_arch, exe, 16, 4)
    memory = (
        fixed + 20 * tiny_arch.num_layers * kv_entry_bytes(tiny_arch, exe)
    ) / toy_gpu.memory_capacity_bytes
    requests = [Request(i, 0.0, 6, 8) for i in range(6)]
    cfg = SimConfig(toy_gpu, tiny_arch, exe, SchedulerConfig("continuous", 4, 16, True, memory))
    sim = Simulation(cfg, sequential(tiny_arch.num_layers), requests)
    sim.run()
    scheduler = sim.replicas[0].scheduler
    assert sum(f.preemptions for f in scheduler.done) > 0
    assert sorted(f.request.id for f in scheduler.done) == list(range(6))
    capacity = scheduler.capacity_entries * scheduler.entry_bytes
    assert max(it.kv_bytes for it in sim.timeline) <= capacity
    # gaps telescope per request across preemptions (a readmitted request may take another row)
    span = sum(f.done_at - f.first_token_at for f in scheduler.done)
    assert scheduler.itl_sum == pytest.approx(span, rel=1e-9)
    # a preempted request recomputes its prompt and generated tokens: more prefill than prompts
    assert sum(it.prefill_tokens for it in sim.timeline) > 6 * 6


def test_step_sync_refuses_the_compute_policy(toy_gpu, tiny_arch):
    with pytest.raises(ConfigError, match="layer_major"):
        SimConfig(toy_gpu, tiny_arch, Execution("fp16", kv_policy="compute"), execution_policy="step_sync")


def test_replicas_take_the_shortest_queue(toy_gpu, tiny_arch):
    alone = _run(toy_gpu, tiny_arch, [Request(0, 0.0, 4, 3)])
    requests = [Request(0, 0.0, 4, 3), Request(1, 0.0, 4, 3), Request(2, 1.0, 4, 3)]
    cfg = SimConfig(toy_gpu, tiny_arch, EXE, SchedulerConfig(), replicas=2)
    sim = Simulation(cfg, sequential(tiny_arch.num_layers), requests)
    sim.run()
    served = [sorted(f.request.id for f in r.scheduler.done) for r in sim.replicas]
    assert served == [[0, 2], [1]]  # the third arrival finds both idle and takes the first
    one = [it.start_at for it in alone.timeline]
    for replica in (0, 1):  # each replica runs the lone request's timeline from t = 0
        starts = [it.start_at for it in sim.timeline if it.replica == replica][: len(one)]
        assert starts == pytest.approx(one, rel=1e-12)
    metrics = summarize(sim, SLO(), Pricing())
    assert metrics["completed"] == 3
    busy = sum(it.time_s for it in sim.timeline)
    idle = 2 * metrics["makespan_s"] - busy
    integrated = sum(it.energy_J for it in sim.timeline) + idle * toy_gpu.idle_power_W
    assert metrics["energy_J"] == pytest.approx(integrated, rel=1e-9)


def test_engine_profiles_add_host_time_and_ideal_adds_none():
    from dataclasses import replace as _replace

    from radsim.scenario.run import run_simulation
    from radsim.scenario.schema import Scenario

    base = Scenario(
        command="simulate", hw="h100_sxm", arch="smollm2-135m", arrival="poisson", rate_per_s=4.0,
        duration_s=5.0, prompt_tokens=64, output_tokens=32, seed=1,
    )  # fmt: skip
    metrics = {e: run_simulation(_replace(base, engine=e))[1] for e in ("ideal", "eager", "graphs", "vllm")}
    # a small model is host-bound without graphs: eager decode steps take several times longer
    assert metrics["eager"]["tpot_s_mean"] > 3 * metrics["ideal"]["tpot_s_mean"]
    assert (
        metrics["ideal"]["tpot_s_mean"] <= metrics["graphs"]["tpot_s_mean"] < metrics["eager"]["tpot_s_mean"]
    )
    assert metrics["vllm"]["tpot_s_mean"] >= metrics["ideal"]["tpot_s_mean"]
    assert all(m["engine"] == e for e, m in metrics.items())


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_timeline_kept_as_sums_gives_the_same_metrics_and_holds_no_rows(toy_gpu, tiny_arch, replicas):
    rng = np.random.default_rng(3)
    requests = [
        Request(i, float(t), int(p), int(o))
        for i, (t, p, o) in enumerate(
            zip(
                np.cumsum(rng.exponential(0.02, 400)),
                rng.integers(1, 40, 400),
                rng.integers(1, 30, 400),
                strict=True,
            )
        )
    ]
    cfg = SimConfig(toy_gpu, tiny_arch, EXE, SchedulerConfig("continuous", 8, 64), replicas=replicas)
    routes = parametric(tiny_arch.num_layers, 0.5, 0.2, 0)
    sims = []
    for keep in (True, False):
        sim = Simulation(cfg, routes, requests, keep_timeline=keep)
        sim.run()
        sims.append(sim)
    kept, summed = sims
    slo, pricing = SLO(1.0, 0.1), Pricing()
    assert summarize(kept, slo, pricing) == summarize(summed, slo, pricing)
    assert not summed.timeline._blocks and len(summed.timeline) == len(kept.timeline) > 0
    with pytest.raises(ValueError, match="keeps only its sums"):
        summed.timeline.array()
    only = (kept.timeline.column("prefill_tokens") == 0) & (kept.timeline.column("decode_tokens") > 0)
    assert kept.timeline.decode_only_count == int(only.sum()) > 0
    assert kept.timeline.decode_only_s == pytest.approx(
        float(np.mean(kept.timeline.column("time_s")[only])) * only.sum()
    )
    assert kept.timeline.kv_peak_bytes == kept.timeline.column("kv_bytes").max()
    before = kept.timeline.column("start_at") <= requests[-1].arrival_at
    assert kept.timeline.waiting_peak == kept.timeline.column("waiting")[before].max()
