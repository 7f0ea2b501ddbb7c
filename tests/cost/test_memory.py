"""Memory accounting: weights, KV entries, activations, and the fit check."""

from __future__ import annotations

import pytest

from radsim.cost.layer import Execution
from radsim.cost.memory import MemoryUse, activation_bytes, check_fits, kv_entry_bytes, weights_bytes
from radsim.errors import ConfigError
from radsim.spec.arch import load_arch


def test_weights_and_kv_entries():
    arch = load_arch("llama3.1-8b")
    assert weights_bytes(arch, Execution("bf16")) == arch.total_params * 2
    assert weights_bytes(arch, Execution("fp8", tp=2)) == arch.total_params / 2
    assert kv_entry_bytes(arch, Execution("bf16")) == 2 * 8 * 128 * 2
    # 8 KV heads over 16 devices: each device still holds one head
    assert kv_entry_bytes(arch, Execution("bf16", tp=16)) == 2 * 1 * 128 * 2


def test_activations_grow_with_tokens_and_logits():
    arch = load_arch("llama3.1-8b")
    exe = Execution("bf16")
    assert activation_bytes(arch, exe, 2048, 1) > activation_bytes(arch, exe, 1024, 1)
    logits_only = activation_bytes(arch, exe, 0, 10)
    assert logits_only == 2 * 10 * arch.vocab_size * 4


def test_check_fits_names_the_parts(toy_gpu):
    check_fits(toy_gpu, MemoryUse(5e9, 4e9, 0.5e9), "ok")
    with pytest.raises(ConfigError, match=r"needs 10.50 GB .*weights 6.00 GB, KV cache 4.00 GB"):
        check_fits(toy_gpu, MemoryUse(6e9, 4e9, 0.5e9), "too big")
