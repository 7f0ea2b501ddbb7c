"""A scenario run by either command (estimate, simulate): one meaning per metric, both depth distributions everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from radsim.scenario.run import run_estimate, run_simulation
from radsim.scenario.schema import Scenario

ROOT = Path(__file__).resolve().parents[2]
CALIBRATED_CPU = str(ROOT / "measurements/epyc-genoa-vm/calibrated.toml")


@pytest.mark.parametrize(
    ("hw", "arch", "dtype"),
    [("h100_sxm", "llama3.1-8b", "bf16"), (CALIBRATED_CPU, "smollm2-135m", "fp32")],
)
@pytest.mark.parametrize("batch", [1, 32, 128])
def test_estimate_and_simulate_agree_on_one_static_batch(hw, arch, dtype, batch):
    """The same requests, all at t=0, static batching: the two commands report the same latencies."""
    values = dict(hw=hw, arch=arch, dtype=dtype, batch=batch, prompt_tokens=512, output_tokens=128)
    estimated = run_estimate(Scenario(command="estimate", **values))
    _, simulated = run_simulation(Scenario(command="simulate", arrival="batch", **values))
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        assert estimated[metric] == pytest.approx(simulated[f"{metric}_mean"], rel=0.01), metric
    assert estimated["decode_step_s"] == pytest.approx(simulated["decode_step_s"], rel=0.01)
    # the batch-level figure has its own name: the last request's first token
    assert estimated["prefill_time_s"] == pytest.approx(simulated["ttft_s_p99"], rel=0.01)


def test_both_depth_distributions_reach_both_commands():
    base = dict(
        hw="h100_sxm", arch="llama3.1-8b", batch=8, prompt_tokens=64, output_tokens=16, depth_fraction=0.5
    )
    exact = run_estimate(Scenario(command="estimate", **base))
    bern = run_estimate(Scenario(command="estimate", depth_distribution="bernoulli", **base))
    assert exact["layers_visited_per_token"] == 16 and bern["layers_visited_per_token"] == pytest.approx(16.0)
    assert exact["decode_step_s"] != bern["decode_step_s"]
    for law in ("exact", "bernoulli"):
        sim, _ = run_simulation(Scenario(command="simulate", arrival="batch", depth_distribution=law, **base))
        depth = sim.routes.depth
        assert (depth == 16).all() if law == "exact" else depth.std() > 1.0


def test_a_stretched_trace_names_its_model_and_quality_and_warns():
    trace = str(ROOT / "traces/radial-scratch-p05.parquet")
    s = Scenario(
        command="simulate",
        hw="h100_sxm",
        arch="llama3.1-8b",
        trace=trace,
        arrival="batch",
        batch=2,
        output_tokens=8,
    )
    _, metrics = run_simulation(s)
    assert "radial-scratch-p05" in metrics["routes_source"] and "perplexity 58.0" in metrics["routes_source"]
    assert any("8-layer model" in w and "32 layers" in w for w in metrics["warnings"])
    same = str(ROOT / "traces/smollm2-135m-radial-distill-tau0.27.parquet")  # 30 layers onto 32: no warning
    _, metrics = run_simulation(
        Scenario(
            command="simulate",
            hw="h100_sxm",
            arch="llama3.1-8b",
            trace=same,
            arrival="batch",
            batch=2,
            output_tokens=8,
        )
    )
    assert metrics["warnings"] == []


def test_an_overloaded_run_warns_and_a_light_one_does_not():
    base = dict(
        command="simulate",
        hw="h100_sxm",
        arch="llama3.1-8b",
        duration_s=5.0,
        prompt_tokens=256,
        output_tokens=32,
    )
    _, heavy = run_simulation(Scenario(rate_per_s=20.0, max_batch=1, **base))
    assert any("arrivals exceed capacity" in w for w in heavy["warnings"])
    _, light = run_simulation(Scenario(rate_per_s=2.0, **base))
    assert light["warnings"] == []


def test_engine_profiles_price_with_their_frameworks_kernel_tables():
    from radsim.scenario.run import hardware, run_estimate
    from radsim.scenario.schema import scenario_from

    base = dict(command="estimate", hw="h100_sxm", arch="llama3.1-8b", batch=1)
    by_engine = {
        e: hardware(scenario_from({**base, "engine": e})) for e in ("ideal", "vllm", "sglang", "trtllm")
    }
    assert by_engine["ideal"].kernel_tables.meta["framework"] == "vllm"  # the hardware file's own
    for engine in ("vllm", "sglang", "trtllm"):
        assert by_engine[engine].kernel_tables.meta["framework"] == engine
    out = run_estimate(scenario_from({**base, "engine": "sglang"}))
    assert "sglang" in out["kernel_tables"] and out["engine"] == "sglang"
    # a device without tables keeps the roofline under every engine
    assert hardware(scenario_from({**base, "hw": "mi300x", "engine": "sglang"})).kernel_tables is None


def test_graph_free_tensor_parallel_decode_stops_getting_faster():
    from radsim.scenario.run import run_estimate
    from radsim.scenario.schema import scenario_from

    def tpot(engine, tp):
        s = dict(
            command="estimate", hw="h100_sxm", arch="llama3.1-70b", tp=tp, engine=engine, output_tokens=16
        )
        return run_estimate(scenario_from(s))["tpot_s"]

    assert tpot("ideal", 8) < 0.7 * tpot("ideal", 4)  # the GPU's kernels shrink with TP
    assert tpot("eager", 8) > 0.95 * tpot("eager", 4)  # the host's launches do not
    assert tpot("eager", 8) > 2 * tpot("ideal", 8)
