"""Speed of the cost model and of `radsim estimate`, on this machine. Run: python benchmarks/bench_cost.py"""

from __future__ import annotations

import platform
import time
import timeit

import numpy as np

from radsim.cost.iteration import iteration_cost
from radsim.cost.layer import Execution, RoutedBatch, layer_cost
from radsim.scenario.run import run_estimate
from radsim.scenario.schema import Scenario
from radsim.spec.arch import load_arch
from radsim.spec.hardware import load_hardware


def _per_call_us(fn, seconds: float = 1.0) -> float:
    number = max(1, int(seconds / max(timeit.timeit(fn, number=3) / 3, 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def main() -> None:
    hw, arch = load_hardware("h100_sxm"), load_arch("llama2-7b")
    exe = Execution("fp16", routed=True)
    layers = arch.num_layers
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    for seqs in (1, 64, 256):
        batch = RoutedBatch.of(np.ones(seqs), np.full(seqs, 512.0))
        call = lambda b=batch: layer_cost(hw, arch, exe, b)  # noqa: E731
        print(f"layer_cost, {seqs:>3} sequences:              {_per_call_us(call):8.1f} us")
    for seqs in (1, 64, 256):
        ctx, vis = np.full((layers, seqs), 512.0), np.ones((layers, seqs))
        call = lambda s=seqs, c=ctx, v=vis: iteration_cost(hw, arch, exe, np.ones(s), c, v, s)  # noqa: E731
        print(f"iteration_cost, {layers} layers x {seqs:>3} sequences:   {_per_call_us(call):8.1f} us")
    for batch, prompt, output in ((1, 128, 128), (64, 2048, 128), (256, 128, 1024)):
        start = time.perf_counter()
        run_estimate(
            Scenario(
                hw="h100_sxm",
                arch="llama3.1-8b",
                batch=batch,
                prompt_tokens=prompt,
                output_tokens=output,
                depth_fraction=0.5,
            )
        )
        elapsed = time.perf_counter() - start
        print(f"estimate llama3.1-8b, batch {batch}, prompt {prompt}, output {output}: {elapsed:.3f} s")


if __name__ == "__main__":
    main()
