"""Finedeep (Pan et al., 2502.12928): each dense FFN split into sub-layers of small experts, all active.

A Llama-style decoder (attention, norms and rotary from `radsim.models.llama`) whose MLP in every
layer becomes `sub_layers` (M) consecutive sub-layers of `experts` (K) small SwiGLU experts each.
Each sub-layer is pre-normed and residual (h <- h + sum_k r_k E_k(norm(h))); its router scores the
K experts with a sigmoid and normalises the scores to sum 1 (the paper's sigmoid router in place of
a softmax). Every expert runs for every token: the model is dense, and by default the experts' hidden
sizes add up to the dense FFN's (`expert_size = ffn_size // (M * K)`), so the FFN parameters and
GEMM FLOPs match the dense model up to the tiny routers. What it changes for serving is the shape of
the work: M*K small matrix products per layer instead of three big ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from radsim.models.llama import Attention, LlamaConfig, RMSNorm, Rotary, VisitStats, _init_weights


@dataclass(frozen=True)
class FinedeepConfig:
    """The dense shape plus how each FFN is split."""

    base: LlamaConfig = field(default_factory=LlamaConfig)
    sub_layers: int = 2  # M: sub-layers per FFN, each with its own residual and router
    experts: int = 4  # K: experts per sub-layer
    expert_size: int = 0  # hidden size of one expert; 0: ffn_size // (M * K), FFN parameters as dense

    def __post_init__(self) -> None:
        if self.sub_layers < 1 or self.experts < 1:
            raise ValueError("sub_layers and experts must be >= 1")
        if self.hidden < 1:
            raise ValueError(
                f"expert_size is {self.hidden}; ffn_size too small for {self.sub_layers}x{self.experts}"
            )

    @property
    def hidden(self) -> int:
        """Hidden size of one expert."""
        return self.expert_size or self.base.ffn_size // (self.sub_layers * self.experts)


class Experts(nn.Module):
    """One sub-layer: K SwiGLU experts, all run, mixed by a normalised sigmoid router."""

    def __init__(self, cfg: FinedeepConfig) -> None:
        super().__init__()
        d, k, e = cfg.base.hidden_size, cfg.experts, cfg.hidden
        self.norm = RMSNorm(d, cfg.base.norm_eps)
        self.router = nn.Linear(d, k, bias=False)
        self.gate_proj = nn.Parameter(torch.randn(k, d, e) * 0.02)
        self.up_proj = nn.Parameter(torch.randn(k, d, e) * 0.02)
        self.down_proj = nn.Parameter(torch.randn(k, e, d) * 0.02)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sub-layer's residual delta (B, T, d) and router weights (B, T, K), summing to 1."""
        x = self.norm(h)
        score = torch.sigmoid(self.router(x).float())
        weight = (score / score.sum(-1, keepdim=True)).type_as(x)  # (B, T, K)
        a = torch.einsum("btd,kde->btke", x, self.gate_proj)  # (B, T, K, e)
        u = torch.einsum("btd,kde->btke", x, self.up_proj)
        y = (F.silu(a) * u) * weight.unsqueeze(-1)
        return torch.einsum("btke,ked->btd", y, self.down_proj), weight


class FinedeepBlock(nn.Module):
    """Pre-norm attention, then M expert sub-layers, each with its own residual connection."""

    def __init__(self, cfg: FinedeepConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.base.hidden_size, cfg.base.norm_eps)
        self.self_attn = Attention(cfg.base)
        self.sub_layers = nn.ModuleList(Experts(cfg) for _ in range(cfg.sub_layers))

    def forward(self, h, pos, rope: Rotary, stats: bool = False):
        """New h (B, T, d), router weights (B, T, M, K) and, with `stats`, every token's visit stats."""
        x = self.input_layernorm(h)
        attn = self.self_attn(x, pos, x, pos, None, rope)
        mid = h + attn
        out = mid
        weights: list[torch.Tensor] = []
        for sub in self.sub_layers:
            delta, w = sub(out)
            out, weights = out + delta, weights + [w]
        info = _stats(h, attn, mid, out - mid) if stats else None
        return out, torch.stack(weights, dim=2), info


def _stats(h, attn, mid, ffn) -> VisitStats:
    """Contribution ratios of attention and of the whole FFN (all sub-layers) for every token."""
    norm = lambda t: t.float().norm(dim=-1).flatten()  # noqa: E731
    xn, an, fn = norm(h), norm(attn), norm(ffn)
    return VisitStats(
        tokens=torch.arange(xn.numel()),
        attn_ratio=an / xn.clamp_min(1e-12),
        attn_ratio_out=an / norm(mid).clamp_min(1e-12),
        mlp_ratio=fn / norm(mid).clamp_min(1e-12),
        mlp_ratio_out=fn / norm(mid + ffn).clamp_min(1e-12),
    )


@dataclass
class FinedeepOutput:
    """Logits, per layer the router weights (B, T, M, K), and optional per-layer visit stats."""

    logits: torch.Tensor
    weights: list[torch.Tensor]
    stats: list[VisitStats | None]


class Finedeep(nn.Module):
    """Embedding, every Finedeep layer in order, final norm, LM head (tied)."""

    def __init__(self, cfg: FinedeepConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base = cfg.base
        self.embed_tokens = nn.Embedding(base.vocab_size, base.hidden_size)
        self.layers = nn.ModuleList(FinedeepBlock(cfg) for _ in range(base.num_layers))
        self.norm = RMSNorm(base.hidden_size, base.norm_eps)
        self.lm_head = nn.Linear(base.hidden_size, base.vocab_size, bias=False)
        if base.tied_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = Rotary(base.head_dim, base.max_positions, base.rope_theta)
        self.apply(_init_weights)

    def forward(self, idx: torch.Tensor, record: bool = False) -> FinedeepOutput:
        pos = torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1)
        h = self.embed_tokens(idx)
        weights, stats = [], []
        for layer in self.layers:
            h, w, st = layer(h, pos, self.rope, stats=record)
            weights.append(w.detach() if record else w)
            stats.append(st)
        return FinedeepOutput(logits=self.lm_head(self.norm(h)), weights=weights, stats=stats)


def router_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each sub-layer's expert weights (..., K), averaged over sub-layers (..., M)."""
    w = weights.float().clamp_min(1e-12)
    return -(w * w.log()).sum(-1).mean(-1)
