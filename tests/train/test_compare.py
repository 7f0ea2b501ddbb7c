"""Scratch runs scored on one validation sample and compared window by window."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from radsim.cli.main import main  # noqa: E402
from radsim.errors import ConfigError  # noqa: E402
from radsim.train import compare, loop  # noqa: E402
from radsim.train.config import DataSection, ModelSection, RunConfig, TrainSection  # noqa: E402


def _dense(name: str, layers: int) -> RunConfig:
    return RunConfig(
        name=name,
        kind="dense_scratch",
        seed=0,
        data=DataSection(seq_len=16, batch=2, vocab=64),
        model=ModelSection(hidden_size=32, num_layers=layers, num_heads=4, num_kv_heads=2, ffn_size=48),
        train=TrainSection(steps=3, lr=1e-2, warmup_steps=1, eval_tokens=64),
    )


def test_runs_scored_apart_compare_on_the_same_windows(tmp_path, synthetic_text, capsys):
    for name, layers in (("two", 2), ("four", 4)):
        loop.train_scratch(_dense(name, layers), tmp_path / "runs" / name)
    out = tmp_path / "results"
    main(["evaluate", str(tmp_path / "runs" / "two"), "--out", str(out), "--tokens", "160", "--threads", "1"])
    capsys.readouterr()
    main(
        [
            "evaluate",
            str(tmp_path / "runs" / "four"),
            "--out",
            str(out),
            "--tokens",
            "160",
            "--reference",
            "two",
        ]
    )
    rows = {r["run"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"two", "four"} and (out / "comparison.csv").exists()
    two, four = rows["two"], rows["four"]
    assert (two["ratio_to_reference"], two["ratio_lo"], two["ratio_hi"]) == (1.0, 1.0, 1.0)
    assert four["ratio_lo"] <= four["ratio_to_reference"] <= four["ratio_hi"]
    assert four["ratio_to_reference"] == pytest.approx(four["perplexity"] / two["perplexity"])
    assert (two["layers_owned"], four["layers_owned"]) == (2, 4) and four["mean_depth"] == 4.0
    summary = json.loads((out / "four.json").read_text())
    assert summary["perplexity"] == pytest.approx(four["perplexity"]) and summary["windows"] == 10
    _, model, mapping = loop.load_run(tmp_path / "runs" / "four")
    windows, _, _ = loop.validation_sample(16, 160, 0, mapping)
    loss, _ = loop.window_losses(model, windows)
    assert np.allclose(compare.read_windows(out / "four-windows.csv")["loss"], loss)


def test_other_windows_or_a_missing_reference_are_refused(tmp_path, synthetic_text, capsys):
    loop.train_scratch(_dense("two", 2), tmp_path / "runs" / "two")
    loop.train_scratch(_dense("four", 4), tmp_path / "runs" / "four")
    out = tmp_path / "results"
    compare.score_run(tmp_path / "runs" / "two", out, tokens=160)
    with pytest.raises(ConfigError, match="no scored run 'nine'"):
        compare.comparison(out, "nine")
    compare.score_run(tmp_path / "runs" / "four", out, tokens=320)
    with pytest.raises(ConfigError, match="other windows"):
        compare.comparison(out, "two")
    assert main(["evaluate", str(tmp_path / "runs" / "absent"), "--out", str(out)]) == 2
    assert "absent: no model.pt" in capsys.readouterr().err


def test_a_sequential_run_is_scored_under_early_exit_at_each_threshold(tmp_path, synthetic_text, capsys):
    loop.train_scratch(_dense("four", 4), tmp_path / "runs" / "four")
    out = tmp_path / "results"
    argv = ["evaluate", str(tmp_path / "runs" / "four"), "--out", str(out), "--tokens", "160"]
    assert main([*argv, "--early-exit", "0.01,1"]) == 0
    rows = {r["run"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"four", "four-exit0.01", "four-exit1"}
    assert rows["four-exit1"]["mean_depth"] == 4.0  # nothing is that confident: every layer
    assert rows["four-exit1"]["perplexity"] == pytest.approx(rows["four"]["perplexity"], rel=1e-6)
    assert rows["four-exit0.01"]["mean_depth"] == 1.0  # everything is: out after the first layer
    assert json.loads((out / "four-exit0.01.json").read_text())["early_exit"] == {
        "threshold": 0.01,
        "min_layer": 0,
    }
    assert main([*argv, "--early-exit", "0.5,2"]) == 2
    assert "'2' is not a threshold" in capsys.readouterr().err
