"""Speed of the static estimate on this machine, on demand (not a test).

    python benchmarks/bench_estimate.py            # everything
    python benchmarks/bench_estimate.py --quick    # fewer repeats
    python benchmarks/bench_estimate.py --reference  # the step-by-step reference loop instead

Prints the median in-process time of one static point (`radsim.cost.estimate.estimate`) for every
shipped architecture on h100_sxm (bf16, prompt 512) at batch 1/64/256 and output 128/4096, sequential
(depth 1.0) and routed (depth 0.5, exact); the time of 1,000 points through `estimate_many`; and the
wall time of a whole `python -m radsim estimate --hw h100_sxm --arch llama3.1-8b` process (median of
5). A point that does not fit one device runs at the smallest tensor-parallel degree that fits; an
output longer than the architecture's positions allow is cut to fit (shown in brackets).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from radsim.cost import estimate as estimate_module
from radsim.cost.estimate import Workload
from radsim.cost.layer import Execution, _check_tp
from radsim.cost.memory import check_fits
from radsim.errors import ConfigError
from radsim.routes.synthetic import mean_layers
from radsim.spec.arch import list_archs, load_arch
from radsim.spec.hardware import load_hardware

ROOT = Path(__file__).resolve().parent.parent
PROMPT = 512


def _median_s(fn, budget_s: float, most: int = 200) -> float:
    """Median time of `fn()` over repeats filling about `budget_s` (at least 3, at most `most`)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < most):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _point(hw, arch, batch: int, output: int, depth: float):
    """(exe, work) of a point, at the smallest TP degree that fits; None if none does."""
    output = min(output, arch.max_position_embeddings - PROMPT)
    work = Workload(batch, PROMPT, output, depth_fraction=depth)
    for tp in (1, 2, 4, 8):
        exe = Execution("bf16", tp=tp)
        try:
            # the memory check of the estimate itself, without running it
            layers = mean_layers(arch.num_layers, depth, work.depth_distribution)
            check_fits(hw, estimate_module._memory(arch, exe, work, layers), "")
            _check_tp(arch, exe)
        except ConfigError:
            continue
        return exe, work
    return None


def _point_table(fn, budget_s: float) -> None:
    hw = load_hardware("h100_sxm")
    print(f"one point, median ms ({fn.__name__}); h100_sxm, bf16, prompt {PROMPT}; [tp, cut output]")
    cells = [(b, o, d) for d in (1.0, 0.5) for b in (1, 64, 256) for o in (128, 4096)]
    header = "  ".join(f"{'d' + format(d, 'g')} b{b} o{o}".rjust(14) for b, o, d in cells)
    print(f"{'arch':<22}{header}")
    for name in list_archs():
        arch = load_arch(name)
        row = []
        for batch, output, depth in cells:
            point = _point(hw, arch, batch, output, depth)
            if point is None:
                row.append("no fit".rjust(14))
                continue
            exe, work = point
            ms = _median_s(lambda a=arch, e=exe, w=work: fn(hw, a, e, w), budget_s, most=50) * 1e3
            notes = [f"tp{exe.tp}"] if exe.tp > 1 else []
            if work.output_tokens != output:
                notes.append(f"o{work.output_tokens}")
            note = f"[{','.join(notes)}]" if notes else ""
            row.append(f"{ms:.3f}{note}".rjust(14))
        print(f"{name:<22}{'  '.join(row)}", flush=True)


def _many_points(depth: float, count: int = 1000) -> list:
    hw = load_hardware("h100_sxm")
    points = []
    archs = [load_arch(name) for name in list_archs()]
    i = 0
    while len(points) < count:
        arch = archs[i % len(archs)]
        batch = (1, 4, 16, 64, 256)[(i // len(archs)) % 5]
        output = (128, 512, 2048)[(i // (5 * len(archs))) % 3]
        point = _point(hw, arch, batch, output, depth)
        if point is not None:
            points.append((hw, arch, *point))
        i += 1
    return points


def _many(depth: float, reference: bool) -> None:
    points = _many_points(depth)
    start = time.perf_counter()
    if reference or not hasattr(estimate_module, "estimate_many"):
        fn = getattr(estimate_module, "_reference_estimate", estimate_module.estimate)
        for hw, arch, exe, work in points:
            fn(hw, arch, exe, work)
        how = f"a loop of {fn.__name__}"
    else:
        estimate_module.estimate_many(points)
        how = "estimate_many"
    elapsed = time.perf_counter() - start
    print(f"1,000 points, depth {depth:g} (archs x batch 1..256 x output 128..2048), {how}: {elapsed:.3f} s")


def _process(runs: int = 5) -> None:
    main = "radsim" if (ROOT / "radsim" / "__main__.py").is_file() else "radsim.cli.main"
    command = [sys.executable, "-m", main, "estimate", "--hw", "h100_sxm", "--arch", "llama3.1-8b"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    print(f"whole process `python -m {main} estimate --hw h100_sxm --arch llama3.1-8b`: ", end="")
    print(f"median {statistics.median(times):.3f} s of {runs} (min {min(times):.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing budgets")
    parser.add_argument("--reference", action="store_true", help="time the step-by-step reference")
    parser.add_argument("--only", choices=("points", "many", "process"), default=None)
    args = parser.parse_args()
    fn = estimate_module.estimate
    if args.reference:
        fn = getattr(estimate_module, "_reference_estimate", estimate_module.estimate)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    if args.only in (None, "points"):
        _point_table(fn, 0.05 if args.quick else 0.3)
    if args.only in (None, "many"):
        _many(1.0, args.reference)
        _many(0.5, args.reference)
    if args.only in (None, "process"):
        _process()


if __name__ == "__main__":
    main()
