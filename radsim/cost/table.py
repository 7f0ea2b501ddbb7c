"""Tabulated cost model for the simulator: the same numbers as `radsim.cost.layer`, looked up in O(1).

Every operator but attention depends on one row count of a `LayerLoad` (`radsim.cost.layer.row_ops`), and
each kernel's energy is priced at its launch, so time, energy, FLOPs and bytes add up operator by
operator. They are tabulated once for 0..`max_rows` rows; attention is evaluated in closed form on
the aggregated load, a linear map built from the cost model's own coefficients
(`radsim.cost.layer.attention_coefficients`) and energy terms (`radsim.cost.power`). A simulator
iteration then costs a few numpy calls over its layer groups instead of a full cost-model
evaluation. Larger row counts fall back to the cost model itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from radsim.cost.iteration import head_cost
from radsim.cost.kernels import ADDITIVE, Cost, KernelCost, stack_ops, sum_kernels
from radsim.cost.layer import (
    OPS,
    AttentionCoefficients,
    Execution,
    LayerLoad,
    RoutedBatch,
    attention,
    attention_coefficients,
    layer_cost,
    load_cost,
    row_ops,
)
from radsim.cost.loads import KV, LOAD_ROWS, VISITORS, as_layer_load, ones
from radsim.cost.power import capped_energy_J, work_energy_J
from radsim.spec.arch import Arch
from radsim.spec.hardware import Hardware

FIELDS = ("time_s", "energy_J", "flops", "bytes")


@dataclass(frozen=True)
class IterationCost:
    """Time, energy, FLOPs and DRAM bytes of part of an iteration, on one device."""

    time_s: float = 0.0
    energy_J: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: IterationCost) -> IterationCost:
        return IterationCost(*(getattr(self, f) + getattr(other, f) for f in FIELDS))


def _columns(kernel: KernelCost | Cost) -> np.ndarray:
    """(..., 4) array of FIELDS."""
    moved = kernel.weight_bytes + kernel.kv_read_bytes + kernel.kv_write_bytes + kernel.act_bytes
    return np.stack([kernel.time_s, kernel.energy_J, kernel.flops, moved], axis=-1)


def attention_map(hw: Hardware, coefficients: AttentionCoefficients) -> tuple[np.ndarray, np.ndarray]:
    """Attention's closed form for `attention_fields`, from the cost model's own coefficients.

    Every term of `AttentionCoefficients.work` is linear in the load, so its value on each unit
    load (one load row set to 1) is its coefficient for that row: the first array maps a load
    matrix's rows (q_rows, kv_rows, visitors, pairs, held) to compute time, memory time, FLOPs, bytes
    moved and the work energy above idle (`radsim.cost.power.work_energy_J`); the second holds the
    launch time per row that runs a launch (RoPE/KV write for K/V rows, the kernel for queries).
    """
    units = as_layer_load(np.eye(len(LOAD_ROWS)))
    work = coefficients.work(units)
    moved = work["kv_read_bytes"] + work["kv_write_bytes"] + work["act_bytes"]
    energy = work_energy_J(hw, work["flops"], coefficients.peak_flops, moved)
    linear = [work["compute_time_s"], coefficients.memory_time_s(units), work["flops"], moved, energy]
    # launches add up over the rows that run them
    launch_time = coefficients.launch_time_s(units)
    assert not launch_time[VISITORS:].any(), "attention launches depend only on Q and K/V rows"
    return np.array(linear), launch_time[:VISITORS]


def attention_fields(
    hw: Hardware, linear: np.ndarray, launch_s: np.ndarray, load: np.ndarray, bound: bool = False
) -> np.ndarray:
    """`radsim.cost.layer.attention` of each group of a load matrix, in closed form (`attention_map`):
    (4, groups) of FIELDS, and with `bound` a fifth row, the time of the compute-bound groups."""
    out = _linear_map(linear, load)  # compute time, memory time, flops, bytes, work energy
    compute_bound = out[0] > out[1] if bound else None
    time = out[0]
    np.maximum(time, out[1], out=time)
    time += launch_s @ np.minimum(load[:VISITORS], 1.0)  # zero where nothing runs
    capped_energy_J(hw, time, out[4], out=out[1])
    if compute_bound is None:
        return out[:4]
    np.multiply(time, compute_bound, out=out[4])
    return out


#: Load matrices wider than this are mapped by numpy's own loops (einsum): a BLAS product this
#: thin spreads over threads that cost more than they save (10x slower on 2 busy cores).
_WIDE_LOAD = 1024


def _linear_map(linear: np.ndarray, load: np.ndarray) -> np.ndarray:
    """`linear @ load`, without BLAS when the load is wide."""
    if load.shape[1] <= _WIDE_LOAD:
        return linear @ load
    return np.einsum("ij,jk->ik", linear, load)


class CostTable:
    """Per-row-count costs of one (hardware, architecture, execution) triple."""

    def __init__(self, hw: Hardware, arch: Arch, exe: Execution, max_rows: int = 16384) -> None:
        self.hw, self.arch, self.exe, self.max_rows = hw, arch, exe, max_rows
        rows = np.arange(max_rows + 1, dtype=np.float64)
        zero = np.zeros_like(rows)
        a = row_ops(hw, arch, exe, LayerLoad(rows, rows, rows, rows, zero, zero))  # no skippers
        b = row_ops(hw, arch, exe, LayerLoad(zero, rows, zero, zero, zero, zero))  # skippers only
        # row_ops order: attn_norm, qkv, o_proj, attn_allreduce, mlp_norm, mlp, mlp_allreduce, router, gather
        self._kv = _columns(a[0])  # the norm before attention runs for every K/V row
        self._q = _columns(sum_kernels(a[1:4]))
        self._skip = _columns(b[1])  # K/V projection of skippers (copy and compute policies)
        self._mlp = _columns(sum_kernels(a[4:7]))
        self._visitors = _columns(sum_kernels(a[7:9]))
        # Under each KV policy the load's row counts coincide (LayerLoad.from_batch), so tables merge:
        # none: every row count is the visitors'; copy: Q, MLP and router rows are the visitors';
        # compute: Q and K/V rows are all new tokens, MLP and router rows the visitors'.
        # Stored transposed, (4, rows), so a lookup yields FIELDS x launch groups.
        by_visitors = self._q + self._mlp + self._visitors + (self._kv if exe.kv_policy == "none" else 0)
        if exe.kv_policy == "compute":
            by_visitors = self._mlp + self._visitors
            self._by_kv_rows = np.ascontiguousarray((self._kv + self._q).T)
        elif exe.kv_policy == "copy":
            self._by_kv_rows = np.ascontiguousarray(self._kv.T)
            self._by_skippers = np.ascontiguousarray(self._skip.T)
        self._by_visitors = np.ascontiguousarray(by_visitors.T)
        self._embed = _columns(head_cost(hw, arch, exe, rows, zero))[0]
        self._logits = _columns(head_cost(hw, arch, exe, zero, rows))[1:].sum(axis=0)
        self._linear, self._launch_s = attention_map(hw, attention_coefficients(hw, arch, exe))

    def layers(self, load: LayerLoad, tokens: int | None = None) -> IterationCost:
        """Summed cost of the layer launches described by `load` (arrays over launch groups).

        The load's row counts must relate as `LayerLoad.from_batch` makes them for the KV policy.
        `tokens`, the iteration's new tokens, bounds every row count when given.
        """
        matrix = np.stack([load.q_rows, load.kv_rows, load.visitors, load.pairs, load.held]).astype(
            np.float64
        )
        return IterationCost(*self.layer_totals(matrix, tokens).tolist())

    def layer_totals(self, load: np.ndarray, tokens: int | None = None) -> np.ndarray:
        """Summed [time, energy, flops, bytes] of the launches of a load matrix (`radsim.cost.loads`)."""
        biggest = tokens if tokens is not None else load[: VISITORS + 1].max(initial=0)
        if biggest > self.max_rows:
            return _columns(load_cost(self.hw, self.arch, self.exe, as_layer_load(load))).sum(axis=(0, 1))
        fields = self.layer_fields(load)
        return fields @ ones(fields.shape[1])

    def layer_fields(self, load: np.ndarray) -> np.ndarray:
        """(4, groups) of FIELDS, one column per launch group of a load matrix whose row counts are
        within the table (`max_rows`): what `layer_totals` sums."""
        v = load[VISITORS].astype(np.int64)
        fields = self._by_visitors.take(v, axis=1)  # (4, groups)
        fields += self._attention(load)
        if self.exe.kv_policy == "copy":
            kv = load[KV].astype(np.int64)
            fields += self._by_kv_rows.take(kv, axis=1)
            fields += self._by_skippers.take(kv - v, axis=1)
        elif self.exe.kv_policy == "compute":
            fields += self._by_kv_rows.take(load[KV].astype(np.int64), axis=1)
        return fields

    def _attention(self, load: np.ndarray) -> np.ndarray:
        """Closed form of `radsim.cost.layer.attention` per group: (4, groups) of FIELDS."""
        return attention_fields(self.hw, self._linear, self._launch_s, load)

    def head(self, new_tokens: int, logit_rows: int) -> IterationCost:
        """Embedding for the new tokens; final norm, LM head and sampling for `logit_rows`."""
        return IterationCost(*self.head_totals(new_tokens, logit_rows).tolist())

    def head_totals(self, new_tokens: int, logit_rows: int) -> np.ndarray:
        """`head` as an array of FIELDS."""
        if max(new_tokens, logit_rows) > self.max_rows:
            cost = head_cost(self.hw, self.arch, self.exe, float(new_tokens), float(logit_rows))
            return _columns(cost).sum(axis=0)
        return self._embed[new_tokens] + self._logits[logit_rows]

    def head_rows(self, new_tokens: np.ndarray, logit_rows: np.ndarray) -> np.ndarray:
        """(n, FIELDS): `head_totals` of each of n iterations (`new_tokens`, `logit_rows`: (n,) counts)."""
        if max(int(new_tokens.max(initial=0)), int(logit_rows.max(initial=0))) > self.max_rows:
            return np.array(
                [self.head_totals(int(t), int(r)) for t, r in zip(new_tokens, logit_rows, strict=True)]
            )
        return self._embed[new_tokens] + self._logits[logit_rows]


# ---- prices of the launches of static batches (`radsim.cost.estimate`) --------------------------

#: `FIELDS`, the compute-bound time (the time of operators whose compute time exceeds their memory
#: time) and the kernel launches.
LAUNCH_FIELDS = (*FIELDS, "bound_time_s", "launches")


def launch_fields(cost: Cost | KernelCost) -> np.ndarray:
    """`LAUNCH_FIELDS` of launches, element by element: shape (6, *cost's shape)."""
    bound = np.where(cost.compute_time_s > cost.memory_time_s, cost.time_s, 0.0)
    return np.stack([cost.time_s, cost.energy_J, cost.flops, cost.bytes, bound, cost.launches])


def row_counts(exe: Execution, visitors, new_tokens):
    """The query and K/V rows of launches where `visitors` of `new_tokens` new tokens visit the
    layer, under the KV policy (`LayerLoad.from_batch`): a decode launch has one new token per
    sequence, a prefill chunk its chunk's tokens."""
    if exe.kv_policy == "none":
        return visitors, visitors
    return (visitors, new_tokens) if exe.kv_policy == "copy" else (new_tokens, new_tokens)


class LaunchPrices:
    """What launches of one (hardware, architecture, execution) cost, each priced once, as
    `LAUNCH_FIELDS`: every operator but attention by row count (`row_ops`), the embedding and head,
    and attention in closed form (`attention_map`). A study prices the same launches over and over."""

    def __init__(self, hw: Hardware, arch: Arch, exe: Execution) -> None:
        self.hw, self.arch, self.exe = hw, arch, exe
        self._rows: dict[int, np.ndarray] = {}
        self._row_ops: dict[int, list[KernelCost]] = {}
        self._by_visitors: dict[tuple[int, int], np.ndarray] = {}
        self._heads: dict[tuple[int, int], np.ndarray] = {}

    @cached_property
    def _attention_map(self) -> tuple[np.ndarray, np.ndarray]:
        # built when first asked, so that a bad input fails where the cost model's does
        return attention_map(self.hw, attention_coefficients(self.hw, self.arch, self.exe))

    def attention(self, load: np.ndarray) -> np.ndarray:
        """(5, groups) of `LAUNCH_FIELDS` but the launches, for a load matrix
        (`radsim.cost.loads.LOAD_ROWS`, groups)."""
        return attention_fields(self.hw, *self._attention_map, load, bound=True)

    def full_rows(self, rows: int) -> np.ndarray:
        """(6,) of every operator but attention in a launch of `rows` tokens that all visit."""
        if rows not in self._rows:
            self._rows[rows] = np.sum([launch_fields(op) for op in self.full_row_ops(rows)], axis=0)[:, 0]
        return self._rows[rows]

    def full_row_ops(self, rows: int) -> list[KernelCost]:
        """`row_ops` of a launch of `rows` tokens that all visit (arrays of shape (1,)), per operator."""
        if rows not in self._row_ops:
            x = np.array([float(rows)])
            self._row_ops[rows] = row_ops(self.hw, self.arch, self.exe, LayerLoad(x, x, x, x, 0 * x, 0 * x))
        return self._row_ops[rows]

    def iteration_layers(self, new_tokens: np.ndarray, context: np.ndarray, visits: np.ndarray) -> Cost:
        """`radsim.cost.iteration.iteration_cost(...).layers`, the same numbers: (len(OPS), num_layers)
        per operator and layer, for `new_tokens` (S,), `context` and `visits` (num_layers, S).

        Where every new token visits every layer and every layer holds the same context (no routing),
        every layer has one load: it is priced once, its operators but attention by row count
        (`full_row_ops`, kept), and repeated over the layers. Otherwise the cost model prices every
        layer (`radsim.cost.layer.layer_cost`)."""
        new_tokens = np.asarray(new_tokens, dtype=np.float64)
        context = np.asarray(context, dtype=np.float64)
        visits = np.asarray(visits, dtype=np.float64)
        rows = float(new_tokens.sum())
        if not ((visits == new_tokens).all() and (context == context[:1]).all() and rows.is_integer()):
            return layer_cost(
                self.hw, self.arch, self.exe, RoutedBatch.of(new_tokens[None, :], context, visits)
            )
        one = RoutedBatch.of(new_tokens[None, :], context[:1], visits[:1])  # (1, S): one layer
        load = LayerLoad.from_batch(one, self.exe.kv_policy)  # every row count is `rows`
        ops = [*self.full_row_ops(int(rows))]
        ops.insert(OPS.index("attention"), attention(self.hw, self.arch, self.exe, load))
        one_layer = stack_ops(OPS, ops)  # (len(OPS), 1)
        # repeated into contiguous arrays: sums over operators then run as over the cost model's own
        layers = visits.shape[0]
        return Cost(ops=OPS, **{f: np.repeat(getattr(one_layer, f), layers, axis=1) for f in ADDITIVE})

    def rows_by_visitors(self, new_tokens: int, rows_max: int) -> np.ndarray:
        """(6, rows_max + 1) of every operator but attention in a launch with 0..rows_max visitors
        among `new_tokens` new tokens (`row_counts`), priced in one call (so that an all-reduce
        takes the algorithm of the largest message, as one call over launches with at most
        `rows_max` visitors does)."""
        key = (new_tokens, rows_max)
        if key not in self._by_visitors:
            r = np.arange(rows_max + 1, dtype=np.float64)
            q, kv = row_counts(self.exe, r, np.full_like(r, new_tokens))
            self._by_visitors[key] = self.row_fields(LayerLoad(q, kv, r, r, 0 * r, 0 * r))
        return self._by_visitors[key]

    def head(self, new_tokens: int, logit_rows: int) -> np.ndarray:
        """(6,) of the embedding of `new_tokens` and the final norm, LM head and sampling of `logit_rows`."""
        key = (new_tokens, logit_rows)
        if key not in self._heads:
            cost = head_cost(self.hw, self.arch, self.exe, float(new_tokens), float(logit_rows))
            self._heads[key] = launch_fields(cost).sum(axis=1)
        return self._heads[key]

    def row_fields(self, load: LayerLoad) -> np.ndarray:
        """(6, *shape) of every operator but attention on a load (one `row_ops` call)."""
        return np.sum([launch_fields(op) for op in row_ops(self.hw, self.arch, self.exe, load)], axis=0)


def launch_prices(hw: Hardware, arch: Arch, exe: Execution) -> LaunchPrices:
    """The `LaunchPrices` of (hw, arch, exe), kept per process."""
    # the tables' file keys the cache too: hardware files that differ only in their tables compare equal
    return _launch_prices(hw, hw.kernel_tables.path if hw.kernel_tables is not None else None, arch, exe)


@lru_cache(maxsize=256)
def _launch_prices(hw: Hardware, tables: Path | None, arch: Arch, exe: Execution) -> LaunchPrices:
    return LaunchPrices(hw, arch, exe)
