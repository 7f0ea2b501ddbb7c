"""Routing traces: which layers each token visited, as one Parquet file per captured run.

A trace has one row per (token, routing step), that is one layer visit, sorted by (seq, pos, step):

| column           | dtype   | meaning                                                                  |
|------------------|---------|--------------------------------------------------------------------------|
| `seq`            | int32   | sequence id within the trace (>= 0)                                      |
| `batch`          | int32   | id of the capture batch the sequence ran in (same on all rows of a seq)  |
| `pos`            | int32   | position of the token in its sequence (>= 0)                             |
| `token`          | int32   | token id (>= 0, same on all rows of a token)                             |
| `step`           | int16   | 0-based routing step of this visit: a token's steps are 0..depth-1       |
| `layer`          | int16   | layer visited, 0..num_layers-1                                           |
| `pass`           | int16   | 0 on the first pass; a visit to a layer <= the previous one adds 1       |
| `depth`          | int16   | visits of this token (its row count; same on all its rows)               |
| `prob`           | float32 | router probability of choosing this layer; 1.0 where no router decided  |
| `prob_exit`      | float32 | router probability of exiting after this visit; 0 where no router       |
| `entropy`        | float32 | router entropy after this visit in nats (>= 0); 0 where no router       |
| `attn_ratio`     | float32 | ||f_attn(x)|| / ||x||  (>= 0; NaN where attention did not run)           |
| `attn_ratio_out` | float32 | ||f_attn(x)|| / ||x + f_attn(x)||  (>= 0 or NaN)                         |
| `mlp_ratio`      | float32 | the same for the MLP sub-block (>= 0; NaN where the MLP did not run)     |
| `mlp_ratio_out`  | float32 | the same for the MLP sub-block (>= 0 or NaN)                             |
| `kv_action`      | int8    | KV_WRITE (0), KV_COPY (1) or KV_COMPUTE (2), see below                   |

`kv_action` says how the visited layer's K/V entry for this token came about: KV_WRITE, computed
and written by the token as a visitor; KV_COPY, copied (projected) from the hidden state of a token
that skipped the layer; KV_COMPUTE, attention computed for a token that skipped only the MLP. Every
row, whatever its kv_action, counts as a visit in `depth`, `step` and `pass`. No column is float16.

Run metadata is JSON under the Parquet schema metadata key b"radsim.trace": `schema_version` (1),
`model` {`name`, `kind` (see MODEL_KINDS), `num_layers` >= 1, `config` {...}, more allowed},
`kv_policy` ("none", "copy", "compute"), `data` {`source`, `tokens`, more allowed}, `seed`,
`git_commit`, `device`, `created_at` (ISO 8601), and optionally `quality` {...} and `notes`.
Files are zstd-compressed and written atomically; `read_trace` validates everything it loads.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from radsim.errors import ConfigError
from radsim.spec.kv import KV_POLICIES

SCHEMA_VERSION = 1
METADATA_KEY = b"radsim.trace"
KV_WRITE, KV_COPY, KV_COMPUTE = 0, 1, 2
KV_ACTIONS = {KV_WRITE: "write", KV_COPY: "copy", KV_COMPUTE: "compute"}
MODEL_KINDS = ("sequential", "radial", "mod", "early_exit", "dlo", "finedeep")

COLUMNS: dict[str, np.dtype] = {
    name: np.dtype(dtype)
    for name, dtype in [
        *[(c, "int32") for c in ("seq", "batch", "pos", "token")],
        *[(c, "int16") for c in ("step", "layer", "pass", "depth")],
        *[(c, "float32") for c in ("prob", "prob_exit", "entropy")],
        *[(c, "float32") for c in ("attn_ratio", "attn_ratio_out", "mlp_ratio", "mlp_ratio_out")],
        ("kv_action", "int8"),
    ]
}
_IDS = ("seq", "batch", "pos", "token")
RATIO_COLUMNS = ("attn_ratio", "attn_ratio_out", "mlp_ratio", "mlp_ratio_out")
# Small-cardinality integers compress best as dictionary + run-length indices, floats as split bytes
# (on a synthetic trace: 25% smaller than pyarrow's default, dictionary everywhere; 5% than plain).
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["seq", "batch", "pos", "step", "layer", "pass", "depth", "kv_action"],
    "use_byte_stream_split": [c for c, t in COLUMNS.items() if t.kind == "f"],
}


@dataclass(frozen=True, eq=False)
class Trace:
    """A routing trace: one row per layer visit (see the module docstring) and the run metadata."""

    visits: pd.DataFrame
    meta: dict[str, Any]

    @property
    def num_layers(self) -> int:
        """Layers in the model's stack."""
        return int(self.meta["model"]["num_layers"])

    @property
    def tokens(self) -> int:
        """Distinct (seq, pos) tokens."""
        return int(np.unique(_token_keys(self.visits)).size)

    @property
    def sequences(self) -> int:
        """Distinct sequences."""
        return int(self.visits["seq"].nunique())


# ---- metadata ---------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_iso(v: Any) -> bool:
    try:
        return isinstance(v, str) and bool(datetime.fromisoformat(v))
    except ValueError:
        return False


_Spec = dict[str, tuple[Callable[[Any], bool], str]]
_META: _Spec = {
    "schema_version": (lambda v: _is_int(v) and v == SCHEMA_VERSION, str(SCHEMA_VERSION)),
    "model": (lambda v: isinstance(v, dict), "an object with name, kind, num_layers, config"),
    "kv_policy": (lambda v: v in KV_POLICIES, ", ".join(KV_POLICIES)),
    "data": (lambda v: isinstance(v, dict), "an object with source, tokens"),
    "seed": (_is_int, "an int"),
    "git_commit": (lambda v: isinstance(v, str), "a string"),
    "device": (lambda v: isinstance(v, str), "a string"),
    "created_at": (_is_iso, "an ISO 8601 date-time string"),
}
_META_OPTIONAL: _Spec = {
    "quality": (lambda v: isinstance(v, dict), "an object (e.g. perplexity)"),
    "notes": (lambda v: isinstance(v, str), "a string"),
    "software": (lambda v: isinstance(v, dict), "an object of package versions"),
}
_MODEL: _Spec = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "kind": (lambda v: v in MODEL_KINDS, ", ".join(MODEL_KINDS)),
    "num_layers": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "config": (lambda v: isinstance(v, dict), "an object"),
}
_DATA: _Spec = {
    "source": (lambda v: isinstance(v, str), "a string"),
    "tokens": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}


def _check_keys(d: Mapping[str, Any], spec: _Spec, prefix: str, source: str, required: bool) -> None:
    for key, (ok, allowed) in spec.items():
        if key not in d:
            if required:
                raise ConfigError(f"{source}: metadata key '{prefix}{key}' is missing; allowed: {allowed}")
        elif not ok(d[key]):
            raise ConfigError(f"{source}: metadata key '{prefix}{key}' is {d[key]!r}; allowed: {allowed}")


def validate_meta(meta: Any, source: str = "<memory>") -> None:
    """Raise ConfigError unless `meta` is complete, plain-JSON trace metadata."""
    if not isinstance(meta, dict):
        raise ConfigError(f"{source}: trace metadata must be a JSON object, got {type(meta).__name__}")
    _check_keys(meta, {"schema_version": _META["schema_version"]}, "", source, True)
    _check_keys(meta, _META, "", source, True)
    _check_keys(meta, _META_OPTIONAL, "", source, False)
    _check_keys(meta["model"], _MODEL, "model.", source, True)
    _check_keys(meta["data"], _DATA, "data.", source, True)
    unknown = sorted(set(meta) - set(_META) - set(_META_OPTIONAL))
    if unknown:
        allowed = ", ".join([*_META, *_META_OPTIONAL])
        raise ConfigError(f"{source}: unknown metadata key(s) {', '.join(unknown)}; allowed: {allowed}")
    try:
        plain = json.loads(json.dumps(meta, allow_nan=False)) == meta
    except (TypeError, ValueError):
        plain = False
    if not plain:
        msg = "str keys, lists not tuples, Python not numpy numbers, no NaN or infinity"
        raise ConfigError(f"{source}: trace metadata must be plain JSON ({msg})")


# ---- visits -----------------------------------------------------------------------------------


def _token_keys(visits: pd.DataFrame) -> np.ndarray:
    """One int64 key per row, unique per (seq, pos) and ordered like it."""
    seq = visits["seq"].to_numpy().astype(np.int64)
    pos = visits["pos"].to_numpy().astype(np.int64) - np.iinfo(np.int32).min
    return (seq << 32) | pos


def _is_sorted(visits: pd.DataFrame) -> bool:
    key, step = _token_keys(visits), visits["step"].to_numpy()
    dk = np.diff(key)
    return bool(np.all((dk > 0) | ((dk == 0) & (np.diff(step) >= 0))))


def sort_visits(visits: pd.DataFrame) -> pd.DataFrame:
    """The visits sorted by (seq, pos, step); the same frame if already sorted, else a copy."""
    if _is_sorted(visits):
        return visits
    order = np.lexsort((visits["step"].to_numpy(), visits["pos"].to_numpy(), visits["seq"].to_numpy()))
    return visits.iloc[order].reset_index(drop=True)


def token_starts(visits: pd.DataFrame) -> np.ndarray:
    """For visits sorted by (seq, pos, step): True on each token's first row."""
    key = _token_keys(visits)
    start = np.ones(key.size, dtype=bool)
    start[1:] = key[1:] != key[:-1]
    return start


def token_ids(visits: pd.DataFrame) -> np.ndarray:
    """For sorted visits: a 0-based token index per row, in (seq, pos) order."""
    return np.cumsum(token_starts(visits)) - 1


def token_depths(visits: pd.DataFrame) -> pd.Series:
    """Depth (visits) per token, indexed by (seq, pos) in sorted order."""
    v = sort_visits(visits)
    first = v[token_starts(v)]
    index = pd.MultiIndex.from_arrays([first["seq"], first["pos"]], names=["seq", "pos"])
    return pd.Series(np.bincount(token_ids(v)), index=index, name="depth")


def layer_sequences(visits: pd.DataFrame) -> pd.Series:
    """The layers each token visited, in order, as a tuple per (seq, pos); for inspection."""
    v = sort_visits(visits)
    return v.groupby(["seq", "pos"], sort=True)["layer"].agg(lambda s: tuple(int(x) for x in s))


def visit_mask(visits: pd.DataFrame, num_layers: int) -> np.ndarray:
    """A (tokens, num_layers) boolean matrix, tokens in (seq, pos) order: visited the layer at all."""
    v = sort_visits(visits)
    tid = token_ids(v)
    mask = np.zeros((int(tid[-1]) + 1 if tid.size else 0, num_layers), dtype=bool)
    mask[tid, v["layer"].to_numpy()] = True
    return mask


def _fail(source: str, v: pd.DataFrame, bad: np.ndarray, column: str, what: str) -> None:
    """Raise for the rows where `bad` holds, naming the first one."""
    rows = np.flatnonzero(bad)
    if rows.size == 0:
        return
    i = int(rows[0])
    seq, pos, step, value = (v[c].iat[i] for c in ("seq", "pos", "step", column))
    raise ConfigError(
        f"{source}: column '{column}' {what}; first at seq {seq}, pos {pos}, step {step} "
        f"({column}={value}), {rows.size} row(s) in all"
    )


def _check_unique(names: list[Any], source: str) -> None:
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: duplicated column names in {names}")


def _check_columns(dtypes: Mapping[str, str], source: str) -> None:
    """Exactly the schema's columns, each with its dtype."""
    expected = ", ".join(f"{c} ({t})" for c, t in COLUMNS.items())
    missing = [c for c in COLUMNS if c not in dtypes]
    if missing:
        raise ConfigError(f"{source}: missing column(s) {', '.join(missing)}; a trace has: {expected}")
    extra = [str(c) for c in dtypes if c not in COLUMNS]
    if extra:
        raise ConfigError(f"{source}: unexpected column(s) {', '.join(extra)}; a trace has: {expected}")
    for c, t in COLUMNS.items():
        if dtypes[c] != t.name:
            raise ConfigError(f"{source}: column '{c}' has dtype {dtypes[c]}; expected {t.name}")


def _check_values(v: pd.DataFrame, num_layers: int, source: str) -> None:
    """Per-row ranges: ids, layer, probabilities, entropy, ratios, kv_action."""
    col = {c: v[c].to_numpy() for c in COLUMNS}
    for c in _IDS:
        _fail(source, v, col[c] < 0, c, "has negative ids; allowed: >= 0")
    _fail(source, v, (col["layer"] < 0) | (col["layer"] >= num_layers), "layer", f"outside [0, {num_layers})")
    for c in ("prob", "prob_exit"):
        _fail(source, v, ~((col[c] >= 0) & (col[c] <= 1)), c, "is not a probability in [0, 1]")
    _fail(source, v, ~(col["entropy"] >= 0), "entropy", "is negative or NaN; allowed: >= 0 nats")
    for c in RATIO_COLUMNS:
        _fail(source, v, col[c] < 0, c, "is negative; allowed: >= 0, or NaN where the sub-block did not run")
    codes = ", ".join(f"{k} ({n})" for k, n in KV_ACTIONS.items())
    bad = ~np.isin(col["kv_action"], list(KV_ACTIONS))
    _fail(source, v, bad, "kv_action", f"has unknown codes; allowed: {codes}")


def route_passes(layer: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Pass per row from the layer sequence; `start` marks each token's first row (rows sorted)."""
    new_pass = np.zeros(layer.size, dtype=np.int64)
    new_pass[1:] = layer[1:] <= layer[:-1]
    new_pass[start] = 0
    passes = np.cumsum(new_pass)
    return passes - passes[np.flatnonzero(start)][np.cumsum(start) - 1]


def _check_routes(v: pd.DataFrame, source: str) -> None:
    """Per token: steps 0..depth-1, depth = row count, pass from the layer sequence, fixed ids."""
    start = token_starts(v)
    tid = np.cumsum(start) - 1
    steps = np.arange(len(v)) - np.flatnonzero(start)[tid]
    _fail(source, v, v["step"].to_numpy() != steps, "step", "does not run 0..depth-1 for each token")
    rows = np.bincount(tid)[tid]
    _fail(source, v, v["depth"].to_numpy() != rows, "depth", "differs from the token's row count")
    passes = route_passes(v["layer"].to_numpy(), start)
    msg = "disagrees with the layer sequence (a visit to a layer <= the previous one starts a new pass)"
    _fail(source, v, v["pass"].to_numpy() != passes, "pass", msg)
    token, seq, batch = (v[c].to_numpy() for c in ("token", "seq", "batch"))
    _fail(source, v, ~start & (token != np.roll(token, 1)), "token", "changes within a token's rows")
    same_seq = np.zeros(len(v), dtype=bool)
    same_seq[1:] = seq[1:] == seq[:-1]
    _fail(source, v, same_seq & (batch != np.roll(batch, 1)), "batch", "changes within a sequence")


def visits_from_routes(
    routes: Sequence[Sequence[int]],
    seq: Sequence[int],
    pos: Sequence[int],
    batch: Sequence[int] | None = None,
    token: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Visit rows for given per-token layer routes, with the no-router defaults and NaN ratios.

    Derives step, pass and depth; `batch` defaults to `seq` and `token` to 0.
    """
    depth = np.array([len(r) for r in routes], dtype=np.int64)
    tid = np.repeat(np.arange(depth.size), depth)
    start = np.r_[True, tid[1:] != tid[:-1]][: tid.size]
    layer = np.concatenate([np.asarray(r, dtype=np.int64) for r in routes]) if tid.size else tid
    ids = (seq, seq if batch is None else batch, pos, [0] * depth.size if token is None else token)
    cols: dict[str, Any] = {c: np.asarray(x)[tid] for c, x in zip(_IDS, ids, strict=True)}
    cols |= {"step": np.arange(tid.size) - (np.cumsum(depth) - depth)[tid], "layer": layer}
    cols |= {"pass": route_passes(layer, start), "depth": depth[tid], "prob": 1.0, "prob_exit": 0.0}
    cols |= {"entropy": 0.0, **{c: np.nan for c in RATIO_COLUMNS}, "kv_action": KV_WRITE}
    return pd.DataFrame(cols, index=pd.RangeIndex(tid.size)).astype(COLUMNS)


def validate_trace(trace: Trace, source: str = "<memory>") -> None:
    """Raise ConfigError naming `source`, the field and what is allowed, unless the trace is valid."""
    validate_meta(trace.meta, source)
    visits = trace.visits
    if not isinstance(visits, pd.DataFrame):
        raise ConfigError(f"{source}: visits must be a pandas DataFrame, got {type(visits).__name__}")
    _check_unique(list(visits.columns), source)
    _check_columns({str(c): str(t) for c, t in visits.dtypes.items()}, source)
    if len(visits) == 0:
        raise ConfigError(f"{source}: the trace has no rows; a trace holds at least one visit")
    v = sort_visits(visits)
    _check_values(v, trace.num_layers, source)
    _check_routes(v, source)


# ---- files ------------------------------------------------------------------------------------


def _to_table(trace: Trace) -> pa.Table:
    v = sort_visits(trace.visits)
    fields = [pa.field(c, pa.from_numpy_dtype(t), nullable=False) for c, t in COLUMNS.items()]
    meta = {METADATA_KEY: json.dumps(trace.meta, sort_keys=True).encode()}
    arrays = [pa.array(v[c].to_numpy(), type=f.type) for c, f in zip(COLUMNS, fields, strict=True)]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def write_trace(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Validate, then write zstd Parquet atomically (temp file, fsync, rename); return the path."""
    path = Path(path)
    validate_trace(trace, str(path))
    table = _to_table(trace)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, **_PARQUET_OPTIONS)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    os.fsync(dir_fd)  # make the rename itself durable
    os.close(dir_fd)
    return path


def _dtype_name(t: pa.DataType) -> str:
    try:
        return np.dtype(t.to_pandas_dtype()).name
    except (NotImplementedError, TypeError):
        return str(t)


def _read_meta(schema: pa.Schema, source: str) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ConfigError(
            f"{source}: no radsim trace metadata (Parquet schema metadata key {METADATA_KEY!r}); "
            "allowed: a file written by radsim.routes.trace.write_trace"
        )
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{source}: metadata {METADATA_KEY!r} is not valid JSON ({exc})") from exc


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Load and validate a trace file; raise ConfigError naming the file and the problem."""
    source = str(path)
    try:
        table = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{source}: not a readable Parquet file ({exc})") from exc
    meta = _read_meta(table.schema, source)
    validate_meta(meta, source)
    _check_unique(table.schema.names, source)
    _check_columns({f.name: _dtype_name(f.type) for f in table.schema}, source)
    # Float nulls (pandas' to_parquet writes NaN so) read back as NaN; integer nulls have no meaning.
    for c in (c for c, t in COLUMNS.items() if t.kind == "i" and table.column(c).null_count):
        raise ConfigError(f"{source}: column '{c}' has nulls; allowed: integers only")
    trace = Trace(table.select(list(COLUMNS)).to_pandas(), meta)
    validate_trace(trace, source)
    return trace
