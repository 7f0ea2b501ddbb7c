"""One self-contained HTML page of a study: its question, fixed inputs and headline numbers, every
plot with a caption, the table of points and the failed points.

The page embeds plotly.js once (no CDN, so it opens without a network) and each figure as a div
drawn by it; the tables show the inputs that vary and the main metrics in display units. All of it
comes from the result table alone.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from radsim.files import atomic_write_text
from radsim.study.plots import _is_static, _varying, build_figures

#: Metric columns shown in the report's table: column -> (heading, scale to display units).
SHOWN = {
    "ttft_s": ("TTFT (ms)", 1e3),
    "tpot_s": ("TPOT (ms)", 1e3),
    "output_tokens_per_s": ("output tokens/s", 1.0),
    "peak_memory_bytes": ("peak memory (GB)", 1e-9),
    "avg_power_W": ("power (W)", 1.0),
    "energy_J_per_output_token": ("J per output token", 1.0),
    "cost_usd_per_Mtok": ("USD per 1M tokens", 1.0),
}
_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.text { text-align: left; }
.plot { margin-bottom: 0.5em; width: 100%; }
.caption { color: #555; font-size: 14px; margin: 0 0 2.5em 0; max-width: 900px; }
ul.fixed { columns: 3; font-size: 13px; }
"""
#: One caption per figure: what it shows and how to read it.
CAPTIONS = {
    "capacity": "The highest request rate one replica serves while the chosen percentile of TTFT and TPOT meets the SLOs (left), and the cost per token at that rate (right): the saving of a faster model in service.",
    "latency_vs_rate": "The chosen percentile of TTFT (left) and TPOT (right) at each request rate a capacity search simulated (and serving runs at several rates), with the SLOs dotted and the capacity found starred: latency holds until the queue starts to grow, then TTFT leaves the SLO within a few percent of the rate.",
    "capacity_vs_depth": "Capacity under the SLOs (left) and cost per token at that rate (right) against the routes' mean depth, one line per device: what the layers each token skips buy in service.",
    "latency_cost_vs_batch": "Time per output token (mean over requests) and cost per million output tokens of static batches, against batch size.",
    "savings_vs_batch": "How many times faster a dynamic-depth decode step is than the sequential model's, and how many times cheaper a token, at each batch size; above 1 dynamic depth pays.",
    "pareto_front": "Every static point's time per output token against its cost, labelled with its batch size; the step line is the front no other point beats on both. With SLOs (the study's capacity SLOs, or `radsim study plot --slo-ttft/--slo-tpot`), points that miss them are faded and the front keeps to those that meet them.",
    "roofline": "Each layer's operating points (FLOPs per DRAM byte against achieved FLOP/s) in a prefill chunk and a decode step, under the device's peak and achievable roofs.",
    "memory_breakdown": "Weights, KV cache and activations per device for each static batch, against the device's memory.",
    "power_over_time": "Power of all devices over the run, in equal time bins (idle power between iterations included).",
    "depth_distribution": "How many layers each token visits, per routes: a trace's spread, or the single depth of exact parametric routes.",
    "architectures": "Time per output token and cost per architecture (labelled grids), grouped by batch size.",
    "architectures_relative": "Each architecture's time per output token and cost over the baseline grid's, by batch size.",
}


def report_html(table: pd.DataFrame, slo: tuple[float, float] | None = None) -> str:
    """The whole page as one string (`slo`: as `radsim.study.plots.build_figures` takes it)."""
    figures = build_figures(table, slo)
    names = sorted(set(table["study"])) if "study" in table else ["study"]
    title = f"radsim study: {', '.join(names)}"
    failed = table[table["error"] != ""]
    divs = [
        f'<div class="plot" id="plot-{name}">'
        + pio.to_html(
            fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{name}", default_width="100%"
        )
        + "</div>"
        + f"<p class='caption'>{html.escape(CAPTIONS.get(name, ''))}</p>"
        for name, fig in figures.items()
    ]
    question = ""
    if "study_description" in table and len(table):
        question = f"<p class='question'>{html.escape(str(table['study_description'].iloc[0]))}</p>"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        question,
        _headlines(table[table["error"] == ""]),
        _provenance(table[table["error"] == ""]),
        _fixed(table),
        f"<p>{len(table)} points, {len(failed)} failed; plots: {', '.join(figures) or 'none'}.</p>",
        *divs,
        "<h2>Points</h2>",
        _table(table[table["error"] == ""]),
    ]
    if len(failed):
        parts += ["<h2>Failed points</h2>", _table(failed, errors=True)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _headlines(rows: pd.DataFrame) -> str:
    """A few numbers that answer the study: capacity per routes, the fastest and the cheapest point."""
    items = []
    if "max_rate_per_s" in rows:
        capacity = rows[rows["command"] == "capacity"]
        for _, r in capacity.iterrows():
            same = (capacity["hw"] == r["hw"]) & (capacity["arch"] == r["arch"])
            base = capacity[same & (capacity["routes"] == "sequential")]
            saving = ""
            if r["routes"] != "sequential" and len(base):
                b = base.iloc[0]
                saving = (
                    f" ({r['max_rate_per_s'] / b['max_rate_per_s'] - 1:+.0%} requests/s, "
                    f"{r['cost_usd_per_Mtok'] / b['cost_usd_per_Mtok'] - 1:+.0%} cost against the sequential model)"
                )
            slo = (
                f"p{int(r['percentile'])} TTFT <= {r['slo_ttft_s']:g} s, TPOT <= {r['slo_tpot_s'] * 1e3:g} ms"
            )
            items.append(
                f"capacity of {r['routes']} on {r['hw']} ({slo}): {r['max_rate_per_s']:.3g} requests/s at "
                f"${r['cost_usd_per_Mtok']:.3g} per 1M output tokens{saving}"
            )
    static = _is_static(rows) if len(rows) else rows.index == 0
    timed = rows[static & rows["tpot_s"].notna()] if "tpot_s" in rows else rows.iloc[:0]
    if len(timed):
        fast, cheap = timed.loc[timed["tpot_s"].idxmin()], timed.loc[timed["cost_usd_per_Mtok"].idxmin()]
        items.append(
            f"fastest static batch: {fast['routes']} at batch {fast['batch']} on {fast['hw']}, {fast['tpot_s'] * 1e3:.3g} ms per output token"
        )
        items.append(
            f"cheapest static batch: {cheap['routes']} at batch {cheap['batch']} on {cheap['hw']}, "
            f"${cheap['cost_usd_per_Mtok']:.3g} per 1M output tokens"
        )
    if not items:
        return ""
    return "<h2>Headline numbers</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _provenance(rows: pd.DataFrame) -> str:
    """Where each routes label's routes come from (trace, model, quality, mapping) and every warning."""
    if "routes_source" not in rows:
        return ""
    sources = rows[rows["routes_source"].fillna("") != ""].drop_duplicates("routes")
    items = [
        f"<li><b>{html.escape(str(r['routes']))}</b>: {html.escape(str(r['routes_source']))}</li>"
        for _, r in sources.iterrows()
    ]
    warnings = []
    if "warnings" in rows:
        for text in rows["warnings"].fillna(""):
            warnings += [w for w in str(text).split("; ") if w and w not in warnings]
    if not items and not warnings:
        return ""
    parts = ["<h2>Where the routes come from</h2><ul>", *items, "</ul>"]
    if warnings:
        parts += ["<h2>Warnings</h2><ul>", *(f"<li>{html.escape(w)}</li>" for w in warnings), "</ul>"]
    return "".join(parts)


def _fixed(table: pd.DataFrame) -> str:
    """The inputs every point shares."""
    from radsim.scenario.schema import INPUTS

    shared = [k for k in INPUTS if k in table and table[k].astype(str).nunique() == 1]
    if not shared:
        return ""
    values = {k: table[k].iloc[0] for k in shared}
    items = "".join(
        f"<li>{html.escape(k)} = {html.escape(repr(v) if isinstance(v, str) else str(v))}</li>"
        for k, v in values.items()
    )
    return f"<h2>Fixed inputs</h2><ul class='fixed'>{items}</ul>"


def _table(rows: pd.DataFrame, errors: bool = False) -> str:
    inputs = (
        ["point_id", "command", *[k for k in _varying(rows) if k != "command"]] if len(rows) else ["point_id"]
    )
    metrics = [] if errors else [c for c in SHOWN if c in rows]
    head = [*inputs, *(SHOWN[c][0] for c in metrics), *(["error"] if errors else [])]
    lines = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for _, row in rows.iterrows():
        cells = [f"<td class='text'>{html.escape(str(row[k]))}</td>" for k in inputs]
        cells += [f"<td>{_number(row[c] * SHOWN[c][1])}</td>" for c in metrics]
        if errors:
            cells.append(f"<td class='text'>{html.escape(str(row['error']))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*lines, "</table>"])


def _number(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.4g}"


def write_report(table: pd.DataFrame, out: str | Path, slo: tuple[float, float] | None = None) -> Path:
    """Write the page atomically and return its path."""
    out = Path(out)
    page = report_html(table, slo)  # built before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, page)
