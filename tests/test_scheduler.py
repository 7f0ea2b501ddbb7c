"""Scheduler internals: chunk visits from cumulative counts equal direct sums."""

from __future__ import annotations

import numpy as np

from radsim.routes import parametric
from radsim.scheduler import Scheduler, SchedulerConfig


def test_chunk_visits_equal_direct_sums():
    book = parametric(6, 0.5, reuse_prob=0.3, seed=2, sequences=5, seq_len=7)
    sched = Scheduler(SchedulerConfig(max_batch=4), book, 1e9, 1.0, "none")
    rng = np.random.default_rng(0)
    tokens = [book.assign(rng, n) for n in (9, 3, 15, 1)]  # runs of whole sequences, some partial
    chunks = [t[a:b] for t, (a, b) in zip(tokens, [(2, 9), (0, 3), (4, 15), (0, 1)], strict=True)]
    sizes = np.array([len(c) for c in chunks])
    got = sched._chunk_visits(np.concatenate(chunks), sizes)
    expected = np.stack([book.slots[c].sum(axis=0) for c in chunks])
    np.testing.assert_array_equal(got, expected)
