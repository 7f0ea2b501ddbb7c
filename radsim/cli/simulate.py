"""`radsim simulate`: the serving simulator on the command line, one flag per input it reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radsim.cli.scenario_args import add_scenario_arguments, scenario_from_args
from radsim.errors import ConfigError


def add_simulate_command(sub) -> None:
    """Register `simulate` on the main CLI's subparsers."""
    sim = sub.add_parser(
        "simulate",
        help="discrete-event simulation of serving (arrivals, batching, KV, power)",
        description="Serving simulation: arrivals, batching, KV cache, preemption and power, per iteration.",
    )
    add_scenario_arguments(sim, "simulate")
    sim.add_argument("--timeline", help="write the per-iteration timeline to this Parquet file")
    sim.add_argument("--json", action="store_true", help="print one JSON object (SI units)")
    sim.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> None:
    """Build the scenario from the flags, simulate, print the metrics."""
    from radsim.scenario.run import run_simulation
    from radsim.sim.metrics import timeline_table

    scenario = scenario_from_args(args, "simulate")
    timeline = Path(args.timeline) if args.timeline else None
    if timeline is not None and timeline.suffix != ".parquet":
        raise ConfigError(f"--timeline {timeline}: the timeline is written as Parquet; name it *.parquet")
    sim, metrics = run_simulation(scenario)
    result = {
        "hw": sim.cfg.hw.stem,
        "arch": sim.cfg.arch.name,
        "routes": sim.routes.source,
        "kv_policy": sim.cfg.exe.kv_policy,
        "execution": scenario.execution,
        "batching": scenario.batching_policy,
        "depth_fraction": sim.routes.mean_depth_fraction,
        **metrics,
    }
    if timeline is not None:
        _write_parquet(timeline_table(sim), timeline)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        print(
            "\n".join(
                f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                for k, v in result.items()
            )
        )


def _write_parquet(table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
