"""Early exit: a shared head reads each token after every layer and stops it once confident.

After layer l (from `min_layer` on), the model's own final norm and LM head (shared by all exits)
give a next-token distribution; a token whose top probability reaches `threshold` exits and keeps
that hidden state for its output. Later layers still need K/V for exited tokens; by default they are
copied from the exited hidden state (`copy`, as CALM does), or left out (`none`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radsim.models.llama import Llama, VisitStats


@dataclass(frozen=True)
class EarlyExitConfig:
    """When tokens may leave, and what their skipped layers' KV caches hold."""

    threshold: float = 0.9
    min_layer: int = 0
    kv_policy: str = "copy"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.kv_policy not in ("none", "copy"):
            raise ValueError("early exit kv_policy must be 'none' or 'copy'")


@dataclass
class EarlyExitOutput:
    """Logits, per-token depth, and per visited layer the visitors and their stats."""

    logits: torch.Tensor
    depth: torch.Tensor  # (B, T)
    visits: list[torch.Tensor]  # per layer, (B, T) bool
    # per layer, (B, T) the shared head's top probability after the layer (for its visitors; an
    # exited token keeps the value it exited with; not computed after the last layer: 0 there)
    confidence: list[torch.Tensor]
    stats: list[VisitStats | None]


class EarlyExit(torch.nn.Module):
    """Wraps a sequential `Llama` with a confidence-based exit after every layer."""

    def __init__(self, model: Llama, cfg: EarlyExitConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The shared exit head: final norm and LM head."""
        return self.model.lm_head(self.model.norm(h))

    @torch.no_grad()
    def forward(self, idx: torch.Tensor, record: bool = False) -> EarlyExitOutput:
        """Run every layer for the tokens that have not exited yet."""
        m, cfg = self.model, self.cfg
        pos = m.positions(idx)
        h = m.embed_tokens(idx)
        active = torch.ones_like(idx, dtype=torch.bool)
        depth = torch.zeros_like(idx)
        visits: list[torch.Tensor] = []
        confidence: list[torch.Tensor] = []
        stats: list[VisitStats | None] = []
        conf = torch.zeros(idx.shape, dtype=torch.float32)
        last = len(m.layers) - 1
        for i, layer in enumerate(m.blocks()):
            visit = active.clone()
            h, st = layer.visit(h, pos, visit, m.rope, cfg.kv_policy, stats=record)
            depth += visit.long()
            conf = conf.clone()
            if i < last:  # the head reads only this layer's visitors (exited tokens keep theirs)
                conf[visit] = torch.softmax(self.head(h[visit]).float(), dim=-1).amax(dim=-1)
            if i >= cfg.min_layer and i < last:
                active &= conf < cfg.threshold
            visits.append(visit)
            confidence.append(conf)
            stats.append(st)
        return EarlyExitOutput(
            logits=self.head(h), depth=depth, visits=visits, confidence=confidence, stats=stats
        )
