"""DLO (Tan et al., 2407.11030): a pretrained stack expanded with new layers, and per-token MLP skipping.

Expansion: after each pretrained layer listed in `insert_after`, a new layer is inserted, a copy
of that layer with its output projections (attention `o_proj`, MLP `down_proj`) zeroed, so the new
layer adds nothing and the expanded model computes exactly what the pretrained one does.

Skipping: every layer has a router, a linear map of the layer's normalised input (its
`input_layernorm` output) to the probability `p_run` that the layer's MLP runs for this token.
Attention runs for every token in every layer (DLO's default: the KV cache stays complete, KV
policy ``compute``); only the MLP is skipped, where p_run < `threshold` (hard decisions, as a
decoder takes them). In training (`train=True`) every MLP runs and its output is multiplied by the
straight-through gate hard + p_run - stop_grad(p_run): the forward pass is the hard-routed model,
and the LM loss reaches the routers. The similarity-guided target of each router is "skip" where the
cosine similarity between the layer's input and its (full) output exceeds `sim_threshold` (the
layer barely changes the token), and a skip-rate term pulls the mean skip probability to a target;
both losses live in `radsim.train.loop`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from radsim.models.llama import Block, Llama, LlamaConfig, VisitStats


@dataclass(frozen=True)
class DLOConfig:
    """The expanded shape and which of its layers are new."""

    base: LlamaConfig  # the expanded stack (num_layers counts the new layers)
    expanded_layers: tuple[int, ...] = ()  # indices, in the expanded stack, of the inserted layers
    threshold: float = 0.5  # the MLP runs where p_run >= threshold
    router_bias: float = 1.0  # initial router logit: p_run = 0.73, every MLP runs at first

    def __post_init__(self) -> None:
        if any(not 0 <= i < self.base.num_layers for i in self.expanded_layers):
            raise ValueError(f"expanded_layers {self.expanded_layers} outside 0..{self.base.num_layers - 1}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")


def expanded_indices(num_pretrained: int, insert_after: Sequence[int]) -> tuple[int, ...]:
    """Where the new layers sit in the expanded stack when inserted after `insert_after` (pretrained ids)."""
    after = sorted(set(insert_after))
    if any(not 0 <= i < num_pretrained for i in after):
        raise ValueError(f"insert_after {list(insert_after)} outside 0..{num_pretrained - 1}")
    return tuple(i + 1 + k for k, i in enumerate(after))


@dataclass
class DLOOutput:
    """Logits and, per layer (B, T): p_run, the hard run decision, and the skip target (training)."""

    logits: torch.Tensor
    p_run: list[torch.Tensor]
    run: list[torch.Tensor]
    skip_target: list[torch.Tensor]
    stats: list[VisitStats | None]


class DLO(nn.Module):
    """An expanded Llama stack with a per-layer MLP router."""

    def __init__(self, cfg: DLOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Llama(cfg.base)
        self.routers = _routers(cfg.base.hidden_size, cfg.base.num_layers, cfg.router_bias)

    def forward(
        self, idx: torch.Tensor, train: bool = False, sim_threshold: float = 1.0, record: bool = False
    ) -> DLOOutput:
        m, cfg = self.model, self.cfg
        pos = m.positions(idx)
        h = m.embed_tokens(idx)
        p_runs: list[torch.Tensor] = []
        runs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        stats: list[VisitStats | None] = []
        for i, layer in enumerate(m.blocks()):
            x = layer.input_layernorm(h)
            p_run = torch.sigmoid(self.routers[i](x).squeeze(-1).float())  # (B, T)
            run = p_run >= cfg.threshold
            attn = layer.self_attn(x, pos, x, pos, None, m.rope)
            mid = h + attn
            mlp = layer.mlp(layer.post_attention_layernorm(mid))
            gate = run.float() + p_run - p_run.detach() if train else run.float()
            out = mid + mlp * gate.unsqueeze(-1).type_as(mlp)
            if train:  # the similarity guide: does the full layer change this token's direction?
                cos = F.cosine_similarity(h.detach().float(), (mid + mlp).detach().float(), dim=-1)
                targets.append(cos > sim_threshold)
            stats.append(_stats(h, attn, mid, mlp, run) if record else None)
            p_runs.append(p_run)
            runs.append(run)
            h = out
        logits = m.lm_head(m.norm(h))
        return DLOOutput(logits=logits, p_run=p_runs, run=runs, skip_target=targets, stats=stats)


def _stats(h, attn, mid, mlp, run) -> VisitStats:
    """Every token's ratios at one layer; the MLP ratios are NaN where the MLP was skipped."""
    norm = lambda t: t.float().norm(dim=-1).flatten()  # noqa: E731
    xn, an, mn, midn = norm(h), norm(attn), norm(mlp), norm(mid)
    ran = run.flatten()
    nan = torch.full_like(mn, math.nan)
    return VisitStats(
        tokens=torch.arange(xn.numel()),
        attn_ratio=an / xn.clamp_min(1e-12),
        attn_ratio_out=an / midn.clamp_min(1e-12),
        mlp_ratio=torch.where(ran, mn / midn.clamp_min(1e-12), nan),
        mlp_ratio_out=torch.where(ran, mn / norm(mid + mlp).clamp_min(1e-12), nan),
    )


def expand(pretrained: Llama, insert_after: Sequence[int], **kwargs) -> DLO:
    """A DLO model over `pretrained`: its layers, plus a zero-output copy after each of `insert_after`."""
    base = pretrained.cfg
    new = expanded_indices(base.num_layers, insert_after)
    cfg = DLOConfig(base=replace(base, num_layers=base.num_layers + len(new)), expanded_layers=new, **kwargs)
    with torch.device("meta"):
        model = DLO(cfg)  # shapes only: every weight is replaced below
    model.model.embed_tokens = copy.deepcopy(pretrained.embed_tokens)
    model.model.norm = copy.deepcopy(pretrained.norm)
    model.model.lm_head = copy.deepcopy(pretrained.lm_head)
    if base.tied_embeddings:
        model.model.lm_head.weight = model.model.embed_tokens.weight
    layers: list[Block] = []
    after = set(insert_after)
    for i, layer in enumerate(pretrained.blocks()):
        layers.append(copy.deepcopy(layer))
        if i in after:
            fresh = copy.deepcopy(layer)
            nn.init.zeros_(fresh.self_attn.o_proj.weight)
            nn.init.zeros_(fresh.mlp.down_proj.weight)
            layers.append(fresh)
    model.model.layers = nn.ModuleList(layers)
    model.model.rope = copy.deepcopy(pretrained.rope)
    model.routers = _routers(base.hidden_size, len(layers), cfg.router_bias)
    return model


def _routers(hidden_size: int, count: int, bias: float) -> nn.ModuleList:
    """`count` MLP routers, each a linear map hidden_size -> 1 with zero weight and logit `bias`."""
    routers = [nn.Linear(hidden_size, 1) for _ in range(count)]
    for r in routers:
        nn.init.zeros_(r.weight)
        nn.init.constant_(r.bias, bias)
    return nn.ModuleList(routers)


def gemm_flops_per_token(cfg: LlamaConfig, mlp_layers: float, attn_layers: float, routers: int = 0) -> float:
    """Weight-GEMM FLOPs (2 x multiply-adds) of one token: attention and MLP layers run, LM head, routers.

    Attention score/value products (which grow with context) are left out; they are the same for DLO
    and its baselines because attention runs in every layer.
    """
    d, hd = cfg.hidden_size, cfg.head_dim
    attn = 2 * d * (2 * cfg.num_heads * hd + 2 * cfg.num_kv_heads * hd)
    mlp = 2 * 3 * d * cfg.ffn_size
    return attn * attn_layers + mlp * mlp_layers + 2 * d * cfg.vocab_size + 2 * d * routers
