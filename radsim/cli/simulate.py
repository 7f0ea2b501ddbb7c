"""`radsim simulate`: the serving simulator on the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radsim.errors import ConfigError


def add_simulate_command(sub) -> None:
    """Register `simulate` on the main CLI's subparsers."""
    sim = sub.add_parser(
        "simulate", help="discrete-event simulation of serving (arrivals, batching, KV, power)"
    )
    sim.add_argument("--hw", required=True, help="hardware name or TOML path")
    sim.add_argument("--arch", required=True, help="architecture name or TOML path")
    sim.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16", "fp8"))
    sim.add_argument("--tp", type=int, default=1)
    sim.add_argument("--replicas", type=int, default=1)
    routes = sim.add_argument_group("routes (a trace, else the parametric generator)")
    routes.add_argument("--trace", help="routing trace (Parquet) to draw routes from")
    routes.add_argument(
        "--depth-fraction", type=float, default=1.0, help="parametric: mean fraction of layers visited"
    )
    routes.add_argument(
        "--reuse-prob", type=float, default=0.0, help="parametric: chance a token revisits a layer"
    )
    routes.add_argument(
        "--kv-policy", choices=("none", "copy", "compute"), help="default: the trace's, else none"
    )
    routes.add_argument("--execution", default="layer_major", choices=("layer_major", "step_sync"))
    routes.add_argument(
        "--expert-launch",
        default="grouped",
        choices=("grouped", "per_expert"),
        help="Finedeep experts: one grouped launch per projection, or one launch per expert",
    )
    work = sim.add_argument_group("workload")
    work.add_argument("--arrival", default="poisson", choices=("poisson", "gamma", "replay"))
    work.add_argument("--rate", type=float, default=1.0, help="requests per second")
    work.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    work.add_argument("--burstiness", type=float, default=2.0, help="gamma: coefficient of variation of gaps")
    work.add_argument("--replay", help="CSV with arrival_s,prompt_tokens,output_tokens")
    work.add_argument("--lengths", default="lognormal", choices=("fixed", "uniform", "lognormal"))
    work.add_argument("--prompt-mean", type=float, default=512)
    work.add_argument("--output-mean", type=float, default=256)
    work.add_argument("--length-cv", type=float, default=0.5)
    work.add_argument("--max-length", type=int, default=4096, help="cap on prompt and on output tokens")
    sched = sim.add_argument_group("scheduler")
    sched.add_argument("--batching", default="continuous", choices=("continuous", "static"))
    sched.add_argument("--max-batch", type=int, default=256)
    sched.add_argument("--max-tokens", type=int, default=8192, help="token budget per iteration")
    sched.add_argument("--no-chunked-prefill", action="store_true")
    sched.add_argument("--memory-fraction", type=float, default=0.9)
    out = sim.add_argument_group("output")
    out.add_argument("--slo-ttft", type=float, default=2.0, help="seconds, for goodput")
    out.add_argument("--slo-tpot", type=float, default=0.1, help="seconds, for goodput")
    out.add_argument("--electricity-usd-per-kwh", type=float, default=0.081)
    out.add_argument("--timeline", help="write the per-iteration timeline to this Parquet file")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--json", action="store_true")
    sim.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> None:
    """Build the run from the arguments, simulate, print the metrics."""
    from radsim.cost.layer import Execution
    from radsim.cost.money import Pricing
    from radsim.routes.book import from_trace
    from radsim.routes.synthetic import parametric
    from radsim.routes.trace import read_trace
    from radsim.sim.engine import SimConfig, Simulation
    from radsim.sim.metrics import SLO, summarize, timeline_table
    from radsim.sim.scheduler import SchedulerConfig
    from radsim.sim.workload import LengthDist, WorkloadConfig, generate
    from radsim.spec.arch import load_arch
    from radsim.spec.hardware import load_hardware

    hw, arch = load_hardware(args.hw), load_arch(args.arch)
    if args.trace:
        trace = read_trace(args.trace)  # read once: the meta and the routes
        meta = trace.meta
        policy = args.kv_policy or meta["kv_policy"]
        book = from_trace(trace, arch.num_layers, source=str(args.trace))
        routed = meta["model"]["kind"] != "sequential"  # a sequential model has no router to run
    else:
        policy = args.kv_policy or "none"
        book = parametric(arch.num_layers, args.depth_fraction, args.reuse_prob, seed=args.seed)
        routed = args.depth_fraction < 1 or args.reuse_prob > 0
    exe = Execution(
        dtype=args.dtype, tp=args.tp, kv_policy=policy, routed=routed, expert_launch=args.expert_launch
    )
    hw.peak_flops(args.dtype)
    scheduler = SchedulerConfig(
        args.batching, args.max_batch, args.max_tokens, not args.no_chunked_prefill, args.memory_fraction
    )
    cfg = SimConfig(hw, arch, exe, scheduler, args.execution, args.replicas, args.seed)
    lengths = {"kind": args.lengths, "cv": args.length_cv, "max_tokens": args.max_length}
    workload = WorkloadConfig(
        arrival=args.arrival,
        rate_per_s=args.rate,
        duration_s=args.duration,
        burstiness=args.burstiness,
        prompt=LengthDist(mean=args.prompt_mean, high=max(1, int(2 * args.prompt_mean)), **lengths),
        output=LengthDist(mean=args.output_mean, high=max(1, int(2 * args.output_mean)), **lengths),
        replay_csv=args.replay,
        seed=args.seed,
    )
    sim = Simulation(cfg, book, generate(workload))
    sim.run()
    result = {
        "hw": hw.stem,
        "arch": arch.name,
        "routes": book.source,
        "kv_policy": policy,
        "execution": args.execution,
        "batching": args.batching,
        "depth_fraction": book.mean_depth_fraction,
        **summarize(sim, SLO(args.slo_ttft, args.slo_tpot), Pricing(args.electricity_usd_per_kwh)),
    }
    if args.timeline:
        _write_parquet(timeline_table(sim), Path(args.timeline))
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
    if path.suffix != ".parquet":
        raise ConfigError(f"--timeline {path}: the timeline is written as Parquet; name it *.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
