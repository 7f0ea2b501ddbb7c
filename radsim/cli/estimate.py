"""`radsim estimate`: one static batch, prefilled together and decoded in lockstep."""

from __future__ import annotations

import argparse
import sys

from radsim.cli.baseline import add_baseline_argument, baseline_scenario, compare, format_comparison
from radsim.cli.scenario_args import add_scenario_arguments, scenario_from_args
from radsim.files import json_text
from radsim.scenario.run import resolve, run_estimate


def add_estimate_command(sub) -> None:
    """Register `estimate` on the main CLI's subparsers: one flag per input the estimate reads."""
    est = sub.add_parser(
        "estimate",
        help="static batch estimate: prefill together, then decode",
        description="A static batch of identical requests: prompts prefilled in chunks, then decoded in lockstep.",
    )
    add_scenario_arguments(est, "estimate")
    add_baseline_argument(est)
    est.add_argument(
        "--trace",
        metavar="PATH",
        default="",
        help="routing trace (Parquet): the static batch is then simulated with the trace's per-token "
        "routes (as `simulate --arrival batch`), which have no closed form",
    )
    est.add_argument("--json", action="store_true", help="print one JSON object (SI units)")
    est.set_defaults(func=_estimate)


def _estimate(args: argparse.Namespace) -> None:
    if args.trace:
        _traced(args)
        return
    del args.trace  # not an input of the closed-form estimate
    scenario = scenario_from_args(args, "estimate")
    resolve(scenario)  # what it names exists and fits (errors name the flag's input)
    base = baseline_scenario(scenario, args.baseline) if args.baseline else None
    if base is not None:
        resolve(base)
    result = run_estimate(scenario)
    if base is not None:
        result["baseline"] = run_estimate(base)
        result["comparison"] = compare("estimate", result, result["baseline"])
    if args.json:
        print(json_text(result))
        return
    print(format_estimate(result))
    if base is not None:
        print()
        print(format_comparison(result["comparison"], scenario.routes_label, base.routes_label))


def _traced(args: argparse.Namespace) -> None:
    """The static batch with a trace's routes: the simulator runs it (arrival 'batch')."""
    from dataclasses import replace

    from radsim.cli.simulate import format_simulation
    from radsim.scenario.run import run_simulation

    flags = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "trace"})
    scenario = replace(
        scenario_from_args(flags, "estimate"), command="simulate", arrival="batch", trace=args.trace
    )
    resolve(scenario)
    base = baseline_scenario(scenario, args.baseline) if args.baseline else None
    if base is not None:
        resolve(base)
    sim, metrics = run_simulation(scenario)
    how = "static batch simulated with the trace's routes (simulate --arrival batch)"
    result = {"hw": sim.cfg.hw.stem, "arch": sim.cfg.arch.name, "command_used": how, **metrics}
    result["routes"], result["kv_policy"] = sim.routes.source, sim.cfg.exe.kv_policy
    result["depth_fraction"] = sim.routes.mean_depth_fraction
    if base is not None:
        _, result["baseline"] = run_simulation(base)
        result["comparison"] = compare("simulate", result, result["baseline"])
    for warning in result["warnings"]:
        print(f"radsim: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json_text(result))
        return
    print(f"{how}:")
    print(
        format_simulation({"execution": scenario.execution, "batching": scenario.batching_policy, **result})
    )
    if base is not None:
        print()
        print(format_comparison(result["comparison"], scenario.routes_label, base.routes_label))


def format_estimate(r: dict) -> str:
    """A readable table of an estimate's main figures."""
    rows = [
        ("model", f"{r['arch']} on {r['devices']} x {r['hw']}, {r['dtype']}"),
        (
            "requests",
            f"batch {r['batch']}, prompt {r['prompt_tokens']}, output {r['output_tokens']} tokens",
        ),
        (
            "depth",
            f"{r['layers_visited_per_token']:g} of {r['layers']} layers per token "
            f"({r['depth_distribution']}, kv policy {r['kv_policy']})",
        ),
        ("time to first token", f"{r['ttft_s'] * 1e3:.2f} ms (mean over requests)"),
        (
            "time per output token",
            "n/a (one output token)"
            if r["tpot_s"] is None
            else f"{r['tpot_s'] * 1e3:.3f} ms (mean over requests)",
        ),
        ("end to end", f"{r['e2e_s']:.3f} s"),
        (
            "prefill of the batch",
            f"{r['prefill_time_s'] * 1e3:.2f} ms ({r['prefill_steps']} chunk{'s' if r['prefill_steps'] != 1 else ''})",
        ),
        (
            "decode step",
            "n/a (one output token)" if r["decode_step_s"] is None else f"{r['decode_step_s'] * 1e3:.3f} ms",
        ),
        ("output throughput", f"{r['output_tokens_per_s']:.1f} tokens/s"),
        ("prefill throughput", f"{r['prefill_tokens_per_s']:.0f} tokens/s"),
        (
            "compute-bound time",
            f"prefill {r['prefill_compute_bound_fraction']:.0%}, "
            f"decode {r['decode_compute_bound_fraction']:.0%}",
        ),
        (
            "peak memory / device",
            f"{r['peak_memory_bytes'] / 1e9:.2f} GB of {r['memory_capacity_bytes'] / 1e9:.0f} GB "
            f"(weights {r['weights_bytes'] / 1e9:.2f}, KV {r['kv_cache_bytes'] / 1e9:.2f}, "
            f"activations {r['activation_bytes'] / 1e9:.2f})",
        ),
        ("average power", f"{r['avg_power_W']:.0f} W (all devices)"),
        ("energy per output token", f"{r['energy_J_per_output_token']:.3f} J"),
        ("cost per 1M output tokens", f"${r['cost_usd_per_Mtok']:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
