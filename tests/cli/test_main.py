"""The command line: registries, estimate output and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from radsim.cli.main import main

ESTIMATE_KEYS = {
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "output_tokens_per_s",
    "peak_memory_bytes",
    "avg_power_W",
    "energy_J_per_output_token",
    "cost_usd_per_Mtok",
}


def test_hw_list_and_show(capsys):
    assert main(["hw", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("h100_sxm", "h200_sxm", "a100_sxm_80gb", "l40s", "mi300x"):
        assert name in out
    assert main(["hw", "show", "h100_sxm"]) == 0
    out = capsys.readouterr().out
    assert "memory_bandwidth_Bps" in out and "bf16_dense_flops" in out


def test_unknown_hw_lists_valid(capsys):
    assert main(["hw", "show", "h1000"]) == 2
    err = capsys.readouterr().err
    assert "unknown hardware 'h1000'" in err and "h100_sxm" in err


def test_arch_list_and_show(capsys):
    assert main(["arch", "list"]) == 0
    assert "llama3.1-8b" in capsys.readouterr().out
    assert main(["arch", "show", "smollm2-135m"]) == 0
    assert "134,515,008" in capsys.readouterr().out


def test_estimate_json(capsys):
    args = [
        "estimate",
        "--hw",
        "h100_sxm",
        "--arch",
        "llama2-7b",
        "--dtype",
        "fp16",
        "--batch",
        "8",
        "--prompt",
        "512",
        "--output",
        "16",
        "--tp",
        "2",
        "--depth-fraction",
        "0.6",
        "--json",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert ESTIMATE_KEYS <= set(result)
    assert result["tp"] == 2 and result["depth_fraction"] == 0.6 and result["layers_visited_per_token"] == 19
    assert all(result[k] > 0 for k in ESTIMATE_KEYS)


def test_estimate_table(capsys):
    assert main(["estimate", "--hw", "a100_sxm_80gb", "--arch", "llama2-7b", "--output", "8"]) == 0
    out = capsys.readouterr().out
    assert "time to first token" in out and "cost per 1M output tokens" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hw", "h100_sxm", "--arch", "llama2-70b"], "does not fit"),
        (["--hw", "a100_sxm_80gb", "--arch", "llama2-7b", "--dtype", "fp8"], "no dense fp8"),
        (["--hw", "h100_sxm", "--arch", "llama2-7b", "--tp", "3"], "tp=3"),
        (["--hw", "h100_sxm", "--arch", "nope"], "unknown architecture"),
    ],
)
def test_estimate_errors(capsys, args, message):
    assert main(["estimate", *args]) == 2
    assert message in capsys.readouterr().err


def test_console_script_runs():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "radsim.cli.main",
            "estimate",
            "--hw",
            "l40s",
            "--arch",
            "smollm2-135m",
            "--json",
            "--output",
            "4",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout)["hw"] == "l40s"


SIM_KEYS = {
    "ttft_s_mean",
    "ttft_s_p50",
    "ttft_s_p90",
    "ttft_s_p99",
    "tpot_s_mean",
    "tpot_s_p99",
    "itl_s_p50",
    "e2e_s_p99",
    "output_tokens_per_s",
    "goodput_requests_per_s",
    "energy_J_per_output_token",
    "cost_usd_per_Mtok",
}


def test_simulate_json_parametric_and_trace(capsys, tmp_path):
    from radsim.routes.trace import Trace, visits_from_routes, write_trace

    args = [
        "simulate",
        "--hw",
        "h100_sxm",
        "--arch",
        "smollm2-135m",
        "--rate",
        "4",
        "--duration",
        "3",
        "--depth-fraction",
        "0.5",
        "--seed",
        "1",
        "--json",
        "--timeline",
        str(tmp_path / "t.parquet"),
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert SIM_KEYS <= set(result) and result["completed"] == result["requests"] > 0
    assert (tmp_path / "t.parquet").exists()
    meta = {
        "schema_version": 1,
        "model": {"name": "t", "kind": "radial", "num_layers": 4, "config": {}},
        "kv_policy": "none",
        "data": {"source": "test", "tokens": 4},
        "seed": 0,
        "git_commit": "x",
        "device": "cpu",
        "created_at": "2026-11-24T00:00:00+00:00",
    }
    visits = visits_from_routes([[0, 2], [0, 1, 3], [1], [0, 3]], [0, 0, 1, 1], [0, 1, 0, 1])
    write_trace(Trace(visits, meta), tmp_path / "r.parquet")
    args = [
        "simulate",
        "--hw",
        "h100_sxm",
        "--arch",
        "smollm2-135m",
        "--trace",
        str(tmp_path / "r.parquet"),
        "--rate",
        "4",
        "--duration",
        "3",
        "--execution",
        "step_sync",
        "--json",
    ]
    assert main(args) == 0
    traced = json.loads(capsys.readouterr().out)
    # 4 trace layers onto 30: blocks of 7, 8, 7, 8 layers; 60 visits over 4 tokens = 15 of 30
    assert traced["kv_policy"] == "none" and traced["depth_fraction"] == pytest.approx(0.5)
    assert main(["trace", "stats", str(tmp_path / "r.parquet"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 4


def test_simulate_errors(capsys):
    assert (
        main(["simulate", "--hw", "h100_sxm", "--arch", "llama2-70b", "--rate", "1", "--duration", "1"]) == 2
    )
    assert "can never run" in capsys.readouterr().err
    assert main(["simulate", "--hw", "h100_sxm", "--arch", "smollm2-135m", "--trace", "nope.parquet"]) == 2
    assert "nope.parquet" in capsys.readouterr().err
    long = [
        "simulate",
        "--hw",
        "h100_sxm",
        "--arch",
        "opt-125m",
        "--rate",
        "2",
        "--duration",
        "5",
        "--lengths",
        "fixed",
        "--prompt-mean",
        "2000",
        "--output-mean",
        "100",
    ]
    assert main(long) == 2
    assert "exceed the 2050 positions of opt-125m" in capsys.readouterr().err


def test_estimate_with_a_trace_simulates_the_static_batch(capsys):
    args = ["estimate", "--hw", "h100_sxm", "--arch", "llama3.1-8b", "--batch", "4", "--prompt-tokens", "64"]
    args += ["--output-tokens", "8", "--json"]
    assert main(args) == 0
    dense = json.loads(capsys.readouterr().out)
    assert main([*args, "--trace", "traces/radial-scratch-p05.parquet", "--baseline", "dense"]) == 0
    traced = json.loads(capsys.readouterr().out)
    assert "simulate --arrival batch" in traced["command_used"] and traced["completed"] == 4
    assert "radial-scratch-p05" in traced["routes_source"] and traced["warnings"]  # 8 layers on 32
    # the dense baseline is the same static batch the closed-form estimate prices
    assert traced["baseline"]["ttft_s_mean"] == pytest.approx(dense["ttft_s"], rel=1e-9)
    assert traced["baseline"]["tpot_s_mean"] == pytest.approx(dense["tpot_s"], rel=1e-9)
    assert traced["comparison"]["tpot_s_p90"]["better_x"] > 1  # fewer layers per token
    assert main([*args, "--trace", "traces/radial-scratch-p05.parquet", "--depth-fraction", "0.5"]) == 2
    assert "a trace sets the depth" in capsys.readouterr().err


def test_study_plot_slo_flags_go_together(capsys, tmp_path):
    assert main(["study", "plot", str(tmp_path), "--slo-ttft", "1.0", "--format", "html"]) == 2
    assert "--slo-ttft and --slo-tpot go together" in capsys.readouterr().err
