"""Capture and profile on tiny random models: traces validate, round-trip and agree with the model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from radsim.models.early_exit import EarlyExit, EarlyExitConfig  # noqa: E402
from radsim.models.llama import Llama, LlamaConfig  # noqa: E402
from radsim.models.mod import MoD, MoDConfig  # noqa: E402
from radsim.models.radial import Radial, RadialConfig  # noqa: E402
from radsim.routes.stats import trace_stats  # noqa: E402
from radsim.routes.trace import read_trace, write_trace  # noqa: E402
from radsim.train.capture import capture, model_meta, round_floats, run_meta  # noqa: E402
from radsim.train.profile import contributions, medians  # noqa: E402

TINY = LlamaConfig(
    vocab_size=50, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=48, max_positions=32
)
WINDOWS = np.random.default_rng(0).integers(0, 50, size=(6, 16)).astype(np.int64)


def _models():
    torch.manual_seed(0)
    radial = Radial(RadialConfig(base=TINY, max_steps=6, max_passes=2)).eval()
    torch.nn.init.normal_(radial.router.proj.weight, std=1.0)
    return {
        "sequential": Llama(TINY).eval(),
        "radial": radial,
        "mod": MoD(MoDConfig(base=TINY, capacity=0.5)).eval(),
    }


@pytest.mark.parametrize("kind", ["sequential", "radial", "mod"])
def test_capture_round_trips_and_matches_the_model(tmp_path, kind):
    model = _models()[kind]
    meta = run_meta(model_meta(f"tiny-{kind}", kind, model, {}), "none", "test", int(WINDOWS.size), 0, "tiny")
    trace = capture(model, WINDOWS, batch=4, meta=meta)
    path = write_trace(trace, tmp_path / "t.parquet")
    back = read_trace(path)
    assert back.tokens == WINDOWS.size and back.meta["model"]["kind"] == kind
    assert set(back.visits["batch"]) == {0, 1}  # 6 sequences in batches of 4
    depth = back.visits.groupby(["seq", "pos"]).size()
    if kind == "sequential":
        assert (depth == TINY.num_layers).all()
        assert (back.visits["layer"].to_numpy() == back.visits["step"].to_numpy()).all()
    if kind == "radial":
        with torch.no_grad():
            expected = model(torch.from_numpy(WINDOWS)).depth.flatten().numpy()
        np.testing.assert_array_equal(depth.to_numpy(), expected)
    if kind == "mod":
        assert (depth >= TINY.num_layers // 2).all()  # dense blocks are always visited
    assert back.meta["quality"]["mean_depth"] == pytest.approx(depth.mean())
    assert trace_stats(back, batch_sizes=(1, 4), samples=10)["tokens"] == WINDOWS.size


@pytest.mark.parametrize("threshold", [0.05, 0.2, 1.0])
def test_early_exit_capture_matches_the_model_and_visits_layers_in_order(tmp_path, threshold):
    torch.manual_seed(0)
    model = EarlyExit(Llama(TINY).eval(), EarlyExitConfig(threshold=threshold, min_layer=1))
    meta = run_meta(
        model_meta("tiny-ee", "early_exit", model, {}), "copy", "test", int(WINDOWS.size), 0, "tiny"
    )
    assert meta["model"]["num_layers"] == TINY.num_layers
    assert meta["model"]["config"]["early_exit"]["threshold"] == threshold
    back = read_trace(write_trace(capture(model, WINDOWS, batch=4, meta=meta), tmp_path / "ee.parquet"))
    with torch.no_grad():
        out = model(torch.from_numpy(WINDOWS))
    depth = back.visits.groupby(["seq", "pos"]).size()
    np.testing.assert_array_equal(depth.to_numpy(), out.depth.flatten().numpy())
    assert (back.visits["layer"].to_numpy() == back.visits["step"].to_numpy()).all()  # a prefix of layers
    assert (depth >= 2).all()  # min_layer 1: nobody leaves before layer 1 has run
    if threshold == 1.0:
        assert (depth == TINY.num_layers).all()
    exits = back.visits[back.visits["step"] == back.visits["depth"] - 1]
    early = exits[exits["depth"] < TINY.num_layers]
    assert (early["prob_exit"] >= threshold * (1 - 2**-7)).all()  # left because confident enough


def test_round_floats_keeps_three_digits():
    import pandas as pd

    from radsim.routes.trace import COLUMNS

    values = np.array([0.123456, 1.0, 0.0, np.nan, 37.5], dtype=np.float32)
    frame = pd.DataFrame({c: np.zeros(5, dtype=t) for c, t in COLUMNS.items()})
    frame["attn_ratio"] = values
    out = round_floats(frame)["attn_ratio"].to_numpy()
    np.testing.assert_allclose(out[[0, 1, 2, 4]], values[[0, 1, 2, 4]], rtol=2**-8)
    assert out[1] == 1.0 and out[2] == 0.0 and np.isnan(out[3])


def test_profile_ratios_are_consistent():
    model = _models()["sequential"]
    rows = contributions(model, WINDOWS, batch=4)
    assert len(rows) == WINDOWS.size * TINY.num_layers
    assert (rows["attn_ratio_out"] <= rows["attn_ratio"] * 10).all()
    table = medians(rows)
    assert list(table["layer"]) == list(range(TINY.num_layers))
    # the whole-layer delta is what attention and MLP add together
    with torch.no_grad():
        hs = model.hidden_states(torch.from_numpy(WINDOWS))
    first = (hs[1] - hs[0]).norm(dim=-1) / hs[0].norm(dim=-1)
    np.testing.assert_allclose(
        np.median(rows.loc[rows.layer == 0, "layer_ratio"]), np.median(first.numpy()), rtol=1e-4
    )


def test_a_teacher_gives_agreement_and_kl_in_the_quality():
    models = _models()
    model, other = models["radial"], models["sequential"]
    meta = run_meta(
        model_meta("tiny-radial", "radial", model, {}), "none", "test", int(WINDOWS.size), 0, "tiny"
    )
    itself = capture(model.model, WINDOWS, batch=4, meta=meta, teacher=model.model).meta["quality"]
    assert itself["teacher_top1_agreement"] == 1.0 and abs(itself["teacher_kl_nats"]) < 1e-6
    routed = capture(model, WINDOWS, batch=4, meta=meta, teacher=other).meta["quality"]
    assert 0.0 <= routed["teacher_top1_agreement"] < 1.0 and routed["teacher_kl_nats"] > 0.0
    assert "teacher_top1_agreement" not in capture(model, WINDOWS, batch=4, meta=meta).meta["quality"]


def test_the_card_gives_the_teacher_agreement(tmp_path):
    from radsim.cli.models import write_card

    model = _models()["sequential"]
    meta = run_meta(model_meta("tiny", "sequential", model, {}), "none", "test", int(WINDOWS.size), 0, "tiny")
    trace = capture(model, WINDOWS, batch=4, meta=meta, teacher=model)
    path = write_trace(trace, tmp_path / "t.parquet")
    card = write_card(trace, path, "radsim capture ...").read_text()
    assert "top-1 next token agrees on 100.0%" in card
