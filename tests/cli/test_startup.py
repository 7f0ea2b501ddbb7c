"""Start-up of the command line: the estimate and the simulator without a trace import no heavy
library (pandas, pyarrow, plotly, dask, torch, tqdm; scipy neither for the estimate). Not a timing test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pandas", "pyarrow", "plotly", "dask", "distributed", "torch", "tqdm", "kaleido", "transformers")

# runs `radsim ARGS` as `python -m radsim` does, then prints the top-level modules it imported
PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = ["radsim", *json.loads(sys.argv[1])]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_module("radsim", run_name="__main__")
    except SystemExit as exit:
        assert not exit.code, exit.code
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _imported(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [
        ("estimate", "--hw", "h100_sxm", "--arch", "llama3.1-8b"),
        ("estimate", "--hw", "mi300x", "--arch", "llama3.1-8b", "--depth-fraction", "0.5", "--json"),
    ],
)
def test_the_estimate_imports_no_heavy_library(args):
    modules = _imported(*args)
    assert "radsim" in modules and "numpy" in modules
    assert not modules & {*HEAVY, "scipy", "simpy"}


def test_the_simulator_without_a_trace_imports_no_heavy_library():
    modules = _imported("simulate", "--hw", "h100_sxm", "--arch", "llama3.1-8b", "--quiet")
    assert "simpy" in modules
    assert not modules & set(HEAVY)
