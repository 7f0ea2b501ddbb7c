"""`radsim simulate`: the serving simulator on the command line, one flag per input it reads."""

from __future__ import annotations

import argparse
import functools
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
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=run_simulate)


#: Simulations of fewer requests than this run without a progress bar (they take a second or less).
PROGRESS_MIN_REQUESTS = 5000


def _with_progress(scenario, args: argparse.Namespace, run, desc: str = "simulating: "):
    """`run(scenario)` with a bar of the requests completed, for long simulations."""
    from radsim.scenario.run import requests

    total = len(requests(scenario))
    if args.quiet or total < PROGRESS_MIN_REQUESTS:
        return run(scenario)
    from radsim.progress import bar  # tqdm: only for a bar

    progress = bar(total, "requests", sys.stderr, desc=desc)

    def update(done: int) -> None:
        progress.update(done - progress.n)

    try:
        sim, metrics = run(scenario, on_progress=update)
        update(metrics["completed"])
    finally:
        progress.close()
    return sim, metrics


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
    keep = functools.partial(run_simulation, keep_timeline=timeline is not None)  # else only its sums
    sim, metrics = _with_progress(scenario, args, keep)
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
        _, result["baseline"] = _with_progress(
            base, args, functools.partial(run_simulation, keep_timeline=False), "simulating the baseline: "
        )
        result["comparison"] = compare("simulate", result, result["baseline"])
    if timeline is not None:
        table = timeline_table(sim)
        atomic_write(timeline, lambda tmp: table.to_parquet(tmp, index=False))
    if args.json:
        print(json_text(result))
    else:
        print(format_simulation(result))
        if base is not None:
            print()
            print(format_comparison(result["comparison"], scenario.routes_label, base.routes_label))
    for warning in result["warnings"]:
        print(f"radsim: warning: {warning}", file=sys.stderr)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1e3:.2f}"


def _spread(r: dict, name: str) -> str:
    return (
        f"mean {_ms(r[f'{name}_mean'])}, p50 {_ms(r[f'{name}_p50'])}, p90 {_ms(r[f'{name}_p90'])}, "
        f"p99 {_ms(r[f'{name}_p99'])} ms"
    )


def format_simulation(r: dict) -> str:
    """A readable table of a simulation's main figures (every figure is in `--json`)."""
    rows = [
        ("model", f"{r['arch']} on {r['devices']} device(s) of {r['hw']}"),
        ("routes", r["routes_source"]),
        ("batching", f"{r['batching']}, {r['execution']} execution, kv policy {r['kv_policy']}"),
        (
            "requests",
            f"{r['completed']} of {r['requests']} completed in {r['makespan_s']:.1f} s "
            f"({r['prompt_tokens']} prompt, {r['output_tokens']} output tokens; {r['preemptions']} preemptions)",
        ),
        ("time to first token", _spread(r, "ttft_s")),
        ("time per output token", _spread(r, "tpot_s")),
        ("inter-token latency", _spread(r, "itl_s")),
        ("end to end", f"mean {r['e2e_s_mean']:.3f} s, p90 {r['e2e_s_p90']:.3f} s"),
        ("decode step", f"{_ms(r['decode_step_s'])} ms (iterations that only decode)"),
        (
            "throughput",
            f"{r['output_tokens_per_s']:.1f} output tokens/s, {r['requests_per_s']:.2f} requests/s "
            f"(busy {r['busy_fraction']:.0%})",
        ),
        (
            "goodput",
            f"{r['goodput_requests_per_s']:.2f} requests/s within TTFT {r['slo_ttft_s']:g} s and "
            f"TPOT {r['slo_tpot_s'] * 1e3:g} ms ({r['slo_attainment']:.0%} of requests)",
        ),
        ("KV cache peak", f"{r['kv_cache_peak_bytes'] / 1e9:.2f} GB per device"),
        ("average power", f"{r['avg_power_W']:.0f} W (all devices)"),
        (
            "energy per output token",
            "n/a" if r["energy_J_per_output_token"] is None else f"{r['energy_J_per_output_token']:.3f} J",
        ),
        (
            "cost per 1M output tokens",
            "n/a" if r["cost_usd_per_Mtok"] is None else f"${r['cost_usd_per_Mtok']:.3f}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
