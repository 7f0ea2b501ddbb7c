"""Invariants of whole scenarios under memory pressure: random workloads that preempt, on real specs.

Each example is a `simulate` scenario (SmolLM2-135M on an H100, so that a few MB of KV cache are
the limit) with random arrivals, lengths, batching, chunking, replicas, routes and KV policies, and a
`memory_fraction` that leaves room for only a few requests' KV entries. Whatever the example:

- no replica ever holds more KV cache than its capacity, and every entry is freed at the end;
- every request completes exactly once, preempted or not, and its inter-token gaps telescope;
- energy is the integral of power: busy iterations plus idle power for the rest of the makespan;
- the same scenario and seed give the same metrics.

The examples are drawn from a fixed seed; the test asserts that many of them preempt and prints
the preemption counts they reached (`pytest -s`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from radsim.cost.layer import Execution
from radsim.cost.memory import activation_bytes, kv_entry_bytes, weights_bytes
from radsim.scenario import run
from radsim.scenario.schema import Scenario, scenario_from

ROOT = Path(__file__).resolve().parents[2]
TRACE = str(ROOT / "traces" / "radial-scratch-p05.parquet")
ARCH = "smollm2-135m"


def _memory_fraction(s: Scenario, tokens: float) -> float:
    """The share of device memory that leaves room for the KV entries of `tokens` tokens (each
    holding the most entries any token of the routes holds)."""
    hw, arch = run.hardware(s), run.architecture(s)
    book, policy, routed = run.route_book(s, arch, TRACE if s.trace else None)
    exe = Execution(s.dtype, s.tp, policy, routed, s.expert_launch)
    layers = arch.num_layers
    if policy == "none":
        per_token = int(book.slots.sum(axis=1).max())
    else:  # every first-pass layer holds an entry for every token, plus later passes' visits
        per_token = layers + int(book.slots[:, layers:].sum(axis=1).max(initial=0))
    fixed = weights_bytes(arch, exe) + activation_bytes(arch, exe, s.prefill_chunk, s.max_batch)
    kv = tokens * per_token * kv_entry_bytes(arch, exe)
    return min(1.0, (fixed + kv) / hw.memory_capacity_bytes)


workloads = st.fixed_dictionaries(
    {
        "arrival": st.sampled_from(["poisson", "gamma"]),
        "rate_per_s": st.sampled_from([300.0, 1000.0, 3000.0]),
        "duration_s": st.sampled_from([0.02, 0.05]),
        "burstiness": st.sampled_from([1.0, 3.0]),
        "lengths": st.sampled_from(["fixed", "uniform", "lognormal"]),
        "prompt_tokens": st.integers(8, 64),
        "output_tokens": st.integers(8, 64),  # decoding grows the cache: what preempts
        "max_batch": st.integers(4, 64),
        "prefill_chunk": st.sampled_from([16, 64, 512]),
        "chunked_prefill": st.booleans(),
        "batching": st.sampled_from(["continuous", "continuous", "continuous", "static"]),
        "replicas": st.integers(1, 2),
        "routes": st.sampled_from(["sequential", "depth 0.5", "bernoulli 0.6", "trace"]),
        "kv_policy": st.sampled_from(["", "copy", "compute"]),
        "execution": st.sampled_from(["layer_major", "step_sync"]),
        "room": st.floats(1.0, 2.5),  # KV room, in units of the longest request's entries
        "seed": st.integers(0, 1000),
    }
)


def _scenario(w: dict) -> Scenario:
    routes = {
        "sequential": {},
        "depth 0.5": {"depth_fraction": 0.5},
        "bernoulli 0.6": {"depth_fraction": 0.6, "depth_distribution": "bernoulli"},
        "trace": {"trace": TRACE},
    }[w["routes"]]
    execution = "layer_major" if w["kv_policy"] == "compute" else w["execution"]
    cap = 2 * max(w["prompt_tokens"], w["output_tokens"])  # lengths are clipped to [1, cap]
    values = {k: v for k, v in w.items() if k not in ("routes", "room", "execution")}
    values |= dict(command="simulate", hw="h100_sxm", arch=ARCH, max_length_tokens=cap, execution=execution)
    s = scenario_from({**values, **routes}, "example")
    longest = 2 * cap  # prompt and output, each at most `cap`
    return scenario_from({**values, **routes, "memory_fraction": _memory_fraction(s, w["room"] * longest)})


def _check(s: Scenario) -> dict:
    sim, metrics = run.run_simulation(s, TRACE if s.trace else None)
    hw, tp = sim.cfg.hw, sim.cfg.exe.tp
    for replica in sim.replicas:
        sched = replica.scheduler
        capacity = sched.capacity_entries * sched.entry_bytes
        held = [it.kv_bytes for it in sim.timeline if it.replica == replica.index]
        assert max(held, default=0.0) <= capacity * (1 + 1e-12), "KV cache above capacity"
        assert sched.entries_used == pytest.approx(0.0, abs=1e-6)  # everything freed at the end
    done = sorted(f.request.id for r in sim.replicas for f in r.scheduler.done)
    assert done == sorted(r.id for r in sim.requests)  # each request completes exactly once
    itl_n = sum(r.scheduler.itl_count for r in sim.replicas)
    assert itl_n == sum(r.output_tokens - 1 for r in sim.requests)
    span = sum(f.done_at - f.first_token_at for r in sim.replicas for f in r.scheduler.done)
    assert sum(r.scheduler.itl_sum for r in sim.replicas) == pytest.approx(span, rel=1e-9, abs=1e-12)
    busy = sum(it.time_s for it in sim.timeline)
    idle = s.replicas * metrics["makespan_s"] - busy
    integrated = sum(it.energy_J for it in sim.timeline) + idle * hw.idle_power_W * tp
    assert metrics["energy_J"] == pytest.approx(integrated, rel=1e-9)
    return metrics


def test_random_workloads_under_memory_pressure_keep_their_invariants():
    preemptions: list[int] = []

    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @seed(16)  # the same examples on every run
    @given(w=workloads)
    def check(w: dict) -> None:
        s = _scenario(w)
        metrics = _check(s)
        assert metrics == run.run_simulation(s, TRACE if s.trace else None)[1]  # same seed, same result
        preemptions.append(int(metrics["preemptions"]))

    check()
    preempted = [p for p in preemptions if p]
    print(f"preemptions per example: {preemptions}")
    assert len(preempted) >= len(preemptions) // 4, preemptions  # memory pressure did bite
    assert max(preemptions) >= 20
