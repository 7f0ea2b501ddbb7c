"""Routes of one measured step: synthetic depths through the one generator, traces through the route book."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radsim.routes.book import from_trace
from radsim.routes.replay import NO_SLOT, StepRoutes, fraction_slots, slot_batches, trace_slots
from radsim.routes.trace import read_trace

TRACE = Path(__file__).resolve().parents[2] / "traces" / "radial-scratch.parquet"


def test_exact_and_bernoulli_slots_come_from_the_synthetic_generator():
    exact = fraction_slots(2, 50, 8, 0.5, seed=1)
    assert exact.shape == (2, 50, 4) and (np.diff(exact, axis=-1) > 0).all()
    bern = fraction_slots(2, 50, 8, 0.5, seed=1, distribution="bernoulli")
    depth = (bern != NO_SLOT).sum(axis=-1)
    assert depth.min() >= 1 and depth.max() > depth.min()
    launches = slot_batches(StepRoutes("prefill", bern, 8, "none"))
    visits = sum(float(s.visiting_tokens.sum()) for s in launches)
    assert visits == depth.sum()


def test_trace_slots_are_the_route_book_of_the_trace():
    slots, layers, policy = trace_slots(str(TRACE), 2, 30, first_seq=1)
    book = from_trace(read_trace(TRACE), layers)
    start = book.seq_starts[1]
    np.testing.assert_array_equal(slots[0], book.step_slots[start : start + 30])
    assert policy == "none"
