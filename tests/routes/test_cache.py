"""The compact route-book cache: the same book as reading the trace, keyed by content, never an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from radsim.errors import ConfigError
from radsim.routes import cache
from radsim.routes.book import load_routes

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "traces" / "radial-scratch-p05.parquet"


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RADSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RADSIM_NO_CACHE", raising=False)
    return tmp_path / "cache" / "routes"


def _same(a, b) -> None:
    for k in ("slots", "steps", "step_slots", "seq_starts"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert (a.num_layers, a.source) == (b.num_layers, b.source)


SHIPPED = sorted((ROOT / "traces").glob("*.parquet"))


@pytest.mark.parametrize("layers", [8, 32])
def test_a_cached_book_is_the_book_read_from_the_trace(cache_home, layers):
    direct = load_routes(str(TRACE), layers)
    first, meta = cache.cached_routes(str(TRACE), layers)
    assert len(list(cache_home.iterdir())) == 1
    again, meta_again = cache.cached_routes(str(TRACE), layers)
    _same(direct, first)
    _same(direct, again)
    assert meta == meta_again and meta["model"]["num_layers"] == 8


@pytest.mark.parametrize("trace", SHIPPED, ids=[t.stem for t in SHIPPED])
def test_every_shipped_trace_comes_back_from_the_cache_as_read(cache_home, trace):
    from radsim.routes.trace import read_trace

    cache.cached_routes(str(trace), 32)
    book, meta = cache.cached_routes(str(trace), 32)  # from the cache
    _same(load_routes(str(trace), 32), book)
    assert meta == read_trace(trace).meta


def test_the_cache_is_keyed_by_content_and_layer_count(cache_home, tmp_path):
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(TRACE.read_bytes())
    cache.cached_routes(str(TRACE), 32)
    cache.cached_routes(str(copy), 32)  # the same bytes: the same entry, under the copy's name
    assert len(list(cache_home.iterdir())) == 1
    assert cache.cached_routes(str(copy), 32)[0].source == str(copy)
    cache.cached_routes(str(TRACE), 16)
    other = ROOT / "traces" / "radial-scratch.parquet"
    cache.cached_routes(str(other), 32)
    assert len(list(cache_home.iterdir())) == 3


def test_a_damaged_entry_or_an_unwritable_cache_only_costs_a_read(cache_home, tmp_path, monkeypatch):
    direct = load_routes(str(TRACE), 32)
    cache.cached_routes(str(TRACE), 32)
    (entry,) = cache_home.iterdir()
    entry.write_bytes(b"not an npz")
    _same(direct, cache.cached_routes(str(TRACE), 32)[0])
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("RADSIM_CACHE", str(blocked))
    _same(direct, cache.cached_routes(str(TRACE), 32)[0])


def test_no_cache_writes_nothing(cache_home, monkeypatch):
    monkeypatch.setenv("RADSIM_NO_CACHE", "1")
    cache.cached_routes(str(TRACE), 32)
    assert not cache_home.exists()


def test_a_bad_trace_is_named_with_or_without_a_cache(cache_home, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    for path in (bad, tmp_path / "missing.parquet"):
        with pytest.raises(ConfigError, match=path.name):
            cache.cached_routes(str(path), 32)
    assert not cache_home.exists() or not list(cache_home.iterdir())


def test_a_cached_trace_loads_without_pandas_or_pyarrow(cache_home):
    code = (
        "import sys; from radsim.routes.cache import cached_routes; "
        f"book, meta = cached_routes({str(TRACE)!r}, 32); "
        "print(book.slots.shape[0], 'pandas' in sys.modules, 'pyarrow' in sys.modules)"
    )
    env = os.environ | {"RADSIM_CACHE": str(cache_home.parent)}
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    tokens = load_routes(str(TRACE), 32).slots.shape[0]
    assert runs[0].stdout.split() == [str(tokens), "True", "True"]  # read once
    assert runs[1].stdout.split() == [str(tokens), "False", "False"]  # then from the cache
