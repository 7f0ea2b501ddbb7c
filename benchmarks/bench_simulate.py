"""Simulator speed: wall-clock seconds per simulated hour at saturation, and start-up time.

Run: python benchmarks/bench_simulate.py [--trace traces/NAME.parquet] [--hours 1.0] [--rate 40]
Llama-3.1-8B on one H100, continuous batching (max batch 256, 8192-token budget), Poisson arrivals
at the replica's capacity or above (saturation: busy fraction 1), lognormal prompts (mean 512) and
outputs (mean 256); routes drawn from a radial trace (default: the distilled SmolLM2 router's).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from radsim.scenario.run import build_simulation, pricing, slo
from radsim.scenario.schema import Scenario
from radsim.sim.metrics import summarize

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = "traces/smollm2-135m-radial-distill-tau0.27.parquet"  # the distilled SmolLM2 radial router


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--trace",
        default=DEFAULT_TRACE,
        help=f"radial trace to draw routes from (default {DEFAULT_TRACE}; '' for parametric routes, depth 0.6)",
    )
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours of arrivals")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (above capacity)")
    parser.add_argument("--execution", default="layer_major", choices=("layer_major", "step_sync"))
    args = parser.parse_args()
    start = time.perf_counter()
    trace = args.trace and (args.trace if Path(args.trace).exists() else str(ROOT / args.trace))
    scenario = Scenario(
        command="simulate",
        hw="h100_sxm",
        arch="llama3.1-8b",
        trace=trace,
        depth_fraction=1.0 if trace else 0.6,
        depth_distribution="bernoulli",
        execution=args.execution,
        arrival="poisson",
        rate_per_s=args.rate,
        duration_s=3600 * args.hours,
        lengths="lognormal",
        prompt_tokens=512,
        output_tokens=256,
        max_length_tokens=4096,
        max_batch=256,
        seed=1,
    )
    sim = build_simulation(scenario, keep_timeline=False)
    book = sim.routes
    startup = time.perf_counter() - start
    cpu_start = time.process_time()
    sim.run()
    wall = time.perf_counter() - start - startup
    cpu = time.process_time() - cpu_start
    m = summarize(sim, slo(scenario), pricing(scenario))
    simulated_h = m["makespan_s"] / 3600
    print(
        f"routes: {book.source} (depth fraction {book.mean_depth_fraction:.3f}), execution {args.execution}"
    )
    print(
        f"start-up: {startup:.2f} s; simulated {m['makespan_s']:.0f} s ({m['iterations']} iterations, "
        f"{m['requests']} requests, {m['output_tokens']} output tokens) in {wall:.1f} s wall"
    )
    print(f"wall seconds per simulated hour: {wall / simulated_h:.1f} (CPU seconds: {cpu / simulated_h:.1f})")
    print(f"simulated output tokens per wall second: {m['output_tokens'] / wall:.0f}")
    print(
        f"wall microseconds per iteration: {wall / m['iterations'] * 1e6:.0f} (CPU: {cpu / m['iterations'] * 1e6:.0f})"
    )
    print(
        f"throughput {m['output_tokens_per_s']:.0f} tok/s, TPOT mean {m['tpot_s_mean'] * 1e3:.2f} ms, busy {m['busy_fraction']:.2f}"
    )


if __name__ == "__main__":
    main()
