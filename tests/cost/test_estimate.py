"""Static batch estimate: phases, dynamic depth, memory, determinism; the step-by-step reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radsim.cost import estimate as estimate_module
from radsim.cost.estimate import (
    StepRuns,
    Workload,
    _reference_estimate,
    estimate,
    estimate_many,
    phase_totals,
)
from radsim.cost.layer import Execution
from radsim.cost.memory import kv_entry_bytes, weights_bytes
from radsim.cost.money import Pricing
from radsim.cost.table import launch_prices
from radsim.errors import ConfigError
from radsim.spec.arch import load_arch
from radsim.spec.hardware import load_hardware


@pytest.fixture(scope="module")
def h100():
    return load_hardware("h100_sxm")


@pytest.fixture(scope="module")
def llama():
    return load_arch("llama2-7b")


def run(hw, arch, batch=8, prompt=512, output=32, depth=1.0, dtype="fp16", tp=1, policy="none", seed=0):
    exe = Execution(dtype=dtype, tp=tp, kv_policy=policy)
    return estimate(hw, arch, exe, Workload(batch, prompt, output, depth_fraction=depth, seed=seed))


def test_identities(h100, llama):
    r = run(h100, llama)
    assert r["e2e_s"] == pytest.approx(r["ttft_s"] + 31 * r["tpot_s"])
    assert r["output_tokens_per_s"] == pytest.approx(8 * 32 / r["e2e_s"])
    assert r["energy_J_per_output_token"] == pytest.approx(r["energy_J"] / (8 * 32))
    assert r["avg_power_W"] == pytest.approx(r["energy_J"] / r["e2e_s"])
    assert h100.idle_power_W < r["avg_power_W"] <= h100.max_power_W
    rental = h100.price_usd_per_hour * r["e2e_s"] / 3600
    assert r["cost_usd"] == pytest.approx(rental + r["energy_J"] / 3.6e6 * r["electricity_usd_per_kWh"])


def test_memory_accounting(h100, llama):
    r = run(h100, llama, batch=4, prompt=100, output=11)
    exe = Execution("fp16")
    assert r["weights_bytes"] == pytest.approx(weights_bytes(llama, exe))
    assert r["kv_cache_bytes"] == pytest.approx(4 * 110 * 32 * kv_entry_bytes(llama, exe))
    assert r["peak_memory_bytes"] == pytest.approx(
        r["weights_bytes"] + r["kv_cache_bytes"] + r["activation_bytes"]
    )


def test_decode_is_weight_bound_so_batching_is_nearly_free(h100, llama):
    # short contexts: weights dominate the bytes of a step (llama2-7b has no GQA, so long
    # contexts make the KV cache dominate instead)
    one, many = run(h100, llama, batch=1, prompt=64), run(h100, llama, batch=32, prompt=64)
    assert many["tpot_s"] < 1.3 * one["tpot_s"]
    assert many["output_tokens_per_s"] > 20 * one["output_tokens_per_s"]


def test_dynamic_depth_saves_less_as_decode_batches_grow(h100, llama):
    # short contexts, so that weight reads (not KV reads, which do shrink with depth) dominate
    def saving(batch):
        full = run(h100, llama, batch=batch, prompt=16, output=16)
        half = run(h100, llama, batch=batch, prompt=16, output=16, depth=0.5)
        return 1 - half["tpot_s"] / full["tpot_s"]

    small, large = saving(1), saving(64)
    assert small > 0.3  # one token skips half the layers: half the weights are not read
    assert large < 0.05  # 64 tokens between them visit every layer: weights read anyway


def test_dynamic_depth_saves_prefill_compute_and_kv_memory(h100, llama):
    full = run(h100, llama, batch=8, prompt=2048, output=4)
    half = run(h100, llama, batch=8, prompt=2048, output=4, depth=0.5)
    assert half["ttft_s"] < 0.6 * full["ttft_s"]
    assert half["kv_cache_bytes"] == pytest.approx(full["kv_cache_bytes"] / 2)
    copy = run(h100, llama, batch=8, prompt=2048, output=4, depth=0.5, policy="copy")
    assert copy["kv_cache_bytes"] == pytest.approx(full["kv_cache_bytes"])


def test_same_seed_same_numbers_other_seed_differs(h100, llama):
    a = run(h100, llama, depth=0.6, seed=3)
    b = run(h100, llama, depth=0.6, seed=3)
    c = run(h100, llama, depth=0.6, seed=4)
    assert a == b
    assert a["ttft_s"] != c["ttft_s"]


def test_tensor_parallel_halves_weights_and_doubles_devices(h100, llama):
    one, two = run(h100, llama), run(h100, llama, tp=2)
    assert two["weights_bytes"] == pytest.approx(one["weights_bytes"] / 2)
    assert two["devices"] == 2 and two["tpot_s"] < one["tpot_s"]


def test_out_of_memory_says_how_much(h100):
    with pytest.raises(ConfigError, match=r"does not fit on h100_sxm: needs \d+\.\d+ GB"):
        run(h100, load_arch("llama2-70b"), batch=1, prompt=128, output=2)


def test_fp8_needs_a_device_with_fp8(llama):
    with pytest.raises(ConfigError, match="no dense fp8 throughput"):
        run(load_hardware("a100_sxm_80gb"), llama, dtype="fp8")
    h100 = load_hardware("h100_sxm")
    fp8, fp16 = run(h100, llama, dtype="fp8"), run(h100, llama)
    assert fp8["weights_bytes"] == pytest.approx(fp16["weights_bytes"] / 2)
    assert fp8["tpot_s"] < fp16["tpot_s"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch": 0}, "batch"), ({"depth": 0.0}, "depth_fraction"), ({"depth": 1.2}, "depth_fraction")],
)
def test_bad_workload(h100, llama, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        run(h100, llama, **kwargs)


def test_one_output_token_has_no_decode_step(h100, llama):
    r = run(h100, llama, batch=2, prompt=64, output=1)
    assert r["tpot_s"] is None and r["decode_steps"] == 0 and r["e2e_s"] == r["ttft_s"]


def test_longer_than_the_model_allows(h100, llama):
    with pytest.raises(ConfigError, match="4096 positions"):
        run(h100, llama, batch=1, prompt=4000, output=200)


def test_prefill_chunking_changes_steps_not_work(h100, llama):
    exe = Execution("fp16")
    whole = estimate(h100, llama, exe, Workload(4, 1000, 2, prefill_chunk=0))
    chunked = estimate(h100, llama, exe, Workload(4, 1000, 2, prefill_chunk=512))
    assert whole["prefill_steps"] == 1 and chunked["prefill_steps"] == 8
    # causal attention to earlier chunks through the KV cache: exactly the same FLOPs, but the
    # weights are read once per chunk
    assert chunked["flops_per_device"] == pytest.approx(whole["flops_per_device"], rel=1e-12)
    assert chunked["dram_bytes_per_device"] > whole["dram_bytes_per_device"]
    assert chunked["prefill_time_s"] > whole["prefill_time_s"]
    assert chunked["activation_bytes"] < whole["activation_bytes"]


def test_expert_launch_survives_routing_and_per_expert_costs_more():
    hw, arch = load_hardware("h100_sxm"), load_arch("llama3.1-8b-finedeep")
    work = Workload(1, 64, 8, depth_fraction=0.5)
    grouped = estimate(hw, arch, Execution("bf16", expert_launch="grouped"), work)
    each = estimate(hw, arch, Execution("bf16", expert_launch="per_expert"), work)
    assert each["expert_launch"] == "per_expert"  # the routed execution keeps the setting
    assert each["tpot_s"] > grouped["tpot_s"]


# ---- the vectorised estimate gives the step-by-step loop's numbers --------------------------------

#: rtol of every float metric: the two sum the same per-launch figures in other orders (the estimate
#: sums affine runs in closed form and layers as multiples), which moves the last bits only
#: (observed below 3e-15; the estimate's docstring says why each sum differs).
RTOL = 1e-12
DEPTHS = ((1.0, "exact"), (0.5, "exact"), (0.6, "bernoulli"))


def assert_same_metrics(new: dict, ref: dict, rtol: float = RTOL) -> None:
    assert new.keys() == ref.keys()
    for key, expected in ref.items():
        if isinstance(expected, float):
            assert new[key] == pytest.approx(expected, rel=rtol, abs=0.0), key
        else:
            assert new[key] == expected, key


def _outcome(fn, *args):
    try:
        return fn(*args)
    except ConfigError as exc:
        return f"ConfigError: {exc}"


def _grid_points(count: int = 168, seed: int = 0):
    """Points of the grid: every shipped architecture, each other dimension's values drawn in turn."""
    from radsim.spec.arch import list_archs

    rng = np.random.default_rng(seed)
    archs = list_archs()
    dims = {
        "batch": (1, 7, 64, 256),
        "output": (1, 2, 33, 500),
        "depth": DEPTHS,
        "policy": ("none", "copy", "compute"),
        "dtype": ("bf16", "fp8"),
        "tp": (1, 2),
        "chunk": (0, 512, 8192),
        "hw": ("h100_sxm", "mi300x", "epyc_9655"),  # measured kernel tables; none; a CPU
    }
    points = []
    for i in range(count):
        # every value of every dimension appears, in varied combinations
        pick = {
            name: values[(i + int(rng.integers(len(values)))) % len(values)] for name, values in dims.items()
        }
        points.append((archs[i % len(archs)], pick))
    return points


@pytest.mark.parametrize(("arch_name", "p"), _grid_points(), ids=lambda x: x if isinstance(x, str) else None)
def test_estimate_equals_the_reference_loop(arch_name, p):
    hw, arch = load_hardware(p["hw"]), load_arch(arch_name)
    depth, distribution = p["depth"]
    batch = p["batch"] if p["output"] < 500 or p["depth"][0] == 1.0 else min(p["batch"], 64)  # keep it short
    exe = Execution(p["dtype"], tp=p["tp"], kv_policy=p["policy"])
    work = Workload(batch, 300, p["output"], depth, p["chunk"], seed=5, depth_distribution=distribution)
    ref = _outcome(_reference_estimate, hw, arch, exe, work)
    new = _outcome(estimate, hw, arch, exe, work)
    if isinstance(ref, str):
        assert new == ref  # the same error, raised at the same check
    else:
        assert_same_metrics(new, ref)


@pytest.mark.parametrize("policy", ["none", "copy", "compute"])
@pytest.mark.parametrize(("depth", "distribution"), DEPTHS)
def test_every_kv_policy_and_depth_on_both_kinds_of_device(policy, depth, distribution):
    for hw_name in ("h100_sxm", "mi300x"):
        hw, arch = load_hardware(hw_name), load_arch("llama3.1-8b")
        exe = Execution("bf16", tp=2, kv_policy=policy)
        work = Workload(5, 700, 40, depth, 512, seed=2, depth_distribution=distribution)
        assert_same_metrics(estimate(hw, arch, exe, work), _reference_estimate(hw, arch, exe, work))


@pytest.mark.parametrize("engine", ["eager", "graphs", "vllm", "trtllm"])
@pytest.mark.parametrize(
    ("arch_name", "batch", "depth", "output"),
    [("smollm2-135m", 1, 1.0, 300), ("llama3.1-8b", 4, 1.0, 200), ("llama3.1-8b", 200, 1.0, 60),
     ("smollm2-135m", 8, 0.5, 40), ("llama3.1-8b", 2, 0.75, 30)],
)  # fmt: skip
def test_engine_profiles_equal_the_reference_loop(engine, arch_name, batch, depth, output):
    # host time per iteration: the closed form splits affine runs where the GPU time crosses the
    # host's floor (a small model is host-bound early and GPU-bound as its KV cache grows)
    from radsim.spec.engine import load_engine

    hw, arch, profile = load_hardware("h100_sxm"), load_arch(arch_name), load_engine(engine)
    exe = Execution("bf16")
    work = Workload(batch, 300, output, depth, 512, seed=4)
    ref = _reference_estimate(hw, arch, exe, work, None, profile)
    new = estimate(hw, arch, exe, work, None, profile)
    assert_same_metrics(new, ref, rtol=1e-9)
    assert new["engine"] == engine
    ideal = estimate(hw, arch, exe, work)
    assert new["e2e_s"] >= ideal["e2e_s"] and new["energy_J"] >= ideal["energy_J"]


def test_host_floor_crossed_within_a_run_is_summed_exactly():
    from radsim.cost.estimate import _sum_floored

    for first, last, n, floor in [(1.0, 5.0, 5, 2.5), (5.0, 1.0, 5, 2.5), (1.0, 5.0, 5, 9.0), (2.0, 2.0, 3, 1.0),
                                  (1.0, 3.0, 3, 2.0), (3.0, 1.0, 7, 2.0), (1.0, 1.0, 1, 2.0)]:  # fmt: skip
        xs = np.linspace(first, last, n)
        got = _sum_floored(np.array([n]), np.array([first]), np.array([last]), np.array([floor]))[0]
        assert got == pytest.approx(np.maximum(xs, floor).sum(), rel=1e-12)


# a CPU in fp32: attention's energy reaches the power cap part-way through decode
CAPPED = [("smollm2-135m", 1, 100), ("opt-125m", 16, 1), ("finedeep-scratch", 1, 1000)]


@pytest.mark.parametrize(("arch_name", "batch", "prompt"), CAPPED)
def test_decode_runs_split_where_the_power_cap_starts(arch_name, batch, prompt, monkeypatch):
    hw, arch, exe = load_hardware("epyc_2core"), load_arch(arch_name), Execution("fp32")
    work = Workload(batch, prompt, 1000)
    runs = []
    affine_runs = estimate_module._affine_runs
    monkeypatch.setattr(estimate_module, "_affine_runs", lambda *a: runs.append(affine_runs(*a)) or runs[-1])
    assert_same_metrics(estimate(hw, arch, exe, work), _reference_estimate(hw, arch, exe, work))
    assert len(runs[0][0]) == 2  # two runs: below the cap, then capped


@pytest.mark.parametrize("wrong", [lambda guesses: [], lambda guesses: [g + 40 for g in guesses]])
def test_a_missed_switch_is_found_by_pricing_its_gap(wrong, monkeypatch):
    guesses = estimate_module._switch_guesses
    monkeypatch.setattr(estimate_module, "_switch_guesses", lambda *a: wrong(guesses(*a)))
    hw, arch, exe = load_hardware("epyc_2core"), load_arch("smollm2-135m"), Execution("fp32")
    work = Workload(1, 100, 1000)
    assert_same_metrics(estimate(hw, arch, exe, work), _reference_estimate(hw, arch, exe, work))


def test_long_unrouted_decode_is_a_few_runs(h100):
    arch = load_arch("llama3.1-8b")
    work = Workload(64, 512, 4096)
    exe, _, _ = estimate_module._setup(h100, arch, Execution("bf16"), work)
    runs = estimate_module._sequential_decode(h100, arch, exe, work, launch_prices(h100, arch, exe))
    assert runs.steps == 4095 and runs.count.size <= 3
    assert_same_metrics(estimate(h100, arch, exe, work), _reference_estimate(h100, arch, exe, work))


def test_kernel_launches_count_every_launch(h100, llama):
    # unrouted llama2-7b: per layer two norms, QKV, attention (RoPE/KV write and the kernel), O,
    # and the MLP's three launches = 9; per iteration the embedding, final norm, LM head, sampling
    r = run(h100, llama, batch=4, prompt=100, output=11)
    assert r["kernel_launches"] == (1 + 10) * (9 * 32 + 4)
    routed = run(h100, llama, batch=4, prompt=100, output=11, depth=0.5)
    assert routed["kernel_launches"] > r["kernel_launches"]  # router and gather/scatter launches


# ---- the phase reduction (the host model's hook) -----------------------------------------------


def test_phase_totals_sum_affine_runs_in_closed_form():
    first = np.array([[1.0, 5.0], [2.0, 2.0], [0.0, 1.0], [3.0, 3.0], [0.5, 0.0], [7.0, 9.0]])
    last = first + np.array([[3.0, 0.0], [1.0, 0.0], [6.0, 0.0], [0.0, 0.0], [1.5, 0.0], [0.0, 0.0]])
    runs = StepRuns(np.array([4, 1]), first, last, np.array([8, 8]), prefill=False)
    totals = phase_totals(runs)
    # run 0: 1, 2, 3, 4 seconds; run 1: one step of 5
    assert totals.time_s == 15.0 and totals.steps == 5
    assert totals.run_end_s.tolist() == [10.0, 15.0]
    assert totals.flops == 0 + 2 + 4 + 6 + 1
    assert totals.launches == 4 * 7 + 9
    per_step = StepRuns.per_step(first, 8, prefill=True)
    assert phase_totals(per_step).time_s == 6.0 and phase_totals(per_step).steps == 2
    empty = phase_totals(StepRuns.join([], prefill=False))
    assert empty.steps == 0 and empty.time_s == 0.0


# ---- many points -------------------------------------------------------------------------------


def test_estimate_many_gives_each_points_estimate(h100, llama):
    exe = Execution("fp16")
    works = [Workload(b, 128, o, d) for b in (1, 16) for o in (1, 64) for d in (1.0, 0.5)]
    many = estimate_many([(h100, llama, exe, w) for w in works])
    assert many == [estimate(h100, llama, exe, w) for w in works]
    # names are loaded once; a point's own pricing wins over the call's
    by_name = estimate_many([("h100_sxm", "llama2-7b", exe, works[0], Pricing(0.5))], Pricing(0.1))
    assert by_name[0] == estimate(h100, llama, exe, works[0], Pricing(0.5))


def test_estimate_many_can_return_errors_in_place(h100, llama):
    big = (h100, load_arch("llama2-70b"), Execution("fp16"), Workload(1, 128, 2))
    fine = (h100, llama, Execution("fp16"), Workload(1, 128, 2))
    out = estimate_many([fine, big, fine], errors="return")
    assert isinstance(out[1], ConfigError) and "does not fit" in str(out[1])
    assert out[0] == out[2] == estimate(*fine)
    with pytest.raises(ConfigError, match="does not fit"):
        estimate_many([fine, big])


def _shipped_hardware():
    from radsim.spec.hardware import list_hardware

    root = Path(__file__).resolve().parents[2]
    return [*list_hardware(), *(str(p) for p in sorted(root.glob("measurements/*/calibrated.toml")))]


@pytest.mark.parametrize("hw_name", _shipped_hardware(), ids=lambda n: Path(n).stem if "/" in n else n)
@pytest.mark.parametrize(("depth", "engine"), [(1.0, "ideal"), (0.5, "ideal"), (1.0, "eager")])
def test_every_shipped_and_calibrated_device_equals_the_reference(hw_name, depth, engine):
    from radsim.spec.engine import load_engine

    hw = load_hardware(hw_name)
    dtype = "bf16" if hw.bf16_dense_flops else "fp32"
    arch, exe, profile = load_arch("smollm2-135m"), Execution(dtype), load_engine(engine)
    work = Workload(4, 200, 40, depth, 512, seed=3)
    ref = _outcome(_reference_estimate, hw, arch, exe, work, None, profile)
    new = _outcome(estimate, hw, arch, exe, work, None, profile)
    if isinstance(ref, str):
        assert new == ref
    else:
        assert_same_metrics(new, ref, rtol=1e-9)
