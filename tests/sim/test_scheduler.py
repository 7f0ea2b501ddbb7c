"""Scheduler internals: chunk visits from cumulative counts equal direct sums."""

from __future__ import annotations

import numpy as np

from radsim.routes.synthetic import parametric
from radsim.sim.scheduler import Scheduler, SchedulerConfig


def test_chunk_visits_equal_direct_sums():
    book = parametric(6, 0.5, reuse_prob=0.3, seed=2, sequences=5, seq_len=7)
    sched = Scheduler(SchedulerConfig(max_batch=4), book, 1e9, 1.0, "none")
    rng = np.random.default_rng(0)
    tokens = [book.assign(rng, n) for n in (9, 3, 15, 1)]  # runs of whole sequences, some partial
    chunks = [t[a:b] for t, (a, b) in zip(tokens, [(2, 9), (0, 3), (4, 15), (0, 1)], strict=True)]
    sizes = np.array([len(c) for c in chunks])
    got = sched._chunk_visits(np.concatenate(chunks), sizes)
    expected = np.stack([book.slots[c].sum(axis=0)[sched.columns] for c in chunks])
    np.testing.assert_array_equal(got, expected)


def test_columns_keep_visited_slots_and_the_first_pass_under_copy():
    book = parametric(6, 0.5, reuse_prob=0.3, seed=2, sequences=5, seq_len=7)
    book.slots[:, 6 + 4] = 0  # a second-pass slot nobody visits
    book.slots[:, 2] = 0  # a first-pass slot nobody visits
    none = Scheduler(SchedulerConfig(max_batch=4), book, 1e9, 1.0, "none")
    copy = Scheduler(SchedulerConfig(max_batch=4), book, 1e9, 1.0, "copy")
    assert 2 not in none.columns and 10 not in none.columns
    assert copy.columns[:6].tolist() == list(range(6)) and 10 not in copy.columns
    assert none.column_of[none.columns].tolist() == list(range(none.columns.size))
