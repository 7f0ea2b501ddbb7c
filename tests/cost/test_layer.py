"""Cost model: hand-counted FLOPs and bytes, roofline regimes, weight reads, monotonicity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radsim.cost.iteration import iteration_cost
from radsim.cost.layer import KV_POLICIES, OPS, Execution, RoutedBatch, layer_cost
from radsim.errors import ConfigError
from radsim.spec.arch import load_arch
from radsim.spec.hardware import load_hardware

FP16 = Execution(dtype="fp16")


def _hand_batch() -> RoutedBatch:
    # Sequence 0 prefills 3 tokens from scratch; sequence 1 decodes 1 token after 5 held entries.
    return RoutedBatch.of([3, 1], [0, 5])


def test_hand_counted_flops(toy_gpu, tiny_arch):
    cost = layer_cost(toy_gpu, tiny_arch, FP16, _hand_batch())
    flops = dict(zip(OPS, cost.flops, strict=True))
    assert flops["qkv"] == 2 * 4 * (64 + 2 * 32) * 64  # 4 rows x (Q 64 + K,V 2x32) x d 64
    # causal pairs: seq0 3*(3+1)/2 = 6, seq1 5 + 1 = 6; 4 flops per head_dim per head per pair
    assert flops["attention"] == 4 * 4 * 16 * 12
    assert flops["o_proj"] == 2 * 4 * 64 * 64
    assert flops["mlp"] == 2 * 4 * 256 * 64 + 2 * 4 * 64 * 128 + 5 * 4 * 128
    assert flops["attn_norm"] == flops["mlp_norm"] == 5 * 4 * 64
    assert flops["router"] == flops["gather_scatter"] == flops["attn_allreduce"] == 0


def test_hand_counted_bytes(toy_gpu, tiny_arch):
    cost = layer_cost(toy_gpu, tiny_arch, FP16, _hand_batch())
    weight = dict(zip(OPS, cost.weight_bytes, strict=True))
    assert weight["qkv"] == 64 * 128 * 2
    assert weight["o_proj"] == 64 * 64 * 2
    assert weight["mlp"] == (64 * 256 + 128 * 64) * 2
    attn = OPS.index("attention")
    entry = 2 * 2 * 16 * 2  # K and V, 2 heads of 16, fp16
    assert cost.kv_read_bytes[attn] == (3 + 6) * entry  # seq0 reads its 3 new, seq1 5 held + 1 new
    assert cost.kv_write_bytes[attn] == 4 * entry
    assert cost.kv_read_bytes.sum() == cost.kv_read_bytes[attn]
    # qkv activations: input read once (4 x 64) and outputs written (4 x 128), fp16
    assert cost.act_bytes[OPS.index("qkv")] == (4 * 64 + 4 * 128) * 2


def test_hand_computed_time_and_energy(toy_gpu, tiny_arch):
    cost = layer_cost(toy_gpu, tiny_arch, FP16, _hand_batch())
    o = OPS.index("o_proj")
    # memory: (8192 weight + 4*(64+64)*2 act) bytes at 1e12 B/s x 0.5; compute 2*16*64*64 padded
    memory_s = (8192 + 1024) / 0.5e12
    compute_s = 2 * 16 * 64 * 64 / 50e12
    assert cost.memory_time_s[o] == pytest.approx(memory_s)
    assert cost.compute_time_s[o] == pytest.approx(compute_s)
    assert cost.time_s[o] == pytest.approx(memory_s + 1e-6)
    energy = 100 * cost.time_s[o] + 400 * (2 * 4 * 64 * 64) / 50e12 + 1e-10 * (8192 + 1024)
    assert cost.energy_J[o] == pytest.approx(energy)


def test_decode_memory_bound_and_prefill_compute_bound_on_h100():
    hw, arch = load_hardware("h100_sxm"), load_arch("llama2-7b")
    layers = arch.num_layers
    decode = iteration_cost(hw, arch, FP16, np.ones(1), np.full((layers, 1), 512.0), np.ones((layers, 1)), 1)
    gemms = [OPS.index(name) for name in ("qkv", "o_proj", "mlp")]
    assert (decode.layers.memory_time_s[gemms] > decode.layers.compute_time_s[gemms]).all()
    assert decode.compute_bound_fraction == 0.0
    prompt = np.full(4, 2048.0)
    prefill = iteration_cost(hw, arch, FP16, prompt, np.zeros((layers, 4)), np.tile(prompt, (layers, 1)), 4)
    assert (prefill.layers.compute_time_s[gemms] > prefill.layers.memory_time_s[gemms]).all()
    assert prefill.compute_bound_fraction > 0.9


@pytest.mark.parametrize("visitors", [1, 7, 64, 512])
def test_weights_read_once_per_launch(visitors):
    hw, arch = load_hardware("h100_sxm"), load_arch("llama2-7b")
    batch = RoutedBatch.of(np.full(512, 1.0), np.full(512, 100.0), (np.arange(512) < visitors) * 1.0)
    cost = layer_cost(hw, arch, Execution("fp16", routed=True), batch)
    router = arch.hidden_size * (arch.num_layers + 1)  # the router's own (d x layers+1) weights
    assert cost.weight_bytes.sum() == (arch.attn_params + arch.mlp_params + router) * 2


def test_layer_nobody_visits_costs_nothing(toy_gpu, tiny_arch):
    batch = RoutedBatch.of([4, 1], [10, 10], [0, 0])
    cost = layer_cost(toy_gpu, tiny_arch, Execution("fp16", kv_policy="none", routed=True), batch)
    assert cost.time_s.sum() == 0 and cost.weight_bytes.sum() == 0 and cost.energy_J.sum() == 0


def test_kv_policies_order_the_work(toy_gpu, tiny_arch):
    batch = RoutedBatch.of([8, 8], [32, 32], [2, 0])
    times = {
        p: layer_cost(toy_gpu, tiny_arch, Execution("fp16", kv_policy=p, routed=True), batch)
        for p in KV_POLICIES
    }
    kv_written = {p: c.kv_write_bytes.sum() for p, c in times.items()}
    assert kv_written["none"] < kv_written["copy"] == kv_written["compute"]
    attn = {p: c.op("attention", "flops") for p, c in times.items()}
    assert attn["none"] < attn["compute"] and attn["copy"] < attn["compute"]
    assert times["none"].op("mlp", "flops") == times["compute"].op("mlp", "flops")


def test_tensor_parallel_adds_two_allreduces_and_splits_weights():
    hw, arch = load_hardware("h100_sxm"), load_arch("llama2-7b")
    batch = RoutedBatch.of(np.ones(8), np.full(8, 256.0))
    one = layer_cost(hw, arch, Execution("fp16", tp=1), batch)
    two = layer_cost(hw, arch, Execution("fp16", tp=2), batch)
    assert one.link_bytes.sum() == 0
    message = 8 * arch.hidden_size * 2
    assert two.op("attn_allreduce", "link_bytes") == pytest.approx(message)  # 2(n-1)/n = 1 at n=2
    assert two.op("mlp_allreduce", "link_bytes") == pytest.approx(message)
    assert two.weight_bytes.sum() == pytest.approx(one.weight_bytes.sum() / 2)
    with pytest.raises(ConfigError, match="tp=3"):
        layer_cost(hw, arch, Execution("fp16", tp=3), batch)


def test_leading_axes_vectorise(toy_gpu, tiny_arch):
    new = np.array([5.0, 1.0, 1.0])
    context = np.array([[0.0, 10, 20], [0, 4, 8]])
    visits = np.array([[5.0, 1, 0], [2, 0, 1]])
    together = layer_cost(toy_gpu, tiny_arch, FP16, RoutedBatch.of(new, context, visits))
    for i in range(2):
        alone = layer_cost(toy_gpu, tiny_arch, FP16, RoutedBatch.of(new, context[i], visits[i]))
        np.testing.assert_allclose(together.time_s[:, i], alone.time_s)


def test_rejects_bad_batches():
    with pytest.raises(ConfigError, match="visiting_tokens"):
        RoutedBatch.of([1], [0], [2])
    with pytest.raises(ConfigError, match=">= 0"):
        RoutedBatch.of([-1], [0])
    with pytest.raises(ConfigError, match="allowed"):
        Execution(dtype="int4")


_seqs = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 3000), st.floats(0, 1)), min_size=1, max_size=6
)


@settings(max_examples=150, deadline=None)
@given(
    seqs=_seqs,
    grow=st.sampled_from(["new", "visit", "context", "append"]),
    index=st.integers(0, 5),
    amount=st.integers(1, 200),
    policy=st.sampled_from(KV_POLICIES),
    routed=st.booleans(),
    hw_name=st.sampled_from(["h100_sxm", "a100_sxm_80gb", "epyc_9655"]),
)
def test_time_never_decreases_when_tokens_are_added(seqs, grow, index, amount, policy, routed, hw_name):
    hw, arch = load_hardware(hw_name), load_arch("llama3.1-8b")
    exe = Execution("bf16", kv_policy=policy, routed=routed)
    new = np.array([s[0] for s in seqs], dtype=float)
    ctx = np.array([s[1] for s in seqs], dtype=float)
    vis = np.floor(new * np.array([s[2] for s in seqs]))
    before = layer_cost(hw, arch, exe, RoutedBatch.of(new, ctx, vis)).time_s.sum()
    i = index % len(seqs)
    if grow == "new":
        new[i] += amount
    elif grow == "visit":
        new[i] += amount
        vis[i] += amount
    elif grow == "context":
        ctx[i] += amount
    else:
        new, ctx, vis = np.append(new, amount), np.append(ctx, 0), np.append(vis, amount)
    after = layer_cost(hw, arch, exe, RoutedBatch.of(new, ctx, vis)).time_s.sum()
    assert after >= before


@pytest.mark.parametrize(("hw_name", "tp", "steps"), [("h100_sxm", 8, 2), ("l40s", 4, 6)])
def test_allreduce_two_shot_on_scale_up_ring_over_pcie(hw_name, tp, steps):
    from dataclasses import replace

    # the roofline of an all-reduce (a device without measured tables)
    hw, arch = replace(load_hardware(hw_name), kernel_tables=None), load_arch("llama3.1-8b")
    cost = layer_cost(hw, arch, Execution("bf16", tp=tp), RoutedBatch.of(np.ones(16), np.full(16, 64.0)))
    message = 16 * arch.hidden_size * 2
    link_s = 2 * (tp - 1) / tp * message / hw.collective_bandwidth_Bps + steps * hw.link_latency_s
    assert cost.op("mlp_allreduce", "link_time_s") == pytest.approx(link_s)
    assert cost.op("mlp_allreduce", "compute_time_s") == 0
    assert cost.op("mlp_allreduce") == pytest.approx(
        max(link_s, cost.op("mlp_allreduce", "memory_time_s")) + hw.kernel_launch_overhead_s
    )


def _finedeep(arch, m=2, k=2):
    from dataclasses import replace

    return replace(arch, name="tiny-finedeep", ffn_sublayers=m, ffn_experts_per_sublayer=k, ffn_expert_size=0)


@pytest.mark.parametrize("launch", ["per_expert", "grouped"])
def test_finedeep_mlp_hand_counted(toy_gpu, tiny_arch, launch):
    # 2 sub-layers of 2 SwiGLU experts of 32 (= 128 / 4) on d = 64; 4 rows (the hand batch)
    arch = _finedeep(tiny_arch)
    assert arch.ffn_expert_size == 32
    cost = layer_cost(toy_gpu, arch, Execution("fp16", expert_launch=launch), _hand_batch())
    rows, d, e, k, m = 4, 64, 32, 2, 2
    grouped = launch == "grouped"  # the gates scale the activations; one down GEMM sums the experts
    act = (6 if grouped else 5) * rows * e  # SiLU x up (x gate)
    expert = 2 * (2 * rows * e * d) + act + 2 * rows * d * e  # gate, up, activation, down
    router = 2 * rows * k * d + 5 * rows * k  # (d x K) logits, sigmoid
    combine = (1 if grouped else 2 * k + 1) * rows * d  # x + delta, or x + sum_k g_k y_k
    norm = 5 * rows * d
    assert cost.op("mlp", "flops") == m * (k * expert + router + combine) + (m - 1) * norm
    assert cost.op("mlp", "weight_bytes") == m * (k * (2 * e * d + d * e) + d * k) * 2
    # per sub-layer: 4 expert kernels (K times, or once grouped), router, sigmoid, combination
    launches = m * (4 * k + 3) + (m - 1) if launch == "per_expert" else m * 7 + (m - 1)
    assert cost.op("mlp", "launches") == launches
    # every other operator is the dense layer's
    dense = layer_cost(toy_gpu, tiny_arch, FP16, _hand_batch())
    others = [i for i, name in enumerate(OPS) if name != "mlp"]
    np.testing.assert_array_equal(cost.time_s[others], dense.time_s[others])


def test_finedeep_grouped_launch_is_per_expert_less_the_launches(toy_gpu, tiny_arch):
    arch = _finedeep(tiny_arch)
    batch = RoutedBatch.of([1.0] * 8, [100.0] * 8)
    one = layer_cost(toy_gpu, arch, Execution("fp16", expert_launch="per_expert"), batch)
    grouped = layer_cost(toy_gpu, arch, Execution("fp16"), batch)  # grouped is the default
    saved = one.op("mlp", "launches") - grouped.op("mlp", "launches")
    assert saved == 2 * 4 * (2 - 1)  # per sub-layer, K - 1 fewer launches of each expert kernel
    gemms = 2 * 8 * (2 * 2 * 32 * 64 + 64 * 32)  # 8 rows; per sub-layer K x (gate, up, down)
    assert one.op("mlp", "flops") - gemms > grouped.op("mlp", "flops") - gemms > 0
    assert one.op("mlp", "act_bytes") > grouped.op("mlp", "act_bytes")  # K outputs not summed apart
    assert one.op("mlp", "time_s") - grouped.op("mlp", "time_s") > saved * 1e-6
    with pytest.raises(ConfigError, match="expert_launch 'fused'; allowed: per_expert, grouped"):
        Execution("fp16", expert_launch="fused")


@pytest.mark.parametrize("rows", [1, 16, 256, 4096])
def test_small_experts_cost_more_than_one_dense_mlp_of_equal_flops(rows):
    hw = load_hardware("h100_sxm")
    dense, finedeep = load_arch("llama3.1-8b"), load_arch("llama3.1-8b-finedeep")
    batch = RoutedBatch.of([float(rows)], [512.0])
    costs = {
        name: layer_cost(hw, arch, Execution("bf16", expert_launch=launch), batch)
        for name, arch, launch in [
            ("dense", dense, "per_expert"),
            ("per_expert", finedeep, "per_expert"),
            ("grouped", finedeep, "grouped"),
        ]
    }
    mlp = {name: c.op("mlp") for name, c in costs.items()}
    flops = {name: c.op("mlp", "flops") for name, c in costs.items()}
    launches = {name: c.op("mlp", "launches") for name, c in costs.items()}
    assert flops["per_expert"] == pytest.approx(flops["dense"], rel=0.01)  # routers: < 1%
    assert costs["per_expert"].op("mlp", "weight_bytes") == pytest.approx(
        costs["dense"].op("mlp", "weight_bytes"), rel=0.001
    )
    assert launches["dense"] == 3 < launches["grouped"] == 15 < launches["per_expert"] == 39
    assert mlp["dense"] < mlp["grouped"] < mlp["per_expert"]


def test_small_experts_waste_the_gemm_tile_in_prefill():
    # finedeep-scratch: experts of 64 units; each gate and up GEMM of 64 columns is padded to 128
    from dataclasses import replace

    hw = load_hardware("h100_sxm")
    finedeep = load_arch("finedeep-scratch")
    dense = replace(finedeep, ffn_sublayers=1, ffn_experts_per_sublayer=1, ffn_expert_size=0)
    batch = RoutedBatch.of([4096.0], [0.0])
    f = layer_cost(hw, finedeep, Execution("bf16"), batch)
    g = layer_cost(hw, dense, Execution("bf16"), batch)
    # padded FLOPs: 8 x (2 x 128 x 192 + 256 x 64) against 1024 x 192 + 256 x 512 (1.6x)
    assert f.op("mlp", "compute_time_s") > 1.5 * g.op("mlp", "compute_time_s")


def test_dense_arch_with_explicit_single_expert_prices_as_before(toy_gpu, tiny_arch):
    from dataclasses import replace

    explicit = replace(tiny_arch, ffn_sublayers=1, ffn_experts_per_sublayer=1, ffn_expert_size=128)
    for launch in ("per_expert", "grouped"):
        a = layer_cost(toy_gpu, explicit, Execution("fp16", expert_launch=launch), _hand_batch())
        b = layer_cost(toy_gpu, tiny_arch, FP16, _hand_batch())
        np.testing.assert_array_equal(a.time_s, b.time_s)
        np.testing.assert_array_equal(a.energy_J, b.energy_J)
