"""Metrics of a simulated run: latencies, throughput, goodput, energy and money.

TTFT is first token minus arrival; TPOT is (last token - first token) / (output tokens - 1) per
request; inter-token latency (ITL) is every gap between two tokens of a request (kept as a fine
log-spaced histogram, so percentiles are exact to within one bin, 1.2%); end-to-end is completion
minus arrival. `decode_step_s` is the mean duration of the iterations that only decode (no prompt
tokens), the figure a static batch's lockstep decode step is. Throughput counts output tokens over the makespan (first arrival to last completion).
Goodput counts requests that met both SLOs, per second. Energy integrates every iteration's energy
and idle power between iterations over every device of every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from radsim.cost.money import Pricing
from radsim.sim.scheduler import ITL_BINS, Finished

if TYPE_CHECKING:  # pandas loads when a table is asked for
    import pandas as pd

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SLO:
    """Latency targets a request must meet to count towards goodput."""

    ttft_s: float = 2.0
    tpot_s: float = 0.1


def _summary(name: str, values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {f"{name}_mean": None, **{f"{name}_p{p}": None for p in PERCENTILES}}
    out: dict[str, float | None] = {f"{name}_mean": float(values.mean())}
    out.update({f"{name}_p{p}": float(np.percentile(values, p)) for p in PERCENTILES})
    return out


def _histogram_percentiles(counts: np.ndarray, total: float, n: int) -> dict[str, float | None]:
    if n == 0:
        return {"itl_s_mean": None, **{f"itl_s_p{p}": None for p in PERCENTILES}}
    cum = np.cumsum(counts)
    centres = np.r_[ITL_BINS[0], np.sqrt(ITL_BINS[1:] * ITL_BINS[:-1]), ITL_BINS[-1]]
    out: dict[str, float | None] = {"itl_s_mean": total / n}
    for p in PERCENTILES:
        out[f"itl_s_p{p}"] = float(centres[np.searchsorted(cum, p / 100 * n)])
    return out


#: The columns of `request_arrays` and `request_table`, in order.
REQUEST_COLUMNS = (
    "id",
    "arrival_at",
    "prompt_tokens",
    "output_tokens",
    "first_token_at",
    "done_at",
    "preemptions",
    "ttft_s",
    "e2e_s",
    "tpot_s",
)


def request_arrays(finished: list[Finished]) -> dict[str, np.ndarray]:
    """One entry per completed request, by id: `REQUEST_COLUMNS` as arrays (NaN time per output
    token for a request of one output token)."""
    rows = [
        (
            f.request.id,
            f.request.arrival_at,
            f.request.prompt_tokens,
            f.request.output_tokens,
            f.first_token_at,
            f.done_at,
            f.preemptions,
        )
        for f in finished
    ]
    rows.sort(key=lambda row: row[0])
    ints = ("id", "prompt_tokens", "output_tokens", "preemptions")
    columns: dict[str, np.ndarray] = {
        name: np.array([row[k] for row in rows], dtype=np.int64 if name in ints else np.float64)
        for k, name in enumerate(REQUEST_COLUMNS[:7])
    }
    columns["ttft_s"] = columns["first_token_at"] - columns["arrival_at"]
    columns["e2e_s"] = columns["done_at"] - columns["arrival_at"]
    out = columns["output_tokens"]
    with np.errstate(invalid="ignore", divide="ignore"):
        decode = (columns["done_at"] - columns["first_token_at"]) / np.maximum(out - 1, 1)
    columns["tpot_s"] = np.where(out > 1, decode, np.nan)
    return columns


def request_table(finished: list[Finished]) -> pd.DataFrame:
    """`request_arrays` as a table, one row per completed request."""
    import pandas as pd

    return pd.DataFrame(request_arrays(finished), columns=list(REQUEST_COLUMNS))


def summarize(sim, slo: SLO, pricing: Pricing) -> dict:
    """All metrics of a finished `radsim.sim.engine.Simulation`, in SI units."""
    states = [s for r in sim.replicas for s in r.scheduler.done]
    timeline = sim.timeline.summed()
    table = request_arrays(states)
    completed = table["id"].size
    start = min((r.arrival_at for r in sim.requests), default=0.0)
    makespan = float(table["done_at"].max() - start) if completed else 0.0
    devices = sim.cfg.exe.tp * sim.cfg.replicas
    # Idle power of each replica until the end of the run, after its last iteration.
    end = start + makespan
    energy = sum(
        r.energy_J + max(0.0, end - r.last_end_at) * sim.cfg.hw.idle_power_W * sim.cfg.exe.tp
        for r in sim.replicas
    )
    out_tokens = int(table["output_tokens"].sum())
    tpot = table["tpot_s"]
    good = (table["ttft_s"] <= slo.ttft_s) & (np.where(np.isnan(tpot), 0.0, tpot) <= slo.tpot_s)
    cost = pricing.cost_usd(sim.cfg.hw, devices, makespan, energy)
    itl_counts = sum(r.scheduler.itl_histogram for r in sim.replicas)
    itl_total = sum(r.scheduler.itl_sum for r in sim.replicas)
    itl_n = sum(r.scheduler.itl_count for r in sim.replicas)
    result = {
        "engine": sim.cfg.engine.stem,
        "requests": len(sim.requests),
        "completed": completed,
        "output_tokens": out_tokens,
        "prompt_tokens": int(table["prompt_tokens"].sum()),
        "makespan_s": makespan,
        **_summary("ttft_s", table["ttft_s"]),
        **_summary("tpot_s", tpot[~np.isnan(tpot)]),
        **_histogram_percentiles(itl_counts, itl_total, itl_n),
        **_summary("e2e_s", table["e2e_s"]),
        "output_tokens_per_s": out_tokens / makespan if makespan else 0.0,
        "requests_per_s": completed / makespan if makespan else 0.0,
        "goodput_requests_per_s": float(good.sum()) / makespan if makespan else 0.0,
        "slo_ttft_s": slo.ttft_s,
        "slo_tpot_s": slo.tpot_s,
        "slo_attainment": float(good.mean()) if completed else 0.0,
        "preemptions": int(table["preemptions"].sum()),
        "iterations": len(sim.timeline),
        "busy_fraction": sum(r.busy_s for r in sim.replicas) / (makespan * sim.cfg.replicas)
        if makespan
        else 0.0,
        "energy_J": energy,
        "avg_power_W": energy / makespan if makespan else 0.0,
        "energy_J_per_output_token": energy / out_tokens if out_tokens else None,
        "cost_usd": cost,
        "cost_usd_per_Mtok": cost / out_tokens * 1e6 if out_tokens else None,
        "devices": devices,
        "kv_cache_peak_bytes": timeline.kv_peak_bytes,
        # the mean duration of the iterations that decode and prefill nothing
        "decode_step_s": timeline.decode_only_s / timeline.decode_only_count
        if timeline.decode_only_count
        else None,
    }
    return result


def timeline_table(sim) -> pd.DataFrame:
    """One row per iteration: start, duration, energy, power, batch, tokens, KV use, queue."""
    import pandas as pd

    from radsim.sim.engine import _INTEGER_FIELDS, TIMELINE_FIELDS

    table = pd.DataFrame(sim.timeline.array(), columns=list(TIMELINE_FIELDS))
    for name in _INTEGER_FIELDS:
        table[name] = table[name].astype(np.int64)
    if len(table):
        table["power_W"] = table["energy_J"] / table["time_s"]
    return table
