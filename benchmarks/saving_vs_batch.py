"""TPOT saving of a radial trace over the sequential model against batch size, per execution policy.

Run: python benchmarks/saving_vs_batch.py --trace traces/NAME.parquet [--hw h100_sxm --arch llama3.1-8b]
Each point is a static batch of B requests arriving together (prompt 512, output 128 tokens),
simulated once with routes from the trace and once with every token visiting every layer.
"""

from __future__ import annotations

import argparse

from radsim.cost.layer import Execution
from radsim.cost.money import Pricing
from radsim.routes.book import load_routes, sequential
from radsim.routes.trace import read_trace
from radsim.sim.engine import SimConfig, Simulation
from radsim.sim.metrics import SLO, summarize
from radsim.sim.scheduler import SchedulerConfig
from radsim.sim.workload import Request
from radsim.spec.arch import load_arch
from radsim.spec.hardware import load_hardware


def tpot(hw, arch, exe, book, batch: int, policy: str) -> float:
    requests = [Request(i, 0.0, 512, 128) for i in range(batch)]
    cfg = SimConfig(hw, arch, exe, SchedulerConfig("static", batch, 8192), execution_policy=policy)
    sim = Simulation(cfg, book, requests)
    sim.run()
    return summarize(sim, SLO(), Pricing())["tpot_s_mean"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trace", required=True)
    parser.add_argument("--hw", default="h100_sxm")
    parser.add_argument("--arch", default="llama3.1-8b")
    args = parser.parse_args()
    hw, arch = load_hardware(args.hw), load_arch(args.arch)
    meta = read_trace(args.trace).meta
    policy, routed = meta["kv_policy"], meta["model"]["kind"] != "sequential"
    book = load_routes(args.trace, arch.num_layers)
    base = sequential(arch.num_layers)
    print(
        f"{args.trace} on {arch.name} / {hw.stem}: depth fraction {book.mean_depth_fraction:.3f}, kv policy {policy}"
    )
    print(
        f"{'batch':>5} {'sequential ms':>14} {'layer-major ms':>15} {'saving':>7} {'step-sync ms':>13} {'saving':>7}"
    )
    for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        seq = tpot(hw, arch, Execution("bf16"), base, batch, "layer_major")
        radial = Execution("bf16", kv_policy=policy, routed=routed)
        lm, ss = (tpot(hw, arch, radial, book, batch, p) for p in ("layer_major", "step_sync"))
        print(
            f"{batch:>5} {seq * 1e3:>14.3f} {lm * 1e3:>15.3f} {1 - lm / seq:>7.1%} {ss * 1e3:>13.3f} {1 - ss / seq:>7.1%}"
        )


if __name__ == "__main__":
    main()
