"""Decode-step saving of a radial trace over the sequential model against batch size, per execution policy.

Run: python benchmarks/saving_vs_batch.py --trace traces/NAME.parquet [--hw h100_sxm --arch llama3.1-8b]
Each point is a static batch of B requests arriving together (prompt 512, output 128 tokens),
simulated once with routes from the trace and once with every token visiting every layer; the
figure is the mean time of one lockstep decode step (`decode_step_s`).
"""

from __future__ import annotations

import argparse

from radsim.scenario.run import run_simulation
from radsim.scenario.schema import Scenario


def decode_step(hw: str, arch: str, trace: str, batch: int, execution: str) -> tuple[float, str]:
    """Mean decode-step time of the static batch, and the routes' description."""
    scenario = Scenario(
        command="simulate", hw=hw, arch=arch, trace=trace, arrival="batch", batch=batch, execution=execution
    )
    sim, metrics = run_simulation(scenario)
    routes = f"depth fraction {sim.routes.mean_depth_fraction:.3f}, kv policy {sim.cfg.exe.kv_policy}"
    return metrics["decode_step_s"], routes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trace", required=True)
    parser.add_argument("--hw", default="h100_sxm")
    parser.add_argument("--arch", default="llama3.1-8b")
    args = parser.parse_args()
    print(
        f"{args.trace} on {args.arch} / {args.hw}: {decode_step(args.hw, args.arch, args.trace, 1, 'layer_major')[1]}"
    )
    print(
        f"{'batch':>5} {'sequential ms':>14} {'layer-major ms':>15} {'saving':>7} {'step-sync ms':>13} {'saving':>7}"
    )
    for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        seq = decode_step(args.hw, args.arch, "", batch, "layer_major")[0]
        lm, ss = (
            decode_step(args.hw, args.arch, args.trace, batch, p)[0] for p in ("layer_major", "step_sync")
        )
        print(
            f"{batch:>5} {seq * 1e3:>14.3f} {lm * 1e3:>15.3f} {1 - lm / seq:>7.1%} {ss * 1e3:>13.3f} {1 - ss / seq:>7.1%}"
        )


if __name__ == "__main__":
    main()
