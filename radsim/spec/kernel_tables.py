"""Measured kernel tables of a device: GEMM latency over (m, n, k) per dtype, all-reduce latency over
message size per algorithm and group size, loaded from one `.npz` file (numpy and scipy only).

The files are converted once from published kernel-level measurements (`radsim tables import`,
`radsim/measure/tables.py`) and shipped in `radsim/spec/kernel_tables/<device>/`, each with its
provenance (source package and version, framework and version, kernel, licence; NOTICE.md beside
them). A hardware file names its tables with `kernel_tables = { value = "<device>/<file>.npz",
source = "..." }`; the cost model then prices GEMMs and all-reduces from them and falls back to
the roofline for anything they do not cover (other dtypes, no table for the group size).

Interpolation: GEMM latency is made monotone (the least measured time at or above a shape: a GEMM
can be padded to a larger one) and interpolated linearly in m (row counts just above a tile multiple
are sampled, so the steps of tile quantisation are kept) and in log2 n and log2 k, on the logarithm
of the latency; beyond the largest sampled m, n or k the latency grows in proportion (those GEMMs
are compute-bound), below the smallest n or k it is the smallest measured. All-reduce latency is
made monotone the same way and interpolated log-log in the message size, floored at the smallest message's latency and grown in
proportion beyond the largest.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from radsim.errors import ConfigError

TABLES_DIR = Path(__file__).resolve().parent / "kernel_tables"
#: The table dtype each radsim dtype's GEMMs use (fp16 runs on the same tensor cores as bf16).
GEMM_TABLE_DTYPE = {"bf16": "bf16", "fp16": "bf16", "fp8": "fp8"}
#: Messages up to this size use the framework's custom all-reduce (vLLM's CustomAllreduce default
#: max_size of 8 MiB, vllm/distributed/device_communicators/custom_all_reduce.py), larger ones NCCL.
CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 1024 * 1024


class _GridInterpolator:
    """Multilinear interpolation on a rectilinear grid, inside it: the numbers of scipy's
    `RegularGridInterpolator` (method "linear"), corner by corner in its order, without importing
    scipy.interpolate (a third of a second) on the way to a first estimate."""

    def __init__(self, axes: tuple[np.ndarray, ...], values: np.ndarray) -> None:
        self.axes = tuple(np.asarray(a, dtype=np.float64) for a in axes)
        self.values = np.asarray(values, dtype=np.float64)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Values at `points` (n, dims), every coordinate within its axis."""
        lower, fraction = [], []
        for axis, x in zip(self.axes, points.T, strict=True):
            i = np.clip(np.searchsorted(axis, x, side="right") - 1, 0, axis.size - 2)
            lower.append(i)
            fraction.append((x - axis[i]) / (axis[i + 1] - axis[i]))
        value = np.array([0.0])
        for corner in itertools.product((0, 1), repeat=len(self.axes)):
            weight = np.array([1.0])
            for upper, t in zip(corner, fraction, strict=True):
                weight = weight * (t if upper else 1 - t)
            index = tuple(i + upper for upper, i in zip(corner, lower, strict=True))
            value = value + self.values[index] * weight
        return value


@dataclass(frozen=True)
class GemmTable:
    """GEMM latency (s) on the grid m x n x k."""

    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    latency_s: np.ndarray

    @cached_property
    def envelope_s(self) -> np.ndarray:
        """The latencies made monotone: a GEMM can always be padded to a larger measured shape, so
        its time is the least measured at or above its (m, n, k); this drops slow outliers and
        makes more work never cost less."""
        out = self.latency_s
        for axis in range(3):
            out = np.flip(np.minimum.accumulate(np.flip(out, axis), axis=axis), axis)
        return out

    @cached_property
    def _interpolator(self) -> Any:
        axes = (self.m, np.log2(self.n), np.log2(self.k))
        return _GridInterpolator(axes, np.log(self.envelope_s))

    def time_s(self, m: Any, n: Any, k: Any) -> np.ndarray:
        """Latency of GEMMs of `m` rows against (k x n) weights (arrays broadcast); 0 where m is 0."""
        m, n, k = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (m, n, k)))
        axes = (self.m, self.n, self.k)
        clipped = [np.clip(x, a[0], a[-1]) for x, a in zip((m, n, k), axes, strict=True)]
        points = np.stack([clipped[0], np.log2(clipped[1]), np.log2(clipped[2])], axis=-1)
        t = np.exp(self._interpolator(points.reshape(-1, 3))).reshape(m.shape)
        grow = np.ones_like(t)
        for x, a in zip((m, n, k), axes, strict=True):
            grow *= np.maximum(x / a[-1], 1.0)
        return np.where(m > 0, t * grow, 0.0)


@dataclass(frozen=True)
class AllReduceCurve:
    """All-reduce latency (s) against message bytes, for one algorithm and group size."""

    message_bytes: np.ndarray
    latency_s: np.ndarray

    @cached_property
    def envelope_s(self) -> np.ndarray:
        """The latencies made monotone (a message can be padded to a larger measured size)."""
        return np.minimum.accumulate(self.latency_s[::-1])[::-1]

    def time_s(self, message_bytes: Any) -> np.ndarray:
        """Latency of all-reduces of `message_bytes` (array); 0 where the message is empty."""
        b = np.asarray(message_bytes, dtype=np.float64)
        x = np.log(np.clip(b, self.message_bytes[0], self.message_bytes[-1]))
        t = np.exp(np.interp(x, np.log(self.message_bytes), np.log(self.envelope_s)))
        return np.where(b > 0, t * np.maximum(b / self.message_bytes[-1], 1.0), 0.0)


@dataclass(frozen=True)
class AttentionTable:
    """Decode attention latency (s) of one layer on the grid batch x context (KV entries held)."""

    batch: np.ndarray
    context: np.ndarray
    latency_s: np.ndarray

    @cached_property
    def envelope_s(self) -> np.ndarray:
        """Monotone in batch and context (a launch can be padded to a larger measured one)."""
        out = self.latency_s
        for axis in range(2):
            out = np.flip(np.minimum.accumulate(np.flip(out, axis), axis=axis), axis)
        return out

    @cached_property
    def _interpolator(self) -> Any:
        from scipy.interpolate import RegularGridInterpolator

        return RegularGridInterpolator((np.log2(self.batch), np.log2(self.context)), np.log(self.envelope_s))

    def time_s(self, batch: Any, context: Any) -> np.ndarray:
        """Latency for `batch` sequences each holding `context` entries (arrays broadcast); beyond the
        largest measured batch or context it grows in proportion (memory-bound); 0 for no sequence."""
        b, c = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (batch, context)))
        bq = np.clip(b, self.batch[0], self.batch[-1])
        cq = np.clip(c, self.context[0], self.context[-1])
        points = np.stack([np.log2(bq), np.log2(cq)], axis=-1).reshape(-1, 2)
        t = np.exp(self._interpolator(points)).reshape(b.shape)
        grow = np.maximum(b / self.batch[-1], 1.0) * np.maximum(c / self.context[-1], 1.0)
        return np.where(b > 0, t * grow, 0.0)


#: Decode-attention table points with at least this many KV entries per sequence enter the fit (the
#: shortest contexts are launch-bound and would pull the per-entry slope).
FIT_MIN_CONTEXT = 255


@dataclass(frozen=True)
class DecodeAttentionFit:
    """Decode attention of one head geometry as a fixed time plus a time per KV entry read:
    `floor_s + s_per_entry x entries` for a launch whose sequences hold `entries` in all, fitted to a
    measured table (relative least squares, non-negative) so that it stays linear in the load (the
    cost model's closed form) and more work never costs less."""

    floor_s: float
    s_per_entry: float
    median_ape: float  # of the fit on the table's points it was fitted to (context >= FIT_MIN_CONTEXT)
    p90_ape: float

    def time_s(self, sequences: Any, entries: Any) -> np.ndarray:
        b = np.asarray(sequences, dtype=np.float64)
        return np.where(b > 0, self.floor_s + self.s_per_entry * np.asarray(entries, dtype=np.float64), 0.0)


def fit_decode_attention(table: AttentionTable) -> DecodeAttentionFit:
    """`DecodeAttentionFit` of one measured table (batch x context)."""
    b, c = np.meshgrid(table.batch, table.context, indexing="ij")
    keep = c.ravel() >= FIT_MIN_CONTEXT
    entries, t = (b * c).ravel()[keep], table.latency_s.ravel()[keep]
    floor, slope = _nonnegative_fit(1.0 / t, entries / t)
    errors = np.abs((floor + slope * entries) / t - 1.0) * 100.0
    return DecodeAttentionFit(
        float(floor), float(slope), float(np.median(errors)), float(np.percentile(errors, 90))
    )


def _nonnegative_fit(u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(x, y) >= 0 minimising sum((x u + y v - 1)^2): the unconstrained least squares where it is
    non-negative, else the better of the two one-coefficient fits (the active-set solution of a
    two-variable non-negative least squares, without scipy on the estimate's path)."""
    uu, uv, vv, u1, v1 = u @ u, u @ v, v @ v, u.sum(), v.sum()
    det = uu * vv - uv * uv
    if det > 0:
        x, y = (u1 * vv - v1 * uv) / det, (v1 * uu - u1 * uv) / det
        if x >= 0 and y >= 0:
            return float(x), float(y)
    candidates = [(max(u1 / uu, 0.0), 0.0), (0.0, max(v1 / vv, 0.0))]
    return min(candidates, key=lambda xy: float(((xy[0] * u + xy[1] * v - 1.0) ** 2).sum()))


_FITS: dict[tuple[Path, str], DecodeAttentionFit | None] = {}


@dataclass(frozen=True)
class KernelTables:
    """One device's measured tables under one serving framework, with their provenance."""

    path: Path
    meta: dict[str, Any] = field(repr=False)
    gemm: dict[str, GemmTable] = field(repr=False)
    allreduce: dict[str, dict[int, AllReduceCurve]] = field(repr=False)
    generation_attention: Mapping[str, AttentionTable] = field(default_factory=dict, repr=False)
    context_attention: Mapping[str, AttentionTable] = field(default_factory=dict, repr=False)

    def attention_table(
        self, heads: int, kv_heads: int, head_dim: int, kv_dtype: str, phase: str = "generation"
    ) -> AttentionTable | None:
        """Decode (`generation`) or prefill (`context`) attention of this head geometry (per device)
        and KV dtype, if measured. A prefill table's `context` axis is the prompt length."""
        grids = self.generation_attention if phase == "generation" else self.context_attention
        return grids.get(f"{heads}_{kv_heads}_{head_dim}_{GEMM_TABLE_DTYPE.get(kv_dtype, kv_dtype)}")

    def decode_attention_fit(
        self, heads: int, kv_heads: int, head_dim: int, kv_dtype: str
    ) -> DecodeAttentionFit | None:
        """The fitted decode attention of this head geometry (per device) and KV dtype, if measured."""
        key = (self.path, f"{heads}_{kv_heads}_{head_dim}_{kv_dtype}")
        if key not in _FITS:
            table = (
                self.attention_table(heads, kv_heads, head_dim, kv_dtype)
                if kv_dtype in GEMM_TABLE_DTYPE
                else None
            )
            _FITS[key] = None if table is None else fit_decode_attention(table)
        return _FITS[key]

    @property
    def source(self) -> str:
        """One line: what was measured, on which framework, from which package."""
        m = self.meta
        return (
            f"{m['source_device']}, {m['framework']} {m['framework_version']} "
            f"({m['source_package']} {m['source_version']}, {m['licence']})"
        )

    def gemm_time_s(self, dtype: str, m: Any, n: float, k: float) -> np.ndarray | None:
        """Measured latency of GEMMs in `dtype` (a radsim dtype), or None where no table covers it."""
        table = self.gemm.get(GEMM_TABLE_DTYPE.get(dtype, ""))
        return None if table is None else table.time_s(m, n, k)

    def allreduce_curve(
        self, tp: int, message_bytes: float, algorithm: str = "custom"
    ) -> AllReduceCurve | None:
        """The curve of the algorithm an engine uses for this message and group size: with `algorithm`
        'custom' (a serving engine's own all-reduce), the custom kernel up to
        `CUSTOM_ALLREDUCE_MAX_BYTES` and NCCL above; with 'nccl' (plain torch.distributed), NCCL."""
        # the engine's own kernel as CUDA graphs capture it (vLLM, SGLang: *_graph; TensorRT-LLM's one)
        custom = [a for a in self.allreduce if a != "NCCL" and "eager" not in a.lower()]
        small = algorithm == "custom" and message_bytes <= CUSTOM_ALLREDUCE_MAX_BYTES
        order = [*custom, "NCCL"] if small else ["NCCL", *custom]
        for algorithm in order:
            curve = self.allreduce.get(algorithm, {}).get(tp)
            if curve is not None:
                return curve
        return None


def _version_key(name: str) -> tuple:
    version = name.split("-", 1)[1] if "-" in name else name
    return tuple(
        int(p) if p.isdigit() else -1 for p in version.replace("rc", ".").replace("post", ".").split(".")
    )


def framework_tables(tables: KernelTables, framework: str) -> KernelTables | None:
    """The same device's tables measured under `framework` (a sibling file `<framework>-<version>.npz`,
    the newest version), or None where none was imported."""
    if tables.meta.get("framework") == framework:
        return tables
    files = sorted(tables.path.parent.glob(f"{framework}-*.npz"), key=lambda p: _version_key(p.stem))
    return load_kernel_tables(files[-1].resolve()) if files else None


def resolve(value: str, hw_file: Path) -> Path:
    """A kernel-table path as a hardware file names it: absolute, beside the file, or in the registry."""
    for candidate in (Path(value), hw_file.parent / value, TABLES_DIR / value):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"{hw_file}: kernel_tables '{value}' not found (looked beside the file and in {TABLES_DIR})"
    )


def _read(path: Path, wanted: Callable[[str], bool]) -> dict[str, np.ndarray]:
    """The arrays of one `.npz` whose keys are `wanted`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files if wanted(key)}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read kernel tables: {exc}") from exc


class _AttentionTables(Mapping[str, AttentionTable]):
    """One phase's attention tables of a file, read from it when first asked for: the cost model does
    not price attention from them, and they are most of a file's arrays (reading them all would
    double the start-up of a first estimate)."""

    def __init__(self, path: Path, phase: str) -> None:
        self._path, self._prefix = path, f"{phase}_attention/"
        self._tables: dict[str, AttentionTable] | None = None

    @property
    def tables(self) -> dict[str, AttentionTable]:
        if self._tables is None:
            grids: dict[str, dict[str, np.ndarray]] = {}
            for key, value in _read(self._path, lambda k: k.startswith(self._prefix)).items():
                parts = key.split("/")
                if len(parts) == 3:
                    grids.setdefault(parts[1], {})[parts[2]] = value
            self._tables = {name: AttentionTable(**grid) for name, grid in grids.items()}
        return self._tables

    def __getitem__(self, key: str) -> AttentionTable:
        return self.tables[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)


@lru_cache(maxsize=16)
def load_kernel_tables(path: Path) -> KernelTables:
    """Read one `.npz` of kernel tables (cached: a sweep reads each file once); its attention tables
    are read when first asked for."""
    arrays = _read(path, lambda key: key.split("/")[0] not in ("generation_attention", "context_attention"))
    if "meta_json" not in arrays:
        raise ConfigError(
            f"{path}: not a radsim kernel-table file (no meta_json); write one with radsim tables import"
        )
    meta = json.loads(str(arrays.pop("meta_json")))
    gemm: dict[str, dict[str, np.ndarray]] = {}
    allreduce: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for key, value in arrays.items():
        parts = key.split("/")
        if parts[0] == "gemm" and len(parts) == 3:
            gemm.setdefault(parts[1], {})[parts[2]] = value
        elif parts[0] == "allreduce" and len(parts) == 4:
            allreduce.setdefault(parts[1], {}).setdefault(int(parts[2]), {})[parts[3]] = value
    return KernelTables(
        path,
        meta,
        {dtype: GemmTable(**grid) for dtype, grid in gemm.items()},
        {a: {g: AllReduceCurve(**c) for g, c in by_gpus.items()} for a, by_gpus in allreduce.items()},
        _AttentionTables(path, "generation"),
        _AttentionTables(path, "context"),
    )
