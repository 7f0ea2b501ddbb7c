"""Routed-batch cost model: time, FLOPs, bytes and energy of one decoder layer, per operator.

Pure functions of (hardware, architecture, execution settings, routed batch). A *routed batch* is a
set of sequences in one layer launch: how many new tokens each brings (`new_tokens`), how many KV
entries the layer already holds for it (`context_tokens`) and how many of the new tokens visit the
layer (`visiting_tokens`). Arrays may carry leading dimensions (e.g. layers, routing steps), so many
launches are costed in one numpy call; results have shape `(len(OPS), *leading)`.

Each operator is a roofline: max(FLOPs / achievable FLOP/s, bytes / achievable bytes/s) plus a launch
overhead, with GEMM rows and columns padded to the library's output tile. A layer's weights are read
once per launch whenever any token needs them, however many do. Attention's terms are linear in the
aggregated load (`LayerLoad`); their coefficients (`attention_coefficients`) also build the tabulated
model's closed form (`radsim.cost.table`). What a skipped token does to the
layer's KV cache (`kv_policy`) decides which rows each operator processes:

- ``none``: skipped tokens write no K/V; later tokens attend only to the tokens that visited.
- ``copy``: skipped tokens' K/V are projected from their current hidden state (CALM-style).
- ``compute``: attention runs for every token, only the MLP is skipped (DLO's default).

A Finedeep MLP (`Arch.finedeep`) is M sub-layers run one after another, each K small expert MLPs on
the same input, a sigmoid router (a rows x d x K GEMM and the normalised sigmoid) and the weighted
sum of the experts' outputs with the residual; sub-layers after the first normalise their input
first. Every expert GEMM (gate, up and down separately) is padded to the library tile on its own,
so small experts waste tensor-core work, and `Execution.expert_launch` says how the experts are
launched: ``grouped`` (the default: one batched GEMM per projection for all K experts of a
sub-layer, as `radsim/models/finedeep.py` runs them with `einsum`, and as a MoE runtime's
grouped-GEMM kernel would; the gates scale the activations and one down GEMM contracts over all
experts) or ``per_expert`` (gate, up, activation and down launched for each expert, as a module
list of expert MLPs runs them, then one kernel sums the gated outputs into the residual). Everything sits in the `mlp` operator, so the operator list is the same for
every MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dataclass_replace

import numpy as np

from radsim.cost.kernels import (
    ADDITIVE,
    Cost,
    KernelCost,
    allreduce,
    bandwidth_Bps,
    elementwise,
    gemm,
    idle,
    roofline,
    stack_ops,
    sum_kernels,
)
from radsim.cost.power import op_energy_J
from radsim.errors import ConfigError
from radsim.spec.arch import Arch
from radsim.spec.engine import ALLREDUCE_ALGORITHMS
from radsim.spec.hardware import Hardware
from radsim.spec.kv import KV_POLICIES

DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0}

EXPERT_LAUNCHES = ("per_expert", "grouped")

OPS = (
    "attn_norm",
    "qkv",
    "attention",
    "o_proj",
    "attn_allreduce",
    "mlp_norm",
    "mlp",
    "mlp_allreduce",
    "router",
    "gather_scatter",
)
# Per-element work of a normalisation (mean of squares, rsqrt, scale, weight) and of the
# activation (SiLU and the gating product), counted in vector-unit FLOPs.
NORM_FLOPS_PER_ELEMENT = 5.0
ACT_FLOPS_PER_ELEMENT = 5.0


@dataclass(frozen=True)
class Execution:
    """How the model runs: dtype of weights and KV cache, tensor parallelism, KV policy, routing."""

    dtype: str = "bf16"
    tp: int = 1
    kv_policy: str = "none"
    routed: bool = False  # a router runs after every visit and visitors are gathered/scattered
    expert_launch: str = "grouped"  # Finedeep experts: grouped per sub-layer, or one launch each
    allreduce: str = "custom"  # the engine's all-reduce (ALLREDUCE_ALGORITHMS), where tables measure both

    def __post_init__(self) -> None:
        if self.allreduce not in ALLREDUCE_ALGORITHMS:
            raise ConfigError(f"allreduce '{self.allreduce}'; allowed: {', '.join(ALLREDUCE_ALGORITHMS)}")
        if self.expert_launch not in EXPERT_LAUNCHES:
            raise ConfigError(f"expert_launch '{self.expert_launch}'; allowed: {', '.join(EXPERT_LAUNCHES)}")
        if self.dtype not in DTYPE_BYTES:
            raise ConfigError(f"dtype '{self.dtype}' not supported; allowed: {', '.join(DTYPE_BYTES)}")
        if self.kv_policy not in KV_POLICIES:
            raise ConfigError(f"kv_policy '{self.kv_policy}'; allowed: {', '.join(KV_POLICIES)}")
        if self.tp < 1:
            raise ConfigError(f"tp must be >= 1, got {self.tp}")

    @property
    def weight_bytes(self) -> float:
        """Bytes per weight element."""
        return DTYPE_BYTES[self.dtype]

    @property
    def act_bytes(self) -> float:
        """Bytes per activation element: fp32 stays fp32, everything else keeps 16-bit activations."""
        return 4.0 if self.dtype == "fp32" else 2.0

    @property
    def kv_bytes(self) -> float:
        """Bytes per KV-cache element (the KV cache is stored in the model dtype)."""
        return DTYPE_BYTES[self.dtype]

    def gemm_peak_flops(self, hw: Hardware) -> float:
        """Matrix peak used by the projections and the MLP."""
        return hw.peak_flops(self.dtype)

    def attention_peak_flops(self, hw: Hardware) -> float:
        """Matrix peak used by attention: fp8 KV is dequantised and attention runs in 16-bit."""
        return hw.peak_flops(
            "fp32" if self.dtype == "fp32" else ("bf16" if self.dtype == "fp8" else self.dtype)
        )


@dataclass(frozen=True)
class RoutedBatch:
    """Sequences in one layer launch; arrays broadcast to (*leading, sequences)."""

    new_tokens: np.ndarray
    context_tokens: np.ndarray
    visiting_tokens: np.ndarray

    @classmethod
    def of(cls, new_tokens, context_tokens, visiting_tokens=None) -> RoutedBatch:
        """Build from array-likes; `visiting_tokens` defaults to every new token visiting."""
        n = np.asarray(new_tokens, dtype=np.float64)
        c = np.asarray(context_tokens, dtype=np.float64)
        v = n if visiting_tokens is None else np.asarray(visiting_tokens, dtype=np.float64)
        n, c, v = np.broadcast_arrays(n, c, v)
        if (n < 0).any() or (c < 0).any() or (v < 0).any():
            raise ConfigError("routed batch: token counts must be >= 0")
        if (v > n).any():
            raise ConfigError("routed batch: visiting_tokens cannot exceed new_tokens")
        return cls(n, c, v)


@dataclass(frozen=True)
class LayerLoad:
    """What one layer launch must do, summed over its sequences; arrays of shape (*leading).

    `q_rows` tokens run attention queries and the output projection, `kv_rows` write K/V entries
    (visitors plus, under the copy and compute policies, skippers), `mlp_rows` run the MLP,
    `visitors` pay the router and the gather/scatter; `pairs` is the number of (query, key) pairs
    attended and `held` the KV entries read by the sequences that have queries.
    """

    q_rows: np.ndarray
    kv_rows: np.ndarray
    mlp_rows: np.ndarray
    visitors: np.ndarray
    pairs: np.ndarray
    held: np.ndarray

    @classmethod
    def from_batch(cls, batch: RoutedBatch, kv_policy: str) -> LayerLoad:
        """Aggregate a routed batch: the rows each operator processes under the KV policy."""
        n, v, c = batch.new_tokens, batch.visiting_tokens, batch.context_tokens
        q, kv = (v, v) if kv_policy == "none" else (v, n) if kv_policy == "copy" else (n, n)
        # causal pairs: each query sees the held context and, on average, half the new entries
        pairs = (q * c + q * (kv + 1.0) / 2.0).sum(axis=-1)
        held = np.where(q > 0, c + kv, 0.0).sum(axis=-1)
        return cls(q.sum(axis=-1), kv.sum(axis=-1), v.sum(axis=-1), v.sum(axis=-1), pairs, held)


def weights_resident(hw: Hardware, arch: Arch, exe: Execution) -> bool:
    """Whether the model's weights stay in the last-level cache between steps (calibrated devices only)."""
    if hw.cache_bandwidth_Bps is None:
        return False
    return arch.total_params * exe.weight_bytes / exe.tp <= hw.last_level_cache_bytes


@dataclass(frozen=True)
class AttentionCoefficients:
    """Attention's cost per unit of its load: every term of `attention` is linear in a `LayerLoad`.

    `attention` and the tabulated cost model (`radsim.cost.table`) both price attention from these,
    through `work` and `launches`, so the two cannot drift apart.
    """

    flops_per_pair: float  # QK^T and PV: 4 x head_dim per head and (query, key) pair
    s_per_pair: float  # compute seconds per pair: MMAs at peak x efficiency, plus the exponentials
    read_bytes_per_held: float  # KV-cache bytes read per entry held by a sequence with queries
    write_bytes_per_kv_row: float  # KV-cache bytes written per K/V row
    act_bytes_per_kv_row: float  # the new K/V from the projection output, read once and RoPE'd
    act_bytes_per_q_row: float  # Q read and O written
    resident: bool  # the weights stay in the last-level cache, so all traffic runs at its bandwidth
    bandwidth_Bps: float  # achievable bandwidth of the traffic (`radsim.cost.kernels.bandwidth_Bps`)
    launch_s: float  # fixed time of each launch
    peak_flops: float  # matrix peak attention runs at (prices its FLOPs' energy too)
    # measured decode attention (`radsim.spec.kernel_tables.DecodeAttentionFit`): the attention
    # kernel's fixed time, and seconds per KV entry read, in place of the launch overhead and of the
    # KV reads' bandwidth; None: the roofline's
    kernel_floor_s: float | None = None
    s_per_held: float | None = None

    def memory_time_s(self, load: LayerLoad) -> np.ndarray:
        """Time of the traffic, linear in the load: bytes over bandwidth, the KV reads at the measured
        time per entry where a table gives one."""
        work = self.work(load)
        moved = work["kv_read_bytes"] + work["kv_write_bytes"] + work["act_bytes"]
        if self.s_per_held is None:
            return moved / self.bandwidth_Bps
        return (moved - work["kv_read_bytes"]) / self.bandwidth_Bps + self.s_per_held * np.asarray(load.held)

    def launch_time_s(self, load: LayerLoad) -> np.ndarray:
        """Fixed time of the launches: RoPE with the KV write, and the attention kernel (measured)."""
        kernel = self.launch_s if self.kernel_floor_s is None else self.kernel_floor_s
        return (np.asarray(load.kv_rows) > 0) * self.launch_s + (np.asarray(load.q_rows) > 0) * kernel

    def work(self, load: LayerLoad) -> dict[str, np.ndarray]:
        """Compute time, FLOPs and bytes of a load, each linear in it (no constant term)."""
        return {
            "compute_time_s": self.s_per_pair * load.pairs,
            "flops": self.flops_per_pair * load.pairs,
            "kv_read_bytes": self.read_bytes_per_held * load.held,
            "kv_write_bytes": self.write_bytes_per_kv_row * load.kv_rows,
            "act_bytes": self.act_bytes_per_q_row * load.q_rows + self.act_bytes_per_kv_row * load.kv_rows,
        }

    def launches(self, load: LayerLoad) -> np.ndarray:
        """Two launches: RoPE fused with the KV-cache write (whenever entries are written), then the
        attention kernel (whenever a query visits), as in vLLM's and TensorRT-LLM's decoders."""
        return (load.kv_rows > 0) * 1.0 + (load.q_rows > 0) * 1.0


def attention_coefficients(hw: Hardware, arch: Arch, exe: Execution) -> AttentionCoefficients:
    """Coefficients of `attention` on this device, model and execution.

    FLOPs are 4 x head_dim per (head, pair) for QK^T and PV, at the attention efficiency (calibrated,
    else `gemm_efficiency`); the softmax's exponentials run on special-function units and do not
    overlap with the MMAs (FlashAttention-2 schedule), so their time adds.
    """
    heads = arch.num_heads / exe.tp
    entry = 2.0 * np.ceil(arch.num_kv_heads / exe.tp) * arch.head_dim * exe.kv_bytes
    peak = exe.attention_peak_flops(hw)
    flops_per_pair = 4.0 * heads * arch.head_dim
    efficiency = hw.attention_efficiency or hw.gemm_efficiency
    resident = weights_resident(hw, arch, exe)
    fit = None
    if hw.kernel_tables is not None and not resident:
        kv_heads = int(np.ceil(arch.num_kv_heads / exe.tp))
        kv_dtype = {"fp16": "bf16"}.get(exe.dtype, exe.dtype)
        fit = hw.kernel_tables.decode_attention_fit(
            arch.num_heads // exe.tp, kv_heads, arch.head_dim, kv_dtype
        )
    return AttentionCoefficients(
        flops_per_pair=flops_per_pair,
        s_per_pair=flops_per_pair / (peak * efficiency) + heads / hw.exp_ops_per_s,
        read_bytes_per_held=float(entry),
        write_bytes_per_kv_row=float(entry),
        act_bytes_per_kv_row=float(entry),
        act_bytes_per_q_row=2.0 * heads * arch.head_dim * exe.act_bytes,
        resident=resident,
        bandwidth_Bps=bandwidth_Bps(hw, resident),
        launch_s=hw.kernel_launch_overhead_s,
        peak_flops=peak,
        kernel_floor_s=None if fit is None else fit.floor_s,
        s_per_held=None if fit is None else fit.s_per_entry,
    )


def attention(hw: Hardware, arch: Arch, exe: Execution, load: LayerLoad) -> KernelCost:
    """Attention of the queries over the layer's KV cache, with RoPE and the KV write: a roofline
    of the terms of `attention_coefficients`."""
    coefficients = attention_coefficients(hw, arch, exe)
    work = coefficients.work(load)
    compute_time = work.pop("compute_time_s")
    launches = coefficients.launches(load)
    measured = None
    if coefficients.s_per_held is not None:  # a measured decode kernel: its own time and floor
        memory_time = coefficients.memory_time_s(load)
        measured = np.maximum(compute_time, memory_time) + coefficients.launch_time_s(load)
    cost = roofline(
        hw,
        compute_time,
        work["kv_read_bytes"] + work["kv_write_bytes"] + work["act_bytes"],
        launches > 0,
        launches,
        resident=coefficients.resident,
        launch_s=coefficients.launch_s,
        measured_s=measured,
        peak_flops=coefficients.peak_flops,
        **work,
    )
    if measured is None:
        return cost
    # boundedness as the measured kernel is priced: compute against its fitted memory time
    return dataclass_replace(cost, memory_time_s=np.where(launches > 0, memory_time, 0.0))


def layer_cost(hw: Hardware, arch: Arch, exe: Execution, batch: RoutedBatch) -> Cost:
    """Cost of one decoder layer launch for a routed batch, per operator in `OPS` order."""
    return load_cost(hw, arch, exe, LayerLoad.from_batch(batch, exe.kv_policy))


def load_cost(hw: Hardware, arch: Arch, exe: Execution, load: LayerLoad) -> Cost:
    """Cost of layer launches given their aggregated load, per operator in `OPS` order."""
    ops = [*row_ops(hw, arch, exe, load)]
    ops.insert(OPS.index("attention"), attention(hw, arch, exe, load))
    return stack_ops(OPS, ops)


def row_ops(hw: Hardware, arch: Arch, exe: Execution, load: LayerLoad) -> list[KernelCost]:
    """Every operator but attention, each a function of one row count (see `LayerLoad`)."""
    _check_tp(arch, exe)
    d, tp = arch.hidden_size, exe.tp
    ab, wb, dt = exe.act_bytes, exe.weight_bytes, exe.dtype
    peak = exe.gemm_peak_flops(hw)
    q_width, kv_width = arch.q_width // tp, int(np.ceil(arch.num_kv_heads / tp)) * arch.head_dim
    ffn = arch.ffn_size // tp
    up_width = ffn * (2 if arch.ffn_kind == "swiglu" else 1)
    skippers = load.kv_rows - load.q_rows
    res = weights_resident(hw, arch, exe)
    return [
        elementwise(hw, load.kv_rows, d, NORM_FLOPS_PER_ELEMENT, ab, reads=2.0, resident=res),
        # Q, K, V of the visitors in one launch; K, V of skippers (copy/compute) in another
        sum_kernels(
            [
                gemm(hw, peak, load.q_rows, q_width + 2 * kv_width, d, wb, ab, res, dtype=dt),
                gemm(hw, peak, skippers, 2 * kv_width, d, wb, ab, res, dtype=dt),
            ]
        ),
        gemm(hw, peak, load.q_rows, d, q_width, wb, ab, res, dtype=dt),
        allreduce(hw, load.q_rows, d, ab, tp, exe.allreduce),
        elementwise(hw, load.mlp_rows, d, NORM_FLOPS_PER_ELEMENT, ab, reads=2.0, resident=res),
        (
            _finedeep_mlp(hw, arch, exe, load.mlp_rows, res)
            if arch.finedeep
            else _mlp(hw, peak, load.mlp_rows, d, ffn, up_width, arch.ffn_kind, wb, ab, res, dt)
        ),
        allreduce(hw, load.mlp_rows, d, ab, tp, exe.allreduce),
        _router(hw, arch, exe, load.visitors),
        _gather_scatter(hw, arch, exe, load.visitors),
    ]


def _check_tp(arch: Arch, exe: Execution) -> None:
    if arch.num_heads % exe.tp or arch.ffn_size % exe.tp or arch.ffn_expert_size % exe.tp:
        raise ConfigError(
            f"tp={exe.tp} must divide num_heads ({arch.num_heads}), ffn_size ({arch.ffn_size}) and "
            f"ffn_expert_size ({arch.ffn_expert_size}) of {arch.name}"
        )


def _mlp(hw, peak, rows, d, ffn, up_width, ffn_kind, wb, ab, res=False, dt=None) -> KernelCost:
    """Up (and gate) projection, activation, down projection: three launches."""
    act_reads = 2.0 if ffn_kind == "swiglu" else 1.0
    parts = [
        gemm(hw, peak, rows, up_width, d, wb, ab, res, dtype=dt),
        elementwise(hw, rows, ffn, ACT_FLOPS_PER_ELEMENT, ab, reads=act_reads, resident=res),
        gemm(hw, peak, rows, d, ffn, wb, ab, res, dtype=dt),
    ]
    return sum_kernels(parts)


def _finedeep_mlp(hw: Hardware, arch: Arch, exe: Execution, rows, res: bool) -> KernelCost:
    """Finedeep's MLP: M sub-layers of K experts, each with its router and weighted combination.

    Each expert is split column-wise across the TP group like a dense MLP; the routers (d x K) read
    the normalised input and are replicated.
    """
    d, k, m = arch.hidden_size, arch.ffn_experts_per_sublayer, arch.ffn_sublayers
    e = arch.ffn_expert_size // exe.tp
    up = e * (2 if arch.ffn_kind == "swiglu" else 1)
    ab, wb, peak = exe.act_bytes, exe.weight_bytes, exe.gemm_peak_flops(hw)
    act_reads = 2.0 if arch.ffn_kind == "swiglu" else 1.0
    # gate and up are separate GEMMs of e columns each, as the experts' weights are stored
    # (radsim/models/finedeep.py): each is padded to the tile on its own
    ups = [gemm(hw, peak, rows, e, d, wb, ab, res, dtype=exe.dtype)] * (up // e)
    act = elementwise(hw, rows, e, ACT_FLOPS_PER_ELEMENT, ab, reads=act_reads, resident=res)
    if exe.expert_launch == "per_expert":
        down = gemm(hw, peak, rows, d, e, wb, ab, res, dtype=exe.dtype)
        experts = [*ups, act, down] * k
        # out = x + sum_k g_k y_k: reads the K outputs and the residual, writes one tensor
        combine = elementwise(hw, rows, d, 2.0 * k + 1.0, ab, reads=k + 1.0, resident=res)
    else:
        # one batched launch per projection over the K experts, each padded to the tile on its own;
        # the gates scale the activations and the down projection contracts over (expert, unit)
        # at once (einsum "btke,ked->btd"), so only the residual add is left
        gated = elementwise(hw, rows, e, ACT_FLOPS_PER_ELEMENT + 1.0, ab, reads=act_reads, resident=res)
        down = gemm(hw, peak, rows, d, k * e, wb, ab, res, dtype=exe.dtype)
        experts = [*(_grouped(hw, kernel, k) for kernel in (*ups, gated)), down]
        combine = elementwise(hw, rows, d, 1.0, ab, reads=2.0, resident=res)
    router = gemm(hw, peak, rows, k, d, wb, ab, res, dtype=exe.dtype)
    gate = elementwise(hw, rows, k, ACT_FLOPS_PER_ELEMENT, ab, reads=1.0, resident=res)
    sublayer = sum_kernels([*experts, router, gate, combine])
    norm = elementwise(hw, rows, d, NORM_FLOPS_PER_ELEMENT, ab, reads=2.0, resident=res)
    return sum_kernels([sublayer] * m + [norm] * (m - 1))


def _grouped(hw: Hardware, kernel: KernelCost, k: int) -> KernelCost:
    """K copies of one kernel run as one grouped launch: K times the work, one launch overhead."""
    fields = {f: getattr(kernel, f) * k for f in ADDITIVE}
    runs = kernel.launches > 0
    busy = np.maximum(np.maximum(fields["compute_time_s"], fields["memory_time_s"]), fields["link_time_s"])
    fields["launches"] = kernel.launches
    fields["time_s"] = np.where(runs, busy + kernel.launches * hw.kernel_launch_overhead_s, 0.0)
    moved = sum(fields[f] for f in ("weight_bytes", "kv_read_bytes", "kv_write_bytes", "act_bytes"))
    fields["energy_J"] = op_energy_J(hw, fields["time_s"], fields["flops"], kernel.peak_flops, moved)
    return KernelCost(**fields, peak_flops=kernel.peak_flops)


def _router(hw: Hardware, arch: Arch, exe: Execution, visitors) -> KernelCost:
    """Router after a visit: a (d x layers+1) GEMM on the visitors plus a softmax/argmax kernel."""
    if not exe.routed:
        return idle(visitors)
    choices = arch.num_layers + 1
    peak = exe.gemm_peak_flops(hw) if exe.dtype != "fp8" else exe.attention_peak_flops(hw)
    res, launch = weights_resident(hw, arch, exe), hw.routing_launch_overhead_s
    act_dtype = "fp32" if exe.dtype == "fp32" else "bf16"  # the router runs on 16-bit activations
    logits = gemm(
        hw,
        peak,
        visitors,
        choices,
        arch.hidden_size,
        exe.act_bytes,
        exe.act_bytes,
        res,
        launch,
        dtype=act_dtype,
    )
    pick = elementwise(
        hw, visitors, choices, NORM_FLOPS_PER_ELEMENT, 4.0, reads=1.0, resident=res, launch_s=launch
    )
    return sum_kernels([logits, pick])


def _gather_scatter(hw: Hardware, arch: Arch, exe: Execution, visitors) -> KernelCost:
    """Gather visitors' hidden states into a dense block and scatter results back: two launches."""
    if not exe.routed:
        return idle(visitors)
    res, launch = weights_resident(hw, arch, exe), hw.routing_launch_overhead_s
    copy = elementwise(
        hw, visitors, arch.hidden_size, 0.0, exe.act_bytes, reads=1.0, resident=res, launch_s=launch
    )
    return sum_kernels([copy, copy])
