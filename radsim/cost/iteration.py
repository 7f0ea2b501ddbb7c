"""Cost of one model iteration (a forward pass over a routed batch): embedding, layers and head.

The layers are costed in one vectorised call with a leading layer axis: `visits[l, s]` tokens of
sequence `s` visit layer `l`, which holds `context[l, s]` KV entries for it beforehand. A layer that
no token visits (and whose KV policy asks for no work) is not launched and reads no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radsim.cost.kernels import Cost, elementwise, gemm, stack_ops
from radsim.cost.layer import NORM_FLOPS_PER_ELEMENT, Execution, RoutedBatch, layer_cost, weights_resident
from radsim.spec.arch import Arch
from radsim.spec.hardware import Hardware

HEAD_OPS = ("embed", "final_norm", "lm_head", "sampling")
# Softmax and sampling over the vocabulary: max, exp, sum, scale and a draw per logit.
SAMPLING_FLOPS_PER_LOGIT = 6.0


@dataclass(frozen=True)
class IterationBreakdown:
    """A whole iteration: per-layer, per-operator costs and the embedding/head costs."""

    layers: Cost  # arrays (len(OPS), num_layers)
    head: Cost  # arrays (len(HEAD_OPS),)

    @property
    def time_s(self) -> float:
        """Wall time of the iteration on one device (all devices of a TP group run in lockstep)."""
        return float(self.layers.time_s.sum() + self.head.time_s.sum())

    @property
    def energy_J(self) -> float:
        """Energy of one device over the iteration."""
        return float(self.layers.energy_J.sum() + self.head.energy_J.sum())

    @property
    def flops(self) -> float:
        """FLOPs on one device."""
        return float(self.layers.flops.sum() + self.head.flops.sum())

    @property
    def bytes(self) -> float:
        """DRAM bytes on one device."""
        return float(self.layers.bytes.sum() + self.head.bytes.sum())

    @property
    def compute_bound_fraction(self) -> float:
        """Share of the iteration's time in operators whose compute time exceeds memory time."""
        both = [self.layers, self.head]
        bound = sum(float(c.time_s[c.compute_time_s > c.memory_time_s].sum()) for c in both)
        return bound / self.time_s if self.time_s > 0 else 0.0


def head_cost(
    hw: Hardware, arch: Arch, exe: Execution, new_tokens: float | np.ndarray, logit_rows: float | np.ndarray
) -> Cost:
    """Embedding lookup for every new token; final norm, LM head and sampling for `logit_rows`."""
    width = arch.embed_proj_dim or arch.hidden_size
    vocab = arch.vocab_size / exe.tp
    peak = exe.gemm_peak_flops(hw)
    res = weights_resident(hw, arch, exe)
    ops = [
        elementwise(hw, new_tokens, arch.hidden_size, 0.0, exe.act_bytes, reads=1.0, resident=res),
        elementwise(
            hw, logit_rows, arch.hidden_size, NORM_FLOPS_PER_ELEMENT, exe.act_bytes, reads=2.0, resident=res
        ),
        gemm(hw, peak, logit_rows, int(vocab), width, exe.weight_bytes, exe.act_bytes, res, dtype=exe.dtype),
        elementwise(hw, logit_rows, vocab, SAMPLING_FLOPS_PER_LOGIT, 4.0, reads=1.0, resident=res),
    ]
    return stack_ops(HEAD_OPS, ops)


def iteration_cost(
    hw: Hardware,
    arch: Arch,
    exe: Execution,
    new_tokens: np.ndarray,
    context: np.ndarray,
    visits: np.ndarray,
    logit_rows: int,
) -> IterationBreakdown:
    """Cost of one iteration: `new_tokens` (S,), `context` and `visits` (num_layers, S)."""
    new_tokens = np.asarray(new_tokens, dtype=np.float64)
    batch = RoutedBatch.of(new_tokens[None, :], context, visits)
    layers = layer_cost(hw, arch, exe, batch)
    head = head_cost(hw, arch, exe, float(new_tokens.sum()), float(logit_rows))
    return IterationBreakdown(layers=layers, head=head)
