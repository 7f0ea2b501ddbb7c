"""Static batch estimate: a batch of identical requests, prefilled together, then decoded in lockstep.

The prompt tokens of the whole batch are prefilled in chunks of at most `prefill_chunk` tokens
(chunked prefill, as serving engines bound activation memory), sequence after sequence; a sequence
split across chunks attends to its earlier chunks through the KV cache. Decode then generates one
token per sequence per step until every request has `output` tokens (the first comes from prefill).
With `depth_fraction < 1` each token visits round(f x L) layers chosen at random, a router runs
after each visit and visitors are gathered and scattered (`routing.exact_visits`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from radsim.cost.host import LaunchCounts, host_wait_energy_J, iteration_time_s, launch_counts
from radsim.cost.iteration import IterationBreakdown, head_cost, iteration_cost
from radsim.cost.layer import Execution, RoutedBatch, layer_cost
from radsim.cost.memory import (
    MemoryUse,
    activation_bytes,
    check_fits,
    kv_entry_bytes,
    weights_bytes,
)
from radsim.cost.money import Pricing
from radsim.cost.power import average_power_W
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


@dataclass
class _Totals:
    time_s: float = 0.0
    energy_J: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    bound_time_s: float = 0.0
    steps: int = 0

    def add(self, step: IterationBreakdown, host: _Host, sequences: int) -> None:
        passes = int(np.count_nonzero(step.layers.launches.sum(axis=0) > 0))
        wall = host.time_s(step.time_s, passes, sequences, False)
        self.time_s += float(wall)
        self.energy_J += step.energy_J + float(host_wait_energy_J(host.hw, wall - step.time_s))
        self.flops += step.flops
        self.bytes += step.bytes
        self.bound_time_s += step.compute_bound_fraction * step.time_s
        self.steps += 1


@dataclass(frozen=True)
class _Host:
    """The engine profile's host time around an iteration's kernels (`radsim.cost.host`)."""

    engine: EngineProfile
    hw: Hardware
    counts: LaunchCounts
    routed: bool

    def time_s(self, gpu_s, passes, sequences, decode_only: bool) -> np.ndarray:
        launches = self.counts.launches(passes, self.engine)
        return iteration_time_s(self.engine, gpu_s, launches, passes, sequences, decode_only, self.routed)


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
    engine = engine or load_engine(DEFAULT_ENGINE)
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
    rng = np.random.default_rng(work.seed)
    held = np.zeros((arch.num_layers, work.batch))
    prefill, decode = _Totals(), _Totals()
    host = _Host(engine, hw, launch_counts(hw, arch, exe), exe.routed)
    first_token_at = np.zeros(work.batch)  # when each request's prompt completes
    for step, finished, sequences in _prefill_steps(hw, arch, exe, work, rng, held):
        prefill.add(step, host, sequences)
        first_token_at[finished] = prefill.time_s
    _decode(hw, arch, exe, work, rng, held, decode, host)
    out = _metrics(hw, arch, exe, work, k, memory, prefill, decode, first_token_at, pricing)
    return {**out, "engine": engine.stem}


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


DECODE_BLOCK_ELEMENTS = 1 << 21  # (steps x layers x sequences) costed in one call


def _decode(hw, arch, exe, work, rng, held, totals: _Totals, host: _Host) -> None:
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
        passes = np.count_nonzero(cost.launches.sum(axis=0) > 0, axis=-1)
        wall = host.time_s(gpu, passes, batch, True)
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
        totals.steps += steps
        held += added.sum(axis=0)
        steps_left -= steps


def _metrics(hw, arch, exe, work, k, memory, prefill, decode, first_token_at, pricing) -> dict:
    e2e = prefill.time_s + decode.time_s  # every request completes with the last decode step
    out_tokens = work.batch * work.output_tokens
    energy = (prefill.energy_J + decode.energy_J) * exe.tp
    cost = pricing.cost_usd(hw, exe.tp, e2e, energy)
    return {
        "hw": hw.stem,
        "kernel_tables": hw.kernel_tables.source if hw.kernel_tables else "",
        "arch": arch.name,
        **{key: value for key, value in asdict(exe).items()},
        **asdict(work),
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
