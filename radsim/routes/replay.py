"""Replayed routes and the per-slot loads they imply, for measuring and predicting one model step.

A *route* is the ordered list of (pass, layer) slots one token visits. Routes come from a routing
trace (`traces/*.parquet`, through the route book the simulator uses, read lazily so that this
module needs numpy alone) or from a depth fraction (`radsim.routes.synthetic`: one pass, layers in
order); a sequential model visits every layer. A step is either a prefill of `prompt` new tokens per sequence (context 0) or
one decode token per sequence after `context` earlier tokens. `slot_batches` turns the routes of a
step into, per slot, the per-sequence new tokens, held KV entries and visitors: what the harness
(`radsim.measure.harness`) executes and what the cost model (`radsim.cost.layer`) prices, from the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radsim.errors import ConfigError

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
            raise ConfigError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.slots.ndim != 3:
            raise ConfigError("slots must be (batch, tokens, steps)")

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


def fraction_slots(
    batch: int, tokens: int, num_layers: int, fraction: float, seed: int, distribution: str = "exact"
) -> np.ndarray:
    """Slots of tokens whose layers `radsim.routes.synthetic.depth_visits` draws, in increasing order."""
    from radsim.routes.synthetic import depth_visits

    mask = depth_visits(np.random.default_rng(seed), batch * tokens, num_layers, fraction, distribution)
    depth = mask.sum(axis=1)
    out = np.full((batch * tokens, int(depth.max())), NO_SLOT, dtype=np.int64)
    row, layer = np.nonzero(mask)
    out[row, np.arange(row.size) - np.repeat(np.cumsum(depth) - depth, depth)] = layer
    return out.reshape(batch, tokens, -1)


def trace_slots(path: str, batch: int, tokens: int, first_seq: int = 0) -> tuple[np.ndarray, int, str]:
    """Routes of `tokens` positions of `batch` trace sequences; positions past a sequence wrap around.

    The trace becomes a route book (`radsim.routes.book.from_trace`, the function the simulator
    uses) on its own layer count, and each token's slot per routing step is read from the book.
    """
    from radsim.routes.book import from_trace  # pandas/pyarrow only when a trace is replayed
    from radsim.routes.trace import read_trace

    trace = read_trace(path)
    book = from_trace(trace, trace.num_layers, source=str(path))
    starts = book.seq_starts
    ends = np.append(starts[1:], book.slots.shape[0])
    out = np.empty((batch, tokens, book.step_slots.shape[1]), dtype=np.int64)
    for b in range(batch):
        s = (first_seq + b) % starts.size
        out[b] = book.step_slots[starts[s] + np.arange(tokens) % (ends[s] - starts[s])]
    return out, trace.num_layers, str(trace.meta["kv_policy"])


def visit_counts(routes: StepRoutes) -> np.ndarray:
    """Visits of each (sequence, token, slot): array (B, T, slots), 0 or 1."""
    b, t, _ = routes.slots.shape
    width = int(routes.slots.max()) + 1
    counts = np.zeros((b, t, max(width, routes.num_layers)), dtype=np.int64)
    bi, ti, si = np.nonzero(routes.slots >= 0)
    np.add.at(counts, (bi, ti, routes.slots[bi, ti, si]), 1)
    if counts.max() > 1:
        raise ConfigError("a token visits the same (pass, layer) slot twice")
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
            raise ConfigError("kv policy 'compute' is not replayed by the harness")
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
