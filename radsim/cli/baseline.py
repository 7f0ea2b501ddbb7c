"""`--baseline`: run a second scenario that differs only in its routes, and compare.

`dense` is the sequential model (every token through every layer, no router); a trace path takes
that trace's routes instead. The comparison gives, per metric, both values, `better_x` (how many
times better the run is: baseline / run for times, energies and costs, run / baseline for rates;
above 1 is better) and `change_pct` (the run's signed change against the baseline).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from radsim.scenario.schema import Scenario

#: Metrics compared per command, and whether more is better.
COMPARED: dict[str, tuple[tuple[str, bool], ...]] = {
    "estimate": (
        ("ttft_s", False),
        ("tpot_s", False),
        ("decode_step_s", False),
        ("e2e_s", False),
        ("output_tokens_per_s", True),
        ("energy_J_per_output_token", False),
        ("cost_usd_per_Mtok", False),
    ),
    "simulate": (
        ("ttft_s_p90", False),
        ("tpot_s_p90", False),
        ("e2e_s_mean", False),
        ("output_tokens_per_s", True),
        ("energy_J_per_output_token", False),
        ("cost_usd_per_Mtok", False),
    ),
    "capacity": (
        ("max_rate_per_s", True),
        ("energy_J_per_output_token", False),
        ("cost_usd_per_Mtok", False),
    ),
}


def add_baseline_argument(parser: argparse.ArgumentParser) -> None:
    """The `--baseline` flag of estimate, simulate and capacity."""
    parser.add_argument(
        "--baseline",
        help="also run a baseline and compare: 'dense' (every token through every layer) or a trace file",
    )


def baseline_scenario(s: Scenario, baseline: str) -> Scenario:
    """The scenario with the baseline's routes (everything else the same)."""
    trace = "" if baseline == "dense" else baseline
    return replace(
        s,
        trace=trace,
        kv_policy="",
        depth_fraction=1.0,
        visited_layers=0,
        reuse_prob=0.0,
        route_shape="random",
    )


def compare(command: str, run: dict[str, Any], base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per compared metric: the run, the baseline, `better_x` and `change_pct` (None where undefined)."""
    out: dict[str, dict[str, Any]] = {}
    for key, more_is_better in COMPARED[command]:
        a, b = run.get(key), base.get(key)
        better = change = None
        if isinstance(a, int | float) and isinstance(b, int | float) and a > 0 and b > 0:
            better, change = (a / b if more_is_better else b / a), (a / b - 1) * 100
        out[key] = {"run": a, "baseline": b, "better_x": better, "change_pct": change}
    return out


def format_comparison(comparison: dict[str, dict[str, Any]], run_name: str, base_name: str) -> str:
    """A table of the comparison: metric, both values, and how many times better the run is."""
    lines = [
        f"{'metric':<28} {'run':>14} {'baseline':>14} {'better':>8} {'change':>8}",
        f"  run: {run_name}",
        f"  baseline: {base_name}",
    ]
    for key, c in comparison.items():

        def show(v: Any) -> str:
            return "-" if v is None else f"{v:.4g}"

        better = "-" if c["better_x"] is None else f"{c['better_x']:.3g}x"
        change = "-" if c["change_pct"] is None else f"{c['change_pct']:+.1f}%"
        lines.append(f"{key:<28} {show(c['run']):>14} {show(c['baseline']):>14} {better:>8} {change:>8}")
    return "\n".join(lines)
