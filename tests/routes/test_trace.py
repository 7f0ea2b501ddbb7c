"""Trace files: derived columns, lossless atomic round trips, and every kind of bad file rejected."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radsim.errors import ConfigError
from radsim.routes.trace import (
    COLUMNS,
    KV_COMPUTE,
    KV_COPY,
    KV_WRITE,
    METADATA_KEY,
    Trace,
    layer_sequences,
    read_trace,
    token_depths,
    validate_trace,
    visit_mask,
    visits_from_routes,
    write_trace,
)

META = {
    "schema_version": 1,
    "model": {"name": "toy", "kind": "radial", "num_layers": 4, "config": {"hidden_size": 8}},
    "kv_policy": "none",
    "data": {"source": "synthetic", "tokens": 4},
    "seed": 0,
    "git_commit": "0123abc",
    "device": "cpu",
    "created_at": "2026-01-02T03:04:05+00:00",
    "quality": {"perplexity": 12.5},
    "notes": "hand-made",
}
# Sequential, skipping, reusing (a second pass starts at layer 1) and a one-visit route.
ROUTES = [[0, 1, 2, 3], [0, 2, 3], [0, 2, 1, 3], [1]]


def make_trace(routes=ROUTES, seq=(0, 0, 1, 1), pos=(0, 1, 0, 1), meta=META) -> Trace:
    visits = visits_from_routes(routes, seq, pos, token=[7, 8, 9, 10][: len(routes)])
    return Trace(visits, copy.deepcopy(meta))


def test_derived_columns_of_hand_routes():
    v = make_trace().visits
    assert list(v.columns) == list(COLUMNS) and dict(v.dtypes) == COLUMNS
    assert v["step"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 0]
    assert v["pass"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert v["depth"].tolist() == [4] * 4 + [3] * 3 + [4] * 4 + [1]
    assert v["token"].tolist() == [7] * 4 + [8] * 3 + [9] * 4 + [10]
    assert (v["prob"] == 1).all() and (v["prob_exit"] == 0).all() and (v["kv_action"] == KV_WRITE).all()
    assert (KV_WRITE, KV_COPY, KV_COMPUTE) == (0, 1, 2)


def test_helpers():
    trace = make_trace()
    assert (trace.num_layers, trace.tokens, trace.sequences) == (4, 4, 2)
    depths = token_depths(trace.visits.iloc[::-1])
    assert depths.to_dict() == {(0, 0): 4, (0, 1): 3, (1, 0): 4, (1, 1): 1}
    assert layer_sequences(trace.visits).tolist() == [tuple(r) for r in ROUTES]
    assert visit_mask(trace.visits, 4).astype(int).tolist() == [
        [1, 1, 1, 1],
        [1, 0, 1, 1],
        [1, 1, 1, 1],
        [0, 1, 0, 0],
    ]


def test_round_trip_is_lossless(tmp_path):
    trace = make_trace()
    trace.visits["attn_ratio"] = np.float32(0.125)
    trace.visits.loc[3, "entropy"] = np.float32(1.5)
    shuffled = Trace(trace.visits.sample(frac=1.0, random_state=1), trace.meta)
    path = write_trace(shuffled, tmp_path / "t.parquet")
    back = read_trace(path)
    pd.testing.assert_frame_equal(back.visits, trace.visits)
    assert back.meta == META and (back.num_layers, back.tokens, back.sequences) == (4, 4, 2)


def test_file_is_zstd_narrow_and_has_no_float16(tmp_path):
    path = write_trace(make_trace(), tmp_path / "t.parquet")
    schema = pq.read_schema(path)
    assert {f.name: f.type for f in schema} == {c: pa.from_numpy_dtype(t) for c, t in COLUMNS.items()}
    assert not any(pa.types.is_float16(f.type) for f in schema)
    assert json.loads(schema.metadata[METADATA_KEY]) == META
    group = pq.ParquetFile(path).metadata.row_group(0)
    assert {group.column(i).compression for i in range(group.num_columns)} == {"ZSTD"}


def test_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    write_trace(make_trace(), path)
    write_trace(make_trace(routes=ROUTES[:2], seq=(0, 0), pos=(0, 1)), path)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"] and read_trace(path).tokens == 2

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_trace(make_trace(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"] and read_trace(path).tokens == 2


def test_write_rejects_an_invalid_trace_before_touching_the_folder(tmp_path):
    trace = make_trace()
    trace.visits.loc[0, "layer"] = 9
    with pytest.raises(ConfigError, match=r"t\.parquet: column 'layer' outside \[0, 4\)"):
        write_trace(trace, tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def _raw(path: Path, visits: pd.DataFrame, meta: dict | bytes | None) -> Path:
    """Write a Parquet file without any validation."""
    table = pa.Table.from_pandas(visits, preserve_index=False)
    raw = meta if isinstance(meta, bytes) or meta is None else json.dumps(meta).encode()
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: raw} if raw is not None else None), path)
    return path


def _meta(**changes) -> dict:
    meta = copy.deepcopy(META)
    for key, value in changes.items():
        parts = key.split("__")
        target = meta[parts[0]] if len(parts) == 2 else meta
        if value is None:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return meta


META_CASES = [
    (None, "no radsim trace metadata"),
    (b"{not json", "not valid JSON"),
    (_meta(schema_version=2), "'schema_version' is 2; allowed: 1"),
    (_meta(model__kind="moe"), "'model.kind' is 'moe'; allowed: sequential, radial, mod, early_exit, dlo"),
    (_meta(model__num_layers=0), "'model.num_layers' is 0; allowed: an int >= 1"),
    (_meta(kv_policy="share"), "'kv_policy' is 'share'; allowed: none, copy, compute"),
    (_meta(created_at="yesterday"), "'created_at' is 'yesterday'; allowed: an ISO 8601"),
    (_meta(seed=True), "'seed' is True; allowed: an int"),
    (_meta(quality=3), "'quality' is 3; allowed: an object"),
    (_meta(extra=1), "unknown metadata key(s) extra; allowed: schema_version, model"),
]
META_CASES += [
    (_meta(**{k: None}), f"'{k}' is missing; allowed: ") for k in META if k not in ("quality", "notes")
]
META_CASES += [(_meta(**{f"model__{k}": None}), f"'model.{k}' is missing") for k in META["model"]]
META_CASES += [(_meta(**{f"data__{k}": None}), f"'data.{k}' is missing") for k in META["data"]]


@pytest.mark.parametrize("meta, message", META_CASES)
def test_bad_metadata_is_rejected(tmp_path, meta, message):
    path = _raw(tmp_path / "bad.parquet", make_trace().visits, meta)
    with pytest.raises(ConfigError) as err:
        read_trace(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def _set(column, row, value):
    def change(v: pd.DataFrame) -> pd.DataFrame:
        v[column] = v[column].astype(object)
        v.loc[row, column] = value
        return v.astype({column: COLUMNS[column]})

    return change


VISIT_CASES = [
    (lambda v: v.drop(columns="entropy"), "missing column(s) entropy; a trace has: seq (int32)"),
    (lambda v: v.assign(extra=1), "unexpected column(s) extra"),
    (lambda v: v.astype({"layer": "int64"}), "column 'layer' has dtype int64; expected int16"),
    (lambda v: v.astype({"mlp_ratio": "float16"}), "column 'mlp_ratio' has dtype float16; expected float32"),
    (lambda v: v.iloc[:0], "no rows"),
    (_set("layer", 5, 4), "column 'layer' outside [0, 4); first at seq 0, pos 1, step 1 (layer=4)"),
    (_set("layer", 0, -1), "column 'layer' outside [0, 4)"),
    (_set("step", 2, 3), "column 'step' does not run 0..depth-1"),
    (lambda v: v.drop(index=5), "column 'step' does not run 0..depth-1"),
    (_set("depth", 11, 2), "column 'depth' differs from the token's row count"),
    (_set("pass", 10, 0), "column 'pass' disagrees with the layer sequence"),
    (_set("prob", 3, 1.5), "column 'prob' is not a probability in [0, 1]"),
    (_set("prob", 3, np.nan), "column 'prob' is not a probability in [0, 1]"),
    (_set("prob_exit", 3, -0.1), "column 'prob_exit' is not a probability in [0, 1]"),
    (_set("entropy", 3, -1.0), "column 'entropy' is negative"),
    (_set("attn_ratio_out", 3, -0.5), "column 'attn_ratio_out' is negative"),
    (
        _set("kv_action", 3, 3),
        "column 'kv_action' has unknown codes; allowed: 0 (write), 1 (copy), 2 (compute)",
    ),
    (_set("token", 1, 99), "column 'token' changes within a token's rows"),
    (_set("batch", 5, 99), "column 'batch' changes within a sequence"),
    (_set("pos", 0, -1), "column 'pos' has negative ids"),
]


@pytest.mark.parametrize("change, message", VISIT_CASES)
def test_bad_visits_are_rejected_on_read_and_in_memory(tmp_path, change, message):
    visits = change(make_trace().visits.copy())
    path = _raw(tmp_path / "bad.parquet", visits, META)
    with pytest.raises(ConfigError) as err:
        read_trace(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    with pytest.raises(ConfigError, match="^<memory>: "):
        validate_trace(Trace(visits, copy.deepcopy(META)))


def test_nulls_and_unreadable_files_are_rejected(tmp_path):
    # pandas/pyarrow store NaN ratios as float nulls; they read back as NaN.
    good = _raw(tmp_path / "g.parquet", make_trace().visits, META)
    assert pq.read_table(good).column("mlp_ratio").null_count > 0
    pd.testing.assert_frame_equal(read_trace(good).visits, make_trace().visits)
    table = pa.Table.from_pandas(make_trace().visits, preserve_index=False)
    token = pa.array([None] + [7] * (table.num_rows - 1), type=pa.int32())
    table = table.set_column(table.schema.get_field_index("token"), "token", token)
    pq.write_table(
        table.replace_schema_metadata({METADATA_KEY: json.dumps(META).encode()}), tmp_path / "n.parquet"
    )
    with pytest.raises(ConfigError, match=r"n\.parquet: column 'token' has nulls"):
        read_trace(tmp_path / "n.parquet")
    (tmp_path / "text.parquet").write_text("seq,pos\n0,0\n")
    with pytest.raises(ConfigError, match=r"text\.parquet: not a readable Parquet file"):
        read_trace(tmp_path / "text.parquet")
    with pytest.raises(ConfigError, match=r"missing\.parquet: not a readable Parquet file"):
        read_trace(tmp_path / "missing.parquet")


def test_metadata_must_be_plain_json():
    trace = make_trace(meta=_meta(notes=None, quality={"perplexity": np.float32(3.0)}))
    with pytest.raises(ConfigError, match="must be plain JSON"):
        validate_trace(trace)
    with pytest.raises(ConfigError, match="must be plain JSON"):
        validate_trace(make_trace(meta=_meta(model__config={"dims": (1, 2)})))


routes = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=12), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(routes=routes, data=st.data())
def test_random_routes_round_trip_losslessly(routes, data):
    n = len(routes)
    seq = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    pos = list(range(n))  # distinct, so every route is its own token
    visits = visits_from_routes(routes, seq, pos, batch=[s // 2 for s in seq], token=list(range(n)))
    visits["prob"] = np.linspace(0, 1, len(visits), dtype=np.float32)
    visits["mlp_ratio"] = np.float32(0.5)
    trace = Trace(visits, _meta(model__num_layers=6))
    with tempfile.TemporaryDirectory() as folder:
        back = read_trace(write_trace(trace, Path(folder) / "t.parquet"))
    expected = visits.sort_values(["seq", "pos", "step"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(back.visits, expected)
    assert back.meta == trace.meta and back.tokens == n
    assert layer_sequences(back.visits).to_dict() == {
        (s, p): tuple(r) for s, p, r in zip(seq, pos, routes, strict=True)
    }
