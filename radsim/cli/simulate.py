"""`radsim simulate`: the serving simulator on the command line, one flag per input it reads."""

from __future__ import annotations

import argparse
import sys

from radsim.cli.baseline import add_baseline_argument, baseline_scenario, compare, format_comparison
from radsim.cli.scenario_args import add_scenario_arguments, scenario_from_args
from radsim.files import atomic_write, json_text, output_file


def add_simulate_command(sub) -> None:
    """Register `simulate` on the main CLI's subparsers."""
    sim = sub.add_parser(
        "simulate",
        help="discrete-event simulation of serving (arrivals, batching, KV, power)",
        description="Serving simulation: arrivals, batching, KV cache, preemption and power, per iteration.",
    )
    add_scenario_arguments(sim, "simulate")
    add_baseline_argument(sim)
    sim.add_argument("--timeline", help="write the per-iteration timeline to this Parquet file")
    sim.add_argument("--json", action="store_true", help="print one JSON object (SI units)")
    sim.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> None:
    """Build the scenario from the flags, simulate, print the metrics."""
    from radsim.scenario.run import resolve, run_simulation
    from radsim.sim.metrics import timeline_table

    scenario = scenario_from_args(args, "simulate")
    timeline = output_file(args.timeline, "--timeline", (".parquet",)) if args.timeline else None
    resolve(scenario)  # hardware, architecture, trace and replay file, before anything runs
    base = baseline_scenario(scenario, args.baseline) if args.baseline else None
    if base is not None:
        resolve(base)
    sim, metrics = run_simulation(scenario)
    result = {
        "hw": sim.cfg.hw.stem,
        "kernel_tables": sim.cfg.hw.kernel_tables.source if sim.cfg.hw.kernel_tables else "",
        "arch": sim.cfg.arch.name,
        "routes": sim.routes.source,
        "kv_policy": sim.cfg.exe.kv_policy,
        "execution": scenario.execution,
        "batching": scenario.batching_policy,
        "depth_fraction": sim.routes.mean_depth_fraction,
        **metrics,
    }
    if base is not None:
        _, result["baseline"] = run_simulation(base)
        result["comparison"] = compare("simulate", result, result["baseline"])
    if timeline is not None:
        table = timeline_table(sim)
        atomic_write(timeline, lambda tmp: table.to_parquet(tmp, index=False))
    if args.json:
        print(json_text(result))
    else:
        shown = {k: v for k, v in result.items() if k not in ("warnings", "baseline", "comparison")}
        width = max(len(k) for k in shown)
        print(
            "\n".join(
                f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                for k, v in shown.items()
            )
        )
        if base is not None:
            print()
            print(format_comparison(result["comparison"], scenario.routes_label, base.routes_label))
    for warning in result["warnings"]:
        print(f"radsim: warning: {warning}", file=sys.stderr)
