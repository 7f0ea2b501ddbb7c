"""What each section measures, in which order: coarse grid points first, refinements after.

Plans are pure functions of the sizes (`radsim.measure.campaign.config`) and the architecture
files, so a test can check the full GPU campaign's plan on a CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from radsim.measure.campaign.config import Sizes
from radsim.measure.harness import Config, grid
from radsim.measure.specs import SPECS, spec_arch
from radsim.spec.arch import load_arch


def bisection_levels(n: int) -> list[int]:
    """Level of each of n ordered grid points: both ends 0, the middle 1, the quarters 2, ..."""
    level = [-1] * n
    k = 0
    while -1 in level:
        parts = 2**k
        for j in range(parts + 1):
            i = round(j * (n - 1) / parts)
            if level[i] < 0:
                level[i] = k
        k += 1
    return level


def levels_of(values: Iterable[int]) -> dict[int, int]:
    """Coarse-to-fine level of each distinct value (see `bisection_levels`)."""
    ordered = sorted(set(values))
    return dict(zip(ordered, bisection_levels(len(ordered)), strict=True))


def grouped_levels(groups: Sequence[Sequence[int]]) -> dict[int, int]:
    """Levels of values in groups: every level of a group before the first of the next."""
    out: dict[int, int] = {}
    for group in groups:
        base = max(out.values(), default=-1) + 1
        for v, lv in levels_of(group).items():
            out.setdefault(v, base + lv)
    return out


@dataclass(frozen=True)
class GemmPoint:
    """One GEMM: `m` rows through the (n x k) weight of a model's layer."""

    model: str
    layer: str
    m: int
    n: int
    k: int
    dtype: str


def layer_shapes(arch_name: str) -> list[tuple[str, int, int]]:
    """(layer, n, k) of every projection of one decoder layer and the LM head, as the harness fuses them."""
    a = load_arch(arch_name)
    ffn = a.ffn_matrices - 1  # gate and up fused (SwiGLU), or up alone
    return [
        ("qkv", a.q_width + 2 * a.kv_width, a.hidden_size),
        ("o", a.hidden_size, a.q_width),
        ("gate_up", ffn * a.ffn_size, a.hidden_size),
        ("down", a.hidden_size, a.ffn_size),
        ("lm_head", a.vocab_size, a.hidden_size),
    ]


def gemm_plan(sizes: Sizes, dtypes: Sequence[str]) -> list[GemmPoint]:
    """Every GEMM of the sweep, coarse M levels of every shape and dtype first."""
    level = grouped_levels(sizes.gemm_m)
    keyed = []
    for (di, dtype), (ai, arch), m in itertools.product(
        enumerate(dtypes), enumerate(sizes.gemm_archs), level
    ):
        for li, (layer, n, k) in enumerate(layer_shapes(arch)):
            if (layer != "lm_head" or m <= sizes.lm_head_max_m) and (
                dtype != "fp8" or 2.0 * m * n * k <= sizes.fp8_max_flops
            ):
                keyed.append(((level[m], di, ai, li, m), GemmPoint(arch, layer, m, n, k, dtype)))
    return [p for _, p in sorted(keyed, key=lambda kp: kp[0])]


@dataclass(frozen=True)
class AttentionPoint:
    """One SDPA call: causal prefill of `tokens` per sequence, or one decode query against `tokens` keys."""

    model: str
    phase: str
    batch: int
    tokens: int
    heads: int
    kv_heads: int
    head_dim: int


def attention_plan(sizes: Sizes) -> list[AttentionPoint]:
    """Prefill and decode points of every architecture, corners of each grid first."""
    axes = {
        "prefill": (sizes.prefill_batches, sizes.prefill_seqs),
        "decode": (sizes.decode_batches, sizes.decode_contexts),
    }
    keyed = []
    for ai, arch in enumerate(sizes.attention_archs):
        a = load_arch(arch)
        for pi, (phase, (batches, lengths)) in enumerate(axes.items()):
            lb, lt = levels_of(batches), levels_of(lengths)
            for b, t in itertools.product(batches, lengths):
                if phase == "prefill" and b * t > sizes.max_prefill_tokens:
                    continue
                point = AttentionPoint(arch, phase, b, t, a.num_heads, a.num_kv_heads, a.head_dim)
                keyed.append(((max(lb[b], lt[t]), ai, pi, b, t), point))
    return [p for _, p in sorted(keyed, key=lambda kp: kp[0])]


def bandwidth_plan(sizes: Sizes) -> list[tuple[str, int]]:
    """(kernel, bytes per array): DRAM- and cache-sized buffers first, copy before triad."""
    level = levels_of(sizes.bandwidth_bytes)
    order = sorted(sizes.bandwidth_bytes, key=lambda b: (level[b], -b))
    return [(kernel, b) for b in order for kernel in ("copy", "triad")]


def config_bytes(cfg: Config, dtype_bytes: int) -> float:
    """Device memory one harness configuration needs, roughly: weights, KV caches, activations."""
    spec = SPECS[cfg.model]
    a = spec_arch(spec)
    slots = a.num_layers * (2 if spec.trace else 1)  # replayed routes may take a second pass
    length = cfg.tokens + (cfg.phase == "decode")
    kv = 2 * 1.2 * cfg.batch * length * a.kv_width * dtype_bytes * slots  # K and V, + fill and gather
    tokens = cfg.batch * (cfg.tokens if cfg.phase == "prefill" else 1)
    act = 3 * tokens * (2 * a.ffn_size + a.q_width + 2 * a.kv_width + 4 * a.hidden_size) * dtype_bytes
    return a.total_params * dtype_bytes + kv + act + 4.0 * cfg.batch * a.vocab_size


def measure_plan(sizes: Sizes, memory_bytes: float, dtype_bytes: int = 2) -> list[Config]:
    """Harness configurations, corners of every model's grid first; those over `memory_bytes` left out."""
    keyed = []
    for gi, plan in enumerate(sizes.grid):
        configs = grid(
            list(plan.models),
            ["prefill", "decode"],
            list(plan.decode_batches),
            list(plan.prompts),
            list(plan.contexts),
            list(plan.prefill_batches),
        )
        levels = {
            "prefill": (levels_of(plan.prefill_batches), levels_of(plan.prompts)),
            "decode": (levels_of(plan.decode_batches), levels_of(plan.contexts)),
        }
        for c in configs:
            if c.phase == "prefill" and c.batch * c.tokens > sizes.max_prefill_tokens:
                continue
            if config_bytes(c, dtype_bytes) > memory_bytes:
                continue
            lb, lt = levels[c.phase]
            key = (max(lb[c.batch], lt[c.tokens]), gi, plan.models.index(c.model), c.phase, c.batch, c.tokens)
            keyed.append((key, c))
    return [c for _, c in sorted(keyed, key=lambda kc: kc[0])]
