"""Evaluation of one study point: its inputs in, one flat row of SI metrics out.

Command `estimate` runs the static batch of `radsim.cost.estimate`; command `simulate` runs the serving
simulator (`radsim.sim.engine`) on a static batch arriving at once (arrival `batch`) or on Poisson or
gamma arrivals, and summarises it with `radsim.sim.metrics`. Both add what the plots need beside the
scalar metrics, as JSON text so that the result stays one tidy row: each layer's FLOPs, DRAM bytes
and time in a representative prefill chunk and decode step (`roofline_json`, from the pure cost
model), the distribution of layers visited per token (`depth_histogram_json`) and, for simulations,
power over time in coarse bins (`power_timeline_json`). A point that fails returns its inputs and
the error instead of raising, so that one bad point does not stop a study.
"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np

from radsim.cost.layer import Execution
from radsim.cost.table import launch_prices
from radsim.errors import ConfigError
from radsim.files import json_text
from radsim.routes.synthetic import depth_visits
from radsim.scenario import run
from radsim.scenario.schema import SCENARIO_FIELDS, Scenario, scenario_from
from radsim.spec.arch import Arch
from radsim.spec.hardware import Hardware

POWER_BINS = 60
_DIGITS = 6  # significant digits kept in the JSON columns (the cost model's priors are coarser)


def evaluate(point: dict[str, Any], trace_file: str | None = None) -> dict[str, Any]:
    """One row: the point's inputs, then its metrics, then `error` ('' when it succeeded)."""
    row = dict(point)
    try:
        scenario = scenario_from({k: v for k, v in point.items() if k in SCENARIO_FIELDS})
        evaluator = {"estimate": _estimate, "simulate": _simulate, "capacity": _capacity}[scenario.command]
        row.update(evaluator(scenario, trace_file))
        row["error"] = ""
    except Exception as exc:  # a failed point is recorded, not raised
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = "" if isinstance(exc, ConfigError) else f" (at {where.name}:{where.lineno})"
        row["error"] = f"{type(exc).__name__}: {exc}{detail}"
    return row


def _common(hw: Hardware, arch: Arch, exe: Execution) -> dict[str, Any]:
    peak = hw.peak_flops(exe.dtype)
    return {
        "num_layers": arch.num_layers,
        "params": arch.total_params,
        "peak_flops": peak,
        "achievable_flops": peak * hw.gemm_efficiency,
        "memory_bandwidth_Bps": hw.memory_bandwidth_Bps,
        "achievable_Bps": hw.memory_bandwidth_Bps * hw.memory_efficiency,
    }


def _estimate(s: Scenario, trace_file: str | None) -> dict[str, Any]:
    hw, arch = run.hardware(s), run.architecture(s)
    exe = run.estimate_execution(s, arch)
    out = _common(hw, arch, exe)
    result = run.run_estimate(s)
    out.update({k: v for k, v in result.items() if k not in _ESTIMATE_ECHO})
    k = result["layers_visited_per_token"]
    out["mean_depth_fraction"] = k / arch.num_layers
    if s.depth_distribution == "exact":
        histogram = {"layers_visited": [k], "token_share": [1.0]}
    else:
        from scipy.stats import binom  # only here: scipy.stats is a fifth of a study's start-up

        layers = np.arange(1, arch.num_layers + 1)
        share = binom.pmf(layers, arch.num_layers, run.depth_fraction(s, arch))
        share[0] += binom.pmf(0, arch.num_layers, run.depth_fraction(s, arch))  # at least one layer
        histogram = {"layers_visited": layers.tolist(), "token_share": share}
    out["depth_histogram_json"] = _json(histogram)
    rng = np.random.default_rng(s.seed)
    fraction = run.depth_fraction(s, arch)

    def visits(sequences: int, tokens: int) -> np.ndarray:
        if not exe.routed:  # every token visits every layer: what depth_visits would draw, without drawing
            return np.full((arch.num_layers, sequences), float(tokens))
        mask = depth_visits(rng, sequences * tokens, arch.num_layers, fraction, s.depth_distribution)
        return per_sequence(mask, sequences, tokens)

    out["roofline_json"] = _json(roofline_layers(hw, arch, exe, s, visits))
    return out


#: What the estimate echoes of its inputs: the row has them already.
_ESTIMATE_ECHO = {
    "engine",
    "hw",
    "arch",
    "dtype",
    "tp",
    "kv_policy",
    "routed",
    "expert_launch",
    "layers",
    "batch",
    "prompt_tokens",
    "output_tokens",
    "depth_fraction",
    "prefill_chunk",
    "seed",
    "depth_distribution",
}


def _simulate(s: Scenario, trace_file: str | None) -> dict[str, Any]:
    from radsim.cost.memory import activation_bytes, weights_bytes
    from radsim.sim.metrics import timeline_table

    sim, m = run.run_simulation(s, trace_file)
    cfg, book = sim.cfg, sim.routes
    hw, arch, exe, sched = cfg.hw, cfg.arch, cfg.exe, cfg.scheduler
    out = _common(hw, arch, exe)
    out.update(
        {k: v for k, v in m.items() if k not in ("prompt_tokens", "output_tokens", "warnings", "engine")}
    )
    out["warnings"] = "; ".join(m["warnings"])
    out["prompt_tokens_total"], out["output_tokens_total"] = m["prompt_tokens"], m["output_tokens"]
    out.update(ttft_s=m["ttft_s_mean"], tpot_s=m["tpot_s_mean"], e2e_s=m["e2e_s_mean"])
    depth = book.depth
    out["mean_depth_fraction"] = book.mean_depth_fraction
    out["layers_visited_per_token"] = float(depth.mean())
    out["kv_policy_used"] = exe.kv_policy
    out["weights_bytes"] = weights_bytes(arch, exe)
    out["kv_cache_bytes"] = float(m["kv_cache_peak_bytes"])
    out["activation_bytes"] = activation_bytes(arch, exe, sched.max_tokens_per_iteration, sched.max_batch)
    out["peak_memory_bytes"] = out["weights_bytes"] + out["kv_cache_bytes"] + out["activation_bytes"]
    out["memory_capacity_bytes"] = hw.memory_capacity_bytes
    out["price_usd_per_hour"] = hw.price_usd_per_hour
    values, counts = np.unique(depth, return_counts=True)
    out["depth_histogram_json"] = _json(
        {"layers_visited": values.tolist(), "token_share": counts / counts.sum()}
    )
    out["power_timeline_json"] = _json(power_timeline(timeline_table(sim), sim, hw, exe.tp, cfg.replicas))
    rng = np.random.default_rng(s.seed)
    passes = book.slots.shape[1] // arch.num_layers

    def visits(sequences: int, tokens: int) -> np.ndarray:
        n = sequences * tokens
        rows = book.slots[rng.integers(book.slots.shape[0], size=n)].reshape(n, passes, arch.num_layers)
        return np.stack([per_sequence(rows[:, i], sequences, tokens) for i in range(passes)])

    out["roofline_json"] = _json(roofline_layers(hw, arch, exe, s, visits))
    return out


def _capacity(s: Scenario, trace_file: str | None) -> dict[str, Any]:
    """The capacity search of `radsim.scenario.capacity`, and the row of the run at that rate."""
    from dataclasses import replace

    from radsim.scenario.capacity import CapacitySearch, find_capacity

    found = find_capacity(s, CapacitySearch(), trace_file)
    found.pop("rate_run")
    probes = found.pop("probes")
    at = replace(s, command="simulate", slo_percentile=90, rate_per_s=found["max_rate_per_s"])
    out = _simulate(at, trace_file)  # the same run the search judged (same inputs, same seed)
    out.update({k: v for k, v in found.items() if k not in ("slo_ttft_s", "slo_tpot_s", "duration_s")})
    out["cost_usd_per_Mtok_at_slo"] = found["cost_usd_per_Mtok"]
    out["capacity_probes_json"] = _json({k: [probe[k] for probe in probes] for k in probes[0]})
    return out


def roofline_layers(hw: Hardware, arch: Arch, exe: Execution, s: Scenario, visits) -> dict:
    """Per-layer FLOPs, DRAM bytes and time of the first prefill chunk and of a mid-output decode step.

    `visits(sequences, tokens)` gives the (num_layers, sequences) visits of each layer by `tokens`
    tokens of each of `sequences` sequences (`per_sequence`), or (passes, num_layers, sequences)
    where routes pass through the layers more than once: each pass launches the layers it visits
    again, and a layer's figures are summed over its passes. The prefill chunk packs whole prompts
    (the chunk budget, at least one prompt); the decode step has one token per sequence of the
    batch, each holding the prompt and half the output in its KV cache.
    """
    batch, prompt, output, layers = s.sequences_per_batch, s.prompt_tokens, s.output_tokens, arch.num_layers
    chunk = s.prefill_chunk or batch * prompt
    seqs = max(1, min(batch, chunk // prompt))
    prices = launch_prices(hw, arch, exe)  # the estimate's own: a sweep prices each row count once

    def passes(sequences: int, tokens: int) -> np.ndarray:
        v = np.asarray(visits(sequences, tokens), dtype=np.float64)
        return v[None] if v.ndim == 2 else v

    def priced(new_tokens: np.ndarray, context: np.ndarray, by_pass: np.ndarray) -> list:
        launched = [v for v in by_pass if v.any()] or [by_pass[0]]
        return [prices.iteration_layers(new_tokens, context, v) for v in launched]

    prefill = priced(np.full(seqs, float(prompt)), np.zeros((layers, seqs)), passes(seqs, prompt))
    held = prompt + output // 2
    decode_visits = passes(batch, 1)
    share = np.ones(layers)  # KV entries a layer holds per earlier token
    if exe.kv_policy == "none":  # only the tokens that visited the layer left an entry
        share = np.minimum(1.0, passes(256, 1).sum(axis=0).mean(axis=1))
    context = np.broadcast_to(held * share[:, None], (layers, batch))
    decode = priced(np.ones(batch), context, decode_visits)
    return {"prefill": _per_layer(prefill), "decode": _per_layer(decode)}


def per_sequence(token_visits: np.ndarray, sequences: int, tokens: int) -> np.ndarray:
    """(num_layers, sequences) visits summed over each sequence's tokens, from the (sequences x tokens,
    num_layers) visits of the tokens in sequence order."""
    return token_visits.reshape(sequences, tokens, -1).sum(axis=1).T.astype(np.float64)


def _per_layer(costs: list) -> dict[str, list[float]]:
    """Per-layer figures of the launches of each pass (`radsim.cost.kernels.Cost`s), summed over passes."""
    time_s = sum(c.time_s.sum(axis=0) for c in costs)
    flops = sum(c.flops.sum(axis=0) for c in costs)
    moved = sum(c.bytes.sum(axis=0) for c in costs)
    return {
        "layer": [int(i) for i in np.flatnonzero(time_s > 0)],
        "flops": _round(flops[time_s > 0]),
        "bytes": _round(moved[time_s > 0]),
        "time_s": _round(time_s[time_s > 0]),
    }


def power_timeline(timeline, sim, hw: Hardware, tp: int, replicas: int) -> dict[str, list[float]]:
    """Mean power of all devices in `POWER_BINS` equal bins from the first arrival to the last completion.

    Each iteration's energy is spread evenly over its duration; the time replicas are not busy in a
    bin draws idle power, as in `radsim.sim.metrics`.
    """
    start = min((r.arrival_at for r in sim.requests), default=0.0)
    end = max([start] + [f.done_at for r in sim.replicas for f in r.scheduler.done])
    if end <= start or not len(timeline):
        return {"t_s": [], "power_W": []}
    edges = np.linspace(start, end, POWER_BINS + 1)
    energy = np.zeros(POWER_BINS)
    busy = np.zeros(POWER_BINS)
    for _, rows in timeline.groupby("replica"):
        begin = rows["start_at"].to_numpy()
        finish = begin + rows["time_s"].to_numpy()
        t = np.column_stack([begin, finish]).ravel()
        cum_e = np.cumsum(np.column_stack([np.zeros(len(rows)), rows["energy_J"].to_numpy()]).ravel())
        cum_b = np.cumsum(np.column_stack([np.zeros(len(rows)), rows["time_s"].to_numpy()]).ravel())
        energy += np.diff(np.interp(edges, t, cum_e))
        busy += np.diff(np.interp(edges, t, cum_b))
    width = np.diff(edges)
    idle = np.maximum(replicas * width - busy, 0.0) * hw.idle_power_W * tp
    return {"t_s": _round(edges[:-1] - start), "power_W": _round((energy + idle) / width)}


def _round(values) -> list[float]:
    rounded: dict[float, float] = {}  # each distinct value formatted once (an unrouted layer repeats)
    out = []
    for v in np.asarray(values, dtype=np.float64).tolist():
        r = rounded.get(v) if v else v  # zeros as they are: 0.0 and -0.0 would share a key
        if r is None:
            r = rounded[v] = float(f"{v:.{_DIGITS}g}")
        out.append(r)
    return out


def _json(value: dict) -> str:
    def convert(v):
        if isinstance(v, np.ndarray):
            return _round(v)
        return v

    return json_text({k: convert(v) for k, v in value.items()}, separators=(",", ":"))  # NaN as null
