"""`radsim capture`: run a model over held-out text and record every layer visit as a routing trace.

Models: SmolLM2-135M as the sequential baseline (`--model smollm2`), a distilled radial router over
it (`--router runs/.../router-tauX.pt`), or a model trained by `radsim train` (`--run runs/NAME`:
radial, MoD, dense, Finedeep, DLO). A Finedeep row's `entropy` is its routers' entropy over experts
(mean over the layer's sub-layers); a DLO row's `prob` is the router's probability of running the
layer's MLP (its `entropy` is 0), and its `kv_action` is KV_COMPUTE where only attention ran.
Sequences are consecutive windows of the test split (never seen in training), run in batches of
`--batch`; the trace keeps each sequence's batch id. Perplexity on the captured tokens goes into
the trace's metadata (`quality`).
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from radsim.models.dlo import DLO
from radsim.models.early_exit import EarlyExit
from radsim.models.finedeep import Finedeep, router_entropy
from radsim.models.llama import KV_COMPUTE, KV_WRITE, Llama, lm_loss
from radsim.models.mod import MoD
from radsim.models.radial import Radial
from radsim.progress import bar
from radsim.routes.trace import COLUMNS, Trace
from radsim.train.adapt import kl_per_token

WINDOWS_NOTE = "windows of consecutive test-split tokens; documents joined by EOS"
#: `radsim capture --windows proportional`: what the trace's meta says of its windows
PROPORTIONAL_NOTE = (
    "windows drawn at random from every source of the test split in proportion to its tokens "
    "(radsim.train.corpus.representative_windows, seed {seed}); documents joined by EOS"
)
CaptureModel = Radial | MoD | Finedeep | DLO | EarlyExit | Llama  # the models a trace can be captured from


def git_commit() -> str:
    """HEAD of the repository radsim runs from, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name() -> str:
    """The CPU (or GPU) the capture ran on."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def _frame(
    tokens, layer, pass_index, step, prob, prob_exit, entropy, stats, seq, pos, tok, batch_id
) -> pd.DataFrame:
    n = len(tokens)
    return pd.DataFrame(
        {
            "seq": seq[tokens],
            "batch": np.full(n, batch_id),
            "pos": pos[tokens],
            "token": tok[tokens],
            "step": step,
            "layer": np.full(n, layer),
            "pass": pass_index if np.ndim(pass_index) else np.full(n, pass_index),
            "depth": np.zeros(n),
            "prob": prob,
            "prob_exit": prob_exit,
            "entropy": entropy,
            "attn_ratio": stats.attn_ratio.numpy(),
            "attn_ratio_out": stats.attn_ratio_out.numpy(),
            "mlp_ratio": stats.mlp_ratio.numpy(),
            "mlp_ratio_out": stats.mlp_ratio_out.numpy(),
            "kv_action": np.full(n, KV_WRITE),
        }
    )


@torch.no_grad()
def run_batch(
    model: CaptureModel, x: torch.Tensor, first_seq: int, batch_id: int
) -> tuple[pd.DataFrame, torch.Tensor]:
    """Visit rows of one batch and its logits."""
    b, t = x.shape
    seq = np.repeat(np.arange(first_seq, first_seq + b), t)
    pos, tok = np.tile(np.arange(t), b), x.flatten().numpy()
    ids = (seq, pos, tok, batch_id)
    frames = []
    if isinstance(model, Radial):
        out = model(x, record=True)
        for v in out.visits:
            frames.append(
                _frame(
                    v.stats.tokens.numpy(),
                    v.layer,
                    v.pass_index,
                    v.step.numpy(),
                    v.prob.numpy(),
                    v.prob_exit.numpy(),
                    v.entropy.numpy(),
                    v.stats,
                    *ids,
                )
            )
        logits = out.logits
    elif isinstance(model, MoD):
        out = model(x, causal=True, record=True)
        steps = torch.zeros(b * t, dtype=torch.long)
        for layer, (st, score) in enumerate(zip(out.stats, out.scores, strict=True)):
            flat = st.tokens
            prob = np.ones(len(flat)) if score is None else score.flatten()[flat].numpy()
            frames.append(
                _frame(
                    flat.numpy(),
                    layer,
                    0,
                    steps[flat].numpy(),
                    prob,
                    np.zeros(len(flat)),
                    np.zeros(len(flat)),
                    st,
                    *ids,
                )
            )
            steps[flat] += 1
        logits = out.logits
    elif isinstance(model, EarlyExit):
        out = model(x, record=True)
        for layer, (st, conf) in enumerate(zip(out.stats, out.confidence, strict=True)):
            assert st is not None  # record=True records them
            flat = st.tokens
            n = len(flat)
            # every token visits layers 0.. in order until it exits: its step is the layer; prob_exit
            # is the shared head's top-1 confidence after the visit (the token exits once it
            # reaches the threshold)
            conf_flat = conf.flatten()[flat].numpy()
            frames.append(
                _frame(
                    flat.numpy(), layer, 0, np.full(n, layer), np.ones(n), conf_flat, np.zeros(n), st, *ids
                )
            )
        logits = out.logits
    elif isinstance(model, Finedeep | DLO):
        frames, logits = _all_layers(model, x, ids)
    else:
        pos_t, h = model.positions(x), model.embed_tokens(x)
        every = torch.ones_like(x, dtype=torch.bool)
        for layer, block in enumerate(model.blocks()):
            h, st = block.visit(h, pos_t, every, model.rope, stats=True)
            assert st is not None  # stats=True records them
            n = len(st.tokens)
            frames.append(
                _frame(
                    st.tokens.numpy(),
                    layer,
                    0,
                    np.full(n, layer),
                    np.ones(n),
                    np.zeros(n),
                    np.zeros(n),
                    st,
                    *ids,
                )
            )
        logits = model.lm_head(model.norm(h))
    return pd.concat(frames, ignore_index=True), logits


def _all_layers(model: Finedeep | DLO, x: torch.Tensor, ids) -> tuple[list[pd.DataFrame], torch.Tensor]:
    """Finedeep and DLO rows: every token visits every layer, in order."""
    out = model(x, record=True)
    n = x.numel()
    frames = []
    for layer, st in enumerate(out.stats):
        if isinstance(model, Finedeep):
            prob, entropy = np.ones(n), router_entropy(out.weights[layer]).flatten().numpy()
            action = np.full(n, KV_WRITE)
        else:
            # entropy 0: a binary router's entropy is a function of prob, and the file stays small
            prob, entropy = out.p_run[layer].flatten().numpy(), np.zeros(n)
            action = np.where(out.run[layer].flatten().numpy(), KV_WRITE, KV_COMPUTE)
        frame = _frame(st.tokens.numpy(), layer, 0, np.full(n, layer), prob, np.zeros(n), entropy, st, *ids)
        frame["kv_action"] = action
        frames.append(frame)
    return frames, out.logits


def capture(
    model: CaptureModel, windows: np.ndarray, batch: int, meta: dict, teacher: Llama | None = None
) -> Trace:
    """Run every window and assemble the trace (depth filled in, rows sorted, dtypes narrowed).

    With a `teacher` (the full model a radial one was distilled from), the quality also gives the
    share of predicted tokens whose top-1 next token agrees with the teacher's, and the mean
    KL(teacher || model) of the next-token distributions, over the same tokens.
    """
    frames, loss, count, agree, kl = [], 0.0, 0, 0, 0.0
    progress = bar(len(windows), "windows", sys.stderr, desc="capture: ")
    for batch_id, i in enumerate(range(0, len(windows), batch)):
        x = torch.from_numpy(windows[i : i + batch])
        frame, logits = run_batch(model, x, i, batch_id)
        frames.append(frame)
        loss, count = loss + lm_loss(logits, x, reduction="sum").item(), count + x[:, 1:].numel()
        if teacher is not None:
            with torch.no_grad():
                ref = torch.log_softmax(teacher(x).float()[:, :-1], dim=-1)
            agree += int((ref.argmax(-1) == logits[:, :-1].argmax(-1)).sum())
            kl += float(kl_per_token(ref, logits[:, :-1]).sum())
        progress.update(len(x))
    progress.close()
    visits = pd.concat(frames, ignore_index=True).sort_values(["seq", "pos", "step"], kind="stable")
    visits["depth"] = visits.groupby(["seq", "pos"])["step"].transform("size")
    visits = round_floats(visits.reset_index(drop=True).astype(COLUMNS))
    meta = {
        **meta,
        "quality": {
            "perplexity": math.exp(loss / count),
            "loss_nats": loss / count,
            "mean_depth": float(visits.groupby(["seq", "pos"]).size().mean()),
        },
    }
    if teacher is not None:
        meta["quality"] |= {"teacher_top1_agreement": agree / count, "teacher_kl_nats": kl / count}
    return Trace(visits, meta)


def round_floats(visits: pd.DataFrame, mantissa_bits: int = 7) -> pd.DataFrame:
    """Keep `mantissa_bits` of each float32 mantissa (7: within 0.4%), so that traces compress."""
    drop = np.uint32((1 << (23 - mantissa_bits)) - 1)
    for column, dtype in COLUMNS.items():
        if dtype.kind == "f":
            bits = visits[column].to_numpy(dtype=np.float32).view(np.uint32)
            half = np.uint32(1 << (22 - mantissa_bits))
            visits[column] = ((bits + half) & ~drop).view(np.float32)  # round to nearest
    return visits


def model_meta(name: str, kind: str, model: CaptureModel, extra: dict) -> dict:
    """The `model` block of a trace's metadata."""
    if isinstance(model, EarlyExit):
        base = model.model.cfg
        config = asdict(base) | {"early_exit": asdict(model.cfg)}
    else:
        base = model.cfg if isinstance(model, Llama) else model.cfg.base
        config = asdict(model.cfg) if not isinstance(model, Llama) else asdict(base)
    if isinstance(model, Finedeep):
        c = model.cfg
        shape = {"expert_hidden": c.hidden, "router_shape": [base.hidden_size, c.experts]}
        config |= shape | {"router": "sigmoid scores normalised to sum 1, one router per sub-layer"}
    config = json.loads(json.dumps(config))  # tuples as lists, as the trace metadata wants
    return {"name": name, "kind": kind, "num_layers": base.num_layers, "config": config, **extra}


def run_meta(
    model_block: dict,
    kv_policy: str,
    split: str,
    tokens: int,
    seed: int,
    vocab: str,
    windows: str = WINDOWS_NOTE,
) -> dict:
    """Everything a trace records about how it was made (`windows`: how its windows were drawn)."""
    return {
        "schema_version": 1,
        "model": model_block,
        "kv_policy": kv_policy,
        "data": {
            "source": "Debian bible-kjv + python3.11-doc + fortunes (radsim.train.corpus)",
            "split": split,
            "tokens": tokens,
            "vocab": vocab,
            "windows": windows,
        },
        "seed": seed,
        "git_commit": git_commit(),
        "device": device_name(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
    }
