"""Trace statistics: hand-counted depth, layer use, reuse and union coverage; the `trace stats` command."""

from __future__ import annotations

import argparse
import copy
import json
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radsim.cli.trace import add_trace_commands
from radsim.errors import ConfigError
from radsim.routes.stats import format_stats, trace_stats
from radsim.routes.trace import Trace, visits_from_routes, write_trace

META = {
    "schema_version": 1,
    "model": {"name": "toy", "kind": "radial", "num_layers": 5, "config": {}},
    "kv_policy": "none",
    "data": {"source": "synthetic", "tokens": 4},
    "seed": 0,
    "git_commit": "0123abc",
    "device": "cpu",
    "created_at": "2026-01-02T03:04:05+00:00",
}
# Four tokens over 5 layers, each visiting exactly 2 distinct layers (so B=1 coverage is 2/5 on any
# draw); layer 4 is never visited. (1,0) reuses layers 0 and 2 in a second pass; (1,1) starts a
# second pass at layer 2 without repeating a layer.
HAND = {(0, 0): [0, 1], (0, 1): [1, 3], (1, 0): [0, 2, 0, 2], (1, 1): [3, 2]}


def make_trace(routes: dict, num_layers: int = 5, prob_exit: float = 0.5) -> Trace:
    seq, pos = zip(*routes, strict=True)
    visits = visits_from_routes(list(routes.values()), seq, pos)
    visits["prob_exit"] = np.float32(prob_exit)
    meta = copy.deepcopy(META)
    meta["model"]["num_layers"] = num_layers
    return Trace(visits, meta)


def test_hand_counted_stats():
    s = trace_stats(make_trace(HAND), batch_sizes=(1, 2, 4, 8))
    assert (s["tokens"], s["sequences"], s["num_layers"], s["visits"]) == (4, 2, 5, 10)
    d = s["depth"]
    assert d["histogram"] == {2: 3, 4: 1}
    assert (d["mean"], d["min"], d["p10"], d["p50"], d["max"]) == (2.5, 2, 2.0, 2.0, 4)
    assert d["std"] == pytest.approx(0.75**0.5) and d["p90"] == pytest.approx(3.4)  # 2 + 0.7 x (4 - 2)
    assert s["depth_fraction_mean"] == 0.5
    assert s["layer_visit_frequency"] == [0.5, 0.5, 0.5, 0.5, 0.0]
    assert s["visits_per_layer"] == [0.75, 0.5, 0.75, 0.5, 0.0]
    assert (s["reuse_rate"], s["reused_visit_fraction"]) == (0.25, 0.2)
    assert s["passes"] == {"mean": 1.5, "max": 2}
    assert s["exit_prob_mean"] == 0.5


def test_hand_counted_union_coverage():
    cov = trace_stats(make_trace(HAND), batch_sizes=(1, 2, 4, 8), samples=3000)["union_coverage"]
    assert cov["batch_sizes"] == [1, 2, 4, 8]
    # B=1: every token covers 2 of 5 layers; B=4 is the whole trace: layers 0..3. B=8 > 4 tokens.
    assert cov["random_tokens"][1] == 0.4 and cov["random_tokens"][4] == 0.8 and 8 not in cov["random_tokens"]
    # B=2 over the 6 pairs: 3+3+4+4+3+3 = 20 layers -> 20 / 6 / 5.
    assert cov["random_tokens"][2] == pytest.approx(2 / 3, abs=0.02)
    # Position 0 holds (0,0)+(1,0) = layers {0,1,2}; position 1 holds {1,2,3}; only 2 sequences.
    assert cov["same_position"] == {1: 0.4, 2: 0.6}
    # p = (.5, .5, .5, .5, 0): mean over layers of 1 - (1 - p)^B
    expected = {b: 4 * (1 - 0.5**b) / 5 for b in (1, 2, 4, 8)}
    assert cov["independent_model"] == pytest.approx(expected)


def test_sequential_trace_covers_every_layer():
    routes = {(s, p): list(range(6)) for s in range(3) for p in range(4)}
    s = trace_stats(make_trace(routes, num_layers=6, prob_exit=0.0))
    assert s["depth"]["histogram"] == {6: 12} and s["depth_fraction_mean"] == 1.0
    assert s["reuse_rate"] == 0.0 and s["passes"] == {"mean": 1.0, "max": 1} and s["exit_prob_mean"] == 0.0
    cov = s["union_coverage"]
    assert set(cov["random_tokens"]) == {1, 2, 4, 8} and set(cov["same_position"]) == {1, 2}
    assert all(
        v == 1.0 for k in ("random_tokens", "same_position", "independent_model") for v in cov[k].values()
    )


def _random_trace(seed: int, tokens: int = 300, num_layers: int = 8) -> Trace:
    rng = np.random.default_rng(seed)
    routes = {(t // 20, t % 20): list(rng.integers(0, num_layers, rng.integers(1, 6))) for t in range(tokens)}
    return make_trace(routes, num_layers=num_layers)


def test_deterministic_for_a_seed():
    trace = _random_trace(1)
    assert trace_stats(trace, seed=3) == trace_stats(trace, seed=3)
    a, b = (trace_stats(trace, seed=s)["union_coverage"]["random_tokens"] for s in (3, 4))
    assert a != b


def _exact_random_tokens(mask: np.ndarray, b: int) -> float:
    """Expected covered fraction for b tokens drawn without replacement (hypergeometric)."""
    tokens, n = mask.shape[0], mask.sum(axis=0)
    return float(np.mean([1 - comb(tokens - k, b) / comb(tokens, b) for k in n]))


routes = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=8), min_size=1, max_size=40)


@settings(max_examples=30, deadline=None)
@given(routes=routes)
def test_random_tokens_coverage_is_monotone_and_matches_the_exact_expectation(routes):
    trace = make_trace({(i, 0): r for i, r in enumerate(routes)}, num_layers=6)
    cov = trace_stats(trace, batch_sizes=(1, 2, 3, 5, 8, 13, 40), samples=1000)["union_coverage"]
    values = list(cov["random_tokens"].values())
    assert values == sorted(values) and len(values) == sum(b <= len(routes) for b in (1, 2, 3, 5, 8, 13, 40))
    mask = np.zeros((len(routes), 6), dtype=bool)
    for i, r in enumerate(routes):
        mask[i, r] = True
    for b, value in cov["random_tokens"].items():
        assert value == pytest.approx(_exact_random_tokens(mask, b), abs=0.08)


def test_bad_arguments_are_rejected():
    with pytest.raises(ConfigError, match="batch_sizes"):
        trace_stats(make_trace(HAND), batch_sizes=(0, 2))
    with pytest.raises(ConfigError, match="samples"):
        trace_stats(make_trace(HAND), samples=0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radsim")
    add_trace_commands(parser.add_subparsers())
    return parser


def test_trace_stats_command(tmp_path, capsys):
    path = write_trace(_random_trace(2), tmp_path / "t.parquet")
    args = _parser().parse_args(["trace", "stats", str(path), "--json", "--seed", "5"])
    args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 300 and out["union_coverage"]["seed"] == 5
    args = _parser().parse_args(["trace", "stats", str(path)])
    args.func(args)
    text = capsys.readouterr().out
    assert text.startswith("tokens") and "union coverage" in text and "same position" in text
    assert format_stats(trace_stats(make_trace(HAND))).count("\n") > 10
    args = _parser().parse_args(["trace", "stats", str(tmp_path / "missing.parquet")])
    with pytest.raises(ConfigError, match=r"missing\.parquet: not a readable Parquet file"):
        args.func(args)


def test_route_diversity_is_hand_counted():
    # two sequences, three positions: (·,0) share the route 0->1, (·,1) differ, (·,2) share 0->1 again
    routes = {(0, 0): [0, 1], (1, 0): [0, 1], (0, 1): [0, 2, 2], (1, 1): [1], (0, 2): [0, 1], (1, 2): [0, 1]}
    r = trace_stats(make_trace(routes), batch_sizes=(1, 2))["routes"]
    assert r["distinct"] == 3
    shares = {t["route"]: t["share"] for t in r["top"]}
    assert shares == {"0 -> 1 -> exit": pytest.approx(4 / 6), "0 -> 2 -> 2 -> exit": pytest.approx(1 / 6),
                      "1 -> exit": pytest.approx(1 / 6)}  # fmt: skip
    p = np.array([4, 1, 1]) / 6
    assert r["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    # the only pairs at one position: (0,0)-(1,0) agree, (0,1)-(1,1) do not, (0,2)-(1,2) agree
    same = r["agreement_same_position"]
    assert same["same_route"] == pytest.approx(2 / 3, abs=0.02)
    assert same["layer_jaccard"] == pytest.approx((1 + 0 + 1) / 3, abs=0.02)


def test_route_text_names_runs_and_reuse():
    from radsim.routes.stats import route_text

    assert route_text(np.array([0, 5, 5, 7])) == "0 -> 5 -> 5 -> 7 -> exit"
    assert route_text(np.array([0, 1, 2, 3, 5, 6, 8])) == "0..3 -> 5 -> 6 -> 8 -> exit"
