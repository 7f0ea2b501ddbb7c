"""Device memory of a deployment: weights, KV cache and transient activations, per device.

Counts what a framework's allocator holds (comparable to `torch.cuda.max_memory_allocated`): the
CUDA context, allocator fragmentation and any runtime reserve are not included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radsim.cost.layer import Execution
from radsim.errors import ConfigError
from radsim.spec.arch import Arch
from radsim.spec.hardware import Hardware

LOGIT_BYTES = 4.0  # logits and probabilities are kept in fp32 for sampling


@dataclass(frozen=True)
class MemoryUse:
    """Bytes per device, by what holds them."""

    weights_bytes: float
    kv_cache_bytes: float
    activation_bytes: float

    @property
    def total_bytes(self) -> float:
        """Everything held at once."""
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes


def weights_bytes(arch: Arch, exe: Execution) -> float:
    """Weights per device: every parameter in the model dtype, sharded across the TP group."""
    return arch.total_params * exe.weight_bytes / exe.tp


def kv_entry_bytes(arch: Arch, exe: Execution) -> float:
    """Bytes of one token's K and V in one layer on one device (KV heads are replicated if tp > kv)."""
    kv_heads = np.ceil(arch.num_kv_heads / exe.tp)
    return 2.0 * kv_heads * arch.head_dim * exe.kv_bytes


def activation_bytes(arch: Arch, exe: Execution, tokens: float, logit_rows: float) -> float:
    """Peak transient activations of one iteration over `tokens` new tokens.

    The residual stream and the normalised input stay live while the widest intermediate exists:
    Q, K, V and the attention output, or the MLP's up/gate output and its activation.
    """
    tp = exe.tp
    attn = (2 * arch.q_width + 2 * np.ceil(arch.num_kv_heads / tp) * arch.head_dim * tp) / tp
    up = arch.ffn_size * (2 if arch.ffn_kind == "swiglu" else 1)
    mlp = (up + arch.ffn_size) / tp
    hidden = tokens * (2 * arch.hidden_size + max(attn, mlp)) * exe.act_bytes
    logits = 2 * logit_rows * arch.vocab_size / tp * LOGIT_BYTES
    return float(hidden + logits)


def check_fits(hw: Hardware, use: MemoryUse, what: str) -> None:
    """Raise a clear error if `use` exceeds the device's memory."""
    if use.total_bytes > hw.memory_capacity_bytes:
        raise ConfigError(
            f"{what} does not fit on {hw.stem}: needs {use.total_bytes / 1e9:.2f} GB per device "
            f"(weights {use.weights_bytes / 1e9:.2f} GB, KV cache {use.kv_cache_bytes / 1e9:.2f} GB, "
            f"activations {use.activation_bytes / 1e9:.2f} GB), device has "
            f"{hw.memory_capacity_bytes / 1e9:.2f} GB; lower the batch or lengths, or raise --tp"
        )
