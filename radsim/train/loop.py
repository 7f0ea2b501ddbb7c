"""`radsim train CONFIG`: train a radial, MoD, Finedeep or dense model from scratch on real text, or DLO.

Layers and routers learn together. The LM loss trains the layers and, through the straight-through
scaling of each visit's output by p / stop_grad(p), the router; a REINFORCE term with a per-token
reward -(loss + compute_penalty x depth) and a batch-mean baseline teaches the router when skipping,
exiting or reusing pays. MoD trains its top-k routers through the same scaling (sigmoid weight)
and its causal predictors with a binary cross-entropy; Finedeep trains on the LM loss alone. DLO
(`train_dlo`) expands SmolLM2-135M and fine-tunes its new layers and MLP routers (straight-through
hard gates, similarity-guided router targets, a skip-rate term), evaluating SmolLM2 and the
untrained expansion on the same validation windows first. Outputs go to runs/<name>/: the checkpoint
(`model.pt`), `metrics.json` and `log.csv`, each written atomically.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radsim.files import atomic_write
from radsim.models.early_exit import EarlyExit
from radsim.models.finedeep import Finedeep, FinedeepConfig
from radsim.models.llama import Llama, LlamaConfig, lm_loss
from radsim.models.mod import MoD, MoDConfig
from radsim.models.radial import EXIT, Radial, RadialConfig
from radsim.progress import bar
from radsim.train import corpus
from radsim.train.config import RunConfig, run_config_from_dict

if TYPE_CHECKING:
    from radsim.models.dlo import DLO

UNKNOWN = "<unk>"
ScratchModel = Radial | MoD | Finedeep | Llama  # what `build_model` makes


def text_splits() -> dict[str, Path]:
    """Cached token ids (SmolLM2 tokenizer) of the train/val/test text."""
    from radsim.models import smollm2

    tok = smollm2.load_tokenizer()
    return corpus.build_splits(lambda s: tok(s).input_ids, tok.eos_token_id, smollm2.cache_dir() / "corpus")


def source_splits() -> dict[tuple[str, str], Path]:
    """Cached token ids (SmolLM2 tokenizer) of every (split, source) of the text."""
    from radsim.models import smollm2

    tok = smollm2.load_tokenizer()
    return corpus.build_source_splits(
        lambda s: tok(s).input_ids, tok.eos_token_id, smollm2.cache_dir() / "corpus"
    )


def vocab_map(train: np.ndarray, size: int, full: int = 49152) -> np.ndarray:
    """Map SmolLM2 ids to the `size`-1 most frequent training tokens, the rest to <unk> (size-1)."""
    counts = np.bincount(np.asarray(train), minlength=full)
    top = np.argsort(-counts, kind="stable")[: size - 1]
    mapping = np.full(full, size - 1, dtype=np.int64)
    mapping[top] = np.arange(size - 1)
    return mapping


def build_model(cfg: RunConfig, vocab: int) -> ScratchModel:
    """The model a scratch run trains."""
    m = cfg.model
    base = LlamaConfig(
        vocab_size=vocab,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        ffn_size=m.ffn_size,
        max_positions=cfg.data.seq_len,
        rope_theta=10000.0,
    )
    if cfg.kind == "radial_scratch":
        r = cfg.radial
        return Radial(
            RadialConfig(base=base, max_steps=r.max_steps, max_passes=r.max_passes, kv_policy=r.kv_policy)
        )
    if cfg.kind == "mod_scratch":
        return MoD(MoDConfig(base=base, capacity=cfg.mod.capacity, every=cfg.mod.every))
    if cfg.kind == "finedeep_scratch":
        f = cfg.finedeep
        return Finedeep(
            FinedeepConfig(base=base, sub_layers=f.sub_layers, experts=f.experts, expert_size=f.expert_size)
        )
    return Llama(base)


def step_loss(
    model: ScratchModel, x: torch.Tensor, step: int, cfg: RunConfig, penalty: float | None = None
) -> tuple[torch.Tensor, dict]:
    """Training loss of one batch and what to log (`penalty`: a radial router's compute penalty
    now, where a depth target moves it; else `[train].compute_penalty`, ramped)."""
    if isinstance(model, Radial):
        return _radial_loss(model, x, step, cfg, penalty)
    if isinstance(model, MoD):
        out = model(x)
        lm = lm_loss(out.logits, x)
        depth = float(sum(v.float().mean() for v in out.visits))
        return lm + out.predictor_loss, {"lm": lm.item(), "depth": depth}
    if isinstance(model, Finedeep):
        lm = lm_loss(model(x).logits, x)
        return lm, {"lm": lm.item(), "depth": float(model.cfg.base.num_layers)}
    w = cfg.train.exit_loss_weight
    if not w:
        lm = lm_loss(model(x), x)
        return lm, {"lm": lm.item(), "depth": float(model.cfg.num_layers)}
    # LayerSkip's early-exit loss in its rotational curriculum: the shared head (final norm and LM
    # head) also reads the residual stream after layer 1 + step mod (L - 1), one exit per step, so
    # that every exit trains in turn at the cost of one more head
    states = model.hidden_states(x)
    lm = lm_loss(model.lm_head(model.norm(states[-1])), x)
    layer = 1 + step % max(1, model.cfg.num_layers - 1)
    exit_lm = lm_loss(model.lm_head(model.norm(states[layer])), x)
    info = {
        "lm": lm.item(),
        "depth": float(model.cfg.num_layers),
        "exit_layer": layer,
        "exit_lm": exit_lm.item(),
    }
    return lm + w * exit_lm, info


def _radial_loss(
    model: Radial, x: torch.Tensor, step: int, cfg: RunConfig, penalty: float | None = None
) -> tuple[torch.Tensor, dict]:
    """LM loss, plus REINFORCE on the router once the router warm-up is over."""
    t = cfg.train
    if step < t.router_warmup_steps:
        layers = model.cfg.base.num_layers
        steps, n = model.cfg.max_steps, min(model.cfg.max_steps, layers) - 1
        route = torch.full((steps,), EXIT, dtype=torch.long)
        if t.warmup_visits and t.warmup_visits < layers:  # layer 0, then an ordered random subset
            n = min(n, t.warmup_visits - 1)
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            route[:n] = (torch.randperm(layers - 1, generator=g)[:n] + 1).sort().values
        else:
            route[:n] = torch.arange(1, n + 1)  # layers 0, 1, ... in order
        out = model(x, routes=route.expand(*x.shape, steps))
        lm = lm_loss(out.logits, x)
        info = {"lm": lm.item(), "depth": out.depth.float().mean().item()}
        if t.depth_target:  # the log's columns from the start
            info["penalty"] = t.compute_penalty
        return lm, info | ({"balance": 0.0} if t.balance_weight else {})
    ramp = (step - t.router_warmup_steps + 1) / t.penalty_ramp_steps if t.penalty_ramp_steps else 1.0
    if penalty is None:
        penalty = t.compute_penalty * min(1.0, ramp)
    out = model(x, mode="sample", straight_through=True)
    ce = lm_loss(out.logits, x, reduction="none")  # (B, T-1)
    depth = out.depth[:, :-1].float()
    reward = -(ce.detach() + penalty * depth)
    advantage = reward - reward.mean()
    router = -(advantage * out.log_prob[:, :-1]).mean() - t.entropy_bonus * out.entropy[:, :-1].mean()
    info = {"lm": ce.mean().item(), "depth": depth.mean().item()}
    if t.depth_target:
        info["penalty"] = penalty
    if t.balance_weight:
        balance = out.balance_loss()
        router = router + t.balance_weight * balance
        info["balance"] = balance.item()
    return ce.mean() + router, info


@torch.no_grad()
def window_losses(
    model: ScratchModel | EarlyExit, windows: np.ndarray, batch: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Per window: summed next-token loss and summed depth (visits) of its predicted tokens, routing
    as a decoder would (argmax, causal)."""
    model.eval()
    losses, depths = [], []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i : i + batch])
            if isinstance(model, Radial | EarlyExit):
                out = model(x)
                logits, d = out.logits, out.depth[:, :-1].double().sum(-1)
            elif isinstance(model, MoD):
                out = model(x, causal=True)
                logits = out.logits
                d = sum(v[:, :-1].double().sum(-1) for v in out.visits)
            else:
                layers = model.cfg.base.num_layers if isinstance(model, Finedeep) else model.cfg.num_layers
                logits = model(x).logits if isinstance(model, Finedeep) else model(x)
                d = torch.full((len(x),), float(layers * (x.shape[1] - 1)), dtype=torch.float64)
            losses.append(lm_loss(logits, x, reduction="none").double().sum(-1).numpy())
            depths.append(np.asarray(d, dtype=np.float64))
    model.train()
    return np.concatenate(losses), np.concatenate(depths)


def evaluate(
    model: ScratchModel,
    windows: np.ndarray,
    batch: int = 8,
    sources: np.ndarray | None = None,
    names: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """Held-out loss, perplexity and mean depth, routing as a decoder would (argmax, causal).

    With `sources` (each window's source, an index into `names`): the perplexity's 95% bootstrap
    interval over windows and the perplexity and depth of every source too."""
    loss, depth = window_losses(model, windows, batch)
    return summarize_windows(loss, depth, windows.shape[1] - 1, sources, names, seed)


def summarize_windows(
    loss: np.ndarray,
    depth: np.ndarray,
    predicted: int,
    sources: np.ndarray | None = None,
    names: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """`evaluate`'s figures from per-window summed losses and depths (`predicted` tokens a window)."""
    tokens = np.full(len(loss), predicted, dtype=np.float64)
    mean = float(loss.sum() / tokens.sum())
    result = {"loss": mean, "perplexity": math.exp(mean), "mean_depth": float(depth.sum() / tokens.sum())}
    if sources is None or names is None:
        return result
    from radsim.train.adapt import perplexity_interval

    result["perplexity_lo"], result["perplexity_hi"] = perplexity_interval(loss, tokens, seed)
    for i, name in enumerate(names):
        part = sources == i
        result[f"perplexity[{name}]"] = float(np.exp(loss[part].sum() / tokens[part].sum()))
        result[f"mean_depth[{name}]"] = float(depth[part].sum() / tokens[part].sum())
    result["windows"], result["tokens"] = len(loss), int(tokens.sum())
    return result


def validation_sample(
    seq_len: int, tokens: int, seed: int, mapping: np.ndarray | None = None, split: str = "val"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The representative sample of a split (`corpus.representative_windows` over every source of
    it, in proportion; the validation split unless told), in a scratch model's vocabulary where
    `mapping` is given: windows, each window's source, the source names."""
    by_source = source_splits()
    names = sorted(corpus.SOURCES)
    arrays = {}
    for n in names:
        ids = np.load(by_source[(split, n)], mmap_mode="r")
        arrays[n] = mapping[np.asarray(ids)] if mapping is not None else ids
    windows, sources = corpus.representative_windows(arrays, seq_len, tokens, seed)
    return windows, sources, names


def lr_fraction(step: int, steps: int, warmup: int) -> float:
    """Fraction of the peak learning rate at `step`: linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: RunConfig) -> float:
    """The scratch runs' learning rate at `step` (`lr_fraction` of `[train].lr`)."""
    t = cfg.train
    return t.lr * lr_fraction(step, t.steps, t.warmup_steps)


def train_scratch(cfg: RunConfig, out_dir: Path) -> dict:
    """Train, evaluate on the validation split and save; returns the metrics.

    With `[train].checkpoint_every`, the model, optimiser, random states and log are written to
    `out_dir/checkpoint.pt` every so many steps, and a rerun resumes there: the training windows
    are drawn from one seeded stream, fast-forwarded past the steps done, so that a resumed run
    makes the numbers an uninterrupted one would.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    splits = text_splits()
    train_ids = corpus.load_split(splits, "train")
    mapping = vocab_map(train_ids, cfg.data.vocab) if cfg.data.vocab else np.arange(49152)
    vocab = cfg.data.vocab or 49152
    train = mapping[np.asarray(train_ids)]
    val, val_sources, names = validation_sample(
        cfg.data.seq_len, cfg.train.eval_tokens, cfg.seed, mapping if cfg.data.vocab else None
    )
    model = build_model(cfg, vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(0.9, 0.95), weight_decay=0.1)
    log: list[dict] = []
    first = 0
    t = cfg.train
    penalty = t.compute_penalty if t.depth_target else None  # a multiplier held at the depth target
    error = 0.0  # the latest step's (depth - depth_target) / num_layers: the proportional term's
    ckpt_path = out_dir / "checkpoint.pt"
    if cfg.train.checkpoint_every and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        first, log, penalty = ckpt["step"], ckpt["log"], ckpt.get("penalty", penalty)
        error = ckpt.get("depth_error", 0.0)
        for _ in range(first):  # the windows of the steps done, drawn and dropped
            rng.integers(0, len(train) - cfg.data.seq_len, size=cfg.data.batch)
        print(f"{cfg.name}: resuming at step {first}", file=sys.stderr, flush=True)
    start = time.time() - (log[-1]["elapsed_s"] if log else 0.0)
    batches = corpus.batches(train, cfg.data.seq_len, cfg.data.batch, rng)
    progress = bar(cfg.train.steps, "steps", sys.stderr, initial=first, desc="training: ")
    for step in range(first, cfg.train.steps):
        batch = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        seen = None if penalty is None else penalty + t.penalty_kp * error  # PI control of depth
        loss, info = step_loss(model, torch.from_numpy(batch), step, cfg, seen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if penalty is not None and step >= t.router_warmup_steps:
            error = (info["depth"] - t.depth_target) / cfg.model.num_layers
            penalty += t.penalty_lr * error
        log.append({"step": step, "elapsed_s": time.time() - start, **info})
        progress.set_postfix_str(f"lm {info['lm']:.3f}, depth {info['depth']:.2f}", refresh=False)
        progress.update(1)
        every = cfg.train.checkpoint_every
        if every and (step + 1) % every == 0 and step + 1 < cfg.train.steps:
            out_dir.mkdir(parents=True, exist_ok=True)
            state = {
                "step": step + 1,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "log": log,
                "penalty": penalty,
                "depth_error": error,
            }
            _atomic(ckpt_path, functools.partial(torch.save, state))
    progress.close()
    metrics = {
        "val": evaluate(model, val, sources=val_sources, names=names, seed=cfg.seed),
        "train_seconds": time.time() - start,
        "params": _params(model),
    }
    save_run(out_dir, cfg, model, mapping if cfg.data.vocab else None, metrics, log)
    return metrics


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_run(out_dir: Path, cfg: RunConfig, model, mapping, metrics: dict, log: list[dict]) -> None:
    """Write the checkpoint, metrics and training log atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {"run": asdict(cfg), "state_dict": model.state_dict(), "vocab_map": mapping}
    _atomic(out_dir / "model.pt", lambda p: torch.save(ckpt, p))
    _atomic(out_dir / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
    lines = [",".join(log[0])] + [",".join(str(v) for v in row.values()) for row in log] if log else []
    _atomic(out_dir / "log.csv", lambda p: p.write_text("\n".join(lines) + "\n"))


def _atomic(path: Path, write) -> None:
    atomic_write(path, write)  # a uniquely named temporary beside the file, then os.replace


def load_run(run_dir: Path) -> tuple[RunConfig, torch.nn.Module, np.ndarray | None]:
    """A trained scratch (or DLO) model from its run folder."""
    ckpt = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    cfg = run_config_from_dict(ckpt["run"])
    model = build_dlo(cfg) if cfg.kind == "dlo_smollm2" else build_model(cfg, cfg.data.vocab or 49152)
    model.load_state_dict(ckpt["state_dict"])
    return cfg, model.eval(), ckpt["vocab_map"]


def build_dlo(cfg: RunConfig) -> DLO:
    """SmolLM2-135M expanded with DLO's new layers and routers (untrained)."""
    from radsim.models import smollm2
    from radsim.models.dlo import expand

    d = cfg.dlo
    return expand(smollm2.load_model(), [int(i) for i in d.insert_after], router_bias=d.router_bias)


def dlo_loss(model: DLO, x: torch.Tensor, cfg: RunConfig) -> tuple[torch.Tensor, dict]:
    """LM loss + similarity-guided router BCE + squared deviation of the mean skip rate from its target.

    The router BCE pulls p_run towards 0 where cos(layer input, full layer output) > sim_threshold
    and towards 1 elsewhere (DLO's similarity guide); the rate term holds the share of skipped
    (token, layer) MLPs near skip_target.
    """
    d = cfg.dlo
    out = model(x, train=True, sim_threshold=d.sim_threshold)
    lm = lm_loss(out.logits, x)
    p_run = torch.stack(out.p_run)  # (L, B, T)
    target_run = (~torch.stack(out.skip_target)).float()
    sim = torch.nn.functional.binary_cross_entropy(p_run, target_run)
    # the hard skip rate in the forward pass, the soft one's gradient (a soft rate could sit at the
    # target while no MLP is skipped)
    hard = 1.0 - torch.stack(out.run).float().mean()
    skip = hard + (1.0 - p_run.mean()) - (1.0 - p_run.mean()).detach()
    rate = (skip - d.skip_target) ** 2
    hard_skip = hard.item()
    info = {"lm": lm.item(), "depth": (1.0 - hard_skip) * len(out.run), "skip": hard_skip}
    info["sim_skip"] = 1.0 - target_run.mean().item()
    return lm + d.sim_weight * sim + d.rate_weight * rate, info


@torch.no_grad()
def evaluate_dlo(model: DLO | Llama, windows: np.ndarray, batch: int = 8) -> dict:
    """Held-out loss and perplexity with hard MLP skips; MLP layers run per token and GEMM FLOPs."""
    from radsim.models.dlo import DLO, gemm_flops_per_token

    model.eval()
    total, count, mlp_layers = 0.0, 0, 0.0
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(windows[i : i + batch])
        if isinstance(model, DLO):
            out = model(x)
            logits, ran = out.logits, float(sum(r[:, :-1].float().sum() for r in out.run))
        else:
            logits, ran = model(x), float(model.cfg.num_layers * x[:, :-1].numel())
        total += lm_loss(logits, x, reduction="sum").item()
        count, mlp_layers = count + x[:, 1:].numel(), mlp_layers + ran
    base = model.cfg.base if isinstance(model, DLO) else model.cfg
    routers = base.num_layers if isinstance(model, DLO) else 0
    mean_mlp = mlp_layers / count
    return {
        "loss": total / count,
        "perplexity": math.exp(total / count),
        "layers": base.num_layers,
        "mean_mlp_layers": mean_mlp,
        "skip_rate": 1.0 - mean_mlp / base.num_layers,
        "gemm_flops_per_token": gemm_flops_per_token(base, mean_mlp, base.num_layers, routers),
        "params": _params(model),
    }


def train_dlo(cfg: RunConfig, out_dir: Path) -> dict:
    """Expand SmolLM2-135M, fine-tune the new layers and routers, evaluate against both baselines."""
    from radsim.models import smollm2

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    d, splits = cfg.dlo, text_splits()
    train = np.asarray(corpus.load_split(splits, "train"))
    val = corpus.windows(np.asarray(corpus.load_split(splits, "val")), d.eval_seq_len, d.eval_tokens)
    metrics: dict[str, Any] = {"smollm2": evaluate_dlo(smollm2.load_model(), val)}
    print("smollm2", metrics["smollm2"], flush=True)
    model = build_dlo(cfg)
    metrics["expanded_untrained"] = evaluate_dlo(model, val)
    print("expanded, untrained", metrics["expanded_untrained"], flush=True)
    model.train()
    new = set(model.cfg.expanded_layers)
    groups: list[dict[str, Any]] = [
        {"params": list(model.routers.parameters()), "lr": d.router_lr, "peak": d.router_lr}
    ]
    groups.append(
        {"params": [p for i in new for p in model.model.layers[i].parameters()], "peak": cfg.train.lr}
    )
    old = [p for i, layer in enumerate(model.model.layers) if i not in new for p in layer.parameters()]
    old += list(model.model.embed_tokens.parameters()) + list(model.model.norm.parameters())
    if d.base_lr > 0:
        groups.append({"params": old, "peak": d.base_lr})
    else:
        for p in old:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), weight_decay=0.0)
    log, start = [], time.time()
    batches = corpus.batches(train, cfg.data.seq_len, cfg.data.batch, rng)
    progress = bar(cfg.train.steps, "steps", sys.stderr, desc="training DLO: ")
    for step in range(cfg.train.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg) * group["peak"] / cfg.train.lr
        loss, info = dlo_loss(model, torch.from_numpy(next(batches)), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        log.append({"step": step, "elapsed_s": time.time() - start, **info})
        progress.set_postfix_str(
            f"lm {info['lm']:.3f}, skip {info['skip']:.3f}, sim-skip {info['sim_skip']:.3f}", refresh=False
        )
        progress.update(1)
    progress.close()
    metrics["train_seconds"] = time.time() - start
    metrics["dlo"] = evaluate_dlo(model, val)
    metrics["expanded_layers"] = list(model.cfg.expanded_layers)
    save_run(out_dir, cfg, model, None, metrics, log)
    return metrics
