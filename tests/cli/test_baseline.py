"""`--baseline`: a second run that differs only in its routes, compared metric by metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radsim.cli.baseline import baseline_scenario, compare
from radsim.cli.main import main
from radsim.scenario.schema import Scenario

TRACE = str(Path(__file__).resolve().parents[2] / "traces/radial-scratch-p05.parquet")


def test_the_baseline_changes_only_the_routes():
    s = Scenario(command="simulate", hw="h100_sxm", arch="llama3.1-8b", trace=TRACE, rate_per_s=3.0, seed=4)
    dense = baseline_scenario(s, "dense")
    assert dense.trace == "" and dense.routes_label == "sequential"
    assert (dense.rate_per_s, dense.seed, dense.hw) == (3.0, 4, "h100_sxm")
    parametric = Scenario(command="simulate", hw="h100_sxm", arch="llama3.1-8b", depth_fraction=0.5)
    assert baseline_scenario(parametric, TRACE).trace == TRACE


def test_comparison_is_better_above_one_for_less_time_and_more_throughput():
    c = compare(
        "estimate",
        {"tpot_s": 0.5, "output_tokens_per_s": 200.0},
        {"tpot_s": 1.0, "output_tokens_per_s": 100.0},
    )
    assert c["tpot_s"]["better_x"] == pytest.approx(2.0) and c["tpot_s"]["change_pct"] == pytest.approx(-50.0)
    assert c["output_tokens_per_s"]["better_x"] == pytest.approx(2.0) and c["ttft_s"]["better_x"] is None


@pytest.mark.parametrize("command", ["estimate", "simulate"])
def test_cli_prints_both_runs_and_the_saving(command, capsys):
    args = [
        command,
        "--hw",
        "h100_sxm",
        "--arch",
        "llama3.1-8b",
        "--prompt-tokens",
        "64",
        "--output-tokens",
        "8",
    ]
    if command == "simulate":
        args += ["--trace", TRACE, "--arrival", "batch", "--batch", "4"]
    else:
        args += ["--depth-fraction", "0.5"]
    assert main([*args, "--baseline", "dense", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    metric = "tpot_s" if command == "estimate" else "tpot_s_p90"
    assert out["comparison"][metric]["better_x"] > 1.0  # shallower routes decode faster at small batch
    assert out["comparison"][metric]["baseline"] == pytest.approx(out["baseline"][metric])
    assert main([*args, "--baseline", "dense"]) == 0
    assert "baseline: sequential" in capsys.readouterr().out
