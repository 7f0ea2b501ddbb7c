"""Timing harness: one prefill or decode step of a sequential or radial model, layer by layer.

The model is built with random weights from `radsim.models.llama` (timing does not depend on them)
and run the way a serving engine runs it: fused QKV and gate/up projections, a KV cache per
(pass, layer) slot, visitors of a slot gathered into one dense block and scattered back, the router
after every visit, logits only for each sequence's last token. Routes are replayed
(`radsim.routes.replay`), so every step does exactly the work its routes ask for. Each configuration is
warmed up, then timed `repeats` times with a mark after the embedding, after every slot and after
the head; the table keeps the median and the spread of each interval, plus the peak memory of one
further run. Writing needs the standard library only: this module and `radsim.measure.timing` import with
torch and numpy alone, so a bare GPU machine can run `radsim measure`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radsim.errors import ConfigError
from radsim.measure.specs import SPECS, ModelSpec, spec_arch, step_routes
from radsim.measure.timing import get_device
from radsim.routes.replay import SlotBatch, StepRoutes, slot_batches

COLUMNS = (
    "config_id",
    "model",
    "kind",
    "arch",
    "phase",
    "batch",
    "tokens",
    "dtype",
    "scope",
    "slot",
    "layer",
    "pass",
    "kv_policy",
    "new_tokens",
    "context_tokens",
    "visiting_tokens",
    "time_s",
    "time_s_p10",
    "time_s_p90",
    "repeats",
    "peak_memory_bytes",
    "weights_bytes",
    "kv_cache_bytes",
    "activation_bytes",
    "energy_J",
)


@dataclass
class LayerWeights:
    """One decoder layer's weights, fused as serving engines fuse them."""

    ln1: torch.Tensor
    wqkv: torch.Tensor  # (q + 2 kv widths, d)
    wkv: torch.Tensor  # view of the K/V rows: the skippers' projection under `copy`
    wo: torch.Tensor
    ln2: torch.Tensor
    wgu: torch.Tensor  # (2 ffn, d): gate and up
    wd: torch.Tensor


@dataclass
class Weights:
    """A model's weights plus rotary tables and the router's."""

    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    router: tuple[torch.Tensor, ...] | None  # norm weight, step embedding, proj weight, proj bias

    def nbytes(self) -> float:
        """Bytes of every distinct weight storage."""
        tensors = [self.embed, self.norm, *(t for lw in self.layers for t in vars(lw).values())]
        tensors += list(self.router or ())
        seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return float(sum(seen.values()))


def build_weights(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, max_pos: int, init_on_device: bool = False
) -> Weights:
    """Random weights of the spec's shape (radsim.models.llama init), fused and moved to `device`.

    `init_on_device` draws them on `device` itself (other numbers from the same seed; timing does
    not depend on them): a GPU initialises a 1B-parameter model in a fraction of a second.
    """
    from radsim.models.llama import Llama, LlamaConfig

    arch = spec_arch(spec)
    cfg = LlamaConfig.from_arch(arch, rope_theta=spec.rope_theta, norm_eps=1e-5)
    torch.manual_seed(0)
    with device if init_on_device else contextlib.nullcontext():
        model = Llama(cfg)
    move = lambda t: t.detach().to(device=device, dtype=dtype).contiguous()  # noqa: E731
    layers = []
    for block in model.blocks():
        a, m = block.self_attn, block.mlp
        wqkv = move(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        layers.append(
            LayerWeights(
                ln1=move(block.input_layernorm.weight),
                wqkv=wqkv,
                wkv=wqkv[a.q_proj.weight.shape[0] :],
                wo=move(a.o_proj.weight),
                ln2=move(block.post_attention_layernorm.weight),
                wgu=move(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                wd=move(m.down_proj.weight),
            )
        )
    hd = cfg.head_dim
    inv = 1.0 / spec.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
    emb = torch.cat([angles, angles], dim=-1)
    router = None
    if spec.routed:
        d, steps = cfg.hidden_size, spec.max_steps or cfg.num_layers
        g = torch.Generator().manual_seed(1)
        router = tuple(
            move(t)
            for t in (
                torch.ones(d),
                torch.randn(steps, d, generator=g) * 0.02,
                torch.randn(cfg.num_layers + 1, d, generator=g) * 0.02,
                torch.zeros(cfg.num_layers + 1),
            )
        )
    return Weights(
        embed=move(model.embed_tokens.weight),
        layers=layers,
        norm=move(model.norm.weight),
        cos=move(emb.cos()),
        sin=move(emb.sin()),
        heads=cfg.num_heads,
        kv_heads=cfg.num_kv_heads,
        head_dim=hd,
        eps=cfg.norm_eps,
        router=router,
    )


@dataclass
class SlotPlan:
    """Index tensors of one slot launch (built before timing: a runtime's routing metadata)."""

    batch: SlotBatch
    vis: torch.Tensor | None  # flat token indices of the visitors; None: every token, no gather
    pos: torch.Tensor  # positions of the visitors
    cache_b: torch.Tensor  # sequence and entry index of each visitor's K/V in the slot's cache
    cache_t: torch.Tensor
    steps: torch.Tensor | None  # routing step of each visit (router input)
    qpad: torch.Tensor | None  # prefill: flat index into the padded (B x Tq) query block
    tq: int
    tk: int  # keys attended per sequence (padded)
    mask: torch.Tensor | None  # (n or B, 1, Tq, Tk) where keys are ragged
    kv_seq: torch.Tensor | None  # decode: sequences whose cache rows attention reads (None: all)
    skip: torch.Tensor | None  # copy policy: flat indices of skippers, with their cache entries
    skip_pos: torch.Tensor | None
    skip_b: torch.Tensor | None
    skip_t: torch.Tensor | None


def _visits(routes: StepRoutes, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence, token, step) of every visit to `slot` by a new token, in (sequence, token) order."""
    b, t, s = np.nonzero(routes.slots == slot)
    if routes.phase == "decode":
        keep = t == routes.slots.shape[1] - 1
        b, t, s = b[keep], t[keep], s[keep]
    order = np.lexsort((t, b))
    return b[order], t[order], s[order]


def plan_step(routes: StepRoutes, routed: bool, device: torch.device) -> list[SlotPlan]:
    """Index tensors for every slot launch of the step."""
    plans = []
    long = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
    nb, new = routes.batch, routes.new_tokens
    for sb in slot_batches(routes):
        b, t, s = _visits(routes, sb.slot)
        flat = b * new + (t if routes.phase == "prefill" else 0)
        held = sb.context_tokens.astype(np.int64)
        copy = sb.kv_policy == "copy"
        if routes.phase == "prefill":
            rank = t if copy else _rank_within(b)
            counts = np.bincount(b, minlength=nb)
            tq = int(counts.max()) if b.size else 1
            tk = new if copy else tq
            mask = None
            if copy:  # visitors attend to every earlier position, skippers' entries included
                qpos = np.zeros((nb, tq), dtype=np.int64)
                qpos[b, _rank_within(b)] = t
                m = np.arange(tk)[None, None, :] <= qpos[:, :, None]
                mask = torch.as_tensor(m[:, None], device=device)
            plan_q, kv_seq = long(b * tq + _rank_within(b)), None
        else:
            rank, tq = held[b], 1
            tk = int((held[b] + 1).max()) if b.size else 1
            ragged = b.size and (held[b] + 1 < tk).any()
            mask = (
                torch.as_tensor((np.arange(tk)[None, :] <= held[b][:, None])[:, None, None], device=device)
                if ragged
                else None
            )
            plan_q = None
            kv_seq = None if b.size == nb else long(b)
        skip = skip_pos = skip_b = skip_t = None
        if copy:
            visited = np.zeros((nb, new), dtype=bool)
            visited[b, t if routes.phase == "prefill" else 0] = True
            sb_, st_ = np.nonzero(~visited)
            skip = long(sb_ * new + st_)
            skip_pos = long(st_ if routes.phase == "prefill" else np.full(sb_.size, routes.context))
            skip_b, skip_t = long(sb_), long(st_ if routes.phase == "prefill" else held[sb_])
        positions = t if routes.phase == "prefill" else np.full(b.size, routes.context)
        everyone = not routed and b.size == nb * new
        plans.append(
            SlotPlan(
                batch=sb,
                vis=None if everyone else long(flat),
                pos=long(positions),
                cache_b=long(b),
                cache_t=long(rank),
                steps=long(s) if routed else None,
                qpad=plan_q,
                tq=tq,
                tk=tk,
                mask=mask,
                kv_seq=kv_seq,
                skip=skip,
                skip_pos=skip_pos,
                skip_b=skip_b,
                skip_t=skip_t,
            )
        )
    return plans


def _rank_within(b: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal (sorted) sequence ids."""
    if b.size == 0:
        return b
    starts = np.r_[0, np.flatnonzero(np.diff(b)) + 1]
    return np.arange(b.size) - np.repeat(starts, np.diff(np.r_[starts, b.size]))


def make_caches(plans: list[SlotPlan], w: Weights, nb: int, device, dtype) -> dict[int, tuple]:
    """A K and a V cache per slot, (B, kv_heads, capacity, head_dim), filled with random entries."""
    caches = {}
    for p in plans:
        cap = int(max(p.tk, (p.batch.context_tokens + p.batch.kv_rows).max(initial=1)))
        shape = (nb, w.kv_heads, cap, w.head_dim)
        caches[p.batch.slot] = tuple(torch.randn(shape, device=device).to(dtype) for _ in range(2))
    return caches


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (n, heads, hd) by per-row tables (n, 1, hd) (rotate-half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def run_slot(
    h: torch.Tensor, p: SlotPlan, lw: LayerWeights, kv: tuple, w: Weights, phase: str, nb: int
) -> torch.Tensor:
    """One slot launch on the flat residual stream h (B x T, d); returns the new h."""
    H, K, hd, eps = w.heads, w.kv_heads, w.head_dim, w.eps
    kc, vc = kv
    if p.skip is not None and p.skip.numel():
        xs = F.rms_norm(h.index_select(0, p.skip), (h.shape[1],), lw.ln1, eps)
        ks = F.linear(xs, lw.wkv).view(-1, 2 * K, hd)
        k_s = _rope(ks[:, :K], w.cos[p.skip_pos].unsqueeze(1), w.sin[p.skip_pos].unsqueeze(1))
        kc[p.skip_b, :, p.skip_t] = k_s
        vc[p.skip_b, :, p.skip_t] = ks[:, K:]
    n = p.cache_b.numel()
    if n == 0:
        return h
    x_in = h if p.vis is None else h.index_select(0, p.vis)
    x = F.rms_norm(x_in, (h.shape[1],), lw.ln1, eps)
    qkv = F.linear(x, lw.wqkv).view(n, H + 2 * K, hd)
    qk = _rope(qkv[:, : H + K], w.cos[p.pos].unsqueeze(1), w.sin[p.pos].unsqueeze(1))
    kc[p.cache_b, :, p.cache_t] = qk[:, H:]
    vc[p.cache_b, :, p.cache_t] = qkv[:, H + K :]
    if phase == "prefill":
        q = qk[:, :H]
        if p.qpad is not None and n != nb * p.tq:
            q = q.new_zeros(nb * p.tq, H, hd).index_copy_(0, p.qpad, q)
        q = q.view(nb, p.tq, H, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, kc[:, :, : p.tk], vc[:, :, : p.tk], attn_mask=p.mask, is_causal=p.mask is None, enable_gqa=True
        )
        y = y.transpose(1, 2).reshape(nb * p.tq, H * hd)
        if p.qpad is not None and n != nb * p.tq:
            y = y.index_select(0, p.qpad)
    else:
        q = qk[:, :H].unsqueeze(2)  # (n, H, 1, hd)
        keys, values = (
            (kc, vc) if p.kv_seq is None else (kc.index_select(0, p.kv_seq), vc.index_select(0, p.kv_seq))
        )
        y = F.scaled_dot_product_attention(
            q, keys[:, :, : p.tk], values[:, :, : p.tk], attn_mask=p.mask, enable_gqa=True
        ).reshape(n, H * hd)
    mid = x_in + F.linear(y, lw.wo)
    gate, up = F.linear(F.rms_norm(mid, (h.shape[1],), lw.ln2, eps), lw.wgu).chunk(2, dim=-1)
    out = mid + F.linear(F.silu(gate) * up, lw.wd)
    if w.router is not None:
        assert p.steps is not None  # routed weights come with routed plans (plan_step sets steps)
        rn, remb, rw, rb = w.router
        r_in = F.rms_norm(out, (h.shape[1],), rn, eps) + remb[p.steps.clamp_max(remb.shape[0] - 1)]
        F.linear(r_in, rw, rb).argmax(dim=-1)  # replayed routes decide; the router still runs
    if p.vis is None:
        return out
    return h.index_copy_(0, p.vis, out)


def run_step(ids: torch.Tensor, plans: list[SlotPlan], caches: dict, w: Weights, phase: str, timer=None):
    """Embedding, every slot in order, final norm, LM head and greedy sampling; returns the last logits."""
    mark = timer.mark if timer is not None else (lambda: None)
    nb = ids.shape[0]
    mark()
    h = F.embedding(ids.reshape(-1), w.embed)
    mark()
    for p in plans:
        h = run_slot(h, p, w.layers[p.batch.layer], caches[p.batch.slot], w, phase, nb)
        mark()
    last = h.view(nb, -1, h.shape[1])[:, -1]
    logits = F.linear(F.rms_norm(last, (h.shape[1],), w.norm, w.eps), w.embed)
    torch.softmax(logits.float(), dim=-1).argmax(dim=-1)  # greedy sampling of the next tokens
    mark()
    return logits


@dataclass(frozen=True)
class Config:
    """One measured configuration: a model, a phase, a batch and a length."""

    model: str
    phase: str
    batch: int
    tokens: int  # prompt tokens (prefill) or context tokens (decode) per sequence

    @property
    def config_id(self) -> str:
        """A stable name: model/phase/b<batch>/t<tokens>."""
        return f"{self.model}/{self.phase}/b{self.batch}/t{self.tokens}"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_config(
    device,
    cfg: Config,
    dtype: str = "fp32",
    warmup: int = 3,
    repeats: int = 10,
    root: str = ".",
    weights: Weights | None = None,
    min_time_s: float = 0.0,
    max_repeats: int = 60,
    routes: StepRoutes | None = None,
) -> list[dict[str, Any]]:
    """Time one configuration: rows for the whole step, the embedding, every slot and the head.

    Short steps are repeated until `min_time_s` of timed work (at most `max_repeats`), so that the
    median of a millisecond step is not at the mercy of one burst from a neighbour. `routes`, when
    given, are the configuration's `step_routes` computed beforehand (a caller that reuses a trace).
    """
    spec = SPECS[cfg.model]
    if routes is None:
        routes = step_routes(spec, cfg.phase, cfg.batch, cfg.tokens, root=root)
    tdev, tdtype = device.torch_device, DTYPES[dtype]
    w = weights or build_weights(spec, tdev, tdtype, max_pos=routes.slots.shape[1] + 1)
    with torch.inference_mode():
        plans = plan_step(routes, spec.routed, tdev)
        caches = make_caches(plans, w, cfg.batch, tdev, tdtype)
        ids = torch.randint(0, w.embed.shape[0], (cfg.batch, routes.new_tokens), device=tdev)
        step = device.graph(lambda: run_step(ids, plans, caches, w, cfg.phase))
        t0 = device.timer()
        t0.mark()
        for _ in range(warmup):
            run_step(ids, plans, caches, w, cfg.phase)
        t0.mark()
        per_step = t0.elapsed_s()[0] / max(warmup, 1)
        if min_time_s > 0 and per_step > 0:
            repeats = max(repeats, min(max_repeats, int(np.ceil(min_time_s / per_step))))
        intervals, totals = [], []
        sampler = device.power_sampler()
        for _ in range(repeats):  # marks inside the step: per-slot intervals
            timer = device.timer()
            run_step(ids, plans, caches, w, cfg.phase, timer)
            intervals.append(timer.elapsed_s())
        with sampler if sampler is not None else _Null():
            for _ in range(repeats):  # whole steps, without marks (and as a CUDA graph where allowed)
                timer = device.timer()
                timer.mark()
                step()
                timer.mark()
                totals.append(timer.elapsed_s()[0])
        activation = device.peak_memory_bytes(lambda: run_step(ids, plans, caches, w, cfg.phase))
    kv_bytes = float(sum(t.untyped_storage().nbytes() for kv in caches.values() for t in kv))
    base = dict(
        config_id=cfg.config_id,
        model=cfg.model,
        kind=spec.kind,
        arch=spec.arch,
        phase=cfg.phase,
        batch=cfg.batch,
        tokens=cfg.tokens,
        dtype=dtype,
        repeats=repeats,
    )
    energy = sampler.energy_J / repeats if sampler is not None and sampler.samples else None
    rows = [
        dict(
            base,
            scope="step",
            **_stats(totals),
            peak_memory_bytes=w.nbytes() + kv_bytes + activation,
            weights_bytes=w.nbytes(),
            kv_cache_bytes=kv_bytes,
            activation_bytes=activation,
            energy_J=energy,
        )
    ]
    per = np.array(intervals)  # (repeats, 1 + slots + 1)
    rows.append(dict(base, scope="embed", **_stats(per[:, 0])))
    for i, p in enumerate(plans):
        sb = p.batch
        rows.append(
            dict(
                base,
                scope="slot",
                slot=sb.slot,
                layer=sb.layer,
                **{"pass": sb.pass_index},
                kv_policy=sb.kv_policy,
                new_tokens=_ints(sb.new_tokens),
                context_tokens=_ints(sb.context_tokens),
                visiting_tokens=_ints(sb.visiting_tokens),
                **_stats(per[:, 1 + i]),
            )
        )
    rows.append(dict(base, scope="head", **_stats(per[:, -1])))
    return rows


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _ints(a: np.ndarray) -> str:
    return " ".join(str(int(x)) for x in a)


def _stats(times) -> dict[str, float]:
    t = sorted(float(x) for x in times)
    q = statistics.quantiles(t, n=10, method="inclusive") if len(t) > 1 else [t[0]] * 9
    return dict(time_s=statistics.median(t), time_s_p10=q[0], time_s_p90=q[-1])


PHASES = ("prefill", "decode")
SCOPES = ("step", "embed", "slot", "head")
KINDS = ("sequential", "radial")
_KV_POLICIES = ("none", "copy", "compute")  # radsim.spec.kv.KV_POLICIES (kept free of other imports)


@dataclass(frozen=True)
class Settings:
    """How `measure` times: device, threads, dtype, warm-up and repeats (checked on construction)."""

    device: str = "cpu"
    threads: int | None = 1
    dtype: str = "fp32"
    warmup: int = 3
    repeats: int = 10
    min_time_s: float = 0.0

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"--threads must be an integer >= 1, got {self.threads}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype is {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if not math.isfinite(self.min_time_s) or self.min_time_s < 0:
            raise ConfigError(f"--min-time must be a finite number of seconds >= 0, got {self.min_time_s}")


def check_device(name: str) -> None:
    """Raise ConfigError unless `name` is 'cpu', 'cuda' or 'cuda:N' (N >= 0)."""
    if name in ("cpu", "cuda"):
        return
    head, _, index = name.partition(":")
    if head != "cuda" or not index.isdigit():
        raise ConfigError(f"--device is {name!r}; allowed: cpu, cuda, cuda:N (N = 0, 1, ...)")


def grid(
    models: list[str],
    phases: list[str],
    batches: list[int],
    prompts: list[int],
    contexts: list[int],
    prefill_batches: list[int] | None = None,
) -> list[Config]:
    """Every (model, phase, batch, length) combination (prefill may use its own batch sizes).

    Models must be known (`SPECS`), phases prefill or decode, every batch and length >= 1 and
    within the model's positions, and every list non-empty; ConfigError names the option.
    """
    _check_grid(models, phases, batches, prompts, contexts, prefill_batches)
    out = []
    for m in models:
        for ph in phases:
            for b in (prefill_batches or batches) if ph == "prefill" else batches:
                for t in prompts if ph == "prefill" else contexts:
                    out.append(Config(m, ph, b, t))
    return out


def _check_grid(
    models: list[str],
    phases: list[str],
    batches: list[int],
    prompts: list[int],
    contexts: list[int],
    prefill_batches: list[int] | None,
) -> None:
    for option, names, allowed in (("--models", models, SPECS), ("--phases", phases, PHASES)):
        if not names:
            raise ConfigError(f"{option} is empty; allowed: {', '.join(allowed)}")
        for v in names:
            if v not in allowed:
                raise ConfigError(f"{option}: unknown {option[2:-1]} {v!r}; valid: {', '.join(allowed)}")
    lists: dict[str, list[int]] = {"--batch": batches, "--prefill-batch": prefill_batches or batches}
    lists |= {"--prompt": prompts} if "prefill" in phases else {}
    lists |= {"--context": contexts} if "decode" in phases else {}
    for option, values in lists.items():
        if not values:
            raise ConfigError(f"{option} is empty; allowed: comma-separated integers >= 1")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise ConfigError(f"{option}: {bad[0]!r}; allowed: integers >= 1")
    longest = max(
        [*(prompts if "prefill" in phases else []), *(c + 1 for c in contexts if "decode" in phases)]
    )
    for m in models:
        limit = spec_arch(SPECS[m]).max_position_embeddings
        if longest > limit:
            raise ConfigError(
                f"--prompt/--context: {longest} positions exceed the {limit} of model {m!r} ({SPECS[m].arch})"
            )


def measure(
    configs: list[Config],
    out_dir: str | Path,
    device_name: str = "cpu",
    threads: int | None = 1,
    dtype: str = "fp32",
    warmup: int = 3,
    repeats: int = 10,
    root: str = ".",
    log=print,
    use_graphs: bool = True,
    min_time_s: float = 0.0,
) -> Path:
    """Measure every configuration; write `measurements.csv` and `environment.json` to `out_dir`.

    The settings and the output folder are checked before anything is timed.
    """
    Settings(device_name, threads, dtype, warmup, repeats, min_time_s)
    if not configs:
        raise ConfigError("nothing to measure: no configuration")
    for spec in {SPECS[c.model] for c in configs}:
        if spec.trace and not os.path.exists(os.path.join(root, spec.trace)):
            raise ConfigError(
                f"--models {spec.name} replays the routes of {spec.trace}, which is not in {os.path.abspath(root)} "
                "(run from the repository root)"
            )
    out = Path(out_dir)
    _writable_dir(out)
    device = get_device(device_name, threads, use_graphs)
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        rows += measure_config(device, cfg, dtype, warmup, repeats, root, min_time_s=min_time_s)
        step = rows[_last_step(rows)]
        log(
            f"{cfg.config_id:40s} {step['time_s'] * 1e3:9.3f} ms  (p10 {step['time_s_p10'] * 1e3:.3f}, "
            f"p90 {step['time_s_p90'] * 1e3:.3f})  peak {step['peak_memory_bytes'] / 1e6:.1f} MB"
        )
    env = dict(
        device.environment(),
        dtype=dtype,
        warmup=warmup,
        repeats=repeats,
        configs=[c.config_id for c in configs],
    )
    write_csv(rows, out / "measurements.csv")
    _atomic_write(out / "environment.json", json.dumps(env, indent=2) + "\n")
    return out / "measurements.csv"


def _last_step(rows: list[dict[str, Any]]) -> int:
    return max(i for i, r in enumerate(rows) if r["scope"] == "step")


def write_csv(rows: list[dict[str, Any]], path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    """Write rows atomically as CSV (missing fields empty)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        _readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _readable(path: str) -> None:
    """The permissions of a plain `open` (mkstemp's temporaries are owner-only)."""
    from radsim.files import umask

    os.chmod(path, 0o666 & ~umask())


def _writable_dir(out: Path) -> None:
    from radsim.files import output_dir

    output_dir(out, "--out")


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a measurement table, as strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


#: Columns `radsim validate` and `radsim calibrate` read from a measurement table.
REQUIRED = (
    "config_id",
    "model",
    "kind",
    "phase",
    "batch",
    "tokens",
    "dtype",
    "scope",
    "kv_policy",
    "new_tokens",
    "context_tokens",
    "visiting_tokens",
    "time_s",
    "time_s_p10",
    "time_s_p90",
    "peak_memory_bytes",
    "activation_bytes",
)


def read_measurements(path: str | Path) -> list[dict[str, str]]:
    """The rows of a measurement table, checked: ConfigError names the file, line and column.

    A table has the columns `REQUIRED`; every row a known model, kind, phase, dtype and scope,
    batch and tokens >= 1 and finite times > 0; each configuration one step row (finite memory
    >= 0) and rows that agree on model, phase, batch, tokens and dtype; slot rows a KV policy
    and `batch` non-negative token counts per sequence. An empty, truncated or corrupt table fails.
    """
    from radsim.files import read_text

    path = Path(path)
    text = read_text(path, "measurement table")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from exc
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(
            f"{path}: not a measurement table (missing column(s) {', '.join(missing)}; "
            "`radsim measure` writes one)"
        )
    if not rows:
        raise ConfigError(f"{path}: the measurement table has no rows")
    first: dict[str, tuple[int, dict[str, str]]] = {}
    steps: dict[str, int] = {}
    for line, row in rows:
        _check_row(path, line, row)
        cid = row["config_id"]
        line0, row0 = first.setdefault(cid, (line, row))
        for key in ("model", "kind", "phase", "batch", "tokens", "dtype"):
            if row[key] != row0[key]:
                raise ConfigError(
                    f"{path}:{line}: configuration {cid!r} has {key} {row[key]!r} here and {row0[key]!r} on line {line0}"
                )
        steps[cid] = steps.get(cid, 0) + (row["scope"] == "step")
    for cid, n in steps.items():
        if n != 1:
            raise ConfigError(f"{path}: configuration {cid!r} has {n} step rows; allowed: exactly 1")
    return [row for _, row in rows]


def _check_row(path: Path, line: int, row: dict[str, Any]) -> None:
    where = f"{path}:{line}"
    if None in row:
        raise ConfigError(f"{where}: the row has more fields than the header")
    if None in row.values():
        raise ConfigError(f"{where}: the row has fewer fields than the header (a truncated file?)")
    for key, allowed in (
        ("model", tuple(SPECS)),
        ("kind", KINDS),
        ("phase", PHASES),
        ("dtype", tuple(DTYPES)),
        ("scope", SCOPES),
    ):
        if row[key] not in allowed:
            raise ConfigError(f"{where}: column '{key}' is {row[key]!r}; allowed: {', '.join(allowed)}")
    if not row["config_id"]:
        raise ConfigError(f"{where}: column 'config_id' is empty")
    batch = _count(where, row, "batch")
    _count(where, row, "tokens")
    for key in ("time_s", "time_s_p10", "time_s_p90"):
        _number(where, row, key, positive=True)
    if row["scope"] == "step":
        for key in ("peak_memory_bytes", "activation_bytes"):
            _number(where, row, key, positive=False)
    if row["scope"] == "slot":
        if row["kv_policy"] not in _KV_POLICIES:
            raise ConfigError(
                f"{where}: column 'kv_policy' is {row['kv_policy']!r}; allowed: {', '.join(_KV_POLICIES)}"
            )
        for key in ("new_tokens", "context_tokens", "visiting_tokens"):
            values = row[key].split()
            if len(values) != batch or not all(v.isdigit() for v in values):
                raise ConfigError(
                    f"{where}: column '{key}' is {row[key]!r}; allowed: {batch} integers >= 0 "
                    "(one per sequence), separated by spaces"
                )


def _count(where: str, row: dict[str, str], key: str) -> int:
    value = row[key]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{where}: column '{key}' is {value!r}; allowed: an integer >= 1")
    return int(value)


def _number(where: str, row: dict[str, str], key: str, positive: bool) -> float:
    try:
        value = float(row[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        allowed = "a finite number > 0 (seconds)" if positive else "a finite number >= 0 (bytes)"
        raise ConfigError(f"{where}: column '{key}' is {row[key]!r}; allowed: {allowed}")
    return value
