"""The representative evaluation sample: every source in proportion, reproducible, never overlapping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from radsim.errors import ConfigError
from radsim.train.corpus import proportional_counts, representative_windows


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 10_000), min_size=1, max_size=6),
    st.integers(6, 500),
)
def test_proportional_counts_sum_to_the_total_and_stay_near_proportion(sizes, total):
    counts = proportional_counts(sizes, total)
    assert sum(counts.values()) == total and set(counts) == set(sizes)
    weight = sum(sizes.values())
    for key, n in counts.items():
        assert n >= 1
        assert abs(n - total * sizes[key] / weight) <= len(sizes) + 1


def test_too_few_windows_for_the_sources_is_an_error():
    with pytest.raises(ConfigError, match="cannot sample 1 windows from 2 sources"):
        proportional_counts({"a": 5, "b": 5}, 1)


def test_representative_windows_are_proportional_disjoint_and_seeded():
    arrays = {
        "big": np.arange(0, 60_000, dtype=np.int64),
        "small": np.arange(100_000, 120_000, dtype=np.int64),
    }
    windows, sources = representative_windows(arrays, 100, 8_000, seed=0)
    assert windows.shape == (80, 100)
    assert (sources == 0).sum() == 60 and (sources == 1).sum() == 20  # 3:1 by tokens
    starts = windows[:, 0]
    assert len(set(starts.tolist())) == 80 and (starts % 100 == starts[0] % 100).all()  # whole slots
    assert (windows[sources == 1] >= 100_000).all() and (windows[sources == 0] < 60_000).all()
    again, _ = representative_windows(arrays, 100, 8_000, seed=0)
    assert np.array_equal(windows, again)
    other, _ = representative_windows(arrays, 100, 8_000, seed=1)
    assert not np.array_equal(windows, other)


def test_a_source_shorter_than_a_window_is_named():
    with pytest.raises(ConfigError, match=r"\['tiny'\]"):
        representative_windows({"tiny": np.arange(10), "ok": np.arange(1000)}, 100, 500, seed=0)
