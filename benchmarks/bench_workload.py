"""Simulator speed and memory on the peer-comparison workload (issue: faster than every peer).

The workload, built from a seed: Poisson arrivals at 2 requests/s until N requests (10,000 by
default: about 83 simulated minutes), lognormal prompts of mean 1,150 tokens (cv 1, at most 4,096)
and outputs of mean 210 (cv 1, at most 1,000; a prompt is cut so that prompt and output fit the
4,096 positions), continuous batching of at most 128 sequences and a
512-token budget per iteration (chunked prefill), on one H100; dense Llama-2-7B and each shipped
trace that maps onto it.

Run: python benchmarks/bench_workload.py [--requests 10000] [--repeats 3] [--trace all|''|PATH]
[--reference]. Each figure is the median of the repeats, measured in a fresh process (wall time of
`Simulation.run`, and the process's peak resident memory). `--reference` prices every iteration on
its own (the step-by-step engine), for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACES = [
    "",
    "traces/smollm2-135m-radial-distill-tau0.27.parquet",
    "traces/radial-scratch-p05.parquet",
    "traces/radial-scratch.parquet",
    "traces/mod-scratch.parquet",
]
RATE_PER_S = 2.0
POSITIONS = 4096


def one(trace: str, requests: int, reference: bool, seed: int) -> dict:
    """Build the workload, simulate it, return wall seconds, iterations and peak memory (this process)."""
    import resource
    import time

    import numpy as np

    from radsim.cost.layer import Execution
    from radsim.scenario.run import architecture, hardware, route_book
    from radsim.scenario.schema import Scenario
    from radsim.sim.engine import SimConfig, Simulation
    from radsim.sim.scheduler import SchedulerConfig
    from radsim.sim.workload import LengthDist, Request, WorkloadConfig, generate

    s = Scenario(command="simulate", hw="h100_sxm", arch="llama2-7b", trace=trace, seed=seed)
    duration = requests / RATE_PER_S * 1.1
    work = WorkloadConfig(
        "poisson",
        RATE_PER_S,
        duration,
        prompt=LengthDist("lognormal", 1150.0, 1.0, max_tokens=4096),
        output=LengthDist("lognormal", 210.0, 1.0, max_tokens=1000),
        seed=seed,
    )
    # prompts cut so that prompt + output fits Llama-2-7B's 4,096 positions
    reqs = [
        Request(r.id, r.arrival_at, min(r.prompt_tokens, POSITIONS - r.output_tokens), r.output_tokens)
        for r in generate(work)[:requests]
    ]
    hw, arch = hardware(s), architecture(s)
    book, policy, routed = route_book(s, arch)
    cfg = SimConfig(
        hw, arch, Execution("bf16", 1, policy, routed), SchedulerConfig("continuous", 128, 512), seed=seed
    )
    sim = Simulation(cfg, book, reqs, keep_timeline=False)
    sim.advance = sim.advance and not reference
    start = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - start
    done = sum(len(r.scheduler.done) for r in sim.replicas)
    return {
        "trace": trace or "dense",
        "requests": len(reqs),
        "completed": done,
        "iterations": len(sim.timeline),
        "simulated_s": float(np.max([f.done_at for f in sim.replicas[0].scheduler.done])),
        "wall_s": wall,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trace", default="all", help="'all' (dense and every trace), '' (dense) or a path")
    parser.add_argument("--reference", action="store_true", help="the step-by-step engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.trace, args.requests, args.reference, args.seed)))
        return
    traces = TRACES if args.trace == "all" else [args.trace]
    for trace in traces:
        runs = []
        for _ in range(args.repeats):
            command = [
                sys.executable,
                __file__,
                "--child",
                "--trace",
                trace,
                "--requests",
                str(args.requests),
            ]
            command += ["--seed", str(args.seed)] + (["--reference"] if args.reference else [])
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[0]
        wall = statistics.median(x["wall_s"] for x in runs)
        rss = statistics.median(x["peak_rss_MB"] for x in runs)
        print(
            f"{r['trace']:<52} {r['requests']} requests ({r['completed']} done), {r['iterations']} iterations, "
            f"{r['simulated_s'] / 60:.0f} simulated min: {wall:.2f} s wall (median of {len(runs)}), "
            f"peak RSS {rss:.0f} MB"
        )


if __name__ == "__main__":
    main()
