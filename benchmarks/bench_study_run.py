"""1,000 static-estimate points as a study: a whole `radsim study run` process, and the time per point.

Run: python benchmarks/bench_study_run.py [--runs 3] [--workers 1 0]

Writes a study file into a temporary folder: 10 architectures (those that fit one H100 at batch 256
and 512 + 1024 tokens in bf16) x batch 1..256 x output 16..1024 tokens (prompt 512, every token
visiting every layer: 1,000 points), then times `python -m radsim study run FILE --out DIR --quiet
--workers N` wall-clock, process start-up included, into a fresh folder each run (nothing
resumed); `--workers 0` is the command's default (one process per available core). Prints each
run and the median. Then, in this process, the time of `radsim.study.point.evaluate` per point:
the first pass over the points (as a study's process meets them, filling the per-process caches of
hardware, architectures and launch prices) and a second pass; a loaded machine moves these less
than the whole process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = [
    "llama3.1-8b",
    "llama3.1-8b-dlo",
    "llama3.1-8b-finedeep",
    "mistral-7b",
    "opt-1.3b",
    "opt-125m",
    "opt-350m",
    "smollm2-1.7b",
    "smollm2-135m",
    "smollm2-360m",
]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 192, 256]
OUTPUTS = [16, 32, 64, 128, 192, 256, 384, 512, 768, 1024]
STUDY = f"""[study]
name = "bench-1000"
description = "1,000 static estimates: architectures x batch x output length"

[fixed]
hw = "h100_sxm"
prompt_tokens = 512

[[grid]]
command = "estimate"
[grid.axes]
arch = {ARCHS}
batch = {BATCHES}
output_tokens = {OUTPUTS}
""".replace("'", '"')


def _run_process(study: Path, out: Path, workers: int) -> float:
    """Wall time of one `radsim study run` process into the fresh folder `out`."""
    command = [sys.executable, "-m", "radsim", "study", "run", str(study), "--out", str(out), "--quiet"]
    if workers:
        command += ["--workers", str(workers)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0 or "1000 points (0 failed)" not in done.stdout:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall


def _per_point_ms(study: Path) -> tuple[list[float], list[float]]:
    """Per-point times (ms) of `evaluate` over the study's points: a first and a second pass."""
    from radsim.study.load import expand, load_study
    from radsim.study.point import evaluate

    points = expand(load_study(study))
    passes = []
    for _ in range(2):
        times = []
        for p in points:
            start = time.perf_counter()
            row = evaluate(p)
            times.append((time.perf_counter() - start) * 1e3)
            assert row["error"] == "", row["error"]
        passes.append(times)
    return passes[0], passes[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="processes timed per worker count")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 0], help="worker counts (0: the command's default)"
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "bench-1000.toml"
        study.write_text(STUDY)
        print(f"1,000 estimate points (10 architectures x 10 batches x 10 outputs, h100_sxm), {cores} cores")
        for workers in args.workers:
            walls = [_run_process(study, Path(tmp) / f"out-{workers}-{i}", workers) for i in range(args.runs)]
            label = f"--workers {workers}" if workers else f"default workers ({cores})"
            runs = ", ".join(f"{w:.2f}" for w in walls)
            print(f"radsim study run, {label:<22} median {statistics.median(walls):.2f} s  ({runs} s)")
        first, second = _per_point_ms(study)
    print(
        f"evaluate per point, in-process: first pass mean {statistics.mean(first):.3f} ms "
        f"(median {statistics.median(first):.3f}), second pass median {statistics.median(second):.3f} ms "
        f"(mean {statistics.mean(second):.3f})"
    )


if __name__ == "__main__":
    main()
