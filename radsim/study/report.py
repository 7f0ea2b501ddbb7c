"""One self-contained HTML page of a study: every plot, the table of points and the failed points.

The page embeds plotly.js once (no CDN, so it opens without a network) and each figure as a div
drawn by it; the tables show the inputs that vary and the main metrics in display units.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from radsim.files import atomic_write_text
from radsim.study.plots import _varying, build_figures

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
.plot { margin-bottom: 2em; }
"""


def report_html(table: pd.DataFrame) -> str:
    """The whole page as one string."""
    figures = build_figures(table)
    names = sorted(set(table["study"])) if "study" in table else ["study"]
    title = f"radsim study: {', '.join(names)}"
    failed = table[table["error"] != ""]
    divs = [
        f'<div class="plot" id="plot-{name}">'
        + pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{name}")
        + "</div>"
        for name, fig in figures.items()
    ]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(table)} points, {len(failed)} failed; plots: {', '.join(figures) or 'none'}.</p>",
        *divs,
        "<h2>Points</h2>",
        _table(table[table["error"] == ""]),
    ]
    if len(failed):
        parts += ["<h2>Failed points</h2>", _table(failed, errors=True)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(rows: pd.DataFrame, errors: bool = False) -> str:
    inputs = (
        ["point_id", "engine", *[k for k in _varying(rows) if k != "engine"]] if len(rows) else ["point_id"]
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


def write_report(table: pd.DataFrame, out: str | Path) -> Path:
    """Write the page atomically and return its path."""
    out = Path(out)
    page = report_html(table)  # built before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, page)
