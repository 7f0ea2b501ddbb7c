"""Post-training distillation of a radial router onto frozen SmolLM2-135M, and its static baseline.

CPU-cheap method (no backpropagation through the frozen layers):

1. The teacher (the sequential model) runs once over training windows; each token's per-layer
   residual contribution ||h_{l+1} - h_l|| / ||h_l|| is kept.
2. For a threshold tau (the compute penalty: a layer must change a token by at least tau to be
   worth its cost), the *oracle route* visits layer 0 and every layer whose contribution is >= tau.
3. The radial model (teacher layers, new router) runs those oracle routes; the router learns by
   cross-entropy to pick, from the hidden state it would see after each visit and the step, the
   next layer of the oracle route (or exit).
4. On held-out text the router then routes by itself (argmax), and perplexity and mean depth give
   one point of the trade-off curve per tau.

The static baseline removes whole layers with the lowest ShortGPT Block Influence,
BI_l = 1 - mean cos(h_l, h_{l+1}), measured on the same training windows, at the same depths.
Skipped layers' KV entries are copied from the token's hidden state (`kv_policy = "copy"`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radsim.models.llama import Llama, lm_loss
from radsim.models.radial import EXIT, Radial, RadialConfig, Router
from radsim.train import corpus
from radsim.train.config import RunConfig
from radsim.train.loop import text_splits


def radial_over(teacher: Llama, kv_policy: str, router: Router | None = None) -> Radial:
    """A radial network over the teacher's frozen layers (skip only: one pass, up to L visits)."""
    cfg = RadialConfig(base=teacher.cfg, max_steps=teacher.cfg.num_layers, max_passes=1, kv_policy=kv_policy)
    model = Radial(cfg)
    model.model = teacher
    if router is not None:
        model.router = router
    return model.eval()


@torch.no_grad()
def teacher_contributions(
    teacher: Llama, windows: np.ndarray, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token per-layer contributions (N, T, L) in fp16, and ShortGPT Block Influence per layer."""
    contrib, cos_sum, count = [], torch.zeros(teacher.cfg.num_layers), 0
    for i in range(0, len(windows), batch):
        hs = torch.stack(teacher.hidden_states(torch.from_numpy(windows[i : i + batch])))  # (L+1, B, T, d)
        delta = (hs[1:] - hs[:-1]).norm(dim=-1) / hs[:-1].norm(dim=-1).clamp_min(1e-12)
        contrib.append(delta.permute(1, 2, 0).half())
        cos_sum += F.cosine_similarity(hs[1:], hs[:-1], dim=-1).sum(dim=(1, 2))
        count += hs.shape[1] * hs.shape[2]
    return torch.cat(contrib), 1.0 - cos_sum / count


def oracle_routes(contrib: torch.Tensor, tau: float) -> torch.Tensor:
    """Routes (N, T, L) visiting layer 0 and every layer with contribution >= tau, in order."""
    layers = contrib.shape[-1]
    keep = contrib.float() >= tau
    keep[..., 0] = True
    order = torch.where(keep, torch.arange(layers), torch.tensor(layers)).sort(dim=-1).values
    nxt = order[..., 1:]
    routes = torch.where(nxt == layers, torch.tensor(EXIT), nxt)
    return torch.cat([routes, torch.full_like(routes[..., :1], EXIT)], dim=-1)


def static_routes(shape: tuple[int, int], keep_layers: list[int], layers: int) -> torch.Tensor:
    """The same route for every token: the kept layers in order."""
    route = torch.full((layers,), EXIT, dtype=torch.long)
    route[: len(keep_layers) - 1] = torch.tensor(sorted(keep_layers)[1:], dtype=torch.long)
    return route.expand(*shape, layers)


@torch.no_grad()
def router_examples(model: Radial, windows: np.ndarray, routes: torch.Tensor, batch: int):
    """(hidden fp16, step, current layer, target) of every decision along the forced oracle routes."""
    hidden, step, layer, target = [], [], [], []
    for i in range(0, len(windows), batch):
        out = model(torch.from_numpy(windows[i : i + batch]), routes=routes[i : i + batch], record=True)
        for v in out.visits:
            hidden.append(v.hidden.half())
            step.append(v.step)
            layer.append(torch.full_like(v.step, v.layer))
            target.append(torch.where(v.choice == EXIT, torch.tensor(model.cfg.base.num_layers), v.choice))
    return torch.cat(hidden), torch.cat(step), torch.cat(layer), torch.cat(target)


def fit_router(cfg: RadialConfig, examples, epochs: int, seed: int, batch: int = 4096) -> Router:
    """Cross-entropy training of a fresh router on oracle decisions (skip-only mask as in routing)."""
    torch.manual_seed(seed)
    router = Router(cfg)
    hidden, step, layer, target = examples
    n_layers = cfg.base.num_layers
    allowed = torch.arange(n_layers + 1).unsqueeze(0) > layer.unsqueeze(1)
    allowed[:, n_layers] = True
    opt = torch.optim.AdamW(router.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(target), generator=gen).split(batch):
            logits = router(hidden[idx].float(), step[idx]).masked_fill(~allowed[idx], float("-inf"))
            loss = F.cross_entropy(logits, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return router.eval()


@torch.no_grad()
def evaluate_routes(
    model: Radial, windows: np.ndarray, batch: int, routes: torch.Tensor | None = None
) -> dict:
    """Held-out perplexity and mean depth (over predicted tokens) with the router or forced routes."""
    total, count, depth = 0.0, 0, 0.0
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(windows[i : i + batch])
        out = model(x, routes=None if routes is None else routes[i : i + batch])
        total += lm_loss(out.logits, x, reduction="sum").item()
        count += x[:, 1:].numel()
        depth += out.depth[:, :-1].float().sum().item()
    return {"perplexity": math.exp(total / count), "mean_depth": depth / count, "tokens": count}


def distill(cfg: RunConfig, out_dir: Path) -> dict:
    """The whole trade-off curve: a router per threshold, and the static baseline at equal depths."""
    from radsim.models import smollm2

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    d, seq, batch = cfg.distill, cfg.data.seq_len, cfg.data.batch
    splits = text_splits()
    train = np.asarray(corpus.load_split(splits, "train"))
    starts = rng.integers(0, len(train) - seq, size=d.train_tokens // seq)
    train_windows = np.stack([train[s : s + seq] for s in starts]).astype(np.int64)
    val_windows = corpus.windows(corpus.load_split(splits, "val"), seq, d.eval_tokens)
    teacher = smollm2.load_model()
    for p in teacher.parameters():
        p.requires_grad_(False)
    start = time.time()
    contrib, bi = teacher_contributions(teacher, train_windows, batch)
    layers = teacher.cfg.num_layers
    shape = (len(val_windows), seq)
    sequential = static_routes(shape, list(range(layers)), layers)
    full = evaluate_routes(radial_over(teacher, d.kv_policy), val_windows, batch, sequential)
    rows = [{"method": "sequential", "tau": None, "layers_kept": layers, **full}]
    out_dir.mkdir(parents=True, exist_ok=True)
    for tau in d.thresholds:
        routes = oracle_routes(contrib, tau)
        examples = router_examples(radial_over(teacher, d.kv_policy), train_windows, routes, batch)
        router = fit_router(radial_over(teacher, d.kv_policy).cfg, examples, d.router_epochs, cfg.seed)
        result = evaluate_routes(radial_over(teacher, d.kv_policy, router), val_windows, batch)
        rows.append({"method": "radial", "tau": tau, "layers_kept": None, **result})
        torch.save(router.state_dict(), out_dir / f"router-tau{tau:g}.pt")
        print(f"tau {tau:g}: {result}", flush=True)
    for kept in sorted({round(r["mean_depth"]) for r in rows if r["method"] == "radial"}):
        drop = torch.argsort(bi[1:])[: layers - kept] + 1  # ShortGPT: lowest Block Influence first
        keep = [i for i in range(layers) if i not in set(drop.tolist())]
        result = evaluate_routes(
            radial_over(teacher, d.kv_policy), val_windows, batch, static_routes(shape, keep, layers)
        )
        rows.append({"method": "static_shortgpt", "tau": None, "layers_kept": kept, **result})
        print(f"static {kept}: {result}", flush=True)
    summary = {"rows": rows, "block_influence": bi.tolist(), "seconds": time.time() - start}
    (out_dir / "curve.json").write_text(json.dumps(summary, indent=2))
    write_curve(summary, out_dir)
    return summary


def write_curve(summary: dict, out_dir: Path) -> None:
    """The trade-off curve as CSV and as a plot (HTML, and PNG when kaleido can)."""
    import pandas as pd
    import plotly.graph_objects as go

    table = pd.DataFrame(summary["rows"])
    table.to_csv(out_dir / "curve.csv", index=False)
    fig = go.Figure()
    labels = {
        "radial": "radial router (per token)",
        "static_shortgpt": "static removal (ShortGPT BI)",
        "sequential": "sequential SmolLM2-135M",
    }
    for method, label in labels.items():
        part = table[table["method"] == method].sort_values("mean_depth")
        text = [
            f"tau={t}" if t == t and t is not None else f"{k} layers kept"
            for t, k in zip(part["tau"], part["layers_kept"], strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                x=part["mean_depth"],
                y=part["perplexity"],
                mode="lines+markers",
                name=label,
                text=text,
                hovertemplate="%{text}<br>mean depth %{x:.2f}<br>perplexity %{y:.1f}",
            )
        )
    fig.update_layout(
        title="Held-out perplexity against mean dynamic depth (SmolLM2-135M, 30 layers)",
        xaxis_title="mean layers visited per token",
        yaxis_title="perplexity (validation split)",
        yaxis_type="log",
        template="plotly_white",
    )
    fig.write_html(out_dir / "curve.html", include_plotlyjs="cdn")  # small file; the PNG is the offline copy
    try:
        fig.write_image(out_dir / "curve.png", width=900, height=520)
    except Exception as exc:  # no kaleido/Chromium: the HTML and CSV are written anyway
        print(f"PNG not written: {exc}")
