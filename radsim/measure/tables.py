"""Import published kernel-level measurement tables into radsim's compact kernel-table format.

Source: NVIDIA's `aiconfigurator-core` (Apache-2.0, on the package index), which ships per-GPU
Parquet tables measured on each serving framework: GEMM latency over (m, n, k) per dtype, and
all-reduce latency over message size at 2, 4 and 8 GPUs (NCCL and each framework's custom
all-reduce). `import_tables` reads one device and one framework version from the package's
`systems/data/<device>/` folder (or any folder of the same layout) and writes one `.npz` file
(numpy only at run time: `radsim.spec.kernel_tables`) with the provenance of every table, plus a
NOTICE with the licence. Units are converted here: milliseconds to seconds, all-reduce sizes from
elements (16-bit) to bytes. The package is needed only to import (`pip install radsim[tables]`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from radsim.errors import ConfigError
from radsim.files import atomic_write, atomic_write_text

SOURCE_PACKAGE = "aiconfigurator-core"
LICENCE = "Apache-2.0"
#: radsim device stems and the device folders of the source package.
DEVICES = {"h100_sxm": "h100_sxm", "h200_sxm": "h200_sxm", "a100_sxm_80gb": "a100_sxm", "l40s": "l40s"}
FRAMEWORKS = ("vllm", "sglang", "trtllm")
#: GEMM dtypes of the source and the radsim dtypes they price (fp8: per-tensor scaled FP8 GEMM).
GEMM_DTYPES = {"bfloat16": "bf16", "fp8": "fp8"}
#: The GEMM kernels each framework runs for a dense linear layer, per source dtype (first found wins).
GEMM_KERNELS = {
    "bfloat16": ("torch.nn.functional.linear", "sglang_torch_linear", "torch_flow", "sglang", "vllm_default"),
    "fp8": ("CutlassFP8ScaledMMLinearKernel", "sglang_sgl_kernel_fp8_scaled", "torch_flow", "sglang"),
}
S_PER_MS = 1e-3
ALLREDUCE_ELEMENT_BYTES = 2.0  # the tables' messages are 16-bit elements (bf16/half)


def package_data_dir() -> Path:
    """`systems/data` of the installed source package."""
    try:
        import aiconfigurator_core  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(
            f"importing kernel tables needs {SOURCE_PACKAGE}: pip install -e '.[tables]' "
            "(or pass --from DIR, a folder laid out as its systems/data)"
        ) from exc
    return Path(aiconfigurator_core.__file__).resolve().parent / "systems" / "data"


def _versions(folder: Path) -> list[str]:
    return (
        sorted((p.name for p in folder.iterdir() if p.is_dir()), key=_version_key) if folder.is_dir() else []
    )


def _version_key(text: str) -> tuple:
    parts = []
    for piece in text.replace("rc", ".").replace("post", ".").split("."):
        parts.append(int(piece) if piece.isdigit() else -1)
    return tuple(parts)


def _read(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the table: {exc}") from exc


def gemm_grids(table) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Per radsim dtype, the (m, n, k) grid of latencies in seconds; and the kernel each came from.

    Grid points the source lacks (a few at the largest n x k) are filled from the nearest smaller
    k, scaled by k (a GEMM that large is compute-bound: time follows k), then, where that smaller k
    is missing too, from the nearest smaller n, scaled by n, and from the nearest smaller m.
    """
    grids: dict[str, dict[str, np.ndarray]] = {}
    kernels: dict[str, str] = {}
    for source_dtype, dtype in GEMM_DTYPES.items():
        rows = table[table["gemm_dtype"] == source_dtype]
        kernel = next((k for k in GEMM_KERNELS[source_dtype] if (rows["kernel_source"] == k).any()), None)
        if kernel is None:
            continue
        rows = rows[rows["kernel_source"] == kernel]
        axes = [np.sort(rows[c].unique()).astype(np.float64) for c in ("m", "n", "k")]
        latency = np.full(tuple(a.size for a in axes), np.nan)
        index = [np.searchsorted(a, rows[c].to_numpy()) for a, c in zip(axes, ("m", "n", "k"), strict=True)]
        latency[tuple(index)] = rows["latency"].to_numpy() * S_PER_MS
        for axis in (2, 1, 0):  # fill along k, then n, then m
            for j in range(1, latency.shape[axis]):
                here = np.take(latency, j, axis)  # views are not given by take: index explicitly
                before = np.take(latency, j - 1, axis)
                gap = np.isnan(here)
                filled = np.where(gap, before * axes[axis][j] / axes[axis][j - 1], here)
                index = [slice(None)] * 3
                index[axis] = j
                latency[tuple(index)] = filled
        if np.isnan(latency).any():
            raise ConfigError(
                f"GEMM table {dtype}: {int(np.isnan(latency).sum())} grid points cannot be filled"
            )
        grids[dtype] = {"m": axes[0], "n": axes[1], "k": axes[2], "latency_s": latency}
        kernels[dtype] = str(kernel)
    return grids, kernels


#: Decode-attention kernels, in order of preference (FlashAttention 3 on Hopper, 2 before it).
ATTENTION_KERNELS = ("vllm_flash_attn_fa3", "vllm_flash_attn", "flashinfer", "trtllm")
KV_DTYPES = {"bfloat16": "bf16", "fp8": "fp8"}


def attention_grids(table, length: str = "step") -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Attention of one layer per (heads, KV heads, head dim, KV dtype): latency (s) on the grid
    batch x length. Decode (`length` "step"): the KV entries each sequence holds before its new
    token; prefill (`length` "isl"): the prompt tokens of each sequence, causal, no prior context.

    Full attention only (window 0). The source leaves the largest batch x length corner out (the
    KV cache would not fit); those points are filled by doubling the latency of half the batch,
    as attention scales with the batch at a fixed length."""
    if "window_size" in table:
        table = table[table["window_size"] == 0]
    kernel = next((k for k in ATTENTION_KERNELS if (table["kernel_source"] == k).any()), None)
    if kernel is None:
        kernel = str(table["kernel_source"].mode().iloc[0])
    table = table[(table["kernel_source"] == kernel) & table["kv_cache_dtype"].isin(list(KV_DTYPES))]
    grids: dict[str, dict[str, np.ndarray]] = {}
    keys = ["num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype"]
    for (heads, kv_heads, head_dim, kv_dtype), rows in table.groupby(keys):
        batch = np.sort(rows["batch_size"].unique()).astype(np.float64)
        context = np.sort(rows[length].unique()).astype(np.float64)
        if batch.size < 2 or context.size < 2:
            continue
        latency = np.full((batch.size, context.size), np.nan)
        latency[np.searchsorted(batch, rows["batch_size"]), np.searchsorted(context, rows[length])] = (
            rows["latency"].to_numpy() * S_PER_MS
        )
        for i in range(1, batch.size):
            gap = np.isnan(latency[i])
            latency[i][gap] = latency[i - 1][gap] * batch[i] / batch[i - 1]
        if np.isnan(latency).any():
            continue  # a configuration measured too sparsely to fill
        name = f"{int(heads)}_{int(kv_heads)}_{int(head_dim)}_{KV_DTYPES[str(kv_dtype)]}"
        grids[name] = {"batch": batch, "context": context, "latency_s": latency}
    return grids, str(kernel)


def allreduce_curves(
    table, kernel_column: str = "kernel_source"
) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Per algorithm (kernel source), per GPU count: message bytes and latency in seconds."""
    out: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    if "op_name" in table:
        table = table[table["op_name"] == "all_reduce"]
    for dtype_column in ("nccl_dtype", "allreduce_dtype"):
        if dtype_column in table:
            table = table[table[dtype_column].isin(["half", "bfloat16", "float16"])]
    for (kernel, gpus), rows in table.groupby([kernel_column, "num_gpus"]):
        rows = rows.sort_values("message_size")
        out.setdefault(str(kernel), {})[int(gpus)] = {
            "message_bytes": rows["message_size"].to_numpy(np.float64) * ALLREDUCE_ELEMENT_BYTES,
            "latency_s": rows["latency"].to_numpy(np.float64) * S_PER_MS,
        }
    return out


def import_tables(
    device: str,
    framework: str,
    data_dir: Path,
    out_dir: Path,
    version: str | None = None,
    source_version: str | None = None,
) -> Path:
    """Convert one device's tables of one framework version into `out_dir/<framework>-<version>.npz`."""
    if device not in DEVICES:
        raise ConfigError(f"device '{device}' has no source tables; allowed: {', '.join(DEVICES)}")
    if framework not in FRAMEWORKS:
        raise ConfigError(f"framework '{framework}'; allowed: {', '.join(FRAMEWORKS)}")
    root = Path(data_dir) / DEVICES[device]
    gemm_versions = _versions(root / "gemm" / framework)
    if not gemm_versions:
        raise ConfigError(f"{root / 'gemm' / framework}: no GEMM tables of {framework} for {device}")
    version = version or gemm_versions[-1]
    if version not in gemm_versions:
        raise ConfigError(
            f"{framework} {version}: no GEMM tables; allowed versions: {', '.join(gemm_versions)}"
        )
    gemm_table = _read(root / "gemm" / framework / version / "gemm_perf.parquet")
    grids, kernels = gemm_grids(gemm_table)
    curves: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    sources: dict[str, str] = {"gemm": f"{framework} {version} gemm_perf.parquet"}
    attention: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    attention_kernel = ""
    attention_versions = _versions(root / "attention" / framework)
    if attention_versions:
        chosen = version if version in attention_versions else attention_versions[-1]
        for phase, length in (("generation", "step"), ("context", "isl")):
            path = root / "attention" / framework / chosen / f"{phase}_attention_perf.parquet"
            if path.exists():
                attention[phase], attention_kernel = attention_grids(_read(path), length)
                sources[f"{phase}_attention"] = f"{framework} {chosen} {phase}_attention_perf.parquet"
    custom = _versions(root / "comm" / framework)
    if custom:
        path = root / "comm" / framework / custom[-1] / "custom_allreduce_perf.parquet"
        if path.exists():
            curves.update(allreduce_curves(_read(path)))
            sources["custom_allreduce"] = f"{framework} {custom[-1]} custom_allreduce_perf.parquet"
    nccl = _versions(root / "comm" / "nccl")
    if nccl:
        path = root / "comm" / "nccl" / nccl[-1] / "nccl_perf.parquet"
        curves.update(allreduce_curves(_read(path)))
        sources["nccl"] = f"nccl {nccl[-1]} nccl_perf.parquet"
    meta = {
        "source_package": SOURCE_PACKAGE,
        "source_version": source_version or _package_version(),
        "licence": LICENCE,
        "source_device": str(gemm_table["device"].iloc[0]),
        "device": device,
        "framework": framework,
        "framework_version": version,
        "gemm_kernels": kernels,
        "attention_kernel": attention_kernel,
        "tables": sources,
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "units": "latency_s in seconds; message_bytes in bytes (16-bit elements x 2)",
    }
    arrays: dict[str, Any] = {"meta_json": np.array(json.dumps(meta, sort_keys=True))}
    for dtype, grid in grids.items():
        for key, value in grid.items():
            arrays[f"gemm/{dtype}/{key}"] = value
    for phase, grids in attention.items():
        for name, grid in grids.items():
            for key, value in grid.items():
                arrays[f"{phase}_attention/{name}/{key}"] = value
    for kernel, by_gpus in curves.items():
        for gpus, curve in by_gpus.items():
            for key, value in curve.items():
                arrays[f"allreduce/{kernel}/{gpus}/{key}"] = value
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{framework}-{version}.npz"
    _atomic_savez(path, arrays)
    _write_notice(out_dir, meta)
    return path


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version(SOURCE_PACKAGE)
    except Exception:  # noqa: BLE001 - imported from a folder, not the installed package
        return "unknown (imported from a folder)"


def _atomic_savez(path: Path, arrays: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would add .npz to a file name
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)


def _write_notice(out_dir: Path, meta: dict[str, Any]) -> None:
    """NOTICE.md of a device folder: the licence and one line per table file, from the files' own meta."""
    lines = []
    for npz in sorted(out_dir.glob("*.npz")):
        with np.load(npz, allow_pickle=False) as data:
            m = json.loads(str(data["meta_json"]))
        lines.append(
            f"- `{npz.name}`: {m['source_device']}, converted from {m['source_package']} {m['source_version']} "
            f"({'; '.join(m['tables'].values())}) on {m['imported_at'][:10]}\n"
        )
    atomic_write_text(
        out_dir / "NOTICE.md",
        f"# Kernel tables of {meta['device']}\n\n"
        "Derived from the measurement tables of NVIDIA's `aiconfigurator-core` "
        "(https://github.com/ai-dynamo/aiconfigurator), Copyright (c) NVIDIA CORPORATION & AFFILIATES, "
        "licensed under the Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0). "
        "Converted by `radsim tables import` (radsim/measure/tables.py): latencies to seconds, all-reduce "
        "sizes to bytes, the few points the source lacks filled (GEMM along k, then n and m, attention's largest batch x "
        "length corner by doubling half the batch; see radsim/measure/tables.py); "
        "no figure was fitted or altered otherwise.\n\n" + "".join(lines),
    )


# ---- held-out error of the interpolation ---------------------------------------------------------


def _halves(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices kept (even, and the last, so that nothing is extrapolated) and held out (odd)."""
    index = np.arange(size)
    held = index[(index % 2 == 1) & (index < size - 1)]
    return np.setdiff1d(index, held), held


def _summary(errors: np.ndarray) -> dict[str, float]:
    return {
        "points": int(errors.size),
        "median_ape": float(np.median(errors)),
        "p90_ape": float(np.percentile(errors, 90)),
    }


#: held-out points kept per (op, dtype or algorithm) for the predicted-vs-measured plot
PLOT_POINTS = 1500


def held_out_errors(tables, samples: dict[tuple[str, str], list] | None = None) -> list[dict[str, Any]]:
    """Interpolation error on half of each table: every other grid value of one axis (m, n or k of
    a GEMM; message size of an all-reduce) is left out, interpolated from the rest, and compared
    with its measurement. Absolute percentage errors, per op, dtype or algorithm, and axis. With
    `samples`, each (op, kind) gets its (measured, predicted) latency arrays appended, for a plot."""
    from radsim.spec.kernel_tables import AllReduceCurve, GemmTable

    def record(op: str, kind: str, truth: np.ndarray, predicted: np.ndarray) -> None:
        if samples is not None:
            samples.setdefault((op, kind), []).append((np.ravel(truth), np.ravel(predicted)))

    rows: list[dict[str, Any]] = []
    for dtype, grid in sorted(tables.gemm.items()):
        pooled: list[np.ndarray] = []
        for axis, name in enumerate(("m", "n", "k")):
            keep, held = _halves(grid.latency_s.shape[axis])
            if not held.size:  # an axis of two values: nothing to leave out
                continue
            axes = [grid.m, grid.n, grid.k]
            kept = [a[keep] if i == axis else a for i, a in enumerate(axes)]
            sub = GemmTable(kept[0], kept[1], kept[2], np.take(grid.latency_s, keep, axis))
            truth = np.take(grid.latency_s, held, axis)
            m, n, k = np.meshgrid(*(a[held] if i == axis else a for i, a in enumerate(axes)), indexing="ij")
            predicted = sub.time_s(m, n, k)
            record("gemm", dtype, truth, predicted)
            errors = np.abs(predicted.ravel() / truth.ravel() - 1.0) * 100.0
            rows.append({"op": "gemm", "kind": dtype, "axis": name, **_summary(errors)})
            pooled.append(errors)
        if pooled:
            rows.append({"op": "gemm", "kind": dtype, "axis": "all", **_summary(np.concatenate(pooled))})
    rows.extend(_attention_errors(tables, record))
    rows.extend(_decode_fit_errors(tables, record))
    for algorithm, by_gpus in sorted(tables.allreduce.items()):
        errors_all = []
        for _, curve in sorted(by_gpus.items()):
            keep, held = _halves(curve.message_bytes.size)
            if not held.size:
                continue
            sub_curve = AllReduceCurve(curve.message_bytes[keep], curve.latency_s[keep])
            predicted = sub_curve.time_s(curve.message_bytes[held])
            record("all_reduce", algorithm, curve.latency_s[held], predicted)
            errors_all.append(np.abs(predicted / curve.latency_s[held] - 1.0) * 100.0)
        if not errors_all:
            continue
        rows.append(
            {
                "op": "all_reduce",
                "kind": algorithm,
                "axis": "message_bytes",
                **_summary(np.concatenate(errors_all)),
            }
        )
    return rows


def _attention_errors(tables, record) -> list[dict[str, Any]]:
    """Held-out error of decode and prefill attention per KV dtype, over every head geometry: every
    other batch size or length left out and interpolated from the rest."""
    return _phase_errors(tables.generation_attention, "decode_attention", record) + _phase_errors(
        tables.context_attention, "prefill_attention", record
    )


def _decode_fit_errors(tables, record) -> list[dict[str, Any]]:
    """Held-out error of the linear decode-attention model the cost model prices with
    (`radsim.spec.kernel_tables.DecodeAttentionFit`): fitted on every other context of each table
    (contexts >= FIT_MIN_CONTEXT), compared with the measurements at the others."""
    from radsim.spec.kernel_tables import FIT_MIN_CONTEXT, AttentionTable, fit_decode_attention

    by_dtype: dict[str, list[np.ndarray]] = {}
    for name, grid in sorted(tables.generation_attention.items()):
        kv_dtype = name.rsplit("_", 1)[1]
        keep, held = _halves(grid.context.size)
        fit = fit_decode_attention(AttentionTable(grid.batch, grid.context[keep], grid.latency_s[:, keep]))
        context = grid.context[held]
        use = context >= FIT_MIN_CONTEXT
        b, c = np.meshgrid(grid.batch, context[use], indexing="ij")
        truth = grid.latency_s[:, held][:, use]
        predicted = fit.time_s(b, b * c)
        record("decode_attention_fit", kv_dtype, truth, predicted)
        by_dtype.setdefault(kv_dtype, []).append((np.abs(predicted / truth - 1.0) * 100.0).ravel())
    return [
        {"op": "decode_attention_fit", "kind": k, "axis": "context", **_summary(np.concatenate(v))}
        for k, v in sorted(by_dtype.items())
    ]


def _phase_errors(grids, op: str, record) -> list[dict[str, Any]]:
    from radsim.spec.kernel_tables import AttentionTable

    by_dtype: dict[str, dict[str, list[np.ndarray]]] = {}
    for name, grid in sorted(grids.items()):
        kv_dtype = name.rsplit("_", 1)[1]
        for axis, axis_name in enumerate(("batch", "context")):
            keep, held = _halves(grid.latency_s.shape[axis])
            if not held.size:
                continue
            axes = [grid.batch, grid.context]
            kept = [a[keep] if i == axis else a for i, a in enumerate(axes)]
            sub = AttentionTable(kept[0], kept[1], np.take(grid.latency_s, keep, axis))
            b, c = np.meshgrid(*(a[held] if i == axis else a for i, a in enumerate(axes)), indexing="ij")
            truth = np.take(grid.latency_s, held, axis)
            predicted = sub.time_s(b, c)
            record(op, kv_dtype, truth, predicted)
            errors = np.abs(predicted / truth - 1.0).ravel() * 100.0
            by_dtype.setdefault(kv_dtype, {}).setdefault(axis_name, []).append(errors)
    rows = []
    for kv_dtype, axes_errors in sorted(by_dtype.items()):
        pooled = []
        for axis_name, errors in axes_errors.items():
            rows.append(
                {
                    "op": op,
                    "kind": kv_dtype,
                    "axis": axis_name,
                    **_summary(np.concatenate(errors)),
                }
            )
            pooled.extend(errors)
        rows.append({"op": op, "kind": kv_dtype, "axis": "all", **_summary(np.concatenate(pooled))})
    return rows


def format_errors(rows: list[dict[str, Any]], title: str) -> str:
    """A Markdown table of `held_out_errors`."""
    lines = [
        f"{title}",
        "",
        "| op | dtype / algorithm | held-out axis | points | median APE | p90 APE |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['kind']} | {r['axis']} | {r['points']} | {r['median_ape']:.1f}% | {r['p90_ape']:.1f}% |"
        )
    return "\n".join(lines)


def error_figure(samples: dict[tuple[str, str], list], title: str):
    """Predicted (interpolated from the other half) against measured latency of every held-out table
    point, log-log, one series per op and dtype or algorithm (at most `PLOT_POINTS` each, drawn
    evenly), with the y = x line and +-10% bands."""
    import plotly.graph_objects as go

    fig = go.Figure()
    low, high = np.inf, 0.0
    for (op, kind), parts in sorted(samples.items()):
        truth = np.concatenate([t for t, _ in parts])
        predicted = np.concatenate([p for _, p in parts])
        ok = np.isfinite(predicted) & (truth > 0)
        truth, predicted = truth[ok], predicted[ok]
        if not truth.size:
            continue
        pick = np.unique(np.linspace(0, truth.size - 1, min(PLOT_POINTS, truth.size)).astype(int))
        median = float(np.median(np.abs(predicted / truth - 1.0)) * 100.0)
        fig.add_trace(
            go.Scattergl(
                x=truth[pick] * 1e6,
                y=predicted[pick] * 1e6,
                mode="markers",
                marker=dict(size=4, opacity=0.5),
                name=f"{op} {kind} (median {median:.1f}%, {truth.size} points)",
            )
        )
        low, high = min(low, float(truth.min())), max(high, float(truth.max()))
    if high > 0:
        line = np.array([low, high]) * 1e6
        for factor, dash, label in ((1.0, "solid", "y = x"), (1.1, "dot", "+10%"), (0.9, "dot", "-10%")):
            fig.add_trace(
                go.Scatter(
                    x=line, y=line * factor, mode="lines", name=label,
                    line=dict(color="black", dash=dash, width=1), showlegend=factor == 1.0,
                )
            )  # fmt: skip
    fig.update_layout(
        title=title,
        xaxis=dict(title="measured latency (us)", type="log"),
        yaxis=dict(title="interpolated from the other half (us)", type="log"),
        template="plotly_white",
        legend=dict(font=dict(size=10)),
        height=650,
    )
    return fig
