"""Mixture-of-Depths (Raposo et al., 2404.02258): top-k capacity routing on every other block.

In a routed block a linear router scores each token; during training the top `capacity` fraction of
each sequence's tokens run the block, their outputs scaled by sigmoid(score) so the router learns.
Top-k over a sequence looks into the future, so decoding uses a *causal predictor*: a small MLP
on the (detached) block input, trained to tell whether the token would be in the top-k. With
`causal=True` the forward routes by the predictor, which is what a decoder can do token by token.
Skipped tokens write no K/V in a routed block (KV policy `none`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from radsim.models.llama import Llama, LlamaConfig, VisitStats


@dataclass(frozen=True)
class MoDConfig:
    """Which blocks route and how many tokens they take."""

    base: LlamaConfig = field(default_factory=LlamaConfig)
    capacity: float = 0.125  # fraction of a sequence's tokens a routed block processes
    every: int = 2  # blocks l with l % every == every - 1 are routed; the others are dense

    def __post_init__(self) -> None:
        if not 0.0 < self.capacity <= 1.0:
            raise ValueError("capacity must be in (0, 1]")
        if self.every < 1:
            raise ValueError("every must be >= 1")

    def routed(self, layer: int) -> bool:
        """Whether layer `layer` is a routed block."""
        return layer % self.every == self.every - 1


@dataclass
class MoDOutput:
    """Logits, which tokens each block processed, the predictor loss, and optional visit stats."""

    logits: torch.Tensor
    visits: list[torch.Tensor]  # per layer, (B, T) bool
    predictor_loss: torch.Tensor
    stats: list[VisitStats | None]
    scores: list[torch.Tensor | None]  # per layer, router probability sigmoid(score) or None


class MoD(nn.Module):
    """A Llama stack with routers and causal predictors on its routed blocks."""

    def __init__(self, cfg: MoDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Llama(cfg.base)
        d = cfg.base.hidden_size
        n = cfg.base.num_layers
        self.routers = nn.ModuleList(nn.Linear(d, 1) if cfg.routed(i) else nn.Identity() for i in range(n))
        self.predictors = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d // 8), nn.SiLU(), nn.Linear(d // 8, 1))
            if cfg.routed(i)
            else nn.Identity()
            for i in range(n)
        )

    def forward(self, idx: torch.Tensor, causal: bool = False, record: bool = False) -> MoDOutput:
        """Route by top-k (training) or by the causal predictor (`causal`, decoding)."""
        m, cfg = self.model, self.cfg
        pos = m.positions(idx)
        h = m.embed_tokens(idx)
        k = max(1, math.ceil(cfg.capacity * idx.shape[1]))
        visits: list[torch.Tensor] = []
        stats: list[VisitStats | None] = []
        scores: list[torch.Tensor | None] = []
        pred_loss = torch.zeros((), device=idx.device)
        for i, layer in enumerate(m.blocks()):
            if not cfg.routed(i):
                visit = torch.ones_like(idx, dtype=torch.bool)
                h, st = (
                    layer.visit(h, pos, visit, m.rope, "none", stats=record)
                    if record
                    else (layer(h, pos, m.rope), None)
                )
                visits.append(visit)
                stats.append(st)
                scores.append(None)
                continue
            score = self.routers[i](h).squeeze(-1)  # (B, T)
            topk = torch.zeros_like(score, dtype=torch.bool)
            topk.scatter_(1, score.topk(min(k, score.shape[1]), dim=1).indices, True)
            guess = self.predictors[i](h.detach()).squeeze(-1)
            pred_loss = pred_loss + F.binary_cross_entropy_with_logits(guess, topk.float())
            visit = guess > 0 if causal else topk
            weight = torch.sigmoid(score)
            h, st = layer.visit(h, pos, visit, m.rope, "none", scale=weight, stats=record)
            visits.append(visit)
            stats.append(st)
            scores.append(weight.detach())
        logits = m.lm_head(m.norm(h))
        return MoDOutput(logits=logits, visits=visits, predictor_loss=pred_loss, stats=stats, scores=scores)
