"""Advancing over runs of decode iterations at once gives the step-by-step engine's results.

Every case runs twice, with `Simulation.advance` on and off (the reference that prices and books
each iteration on its own), and compares the whole timeline, every request's timestamps, the
inter-token-latency books, energy and busy time, and the summary metrics: equal to floating-point
summation order (relative 1e-12).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from radsim.scenario.run import build_simulation, pricing, slo
from radsim.scenario.schema import Scenario
from radsim.sim.metrics import summarize

RTOL = 1e-12
DISTILL = "traces/smollm2-135m-radial-distill-tau0.27.parquet"
SCRATCH = "traces/radial-scratch.parquet"  # visits layer 5 twice: a second pass
BASE = Scenario(
    command="simulate",
    hw="h100_sxm",
    arch="llama3.1-8b",
    arrival="poisson",
    rate_per_s=3.0,
    duration_s=20.0,
    lengths="lognormal",
    prompt_tokens=256,
    output_tokens=96,
    max_length_tokens=1024,
    max_batch=32,
    seed=3,
)

CASES = {
    "sequential": BASE,
    "parametric none": replace(BASE, depth_fraction=0.5, depth_distribution="bernoulli"),
    "parametric copy": replace(BASE, depth_fraction=0.5, kv_policy="copy"),
    "parametric compute": replace(BASE, depth_fraction=0.75, kv_policy="compute"),
    "distilled trace": replace(BASE, trace=DISTILL),
    "trace with a second pass": replace(BASE, trace=SCRATCH),
    "static batching": replace(BASE, batching="static", max_batch=8),
    "no chunked prefill": replace(BASE, chunked_prefill=False, rate_per_s=6.0),
    "static batch arriving at once": replace(BASE, arrival="batch", batch=16, trace=DISTILL),
    "preemption": replace(BASE, memory_fraction=0.2, rate_per_s=12.0, output_tokens=300, max_batch=64),
    "busy, long outputs": replace(BASE, rate_per_s=20.0, duration_s=8.0, output_tokens=400, max_batch=128),
    "step-synchronous (never advanced)": replace(BASE, trace=DISTILL, execution="step_sync"),
    # a small token budget: prompts prefill in chunks, advanced over with the decodes beside them
    "chunked prompts": replace(BASE, prefill_chunk=96, rate_per_s=6.0),
    "chunked prompts, copy": replace(BASE, prefill_chunk=96, depth_fraction=0.5, kv_policy="copy"),
    "chunked prompts, compute": replace(BASE, prefill_chunk=96, depth_fraction=0.75, kv_policy="compute"),
    "chunked prompts, second pass": replace(BASE, prefill_chunk=96, trace=SCRATCH, rate_per_s=6.0),
    "chunked prompts, none": replace(BASE, prefill_chunk=64, trace=SCRATCH, kv_policy="none"),
    "chunked prompts, preemption": replace(
        BASE, prefill_chunk=128, memory_fraction=0.2, rate_per_s=12.0, output_tokens=300, max_batch=64
    ),
    "chunked prompts, engine vllm": replace(BASE, prefill_chunk=96, engine="vllm", trace=DISTILL),
    # saturation: requests wait, so completions and admissions follow each other (churn runs)
    "saturated": replace(BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24),
    "saturated, copy": replace(
        BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24, depth_fraction=0.5, kv_policy="copy"
    ),
    "saturated, compute": replace(
        BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24, depth_fraction=0.75, kv_policy="compute"
    ),
    "saturated, second pass": replace(BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24, trace=SCRATCH),
    "saturated, second pass, copy": replace(
        BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24, trace=SCRATCH, kv_policy="copy"
    ),
    "saturated, no chunked prefill": replace(
        BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24, chunked_prefill=False, prefill_chunk=512
    ),
    "saturated, small budget": replace(
        BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24, prefill_chunk=300
    ),
    "saturated, engine vllm, routed": replace(
        BASE, rate_per_s=40.0, duration_s=6.0, max_batch=24, engine="vllm", trace=DISTILL
    ),
    "saturated, preemption": replace(
        BASE, rate_per_s=40.0, duration_s=6.0, max_batch=64, memory_fraction=0.2, output_tokens=300
    ),
    # engine profiles: host time per iteration (graph-free launches; graphs with an overlapped loop)
    "engine eager": replace(BASE, engine="eager"),
    "engine vllm, routed": replace(BASE, engine="vllm", trace=DISTILL),
    "engine trtllm, batches above its graphs": replace(
        BASE, engine="trtllm", rate_per_s=20.0, duration_s=8.0, output_tokens=400, max_batch=256
    ),
}
# every shipped trace, advanced and not
for _trace in sorted((Path(__file__).resolve().parents[2] / "traces").glob("*.parquet")):
    CASES.setdefault(f"trace {_trace.stem}", replace(BASE, trace=f"traces/{_trace.name}"))


def _run(s: Scenario, advance: bool):
    sim = build_simulation(s)
    sim.advance = sim.advance and advance
    sim.run()
    return sim


@pytest.mark.parametrize("name", list(CASES))
def test_advancing_equals_the_step_by_step_engine(name):
    s = CASES[name]
    fast, slow = _run(s, True), _run(s, False)
    np.testing.assert_allclose(fast.timeline.array(), slow.timeline.array(), rtol=RTOL, atol=0)
    for a, b in zip(fast.replicas, slow.replicas, strict=True):
        done_a = np.array(
            [(f.request.id, f.first_token_at, f.done_at, f.preemptions) for f in a.scheduler.done]
        )
        done_b = np.array(
            [(f.request.id, f.first_token_at, f.done_at, f.preemptions) for f in b.scheduler.done]
        )
        np.testing.assert_allclose(done_a, done_b, rtol=RTOL, atol=0)
        assert (a.scheduler.itl_histogram == b.scheduler.itl_histogram).all()
        assert a.scheduler.itl_count == b.scheduler.itl_count
        assert a.scheduler.itl_sum == pytest.approx(b.scheduler.itl_sum, rel=RTOL)
        assert (a.energy_J, a.busy_s, a.last_end_at) == pytest.approx(
            (b.energy_J, b.busy_s, b.last_end_at), rel=RTOL
        )
    m_fast, m_slow = summarize(fast, slo(s), pricing(s)), summarize(slow, slo(s), pricing(s))
    assert m_fast.keys() == m_slow.keys()
    for key, value in m_slow.items():
        assert m_fast[key] == pytest.approx(value, rel=RTOL), key


def test_runs_are_taken_where_they_should_be():
    """A lightly loaded replica decodes in long runs (most iterations advanced at once); the cases
    above exercise preemption and cut runs (checked here so that the equality tests are not vacuous)."""
    sim = build_simulation(CASES["sequential"])
    taken = []
    original = sim._run_decodes

    def spy(replica, batch, steps):
        before = len(sim.timeline)
        yield from original(replica, batch, steps)
        taken.append(len(sim.timeline) - before)

    sim._run_decodes = spy
    sim.run()
    assert sum(taken) > 0.8 * len(sim.timeline) and max(taken) > 20
    preempting = _run(CASES["preemption"], True)
    assert sum(f.preemptions for f in preempting.replicas[0].scheduler.done) > 0


def _prefill_runs(s: Scenario) -> list[int]:
    """Iterations of each prefill run the advancing engine takes on scenario `s`."""
    sim = build_simulation(s)
    runs = []
    original = sim._run_prefills

    def spy(replica, batch, steps):
        before = len(sim.timeline)
        yield from original(replica, batch, steps)
        runs.append(len(sim.timeline) - before)

    sim._run_prefills = spy
    sim.run()
    return runs


@pytest.mark.parametrize("name", ["chunked prompts", "chunked prompts, preemption"])
def test_prefill_runs_are_taken(name):
    """Chunked prompts are advanced over (so that the equality tests above are not vacuous), also
    where requests are preempted."""
    runs = _prefill_runs(CASES[name])
    assert len(runs) > 10 and max(runs) >= 3
    if "preemption" in name:
        sim = _run(CASES[name], True)
        assert sum(f.preemptions for f in sim.replicas[0].scheduler.done) > 0
