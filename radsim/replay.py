"""Replayed routes and the per-slot loads they imply, for measuring and predicting one model step.

A *route* is the ordered list of (pass, layer) slots one token visits. Routes come from a routing
trace (`traces/*.parquet`, read lazily so that this module needs numpy alone) or from a depth
fraction (each token visits round(f x L) random layers in order, one pass); a sequential model
visits every layer. A step is either a prefill of `prompt` new tokens per sequence (context 0) or
one decode token per sequence after `context` earlier tokens. `slot_batches` turns the routes of a
step into, per slot, the per-sequence new tokens, held KV entries and visitors: what the harness
(`radsim.measure`) executes and what the cost model (`radsim.cost`) prices, from the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHASES = ("prefill", "decode")
NO_SLOT = -1


@dataclass(frozen=True)
class StepRoutes:
    """Slot ids (pass x L + layer, NO_SLOT padded) of every token: array (B, T, max_steps).

    Prefill: T = prompt tokens, all new. Decode: T = context + 1, the last token is new.
    """

    phase: str
    slots: np.ndarray
    num_layers: int
    kv_policy: str

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.slots.ndim != 3:
            raise ValueError("slots must be (batch, tokens, steps)")

    @property
    def batch(self) -> int:
        """Sequences in the step."""
        return int(self.slots.shape[0])

    @property
    def new_tokens(self) -> int:
        """New tokens per sequence."""
        return int(self.slots.shape[1]) if self.phase == "prefill" else 1

    @property
    def context(self) -> int:
        """Tokens each sequence held before the step."""
        return 0 if self.phase == "prefill" else int(self.slots.shape[1]) - 1


@dataclass(frozen=True)
class SlotBatch:
    """One (pass, layer) launch: per-sequence new tokens, held KV entries, visitors (arrays (B,))."""

    slot: int
    layer: int
    pass_index: int
    kv_policy: str  # the policy this slot follows: skippers write K/V only in the first pass
    new_tokens: np.ndarray
    context_tokens: np.ndarray
    visiting_tokens: np.ndarray

    @property
    def kv_rows(self) -> np.ndarray:
        """K/V entries written per sequence: visitors, or every new token under copy."""
        return self.new_tokens if self.kv_policy == "copy" else self.visiting_tokens


def sequential_slots(batch: int, tokens: int, num_layers: int) -> np.ndarray:
    """Every token visits layers 0..L-1 in one pass."""
    return np.broadcast_to(np.arange(num_layers, dtype=np.int64), (batch, tokens, num_layers)).copy()


def fraction_slots(batch: int, tokens: int, num_layers: int, fraction: float, seed: int) -> np.ndarray:
    """Each token visits round(f x L) (at least 1) layers chosen uniformly, in increasing order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"depth fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * num_layers)))
    keys = np.random.default_rng(seed).random((batch, tokens, num_layers))
    chosen = np.sort(np.argsort(keys, axis=-1)[..., :k], axis=-1)
    return chosen.astype(np.int64)


def trace_slots(path: str, batch: int, tokens: int, first_seq: int = 0) -> tuple[np.ndarray, int, str]:
    """Routes of `tokens` positions of `batch` trace sequences; positions past a sequence wrap around."""
    from radsim.trace import read_trace  # pandas/pyarrow only when a trace is replayed

    trace = read_trace(path)
    v = trace.visits
    num_layers = trace.num_layers
    slot = v["pass"].to_numpy(np.int64) * num_layers + v["layer"].to_numpy(np.int64)
    seqs = np.unique(v["seq"].to_numpy())
    steps = int(v["step"].max()) + 1
    out = np.full((batch, tokens, steps), NO_SLOT, dtype=np.int64)
    for b in range(batch):
        seq = seqs[(first_seq + b) % seqs.size]
        rows = v["seq"].to_numpy() == seq
        pos, step = v["pos"].to_numpy()[rows], v["step"].to_numpy()[rows]
        length = int(pos.max()) + 1
        table = np.full((length, steps), NO_SLOT, dtype=np.int64)
        table[pos, step] = slot[rows]
        out[b] = table[np.arange(tokens) % length]
    return out, num_layers, str(trace.meta["kv_policy"])


def visit_counts(routes: StepRoutes) -> np.ndarray:
    """Visits of each (sequence, token, slot): array (B, T, slots), 0 or 1."""
    b, t, _ = routes.slots.shape
    width = int(routes.slots.max()) + 1
    counts = np.zeros((b, t, max(width, routes.num_layers)), dtype=np.int64)
    bi, ti, si = np.nonzero(routes.slots >= 0)
    np.add.at(counts, (bi, ti, routes.slots[bi, ti, si]), 1)
    if counts.max() > 1:
        raise ValueError("a token visits the same (pass, layer) slot twice")
    return counts


def slot_batches(routes: StepRoutes) -> list[SlotBatch]:
    """The launches of one step in execution order (pass-major, layer-minor).

    A slot runs when a new token visits it or, under `copy`, in every first-pass layer (skippers
    write their K/V there). Held entries are the earlier tokens' visits (or, under `copy` in the
    first pass, every earlier token).
    """
    counts = visit_counts(routes)
    num_layers = routes.num_layers
    b = routes.batch
    new_part = counts if routes.phase == "prefill" else counts[:, -1:]
    earlier = np.zeros((b, counts.shape[2])) if routes.phase == "prefill" else counts[:, :-1].sum(axis=1)
    visitors = new_part.sum(axis=1)
    out = []
    for slot in range(counts.shape[2]):
        layer, p = slot % num_layers, slot // num_layers
        policy = routes.kv_policy if p == 0 else "none"
        if policy == "compute":
            raise ValueError("kv policy 'compute' is not replayed by the harness")
        first_copy = policy == "copy"
        if not visitors[:, slot].any() and not first_copy:
            continue
        held = np.full(b, float(routes.context)) if first_copy else earlier[:, slot].astype(np.float64)
        out.append(
            SlotBatch(
                slot=slot,
                layer=layer,
                pass_index=p,
                kv_policy=policy,
                new_tokens=np.full(b, float(routes.new_tokens)),
                context_tokens=held,
                visiting_tokens=visitors[:, slot].astype(np.float64),
            )
        )
    return out


def kv_entries(routes: StepRoutes) -> float:
    """KV entries held after the step, summed over sequences and slots (what the cache stores)."""
    return float(sum((s.context_tokens + s.kv_rows).sum() for s in slot_batches(routes)))


# ---- the models measured ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model to measure: its shape (an `radsim.arch` spec name or scratch shape) and its routes."""

    name: str
    kind: str  # "sequential" or "radial"
    arch: str  # architecture name, or "scratch" for the 4.7M-parameter shape of configs/*-scratch.toml
    trace: str | None = None  # routes replayed from this trace
    depth_fraction: float = 1.0  # routes drawn at random when there is no trace
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
        ModelSpec("tiny-seq", "sequential", "tiny"),
        ModelSpec("tiny-radial", "radial", "tiny", depth_fraction=0.5),
    ]
}


def spec_arch(spec: ModelSpec):
    """The `radsim.arch.Arch` of a spec (the scratch and tiny shapes are built here)."""
    from radsim.arch import Arch, load_arch

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
        source="radsim.replay.spec_arch",
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
        slots = fraction_slots(batch, length, arch.num_layers, spec.depth_fraction, seed)
        return StepRoutes(phase, slots, arch.num_layers, "none")
    import os

    slots, layers, policy = trace_slots(os.path.join(root, spec.trace), batch, length, first_seq=seed)
    if layers != arch.num_layers:
        raise ValueError(f"{spec.trace} has {layers} layers, {spec.arch} has {arch.num_layers}")
    return StepRoutes(phase, slots, layers, policy)
