"""Route books read once: a trace's routes, mapped onto an architecture, kept in a compact cache.

Reading a Parquet trace costs pandas and pyarrow imports, validation and the layer mapping (about a
second at start-up). The book that comes out depends only on the file's bytes and the target layer
count, so it is saved as one `.npz` (its arrays and the trace's meta) under `cache_dir()/routes/`,
named by a BLAKE2 digest of the file, the layer count and `FORMAT`; a later run with the same trace
loads that instead and imports neither pandas nor pyarrow. A changed file has another digest, so a
stale entry is never used; an unreadable or unwritable cache is skipped (the trace is read as if
there were none), never an error. `RADSIM_CACHE` moves the cache, `RADSIM_NO_CACHE=1` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from radsim.files import atomic_write, cache_dir
from radsim.routes.book import RouteBook

#: Bump when RouteBook's arrays or the mapping change meaning: older entries are then ignored.
FORMAT = 1
_ARRAYS = ("slots", "steps", "step_slots", "seq_starts")


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b digest (20 bytes, hex) of a file's bytes."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        for chunk in iter(functools.partial(handle.read, 1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_routes(path: str, num_layers: int) -> tuple[RouteBook, dict[str, Any]]:
    """The trace's route book on `num_layers` layers and its meta, from the cache where it holds them
    (else read, validated, mapped and then cached). Raises ConfigError for a bad trace file."""
    if os.environ.get("RADSIM_NO_CACHE") == "1":
        return _read(path, num_layers)
    try:
        entry = cache_dir() / "routes" / f"{file_digest(path)}-L{num_layers}-f{FORMAT}.npz"
    except OSError:
        return _read(path, num_layers)  # read_trace names the unreadable file
    loaded = _load(entry, path, num_layers)
    if loaded is not None:
        return loaded
    book, meta = _read(path, num_layers)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, functools.partial(_save, book=book, meta=meta))
    except OSError:
        pass  # a read-only or full cache: the routes were read anyway
    return book, meta


def _read(path: str, num_layers: int) -> tuple[RouteBook, dict[str, Any]]:
    from radsim.routes.book import from_trace
    from radsim.routes.trace import read_trace

    trace = read_trace(path)
    return from_trace(trace, num_layers, source=path), trace.meta


def _save(target: Path, book: RouteBook, meta: dict[str, Any]) -> None:
    buffer = io.BytesIO()  # np.savez would append .npz to the temporary's name
    np.savez(buffer, meta=np.array(json.dumps(meta)), **{k: getattr(book, k) for k in _ARRAYS})
    target.write_bytes(buffer.getvalue())


def _load(entry: Path, path: str, num_layers: int) -> tuple[RouteBook, dict[str, Any]] | None:
    try:
        with np.load(entry, allow_pickle=False) as data:
            arrays = {k: data[k] for k in _ARRAYS}
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError):
        return None  # absent or damaged: read the trace again
    return RouteBook(**arrays, num_layers=num_layers, source=path), meta
