"""A study point's row: the roofline column's fast path gives the plain cost model's numbers, and
the JSON columns keep every value as the plain formatting does."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from radsim.cost.iteration import iteration_cost
from radsim.routes.synthetic import depth_visits
from radsim.scenario import run
from radsim.scenario.schema import SCENARIO_FIELDS, scenario_from
from radsim.study import point
from radsim.study.load import make_point

ROOT = Path(__file__).resolve().parents[2]
CALIBRATED_CPU = str(ROOT / "measurements" / "epyc-genoa-vm" / "calibrated.toml")


def _plain_roofline(point_inputs: dict) -> str:
    """The roofline column as the study wrote it before its fast path: every token's visits drawn
    (`depth_visits`), every layer of both iterations priced by the cost model (`iteration_cost`)."""
    s = scenario_from({k: v for k, v in point_inputs.items() if k in SCENARIO_FIELDS})
    hw, arch = run.hardware(s), run.architecture(s)
    exe, layers = run.estimate_execution(s, arch), arch.num_layers
    rng = np.random.default_rng(s.seed)

    def visits(n: int) -> np.ndarray:
        return depth_visits(rng, n, layers, run.depth_fraction(s, arch), s.depth_distribution)

    batch, prompt = s.sequences_per_batch, s.prompt_tokens
    seqs = max(1, min(batch, (s.prefill_chunk or batch * prompt) // prompt))
    prefill_visits = visits(seqs * prompt).reshape(seqs, prompt, layers).sum(axis=1).T.astype(np.float64)
    new = np.full(seqs, float(prompt))
    prefill = iteration_cost(hw, arch, exe, new, np.zeros((layers, seqs)), prefill_visits, seqs)
    decode_visits = visits(batch).T.astype(np.float64)
    share = np.minimum(1.0, visits(256).mean(axis=0)) if exe.kv_policy == "none" else np.ones(layers)
    context = np.broadcast_to((prompt + s.output_tokens // 2) * share[:, None], (layers, batch))
    decode = iteration_cost(hw, arch, exe, np.ones(batch), context, decode_visits, batch)
    return point._json(
        {"prefill": point._per_layer([prefill.layers]), "decode": point._per_layer([decode.layers])}
    )


def _grid() -> list[dict]:
    """Estimate points over devices (tables, none, a calibrated CPU), architectures, KV policies, TP,
    depths, batches, outputs (one: no decode step) and prefill chunks."""
    points = []
    devices = [("h100_sxm", "bf16"), ("mi300x", "fp8"), ("l40s", "fp16"), (CALIBRATED_CPU, "fp32")]
    archs = [
        ("smollm2-135m", 1),
        ("smollm2-135m", 3),
        ("llama3.1-8b-finedeep", 1),
        ("llama3.1-8b-finedeep", 2),
    ]
    for (hw, dtype), (arch, tp), policy, depth, batch, output in itertools.product(
        devices, archs, ["", "copy", "compute"], [1.0, 0.5], [1, 7], [1, 9]
    ):
        if hw == CALIBRATED_CPU and (arch, tp) != ("smollm2-135m", 1):
            continue
        values = dict(command="estimate", hw=hw, arch=arch, dtype=dtype, kv_policy=policy, tp=tp)
        values.update(depth_fraction=depth, batch=batch, prompt_tokens=24, output_tokens=output)
        points.append(make_point({**values, "prefill_chunk": 64 if batch > 1 else 0}))
    return points


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_the_roofline_column_is_the_plain_cost_models():
    """The roofline's JSON of every estimate point, exactly as when every token was drawn and the
    cost model priced every layer (the values are rounded: `test_table` compares them unrounded)."""
    rows = [point.evaluate(p) for p in _grid()]
    assert all(row["error"] == "" for row in rows), [row["error"] for row in rows if row["error"]][:3]
    for row in rows:
        assert row["roofline_json"] == _plain_roofline(row), row["point_id"]
    unrouted = [json.loads(row["roofline_json"]) for row in rows if row["depth_fraction"] == 1.0]
    assert all(len(r["decode"]["layer"]) > 1 for r in unrouted)  # the fast path's case is covered


def test_rounding_keeps_zeros_signs_and_non_finite_values():
    values = np.array([0.0, -0.0, 1.23456789, 1.23456789, np.nan, np.inf, -2.5e-7, 1.23456789])
    expected = [float(f"{v:.6g}") for v in values]
    got = point._round(values)
    assert [math.copysign(1.0, v) for v in got] == [math.copysign(1.0, v) for v in expected]
    assert all(_same(g, e) for g, e in zip(got, expected, strict=True))
    assert point._json({"x": values}) == '{"x":[0.0,-0.0,1.23457,1.23457,null,null,-2.5e-07,1.23457]}'


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1.0, 2.5], "b": "text", "c": None, "d": (1, 2)},
        {"a": [1.0, float("nan")], "b": {"c": float("inf")}},
        {"a": np.float64(0.5), "b": np.int64(3), "c": [np.float32(1.5), np.bool_(True)]},
    ],
)
def test_json_text_equals_its_finite_form(value):
    from radsim.files import finite, json_text

    assert json_text(value, separators=(",", ":")) == json.dumps(
        finite(value), allow_nan=False, separators=(",", ":")
    )


def test_a_simulated_point_of_a_trace_with_a_second_pass():
    """A route that visits a layer twice launches it once per pass: the roofline sums a layer's
    passes (it used to price both visits as one launch, which a routed batch refuses)."""
    values = dict(command="simulate", hw="h100_sxm", arch="llama3.1-8b", arrival="batch", batch=4)
    values.update(prompt_tokens=32, output_tokens=8, trace="traces/radial-scratch-16.parquet")
    row = point.evaluate(make_point(values))
    assert row["error"] == ""
    roofline = json.loads(row["roofline_json"])
    assert roofline["decode"]["layer"] and all(t > 0 for t in roofline["decode"]["time_s"])
    single = point.evaluate(make_point({**values, "trace": "traces/radial-scratch.parquet"}))
    assert single["error"] == ""
