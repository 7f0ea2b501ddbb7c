"""A tiny study shared by the study, plot and report tests: every command, a trace and a failing point."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from radsim.study.load import load_study
from radsim.study.sweep import run_study

ROOT = Path(__file__).resolve().parent.parent
TINY = """
[study]
name = "tiny"
seed = 3

[fixed]
hw = "h100_sxm"
arch = "llama3.1-8b"
prompt_tokens = 64
output_tokens = 16
slo_tpot_s = 0.05   # read by simulations only; the estimate grid leaves it out

[[grid]]
command = "estimate"
[grid.axes]
depth_fraction = [1.0, 0.5]
batch = [1, 4, 16]

[[grid]]
command = "simulate"
arrival = "batch"
batch = 4
[grid.axes]
trace = ["", "traces/radial-scratch-p05.parquet"]
execution = ["layer_major", "step_sync"]

[[grid]]
command = "simulate"
arrival = "poisson"
rate_per_s = 4.0
duration_s = 3.0
max_batch = 16
[grid.axes]
depth_fraction = [1.0, 0.5]

# Capacity under the SLOs, for the sequential model and a trace.
[[grid]]
command = "capacity"
duration_s = 3.0
slo_ttft_s = 0.5
[grid.axes]
trace = ["", "traces/radial-scratch-p05.parquet"]

# Llama-3.1-70B needs 141 GB in bf16: this point fails and is recorded, the others run.
[[grid]]
command = "estimate"
arch = "llama3.1-70b"
"""


def write_tiny(folder: Path) -> Path:
    """Write the tiny study file into `folder` (traces resolve against the repository)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.toml"
    path.write_text(TINY.replace("traces/", f"{ROOT}/traces/"))
    return path


def tiny_table(folder: Path) -> pd.DataFrame:
    """Run the tiny study in this process and return its table."""
    return run_study(load_study(write_tiny(folder)), folder / "out", stream=None)
