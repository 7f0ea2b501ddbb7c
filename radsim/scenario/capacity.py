"""Capacity under latency SLOs: the highest arrival rate one replica serves while a percentile of
TTFT and of TPOT meets its target, found by searching over the rate with the serving simulator.

The search simulates the scenario's workload (its arrival process, lengths and `duration_s` of
arrivals, one seed) at a rate, and asks whether the chosen percentile (`PERCENTILES`: 50, 90 or
99) of every request's TTFT is within `slo_ttft_s` and of its TPOT within `slo_tpot_s`. It doubles
the rate from `start_rate_per_s` until the SLO fails, then bisects until the bracket is narrower
than `tolerance` (relative), and reports the largest rate that met the SLO, with the throughput,
energy and cost per token of that run, and every rate it simulated (`probes`: the TTFT and TPOT
percentiles there, and whether the SLOs held). A rate's run is the same for the same seed, so the answer
is deterministic. With a target rate, the replicas needed for each tensor-parallel degree and the
cheapest deployment follow (device-hours priced as `radsim.cost.money.Pricing` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from radsim.errors import ConfigError
from radsim.scenario.schema import Scenario

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class CapacitySearch:
    """How the search runs: the rate bracket and the relative tolerance (the percentile judged is
    the scenario's `slo_percentile`)."""

    tolerance: float = 0.02
    start_rate_per_s: float = 1.0
    max_rate_per_s: float = 1.0e4
    max_evaluations: int = 40

    def __post_init__(self) -> None:
        if not 0.0 < self.tolerance < 1.0 or not math.isfinite(self.tolerance):
            raise ConfigError(f"--tolerance must be in (0, 1), got {self.tolerance}")
        if not 0.0 < self.start_rate_per_s <= self.max_rate_per_s < math.inf:
            raise ConfigError("--start-rate must be > 0 and at most --max-rate (finite)")
        if self.max_evaluations < 2:
            raise ConfigError("--max-evaluations must be >= 2")


def meets_slo(metrics: dict[str, Any], s: Scenario, percentile: int) -> bool:
    """Whether the run's percentile of TTFT and of TPOT meet the scenario's SLOs (every request done)."""
    ttft, tpot = metrics[f"ttft_s_p{percentile}"], metrics[f"tpot_s_p{percentile}"]
    if ttft is None or metrics["completed"] < metrics["requests"]:
        return False
    return ttft <= s.slo_ttft_s and (tpot is None or tpot <= s.slo_tpot_s)


def find_capacity(
    s: Scenario,
    search: CapacitySearch = CapacitySearch(),
    trace_file: str | None = None,
    on_probe: Callable[[float, bool], None] | None = None,
) -> dict[str, Any]:
    """The largest rate per replica meeting the SLOs, and the metrics of its run (see the module
    docstring); `on_probe(rate, met)` is called after each simulation (a progress bar)."""
    from radsim.scenario.run import run_simulation

    if s.command == "estimate" or s.arrival not in ("poisson", "gamma"):
        raise ConfigError("capacity searches over the rate of poisson or gamma arrivals (command capacity)")
    if s.replicas != 1:
        raise ConfigError("capacity is per replica: leave replicas at 1 (use --target-rate for a deployment)")
    percentile = s.slo_percentile
    simulated = replace(s, command="simulate", slo_percentile=90)
    runs: dict[float, dict[str, Any]] = {}

    def evaluate(rate: float) -> bool:
        if rate not in runs:
            if len(runs) >= search.max_evaluations:
                raise ConfigError(f"capacity search did not converge in {search.max_evaluations} simulations")
            _, runs[rate] = run_simulation(
                replace(simulated, rate_per_s=rate), trace_file, keep_timeline=False
            )
            if on_probe is not None:
                on_probe(rate, meets_slo(runs[rate], s, percentile))
        return meets_slo(runs[rate], s, percentile)

    low, high = 0.0, search.start_rate_per_s
    while evaluate(high):
        low, high = high, high * 2.0
        if high > search.max_rate_per_s:
            raise ConfigError(
                f"the SLOs still hold at {low:g} requests/s; raise --max-rate or tighten the SLOs"
            )
    if low == 0.0:  # the start rate already fails: halve down to a rate that holds
        while not evaluate(high / 2.0):
            high /= 2.0
            if high < search.start_rate_per_s * 1e-4:
                raise ConfigError(
                    f"the SLOs fail even at {high:.3g} requests/s (p{percentile} TTFT "
                    f"{runs[high]['ttft_s_p' + str(percentile)]}); loosen them or lower the lengths"
                )
        low, high = high / 2.0, high
    while (high - low) / high > search.tolerance:
        middle = (low + high) / 2.0
        if evaluate(middle):
            low = middle
        else:
            high = middle
    best = runs[low]
    p = percentile
    probes = [
        {
            "rate_per_s": rate,
            **{f"{m}_p{q}": runs[rate][f"{m}_p{q}"] for m in ("ttft_s", "tpot_s") for q in PERCENTILES},
            "completed_share": runs[rate]["completed"] / max(runs[rate]["requests"], 1),
            "meets_slo": meets_slo(runs[rate], s, percentile),
        }
        for rate in sorted(runs)
    ]
    return {
        "max_rate_per_s": low,
        "failing_rate_per_s": high,
        "percentile": p,
        "slo_ttft_s": s.slo_ttft_s,
        "slo_tpot_s": s.slo_tpot_s,
        "tolerance": search.tolerance,
        "duration_s": s.duration_s,
        "simulations": len(runs),
        f"ttft_s_p{p}": best[f"ttft_s_p{p}"],
        f"tpot_s_p{p}": best[f"tpot_s_p{p}"],
        "output_tokens_per_s": best["output_tokens_per_s"],
        "requests_per_s": best["requests_per_s"],
        "energy_J_per_output_token": best["energy_J_per_output_token"],
        "avg_power_W": best["avg_power_W"],
        "cost_usd_per_Mtok": best["cost_usd_per_Mtok"],
        "busy_fraction": best["busy_fraction"],
        "probes": probes,
        "rate_run": best,
    }


def deployments(
    s: Scenario,
    target_rate_per_s: float,
    tp_options: tuple[int, ...],
    search: CapacitySearch,
    trace_file: str | None = None,
    on_probe: Callable[[float, bool], None] | None = None,
) -> dict[str, Any]:
    """Replicas needed for `target_rate_per_s` at each tensor-parallel degree, and the cheapest."""
    from radsim.scenario.run import hardware

    if not (target_rate_per_s > 0 and math.isfinite(target_rate_per_s)):
        raise ConfigError(f"--target-rate must be a finite number > 0, got {target_rate_per_s}")
    price = hardware(s).price_usd_per_hour
    options = []
    for tp in tp_options:
        capacity = find_capacity(replace(s, tp=tp), search, trace_file, on_probe)
        replicas = math.ceil(target_rate_per_s / capacity["max_rate_per_s"])
        options.append(
            {
                "tp": tp,
                "max_rate_per_s": capacity["max_rate_per_s"],
                "replicas": replicas,
                "devices": replicas * tp,
                "usd_per_hour": replicas * tp * price,
                "cost_usd_per_Mtok_at_capacity": capacity["cost_usd_per_Mtok"],
            }
        )
    cheapest = min(options, key=lambda o: (o["usd_per_hour"], o["devices"]))
    return {"target_rate_per_s": target_rate_per_s, "options": options, "cheapest": cheapest}
