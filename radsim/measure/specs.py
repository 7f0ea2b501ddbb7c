"""The models `radsim measure` times: their shapes (an architecture or a scratch shape) and their routes.

A spec names an architecture (`radsim.spec.arch`) or one of the small shapes trained from scratch
here, and where its routes come from: a trace replayed position by position, a depth fraction, or
none (sequential). `step_routes` builds the routes of one prefill or decode step (`radsim.routes.replay`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from radsim.errors import ConfigError
from radsim.routes.replay import StepRoutes, fraction_slots, sequential_slots, trace_slots


@dataclass(frozen=True)
class ModelSpec:
    """A model to measure: its shape (an `radsim.spec.arch` spec name or scratch shape) and its routes."""

    name: str
    kind: str  # "sequential" or "radial"
    arch: str  # architecture name, or "scratch" for the 4.7M-parameter shape of configs/*-scratch.toml
    trace: str | None = None  # routes replayed from this trace
    depth_fraction: float = 1.0  # routes drawn at random when there is no trace
    depth_distribution: str = "exact"  # how they are drawn (radsim.routes.synthetic.DEPTH_DISTRIBUTIONS)
    max_steps: int = 0  # router step embeddings (radial); 0 means num_layers
    rope_theta: float = 10000.0

    @property
    def routed(self) -> bool:
        """A router runs after every visit and visitors are gathered and scattered."""
        return self.kind == "radial"


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("scratch-seq", "sequential", "scratch"),
        ModelSpec("scratch-radial", "radial", "scratch", trace="traces/radial-scratch.parquet", max_steps=12),
        ModelSpec(
            "scratch-radial-p05", "radial", "scratch", trace="traces/radial-scratch-p05.parquet", max_steps=12
        ),
        ModelSpec("smollm2-seq", "sequential", "smollm2-135m", rope_theta=100000.0),
        ModelSpec(
            "smollm2-radial",
            "radial",
            "smollm2-135m",
            trace="traces/smollm2-135m-radial-distill-tau0.27.parquet",
            max_steps=30,
            rope_theta=100000.0,
        ),
        ModelSpec("smollm2-half", "radial", "smollm2-135m", depth_fraction=0.5, rope_theta=100000.0),
        # ~1B shape for GPU measurements (d 2048, 24 layers): no trace of its 24 layers, so random routes
        ModelSpec("smollm2-1.7b-seq", "sequential", "smollm2-1.7b", rope_theta=130000.0),
        ModelSpec("smollm2-1.7b-half", "radial", "smollm2-1.7b", depth_fraction=0.5, rope_theta=130000.0),
        ModelSpec("tiny-seq", "sequential", "tiny"),
        ModelSpec("tiny-radial", "radial", "tiny", depth_fraction=0.5),
    ]
}


def spec_arch(spec: ModelSpec):
    """The `radsim.spec.arch.Arch` of a spec (the scratch and tiny shapes are built here)."""
    from radsim.spec.arch import Arch, load_arch

    shapes = {
        # configs/dense-scratch.toml and radial-scratch.toml: d 192, 8 layers, 6 heads over 2 KV heads
        "scratch": dict(
            hidden_size=192, num_layers=8, num_heads=6, num_kv_heads=2, ffn_size=512, vocab_size=8192
        ),
        # a CI-sized model: measured in seconds
        "tiny": dict(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=128, vocab_size=512),
    }
    if spec.arch not in shapes:
        return load_arch(spec.arch)
    return Arch(
        name=spec.arch,
        source="radsim.measure.specs.spec_arch",
        head_dim=shapes[spec.arch]["hidden_size"] // shapes[spec.arch]["num_heads"],
        ffn_kind="swiglu",
        norm_kind="rmsnorm",
        tied_embeddings=True,
        max_position_embeddings=4096,
        position_embedding="rope",
        linear_bias=False,
        **shapes[spec.arch],
    )


def step_routes(
    spec: ModelSpec, phase: str, batch: int, tokens: int, seed: int = 0, root: str = "."
) -> StepRoutes:
    """Routes of one step: `tokens` is the prompt (prefill) or the context (decode) per sequence."""
    arch = spec_arch(spec)
    length = tokens if phase == "prefill" else tokens + 1
    if spec.kind == "sequential":
        return StepRoutes(phase, sequential_slots(batch, length, arch.num_layers), arch.num_layers, "none")
    if spec.trace is None:
        slots = fraction_slots(
            batch, length, arch.num_layers, spec.depth_fraction, seed, spec.depth_distribution
        )
        return StepRoutes(phase, slots, arch.num_layers, "none")
    slots, layers, policy = trace_slots(os.path.join(root, spec.trace), batch, length, first_seq=seed)
    if layers != arch.num_layers:
        raise ConfigError(f"{spec.trace} has {layers} layers, {spec.arch} has {arch.num_layers}")
    return StepRoutes(phase, slots, layers, policy)
