"""Static batch estimate: phases, dynamic depth, memory, determinism."""

from __future__ import annotations

import pytest

from radsim.cost.estimate import Workload, estimate
from radsim.cost.layer import Execution
from radsim.cost.memory import kv_entry_bytes, weights_bytes
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
