"""Shared fixtures: a toy device with round numbers and a tiny architecture for hand checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from radsim.spec.arch import Arch
from radsim.spec.hardware import Hardware, load_hardware

DATA = Path(__file__).parent / "data"


@pytest.fixture
def toy_gpu() -> Hardware:
    return load_hardware(DATA / "toy_gpu.toml")


@pytest.fixture
def tiny_arch() -> Arch:
    # d=64, 4 heads of 16, 2 KV heads, SwiGLU FFN of 128: small enough to count by hand.
    return Arch(
        name="tiny",
        source="test fixture",
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        ffn_size=128,
        ffn_kind="swiglu",
        vocab_size=100,
        norm_kind="rmsnorm",
        tied_embeddings=True,
        max_position_embeddings=512,
        position_embedding="rope",
        linear_bias=False,
    )
