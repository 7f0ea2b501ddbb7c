"""Every study plot is built from the result table alone, has data, titles, units and hover inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from study_tables import tiny_table

from radsim.study.plots import FIGURES, build_figures, write_figures
from radsim.study.sweep import RESULTS_CSV, read_results

#: Each figure's axis titles must name these units.
UNITS = {
    "latency_cost_vs_batch": ["(ms)", "(USD per 1M output tokens)", "(sequences)"],
    "savings_vs_batch": ["(x, log)", "(sequences)"],
    "pareto_front": ["(ms)", "(USD per 1M output tokens)"],
    "roofline": ["(FLOP per DRAM byte)", "(TFLOP/s)"],
    "memory_breakdown": ["GB per device", "(sequences)"],
    "power_over_time": ["(s)", "(W)"],
    "depth_distribution": ["(%)"],
    "architectures": ["(ms, log)", "(USD per 1M output tokens, log)", "(sequences)"],
    "architectures_relative": ["(x, log)", "(sequences)"],
    "capacity": ["requests/s per replica", "(USD per 1M output tokens)"],
    "latency_vs_rate": ["time to first token (s)", "time per output token (ms)", "(requests/s)"],
    "capacity_vs_depth": ["requests/s per replica", "(USD per 1M output tokens, log)", "(% of layers"],
}
#: Figures drawn only for studies whose grids carry labels (studies/architectures.toml).
LABELLED = ("architectures", "architectures_relative")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return tiny_table(tmp_path_factory.mktemp("plots"))


def _axis_titles(fig) -> str:
    layout = fig.to_plotly_json()["layout"]
    return " ".join(str(v.get("title", {}).get("text", "")) for k, v in layout.items() if "axis" in k)


def test_every_figure_has_data_titles_units_and_hover(table):
    labelled = table.assign(label=table["routes"])  # a label per routes, as a study's grids may set
    figures = {**build_figures(table), **{k: build_figures(labelled)[k] for k in LABELLED}}
    assert set(figures) == set(FIGURES) and not set(LABELLED) & set(build_figures(table))
    for name, fig in figures.items():
        assert fig.layout.title.text, name
        assert fig.data, name
        for trace in fig.data:
            assert len(trace.x) > 0 and len(trace.y) > 0, (name, trace.name)
        for unit in UNITS[name]:
            assert unit in _axis_titles(fig), (name, unit)
    hover = " ".join(str(t.hovertext) + str(t.text) for t in figures["pareto_front"].data)
    assert "routes = trace radial-scratch-p05" in hover and "batch = 16" in hover


def test_savings_compare_with_the_sequential_model_of_the_same_inputs(table):
    fig = build_figures(table)["savings_vs_batch"]
    names = {t.name for t in fig.data}
    assert not any("sequential" in n for n in names)
    estimate = next(t for t in fig.data if t.name.startswith("estimate") and t.xaxis == "x")
    ok = table[(table["command"] == "estimate") & (table["error"] == "")]
    seq = ok[ok["routes"] == "sequential"].set_index("batch")["decode_step_s"]
    half = ok[ok["routes"] == "depth 0.5"].set_index("batch")["decode_step_s"]
    assert list(estimate.y) == pytest.approx(list(seq / half))


def test_figures_from_csv_match_figures_from_parquet(table, tmp_path_factory):
    out = tmp_path_factory.getbasetemp()
    folder = next(out.glob("plots*/out"))
    from_csv = build_figures(read_results(folder / RESULTS_CSV))
    from_parquet = build_figures(read_results(folder))
    for name in (n for n in FIGURES if n not in LABELLED):
        assert from_csv[name].to_json() == from_parquet[name].to_json(), name


def test_a_table_without_simulations_skips_their_plots(table):
    figures = build_figures(table[table["command"] == "estimate"])
    assert "power_over_time" not in figures and "roofline" in figures


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="kaleido needs a Chromium (apt-get install chromium)"
)
def test_write_html_and_png(table, tmp_path):
    figures = build_figures(table)
    paths = write_figures({k: figures[k] for k in ("roofline", "power_over_time")}, tmp_path)
    assert sorted(p.name for p in paths) == [
        "power_over_time.html", "power_over_time.png", "roofline.html", "roofline.png"
    ]  # fmt: skip
    assert (tmp_path / "plotly.min.js").exists()  # the HTML needs no network
    assert 'src="plotly.min.js"' in (tmp_path / "roofline.html").read_text()
    assert (tmp_path / "roofline.png").read_bytes()[:4] == b"\x89PNG"


def test_architecture_bars_and_ratios_follow_the_labels(table):
    labelled = table.assign(label=table["routes"])
    figures = build_figures(labelled)
    static = (labelled["command"] == "estimate") | (labelled["arrival"] == "batch")
    rows = labelled[static & (labelled["error"] == "") & labelled["tpot_s"].notna()]
    labels = list(dict.fromkeys(rows["label"]))
    assert [t.name for t in figures["architectures"].data if t.showlegend] == labels
    ratios = figures["architectures_relative"]
    assert labels[0] not in {t.name for t in ratios.data} and labels[0] in ratios.layout.title.text


def test_a_series_keeps_its_colour_across_figures(table):
    figures = build_figures(table)

    def colour(name: str, figure: str) -> str:
        trace = next(t for t in figures[figure].data if t.name == name)
        return trace.line.color if trace.mode and "lines" in trace.mode else trace.marker.color

    sequential = colour("estimate, layer_major, sequential", "latency_cost_vs_batch")
    assert colour("layer_major, sequential", "pareto_front") == sequential
    assert colour("sequential", "latency_vs_rate") == sequential  # the capacity search's curve
    pareto = {t.name: t.marker.color for t in figures["pareto_front"].data if t.name != "Pareto front"}
    assert len(set(pareto.values())) == len(pareto)  # different models or executions, different colours


def test_pareto_front_keeps_to_the_points_meeting_the_slo(table):
    static = table[
        (table["error"] == "") & ((table["command"] == "estimate") | (table["arrival"] == "batch"))
    ]
    tpot = float(static["tpot_s"].median())
    fig = build_figures(table, slo=(10.0, tpot))["pareto_front"]
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert max(front.x) <= tpot * 1e3 + 1e-9 and "meeting the SLOs" in front.name
    faded = [t for t in fig.data if t.marker.opacity is not None and t.marker.opacity < 0.5]
    assert faded and all(min(t.x) > tpot * 1e3 for t in faded)  # the TTFT SLO holds for all
    every = build_figures(table, slo=(10.0, 10.0))["pareto_front"]
    assert len(next(t for t in every.data if t.name.startswith("Pareto")).x) >= len(front.x)


def test_latency_against_rate_marks_the_capacity_and_the_slos(table):
    fig = build_figures(table)["latency_vs_rate"]
    capacity = table[(table["command"] == "capacity") & (table["error"] == "")]
    stars = [t for t in fig.data if t.name.endswith(": capacity")]
    assert sorted(x for t in stars[::2] for x in t.x) == sorted(capacity["max_rate_per_s"])
    slo_lines = [s for s in fig.layout.shapes if s.line.dash == "dot"]
    assert {round(s.y0, 9) for s in slo_lines} == {0.5, 50.0}  # TTFT in s, TPOT in ms
    for trace in fig.data:  # every rate the searches simulated, sorted
        assert list(trace.x) == sorted(trace.x)


@pytest.mark.parametrize(
    "values", [[61.0, 232.0], [0.0029, 0.116], [5.9, 30.0], [0.005, 60.0], [1.9, 9.0], [3.0, 3.0]]
)
def test_log_ticks_are_whole_labels_around_the_data(values):
    from radsim.study.plots import _log_ticks

    ticks = _log_ticks(np.array(values))
    assert len(ticks["tickvals"]) >= 2
    assert all(float(text) == value for text, value in zip(ticks["ticktext"], ticks["tickvals"], strict=True))
    assert min(ticks["tickvals"]) <= min(values) * 1.5 and max(ticks["tickvals"]) >= max(values) / 1.5


@pytest.mark.parametrize("values", [[0.92, 1.12], [0.15, 4.2], [1.0, 1.05], [0.5, 20.0]])
def test_ratio_ticks_label_one_and_enough_others(values):
    from radsim.study.plots import _ratio_ticks

    ticks = _ratio_ticks(np.array(values))
    assert "1x" in ticks["ticktext"] and len(ticks["tickvals"]) >= 3
