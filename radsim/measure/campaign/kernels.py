"""The kernel sweeps: stream bandwidth, launch overhead (eager and CUDA graph), GEMMs and attention.

Each sweep point is one `Item` timed by `time_calls`; its rows go to the section's CSV
(`bandwidth.csv`, `gemm.csv`, `attention.csv`) or, for launch, to `environment.json`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from radsim.measure.campaign.config import ATTENTION_COLUMNS, BANDWIDTH_COLUMNS, GEMM_COLUMNS
from radsim.measure.campaign.env import fp8_unavailable
from radsim.measure.campaign.pace import (
    Context,
    Item,
    Pace,
    SectionResult,
    Sink,
    run_items,
    sweep_estimate,
    time_calls,
)
from radsim.measure.campaign.plan import AttentionPoint, GemmPoint, attention_plan, bandwidth_plan, gemm_plan
from radsim.measure.harness import _stats


def bandwidth_section(ctx: Context, pace: Pace) -> SectionResult:
    """Copy and triad bandwidth over buffers from cache-sized to DRAM-sized."""
    res = SectionResult()
    dev, dt = ctx.dev.torch_device, torch.bfloat16

    def run(kernel: str, nbytes: int) -> list[dict[str, Any]]:
        n = nbytes // 2
        a, b = torch.ones(n, device=dev, dtype=dt), torch.ones(n, device=dev, dtype=dt)
        if kernel == "copy":
            fn, moved = (lambda: a.copy_(b)), 2 * n * 2
        else:
            c = torch.ones(n, device=dev, dtype=dt)
            fn, moved = (lambda: torch.add(b, c, alpha=0.5, out=a)), 3 * n * 2
        t = time_calls(ctx, fn)
        return [
            dict(
                kernel=kernel,
                array_bytes=2 * n,
                bytes=moved,
                dtype="bf16",
                **t,
                bandwidth_Bps=moved / t["time_s"],
            )
        ]

    items = [
        Item(
            f"bandwidth/{kernel}/{nbytes}",
            sweep_estimate(ctx, 0.0, (2 if kernel == "copy" else 3) * nbytes, 3 * nbytes / 50),
            functools.partial(run, kernel, nbytes),
        )
        for kernel, nbytes in bandwidth_plan(ctx.sizes)
    ]
    run_items(ctx, items, pace, ctx.csv_sink("bandwidth.csv", BANDWIDTH_COLUMNS), res)
    return res


def launch_section(ctx: Context, pace: Pace) -> SectionResult:
    """Seconds per tiny kernel: launched eagerly (host wall time to completion) and from a CUDA graph."""
    res, n = SectionResult(), ctx.sizes.launch_kernels
    x = torch.zeros(1, device=ctx.dev.torch_device)
    sync = ctx.dev.synchronize

    def kernels() -> None:
        for _ in range(n):
            x.add_(1.0)

    def wall(fn: Callable[[], Any], per: int) -> dict[str, float]:
        fn()
        sync()
        samples = []
        for _ in range(max(ctx.sizes.repeats, 5)):
            t0 = time.perf_counter()
            fn()
            sync()
            samples.append((time.perf_counter() - t0) / per)
        return _stats(samples)

    def eager() -> list[dict[str, Any]]:
        t = wall(kernels, n)
        return [
            dict(
                kernels=n,
                eager_launch_s=t["time_s"],
                eager_launch_s_p10=t["time_s_p10"],
                eager_launch_s_p90=t["time_s_p90"],
                synchronize_s=wall(lambda: None, 1)["time_s"],
            )
        ]

    def graph() -> list[dict[str, Any]]:
        many, one = ctx.dev.graph(kernels), ctx.dev.graph(lambda: x.add_(1.0))
        t = wall(many, n)
        return [
            dict(
                graph="measured",
                graph_launch_s=t["time_s"],
                graph_launch_s_p10=t["time_s_p10"],
                graph_launch_s_p90=t["time_s_p90"],
                graph_replay_s=wall(one, 1)["time_s"],
            )
        ]

    est = ctx.rates.item_s + 30 * n * ctx.rates.launch_s
    items = [Item("launch/eager", est, eager)]
    doc: dict[str, Any] = {}
    if ctx.dev.kind == "cuda":
        items.append(Item("launch/graph", est, graph))
    else:
        doc["graph"] = "unavailable: CUDA graphs need a CUDA device"
        res.notes.append("graph launch unavailable: CUDA graphs need a CUDA device")

    def write(rows: list[dict[str, Any]]) -> None:
        ctx.set_environment("launch", {k: v for r in [doc, *rows] for k, v in r.items()})

    run_items(ctx, items, pace, Sink(write), res)
    return res


def gemm_section(ctx: Context, pace: Pace) -> SectionResult:
    """bf16 and fp8 GEMMs over M and every model-layer shape."""
    res = SectionResult()
    dev = ctx.dev.torch_device
    why = fp8_unavailable(dev)
    if why:
        res.notes.append(f"fp8 skipped: {why}")
    weights: dict[tuple[int, int, str], torch.Tensor] = {}
    one = torch.ones((), device=dev)

    def weight(n: int, k: int, dtype: str) -> torch.Tensor:
        if (n, k, dtype) not in weights:
            weights.clear()  # one at a time: consecutive points share their shape
            w = torch.randn(n, k, device=dev)
            weights[(n, k, dtype)] = w.to(torch.float8_e4m3fn if dtype == "fp8" else torch.bfloat16)
        return weights[(n, k, dtype)]

    def run(p: GemmPoint) -> list[dict[str, Any]]:
        w = weight(p.n, p.k, p.dtype)
        if p.dtype == "fp8":
            x8, w8 = torch.randn(p.m, p.k, device=dev).to(torch.float8_e4m3fn), w.t()
            fn = lambda: torch._scaled_mm(x8, w8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
        else:
            x = torch.randn(p.m, p.k, device=dev).to(torch.bfloat16)
            fn = lambda: F.linear(x, w)  # noqa: E731
        with torch.inference_mode():
            t = time_calls(ctx, fn)
        flops, moved = 2.0 * p.m * p.n * p.k, _gemm_bytes(p)
        return [
            dict(
                asdict(p),
                **t,
                flops=flops,
                flops_per_s=flops / t["time_s"],
                bytes=moved,
                bandwidth_Bps=moved / t["time_s"],
            )
        ]

    items = [
        Item(
            f"gemm/{p.dtype}/{p.model}/{p.layer}/m{p.m}",
            sweep_estimate(ctx, 2.0 * p.m * p.n * p.k, _gemm_bytes(p), 4.0 * p.m * p.k),
            functools.partial(run, p),
        )
        for p in gemm_plan(ctx.sizes, ["bf16"] if why else ["bf16", "fp8"])
    ]
    run_items(ctx, items, pace, ctx.csv_sink("gemm.csv", GEMM_COLUMNS), res)
    return res


def _gemm_bytes(p: GemmPoint) -> float:
    size = 1 if p.dtype == "fp8" else 2
    return float((p.m * p.k + p.n * p.k) * size + p.m * p.n * 2)


def attention_section(ctx: Context, pace: Pace) -> SectionResult:
    """Causal prefill and decode SDPA in bf16 at model head shapes."""
    res = SectionResult()
    dev = ctx.dev.torch_device
    items = [
        Item(
            f"attention/{p.model}/{p.phase}/b{p.batch}/t{p.tokens}",
            sweep_estimate(ctx, *_attention_work(p), _attention_work(p)[1] * 2),
            functools.partial(_attention_run, ctx, dev, p),
        )
        for p in attention_plan(ctx.sizes)
    ]
    run_items(ctx, items, pace, ctx.csv_sink("attention.csv", ATTENTION_COLUMNS), res)
    return res


def _attention_work(p: AttentionPoint) -> tuple[float, float]:
    """FLOPs (QK and PV; causal half in prefill) and bytes (q, k, v, out in bf16) of one call."""
    q_tokens = p.tokens if p.phase == "prefill" else 1
    pairs = p.tokens * (p.tokens + 1) / 2 if p.phase == "prefill" else p.tokens
    flops = 4.0 * p.batch * p.heads * p.head_dim * pairs
    moved = 2.0 * p.batch * p.head_dim * (2 * p.heads * q_tokens + 2 * p.kv_heads * p.tokens)
    return flops, moved


def _attention_run(ctx: Context, dev: torch.device, p: AttentionPoint) -> list[dict[str, Any]]:
    q_tokens = p.tokens if p.phase == "prefill" else 1
    q = torch.randn(p.batch, p.heads, q_tokens, p.head_dim, device=dev).to(torch.bfloat16)
    k, v = (
        torch.randn(p.batch, p.kv_heads, p.tokens, p.head_dim, device=dev).to(torch.bfloat16) for _ in "kv"
    )
    causal = p.phase == "prefill"
    with torch.inference_mode():
        t = time_calls(
            ctx, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        )
    flops, moved = _attention_work(p)
    row = dict(
        model=p.model,
        phase=p.phase,
        batch=p.batch,
        query_tokens=q_tokens,
        context_tokens=p.tokens,
        heads=p.heads,
        kv_heads=p.kv_heads,
        head_dim=p.head_dim,
        dtype="bf16",
        causal=causal,
    )
    return [
        dict(
            row,
            **t,
            flops=flops,
            flops_per_s=flops / t["time_s"],
            bytes=moved,
            bandwidth_Bps=moved / t["time_s"],
        )
    ]
