"""A study point's row: the roofline data's fast path gives the plain cost model's row, and the JSON
columns keep every value as the plain formatting does."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from radsim.cost.iteration import iteration_cost
from radsim.cost.table import LaunchPrices
from radsim.study import point
from radsim.study.load import make_point

ROOT = Path(__file__).resolve().parents[2]
CALIBRATED_CPU = str(ROOT / "measurements" / "epyc-genoa-vm" / "calibrated.toml")


def _plain_iteration_layers(self, new_tokens, context, visits):
    """Every layer priced by the cost model, as the study priced them before the fast path."""
    return iteration_cost(self.hw, self.arch, self.exe, new_tokens, context, visits, 1).layers


def _grid() -> list[dict]:
    """Estimate points over devices (tables, none, a calibrated CPU), architectures, KV policies, TP,
    depths, batches, outputs (one: no decode step) and prefill chunks; a static-batch simulation."""
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
    simulate = dict(command="simulate", hw="h100_sxm", arch="smollm2-135m", arrival="batch", batch=4)
    points.append(make_point({**simulate, "prompt_tokens": 24, "output_tokens": 6}))
    return points


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_the_fast_roofline_gives_the_rows_of_the_plain_cost_model(monkeypatch):
    """Every column of every row, the roofline's JSON included, exactly as when the cost model
    priced every layer of the roofline's two iterations (`iteration_cost`)."""
    points = _grid()
    fast = [point.evaluate(p) for p in points]
    monkeypatch.setattr(LaunchPrices, "iteration_layers", _plain_iteration_layers)
    plain = [point.evaluate(p) for p in points]
    assert all(row["error"] == "" for row in fast), [row["error"] for row in fast if row["error"]][:3]
    for f, p in zip(fast, plain, strict=True):
        assert list(f) == list(p)
        different = [k for k in f if not _same(f[k], p[k])]
        assert not different, (f["point_id"], different)
    unrouted = [json.loads(row["roofline_json"]) for row in fast if row["depth_fraction"] == 1.0]
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
