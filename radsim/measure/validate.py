"""Validation: the cost model's prediction of every measured configuration, and its error.

Each configuration of a measurement table (`radsim.measure.harness`) is priced from the table alone: its
slot rows carry the per-sequence new tokens, held KV entries and visitors of every launch, which
`radsim.cost.layer.layer_cost` prices; `radsim.cost.iteration.head_cost` prices the embedding, final norm, LM head
and sampling; `radsim.cost.memory` gives weights, KV cache and activations. The error of a configuration
is |predicted - measured| / measured. Configurations are split once, per (model, phase), by
a checkerboard over (batch, tokens): the calibration half may tune the hardware model, the validation
half never does, and a summary over validation configurations is the one reported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from radsim.cost.iteration import head_cost
from radsim.cost.layer import Execution, RoutedBatch, layer_cost
from radsim.cost.memory import activation_bytes, kv_entry_bytes, weights_bytes
from radsim.errors import ConfigError
from radsim.files import atomic_write, read_text
from radsim.measure.specs import SPECS, spec_arch
from radsim.spec.hardware import Hardware

SPLITS = ("calibrate", "validate")


def _ints(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.split()], dtype=np.float64)


def group_configs(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """Rows of a measurement table by configuration id, in table order."""
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        out[r["config_id"]].append(r)
    return dict(out)


def split_configs(configs: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    """'calibrate' or 'validate' per configuration: a checkerboard over (batch, tokens) per (model, phase).

    Both halves then span every batch size and every length, so validation tests interpolation, not
    an extrapolation the split itself would impose.
    """
    groups: dict[tuple[str, str], list[tuple[int, int, str]]] = defaultdict(list)
    for cid, rows in configs.items():
        r = rows[0]
        groups[(r["model"], r["phase"])].append((int(r["batch"]), int(r["tokens"]), cid))
    split = {}
    for members in groups.values():
        batches = sorted({b for b, _, _ in members})
        tokens = sorted({t for _, t, _ in members})
        for b, t, cid in members:
            split[cid] = SPLITS[(batches.index(b) + tokens.index(t)) % 2]
    return split


def predict_config(hw: Hardware, rows: list[dict[str, str]]) -> dict[str, Any]:
    """Predicted step, per-slot, embedding and head times and peak memory of one configuration."""
    first = rows[0]
    spec = SPECS[first["model"]]
    arch = spec_arch(spec)
    routed = first["kind"] == "radial"
    batch = int(first["batch"])
    slots: list[float] = []
    kv_entries = 0.0
    new_total = 0.0
    for r in rows:
        if r["scope"] != "slot":
            continue
        exe = Execution(first["dtype"], 1, r["kv_policy"], routed=routed)
        new, held, vis = _ints(r["new_tokens"]), _ints(r["context_tokens"]), _ints(r["visiting_tokens"])
        cost = layer_cost(hw, arch, exe, RoutedBatch.of(new, held, vis))
        slots.append(float(cost.time_s.sum()))
        kv_rows = new if r["kv_policy"] == "copy" else vis
        kv_entries += float((held + kv_rows).sum())
        new_total = float(new.sum())
    exe = Execution(first["dtype"], 1, "none", routed=routed)
    head = head_cost(hw, arch, exe, new_total, float(batch))
    embed = float(head.op("embed"))
    rest = float(head.time_s.sum()) - embed
    weights = weights_bytes(arch, exe)
    kv = kv_entries * kv_entry_bytes(arch, exe)
    act = activation_bytes(arch, exe, new_total, batch)
    return dict(
        time_s=sum(slots) + embed + rest,
        slots=slots,
        embed_s=embed,
        head_s=rest,
        peak_memory_bytes=weights + kv + act,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        activation_bytes=act,
    )


def ape(predicted: float, measured: float) -> float:
    """Absolute percentage error."""
    return abs(predicted - measured) / measured * 100.0


def error_table(
    hw: Hardware, rows: list[dict[str, str]], split: dict[str, str] | str | None = None
) -> list[dict[str, Any]]:
    """One row per configuration: measured and predicted step time and memory, their errors, split.

    `split` is the calibration's record: a split per configuration, one of `SPLITS` for every
    configuration ('validate' when the calibration read no step timing), or None for the checkerboard.
    """
    configs = group_configs(rows)
    if isinstance(split, str):
        split = dict.fromkeys(configs, split)
    split = split or split_configs(configs)
    unsplit = sorted(set(configs) - set(split))
    if unsplit:
        raise ConfigError(
            f"{len(unsplit)} configuration(s) of the table, e.g. {unsplit[0]!r}, are not in the split the "
            "calibration recorded; validate the table the hardware file was calibrated with, or recalibrate"
        )
    out = []
    for cid, group in configs.items():
        step = next(r for r in group if r["scope"] == "step")
        pred = predict_config(hw, group)
        measured_t = float(step["time_s"])
        measured_m = float(step["peak_memory_bytes"])
        slot_rows = [r for r in group if r["scope"] == "slot"]
        layer_err = [ape(p, float(r["time_s"])) for p, r in zip(pred["slots"], slot_rows, strict=True)]
        out.append(
            dict(
                config_id=cid,
                model=step["model"],
                kind=step["kind"],
                phase=step["phase"],
                batch=int(step["batch"]),
                tokens=int(step["tokens"]),
                split=split[cid],
                measured_s=measured_t,
                predicted_s=pred["time_s"],
                time_ape=ape(pred["time_s"], measured_t),
                spread=(float(step["time_s_p90"]) - float(step["time_s_p10"])) / measured_t * 100.0,
                layer_ape_median=float(np.median(layer_err)) if layer_err else float("nan"),
                measured_memory_bytes=measured_m,
                predicted_memory_bytes=pred["peak_memory_bytes"],
                memory_ape=ape(pred["peak_memory_bytes"], measured_m),
                measured_activation_bytes=float(step["activation_bytes"]),
                predicted_activation_bytes=pred["activation_bytes"],
            )
        )
    return out


def summary(table: list[dict[str, Any]], which: str = "validate") -> list[dict[str, Any]]:
    """Median and p90 APE of step time, per-layer time and peak memory per (phase, kind)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in table:
        if r["split"] == which:
            groups[(r["phase"], r["kind"])].append(r)
            groups[("all", "all")].append(r)
    out = []
    for (phase, kind), rs in sorted(groups.items()):
        t = np.array([r["time_ape"] for r in rs])
        m = np.array([r["memory_ape"] for r in rs])
        layer = np.array([r["layer_ape_median"] for r in rs])
        out.append(
            dict(
                phase=phase,
                kind=kind,
                configs=len(rs),
                time_ape_median=float(np.median(t)),
                time_ape_p90=float(np.percentile(t, 90)),
                layer_ape_median=float(np.nanmedian(layer)),
                memory_ape_median=float(np.median(m)),
                memory_ape_p90=float(np.percentile(m, 90)),
            )
        )
    return out


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the summary."""
    lines = [
        "| phase | model kind | configs | step time median APE | p90 APE | per-layer median APE "
        "| peak memory median APE | p90 APE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['kind']} | {r['configs']} | {r['time_ape_median']:.1f}% | "
            f"{r['time_ape_p90']:.1f}% | {r['layer_ape_median']:.1f}% | "
            f"{r['memory_ape_median']:.2f}% | {r['memory_ape_p90']:.2f}% |"
        )
    return "\n".join(lines)


def format_table(table: list[dict[str, Any]]) -> str:
    """A Markdown table of every configuration."""
    lines = [
        "| configuration | split | measured ms | predicted ms | APE | spread p10-p90 | "
        "memory MB measured | predicted | APE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['config_id']} | {r['split']} | {r['measured_s'] * 1e3:.3f} | {r['predicted_s'] * 1e3:.3f} | "
            f"{r['time_ape']:.1f}% | {r['spread']:.1f}% | {r['measured_memory_bytes'] / 1e6:.2f} | "
            f"{r['predicted_memory_bytes'] / 1e6:.2f} | {r['memory_ape']:.2f}% |"
        )
    return "\n".join(lines)


def plot(table: list[dict[str, Any]], out_stem: Path) -> list[Path]:
    """Predicted vs measured step time (log-log), HTML always and PNG where kaleido can render."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for split in SPLITS:
        for phase, symbol in (("prefill", "circle"), ("decode", "diamond")):
            rs = [r for r in table if r["split"] == split and r["phase"] == phase]
            if not rs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[r["measured_s"] * 1e3 for r in rs],
                    y=[r["predicted_s"] * 1e3 for r in rs],
                    mode="markers",
                    name=f"{phase} ({split})",
                    text=[r["config_id"] for r in rs],
                    marker=dict(symbol=symbol, size=9, opacity=1.0 if split == "validate" else 0.4),
                )
            )
    lo = min(min(r["measured_s"], r["predicted_s"]) for r in table) * 1e3 * 0.8
    hi = max(max(r["measured_s"], r["predicted_s"]) for r in table) * 1e3 * 1.25
    for f, dash in ((1.0, "solid"), (1.1, "dot"), (1 / 1.1, "dot")):
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo * f, hi * f],
                mode="lines",
                showlegend=f == 1.0,
                name="y = x (dotted: +-10%)",
                line=dict(color="grey", dash=dash),
            )
        )
    fig.update_layout(
        title="radsim cost model: predicted vs measured step time",
        xaxis=dict(type="log", title="measured (ms)"),
        yaxis=dict(type="log", title="predicted (ms)"),
        width=800,
        height=700,
    )
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".html")]
    atomic_write(  # stable div id across runs
        paths[0], lambda tmp: fig.write_html(tmp, include_plotlyjs="cdn", div_id="predicted-vs-measured")
    )
    try:
        atomic_write(out_stem.with_suffix(".png"), lambda tmp: fig.write_image(tmp, format="png"))
        paths.append(out_stem.with_suffix(".png"))
    except Exception as exc:  # noqa: BLE001 - kaleido needs a browser; HTML is the plot then
        print(f"radsim validate: PNG not written ({type(exc).__name__}: {exc}); HTML only")
    return paths


def load_split(path: Path) -> dict[str, str] | str | None:
    """The split a calibration recorded, if any (ConfigError naming the file when it is corrupt).

    A calibration from a campaign's microbenchmarks records 'validate': every configuration is held out.
    """
    if not path.exists():
        return None
    try:
        split = json.loads(read_text(path, "calibration record")).get("split")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a calibration record (JSON with a 'split' object): {exc}") from exc
    if split is None or split in SPLITS:
        return split
    if not isinstance(split, dict) or not all(v in SPLITS for v in split.values()):
        raise ConfigError(
            f"{path}: 'split' must map configuration ids to {' or '.join(SPLITS)}, or be one of them for all"
        )
    return split
