"""Route books: from traces (with layer-count mapping) and from the parametric generator."""

from __future__ import annotations

import numpy as np
import pytest

from radsim.errors import ConfigError
from radsim.routes.book import from_trace, map_layers
from radsim.routes.synthetic import parametric, sequential
from radsim.routes.trace import KV_COMPUTE, Trace, visits_from_routes

META = {
    "schema_version": 1,
    "model": {"name": "t", "kind": "radial", "num_layers": 4, "config": {}},
    "kv_policy": "none",
    "data": {"source": "test", "tokens": 3},
    "seed": 0,
    "git_commit": "x",
    "device": "cpu",
    "created_at": "2026-11-24T00:00:00+00:00",
}


def _trace(routes, seq, pos) -> Trace:
    return Trace(visits_from_routes(routes, seq, pos), META)


def test_book_from_trace_keeps_routes_passes_and_sequences():
    book = from_trace(_trace([[0, 2, 3], [0, 1, 1], [0, 3]], [0, 0, 1], [0, 1, 0]), 4)
    assert book.passes == 2  # the second token revisits layer 1 in a second pass
    np.testing.assert_array_equal(book.slots[0, :4], [1, 0, 1, 1])
    np.testing.assert_array_equal(book.slots[1], [1, 1, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(book.steps[1, :3], [0, 1, 1])
    np.testing.assert_array_equal(book.step_slots[1, :3], [0, 1, 5])
    np.testing.assert_array_equal(book.seq_starts, [0, 2])
    assert book.depth.tolist() == [3, 3, 2]


def test_layer_mapping_rule():
    token = np.array([0, 0, 1])
    # 4 -> 8 layers: each trace layer covers two target layers
    t, layer = map_layers(token, np.array([0, 3, 1]), 4, 8)
    assert t.tolist() == [0, 0, 0, 0, 1, 1] and layer.tolist() == [0, 1, 6, 7, 2, 3]
    # 4 -> 2 layers: layers 0,1 -> 0 and 2,3 -> 1; consecutive duplicates merge
    t, layer = map_layers(np.array([0, 0, 0]), np.array([0, 1, 3]), 4, 2)
    assert t.tolist() == [0, 0] and layer.tolist() == [0, 1]
    same = map_layers(token, np.array([0, 3, 1]), 4, 4)
    assert same[1].tolist() == [0, 3, 1]


def test_assign_draws_whole_sequences_deterministically():
    book = parametric(8, 0.5, seed=3, sequences=5, seq_len=10)
    a = book.assign(np.random.default_rng(1), 25)
    assert len(a) == 25 and (np.diff(a[:10]) == 1).all() and a[0] % 10 == 0
    np.testing.assert_array_equal(a, book.assign(np.random.default_rng(1), 25))


def test_parametric_depth_and_reuse():
    book = parametric(32, 0.25, reuse_prob=0.5, seed=0, sequences=8, seq_len=256)
    assert book.mean_depth_fraction == pytest.approx(0.25 + 0.5 / 32, abs=0.01)
    assert book.passes == 2
    assert (book.depth >= 1).all()
    seq = sequential(6)
    assert (seq.slots == 1).all() and seq.steps[0].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="depth_fraction"):
        parametric(8, 0.0)


def test_prefix_visits_equal_direct_sums():
    book = parametric(6, 0.5, reuse_prob=0.3, seed=2, sequences=5, seq_len=7)
    lengths, prefixes = np.array([9, 3, 15, 1, 7, 14]), np.array([5, 3, 0, 1, 7, 9])
    tokens, offsets, visits = book.assign_with_prefixes(np.random.default_rng(0), lengths, prefixes)
    same, _ = book.assign_many(np.random.default_rng(0), lengths)
    np.testing.assert_array_equal(tokens, same)  # the prefixes do not change the draw
    for i, (a, p) in enumerate(zip(offsets, prefixes, strict=True)):
        np.testing.assert_array_equal(visits[i], book.slots[tokens[a : a + p]].sum(axis=0))


def test_attention_only_rows_are_not_visits():
    # three tokens of one sequence over 4 layers; 1 = MLP skipped (attention only, as DLO records)
    routes = [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    visits = visits_from_routes(routes, [0, 0, 0], [0, 1, 2])
    skipped = np.array([0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    visits.loc[skipped, "kv_action"] = KV_COMPUTE
    book = from_trace(Trace(visits, {**META, "kv_policy": "compute"}), 4)
    assert book.slots.tolist() == [[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert book.depth.tolist() == [3, 4, 0]  # the third token ran no MLP and keeps its position
    assert book.steps[2].tolist() == [-1] * book.steps.shape[1]
