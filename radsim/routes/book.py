"""Routes for simulated requests: which layers each token visits, from a trace or a generator.

A `RouteBook` holds a pool of token routes grouped in sequences. A request draws whole sequences at
random and takes their tokens in order, so within-sequence structure (and, since the simulator
batches tokens of different sequences, realistic within-batch disagreement) is kept. Each token has
its visits per *slot* (pass x layer; a pass ends when a route goes back to a layer at or below the
previous one) and its layer at each routing step.

Layer-count mapping (a trace of Lt layers onto an architecture of La layers): trace layer l covers
target layers [floor(l La / Lt), floor((l+1) La / Lt)), at least the first of them; a visit to l
becomes visits to that whole block, in order, and consecutive visits to the same target layer merge.
The depth fraction is kept, and so is the order of the route. Rows of a trace where only
attention ran (`kv_action` KV_COMPUTE, DLO's skipped MLPs) are not visits: the book holds the layers
whose MLP ran, and the simulator's `compute` KV policy runs attention everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas and pyarrow load with a trace only
    from radsim.routes.trace import Trace


@dataclass(frozen=True)
class RouteBook:
    """Token routes: `slots` (tokens, passes x layers) visit counts, `steps` (tokens, max_steps)
    layer per step and `step_slots` slot per step (-1 past the end), `seq_starts` where each
    sequence's tokens begin."""

    slots: np.ndarray
    steps: np.ndarray
    step_slots: np.ndarray
    seq_starts: np.ndarray
    num_layers: int
    source: str

    @property
    def passes(self) -> int:
        """Passes over the layer stack that some token makes."""
        return self.slots.shape[1] // self.num_layers

    @property
    def depth(self) -> np.ndarray:
        """Visits per token."""
        return self.slots.sum(axis=1)

    @property
    def mean_depth_fraction(self) -> float:
        """Mean visits per token over the number of layers."""
        return float(self.depth.mean() / self.num_layers)

    def assign(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """Token indices for a request of `length` tokens: whole random sequences, concatenated."""
        return self.assign_many(rng, np.array([length]))[0]

    def assign_many(self, rng: np.random.Generator, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of requests of `lengths` tokens, concatenated, and where each request's begin.

        Each request takes random whole sequences in turn, the last cut to its length; requests
        draw from one stream of sequences, in order, so the result depends only on `rng`.
        """
        tokens, offsets, _ = self._assign(rng, lengths, None)
        return tokens, offsets

    def assign_with_prefixes(
        self, rng: np.random.Generator, lengths: np.ndarray, prefixes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`assign_many`, plus each request's slot visits summed over its first `prefixes` tokens."""
        tokens, offsets, visits = self._assign(rng, lengths, np.asarray(prefixes, dtype=np.int64))
        assert visits is not None
        return tokens, offsets, visits

    @cached_property
    def cum_slots(self) -> np.ndarray:
        """(tokens + 1, W) slot visits of the tokens before each token, in book order (float64: exact)."""
        cum = np.zeros((self.slots.shape[0] + 1, self.slots.shape[1]))
        np.cumsum(self.slots, axis=0, out=cum[1:])
        return cum

    def _assign(self, rng: np.random.Generator, lengths: np.ndarray, prefixes: np.ndarray | None):
        lengths = np.asarray(lengths, dtype=np.int64)
        seq_len = self._seq_ends - self.seq_starts
        need = int(lengths.sum())
        draws = np.zeros(0, dtype=np.int64)
        covered = np.zeros(1, dtype=np.int64)
        while covered[-1] < need or draws.size < lengths.size:
            more = rng.integers(len(seq_len), size=int(need / seq_len.mean() * 1.1) + lengths.size + 8)
            draws = np.concatenate([draws, more])
            covered = np.concatenate([[0], np.cumsum(seq_len[draws])])
        # request i uses draws[first[i]:last[i]]: sequences until its length is covered
        first = np.empty(lengths.size, dtype=np.int64)
        last = np.empty(lengths.size, dtype=np.int64)
        pointer = 0
        for i, n in enumerate(lengths.tolist()):
            first[i] = pointer
            pointer = int(np.searchsorted(covered, covered[pointer] + n))
            last[i] = pointer
        used = draws[:pointer]
        size = seq_len[used]
        size[last - 1] = lengths - (covered[last - 1] - covered[first])  # the last sequence is cut
        start = np.cumsum(size) - size
        tokens = np.arange(need) + np.repeat(self.seq_starts[used] - start, size)
        visits = None
        if prefixes is not None:  # each sequence's share of its request's prefix, from cumulative counts
            owner = np.repeat(np.arange(lengths.size), last - first)
            offset = start - start[first][owner]  # where the sequence begins in its request
            take = np.clip(prefixes[owner] - offset, 0, size)
            begin = self.seq_starts[used]
            diff = self.cum_slots[begin + take] - self.cum_slots[begin]
            visits = np.add.reduceat(diff, first, axis=0)
        return tokens, np.cumsum(lengths) - lengths, visits

    @cached_property
    def _seq_ends(self) -> np.ndarray:
        return np.append(self.seq_starts[1:], self.slots.shape[0])


def book_from_visits(
    token: np.ndarray,
    layer: np.ndarray,
    num_layers: int,
    seq_starts: np.ndarray,
    source: str,
    n_tokens: int | None = None,
) -> RouteBook:
    """Build a book from visit rows sorted by token then step: token index and layer per visit.

    `n_tokens` (default: the last visiting token + 1) counts tokens with no visit too."""
    n_tokens = int(token.max()) + 1 if n_tokens is None else n_tokens
    if token.size == 0:
        empty = np.full((n_tokens, 1), -1)
        return RouteBook(
            np.zeros((n_tokens, num_layers), dtype=np.uint8),
            empty.astype(np.int16),
            empty.astype(np.int32),
            seq_starts,
            num_layers,
            source,
        )
    start = np.r_[True, token[1:] != token[:-1]]
    new_pass = np.r_[False, layer[1:] <= layer[:-1]] & ~start
    group = np.cumsum(start) - 1
    pass_index = np.cumsum(new_pass) - np.maximum.accumulate(np.where(start, np.cumsum(new_pass), 0))
    first = np.flatnonzero(start)
    step = np.arange(len(token)) - first[group]
    passes = int(pass_index.max()) + 1
    slots = np.zeros((n_tokens, passes * num_layers), dtype=np.uint8)
    np.add.at(slots, (token, pass_index * num_layers + layer), 1)
    steps = np.full((n_tokens, int(step.max()) + 1), -1, dtype=np.int16)
    steps[token, step] = layer
    step_slots = np.full(steps.shape, -1, dtype=np.int32)
    step_slots[token, step] = pass_index * num_layers + layer
    return RouteBook(slots, steps, step_slots, seq_starts, num_layers, source)


def map_layers(token: np.ndarray, layer: np.ndarray, trace_layers: int, target_layers: int):
    """Visit rows of a trace mapped onto `target_layers` (see the module docstring)."""
    if trace_layers == target_layers:
        return token, layer
    lo = (layer * target_layers) // trace_layers
    hi = ((layer + 1) * target_layers) // trace_layers
    size = np.maximum(hi - lo, 1)
    row = np.repeat(np.arange(len(layer)), size)
    offset = np.arange(row.size) - np.repeat(np.cumsum(size) - size, size)
    token, layer = token[row], lo[row] + offset
    keep = np.r_[True, (token[1:] != token[:-1]) | (layer[1:] != layer[:-1])]
    return token[keep], layer[keep]


def from_trace(trace: Trace, num_layers: int, source: str = "trace") -> RouteBook:
    """A book of the trace's routes, mapped onto `num_layers` layers."""
    from radsim.routes.trace import KV_COMPUTE

    v = trace.visits
    key = v["seq"].to_numpy(np.int64) * (int(v["pos"].max()) + 1) + v["pos"].to_numpy(np.int64)
    token = np.unique(key, return_inverse=True)[1]
    seq_of_token = np.zeros(token.max() + 1, dtype=np.int64)
    seq_of_token[token] = v["seq"].to_numpy()
    seq_starts = np.flatnonzero(np.r_[True, seq_of_token[1:] != seq_of_token[:-1]])
    # An attention-only row (KV_COMPUTE: the token skipped the layer's MLP, as DLO does) is not a
    # visit here: under the compute KV policy attention runs for every token in every layer anyway.
    ran = v["kv_action"].to_numpy() != KV_COMPUTE
    token, layer = map_layers(token[ran], v["layer"].to_numpy(np.int64)[ran], trace.num_layers, num_layers)
    return book_from_visits(token, layer, num_layers, seq_starts, source, len(seq_of_token))


def load_routes(path: str, num_layers: int) -> RouteBook:
    """Read a trace file into a route book for an architecture of `num_layers` layers."""
    from radsim.routes.trace import read_trace

    return from_trace(read_trace(path), num_layers, source=str(path))
