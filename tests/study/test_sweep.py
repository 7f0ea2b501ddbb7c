"""Study files, grid expansion, point evaluation, resumable sweeps, Dask, and the quickstart's golden table."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

if __name__ == "__main__":  # run as a script (regenerate): the shared test helpers sit one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_tables import ROOT, tiny_table, write_tiny  # noqa: E402

from radsim.cli.main import main
from radsim.errors import ConfigError
from radsim.study.load import INPUTS, expand, load_study, make_point, parse_study, point_id
from radsim.study.sweep import (
    RESULTS_CSV,
    RESULTS_PARQUET,
    process_runner,
    read_results,
    run_study,
    serial_runner,
    upgrade_columns,
    write_table,
)

QUICKSTART = ROOT / "studies" / "quickstart.toml"
EXPECTED = ROOT / "tests" / "data" / "quickstart_expected.csv"
#: The golden table's metrics must match within this relative tolerance: the study is deterministic,
#: so only a change to the cost model or the simulator may move them (then regenerate, see below).
GOLDEN_RTOL = 1e-6
GOLDEN_KEYS = ["point_id", "command", "routes", "execution", "arrival", "batch"]
GOLDEN_METRICS = [
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "output_tokens_per_s",
    "peak_memory_bytes",
    "avg_power_W",
    "energy_J_per_output_token",
    "cost_usd_per_Mtok",
    "mean_depth_fraction",
]
METRICS_EXCLUDED = {"point_id", "study", *INPUTS, "routes"}


def _study(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_grid_expansion_order_defaults_and_ids(tmp_path):
    study = load_study(write_tiny(tmp_path))
    points = expand(study)
    assert len(points) == 6 + 4 + 2 + 2 + 1 == sum(g.size for g in study.grids)
    first = points[0]
    assert (first["command"], first["depth_fraction"], first["batch"]) == ("estimate", 1.0, 1)
    assert [(p["depth_fraction"], p["batch"]) for p in points[:6]] == [
        (1.0, 1), (1.0, 4), (1.0, 16), (0.5, 1), (0.5, 4), (0.5, 16)
    ]  # fmt: skip
    assert first["seed"] == 3 and first["dtype"] == INPUTS["dtype"].default
    # a shared value the estimate command does not read is left at its default, not an error
    assert first["slo_tpot_s"] == INPUTS["slo_tpot_s"].default and points[6]["slo_tpot_s"] == 0.05
    assert [p["routes"] for p in points[6:10]] == ["sequential"] * 2 + ["trace radial-scratch-p05"] * 2
    assert len({p["point_id"] for p in points}) == len(points)
    again = expand(load_study(write_tiny(tmp_path)))
    assert [p["point_id"] for p in again] == [p["point_id"] for p in points]
    changed = make_point({**{k: first[k] for k in INPUTS}, "batch": 2})
    assert changed["point_id"] != first["point_id"] and point_id(first) == first["point_id"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[fixed]\nhw = "h100_sxm"\n', "at least one [[grid]]"),
        ('[[grid]]\ncommand = "estimate"\nhw = "h100_sxm"\narch = "x"\nbogus = 1\n', "unknown key 'bogus'"),
        (
            '[[grid]]\ncommand = "quantum"\nhw = "a"\narch = "b"\n',
            "'command' is 'quantum'; allowed: 'estimate', 'simulate'",
        ),
        (
            '[fixed]\ncommand = "estimate"\nhw = "a"\narch = "b"\n[[grid]]\n[grid.axes]\nbatch = []\n',
            "non-empty list",
        ),
        (
            '[fixed]\ncommand = "estimate"\nhw = "a"\narch = "b"\n[[grid]]\n[grid.axes]\nbatch = [0]\n',
            "must be >= 1",
        ),
        (
            '[fixed]\ncommand = "estimate"\nhw = "a"\narch = "b"\nbatch = 2\n[[grid]]\n[grid.axes]\nbatch = [1]\n',
            "also a fixed value",
        ),
        (
            '[fixed]\ncommand = "estimate"\nhw = "a"\narch = "b"\n[[grid]]\ntrace = "t.parquet"\n',
            "'trace' applies only to command",
        ),
        (
            '[fixed]\ncommand = "estimate"\nhw = "a"\narch = "b"\n[[grid]]\nexecution = "step_sync"\n',
            "needs command 'simulate'",
        ),
        (
            '[fixed]\ncommand = "estimate"\nhw = "a"\narch = "b"\n[[grid]]\nrate_per_s = 2.0\n',
            "only to command(s) simulate",
        ),
        (
            '[fixed]\ncommand = "simulate"\nhw = "a"\narch = "b"\n[[grid]]\n[grid.axes]\ntrace = ["x"]\ndepth_fraction = [0.5]\n',
            "both set the depth",
        ),
        ('[fixed]\ncommand = "estimate"\nhw = "a"\n[[grid]]\n', "'arch' is required"),
        (
            '[fixed]\ncommand = "estimate"\nhw = "a"\narch = "b"\ndepth_fraction = "half"\n[[grid]]\n',
            "must be float",
        ),
    ],
)
def test_bad_study_files_name_the_file_and_field(tmp_path, text, message):
    path = _study(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_failed_point_is_recorded_and_the_rest_run(tmp_path):
    table = tiny_table(tmp_path)
    failed = table[table["error"] != ""]
    assert list(failed["arch"]) == ["llama3.1-70b"]
    assert "does not fit on h100_sxm" in failed["error"].iloc[0]
    assert failed["tpot_s"].isna().all()
    ok = table[table["error"] == ""]
    assert len(ok) == 14 and ok["tpot_s"].gt(0).all() and ok["cost_usd_per_Mtok"].gt(0).all()
    # the estimate and a simulated static batch of the sequential model agree on the decode step
    est = ok[(ok["command"] == "estimate") & (ok["batch"] == 4) & (ok["routes"] == "sequential")]
    sim = ok[(ok["command"] == "simulate") & (ok["arrival"] == "batch") & (ok["routes"] == "sequential")]
    assert sim["tpot_s"].iloc[0] == pytest.approx(est["tpot_s"].iloc[0], rel=1e-9)
    # both files hold the same table; the CSV reads back the empty strings
    pd.testing.assert_frame_equal(
        read_results(tmp_path / "out" / RESULTS_CSV), read_results(tmp_path / "out")
    )


def _interrupt_after(n: int):
    def runner(points, traces):
        for i, row in enumerate(serial_runner(points, traces)):
            if i == n:
                raise KeyboardInterrupt
            yield row

    return runner


def test_resume_after_interruption_evaluates_only_missing_points(tmp_path):
    study = load_study(write_tiny(tmp_path))
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, _interrupt_after(5), stream=None)
    partial = read_results(out)
    assert len(partial) == 5 and not list(out.glob(".*tmp"))  # a whole table, no temporary left
    seen: list[str] = []

    def counting(points, traces):
        seen.extend(p["point_id"] for p in points)
        yield from serial_runner(points, traces)

    table = run_study(study, out, counting, stream=None)
    assert len(seen) == len(table) - 5 and not set(seen) & set(partial["point_id"])
    fresh = run_study(study, tmp_path / "fresh", serial_runner, stream=None)
    pd.testing.assert_frame_equal(table, fresh)
    seen.clear()
    run_study(study, out, counting, stream=None)
    assert seen == []  # a finished study has nothing left to do, failed points included
    run_study(study, out, counting, stream=None, retry_failed=True)
    assert len(seen) == 1


def test_a_table_written_when_command_was_engine_resumes_plots_and_reports(tmp_path):
    """Before `engine` named the serving engine profile, the column `command` was `engine`."""
    from radsim.study.plots import build_figures

    study = parse_study(
        {
            "study": {"name": "old"},
            "fixed": {"hw": "h100_sxm", "arch": "llama3.1-8b", "prompt_tokens": 32, "output_tokens": 8},
            "grid": [
                {"command": "estimate", "axes": {"batch": [1, 4]}},
                {"command": "simulate", "arrival": "poisson", "rate_per_s": 4.0, "duration_s": 2.0},
            ],
        },
        tmp_path / "old.toml",
    )
    fresh = run_study(study, tmp_path / "fresh", stream=None)
    out = tmp_path / "old"
    # no engine profiles yet either; the last point had not run yet
    old = fresh.drop(columns=["engine"]).rename(columns={"command": "engine"}).iloc[:-1]
    write_table(old, out)
    for path in (out, out / RESULTS_CSV):
        read = read_results(path)
        assert set(read.columns) == set(fresh.columns) and set(read["engine"]) == {"ideal"}
        assert list(read["command"]) == ["estimate", "estimate"]
    assert "latency_cost_vs_batch" in build_figures(read_results(out))
    assert main(["study", "plot", str(out), "--out", str(tmp_path / "plots"), "--format", "html"]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
    seen: list[str] = []

    def counting(points, traces):
        seen.extend(p["point_id"] for p in points)
        yield from serial_runner(points, traces)

    resumed = run_study(study, out, counting, stream=None)
    assert seen == [fresh["point_id"].iloc[-1]]  # the old rows are kept: same point ids
    pd.testing.assert_frame_equal(resumed, fresh)
    assert list(read_results(out / RESULTS_CSV).columns) == list(fresh.columns)


def test_only_a_legacy_engine_column_of_commands_is_renamed():
    table = pd.DataFrame({"point_id": ["a"], "engine": ["simulate"]})
    upgraded = upgrade_columns(table)
    assert list(upgraded.columns) == ["point_id", "command", "engine"]
    assert list(upgraded["engine"]) == ["ideal"]  # before engine profiles: the default profile
    for kept in (table.assign(engine="vllm"), table.assign(command="simulate")):
        assert upgrade_columns(kept) is kept


def test_results_of_another_study_are_not_overwritten(tmp_path):
    study = load_study(write_tiny(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame({"point_id": ["x"], "study": ["other"], "error": [""]}).to_parquet(out / RESULTS_PARQUET)
    with pytest.raises(ConfigError, match="holds results of study"):
        run_study(study, out, serial_runner, stream=None)


def _metrics(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in table.columns if c not in METRICS_EXCLUDED or c == "point_id"]]


def test_local_processes_and_dask_give_identical_tables(tmp_path):
    distributed = pytest.importorskip("distributed")
    study = parse_study(
        {
            "study": {"name": "dask", "seed": 1},
            "fixed": {"hw": "h100_sxm", "arch": "llama3.1-8b", "prompt_tokens": 32, "output_tokens": 8},
            "grid": [
                {"command": "estimate", "axes": {"depth_fraction": [1.0, 0.5], "batch": [1, 8]}},
                {"command": "simulate", "arrival": "poisson", "duration_s": 2.0, "rate_per_s": 4.0,
                 "axes": {"depth_fraction": [1.0, 0.5]}},
                {"command": "estimate", "arch": "llama3.1-70b"},
            ],
        },
        tmp_path / "dask.toml",
    )  # fmt: skip
    local = run_study(study, tmp_path / "local", process_runner(2), stream=None)
    from radsim.study.sweep import dask_runner

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = run_study(study, tmp_path / "dask", dask_runner(client), stream=None)
    pd.testing.assert_frame_equal(_metrics(local), _metrics(remote))
    pd.testing.assert_frame_equal(local, remote)
    assert (local["error"] != "").sum() == 1


def test_cli_runs_a_study_and_shows_progress(tmp_path, capsys):
    path = write_tiny(tmp_path)
    # a failed point fails the run (exit 1), after every other point ran
    assert main(["study", "run", str(path), "--out", str(tmp_path / "cli"), "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "15 points (1 failed)" in captured.out
    assert "15/15 points, 1 failed" in captured.err
    assert "1 point(s) failed" in captured.err and "'error' column" in captured.err
    assert main(["study", "run", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read study file" in capsys.readouterr().err


def _golden(table: pd.DataFrame) -> pd.DataFrame:
    return table.loc[table["error"] == "", GOLDEN_KEYS + GOLDEN_METRICS].reset_index(drop=True)


def test_quickstart_golden_table_and_plots(tmp_path, capsys, monkeypatch):
    """The README's main command: the quickstart's table matches the stored one, and the plots exist."""
    monkeypatch.chdir(ROOT)  # the study names its traces relative to the repository
    out = tmp_path / "quickstart"
    assert main(["study", "run", str(QUICKSTART), "--out", str(out), "--plot", "--quiet"]) == 0
    table = read_results(out)
    assert (table["error"] == "").all()
    expected = pd.read_csv(EXPECTED)
    actual = _golden(table)
    pd.testing.assert_frame_equal(actual[GOLDEN_KEYS], expected[GOLDEN_KEYS], check_dtype=False)
    pd.testing.assert_frame_equal(actual[GOLDEN_METRICS], expected[GOLDEN_METRICS], rtol=GOLDEN_RTOL)
    for name in ("latency_cost_vs_batch", "savings_vs_batch", "pareto_front", "roofline",
                 "memory_breakdown", "power_over_time", "depth_distribution"):  # fmt: skip
        assert (out / "plots" / f"{name}.html").stat().st_size > 1000
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.html").exists()


if __name__ == "__main__" and sys.argv[1:] == ["regenerate"]:
    # After a deliberate change to the cost model or the simulator:
    #   python tests/study/test_sweep.py regenerate
    import os

    os.chdir(ROOT)
    import tempfile

    with tempfile.TemporaryDirectory() as out:  # computed afresh, never resumed from results/
        fresh = run_study(load_study(QUICKSTART), Path(out) / "quickstart", process_runner(2))
    _golden(fresh).to_csv(EXPECTED, index=False)
    print(f"wrote {EXPECTED}")


ARCHITECTURES = ROOT / "studies" / "architectures.toml"


def test_architectures_study_expands_to_every_architecture():
    points = expand(load_study(ARCHITECTURES))
    labels = list(dict.fromkeys(p["label"] for p in points))
    assert len(labels) == 11 and labels[0] == "dense 8B"
    assert len(points) == len(labels) * 2 * 9  # two GPUs, nine batch sizes
    by_label = {p["label"]: p for p in points}
    dlo = next(p for label, p in by_label.items() if label.startswith("DLO") and "parametric" in label)
    assert (dlo["arch"], dlo["kv_policy"], dlo["depth_fraction"]) == ("llama3.1-8b-dlo", "compute", 0.75)
    traced = next(p for label, p in by_label.items() if label.startswith("DLO") and "routes" in label)
    assert (traced["arch"], traced["kv_policy"], traced["trace"]) == (
        "llama3.1-8b-dlo",
        "compute",
        "traces/dlo-smollm2.parquet",
    )
    early = next(
        p for label, p in by_label.items() if label.startswith("early exit") and "parametric" in label
    )
    assert (early["route_shape"], early["routes"]) == ("early_exit", "early exit, depth 0.75 bernoulli")
    trained = by_label["early exit, scratch t0.3 (66% depth)"]
    assert (trained["trace"], trained["kv_policy"]) == ("traces/early-exit-scratch-t0.3.parquet", "copy")
    launches = {p["expert_launch"] for p in points if p["arch"] == "llama3.1-8b-finedeep"}
    assert launches == {"grouped", "per_expert"}


def test_later_inputs_at_their_defaults_keep_point_ids():
    base = make_point({"command": "simulate", "hw": "h100_sxm", "arch": "llama3.1-8b"})
    same = make_point({**{k: base[k] for k in INPUTS}, "label": "", "expert_launch": "grouped"})
    assert same["point_id"] == base["point_id"]
    assert make_point({**{k: base[k] for k in INPUTS}, "label": "x"})["point_id"] != base["point_id"]


def test_one_small_point_per_architecture_evaluates(monkeypatch):
    from radsim.study.point import evaluate

    monkeypatch.chdir(ROOT)
    seen = {}
    for p in expand(load_study(ARCHITECTURES)):
        if p["hw"] == "h100_sxm" and p["batch"] == 4 and p["label"] not in seen:
            small = make_point({**{k: p[k] for k in INPUTS}, "prompt_tokens": 32, "output_tokens": 8})
            seen[p["label"]] = evaluate(small)
    assert all(row["error"] == "" for row in seen.values()), {k: r["error"] for k, r in seen.items()}
    tpot = {label: row["tpot_s"] for label, row in seen.items()}
    dense = tpot["dense 8B"]
    assert tpot["radial, scratch p0.05 (18% depth)"] < dense  # few layers per token
    finedeep = [v for k, v in tpot.items() if k.startswith("Finedeep")]
    assert all(v > dense for v in finedeep)  # the same weights in more, smaller launches
    dlo = next(row for label, row in seen.items() if label.startswith("DLO"))
    assert dlo["params"] > seen["dense 8B"]["params"] and dlo["kv_policy_used"] == "compute"
    early = next(row for label, row in seen.items() if label.startswith("early exit"))
    assert early["kv_policy_used"] == "copy"


def test_expert_launch_reaches_the_estimate_command_at_any_depth():
    from radsim.study.point import evaluate

    def tpot(launch: str, depth: float) -> float:
        values = dict(command="estimate", hw="h100_sxm", arch="llama3.1-8b-finedeep", batch=4)
        values.update(prompt_tokens=32, output_tokens=4, expert_launch=launch, depth_fraction=depth)
        return evaluate(make_point(values))["tpot_s"]

    for depth in (1.0, 0.5):
        assert tpot("per_expert", depth) > tpot("grouped", depth)
