"""Static batch estimate: a batch of identical requests, prefilled together, then decoded in lockstep.

The prompt tokens of the whole batch are prefilled in chunks of at most `prefill_chunk` tokens
(chunked prefill, as serving engines bound activation memory), sequence after sequence; a sequence
split across chunks attends to its earlier chunks through the KV cache. Decode then generates one
token per sequence per step until every request has `output` tokens (the first comes from prefill).
With `depth_fraction < 1` each token visits round(f x L) layers chosen at random, a router runs
after each visit and visitors are gathered and scattered (`radsim.routes.synthetic.depth_visits`).

How the iterations are priced (the numbers of the step-by-step loop `_reference_estimate`, which
the tests hold this to at a relative 1e-12: the per-launch figures are the cost model's own, only
summed in another order, as layers x one layer's figures and runs in closed form):

- Prefill chunks are priced all at once: each chunk's load per layer (its tokens, and the (query,
  key) pairs and KV entries its sequences' pieces attend to) comes from the pieces the chunk and
  sequence boundaries cut, and attention runs on the (chunk, layer) loads in one vectorised call;
  the other operators depend on row counts only and are looked up (`radsim.cost.table.LaunchPrices`).
- Decode without routing (depth 1.0): every step launches the same kernels on the same rows, and
  only attention's load grows, by one KV entry per sequence per step. Each of attention's terms is
  linear in its load, so a step's figures are affine in the step index except where attention's
  roofline switches between compute and memory or its energy reaches the power cap. The decode phase
  is then a few *runs* of affine steps: the switch steps are solved from the linear terms, checked
  against the cost model's own values around them (every step of an unchecked gap is priced if a
  check fails), and each run is summed in closed form from its first and last steps. Its cost does
  not grow with the output length.
- With routing, every token's visits are drawn from `rng` exactly as the reference loop draws them
  (one draw per prefill chunk, one per block of `DECODE_BLOCK_ELEMENTS`), so a seed gives the same
  numbers; each block's loads are aggregated per (step, layer) (visitors, and the pairs and entries
  attended) and priced in one call: attention elementwise, the other operators by lookup of their
  visitor count. Drawing the visits is most of the time.

Iterations to totals: the hook of a host model
-----------------------------------------------
Every phase reaches `phase_totals` as `StepRuns`: the phase's iterations in order, grouped in runs
of `count` iterations that share their kernel launches (`first[LAUNCHES]`, per device, summed over
operators), their sequences (`sequences`) and the phase (`prefill`), and within which every GPU
figure of `STEP_FIELDS` (time_s, energy_J, flops, bytes, bound_time_s: the time of compute-bound
operators) is affine in the iteration's index; `first` and `last` hold the figures of a run's first
and last iterations, so a run's sums are count x (first + last) / 2. A run of one iteration is a
per-step value: prefill chunks and routed decode steps arrive as per-step arrays, unrouted decode
as a few affine runs. `phase_totals` reduces them to the phase's totals and to the time at the end
of each run (the first token of a request comes with the chunk that completes its prompt), and
`run_time_s` is the one place an iteration's GPU time becomes its duration. An engine profile (host
overhead) applies there: a wall time per iteration such as
``max(gpu_s, launches * host_launch_s) + host_iteration_s + host_sequence_s * sequences`` is, over
an affine run, the sum of the maximum of an affine and a constant term plus constants, split in
closed form at the iteration where `gpu_s` crosses ``launches * host_launch_s`` (whether the GPU's
idle power over the host's share counts as energy is the profile's to say: `phase_totals` sums
GPU energy only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from radsim.cost.host import LaunchCounts, host_floor_s, host_wait_energy_J, launch_counts
from radsim.cost.iteration import IterationBreakdown, head_cost, iteration_cost
from radsim.cost.kernels import KernelCost
from radsim.cost.layer import Execution, LayerLoad, RoutedBatch, _check_tp, attention, layer_cost
from radsim.cost.memory import (
    MemoryUse,
    activation_bytes,
    check_fits,
    kv_entry_bytes,
    weights_bytes,
)
from radsim.cost.money import Pricing
from radsim.cost.power import average_power_W, work_energy_J
from radsim.cost.table import LAUNCH_FIELDS, LaunchPrices, launch_fields, launch_prices, row_counts
from radsim.errors import ConfigError
from radsim.routes.synthetic import check_distribution, depth_visits, is_routed, mean_layers
from radsim.spec.arch import Arch
from radsim.spec.engine import DEFAULT_ENGINE, EngineProfile, load_engine
from radsim.spec.hardware import Hardware


@dataclass(frozen=True)
class Workload:
    """A static batch of identical requests."""

    batch: int
    prompt_tokens: int
    output_tokens: int
    depth_fraction: float = 1.0
    prefill_chunk: int = 8192  # tokens per prefill iteration; 0 prefills the whole batch at once
    seed: int = 0
    depth_distribution: str = "exact"

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_tokens", "output_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prefill_chunk < 0:
            raise ConfigError(f"prefill_chunk must be >= 0, got {self.prefill_chunk}")
        check_distribution(self.depth_distribution)
        mean_layers(1, self.depth_fraction, self.depth_distribution)


# ---- iterations to totals ----------------------------------------------------------------------

#: What each iteration's figures are, per device: GPU time, energy, FLOPs, DRAM bytes, the time of
#: its compute-bound operators and its kernel launches.
STEP_FIELDS = LAUNCH_FIELDS
TIME, ENERGY, FLOPS, BYTES, BOUND, LAUNCHES = range(len(STEP_FIELDS))


@dataclass(frozen=True)
class StepRuns:
    """The iterations of one phase, in order, grouped in runs (see the module's docstring).

    Run r is `count[r]` consecutive iterations, each with `sequences[r]` sequences and
    `first[LAUNCHES, r]` kernel launches, in which every figure of `STEP_FIELDS` is affine in the
    iteration's index: `first[:, r]` and `last[:, r]` are its first and last iterations' figures.
    """

    count: np.ndarray  # (R,) iterations
    first: np.ndarray  # (len(STEP_FIELDS), R)
    last: np.ndarray  # (len(STEP_FIELDS), R)
    sequences: np.ndarray  # (R,)
    prefill: bool

    @classmethod
    def per_step(cls, fields: np.ndarray, sequences, prefill: bool) -> StepRuns:
        """Runs of one iteration each: `fields` (len(STEP_FIELDS), steps)."""
        count = np.ones(fields.shape[1], dtype=np.int64)
        return cls(count, fields, fields, np.broadcast_to(sequences, count.shape), prefill)

    @classmethod
    def join(cls, parts: Sequence[StepRuns], prefill: bool) -> StepRuns:
        """Runs one after another (no parts: a phase without iterations)."""
        if not parts:
            empty = np.zeros((len(STEP_FIELDS), 0))
            return cls(np.zeros(0, dtype=np.int64), empty, empty, np.zeros(0), prefill)
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.count for p in parts]),
            np.concatenate([p.first for p in parts], axis=1),
            np.concatenate([p.last for p in parts], axis=1),
            np.concatenate([p.sequences for p in parts]),
            prefill,
        )

    @property
    def steps(self) -> int:
        """Iterations in all runs."""
        return int(self.count.sum())


@dataclass(frozen=True)
class PhaseTotals:
    """A phase's figures summed over its iterations (per device), and when each run ends."""

    time_s: float
    energy_J: float
    flops: float
    bytes: float
    bound_time_s: float
    launches: float
    steps: int
    run_end_s: np.ndarray  # (R,) time from the phase's start to the end of each run


@dataclass(frozen=True)
class Host:
    """An engine profile's host time around a static batch's iterations (`radsim.cost.host`).

    An iteration's launched layer passes are read from its kernel launches (the cost model's count
    per pass, `radsim.cost.host.LaunchCounts`), as the simulator counts them from its loads; the
    engine's own launches follow from them (an unfused eager decoder launches more)."""

    engine: EngineProfile
    hw: Hardware
    counts: LaunchCounts
    routed: bool

    def passes(self, launches) -> np.ndarray:
        return (
            np.maximum(np.asarray(launches, dtype=np.float64) - self.counts.head, 0.0) / self.counts.per_pass
        )

    def floor_and_serial(self, launches, sequences, decode_only: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per iteration: the time below which the host holds the GPU back, and the host time that
        adds after it (`radsim.cost.host.host_floor_s`)."""
        passes = self.passes(launches)
        engine_launches = self.counts.launches(passes, self.engine)
        return host_floor_s(self.engine, engine_launches, passes, sequences, decode_only, self.routed)

    def wall_s(self, gpu_s, launches, sequences, decode_only: bool) -> np.ndarray:
        """Wall time of iterations whose kernels take `gpu_s`."""
        if self.engine.adds_nothing:
            return np.asarray(gpu_s, dtype=np.float64)
        floor, serial = self.floor_and_serial(launches, sequences, decode_only)
        return np.maximum(gpu_s, floor) + serial


def _host(hw: Hardware, arch: Arch, exe: Execution, engine: EngineProfile | None) -> Host:
    """The host model of a point: its engine profile (the default's where none is given)."""
    return Host(engine or load_engine(DEFAULT_ENGINE), hw, launch_counts(hw, arch, exe), exe.routed)


def _sum_floored(count: np.ndarray, first: np.ndarray, last: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Sum over each run of max(x_i, floor) where x_i runs affinely from `first` to `last` over
    `count` iterations: the iterations below the floor counted in closed form."""
    n = count.astype(np.float64)
    slope = np.where(n > 1, (last - first) / np.maximum(n - 1, 1), 0.0)
    plain = n * (first + last) * 0.5
    # iterations at or above the floor: from index k on (rising), or the first m (falling)
    with np.errstate(divide="ignore", invalid="ignore"):
        rising_k = np.clip(np.ceil((floor - first) / slope), 0, n)
        falling_m = np.where(first >= floor, np.clip(np.floor((first - floor) / -slope) + 1, 0, n), 0.0)
    k = rising_k
    rising = k * floor + (n - k) * first + slope * (n - 1 + k) * (n - k) * 0.5
    m = falling_m
    falling = m * first + slope * m * (m - 1) * 0.5 + (n - m) * floor
    flat = n * np.maximum(first, floor)
    out = np.where(slope > 0, rising, np.where(slope < 0, falling, flat))
    return np.where(
        (first >= floor) & (last >= floor),
        plain,
        np.where((first <= floor) & (last <= floor), n * floor, out),
    )


def run_time_s(runs: StepRuns, host: Host | None = None) -> np.ndarray:
    """(R,) duration of each run: its iterations' GPU time, summed in closed form (affine in the
    iteration index, so the count times the mean of the first and last), under the engine profile's
    host time where one is given (every run's iterations share their launches and sequences, so the
    host's floor is one number per run and the sum of max(gpu, floor) is split where gpu crosses it)."""
    gpu = runs.count * ((runs.first[TIME] + runs.last[TIME]) * 0.5)
    if host is None or host.engine.adds_nothing or not runs.count.size:
        return gpu
    floor, serial = host.floor_and_serial(runs.first[LAUNCHES], runs.sequences, not runs.prefill)
    return _sum_floored(runs.count, runs.first[TIME], runs.last[TIME], floor) + runs.count * serial


def phase_totals(runs: StepRuns, host: Host | None = None) -> PhaseTotals:
    """Reduce a phase's iterations to its totals: the one place iteration figures are summed. Under
    an engine profile the device waits on its host at its active power (`host_wait_energy_J`)."""
    sums = (runs.first + runs.last) * (0.5 * runs.count)
    totals = sums.sum(axis=1)
    duration = run_time_s(runs, host)
    waited = float(duration.sum() - sums[TIME].sum()) if host is not None else 0.0
    return PhaseTotals(
        time_s=float(duration.sum()),
        energy_J=float(totals[ENERGY]) + (float(host_wait_energy_J(host.hw, waited)) if host else 0.0),
        flops=float(totals[FLOPS]),
        bytes=float(totals[BYTES]),
        bound_time_s=float(totals[BOUND]),
        launches=float(totals[LAUNCHES]),
        steps=runs.steps,
        run_end_s=np.cumsum(duration),
    )


# ---- the estimate ------------------------------------------------------------------------------


def estimate(
    hw: Hardware,
    arch: Arch,
    exe: Execution,
    work: Workload,
    pricing: Pricing | None = None,
    engine: EngineProfile | None = None,
) -> dict:
    """Run the static batch and return its metrics as a flat dict (SI units, suffixes in keys); with
    an engine profile, each iteration pays its host time (`radsim.cost.host`)."""
    pricing = pricing or Pricing()
    exe, k, memory = _setup(hw, arch, exe, work)
    host = _host(hw, arch, exe, engine)
    prices = launch_prices(hw, arch, exe)
    rng = np.random.default_rng(work.seed) if exe.routed else None  # no draws without routing
    prefill_runs, finished_chunk, held = _prefill(hw, arch, exe, work, prices, rng)
    if rng is None:
        decode_runs = _sequential_decode(hw, arch, exe, work, prices)
    else:
        decode_runs = _routed_decode(hw, arch, exe, work, prices, rng, held)
    prefill, decode = phase_totals(prefill_runs, host), phase_totals(decode_runs, host)
    first_token_at = prefill.run_end_s[finished_chunk]  # when each request's prompt completes
    out = _metrics(hw, arch, exe, work, k, memory, prefill, decode, first_token_at, pricing)
    return {**out, "engine": host.engine.stem}


Point = tuple[Any, ...]  # (hw, arch, exe, work), (hw, arch, exe, work, pricing) or (..., pricing, engine)


def estimate_many(
    points: Iterable[Point], pricing: Pricing | None = None, *, errors: str = "raise"
) -> list[dict | ConfigError]:
    """`estimate` of many points, in order: each point is (hw, arch, exe, work) or (hw, arch, exe,
    work, pricing), with `pricing` the default of points without one.

    `hw` and `arch` may be objects or names (each name is loaded once per call). What a launch costs
    is priced once per (hardware, architecture, execution) and kept per process
    (`radsim.cost.table.launch_prices`), so points that share them reuse every table. With
    ``errors="return"`` a point whose inputs are invalid (it does not fit, is longer than the
    model's positions, a bad TP degree or dtype) gives its `ConfigError` in its place instead of
    stopping the call.
    """
    if errors not in ("raise", "return"):
        raise ConfigError(f"errors '{errors}'; allowed: raise, return")
    hardware: dict[str, Hardware] = {}
    archs: dict[str, Arch] = {}
    results: list[dict | ConfigError] = []
    for point in points:
        hw, arch, exe, work, *rest = point
        try:
            if isinstance(hw, str):
                hw = hardware.get(hw) or hardware.setdefault(hw, _load_hardware(hw))
            if isinstance(arch, str):
                arch = archs.get(arch) or archs.setdefault(arch, _load_arch(arch))
            point_pricing = rest[0] if rest and rest[0] is not None else pricing
            results.append(estimate(hw, arch, exe, work, point_pricing, rest[1] if len(rest) > 1 else None))
        except ConfigError as exc:
            if errors == "raise":
                raise
            results.append(exc)
    return results


def _load_hardware(name: str) -> Hardware:
    from radsim.spec.hardware import load_hardware

    return load_hardware(name)


def _load_arch(name: str) -> Arch:
    from radsim.spec.arch import load_arch

    return load_arch(name)


def _setup(hw: Hardware, arch: Arch, exe: Execution, work: Workload) -> tuple[Execution, float, MemoryUse]:
    """Check the point; the execution (routed wherever some token skips a layer), the layers each
    token visits and the memory it holds."""
    k = mean_layers(arch.num_layers, work.depth_fraction, work.depth_distribution)
    routed = is_routed(arch.num_layers, work.depth_fraction, work.depth_distribution)
    if exe.routed != routed:
        exe = replace(exe, routed=routed)  # keeps every other setting
    length = work.prompt_tokens + work.output_tokens
    if length > arch.max_position_embeddings:
        raise ConfigError(
            f"{arch.name} has {arch.max_position_embeddings} positions; prompt_tokens + output_tokens = {length}"
        )
    memory = _memory(arch, exe, work, k)
    check_fits(
        hw,
        memory,
        f"{arch.name} at batch {work.batch}, {work.prompt_tokens}+{work.output_tokens} tokens",
    )
    _check_tp(arch, exe)  # what the cost model checks first (`row_ops`)
    return exe, k, memory


def _memory(arch: Arch, exe: Execution, work: Workload, k: float) -> MemoryUse:
    entries_per_token = k if exe.kv_policy == "none" else arch.num_layers
    stored_tokens = work.batch * (work.prompt_tokens + work.output_tokens - 1)
    chunk = _chunk_tokens(work)
    return MemoryUse(
        weights_bytes=weights_bytes(arch, exe),
        kv_cache_bytes=stored_tokens * entries_per_token * kv_entry_bytes(arch, exe),
        activation_bytes=activation_bytes(arch, exe, max(chunk, work.batch), work.batch),
    )


def _chunk_tokens(work: Workload) -> int:
    total = work.batch * work.prompt_tokens
    return total if work.prefill_chunk == 0 else min(work.prefill_chunk, total)


# ---- prefill -----------------------------------------------------------------------------------


def _prefill(
    hw: Hardware,
    arch: Arch,
    exe: Execution,
    work: Workload,
    prices: LaunchPrices,
    rng: np.random.Generator | None,
) -> tuple[StepRuns, np.ndarray, np.ndarray | None]:
    """Every prefill chunk, one run each; the chunk that completes each sequence's prompt; with
    routing under the ``none`` KV policy, the KV entries each sequence holds per layer afterwards
    ((batch, layers) integers; otherwise every sequence holds its prompt in every layer).

    Chunk and sequence boundaries cut the prompt tokens into pieces, one per (chunk, sequence),
    in position order; a piece's sequence holds `offset` earlier tokens of its prompt."""
    batch, prompt = work.batch, work.prompt_tokens
    total = batch * prompt
    chunk = _chunk_tokens(work)
    chunks = -(-total // chunk)
    starts = np.concatenate([np.arange(0, total, chunk), np.arange(0, total, prompt)])
    starts.sort()  # (np.union1d would import numpy.ma, a tenth of a start-up)
    starts = starts[np.diff(starts, prepend=-1) > 0]
    pieces = _Pieces(
        start=starts,
        new=np.diff(starts, append=total),
        chunk=starts // chunk,
        seq=starts // prompt,
        offset=starts % prompt,
        chunk_first=np.searchsorted(starts, np.arange(chunks) * chunk),
    )
    tokens = np.minimum(chunk, total - np.arange(chunks) * chunk)
    finished_chunk = (np.arange(1, batch + 1) * prompt - 1) // chunk
    logit_rows = np.bincount(finished_chunk, minlength=chunks)
    sequences = np.diff(pieces.chunk_first, append=starts.size)
    heads = _lookup(tokens * (batch + 1) + logit_rows, lambda key: prices.head(*divmod(key, batch + 1)))
    if rng is None:
        fields = _sequential_prefill(hw, arch, exe, prices, pieces, tokens)
        held = None
    else:
        fields, held = _routed_prefill(hw, arch, exe, work, prices, rng, pieces, tokens)
    return StepRuns.per_step(fields + heads, sequences, True), finished_chunk, held


@dataclass(frozen=True)
class _Pieces:
    """The (chunk, sequence) pieces of the prompt tokens, in position order."""

    start: np.ndarray  # first position
    new: np.ndarray  # tokens
    chunk: np.ndarray  # the chunk it is in
    seq: np.ndarray  # the sequence it belongs to
    offset: np.ndarray  # tokens of its sequence's prompt in earlier chunks
    chunk_first: np.ndarray  # (chunks,) the first piece of each chunk


def _sequential_prefill(
    hw: Hardware, arch: Arch, exe: Execution, prices: LaunchPrices, pieces: _Pieces, tokens: np.ndarray
) -> np.ndarray:
    """(len(STEP_FIELDS), chunks) of the layers of every chunk when every token visits every layer
    (every layer has the same load: the chunk's tokens, attending to their sequences' earlier tokens)."""
    new, held = pieces.new.astype(np.float64), pieces.offset.astype(np.float64)
    chunks = tokens.size
    # causal pairs of a piece: its queries see the held tokens and, on average, half the new ones
    pairs = np.bincount(pieces.chunk, weights=new * held + new * (new + 1.0) / 2.0, minlength=chunks)
    reads = np.bincount(pieces.chunk, weights=held + new, minlength=chunks)
    rows = tokens.astype(np.float64)
    attn = launch_fields(attention(hw, arch, exe, LayerLoad(rows, rows, rows, rows, pairs, reads)))
    return arch.num_layers * (attn + _lookup(tokens, prices.full_rows))


#: Prompt tokens x layers of the visit masks held at once (the decode blocks' size).
PREFILL_BLOCK_ELEMENTS = 1 << 21


def _routed_prefill(
    hw: Hardware,
    arch: Arch,
    exe: Execution,
    work: Workload,
    prices: LaunchPrices,
    rng: np.random.Generator,
    pieces: _Pieces,
    tokens: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(len(STEP_FIELDS), chunks) of the layers of every chunk with routed tokens, each chunk's
    visits drawn in turn, and the KV entries held after prefill (`_prefill`)."""
    layers, policy = arch.num_layers, exe.kv_policy
    held = np.zeros((work.batch, layers), dtype=np.int64) if policy == "none" else None
    out = np.empty((len(STEP_FIELDS), tokens.size))
    chunks_per_block = max(1, PREFILL_BLOCK_ELEMENTS // (int(tokens[0]) * layers))
    for c0 in range(0, tokens.size, chunks_per_block):
        c1 = min(c0 + chunks_per_block, tokens.size)
        masks = [
            depth_visits(rng, int(n), layers, work.depth_fraction, work.depth_distribution)
            for n in tokens[c0:c1]
        ]
        p0 = pieces.chunk_first[c0]
        p1 = pieces.chunk_first[c1] if c1 < tokens.size else pieces.start.size
        first = pieces.start[p0:p1] - pieces.start[p0]
        visits = np.add.reduceat(np.concatenate(masks), first, axis=0, dtype=np.int64)  # (pieces, L)
        new = pieces.new[p0:p1, None].astype(np.float64)
        seq = pieces.seq[p0:p1]
        v = visits.astype(np.float64)
        if held is not None:  # entries of the sequence's earlier pieces that visited the layer
            before = np.cumsum(visits, axis=0) - visits
            seq_first = np.searchsorted(seq, seq)  # a sequence's pieces are consecutive
            context = (held[seq] + before - before[seq_first]).astype(np.float64)
            firsts = np.flatnonzero(np.diff(seq, prepend=-1))
            held[seq[firsts]] += np.add.reduceat(visits, firsts, axis=0)
            q = kv = v
        else:
            context = pieces.offset[p0:p1, None].astype(np.float64)
            q, kv = row_counts(exe, v, new)
        pairs = q * context + q * (kv + 1.0) / 2.0
        reads = np.where(q > 0, context + kv, 0.0)
        within = pieces.chunk_first[c0:c1] - p0  # each chunk's first piece within the block
        load = LayerLoad(
            *(
                np.add.reduceat(np.broadcast_to(x, v.shape), within, axis=0)
                for x in (q, kv, v, v, pairs, reads)
            )
        )
        attn = _attention_fields(prices, *(getattr(load, f) for f in LOAD_FIELDS)).sum(axis=-1)
        rows = _routed_row_fields(hw, arch, exe, prices, tokens[c0:c1], load.visitors.astype(np.int64))
        out[:, c0:c1] = attn + rows
    return out, held


def _routed_row_fields(
    hw: Hardware,
    arch: Arch,
    exe: Execution,
    prices: LaunchPrices,
    tokens: np.ndarray,
    visitors: np.ndarray,
) -> np.ndarray:
    """(len(STEP_FIELDS), chunks) of every operator but attention, summed over layers, for chunks of
    `tokens` new tokens with `visitors` (chunks, layers) visitors in each layer.

    Each chunk group is priced in one call on the visitor counts present, grouped so that an
    all-reduce takes the algorithm the reference's call per chunk takes (that of its largest
    message, `radsim.cost.kernels.allreduce`)."""
    out = np.empty((len(STEP_FIELDS), tokens.size))
    most = visitors.max(axis=1)
    keys = [(int(n), _allreduce_key(hw, arch, exe, int(m))) for n, m in zip(tokens, most, strict=True)]
    for key in dict.fromkeys(keys):
        group = np.array([i for i, k in enumerate(keys) if k == key])
        present = np.unique(visitors[group])
        r = present.astype(np.float64)
        q, kv = row_counts(exe, r, np.full_like(r, key[0]))
        priced = prices.row_fields(LayerLoad(q, kv, r, r, 0 * r, 0 * r))
        out[:, group] = priced[:, np.searchsorted(present, visitors[group])].sum(axis=-1)
    return out


#: The `LayerLoad` fields of a load matrix's rows (`radsim.cost.loads.LOAD_ROWS`).
LOAD_FIELDS = ("q_rows", "kv_rows", "visitors", "pairs", "held")


def _attention_fields(prices: LaunchPrices, q, kv, visitors, pairs, held) -> np.ndarray:
    """(len(STEP_FIELDS), *shape) of attention launches with these loads (arrays that broadcast), in
    the closed form of the tabulated model (`radsim.cost.table.attention_fields`: the cost model's
    own coefficients, to the last bits, in fewer passes over the arrays than `attention`)."""
    rows = np.broadcast_arrays(q, kv, visitors, pairs, held)
    shape = rows[0].shape
    load = np.stack([r.ravel() for r in rows])
    out = np.empty((len(STEP_FIELDS), load.shape[1]))
    out[:LAUNCHES] = prices.attention(load)
    # RoPE with the KV write wherever entries are written, the kernel wherever a query visits
    out[LAUNCHES] = load[0] > 0
    out[LAUNCHES] += load[1] > 0
    return out.reshape(len(STEP_FIELDS), *shape)


def _allreduce_key(hw: Hardware, arch: Arch, exe: Execution, rows_max: int) -> int | None:
    """Which measured all-reduce a launch group whose largest all-reduce has `rows_max` rows uses
    (`radsim.cost.kernels.allreduce`); None without measured tables or tensor parallelism."""
    tables = hw.kernel_tables
    if tables is None or exe.tp == 1:
        return None
    message = float(rows_max * arch.hidden_size * exe.act_bytes)
    return id(tables.allreduce_curve(exe.tp, message))


def _lookup(keys: np.ndarray, price: Callable[[int], np.ndarray]) -> np.ndarray:
    """(len(STEP_FIELDS), len(keys)) of `price(key)` for each key, priced once per distinct key."""
    if keys.size <= 64:  # the prices are kept: a lookup per key is cheaper than finding the distinct ones
        return np.stack([price(key) for key in keys.tolist()], axis=1)
    distinct, inverse = np.unique(keys, return_inverse=True)
    return np.stack([price(int(key)) for key in distinct], axis=1)[:, inverse]


# ---- decode ------------------------------------------------------------------------------------


def _sequential_decode(
    hw: Hardware, arch: Arch, exe: Execution, work: Workload, prices: LaunchPrices
) -> StepRuns:
    """The decode steps when every token visits every layer, as affine runs (module docstring)."""
    steps = work.output_tokens - 1
    if steps == 0:
        return StepRuns.join([], False)
    batch, context = float(work.batch), float(work.prompt_tokens)

    def layer_attention(step: np.ndarray) -> KernelCost:
        """Attention of one layer at decode steps `step`: each sequence holds context + step entries
        and attends to them and to its new token."""
        rows = np.full(step.shape, batch)
        pairs = batch * (context + step + 1.0)
        return attention(hw, arch, exe, LayerLoad(rows, rows, rows, rows, pairs, pairs))

    at, first, last = _affine_runs(hw, layer_attention, steps)
    rows, head = prices.full_rows(work.batch)[:, None], prices.head(work.batch, work.batch)[:, None]
    layers = arch.num_layers
    count = np.diff(at, append=steps)
    sequences = np.full(count.shape, work.batch)
    return StepRuns(count, layers * (first + rows) + head, layers * (last + rows) + head, sequences, False)


#: Decode phases this short are priced step by step.
SHORT_DECODE = 16


def _running_entries(visits: np.ndarray, held: np.ndarray) -> np.ndarray:
    """(steps, batch, layers) KV entries each layer holds for each sequence after each step: `held`
    before the first step plus the visits so far."""
    if visits[0].size <= 512:  # numpy's cumulative sum along a long leading axis is fast when rows are short
        entries = np.cumsum(visits, axis=0, dtype=np.int32)
        entries += held.astype(np.int32)
        return entries
    entries = visits.astype(np.int32)  # and slower than a step-by-step sum when they are long
    entries[0] += held.astype(np.int32)
    for step in range(1, entries.shape[0]):
        np.add(entries[step], entries[step - 1], out=entries[step])
    return entries


def _affine_runs(
    hw: Hardware, evaluate: Callable[[np.ndarray], KernelCost], steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split steps 0..steps-1 into runs over which the launch `evaluate` prices (attention, whose load
    is affine in the step) has affine figures: the runs' first steps, and `launch_fields` at their
    first and last steps.

    Within a run the roofline keeps its side (compute or memory bound) and the energy stays capped
    or not (`radsim.cost.power`). Both sides change where an affine function of the step changes
    sign: the switch steps are solved from the figures at both ends (`_switch_guesses`), the
    cost model is evaluated around each, and wherever two evaluated steps apart differ in regime,
    every step between them is priced too."""
    if steps <= SHORT_DECODE:
        step = np.arange(steps)
        fields = launch_fields(evaluate(step))
        return step, fields, fields
    points = np.array([0, steps - 1])
    cost = evaluate(points)
    guesses = _switch_guesses(hw, cost, steps)
    if guesses:
        window = np.concatenate([np.arange(g - 3, g + 4) for g in guesses])
        points = np.union1d(points, np.clip(window, 0, steps - 1))
        cost = evaluate(points)
    regime = _regime(hw, cost)
    unknown = np.flatnonzero((np.diff(points) > 1) & (regime[1:] != regime[:-1]))
    if unknown.size:  # a switch the guesses missed: price every step of its gap
        gaps = [np.arange(points[i] + 1, points[i + 1]) for i in unknown]
        points = np.union1d(points, np.concatenate(gaps))
        cost = evaluate(points)
        regime = _regime(hw, cost)
    fields = launch_fields(cost)
    change = np.flatnonzero(regime[1:] != regime[:-1]) + 1  # each between adjacent steps now
    first = np.concatenate([[0], change])
    last = np.concatenate([change - 1, [points.size - 1]])
    return points[first], fields[:, first], fields[:, last]


def _regime(hw: Hardware, cost: KernelCost) -> np.ndarray:
    """Which branch of each maximum and minimum a launch's figures take: compute bound (2) or not,
    plus energy capped at the board power (1) or not (as `radsim.cost.power.capped_energy_J` takes them)."""
    work = work_energy_J(hw, cost.flops, cost.peak_flops, cost.bytes + cost.link_bytes)
    capped = hw.idle_power_W * cost.time_s + work > hw.max_power_W * cost.time_s
    return 2 * (cost.compute_time_s > cost.memory_time_s) + capped


def _switch_guesses(hw: Hardware, ends: KernelCost, steps: int) -> list[int]:
    """Steps near which the regime (`_regime`) of a launch whose load is affine in the step may
    switch, from its figures at steps 0 and steps - 1: compute and memory time, FLOPs and bytes are
    affine in the step, time is their maximum plus the launch overhead, and the energy is capped
    where the work's energy exceeds (max - idle power) x time."""
    span = steps - 1
    compute, memory = ends.compute_time_s, ends.memory_time_s
    work = work_energy_J(hw, ends.flops, ends.peak_flops, ends.bytes + ends.link_bytes)
    overhead = float(ends.time_s[0] - max(compute[0], memory[0]))
    guesses = []
    gap = compute - memory
    sides = [(0.0, float(span), bool(gap[0] > 0))]
    if (gap[0] > 0) != (gap[1] > 0):
        root = float(gap[0] / (gap[0] - gap[1]) * span)
        guesses.append(int(root))
        sides = [(0.0, root, bool(gap[0] > 0)), (root, float(span), bool(gap[1] > 0))]
    headroom = hw.max_power_W - hw.idle_power_W
    for lo, hi, compute_bound in sides:
        busy = compute if compute_bound else memory
        # the work's energy less headroom x time, affine on this side: capped where it is > 0
        start = work[0] - headroom * (busy[0] + overhead)
        slope = (work[1] - work[0]) / span - headroom * (busy[1] - busy[0]) / span
        if slope != 0.0 and lo <= -start / slope <= hi:
            guesses.append(int(-start / slope))
    return guesses


DECODE_BLOCK_ELEMENTS = 1 << 21  # (steps x layers x sequences) costed in one call


def _routed_decode(
    hw: Hardware,
    arch: Arch,
    exe: Execution,
    work: Workload,
    prices: LaunchPrices,
    rng: np.random.Generator,
    held: np.ndarray | None,
) -> StepRuns:
    """Every decode step with routed tokens, one run each; visits drawn block after block as the
    reference draws them. `held` ((batch, layers), ``none`` policy) is updated."""
    layers, batch = arch.num_layers, work.batch
    steps_left = work.output_tokens - 1
    block = max(1, DECODE_BLOCK_ELEMENTS // (layers * batch))
    head = prices.head(batch, batch)[:, None]
    parts, done = [], 0
    while steps_left:
        steps = min(block, steps_left)
        mask = depth_visits(rng, steps * batch, layers, work.depth_fraction, work.depth_distribution)
        visits = mask.reshape(steps, batch, layers)
        visitors = visits.sum(axis=1)  # (steps, layers)
        v = visitors.astype(np.float64)
        if held is not None:  # the ``none`` policy
            # a visitor attends to the entries its layer holds and to its own: held + visits so far
            entries = _running_entries(visits, held)
            pairs = (entries * visits).sum(axis=1, dtype=np.int64).astype(np.float64)
            held[...] = entries[-1]
            q = kv = v
        else:  # every sequence writes an entry each step in every layer: prompt + step held
            entries = work.prompt_tokens + done + np.arange(1.0, steps + 1.0)[:, None]
            q, kv = row_counts(exe, v, np.full_like(v, batch))
            pairs = q * entries
        attn = _attention_fields(prices, q, kv, v, pairs, pairs)
        table = prices.rows_by_visitors(batch, int(visitors.max()))
        width = table.shape[1]
        counts = np.bincount((np.arange(steps)[:, None] * width + visitors).ravel(), minlength=steps * width)
        rows = table @ counts.reshape(steps, width).T
        parts.append(StepRuns.per_step(attn.sum(axis=-1) + rows + head, batch, False))
        steps_left -= steps
        done += steps
    return StepRuns.join(parts, False)


# ---- metrics -----------------------------------------------------------------------------------


def _metrics(hw, arch, exe, work, k, memory, prefill, decode, first_token_at, pricing) -> dict:
    e2e = prefill.time_s + decode.time_s  # every request completes with the last decode step
    out_tokens = work.batch * work.output_tokens
    energy = (prefill.energy_J + decode.energy_J) * exe.tp
    cost = pricing.cost_usd(hw, exe.tp, e2e, energy)
    return {
        "hw": hw.stem,
        "kernel_tables": hw.kernel_tables.source if hw.kernel_tables else "",
        "arch": arch.name,
        **vars(exe),  # the fields of these frozen dataclasses, in order (what asdict gives, faster)
        **vars(work),
        "layers": arch.num_layers,
        "layers_visited_per_token": int(k) if work.depth_distribution == "exact" else k,
        "ttft_s": float(first_token_at.mean()),
        # One output token means no decode step: there is no time per output token to report.
        "tpot_s": float(((e2e - first_token_at) / decode.steps).mean()) if decode.steps else None,
        "e2e_s": e2e,
        "prefill_time_s": prefill.time_s,
        "decode_step_s": decode.time_s / decode.steps if decode.steps else None,
        "output_tokens_per_s": out_tokens / e2e,
        "prefill_tokens_per_s": work.batch * work.prompt_tokens / prefill.time_s,
        "prefill_steps": prefill.steps,
        "decode_steps": decode.steps,
        "prefill_compute_bound_fraction": prefill.bound_time_s / prefill.time_s,
        "decode_compute_bound_fraction": (decode.bound_time_s / decode.time_s) if decode.steps else 0.0,
        "flops_per_device": prefill.flops + decode.flops,
        "dram_bytes_per_device": prefill.bytes + decode.bytes,
        "kernel_launches": prefill.launches + decode.launches,
        "peak_memory_bytes": memory.total_bytes,
        "weights_bytes": memory.weights_bytes,
        "kv_cache_bytes": memory.kv_cache_bytes,
        "activation_bytes": memory.activation_bytes,
        "memory_capacity_bytes": hw.memory_capacity_bytes,
        "devices": exe.tp,
        "avg_power_W": average_power_W(energy, e2e),
        "energy_J": energy,
        "energy_J_per_output_token": energy / out_tokens,
        "cost_usd": cost,
        "cost_usd_per_Mtok": cost / out_tokens * 1e6,
        "electricity_usd_per_kWh": pricing.electricity_usd_per_kWh,
        "price_usd_per_hour": hw.price_usd_per_hour,
    }


# ---- the step-by-step reference (tests) --------------------------------------------------------


@dataclass
class _Totals:
    time_s: float = 0.0
    energy_J: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    bound_time_s: float = 0.0
    launches: float = 0.0
    steps: int = 0

    def add(self, step: IterationBreakdown, host: Host, sequences: int) -> None:
        launches = float(step.layers.launches.sum() + step.head.launches.sum())
        wall = float(host.wall_s(step.time_s, launches, sequences, False))
        self.time_s += wall
        self.energy_J += step.energy_J + float(host_wait_energy_J(host.hw, wall - step.time_s))
        self.flops += step.flops
        self.bytes += step.bytes
        self.bound_time_s += step.compute_bound_fraction * step.time_s
        self.launches += float(step.layers.launches.sum() + step.head.launches.sum())
        self.steps += 1


def _reference_estimate(
    hw: Hardware,
    arch: Arch,
    exe: Execution,
    work: Workload,
    pricing: Pricing | None = None,
    engine: EngineProfile | None = None,
) -> dict:
    """`estimate` as a loop over iterations, one cost-model call per prefill chunk and per block of
    decode steps (`_prefill_steps`, `_decode`): the reference the tests hold `estimate` to."""
    pricing = pricing or Pricing()
    exe, k, memory = _setup(hw, arch, exe, work)
    host = _host(hw, arch, exe, engine)
    rng = np.random.default_rng(work.seed)
    held = np.zeros((arch.num_layers, work.batch))
    prefill, decode = _Totals(), _Totals()
    first_token_at = np.zeros(work.batch)  # when each request's prompt completes
    for step, finished, sequences in _prefill_steps(hw, arch, exe, work, rng, held):
        prefill.add(step, host, sequences)
        first_token_at[finished] = prefill.time_s
    _decode(hw, arch, exe, work, rng, held, decode, host)
    out = _metrics(hw, arch, exe, work, k, memory, prefill, decode, first_token_at, pricing)
    return {**out, "engine": host.engine.stem}


def _prefill_steps(hw, arch, exe, work, rng, held):
    """Yield the cost of each prefill chunk and the sequences whose prompt it completes; `held` (KV
    entries per layer and sequence) is updated."""
    total = work.batch * work.prompt_tokens
    chunk = _chunk_tokens(work)
    for start in range(0, total, chunk):
        positions = np.arange(start, min(start + chunk, total))
        seq = positions // work.prompt_tokens
        visits_mask = depth_visits(
            rng, positions.size, arch.num_layers, work.depth_fraction, work.depth_distribution
        )
        seqs, first, counts = np.unique(seq, return_index=True, return_counts=True)
        new = counts.astype(np.float64)
        # positions are in sequence order, so each sequence's visits are one contiguous sum
        visits = np.add.reduceat(visits_mask, first, axis=0, dtype=np.float64).T
        finished = seq[(positions + 1) % work.prompt_tokens == 0]
        step = iteration_cost(hw, arch, exe, new, held[:, seqs], visits, finished.size)
        held[:, seqs] += visits if exe.kv_policy == "none" else new[None, :]
        yield step, finished, int(seqs.size)


def _decode(hw, arch, exe, work, rng, held, totals: _Totals, host: Host) -> None:
    """Add every decode step's cost to `totals`; `held` (KV entries per layer and sequence) is updated.

    Steps are costed in blocks with a leading step axis (the cost model is vectorised), which gives
    the same numbers as one call per step: each step's visits are drawn in order from `rng`.
    """
    layers, batch = arch.num_layers, work.batch
    steps_left = work.output_tokens - 1
    block = max(1, DECODE_BLOCK_ELEMENTS // (layers * batch))
    new = np.ones(batch)
    head = head_cost(hw, arch, exe, float(batch), float(batch))
    while steps_left:
        steps = min(block, steps_left)
        # one step's draw after another
        mask = depth_visits(rng, steps * batch, layers, work.depth_fraction, work.depth_distribution)
        visits = mask.reshape(steps, batch, layers).transpose(0, 2, 1).astype(np.float64)
        added = visits if exe.kv_policy == "none" else np.ones_like(visits)
        context = held[None] + np.cumsum(added, axis=0) - added  # entries before each step
        cost = layer_cost(hw, arch, exe, RoutedBatch.of(new, context, visits))
        gpu = cost.time_s.sum(axis=(0, 2)) + head.time_s.sum()  # (steps,)
        launches = cost.launches.sum(axis=(0, 2)) + head.launches.sum()
        wall = host.wall_s(gpu, launches, batch, True)
        totals.time_s += float(wall.sum())
        totals.energy_J += float(
            cost.energy_J.sum() + steps * head.energy_J.sum() + host_wait_energy_J(hw, wall - gpu).sum()
        )
        totals.flops += float(cost.flops.sum() + steps * head.flops.sum())
        totals.bytes += float(cost.bytes.sum() + steps * head.bytes.sum())
        totals.bound_time_s += float(
            cost.time_s[cost.compute_time_s > cost.memory_time_s].sum()
            + steps * head.time_s[head.compute_time_s > head.memory_time_s].sum()
        )
        totals.launches += float(cost.launches.sum() + steps * head.launches.sum())
        totals.steps += steps
        held += added.sum(axis=0)
        steps_left -= steps
