"""Validation: the split, predictions from the table alone, and the whole loop on a tiny CPU model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radsim.cli.main import main
from radsim.measure.harness import read_csv
from radsim.measure.validate import error_table, group_configs, predict_config, split_configs, summary
from radsim.spec.hardware import load_hardware


def _fake_rows(models=("m",), batches=(1, 4, 16), tokens=(32, 64, 128)) -> dict:
    return {
        f"{m}/{b}/{t}": [dict(model=m, phase="decode", batch=str(b), tokens=str(t))]
        for m in models
        for b in batches
        for t in tokens
    }


def test_split_is_a_checkerboard_that_covers_every_batch_and_length():
    split = split_configs(_fake_rows())
    assert set(split.values()) == {"calibrate", "validate"}
    for half in ("calibrate", "validate"):
        ids = [cid for cid, s in split.items() if s == half]
        assert {cid.split("/")[1] for cid in ids} == {"1", "4", "16"}
        assert {cid.split("/")[2] for cid in ids} == {"32", "64", "128"}
    assert split["m/1/32"] != split["m/1/64"] and split["m/1/32"] != split["m/4/32"]


def _slot(batch: int, new: int, held: int, vis: int, layer: int = 0) -> dict:
    ints = lambda x: " ".join([str(x)] * batch)  # noqa: E731
    return dict(
        config_id="c",
        model="tiny-seq",
        kind="sequential",
        phase="decode",
        batch=str(batch),
        tokens=str(held),
        dtype="fp32",
        scope="slot",
        layer=str(layer),
        kv_policy="none",
        new_tokens=ints(new),
        context_tokens=ints(held),
        visiting_tokens=ints(vis),
    )


def test_prediction_counts_every_slot_and_the_kv_cache():
    hw = load_hardware("epyc_2core")
    rows = [_slot(2, 1, 10, 1, layer) for layer in range(4)]
    pred = predict_config(hw, rows)
    assert len(pred["slots"]) == 4
    assert pred["time_s"] == pytest.approx(sum(pred["slots"]) + pred["embed_s"] + pred["head_s"])
    # 4 layers x 2 sequences x 11 entries x (2 x 2 KV heads x 16 x 4 bytes)
    assert pred["kv_cache_bytes"] == pytest.approx(4 * 2 * 11 * 256)


def _whole_loop(out: Path) -> dict:
    """measure -> calibrate (quick benchmarks) -> validate a tiny model; the overall error row."""
    assert (
        main(
            [
                "measure",
                "--models",
                "tiny-seq,tiny-radial",
                "--batch",
                "1,4",
                "--prompt",
                "16,48",
                "--context",
                "16,48",
                "--warmup",
                "2",
                "--repeats",
                "5",
                "--min-time",
                "0.05",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = out / "measurements.csv"
    rows = read_csv(table)
    configs = group_configs(rows)
    assert len(configs) == 16
    cal = out / "calibrated.toml"
    assert main(["calibrate", "--quick", "--measurements", str(table), "--out", str(cal)]) == 0
    hw = load_hardware(cal)
    assert hw.gemm_half_rows is not None and hw.sources["gemm_half_rows"].startswith("measured")
    assert hw.sources["kernel_launch_overhead_s"].startswith("fitted")
    recorded = json.loads(Path(str(cal).replace(".toml", "-benchmarks.json")).read_text())["split"]
    assert main(["validate", "--hw", str(cal), "--measurements", str(table), "--out", str(out)]) == 0
    result = error_table(hw, rows, recorded)
    held_out = [r for r in result if r["split"] == "validate"]
    assert len(held_out) == 8 and {r["config_id"] for r in held_out}.isdisjoint(
        cid for cid, s in recorded.items() if s == "calibrate"
    )
    assert (out / "validation.csv").exists() and (out / "predicted_vs_measured.html").exists()
    return next(r for r in summary(result) if r["phase"] == "all")


def test_whole_loop_on_a_tiny_model(tmp_path):
    """The whole loop, as CI runs it on every change (loose bounds: the committed campaign meets 10%)."""
    overall = _whole_loop(tmp_path / "first")
    if overall["time_ape_median"] >= 35.0:
        # sub-millisecond steps on a shared CI machine can be disturbed: an independent second
        # measurement and calibration decide (a wrong model fails both)
        overall = _whole_loop(tmp_path / "second")
    assert overall["time_ape_median"] < 35.0
    assert overall["memory_ape_median"] < 25.0


def test_a_calibration_that_read_no_step_timing_holds_every_configuration_out(tmp_path):
    from radsim.errors import ConfigError
    from radsim.measure.validate import load_split

    record = tmp_path / "calibrated-benchmarks.json"
    record.write_text(json.dumps({"split": "validate"}))
    assert load_split(record) == "validate"
    record.write_text(json.dumps({"split": "some"}))
    with pytest.raises(ConfigError, match="calibrated-benchmarks.json: 'split' must map"):
        load_split(record)
    step = dict(_slot(2, 1, 10, 1), scope="step", time_s="0.001", time_s_p10="0.0009", time_s_p90="0.0011")
    step.update(peak_memory_bytes="1000000", activation_bytes="1000")
    rows = [step, *(dict(_slot(2, 1, 10, 1, layer), time_s="0.0004") for layer in range(2))]
    table = error_table(load_hardware("epyc_2core"), rows, "validate")
    assert [r["split"] for r in table] == ["validate"] and summary(table)[0]["configs"] == 1
