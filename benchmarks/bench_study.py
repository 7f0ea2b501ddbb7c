"""Study throughput: points per second for static-estimate and full-simulation sweeps.

Run: taskset -c 0 python benchmarks/bench_study.py [--workers 1] [--dask-local]
Estimate sweep: Llama-3.1-8B on one H100, four mean depths x batch 1..256 (36 points, prompt 512,
output 128). Simulation sweep: the same static batches simulated with two radial traces and the
sequential model under layer-major execution (batch 1, 8, 32, 128: 12 points), and 30 s of Poisson
arrivals at 4 requests/s (3 points). Each sweep runs into a fresh folder, so nothing is resumed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from radsim.study.load import parse_study
from radsim.study.sweep import dask_runner, process_runner, run_study, serial_runner

ROOT = Path(__file__).resolve().parent.parent
FIXED = {"hw": "h100_sxm", "arch": "llama3.1-8b", "dtype": "bf16", "prompt_tokens": 512, "output_tokens": 128}
TRACES = ["", "traces/smollm2-135m-radial-distill-tau0.27.parquet", "traces/radial-scratch-p05.parquet"]
SWEEPS = {
    "estimate": [
        {"command": "estimate", "axes": {"depth_fraction": [1.0, 0.75, 0.5, 0.25], "batch": [1, 2, 4, 8, 16, 32, 64, 128, 256]}},
    ],
    "simulate (static batches)": [
        {"command": "simulate", "arrival": "batch", "axes": {"trace": TRACES, "batch": [1, 8, 32, 128]}},
    ],
    "simulate (30 s Poisson)": [
        {"command": "simulate", "arrival": "poisson", "rate_per_s": 4.0, "duration_s": 30.0, "max_batch": 64,
         "axes": {"trace": TRACES}},
    ],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1, help="local processes (1: in this process)")
    parser.add_argument("--dask-local", action="store_true", help="run on a local Dask cluster of --workers")
    args = parser.parse_args()
    client = None
    if args.dask_local:
        from distributed import Client, LocalCluster

        client = Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None))
        runner = dask_runner(client)
    else:
        runner = serial_runner if args.workers == 1 else process_runner(args.workers)
    where = f"{'Dask, ' if client else ''}{args.workers} worker(s)"
    print(f"{'sweep':<28} {'points':>6} {'wall s':>8} {'points/s':>9}   ({where})")
    for name, grids in SWEEPS.items():
        study = parse_study({"study": {"name": "bench"}, "fixed": FIXED, "grid": grids}, ROOT / "bench.toml")
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            table = run_study(study, out, runner, stream=None)
            wall = time.perf_counter() - start
        assert (table["error"] == "").all(), table.loc[table["error"] != "", "error"].tolist()
        print(f"{name:<28} {len(table):>6} {wall:>8.2f} {len(table) / wall:>9.2f}")
    if client is not None:
        client.close()


if __name__ == "__main__":
    main()
