"""A Llama-style decoder (RMSNorm, rotary, GQA, SwiGLU) whose layers can run on any subset of tokens.

The building blocks here serve every model in `radsim.models`: a `Block.visit` runs one layer on
the tokens of a (B, T) batch that `visit` marks, gathering them into a dense (B, Tv, d) block
(causal order preserved), running attention and MLP there and scattering the result back. What
tokens that skip the layer leave in its KV cache follows the KV policy:

- ``none``: only visitors write K/V, so later visitors attend to earlier visitors only;
- ``copy``: skippers' K/V are computed from their current hidden state (CALM-style copy);
- ``compute``: attention runs for every token and updates it; only the MLP is skipped (DLO).

`Llama` is the sequential model: every token visits every layer in order. It loads the weights of a
real pretrained model (`from_hf_state_dict`), e.g. SmolLM2-135M from `radsim.models.smollm2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from radsim.spec.arch import Arch

# kv_action codes of the trace schema (radsim.routes.trace)
KV_WRITE, KV_COPY, KV_COMPUTE = 0, 1, 2


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama-style decoder; defaults are SmolLM2-135M's published config."""

    vocab_size: int = 49152
    hidden_size: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    ffn_size: int = 1536
    max_positions: int = 2048
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tied_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, num_heads by num_kv_heads")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @classmethod
    def from_arch(cls, arch: Arch, rope_theta: float, norm_eps: float) -> LlamaConfig:
        """The shape of a registered architecture spec (`radsim arch show NAME`)."""
        if arch.ffn_kind != "swiglu" or arch.norm_kind != "rmsnorm" or arch.position_embedding != "rope":
            raise ValueError(f"{arch.name} is not a Llama-style decoder (SwiGLU, RMSNorm, rotary)")
        return cls(
            vocab_size=arch.vocab_size,
            hidden_size=arch.hidden_size,
            num_layers=arch.num_layers,
            num_heads=arch.num_heads,
            num_kv_heads=arch.num_kv_heads,
            ffn_size=arch.ffn_size,
            max_positions=arch.max_position_embeddings,
            rope_theta=rope_theta,
            norm_eps=norm_eps,
            tied_embeddings=arch.tied_embeddings,
        )


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).type_as(x)


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half convention, as Hugging Face Llama)."""

    cos: torch.Tensor  # buffers, registered in __init__
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv)
        emb = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, heads, T, hd) at integer positions pos (B, T)."""
        cos = self.cos[pos].unsqueeze(1).to(x.dtype)  # (B, 1, T, hd)
        sin = self.sin[pos].unsqueeze(1).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Grouped-query attention over an explicit key set with an explicit mask."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        hd = cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)

    def forward(self, xq, q_pos, xkv, kv_pos, mask, rope: Rotary) -> torch.Tensor:
        """xq (B, Tq, d) at q_pos (B, Tq); keys from xkv (B, Tk, d); mask (B, Tq, Tk) or None (causal)."""
        b, tq, _ = xq.shape
        tk = xkv.shape[1]
        q = self.q_proj(xq).view(b, tq, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, Tq, hd)
        k = self.k_proj(xkv).view(b, tk, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(xkv).view(b, tk, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, q_pos), rope(k, kv_pos)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
        return self.o_proj(y.transpose(1, 2).reshape(b, tq, self.heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class VisitStats:
    """What one layer visit did to each visiting token (flat (B*T) indices)."""

    tokens: torch.Tensor  # (n,) flat indices of the visitors
    attn_ratio: torch.Tensor  # ||f_attn(x)|| / ||x||
    attn_ratio_out: torch.Tensor  # ||f_attn(x)|| / ||x + f_attn(x)||
    mlp_ratio: torch.Tensor
    mlp_ratio_out: torch.Tensor


class Block(nn.Module):
    """A pre-norm decoder layer that can run on any subset of a batch's tokens."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, rope: Rotary) -> torch.Tensor:
        """Every token visits: plain causal layer over (B, T, d)."""
        x = self.input_layernorm(h)
        h = h + self.self_attn(x, pos, x, pos, None, rope)
        return h + self.mlp(self.post_attention_layernorm(h))

    def visit(
        self,
        h: torch.Tensor,
        pos: torch.Tensor,
        visit: torch.Tensor,
        rope: Rotary,
        kv_policy: str = "none",
        scale: torch.Tensor | None = None,
        stats: bool = False,
    ) -> tuple[torch.Tensor, VisitStats | None]:
        """Run this layer for tokens where `visit` (B, T) is true; return new h and per-visit stats.

        `scale` (B, T), if given, multiplies each visitor's block output: a router's probability
        divided by its detached value (1 in the forward pass) lets gradients reach the router.
        """
        if kv_policy == "compute":
            return self._visit_compute(h, pos, visit, rope, scale, stats)
        order, valid = _gather_order(visit)  # (B, Tv) positions of visitors, in causal order
        hv = torch.gather(h, 1, order.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        pv = torch.gather(pos, 1, order)
        x = self.input_layernorm(hv)
        if kv_policy == "copy":
            xk, pk = self.input_layernorm(h), pos  # skippers' K/V copied from their hidden state
            mask = (pk.unsqueeze(1) <= pv.unsqueeze(2)) & valid.unsqueeze(2)
        else:
            xk, pk = x, pv
            tv = x.shape[1]
            causal = torch.ones(tv, tv, dtype=torch.bool, device=h.device).tril()
            mask = causal.unsqueeze(0) & valid.unsqueeze(1) | ~valid.unsqueeze(2) & _eye(tv, h)
        attn = self.self_attn(x, pv, xk, pk, mask, rope)
        mid = hv + _scaled(attn, scale, order)
        mlp = self.mlp(self.post_attention_layernorm(mid))
        out = mid + _scaled(mlp, scale, order)
        new_h = h.scatter(1, order.unsqueeze(-1).expand_as(out), torch.where(valid.unsqueeze(-1), out, hv))
        info = _stats(order, valid, h.shape[1], hv, attn, mid, mlp) if stats else None
        return new_h, info

    def _visit_compute(self, h, pos, visit, rope, scale, stats):
        """Attention for every token (KV complete), MLP for visitors only."""
        x = self.input_layernorm(h)
        attn = self.self_attn(x, pos, x, pos, None, rope)
        mid = h + attn
        mlp = self.mlp(self.post_attention_layernorm(mid)) * visit.unsqueeze(-1)
        if scale is not None:
            mlp = mlp * scale.unsqueeze(-1)
        out = mid + mlp
        if not stats:
            return out, None
        order, valid = _gather_order(visit)
        pick = lambda t: torch.gather(t, 1, order.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
        return out, _stats(order, valid, h.shape[1], pick(h), pick(attn), pick(mid), pick(mlp))


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    """Padding rows attend to themselves so that softmax never sees an all-masked row."""
    return torch.eye(n, dtype=torch.bool, device=like.device).unsqueeze(0)


def _gather_order(visit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the visitors' positions first (in increasing order), then the rest; and validity."""
    counts = visit.sum(dim=1)
    width = max(int(counts.max()), 1)
    order = torch.argsort((~visit).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=visit.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, valid


def _scaled(delta: torch.Tensor, scale: torch.Tensor | None, order: torch.Tensor) -> torch.Tensor:
    if scale is None:
        return delta
    return delta * torch.gather(scale, 1, order).unsqueeze(-1)


def _stats(order, valid, width, x, attn, mid, mlp) -> VisitStats:
    """Contribution ratios of the visitors' attention and MLP sub-blocks."""
    b = torch.arange(order.shape[0], device=order.device).unsqueeze(1).expand_as(order)
    flat = (b * width + order)[valid]
    norm = lambda t: t.float().norm(dim=-1)[valid]  # noqa: E731
    xn, an, mn = norm(x), norm(attn), norm(mlp)
    return VisitStats(
        tokens=flat,
        attn_ratio=an / xn.clamp_min(1e-12),
        attn_ratio_out=an / norm(x + attn).clamp_min(1e-12),
        mlp_ratio=mn / norm(mid).clamp_min(1e-12),
        mlp_ratio_out=mn / norm(mid + mlp).clamp_min(1e-12),
    )


class Llama(nn.Module):
    """The sequential decoder: embedding, every layer in order, final norm, LM head."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tied_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = Rotary(cfg.head_dim, cfg.max_positions, cfg.rope_theta)
        self.apply(_init_weights)

    def blocks(self) -> list[Block]:
        """The layers, in order, as `Block`s (iterating an `nn.ModuleList` gives untyped modules)."""
        return [cast(Block, layer) for layer in self.layers]

    def block(self, i: int) -> Block:
        """Layer `i` as a `Block`."""
        return cast(Block, self.layers[i])

    def positions(self, idx: torch.Tensor) -> torch.Tensor:
        """Positions 0..T-1 for every row of idx (B, T)."""
        return torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1)

    def hidden_states(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream before each layer and after the last: L+1 tensors (B, T, d)."""
        pos = self.positions(idx)
        h = self.embed_tokens(idx)
        out = [h]
        for layer in self.layers:
            h = layer(h, pos, self.rope)
            out.append(h)
        return out

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab)."""
        return self.lm_head(self.norm(self.hidden_states(idx)[-1]))

    def from_hf_state_dict(self, state: dict[str, torch.Tensor]) -> Llama:
        """Copy weights from a Hugging Face LlamaForCausalLM state dict; returns self."""
        own = {k.removeprefix("model."): v for k, v in state.items()}
        if self.cfg.tied_embeddings:
            own.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [m for m in missing if not (self.cfg.tied_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return self


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def lm_loss(logits: torch.Tensor, idx: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of logits (B, T, V) against idx shifted by one."""
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), idx[:, 1:].reshape(-1), reduction=reduction
    )
    return loss if reduction != "none" else loss.view(idx.shape[0], -1)


def perplexity(mean_loss: float) -> float:
    """exp of a mean cross-entropy in nats."""
    return math.exp(mean_loss)
