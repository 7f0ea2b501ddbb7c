"""Radial network: a shared router sends each token through its own sequence of layers.

After every layer visit, the router reads the token's hidden state plus an embedding of the step
(how many visits it has made) and picks the next layer or exit. A pick above the current layer
skips ahead in the same *pass*; a pick at or below it reuses layers in a new pass. `max_steps`
bounds the visits per token and `max_passes` the passes (1 = skip only, no reuse).

Execution is pass-major, layer-minor: slot (pass p, layer l) runs once for all tokens that picked
it, gathered into one block and scattered back. Every token's next slot comes later in this order
and a slot's K/V come from tokens of earlier positions in the same slot, so this parallel forward
equals token-by-token decoding with one KV cache per (pass, layer) slot. A route forced to visit
layers 0..L-1 in order is exactly the sequential model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from radsim.models.llama import Llama, LlamaConfig, RMSNorm, VisitStats
from radsim.spec.kv import KV_POLICIES

EXIT = -1


@dataclass(frozen=True)
class RadialConfig:
    """A radial network over a Llama-style layer stack."""

    base: LlamaConfig = field(default_factory=LlamaConfig)
    max_steps: int = 30  # budget of layer visits per token
    max_passes: int = 1  # 1: skip only; 2+: tokens may reuse layers in later passes
    kv_policy: str = "none"
    first_layer: int = 0  # every token starts here; the router decides from then on

    def __post_init__(self) -> None:
        if self.kv_policy not in KV_POLICIES:
            raise ValueError(f"kv_policy must be one of {KV_POLICIES}, got {self.kv_policy!r}")
        if self.max_steps < 1 or self.max_passes < 1:
            raise ValueError("max_steps and max_passes must be >= 1")
        if not 0 <= self.first_layer < self.base.num_layers:
            raise ValueError("first_layer must be a layer index")


class Router(nn.Module):
    """Shared router: RMSNorm(h) + step embedding -> logits over layers 0..L-1 and exit (last)."""

    def __init__(self, cfg: RadialConfig) -> None:
        super().__init__()
        d = cfg.base.hidden_size
        self.norm = RMSNorm(d, cfg.base.norm_eps)
        self.step_embedding = nn.Embedding(cfg.max_steps, d)
        self.proj = nn.Linear(d, cfg.base.num_layers + 1)
        nn.init.normal_(self.step_embedding.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Logits (n, L+1) for hidden states h (n, d) after visit number `step` (n,)."""
        return self.proj(self.norm(h) + self.step_embedding(step))


@dataclass
class Visit:
    """One slot's visitors and what the router then decided for them (flat token indices)."""

    layer: int
    pass_index: int
    step: torch.Tensor  # (n,) routing step of this visit
    prob: torch.Tensor  # (n,) probability with which this layer had been chosen
    prob_exit: torch.Tensor  # (n,) router's exit probability after this visit
    entropy: torch.Tensor  # (n,) router entropy after this visit (nats)
    choice: torch.Tensor  # (n,) layer chosen next, EXIT (-1) for exit
    hidden: torch.Tensor  # (n, d) hidden state after the visit: the router's input
    stats: VisitStats


@dataclass
class RadialOutput:
    """Logits, per-token depth and route log-probability, and (optionally) every visit."""

    logits: torch.Tensor  # (B, T, V)
    depth: torch.Tensor  # (B, T) visits per token
    log_prob: torch.Tensor  # (B, T) sum of log-probabilities of the router's choices
    entropy: torch.Tensor  # (B, T) sum of the router's entropies over the token's decisions
    visits: list[Visit]
    # per option (layers 0..L-1, exit): how many decisions chose it, and the summed probability
    # the router gave it (differentiable): what a load-balancing loss reads
    choice_count: torch.Tensor | None = None
    prob_sum: torch.Tensor | None = None

    def balance_loss(self) -> torch.Tensor:
        """Switch-Transformer load balance over the layer options (exit left out): L x sum_l f_l P_l,
        f_l the share of layer picks that chose layer l and P_l the mean probability of l over the
        decisions that picked a layer; 1 when layers are used evenly, up to L when one takes all."""
        assert self.choice_count is not None and self.prob_sum is not None
        count, prob = self.choice_count[:-1], self.prob_sum[:-1]
        picks = count.sum().float().clamp_min(1.0)
        return len(count) * (count.float() / picks * prob / picks).sum()


class Radial(nn.Module):
    """Layers of a `Llama` plus a shared router."""

    def __init__(self, cfg: RadialConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Llama(cfg.base)
        self.router = Router(cfg)

    def forward(
        self,
        idx: torch.Tensor,
        mode: str = "argmax",
        routes: torch.Tensor | None = None,
        record: bool = False,
        straight_through: bool = False,
        temperature: float = 1.0,
        detach_router_input: bool = False,
    ) -> RadialOutput:
        """Route idx (B, T) through the layers.

        mode: "argmax" (deterministic) or "sample" (training exploration). routes (B, T, S), if
        given, forces the layer chosen after each visit (EXIT = -1 ends the route); the first visit
        is always `first_layer`. With straight_through, each visit's block output is scaled by
        p / stop_grad(p) of the choice that led there, so gradients reach the router. With
        detach_router_input, the router reads the hidden states without passing gradients back
        into the layers (a policy-gradient loss on the routes then trains the router alone).
        """
        cfg, m = self.cfg, self.model
        b, t = idx.shape
        pos = m.positions(idx)
        h = m.embed_tokens(idx)
        state = _RouteState.start(b, t, cfg.first_layer, idx.device)
        state.choice_count = torch.zeros(cfg.base.num_layers + 1, dtype=torch.long, device=idx.device)
        state.prob_sum = torch.zeros(cfg.base.num_layers + 1, device=idx.device)
        visits: list[Visit] = []
        for p in range(cfg.max_passes):
            for layer in range(cfg.base.num_layers):
                here = state.active & (state.pass_index == p) & (state.layer == layer)
                if not bool(here.any()):
                    continue
                policy = cfg.kv_policy if p == 0 else "none"
                scale = state.prob / state.prob.detach() if straight_through else None
                h, stats = m.block(layer).visit(h, pos, here, m.rope, policy, scale, stats=record)
                state.steps[here] += 1
                hv = h[here].detach() if detach_router_input else h[here]
                decision = self._decide(hv, state, here, layer, p, mode, routes, temperature)
                if record and stats is not None:
                    step = state.steps[here] - 1
                    hidden = h[here].detach()
                    visits.append(Visit(layer, p, step, *decision, hidden=hidden, stats=stats))
        logits = m.lm_head(m.norm(h))
        return RadialOutput(
            logits=logits,
            depth=state.steps,
            log_prob=state.log_prob,
            entropy=state.entropy,
            visits=visits,
            choice_count=state.choice_count,
            prob_sum=state.prob_sum,
        )

    def _decide(
        self,
        hv: torch.Tensor,
        state: _RouteState,
        here: torch.Tensor,
        layer: int,
        p: int,
        mode: str,
        routes: torch.Tensor | None,
        temperature: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router choice for the tokens in `here` after their visit to (p, layer)."""
        cfg = self.cfg
        n_layers = cfg.base.num_layers
        steps = state.steps[here]
        prob_in = state.prob[here]  # the choice that brought these tokens here
        logits = self.router(hv, (steps - 1).clamp_max(cfg.max_steps - 1)).float()
        allowed = torch.ones(n_layers + 1, dtype=torch.bool, device=hv.device)
        if p == cfg.max_passes - 1:
            allowed[: layer + 1] = False  # no pass left to reuse a layer in
        logits = logits.masked_fill(~allowed, float("-inf"))
        logp = F.log_softmax(logits / temperature, dim=-1)
        probs = logp.exp()
        if routes is not None:
            choice = routes[here][torch.arange(hv.shape[0]), steps - 1].clone()
            choice[choice == EXIT] = n_layers
        elif mode == "sample":
            choice = torch.multinomial(probs.detach(), 1).squeeze(1)
        else:
            choice = probs.argmax(dim=-1)
        budget_out = steps >= cfg.max_steps
        choice = torch.where(budget_out, torch.full_like(choice, n_layers), choice)
        chosen = logp.gather(1, choice.unsqueeze(1)).squeeze(1)
        chosen = torch.where(budget_out | ~torch.isfinite(chosen), torch.zeros_like(chosen), chosen)
        state.log_prob = _put(state.log_prob, here, state.log_prob[here] + chosen)
        state.prob = _put(state.prob, here, chosen.exp())
        decided = ~budget_out  # a token out of budget exits without a decision
        picked_layer = decided & (choice != n_layers)  # decisions that chose a layer: the balanced ones
        if state.choice_count is not None and state.prob_sum is not None:
            state.choice_count = state.choice_count + torch.bincount(choice[decided], minlength=n_layers + 1)
            state.prob_sum = state.prob_sum + probs[picked_layer].sum(dim=0)
        exits = choice == n_layers
        active = state.active.clone()
        active[here] = ~exits
        state.active = active
        next_layer = torch.where(exits, torch.full_like(choice, -1), choice)
        state.pass_index[here] = torch.where(next_layer <= layer, p + 1, p)
        state.layer[here] = next_layer
        entropy = -(probs * logp.masked_fill(~allowed, 0.0)).sum(-1)
        state.entropy = _put(state.entropy, here, state.entropy[here] + torch.where(budget_out, 0.0, entropy))
        return prob_in.detach(), probs[:, n_layers].detach(), entropy.detach(), next_layer


def _put(t: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of t with t[mask] = values (out of place, so autograd keeps earlier versions)."""
    out = t.clone()
    out[mask] = values
    return out


@dataclass
class _RouteState:
    """Where each token of a (B, T) batch goes next."""

    layer: torch.Tensor
    pass_index: torch.Tensor
    active: torch.Tensor
    steps: torch.Tensor
    log_prob: torch.Tensor
    prob: torch.Tensor  # probability of each token's latest choice
    entropy: torch.Tensor
    choice_count: torch.Tensor | None = None
    prob_sum: torch.Tensor | None = None

    @classmethod
    def start(cls, b: int, t: int, first: int, device: torch.device) -> _RouteState:
        z = torch.zeros(b, t, dtype=torch.long, device=device)
        return cls(
            layer=z + first,
            pass_index=z.clone(),
            active=torch.ones(b, t, dtype=torch.bool, device=device),
            steps=z.clone(),
            log_prob=torch.zeros(b, t, device=device),
            prob=torch.ones(b, t, device=device),
            entropy=torch.zeros(b, t, device=device),
        )
