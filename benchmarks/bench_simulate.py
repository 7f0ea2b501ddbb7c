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

from radsim.cost.layer import Execution
from radsim.cost.money import Pricing
from radsim.routes.book import from_trace
from radsim.routes.synthetic import parametric
from radsim.routes.trace import read_trace
from radsim.sim.engine import SimConfig, Simulation
from radsim.sim.metrics import SLO, summarize
from radsim.sim.scheduler import SchedulerConfig
from radsim.sim.workload import LengthDist, WorkloadConfig, generate
from radsim.spec.arch import load_arch
from radsim.spec.hardware import load_hardware

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
    hw, arch = load_hardware("h100_sxm"), load_arch("llama3.1-8b")
    if args.trace:
        path = args.trace if Path(args.trace).exists() else str(ROOT / args.trace)
        trace = read_trace(path)
        policy = trace.meta["kv_policy"]
        book = from_trace(trace, arch.num_layers, source=path)
    else:
        policy, book = "none", parametric(arch.num_layers, 0.6)
    cfg = SimConfig(
        hw,
        arch,
        Execution("bf16", kv_policy=policy, routed=True),
        SchedulerConfig(max_batch=256),
        execution_policy=args.execution,
    )
    lengths = {"kind": "lognormal", "cv": 0.5, "max_tokens": 4096}
    workload = WorkloadConfig(
        rate_per_s=args.rate,
        duration_s=3600 * args.hours,
        seed=1,
        prompt=LengthDist(mean=512, **lengths),
        output=LengthDist(mean=256, **lengths),
    )
    requests = generate(workload)
    sim = Simulation(cfg, book, requests)
    startup = time.perf_counter() - start
    cpu_start = time.process_time()
    sim.run()
    wall = time.perf_counter() - start - startup
    cpu = time.process_time() - cpu_start
    m = summarize(sim, SLO(), Pricing())
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
