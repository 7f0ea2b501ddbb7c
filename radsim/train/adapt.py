"""Adapted distillation: SmolLM2-135M's layers and a radial router trained together under routing.

The frozen-layer distillation (`radsim.train.distill`) only teaches a router to imitate an oracle;
the layers never learn that some of them are skipped. Here, for each target mean depth:

1. **Start.** The router starts as the imitation router of `distill` at the threshold tau whose
   oracle routes have the target depth on the training windows (bisection on tau).
2. **Adapt.** Every projection of every layer gets a low-rank adapter (LoRA, rank r, scale
   alpha / r; the pretrained weights, embeddings and norms stay frozen). The loss is the KL
   divergence from the full model's next-token distribution (the teacher, SmolLM2-135M run
   whole), so the student learns to be the full model, not the text. The router trains with the
   adapters through the straight-through scaling of each visit's output by p / stop_grad(p) of
   the choice that led there (only when the router trains: with it frozen, that scaling would pass
   gradients back through the router's input into the layers, and the adapters would learn to move
   the router's probabilities; the models of 2026-12-02 were trained so, and a 90% one of
   2026-12-03 too, whose training KL rose from 0.32 to 0.60 nats over its last 40 of 100 steps;
   without it the 90% run's training KL stayed at 0.23-0.26).
   `routing` says how tokens are routed in training:
   - `argmax` (the default): as in use, so the adapters learn the very routes they will serve;
     the router starts at the target depth and moves only by the KL's gradient. With
     `router_lr = 0` (the shipped config) the router stays as it started: trained with the
     router, the straight-through gradient lowered the chosen options' probabilities, so depth
     fell (23.4 to 21.0 layers in 30 steps) and the KL rose (0.98 to 1.42 nats).
   - `sample`: routes are sampled at `sample_temperature`, and REINFORCE with a per-token
     reward -(KL + penalty x depth) and a batch-mean baseline trains the router too (it reads
     detached hidden states, so that this noisy gradient stays out of the layers). The penalty
     (nats per layer visit) is the multiplier of an equality constraint on depth: after every
     step it moves by penalty_lr x (depth - target) / layers.
   In `argmax` routing, `exit_bias_lr > 0` holds the depth instead by the router's exit bias, a
   dual variable moved after every step by exit_bias_lr x (target - depth) / layers: the adapters
   change the hidden states the router reads, so even a frozen router's depth drifts (the 75% model
   without it: from 23.5 to 21.6 layers over its 200 training steps, 21.4 on validation).
   The model is saved with the router as trained. (A bisection of the exit bias after training, to
   put the depth exactly on target, made the models of 2026-12-03 far worse: the depth is flat in
   the exit bias, so the bisection moved it from 0.59 to 5.68 for 0.24 layers fewer, and the routes
   it changed raised the 90% model's KL from 0.26 to 0.77 nats on training windows and from 0.27 to
   1.37 on validation windows. Removed.)
   Skipped layers' KV entries are copied from the token's hidden state (`kv_policy = "copy"`).
3. **Checkpoint.** Every `checkpoint_every` steps the adapters, router, optimiser, penalty and
   log are written atomically; a rerun resumes from there. A step's windows and samples depend
   only on (seed, step), so a resumed run makes the same numbers as an uninterrupted one.
4. **Evaluate** on a representative validation sample (windows drawn from every source in
   proportion, `corpus.representative_windows`), routing by argmax as a decoder would, against
   the full model, the same router before adaptation, the contribution oracle at the same depth
   and ShortGPT static removal at the rounded depth; every perplexity comes with a bootstrap 95%
   interval over windows, and per source.

Training and evaluation run under bfloat16 autocast on CPU (the teacher as a bfloat16 copy).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radsim.errors import ConfigError
from radsim.files import atomic_write
from radsim.models.llama import Llama, lm_loss
from radsim.models.radial import Radial, Router
from radsim.progress import bar
from radsim.train import corpus
from radsim.train.config import RunConfig
from radsim.train.distill import (
    fit_router,
    oracle_routes,
    radial_over,
    router_examples,
    static_routes,
    teacher_contributions,
)
from radsim.train.loop import lr_fraction, source_splits, text_splits

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _bf16() -> torch.autocast:
    """bfloat16 autocast on CPU, as training and evaluation run."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: W x + (alpha / r) B A x."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))  # starts as the base layer
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    def merged(self) -> nn.Linear:
        """A plain linear layer with the update folded into its weight."""
        out = nn.Linear(
            self.base.in_features, self.base.out_features, bias=False, dtype=self.base.weight.dtype
        )
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
        return out


def _projections(model: Llama):
    for block in model.blocks():
        for part in (block.self_attn, block.mlp):
            for name in PROJECTIONS:
                if hasattr(part, name):
                    yield part, name


def add_adapters(model: Llama, rank: int, alpha: float) -> list[nn.Parameter]:
    """Freeze the model and wrap every projection of every layer in a LoRALinear; its new parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for part, name in list(_projections(model)):
        wrapped = LoRALinear(getattr(part, name), rank, alpha)
        setattr(part, name, wrapped)
        params += [wrapped.lora_a, wrapped.lora_b]
    return params


def merge_adapters(model: Llama) -> Llama:
    """Fold every adapter into its layer's weight (in place): a plain Llama again."""
    for part, name in list(_projections(model)):
        module = getattr(part, name)
        if isinstance(module, LoRALinear):
            setattr(part, name, module.merged())
    return model


def adapter_state(model: Llama) -> dict[str, torch.Tensor]:
    """The adapters' parameters only (what a checkpoint of the adaptation must keep)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


ADAPTER_KEYS = ("adapters", "router", "lora_rank", "lora_alpha", "kv_policy", "depth_target", "run")


def load_adapter_file(path: Path) -> dict[str, Any]:
    """A saved `adapter.pt` (`save_adapted`), or ConfigError naming the file and what it lacks."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or not one of plain tensors and numbers
        raise ConfigError(
            f"{path}: cannot read as an adapter file (adapter.pt of a radial_adapt run): {exc}"
        ) from exc
    missing = [k for k in ADAPTER_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ConfigError(f"{path}: not an adapter file of a radial_adapt run; missing {missing}")
    return saved


def adapted_smollm2(path: Path) -> Radial:
    """The adapted radial SmolLM2 of a saved `adapter-*.pt` (adapters merged, router loaded)."""
    from radsim.models import smollm2

    return adapted_model(load_adapter_file(path), smollm2.load_model(), str(path))


def adapted_model(saved: dict[str, Any], base: Llama, where: str = "adapter file") -> Radial:
    """The radial model of a saved adaptation (`save_adapted`) over its base model `base` (changed in
    place): the adapters merged into the layers, the router as it was saved."""
    rank, alpha = int(saved["lora_rank"]), float(saved["lora_alpha"])
    add_adapters(base, rank, alpha)
    result = base.load_state_dict({k: v.float() for k, v in saved["adapters"].items()}, strict=False)
    lost = [k for k in result.missing_keys if ".lora_" in k] + list(result.unexpected_keys)
    if lost:
        raise ConfigError(f"{where}: does not fit the base model (adapter keys {lost[:4]})")
    merge_adapters(base)
    router = Router(radial_over(base, str(saved["kv_policy"])).cfg)
    router.load_state_dict({k: v.float() for k, v in saved["router"].items()})
    return radial_over(base, str(saved["kv_policy"]), router)


def tau_for_depth(contrib: torch.Tensor, depth: float, iterations: int = 40) -> float:
    """The contribution threshold whose oracle routes visit `depth` layers per token on average."""
    c = contrib.float()
    lo, hi = 0.0, float(c.max()) + 1e-6

    def mean_depth(tau: float) -> float:
        return 1.0 + float((c[..., 1:] >= tau).sum(-1).float().mean())

    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_depth(mid) > depth else (lo, mid)
    return (lo + hi) / 2


def window_batch(train: np.ndarray, seq: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """The training windows of one step: a function of (seed, step) only, so a resumed run repeats them."""
    return torch.from_numpy(next(corpus.batches(train, seq, batch, np.random.default_rng([seed, step]))))


def kl_per_token(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of each position's next-token distribution, (B, T)."""
    logp = F.log_softmax(student_logits.float(), dim=-1)
    return (teacher_logp.exp() * (teacher_logp - logp)).sum(-1)


def adapt_one(
    cfg: RunConfig,
    target: float,
    teacher: Llama,
    teacher_bf16: Llama,
    start_router: Router,
    train: np.ndarray,
    folder: Path,
) -> tuple[Radial, list[dict[str, Any]]]:
    """Train (or resume, or load) the adapted radial model of one target depth fraction."""
    a, layers = cfg.adapt, teacher.cfg.num_layers
    torch.manual_seed(cfg.seed * 1_000_003 + round(1000 * target))  # the adapters' start: this model's own
    student = radial_over(copy.deepcopy(teacher), a.kv_policy, copy.deepcopy(start_router)).train()
    adapters = add_adapters(student.model, a.lora_rank, a.lora_alpha)
    router_params = list(student.router.parameters()) if a.router_lr > 0 else []  # 0: router frozen
    for p in student.router.parameters():
        p.requires_grad_(bool(router_params))
    groups = [{"params": adapters, "peak": a.lr}]
    if router_params:
        groups.append({"params": router_params, "peak": a.router_lr})
    opt = torch.optim.AdamW(
        groups,
        lr=a.lr,
        betas=(0.9, 0.95),
        weight_decay=0.0,
    )
    ckpt_path = folder / "checkpoint.pt"
    step, penalty, log = 0, a.penalty, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        student.model.load_state_dict(ckpt["adapters"], strict=False)
        student.router.load_state_dict(ckpt["router"])
        opt.load_state_dict(ckpt["optimizer"])
        step, penalty, log = ckpt["step"], ckpt["penalty"], ckpt["log"]
        print(f"depth {target:g}: resuming at step {step}", file=sys.stderr, flush=True)
    goal = target * layers
    start = time.time() - (log[-1]["elapsed_s"] if log else 0.0)
    progress = bar(a.steps, "steps", sys.stderr, desc=f"adapting to depth {target:g}: ", initial=step)
    while step < a.steps:
        x = window_batch(train, cfg.data.seq_len, cfg.data.batch, cfg.seed, step)
        for group in opt.param_groups:
            group["lr"] = group["peak"] * lr_fraction(step, a.steps, a.warmup_steps)
        with torch.no_grad(), _bf16():
            teacher_logp = F.log_softmax(teacher_bf16(x).float(), dim=-1)
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        sample = a.routing == "sample"
        with _bf16():
            out = student(
                x,
                mode=a.routing,
                # the scale p / stop_grad(p) carries the router's gradient; with the router frozen
                # it would only pass gradients back through the router's input into the layers,
                # teaching the adapters to move the router's probabilities instead of the output
                straight_through=bool(router_params),
                temperature=a.sample_temperature if sample else 1.0,
                detach_router_input=sample,  # the policy gradient trains the router, not the layers
            )
        kl = kl_per_token(teacher_logp, out.logits)
        depth = out.depth.float()
        loss = kl.mean()
        if sample:
            reward = -(kl.detach() + penalty * depth)
            loss = loss - ((reward - reward.mean()) * out.log_prob).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapters + router_params, 1.0)
        opt.step()
        mean_depth = depth.mean().item()
        if sample:  # the multiplier of an equality constraint on depth: either sign
            penalty = penalty + a.penalty_lr * (mean_depth - goal) / layers
        elif a.exit_bias_lr:  # argmax: the exit logit's bias holds the depth (fewer exits: deeper)
            with torch.no_grad():
                student.router.proj.bias[layers] -= a.exit_bias_lr * (goal - mean_depth) / layers
        step += 1
        log.append(
            {
                "step": step,
                "elapsed_s": time.time() - start,
                "kl": kl.mean().item(),
                "depth": mean_depth,
                "penalty": penalty,
                "exit_bias": float(student.router.proj.bias[layers].detach()),
            }
        )
        progress.set_postfix_str(f"kl {log[-1]['kl']:.3f}, depth {mean_depth:.2f}, penalty {penalty:.3f}")
        progress.update(1)
        if step % a.checkpoint_every == 0 or step == a.steps:
            state = {
                "step": step,
                "penalty": penalty,
                "log": log,
                "adapters": adapter_state(student.model),
                "router": student.router.state_dict(),
                "optimizer": opt.state_dict(),
            }
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(ckpt_path, functools.partial(torch.save, state))
    progress.close()
    return student.eval(), log


def save_adapted(path: Path, student: Radial, cfg: RunConfig, target: float, log: list[dict]) -> None:
    """The adapters (fp16) and router of a finished model: all `adapted_smollm2` needs."""
    state = {
        "adapters": {k: v.half() for k, v in adapter_state(student.model).items()},
        "router": student.router.state_dict(),
        "lora_rank": cfg.adapt.lora_rank,
        "lora_alpha": cfg.adapt.lora_alpha,
        "kv_policy": cfg.adapt.kv_policy,
        "depth_target": target,
        "run": asdict(cfg),
        "train_seconds": log[-1]["elapsed_s"] if log else 0.0,
    }
    atomic_write(path, lambda p: torch.save(state, p))


# --- evaluation ---------------------------------------------------------------------------------

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@torch.no_grad()
def window_scores(forward: Forward, windows: np.ndarray, batch: int, layers: int) -> dict[str, np.ndarray]:
    """Per window: summed next-token loss, predicted tokens, and summed depth of those tokens."""
    loss, depth = [], []
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(windows[i : i + batch])
        with _bf16():
            logits, d = forward(x)
        loss.append(lm_loss(logits.float(), x, reduction="none").sum(-1).double().numpy())
        visits = torch.full(x.shape, layers) if d is None else d
        depth.append(visits[:, :-1].double().sum(-1).numpy())
    n = np.full(len(windows), windows.shape[1] - 1, dtype=np.float64)
    return {"loss": np.concatenate(loss), "tokens": n, "depth": np.concatenate(depth)}


def perplexity_interval(loss: np.ndarray, tokens: np.ndarray, seed: int) -> tuple[float, float]:
    """95% bootstrap interval (BCa, resampling windows) of exp(sum loss / sum tokens)."""

    def ppl(loss, t, axis=-1):
        return np.exp(loss.sum(axis) / t.sum(axis))

    return _interval((loss, tokens), ppl, seed)


def ratio_interval(loss: np.ndarray, ref: np.ndarray, tokens: np.ndarray, seed: int) -> tuple[float, float]:
    """95% paired bootstrap interval (BCa, the same windows resampled for both) of a perplexity ratio."""

    def ratio(loss, r, t, axis=-1):
        return np.exp((loss.sum(axis) - r.sum(axis)) / t.sum(axis))

    return _interval((loss, ref, tokens), ratio, seed)


def _interval(data: tuple, statistic, seed: int) -> tuple[float, float]:
    """scipy's BCa bootstrap; where it is undefined (every resample gives the same value), the
    percentile interval."""
    import warnings

    from scipy.stats import bootstrap

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns where it is undefined; then percentile
            res = bootstrap(
                data,
                statistic,
                paired=True,
                vectorized=True,
                n_resamples=2000,
                method=method,
                random_state=np.random.default_rng(seed),
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            break
    return lo, hi


def score_row(
    method: str,
    target: float | None,
    scores: dict,
    ref: dict | None,
    sources: np.ndarray,
    names: list[str],
    seed: int,
) -> dict[str, Any]:
    """One row of the curve: perplexity with its interval, ratio to the full model, per source."""
    loss, tokens = scores["loss"], scores["tokens"]
    ppl = float(np.exp(loss.sum() / tokens.sum()))
    lo, hi = perplexity_interval(loss, tokens, seed)
    row: dict[str, Any] = {
        "method": method,
        "target_depth": target,
        "mean_depth": float(scores["depth"].sum() / tokens.sum()),
        "perplexity": ppl,
        "perplexity_lo": lo,
        "perplexity_hi": hi,
    }
    if ref is not None:
        row["ratio_to_full"] = float(np.exp((loss.sum() - ref["loss"].sum()) / tokens.sum()))
        row["ratio_lo"], row["ratio_hi"] = (
            (1.0, 1.0) if loss is ref["loss"] else ratio_interval(loss, ref["loss"], tokens, seed)
        )
    for i, name in enumerate(names):
        part = sources == i
        row[f"perplexity[{name}]"] = float(np.exp(loss[part].sum() / tokens[part].sum()))
        row[f"mean_depth[{name}]"] = float(scores["depth"][part].sum() / tokens[part].sum())
    row["tokens"] = int(tokens.sum())
    row["windows"] = len(tokens)
    return row


def _slices(routes: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """Forced routes of windows i..i+n, for `_radial_forward`."""
    return lambda i, n: routes[i : i + n]


def _radial_forward(model: Radial, routes_for: Callable[[int, int], torch.Tensor] | None = None) -> Forward:
    state = {"i": 0}

    def forward(x: torch.Tensor):
        routes = None
        if routes_for is not None:
            routes = routes_for(state["i"], len(x))
            state["i"] += len(x)
        out = model(x, routes=routes)
        return out.logits, out.depth

    return forward


def adapt(cfg: RunConfig, out_dir: Path) -> dict:
    """Every target depth: start, adapt, save and evaluate; then the curve (CSV, JSON, plot)."""
    from radsim.models import smollm2

    a, seq, batch = cfg.adapt, cfg.data.seq_len, cfg.data.batch
    torch.manual_seed(cfg.seed)
    train = np.asarray(corpus.load_split(text_splits(), "train"))
    by_source = source_splits()
    names = sorted(corpus.SOURCES)
    val, sources = corpus.representative_windows(
        {n: np.load(by_source[("val", n)], mmap_mode="r") for n in names}, seq, a.eval_tokens, cfg.seed
    )
    teacher = smollm2.load_model()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_bf16 = copy.deepcopy(teacher).to(torch.bfloat16).eval()
    layers = teacher.cfg.num_layers
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / "rows.json"
    rows: list[dict[str, Any]] = json.loads(rows_path.read_text()) if rows_path.exists() else []
    done = {(r["method"], r["target_depth"]) for r in rows}
    summary: dict = {}

    def add(row: dict) -> None:
        rows.append(row)
        atomic_write(rows_path, lambda p: p.write_text(json.dumps(rows, indent=2)))
        print(
            f"{row['method']} {row['target_depth']}: depth {row['mean_depth']:.2f}, "
            f"ppl {row['perplexity']:.2f} [{row['perplexity_lo']:.2f}, {row['perplexity_hi']:.2f}]",
            file=sys.stderr,
            flush=True,
        )

    full = window_scores(lambda x: (teacher_bf16(x), None), val, batch, layers)
    if ("sequential", None) not in done:
        add(score_row("sequential", None, full, full, sources, names, cfg.seed))
    imitation = next(
        corpus.batches(train, seq, max(1, a.imitation_tokens // seq), np.random.default_rng(cfg.seed))
    )
    contrib, bi = teacher_contributions(teacher, imitation, batch)
    val_contrib: list[torch.Tensor] = []  # the oracle's, on the validation windows: computed once, if needed
    for target in a.depth_targets:
        folder = out_dir / f"depth{round(100 * target)}"
        tau = tau_for_depth(contrib, target * layers)
        router_file = folder / "start-router.pt"
        base = radial_over(teacher, a.kv_policy)
        if router_file.exists():
            router = Router(base.cfg)
            router.load_state_dict(torch.load(router_file, map_location="cpu", weights_only=True))
        else:
            examples = router_examples(base, imitation, oracle_routes(contrib, tau), batch)
            router = fit_router(base.cfg, examples, a.router_epochs, cfg.seed)
            del examples
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(router_file, functools.partial(torch.save, router.state_dict()))
        final = folder / "adapter.pt"
        if final.exists() and (folder / "checkpoint.pt").exists():
            student = adapted_smollm2(final)
        else:
            student, log = adapt_one(cfg, target, teacher, teacher_bf16, router, train, folder)
            save_adapted(final, student, cfg, target, log)
            student = adapted_smollm2(final)
        if ("radial_adapted", target) not in done:
            scores = window_scores(_radial_forward(student), val, batch, layers)
            add(score_row("radial_adapted", target, scores, full, sources, names, cfg.seed))
        depth = next(
            r["mean_depth"] for r in rows if r["method"] == "radial_adapted" and r["target_depth"] == target
        )
        if ("radial_frozen", target) not in done:
            scores = window_scores(
                _radial_forward(radial_over(teacher, a.kv_policy, router)), val, batch, layers
            )
            add(score_row("radial_frozen", target, scores, full, sources, names, cfg.seed))
        if ("oracle", target) not in done:
            if not val_contrib:
                val_contrib.append(teacher_contributions(teacher, val, batch)[0])
            routes = oracle_routes(val_contrib[0], tau_for_depth(val_contrib[0], depth))
            fwd = _radial_forward(radial_over(teacher, a.kv_policy), _slices(routes))
            add(
                score_row(
                    "oracle", target, window_scores(fwd, val, batch, layers), full, sources, names, cfg.seed
                )
            )
        if ("static_shortgpt", target) not in done:
            kept = max(1, round(depth))
            drop = set((torch.argsort(bi[1:])[: layers - kept] + 1).tolist())
            keep = [i for i in range(layers) if i not in drop]
            routes = static_routes((len(val), seq), keep, layers)
            fwd = _radial_forward(radial_over(teacher, a.kv_policy), _slices(routes))
            add(
                score_row(
                    "static_shortgpt",
                    target,
                    window_scores(fwd, val, batch, layers),
                    full,
                    sources,
                    names,
                    cfg.seed,
                )
            )
        summary = _write_results(
            rows, bi, names, sources, out_dir
        )  # after every target: a partial run has one
    return summary


def _write_results(
    rows: list[dict], bi: torch.Tensor, names: list[str], sources: np.ndarray, out_dir: Path
) -> dict:
    """curve.json (rows, block influence, the sample's windows per source) and the curve's CSV and plot."""
    summary = {
        "rows": rows,
        "block_influence": bi.tolist(),
        "sources": names,
        "source_windows": {n: int((sources == i).sum()) for i, n in enumerate(names)},
    }
    atomic_write(out_dir / "curve.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    write_curve(rows, out_dir)
    return summary


def write_curve(rows: list[dict], out_dir: Path) -> None:
    """The perplexity-depth curve as CSV and as a plot (HTML, and PNG when kaleido can)."""
    import pandas as pd
    import plotly.graph_objects as go

    table = pd.DataFrame(rows).sort_values(["method", "mean_depth"])
    atomic_write(out_dir / "curve.csv", lambda p: table.to_csv(p, index=False))
    labels = {
        "radial_adapted": "radial, router and layers adapted (KL to the full model)",
        "radial_frozen": "radial router over frozen layers (before adaptation)",
        "oracle": "contribution oracle over frozen layers",
        "static_shortgpt": "static removal (ShortGPT BI)",
        "sequential": "full SmolLM2-135M",
    }
    fig = go.Figure()
    for method, label in labels.items():
        part = table[table["method"] == method]
        fig.add_trace(
            go.Scatter(
                x=part["mean_depth"],
                y=part["perplexity"],
                mode="lines+markers",
                name=label,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": part["perplexity_hi"] - part["perplexity"],
                    "arrayminus": part["perplexity"] - part["perplexity_lo"],
                },
            )
        )
    fig.update_layout(
        title="Held-out perplexity against mean depth (SmolLM2-135M, 30 layers; representative validation)",
        xaxis_title="mean layers visited per token",
        yaxis_title="perplexity (95% bootstrap interval over windows)",
        yaxis_type="log",
        template="plotly_white",
    )
    fig.write_html(out_dir / "curve.html", include_plotlyjs="cdn")
    try:
        fig.write_image(out_dir / "curve.png", width=900, height=520)
    except Exception as exc:  # no kaleido/Chromium: the HTML and CSV are written anyway
        print(f"PNG not written: {exc}", file=sys.stderr)
