"""`radsim capacity`: the highest request rate per replica that meets TTFT and TPOT SLOs, and with
`--target-rate` the replicas and tensor parallelism a deployment needs."""

from __future__ import annotations

import argparse
import sys

from radsim.cli.baseline import add_baseline_argument, baseline_scenario, compare, format_comparison
from radsim.cli.scenario_args import add_scenario_arguments, scenario_from_args
from radsim.errors import ConfigError
from radsim.files import json_text


def add_capacity_command(sub) -> None:
    """Register `capacity`: every input `simulate` reads, plus the search's own options."""
    cap = sub.add_parser(
        "capacity",
        help="highest request rate per replica meeting TTFT/TPOT SLOs (search over rate with the simulator)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_scenario_arguments(cap, "capacity")
    add_baseline_argument(cap)
    search = cap.add_argument_group("capacity search")
    search.add_argument(
        "--tolerance", type=float, default=0.02, help="relative width of the final rate bracket"
    )
    search.add_argument("--start-rate", type=float, default=1.0, help="first rate tried, requests/s")
    search.add_argument("--max-rate", type=float, default=1.0e4, help="highest rate tried, requests/s")
    search.add_argument("--target-rate", type=float, help="requests/s to serve: replicas and TP needed")
    search.add_argument(
        "--tp-options", default="1", help="tensor-parallel degrees to compare (comma-separated)"
    )
    cap.add_argument("--json", action="store_true", help="print one JSON object (SI units)")
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=_capacity)


def _capacity(args: argparse.Namespace) -> None:
    from radsim.progress import bar
    from radsim.scenario.capacity import CapacitySearch, deployments, find_capacity
    from radsim.scenario.run import resolve

    scenario = scenario_from_args(args, "capacity")
    search = CapacitySearch(args.tolerance, args.start_rate, args.max_rate)
    resolve(scenario)  # what it names exists, before the search starts
    if args.baseline:
        resolve(baseline_scenario(scenario, args.baseline))
    progress = bar(None, "simulations", None if args.quiet else sys.stderr, desc="capacity search: ")

    def probe(rate: float, met: bool) -> None:
        progress.set_postfix_str(
            f"{rate:.4g} requests/s {'met' if met else 'missed'} the SLOs", refresh=False
        )
        progress.update(1)

    result = find_capacity(scenario, search, on_probe=probe)
    run = result.pop("rate_run")
    result["routes_source"], result["warnings"] = run["routes_source"], run["warnings"]
    if args.baseline:
        base_scenario = baseline_scenario(scenario, args.baseline)
        progress.set_description_str("capacity search (baseline): ")
        base = find_capacity(base_scenario, search, on_probe=probe)
        base.pop("rate_run")
        result["baseline"] = {"routes": base_scenario.routes_label, **base}
        result["comparison"] = compare("capacity", result, base)
    result = {"hw": scenario.hw, "arch": scenario.arch, "routes": scenario.routes_label, **result}
    if args.target_rate is not None:
        try:
            tps = tuple(int(x) for x in args.tp_options.split(","))
        except ValueError as exc:
            raise ConfigError(
                f"--tp-options {args.tp_options!r}: comma-separated whole numbers, e.g. 1,2,4"
            ) from exc
        progress.set_description_str("capacity search (deployments): ")
        result["deployment"] = deployments(scenario, args.target_rate, tps, search, on_probe=probe)
    progress.close()
    for warning in result["warnings"]:
        print(f"radsim: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json_text(result))
        return
    p = result["percentile"]
    print(
        f"capacity of one replica ({result['hw']}, {result['arch']}, {result['routes']}): "
        f"{result['max_rate_per_s']:.3g} requests/s with p{p} TTFT <= {result['slo_ttft_s']:g} s and "
        f"p{p} TPOT <= {result['slo_tpot_s'] * 1e3:g} ms ({result['failing_rate_per_s']:.3g} requests/s fails; "
        f"{result['simulations']} simulations of {result['duration_s']:g} s of arrivals, tolerance {result['tolerance']:.0%})"
    )
    print(
        f"at that rate: p{p} TTFT {result[f'ttft_s_p{p}'] * 1e3:.1f} ms, p{p} TPOT {result[f'tpot_s_p{p}'] * 1e3:.2f} ms, "
        f"{result['output_tokens_per_s']:.0f} output tokens/s, {result['energy_J_per_output_token']:.3f} J and "
        f"${result['cost_usd_per_Mtok']:.3f} per 1M output tokens"
    )
    print(f"rates simulated ({result['duration_s']:g} s of arrivals each):")
    print(f"  {'requests/s':>10}  {'p' + str(p) + ' TTFT':>12}  {'p' + str(p) + ' TPOT':>11}  SLOs")
    for row in result["probes"]:
        ttft, tpot = row[f"ttft_s_p{p}"], row[f"tpot_s_p{p}"]
        ttft_text = "-" if ttft is None else f"{ttft * 1e3:.1f} ms" if ttft < 1 else f"{ttft:.2f} s"
        tpot_text = "-" if tpot is None else f"{tpot * 1e3:.2f} ms"
        held = "met" if row["meets_slo"] else "missed"
        print(f"  {row['rate_per_s']:>10.4g}  {ttft_text:>12}  {tpot_text:>11}  {held}")
    if "deployment" in result:
        d = result["deployment"]
        for o in d["options"]:
            print(
                f"  tp {o['tp']}: {o['max_rate_per_s']:.3g} requests/s per replica -> {o['replicas']} replicas, "
                f"{o['devices']} devices, ${o['usd_per_hour']:.2f}/h"
            )
        c = d["cheapest"]
        print(
            f"cheapest for {d['target_rate_per_s']:g} requests/s: tp {c['tp']} x {c['replicas']} replicas (${c['usd_per_hour']:.2f}/h)"
        )
    if "comparison" in result:
        print()
        print(format_comparison(result["comparison"], result["routes"], result["baseline"]["routes"]))
