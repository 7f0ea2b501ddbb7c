"""Plots of a study, built from its result table alone (plotly), written as HTML and PNG.

Each figure function takes the table (`radsim.study.sweep.read_results`) and returns a plotly figure, or
None when the table holds nothing it can draw (a study without simulations has no power over time).
Units are converted for display here: seconds to milliseconds, bytes to GB, FLOP/s to TFLOP/s.
Lines are grouped by the inputs that vary in the table, so a legend names only what differs, and
every marker's hover text lists the point's inputs.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from radsim.files import atomic_write
from radsim.study.load import INPUTS

#: Inputs that make up the routes label (shown once, as `routes`).
_ROUTE_KEYS = ("depth_fraction", "visited_layers", "trace", "reuse_prob")
_NOT_SERIES = {"point_id", "study", "seed", *_ROUTE_KEYS}
_TEMPLATE = "plotly_white"
_SIZE = {"width": 1100, "height": 620}
_SYMBOLS = {"prefill": "circle", "decode": "diamond"}
_PANELS_PER_ROW = 5
_MAX_LINES = 24  # more lines than this in one panel cannot be told apart


def _log_ticks(values: pd.Series | np.ndarray, unit: str = "") -> dict[str, list]:
    """Ticks of a log axis at 1, 2 and 5 times each power of ten inside the data (finer where the data
    spans less than a factor of four), every label whole (plotly's own minor labels drop the decade:
    "5, 2, 1, 5, 2, 0.1"); at least two ticks."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return {}
    low, high = np.floor(np.log10(v.min())), np.ceil(np.log10(v.max()))
    steps = (1, 2, 5) if v.max() > 4 * v.min() else (1, 1.5, 2, 3, 4, 5, 6, 8)  # a short span: finer
    ticks = [float(f"{m * 10.0**e:.3g}") for e in np.arange(low, high + 1) for m in steps]
    inside = [x for x in ticks if v.min() / 1.5 <= x <= v.max() * 1.5] or ticks
    if len(inside) < 2:
        inside = sorted({*inside, *[x for x in ticks if x > inside[-1]][:1]})
    return {"tickvals": inside, "ticktext": [f"{x:g}{unit}" for x in inside]}


def _ratio_ticks(values: pd.Series | np.ndarray) -> dict[str, list]:
    """Ticks of a log ratio axis ("0.5x", "1x", "2x"): 1, 2 and 5 times each power of ten, and finer
    steps (0.8x, 0.9x, 1.1x, 1.25x...) when the data spans less than a factor of three; 1x always."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return {}
    low, high = min(v.min(), 1.0) / 1.15, max(v.max(), 1.0) * 1.15
    coarse = [float(f"{m * 10.0**e:.3g}") for e in range(-3, 4) for m in (1, 2, 3, 5)]
    fine = [0.6, 0.7, 0.8, 0.9, 1.1, 1.25, 1.5, 1.75, 4]
    ticks = [x for x in coarse if low <= x <= high]
    if high / low >= 3 and len(ticks) < 3:
        fine = [0.7, 1.5]
    if high / low < 3 or len(ticks) < 3:
        ticks = sorted({*ticks, *[x for x in fine if low <= x <= high]})
    return {"tickvals": ticks, "ticktext": [f"{x:g}x" for x in ticks]}


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["error"] == ""]


#: What tells one model variant from another: a series keeps its colour across every plot of a study.
_IDENTITY = (
    *("label", "arch", "layers", "routes", "depth_distribution", "kv_policy", "dtype", "tp"),
    *("route_shape", "expert_launch", "execution"),
)
#: Execution policies are also told apart by dash and width, so that series that coincide stay visible.
_LINES = {"layer_major": {"dash": "solid", "width": 3.5}, "step_sync": {"dash": "dash", "width": 2}}
_MARKERS = {"layer_major": "", "step_sync": "-open"}


class _Styles:
    """One colour per model variant (the identity inputs that vary in the whole table), shared by every
    plot of the study: each figure builds it from the full table before filtering its rows."""

    def __init__(self, table: pd.DataFrame) -> None:
        rows = _ok(table)
        keys = [k for k in _IDENTITY if k in rows and rows[k].astype(str).nunique() > 1]
        self.keys = [k for k in keys if k not in _LABELLED] if "label" in keys else keys
        palette = _palette()
        self.colors = {key: next(palette) for key in dict.fromkeys(map(self._key, self._records(rows)))}

    def _records(self, rows: pd.DataFrame) -> list[tuple]:
        return list(rows[self.keys].astype(str).itertuples(index=False)) if self.keys else [()] * len(rows)

    def _key(self, record: tuple) -> tuple:
        return tuple(record)

    def color(self, rows: pd.DataFrame) -> str:
        """The colour of the series these rows belong to (their first row decides)."""
        records = self._records(rows.iloc[:1])
        return self.colors.get(self._key(records[0]), "#7f7f7f") if records else "#7f7f7f"

    def line(self, rows: pd.DataFrame) -> dict:
        execution = str(rows["execution"].iloc[0]) if "execution" in rows else "layer_major"
        return {"color": self.color(rows), **_LINES.get(execution, _LINES["layer_major"])}

    def marker(self, rows: pd.DataFrame, **extra) -> dict:
        """Circles for static estimates, squares for simulations; open under step-synchronous execution."""
        execution = str(rows["execution"].iloc[0]) if "execution" in rows else "layer_major"
        command = str(rows["command"].iloc[0]) if "command" in rows else "estimate"
        symbol = "circle" if command == "estimate" else "square"
        return {"color": self.color(rows), "symbol": symbol + _MARKERS.get(execution, ""), **extra}


#: What a study's `label` stands for: when labels vary, they name the series instead of these.
_LABELLED = {"arch", "layers", "dtype", "tp", "routes", "kv_policy", "route_shape", "expert_launch"}


def _varying(table: pd.DataFrame, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Inputs (and the routes label) that take more than one value in `table`."""
    keys = [k for k in (*INPUTS, "routes") if k not in _NOT_SERIES and k not in exclude and k in table]
    keys = [k for k in keys if table[k].astype(str).nunique() > 1]
    return [k for k in keys if k not in _LABELLED] if "label" in keys else keys


def _reads(row: pd.Series, key: str) -> bool:
    """Whether the row's command reads the input (an unread input only shows its default)."""
    return key not in INPUTS or "command" not in row or row["command"] in INPUTS[key].commands


def _label(row: pd.Series, keys: list[str]) -> str:
    plain = ("routes", "command", "execution", "hw", "arch", "label")
    parts = [str(row[k]) if k in plain else f"{k} {row[k]}" for k in keys if _reads(row, k)]
    return ", ".join(parts) or str(row.get("routes", "all points"))


def _hover(table: pd.DataFrame) -> pd.Series:
    """Hover text per row: every input that varies in the table, plus the device and model."""
    keys = ["hw", "arch", *[k for k in _varying(table) if k not in ("hw", "arch")]]

    def source(r: pd.Series) -> str:
        text = str(r.get("routes_source") or "")
        return f"<br>routes: {_wrap(text, 70)}" if text and text != "nan" else ""

    return table.apply(
        lambda r: (
            "<br>".join(f"{k} = {r[k]}" for k in keys if _reads(r, k))
            + source(r)
            + f"<br>point {r['point_id']}"
        ),
        axis=1,
    )


def _series(table: pd.DataFrame, exclude: set[str]):
    """(label, rows) per combination of the varying inputs other than `exclude`."""
    keys = _varying(table, exclude)
    labels = table.apply(lambda r: _label(r, keys), axis=1) if len(table) else pd.Series(dtype=str)
    for label in dict.fromkeys(labels):
        yield label, table[labels == label]


def _facets(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One facet per device when the table compares devices."""
    if table["hw"].nunique() <= 1:
        return [("", table)]
    return [(hw, table[table["hw"] == hw]) for hw in dict.fromkeys(table["hw"])]


def _is_static(rows: pd.DataFrame) -> pd.Series:
    """Points that are one static batch: every estimate, and simulations of arrival 'batch'."""
    return (rows["command"] == "estimate") | (rows["arrival"] == "batch")


def _static(table: pd.DataFrame) -> pd.DataFrame:
    ok = _ok(table)
    return ok[_is_static(ok) & ok["tpot_s"].notna()]


def _time_cost_grid(
    facets, cost: str = "cost", shared_xaxes: bool = True, time: str = "time per output token"
) -> go.Figure:
    """Two columns (a time, cost) and a row per device."""
    return make_subplots(
        rows=len(facets),
        cols=2,
        shared_xaxes=shared_xaxes,
        subplot_titles=[t for hw, _ in facets for t in (f"{time} {hw}", f"{cost} {hw}")],
    )


def latency_cost_vs_batch(table: pd.DataFrame) -> go.Figure | None:
    """Time per output token and cost per million output tokens against batch size, per routes."""
    rows = _static(table)
    if rows.empty:
        return None
    facets = _facets(rows)
    fig = _time_cost_grid(facets)
    styles = _Styles(table)
    for i, (_, facet) in enumerate(facets, start=1):
        for label, s in _series(facet, {"batch", "hw"}):
            s = s.sort_values("batch")
            for col, y in ((1, s["tpot_s"] * 1e3), (2, s["cost_usd_per_Mtok"])):
                fig.add_trace(
                    go.Scatter(
                        x=s["batch"],
                        y=y,
                        mode="lines+markers",
                        name=label,
                        legendgroup=label,
                        showlegend=i == 1 and col == 1 and label not in fig_names(fig),
                        line=styles.line(s),
                        marker=styles.marker(s, size=7),
                        text=_hover(s),
                        hovertemplate="%{text}<br>batch %{x}<br>%{y:.4g}<extra></extra>",
                    ),
                    row=i,
                    col=col,
                )
        fig.update_yaxes(
            title_text="time per output token (ms)",
            type="log",
            row=i,
            col=1,
            **_log_ticks(facet["tpot_s"] * 1e3),
        )
        fig.update_yaxes(
            title_text="cost (USD per 1M output tokens)",
            type="log",
            row=i,
            col=2,
            **_log_ticks(facet["cost_usd_per_Mtok"]),
        )
    fig.update_xaxes(type="log", dtick=np.log10(2))
    fig.update_xaxes(title_text="batch size (sequences)", row=len(facets))
    return _layout(fig, "Latency and cost against batch size, per dynamic depth", len(facets))


def _pair_trace(fig, styles, rows, label, cell, x, y, size, text, hovertemplate, customdata=None) -> None:
    """One series in a grid of panels: its style from `rows`, in the legend once (first column)."""
    fig.add_trace(
        go.Scatter(
            x=x, y=y, mode="lines+markers", name=label, legendgroup=label,
            showlegend=cell[1] == 1 and label not in fig_names(fig),
            line=styles.line(rows), marker=styles.marker(rows, size=size),
            text=text, customdata=customdata, hovertemplate=hovertemplate,
        ),
        row=cell[0],
        col=cell[1],
    )  # fmt: skip


def fig_names(fig: go.Figure) -> set[str]:
    """Names of the traces already shown in the legend."""
    return {t.name for t in fig.data if t.showlegend is not False}


def savings_vs_batch(table: pd.DataFrame) -> go.Figure | None:
    """Saving of each routed point over the sequential model (same inputs otherwise) against batch:
    in the time of one decode step (where memory-bound decode hides or shows the skipped layers)
    and in cost per output token."""
    rows = _static(table)
    rows = rows[rows["decode_step_s"].notna()]
    match = [
        k
        for k in (*INPUTS, "num_layers")
        if k in rows and k not in {*_ROUTE_KEYS, "kv_policy", "execution", "route_shape", "label"}
    ]
    base = rows[(rows["routes"] == "sequential") & (rows["execution"] == "layer_major")]
    routed = rows[rows["routes"] != "sequential"]
    if base.empty or routed.empty:
        return None
    keyed = base[match + ["decode_step_s", "cost_usd_per_Mtok"]].drop_duplicates(match)
    both = routed.merge(keyed, on=match, suffixes=("", "_sequential"))
    if both.empty:
        return None
    both["step_ratio"] = both["decode_step_s_sequential"] / both["decode_step_s"]
    both["cost_ratio"] = both["cost_usd_per_Mtok_sequential"] / both["cost_usd_per_Mtok"]
    facets = _facets(both)
    fig = _time_cost_grid(facets, cost="cost per token", time="decode step")
    styles = _Styles(table)
    for i, (_, facet) in enumerate(facets, start=1):
        for label, s in _series(facet, {"batch", "hw"}):
            s = s.sort_values("batch")
            for col, y in ((1, s["step_ratio"]), (2, s["cost_ratio"])):
                _pair_trace(
                    fig, styles, s, label, (i, col), s["batch"], y, 7, _hover(s),
                    "%{text}<br>batch %{x}<br>%{y:.3g}x, saving %{customdata:.1f}%<extra></extra>",
                    customdata=(1 - 1 / y) * 100,
                )  # fmt: skip
            for col in (1, 2):
                fig.add_hline(y=1, line={"color": "grey", "width": 1}, row=i, col=col)
        ratios = pd.concat([facet["step_ratio"], facet["cost_ratio"]])
        fig.update_yaxes(
            title_text="sequential / dynamic depth (x, log)", type="log", row=i, **_ratio_ticks(ratios)
        )
    fig.update_xaxes(type="log", dtick=np.log10(2))
    fig.update_xaxes(title_text="batch size (sequences)", row=len(facets))
    return _layout(
        fig, "Saving of dynamic depth over the sequential model (above 1: cheaper or faster)", len(facets)
    )


def study_slo(table: pd.DataFrame) -> tuple[float, float] | None:
    """The (TTFT, TPOT) SLOs of the study's capacity points, when they all share one pair."""
    rows = _ok(table)
    if "command" not in rows or "slo_ttft_s" not in rows:
        return None
    rows = rows[rows["command"] == "capacity"]
    pairs = set(zip(rows["slo_ttft_s"], rows["slo_tpot_s"], strict=True))
    return (float(next(iter(pairs))[0]), float(next(iter(pairs))[1])) if len(pairs) == 1 else None


def pareto_front(table: pd.DataFrame, slo: tuple[float, float] | None = None) -> go.Figure | None:
    """Every static point's time per output token against its cost, labelled with its batch size, and
    the points no other point beats on both. With SLOs (TTFT, TPOT; by default the study's capacity
    SLOs), the points that miss them are faded and the front is drawn among those that meet them."""
    rows = _static(table)
    rows = rows[rows["cost_usd_per_Mtok"].notna()]
    if rows.empty:
        return None
    slo = slo if slo is not None else study_slo(table)
    meets = (
        (rows["ttft_s"] <= slo[0]) & (rows["tpot_s"] <= slo[1])
        if slo is not None
        else pd.Series(True, index=rows.index)
    )
    fig = go.Figure()
    styles = _Styles(table)
    shown = {"hw", "arch", "layers", "dtype", "tp", "routes", "execution", "label"}
    for label, s in _series(rows, set(INPUTS) - shown):
        for ok, part in ((True, s[meets[s.index]]), (False, s[~meets[s.index]])):
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["tpot_s"] * 1e3,
                    y=part["cost_usd_per_Mtok"],
                    mode="markers+text",
                    name=label,
                    legendgroup=label,
                    showlegend=ok or bool(meets[s.index].sum() == 0),
                    marker=styles.marker(part, size=9, opacity=0.8 if ok else 0.25),
                    text=[str(b) for b in part["batch"]],
                    textposition="top center",
                    textfont={"size": 9, "color": "#444" if ok else "#bbb"},
                    hovertext=_hover(part),
                    hovertemplate="%{hovertext}<br>%{x:.3g} ms, $%{y:.3g} per 1M tokens<extra></extra>",
                )
            )
    met = rows[meets]
    if len(met):
        front = _front(met["tpot_s"].to_numpy(), met["cost_usd_per_Mtok"].to_numpy())
        f = met.iloc[front].sort_values("tpot_s")
        fig.add_trace(
            go.Scatter(
                x=f["tpot_s"] * 1e3,
                y=f["cost_usd_per_Mtok"],
                mode="lines+markers",
                name="Pareto front" + (" (meeting the SLOs)" if slo is not None else ""),
                line={"color": "black", "shape": "hv", "width": 1.5},
                marker={"symbol": "circle-open", "size": 16, "color": "black"},
                text=_hover(f),
                hovertemplate="%{text}<extra>Pareto front</extra>",
            )
        )
    fig.update_xaxes(type="log", title_text="time per output token (ms)", **_log_ticks(rows["tpot_s"] * 1e3))
    fig.update_yaxes(
        type="log", title_text="cost (USD per 1M output tokens)", **_log_ticks(rows["cost_usd_per_Mtok"])
    )
    title = "Latency against cost of static batches (label: batch size) and the Pareto front"
    if slo is not None:
        title += f"<br><sub>faded: misses TTFT <= {slo[0]:g} s or TPOT <= {slo[1] * 1e3:g} ms (means of the batch)</sub>"
    return _layout(fig, title, 1)


def _front(latency: np.ndarray, cost: np.ndarray) -> list[int]:
    """Indices of the points that no other point beats on both latency and cost."""
    order = np.lexsort((cost, latency))
    front, best = [], np.inf
    for i in order:
        if cost[i] < best:
            front.append(int(i))
            best = cost[i]
    return front


def roofline(table: pd.DataFrame) -> go.Figure | None:
    """Each layer's operating point (prefill chunk and decode step) under the device's roofline."""
    rows = _ok(table)
    rows = rows[rows["roofline_json"].fillna("") != ""] if "roofline_json" in rows else rows.iloc[:0]
    if rows.empty:
        return None
    facets = _facets(rows)
    fig = make_subplots(
        rows=1, cols=len(facets), subplot_titles=[hw for hw, _ in facets] if len(facets) > 1 else None
    )
    hover = _hover(rows)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for c, (_, facet) in enumerate(facets, start=1):
        points = _roofline_points(facet, hover)
        xs.append(points["intensity"].to_numpy())
        ys.append(points["flops_per_s"].to_numpy() / 1e12)
        for phase, p in points.groupby("phase", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=p["intensity"],
                    y=p["flops_per_s"] / 1e12,
                    mode="markers",
                    name=phase,
                    legendgroup=phase,
                    showlegend=c == 1,
                    text=p["text"],
                    marker={
                        "symbol": _SYMBOLS[phase],
                        "size": 7,
                        "opacity": 0.7,
                        "color": np.log2(p["batch"]),
                        "colorscale": "Viridis",
                        "cmin": 0,
                        "cmax": np.log2(rows["batch"].max()) or 1,
                        "colorbar": {
                            "title": "batch",
                            "tickvals": list(range(0, 9)),
                            "ticktext": [str(2**i) for i in range(9)],
                        },
                    },
                    hovertemplate="%{text}<br>%{x:.3g} FLOP/byte, %{y:.3g} TFLOP/s<extra>%{fullData.name}</extra>",
                ),
                row=1,
                col=c,
            )
        first = facet.iloc[0]
        ai = np.logspace(
            np.log10(max(points["intensity"].min() / 2, 0.1)), np.log10(points["intensity"].max() * 4), 200
        )
        xs.append(ai)
        ys.append(np.array([first["peak_flops"] / 1e12]))
        for name, peak, bw, dash in (
            ("peak", first["peak_flops"], first["memory_bandwidth_Bps"], "solid"),
            ("achievable", first["achievable_flops"], first["achievable_Bps"], "dash"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=ai,
                    y=np.minimum(peak, ai * bw) / 1e12,
                    mode="lines",
                    name=f"roof ({name})",
                    legendgroup=name,
                    showlegend=c == 1,
                    line={"color": "grey", "dash": dash},
                    hovertemplate=f"{name}: %{{y:.3g}} TFLOP/s at %{{x:.3g}} FLOP/byte<extra></extra>",
                ),
                row=1,
                col=c,
            )
    wide = len(facets) > 2
    fig.update_xaxes(
        type="log",
        title_text="FLOP per DRAM byte" if wide else "arithmetic intensity (FLOP per DRAM byte)",
        **_log_ticks(np.concatenate(xs)),
    )
    fig.update_yaxes(type="log", **_log_ticks(np.concatenate(ys)))
    fig.update_yaxes(title_text="achieved throughput (TFLOP/s)", col=1)
    return _layout(fig, "Roofline: each layer's operating point in a prefill chunk and a decode step", 1)


def _roofline_points(rows: pd.DataFrame, hover: pd.Series) -> pd.DataFrame:
    parts = []
    for idx, row in rows.iterrows():
        data = json.loads(row["roofline_json"])
        for phase in ("prefill", "decode"):
            d = {k: np.asarray(v, dtype=np.float64) for k, v in data[phase].items()}
            text = [f"{hover[idx]}<br>{phase}, layer {int(layer)}" for layer in d["layer"]]
            parts.append(
                pd.DataFrame(
                    {
                        "phase": phase,
                        "intensity": d["flops"] / d["bytes"],
                        "flops_per_s": d["flops"] / d["time_s"],
                        "batch": row["batch"],
                        "text": text,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def memory_breakdown(table: pd.DataFrame) -> go.Figure | None:
    """Weights, KV cache and activations per device for each static batch, against the capacity."""
    rows = _ok(table)
    rows = rows[_is_static(rows)] if _is_static(rows).any() else rows
    if rows.empty or "weights_bytes" not in rows:
        return None
    keys = _varying(rows, {"batch", "command", "execution", "kv_policy"}) or ["routes"]
    rows = rows.drop_duplicates([*keys, "batch"])
    groups = list(_series(rows, {"batch", "command", "execution", "kv_policy"}))
    cols = min(len(groups), _PANELS_PER_ROW)
    nrows = -(-len(groups) // cols)
    fig = make_subplots(
        rows=nrows,
        cols=cols,
        shared_yaxes=True,
        horizontal_spacing=0.01,
        vertical_spacing=0.12,
        subplot_titles=[_wrap(label) for label, _ in groups],
    )
    parts = (
        ("weights_bytes", "weights", "#4c72b0"),
        ("kv_cache_bytes", "KV cache", "#dd8452"),
        ("activation_bytes", "activations", "#55a868"),
    )
    for n, (_, g) in enumerate(groups):
        r, c = n // cols + 1, n % cols + 1
        g = g.sort_values("batch")
        hover = _hover(g)
        for column, name, color in parts:
            fig.add_trace(
                go.Bar(
                    x=[str(b) for b in g["batch"]],
                    y=g[column] / 1e9,
                    name=name,
                    legendgroup=name,
                    showlegend=n == 0,
                    marker={"color": color},
                    text=hover,
                    textposition="none",
                    hovertemplate="%{text}<br>" + name + " %{y:.3g} GB<extra></extra>",
                ),
                row=r,
                col=c,
            )
        capacity = g["memory_capacity_bytes"].iloc[0] / 1e9
        fig.add_hline(
            y=capacity,
            line={"color": "firebrick", "dash": "dash"},
            row=r,
            col=c,
            annotation_text=f"{capacity:.0f} GB",
            annotation_position="top left",
            annotation_font={"color": "firebrick", "size": 10},
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="GB per device", col=1)
    fig.update_xaxes(tickangle=-90, tickfont={"size": 10}, type="category")
    fig.update_xaxes(title_text="batch size (sequences)", row=nrows)
    fig.update_annotations(font_size=11)
    title = "Memory per device (GB): weights, KV cache (peak) and activations, against the device's memory"
    return _layout(fig, title, nrows)


def _wrap(text: str, width: int = 22) -> str:
    """Break a long panel title on spaces and hyphens so that neighbouring titles do not overlap."""
    lines, line = [], ""
    for word in text.replace("-", "- ").split(" "):
        if line and len(line) + len(word) > width:
            lines.append(line.rstrip())
            line = ""
        line += word + ("" if word.endswith("-") else " ")
    return "<br>".join([*lines, line.rstrip()])


def power_over_time(table: pd.DataFrame) -> go.Figure | None:
    """Power of all devices against time for the simulated points (serving runs if the study has any)."""
    rows = _ok(table)
    if "power_timeline_json" not in rows:
        return None
    rows = rows[rows["power_timeline_json"].fillna("") != ""]
    if (~_is_static(rows)).any():
        rows = rows[~_is_static(rows)]
    elif len(rows) > _MAX_LINES:  # static batches only, too many to tell apart: the largest batch
        rows = rows[rows["batch"] == rows["batch"].max()]
    if rows.empty:
        return None
    fig = go.Figure()
    styles = _Styles(table)
    hover = _hover(rows)
    keys = _varying(rows, {"rate_per_s", "command"})
    for idx, row in rows.iterrows():
        data = json.loads(row["power_timeline_json"])
        at_capacity = row.get("command") == "capacity"
        rate = row["max_rate_per_s"] if at_capacity else row["rate_per_s"]
        how = "at capacity, " if at_capacity else ""
        label = (
            f"{how}{rate:.3g} requests/s, {_label(row, keys)}"
            if not _is_static(rows.loc[[idx]]).iloc[0]
            else _label(row, keys)
        )
        fig.add_trace(
            go.Scatter(
                x=data["t_s"],
                y=data["power_W"],
                mode="lines",
                name=label,
                line={
                    "color": styles.color(rows.loc[[idx]]),
                    "shape": "hv",
                    "width": 2,
                    "dash": "dot" if at_capacity else "solid",
                },
                text=[hover[idx]] * len(data["t_s"]),
                hovertemplate="%{text}<br>%{x:.3g} s: %{y:.0f} W<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="time since the first arrival (s)")
    fig.update_yaxes(title_text="power, all devices (W)", rangemode="tozero")
    return _layout(fig, "Power over time (simulated serving)", 1)


def _labels(rows: pd.DataFrame, exclude: set[str]) -> list[str]:
    keys = _varying(rows, exclude)
    return [_label(r, keys) for _, r in rows.iterrows()]


def depth_distribution(table: pd.DataFrame) -> go.Figure | None:
    """Share of tokens by the number of layers they visit, per routes (trace or parametric depth)."""
    rows = _ok(table)
    if "depth_histogram_json" not in rows:
        return None
    rows = rows[rows["depth_histogram_json"].fillna("") != ""].drop_duplicates(
        ["routes", "num_layers", "depth_histogram_json"]
    )
    if rows.empty:
        return None
    fig = go.Figure()
    styles = _Styles(table)
    for idx, row in rows.iterrows():
        data = json.loads(row["depth_histogram_json"])
        name = f"{row['routes']} ({row['command']}, {int(row['num_layers'])} layers)"
        fig.add_trace(
            go.Bar(
                x=data["layers_visited"],
                y=np.asarray(data["token_share"]) * 100,
                name=name,
                marker={"color": styles.color(rows.loc[[idx]])},
                hovertemplate=f"{name}<br>%{{x}} layers: %{{y:.2f}}% of tokens<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", bargap=0.15)
    fig.update_xaxes(title_text="layers visited per token", dtick=2)
    fig.update_yaxes(title_text="share of tokens (%)")
    return _layout(fig, "Depth distribution: layers each token visits", 1)


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """Static-batch rows of a study whose grids carry labels (at least two of them)."""
    rows = _static(table)
    if "label" not in rows:
        return rows.iloc[:0]
    rows = rows[rows["label"].fillna("") != ""]
    return rows if rows["label"].nunique() > 1 else rows.iloc[:0]


def architectures(table: pd.DataFrame) -> go.Figure | None:
    """Time per output token and cost per labelled grid (architecture), grouped bars per batch size."""
    rows = _labelled(table)
    if rows.empty:
        return None
    facets = _facets(rows)
    fig = _time_cost_grid(facets, shared_xaxes=False)
    styles = _Styles(table)
    batches = sorted(rows["batch"].unique())
    for i, (_, facet) in enumerate(facets, start=1):
        for label in dict.fromkeys(rows["label"]):
            s = facet[facet["label"] == label].sort_values("batch")
            color = styles.color(s)
            columns = (s["tpot_s"] * 1e3, s["cost_usd_per_Mtok"])
            _bar_pair(fig, s["batch"].astype(str), columns, label, color, s, i, "batch %{x}<br>")
        fig.update_yaxes(title_text="time per output token (ms, log)", type="log", row=i, col=1)
        fig.update_yaxes(title_text="cost (USD per 1M output tokens, log)", type="log", row=i, col=2)
    order = {"categoryorder": "array", "categoryarray": [str(b) for b in batches]}
    fig.update_xaxes(**order)
    fig.update_xaxes(title_text="batch size (sequences)", row=len(facets))
    fig.update_layout(barmode="group", bargap=0.2, bargroupgap=0.05)
    return _layout(fig, "Architectures side by side: latency and cost per batch size", len(facets))


def architectures_relative(table: pd.DataFrame) -> go.Figure | None:
    """Each labelled grid's time per output token and cost over the first label's (the baseline)."""
    rows = _labelled(table)
    if rows.empty:
        return None
    base_label = rows["label"].iloc[0]
    match = [k for k in ("hw", "batch", "prompt_tokens", "output_tokens", "dtype", "tp") if k in rows]
    base = rows[rows["label"] == base_label][match + ["tpot_s", "cost_usd_per_Mtok"]].drop_duplicates(match)
    both = rows[rows["label"] != base_label].merge(base, on=match, suffixes=("", "_base"))
    if both.empty:
        return None
    both["tpot_ratio"] = both["tpot_s"] / both["tpot_s_base"]
    both["cost_ratio"] = both["cost_usd_per_Mtok"] / both["cost_usd_per_Mtok_base"]
    facets = _facets(both)
    fig = _time_cost_grid(facets)
    styles = _Styles(table)
    for i, (_, facet) in enumerate(facets, start=1):
        for label in dict.fromkeys(both["label"]):
            s = facet[facet["label"] == label].sort_values("batch")
            for col, y in ((1, s["tpot_ratio"]), (2, s["cost_ratio"])):
                fig.add_trace(
                    go.Scatter(
                        x=s["batch"],
                        y=y,
                        mode="lines+markers",
                        name=label,
                        legendgroup=label,
                        showlegend=i == 1 and col == 1,
                        line=styles.line(s),
                        marker=styles.marker(s, size=7),
                        text=_hover(s),
                        hovertemplate="%{text}<br>batch %{x}<br>%{y:.3g}x the baseline<extra></extra>",
                    ),
                    row=i,
                    col=col,
                )
            for col in (1, 2):
                fig.add_hline(y=1, line={"color": "grey", "width": 1}, row=i, col=col)
        ratios = pd.concat([facet["tpot_ratio"], facet["cost_ratio"]])
        fig.update_yaxes(title_text=f"over {base_label} (x, log)", type="log", row=i, **_ratio_ticks(ratios))
    fig.update_xaxes(type="log", dtick=np.log10(2))
    fig.update_xaxes(title_text="batch size (sequences)", row=len(facets))
    return _layout(fig, f"Relative to {base_label} (below 1: faster or cheaper)", len(facets))


def _bar_pair(
    fig: go.Figure, x, columns, label: str, color: str, rows: pd.DataFrame, row: int, where: str = ""
) -> None:
    """One series' bars in both columns of a facet row (time or rate left, cost right)."""
    for col, y in enumerate(columns, start=1):
        fig.add_trace(
            go.Bar(
                x=x,
                y=y,
                name=label,
                legendgroup=label,
                showlegend=row == 1 and col == 1,
                marker={"color": color},
                text=_hover(rows),
                textposition="none",
                hovertemplate=f"%{{text}}<br>{where}%{{y:.4g}}<extra></extra>",
            ),
            row=row,
            col=col,
        )


def capacity(table: pd.DataFrame) -> go.Figure | None:
    """Capacity under the SLOs (requests/s per replica) and the cost per token at that rate, per routes."""
    rows = _ok(table)
    rows = rows[rows["command"] == "capacity"] if "command" in rows else rows.iloc[:0]
    if rows.empty or "max_rate_per_s" not in rows:
        return None
    facets = _facets(rows)
    fig = make_subplots(
        rows=len(facets),
        cols=2,
        subplot_titles=[t for hw, _ in facets for t in (f"capacity {hw}", f"cost at capacity {hw}")],
    )
    styles = _Styles(table)
    for i, (_, facet) in enumerate(facets, start=1):
        for label, s in _series(facet, {"hw"}):
            color = styles.color(s)
            _bar_pair(fig, [label], (s["max_rate_per_s"], s["cost_usd_per_Mtok"]), label, color, s, i)
        fig.update_yaxes(title_text="requests/s per replica", row=i, col=1)
        fig.update_yaxes(title_text="cost (USD per 1M output tokens)", row=i, col=2)
    first = rows.iloc[0]
    slo = f"p{int(first['percentile'])} TTFT <= {first['slo_ttft_s']:g} s, TPOT <= {first['slo_tpot_s'] * 1e3:g} ms"
    fig.update_xaxes(showticklabels=False)
    return _layout(fig, f"Capacity under the SLOs ({slo}) and the cost per token at that rate", len(facets))


def _rate_curves(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame, pd.Series | None]]:
    """(label, rows, curve, capacity row) per series of latency against request rate: every rate a
    capacity search simulated, and serving simulations of Poisson or gamma arrivals at two or more
    rates. A curve has columns rate_per_s, ttft_s, tpot_s (at the judged percentile) and meets_slo."""
    rows = _ok(table)
    if "command" not in rows:
        return []
    curves = []
    capacity = rows[rows["command"] == "capacity"]
    if "capacity_probes_json" in capacity:
        capacity = capacity[capacity["capacity_probes_json"].fillna("") != ""]
        exclude = {"hw", "command", "rate_per_s"}
        for label, s in _series(capacity, exclude):
            for idx, row in s.iterrows():
                data = pd.DataFrame(json.loads(row["capacity_probes_json"]))
                p = int(row["percentile"])
                curve = pd.DataFrame(
                    {
                        "rate_per_s": data["rate_per_s"],
                        "ttft_s": data[f"ttft_s_p{p}"],
                        "tpot_s": data[f"tpot_s_p{p}"],
                        "meets_slo": data["meets_slo"],
                    }
                )
                curves.append((label, s.loc[[idx]], curve, row))
    serving = rows[(rows["command"] == "simulate") & rows["arrival"].isin(["poisson", "gamma"])]
    for label, s in _series(serving, {"hw", "command", "rate_per_s"}):
        for _, part in s.groupby("hw", sort=False):
            if part["rate_per_s"].nunique() < 2:
                continue
            part = part.sort_values("rate_per_s")
            p = int(part["slo_percentile"].iloc[0]) if "slo_percentile" in part else 90
            curve = pd.DataFrame(
                {
                    "rate_per_s": part["rate_per_s"].to_numpy(),
                    "ttft_s": part[f"ttft_s_p{p}"].to_numpy(),
                    "tpot_s": part[f"tpot_s_p{p}"].to_numpy(),
                    "meets_slo": np.full(len(part), np.nan),
                }
            )
            curves.append((label, part, curve, None))
    return curves


def latency_vs_rate(table: pd.DataFrame) -> go.Figure | None:
    """TTFT and TPOT percentiles against the request rate per replica, with the SLO lines and the
    capacity each search found: where the queue starts to grow, latency leaves the SLO."""
    curves = _rate_curves(table)
    if not curves:
        return None
    hws = list(dict.fromkeys(str(rows["hw"].iloc[0]) for _, rows, _, _ in curves))
    facets = [(hw if len(hws) > 1 else "", hw) for hw in hws]
    fig = make_subplots(
        rows=len(facets),
        cols=2,
        shared_xaxes=True,
        subplot_titles=[t for title, _ in facets for t in (f"TTFT {title}", f"TPOT {title}")],
    )
    styles = _Styles(table)
    percentiles = set()
    rates, ttfts, tpots = [], [], []
    for i, (_, hw) in enumerate(facets, start=1):
        slos = set()
        for label, rows, curve, cap in curves:
            if str(rows["hw"].iloc[0]) != hw:
                continue
            hover = _hover(rows).iloc[0]
            percentiles.add(int(cap["percentile"]) if cap is not None else 90)
            rates.append(curve["rate_per_s"])
            ttfts.append(curve["ttft_s"])
            tpots.append(curve["tpot_s"] * 1e3)
            for col, y in ((1, curve["ttft_s"]), (2, curve["tpot_s"] * 1e3)):
                _pair_trace(
                    fig, styles, rows, label, (i, col), curve["rate_per_s"], y, 6, [hover] * len(curve),
                    "%{text}<br>%{x:.3g} requests/s: %{y:.4g}<extra></extra>",
                )  # fmt: skip
            if cap is not None:
                slos.add((float(cap["slo_ttft_s"]), float(cap["slo_tpot_s"])))
                at = curve[curve["rate_per_s"] == cap["max_rate_per_s"]]
                for col, y in ((1, at["ttft_s"]), (2, at["tpot_s"] * 1e3)):
                    fig.add_trace(
                        go.Scatter(
                            x=at["rate_per_s"],
                            y=y,
                            mode="markers",
                            name=f"{label}: capacity",
                            legendgroup=label,
                            showlegend=False,
                            marker={
                                "symbol": "star",
                                "size": 15,
                                "color": styles.color(rows),
                                "line": {"width": 1, "color": "black"},
                            },
                            hovertemplate=f"{hover}<br>capacity %{{x:.3g}} requests/s<extra></extra>",
                        ),
                        row=i,
                        col=col,
                    )
        for ttft_slo, tpot_slo in slos:
            _slo_line(fig, ttft_slo, f"SLO {ttft_slo:g} s", i, 1)
            _slo_line(fig, tpot_slo * 1e3, f"SLO {tpot_slo * 1e3:g} ms", i, 2)
        p = "/".join(f"p{q}" for q in sorted(percentiles))
        fig.update_yaxes(
            title_text=f"{p} time to first token (s)",
            type="log",
            row=i,
            col=1,
            **_log_ticks(pd.concat(ttfts), " s") if ttfts else {},
        )
        fig.update_yaxes(
            title_text=f"{p} time per output token (ms)",
            type="log",
            row=i,
            col=2,
            **_log_ticks(pd.concat(tpots)) if tpots else {},
        )
    fig.update_xaxes(type="log", **_log_ticks(pd.concat(rates)))
    fig.update_xaxes(title_text="request rate per replica (requests/s)", row=len(facets))
    title = "Latency against request rate, with the SLOs (dotted) and each search's capacity (star)"
    return _layout(fig, title, len(facets))


def _slo_line(fig: go.Figure, y: float, text: str, row: int, col: int) -> None:
    """A dotted SLO line across a log-y panel, labelled at its left end (an annotation on a log axis
    takes the exponent, which `add_hline` does not do for its own label)."""
    fig.add_hline(y=y, line={"color": "firebrick", "dash": "dot", "width": 1.5}, row=row, col=col)
    fig.add_annotation(
        text=text,
        x=0,
        xref="x domain" if row == col == 1 else f"x{(row - 1) * 2 + col} domain",
        y=float(np.log10(y)),
        yref="y" if row == col == 1 else f"y{(row - 1) * 2 + col}",
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
        font={"color": "firebrick", "size": 11},
    )


def capacity_vs_depth(table: pd.DataFrame) -> go.Figure | None:
    """Capacity under the SLOs and the cost per token at that rate against the routes' mean depth, one
    line per device (and per model or execution when those vary): what each layer skipped buys."""
    rows = _ok(table)
    rows = rows[rows["command"] == "capacity"] if "command" in rows else rows.iloc[:0]
    if rows.empty or "mean_depth_fraction" not in rows or rows["mean_depth_fraction"].nunique() < 2:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("capacity", "cost at capacity"))
    exclude = set(_ROUTE_KEYS) | {"routes", "depth_distribution", "label"}
    keys = ["hw", *[k for k in _varying(rows, exclude | {"hw"})]]
    names = rows.apply(lambda r: _label(r, keys), axis=1)
    palette = _palette()
    for name in dict.fromkeys(names):
        s = rows[names == name].sort_values("mean_depth_fraction")
        color = next(palette)
        for col, y in ((1, s["max_rate_per_s"]), (2, s["cost_usd_per_Mtok_at_slo"])):
            fig.add_trace(
                go.Scatter(
                    x=s["mean_depth_fraction"] * 100,
                    y=y,
                    mode="lines+markers+text",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line={"color": color, "width": 2.5},
                    marker={"color": color, "size": 8},
                    text=[str(r) for r in s["routes"]],
                    textposition="top center",
                    textfont={"size": 9, "color": "#444"},
                    hovertext=_hover(s),
                    hovertemplate="%{hovertext}<br>depth %{x:.1f}%: %{y:.4g}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(
        title_text="requests/s per replica (log)", type="log", col=1, **_log_ticks(rows["max_rate_per_s"])
    )
    fig.update_yaxes(
        title_text="cost at capacity (USD per 1M output tokens, log)",
        type="log",
        col=2,
        **_log_ticks(rows["cost_usd_per_Mtok_at_slo"]),
    )
    fig.update_xaxes(title_text="mean depth (% of layers per token)", range=[0, 112])
    first = rows.iloc[0]
    slo = f"p{int(first['percentile'])} TTFT <= {first['slo_ttft_s']:g} s, TPOT <= {first['slo_tpot_s'] * 1e3:g} ms"
    return _layout(fig, f"Capacity and cost at the SLOs ({slo}) against mean depth", 1)


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure | None]] = {  # the serving answer first
    "capacity": capacity,
    "latency_vs_rate": latency_vs_rate,
    "capacity_vs_depth": capacity_vs_depth,
    "latency_cost_vs_batch": latency_cost_vs_batch,
    "savings_vs_batch": savings_vs_batch,
    "pareto_front": pareto_front,
    "roofline": roofline,
    "memory_breakdown": memory_breakdown,
    "power_over_time": power_over_time,
    "depth_distribution": depth_distribution,
    "architectures": architectures,
    "architectures_relative": architectures_relative,
}


def build_figures(table: pd.DataFrame, slo: tuple[float, float] | None = None) -> dict[str, go.Figure]:
    """Every figure the table has data for, by name; `slo` (TTFT, TPOT seconds) restricts the Pareto
    front to the static points that meet it (default: the SLOs of the study's capacity points)."""
    figures = {
        name: pareto_front(table, slo) if make is pareto_front else make(table)
        for name, make in FIGURES.items()
    }
    return {name: fig for name, fig in figures.items() if fig is not None}


def write_figures(
    figures: dict[str, go.Figure],
    out: Path,
    formats: tuple[str, ...] = ("html", "png"),
    stream: TextIO | None = None,
) -> list[Path]:
    """Write NAME.html (plotly.js beside it, no network needed) and NAME.png (kaleido) for each
    figure; a progress bar on `stream` counts the files."""
    from radsim.progress import bar

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    progress = bar(len(figures) * len(formats), "files", stream, desc="plots: ")
    if "html" in formats:
        for name, fig in figures.items():
            path = out / f"{name}.html"
            write = functools.partial(
                fig.write_html,
                include_plotlyjs="directory",
                full_html=True,
                div_id=name,  # stable ids
            )
            atomic_write(path, write)
            written.append(path)
            progress.update(1)
    if "png" in formats and figures:
        paths = [out / f"{name}.png" for name in figures]
        tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"  # unique: kaleido names the format by suffix
        tmps = [out / f".{name}.{tag}.png" for name in figures]
        figs = list(figures.values())
        try:
            pio.write_images(
                figs, tmps, width=[f.layout.width for f in figs], height=[f.layout.height for f in figs]
            )
            for tmp, path in zip(tmps, paths, strict=True):
                os.replace(tmp, path)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        written += paths
        progress.update(len(paths))  # kaleido draws them in one batch
    progress.close()
    return written


def _layout(fig: go.Figure, title: str, facet_rows: int) -> go.Figure:
    names = [t.name for t in fig.data if t.showlegend is not False]
    wide = max((len(n) for n in names), default=0) > 45  # long names get a row each
    entries = len(dict.fromkeys(names))
    legend_px = 22 * (entries if wide else (entries + 1) // 2) + 30
    plot_px = max(_SIZE["height"] - 160, 300 * facet_rows)
    fig.update_layout(
        template=_TEMPLATE,
        title={"text": title, "x": 0.01},
        width=_SIZE["width"],
        height=plot_px + legend_px + 160,
        hoverlabel={"align": "left"},
        legend={
            "orientation": "h",
            "x": 0,
            "y": -75 / plot_px,
            "yanchor": "top",
            "entrywidth": 1.0 if wide else 0.5,
            "entrywidthmode": "fraction",
        },
        margin={"l": 80, "r": 30, "t": 100, "b": legend_px + 70},
    )
    return fig


def _palette():
    colors = [
        "#1f77b4",
        "#d62728",
        "#2ca02c",
        "#ff7f0e",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
        "#7f7f7f",
        "#393b79",
        "#637939",
        "#8c6d31",
        "#843c39",
        "#7b4173",
        "#3182bd",
    ]
    while True:
        yield from colors
