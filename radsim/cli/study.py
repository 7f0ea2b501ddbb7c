"""`radsim study run`, `radsim study plot` and `radsim report` on the command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import output_dir, output_file
from radsim.study.load import DEFAULT_MAX_POINTS

DEFAULT_RESULTS = Path("results")
DASK_CONNECT_TIMEOUT_S = 10


def add_study_commands(sub) -> None:
    """Register `study run`, `study plot` and `report` on the main CLI's subparsers."""
    study = sub.add_parser("study", help="what-if studies: grids of points, tables, plots")
    commands = study.add_subparsers(title="study commands")
    run = commands.add_parser("run", help="evaluate every point of a study file into one table")
    run.add_argument("file", help="study file (studies/NAME.toml)")
    run.add_argument("--out", help="output folder (default: results/STUDY-NAME)")
    run.add_argument("--workers", type=int, help="local processes (default: one per available core)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a Dask scheduler to run the points on")
    where.add_argument("--dask-local", action="store_true", help="start a local Dask cluster of --workers")
    run.add_argument(
        "--retry-failed", action="store_true", help="evaluate failed points of an earlier run again"
    )
    run.add_argument("--plot", action="store_true", help="then draw the plots and write the report")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--max-points",
        type=int,
        default=DEFAULT_MAX_POINTS,
        help="refuse a study of more points (counted from the axes before anything runs)",
    )
    run.set_defaults(func=_run)
    plot = commands.add_parser("plot", help="draw a study's plots (HTML and PNG) from its result table")
    plot.add_argument("results", help="result folder, results.parquet or results.csv")
    plot.add_argument("--out", help="plot folder (default: plots/ beside the table)")
    plot.add_argument("--format", default="html,png", help="comma-separated: html, png")
    _slo_arguments(plot)
    plot.set_defaults(func=_plot)
    report = sub.add_parser("report", help="one self-contained HTML page of a study's plots and tables")
    report.add_argument("results", help="result folder, results.parquet or results.csv")
    report.add_argument("--out", help="HTML file (default: report.html beside the table)")
    _slo_arguments(report)
    report.set_defaults(func=_report)


def _slo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slo-ttft",
        type=float,
        help="TTFT SLO in seconds for the Pareto plot (default: the study's capacity SLO)",
    )
    parser.add_argument(
        "--slo-tpot", type=float, help="TPOT SLO in seconds for the Pareto plot (with --slo-ttft)"
    )


def _slo(args: argparse.Namespace) -> tuple[float, float] | None:
    """(TTFT, TPOT) SLOs of the Pareto plot from the flags, or None for the study's own."""
    ttft, tpot = getattr(args, "slo_ttft", None), getattr(args, "slo_tpot", None)
    if ttft is None and tpot is None:
        return None
    if ttft is None or tpot is None or not (ttft > 0 and tpot > 0):
        raise ConfigError(
            "--slo-ttft and --slo-tpot go together, both in seconds and > 0 (e.g. 1.0 and 0.05)"
        )
    return ttft, tpot


def _check_png_export() -> None:
    """PNG export needs a Chromium that kaleido can start: a clear error before any work."""
    import plotly.graph_objects as go
    import plotly.io as pio

    try:
        pio.to_image(go.Figure(), format="png", width=10, height=10)
    except Exception as exc:
        raise ConfigError(
            f"PNG export of the plots needs Chromium (kaleido could not start one: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); install it (apt-get install chromium) or "
            "draw HTML only: radsim study plot RESULTS --format html"
        ) from exc


def _workers(requested: int | None) -> int:
    if requested is not None and requested < 1:
        raise ConfigError(f"--workers must be >= 1, got {requested}")
    return requested or len(os.sched_getaffinity(0))


def _run(args: argparse.Namespace) -> int:
    """Check everything, run the points; exit status 1 when any point failed (its row says why)."""
    from radsim.study.load import load_study
    from radsim.study.sweep import process_runner, run_study, serial_runner

    if args.max_points < 1:
        raise ConfigError(f"--max-points must be >= 1, got {args.max_points}")
    workers = _workers(args.workers)
    study = load_study(args.file, max_points=args.max_points)
    for warning in study.warnings:
        print(f"radsim: warning: {warning}", file=sys.stderr)
    out = output_dir(Path(args.out) if args.out else DEFAULT_RESULTS / study.name, "--out")
    if args.plot:
        output_dir(out / "plots", "--plot: folder")
        _check_png_export()
    stream = None if args.quiet else sys.stderr
    if args.scheduler or args.dask_local:
        with _dask_client(args, workers) as client:
            from radsim.study.sweep import dask_runner

            table = run_study(study, out, dask_runner(client), stream, args.retry_failed)
    else:
        runner = serial_runner if workers == 1 else process_runner(workers)
        table = run_study(study, out, runner, stream, args.retry_failed)
    failed = table[table["error"] != ""]
    print(f"{len(table)} points ({len(failed)} failed) -> {out / 'results.parquet'}, {out / 'results.csv'}")
    if args.plot:
        _draw(out, out / "plots", ("html", "png"), None)
        _write_report(out, out / "report.html", None)
    if len(failed):
        _report_failures(failed, out / "results.csv")
        return 1
    return 0


def _report_failures(failed, csv: Path) -> None:
    """How many points failed, the commonest errors, and where every error is recorded."""
    counts = failed["error"].value_counts()
    print(
        f"radsim: {len(failed)} point(s) failed; every error is in the 'error' column of {csv} "
        f"(rerun with --retry-failed after a fix)",
        file=sys.stderr,
    )
    for error, n in counts.head(3).items():
        print(f"  {n} x {error}", file=sys.stderr)
    if len(counts) > 3:
        print(f"  ... and {len(counts) - 3} other error(s)", file=sys.stderr)


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace, workers: int) -> Iterator[Any]:
    """A Dask client on --scheduler or on a local cluster; a connection failure is a clear error."""
    from distributed import Client, LocalCluster

    if args.dask_local:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
        with cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(args.scheduler, timeout=DASK_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"--scheduler {args.scheduler}: cannot connect to a Dask scheduler ({type(exc).__name__}: "
            f"{exc}); give the address of a running one as tcp://HOST:PORT (tried for {DASK_CONNECT_TIMEOUT_S} s)"
        ) from exc
    with client:
        yield client


def _plot(args: argparse.Namespace) -> None:
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = sorted(set(formats) - {"html", "png"})
    if bad or not formats:
        raise ConfigError(f"--format {args.format!r}: allowed formats are html, png")
    folder = _folder(args.results)
    out = output_dir(Path(args.out) if args.out else folder / "plots", "--out")
    slo = _slo(args)
    from radsim.study.sweep import read_results

    table = read_results(Path(args.results))  # a bad results file is named before Chromium is tried
    if "png" in formats:
        _check_png_export()
    _draw(Path(args.results), out, formats, slo, table)


def _report(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else _folder(args.results) / "report.html"
    _write_report(Path(args.results), output_file(out, "--out", (".html", ".htm")), _slo(args))


def _folder(results: str | Path) -> Path:
    path = Path(results)
    return path if path.is_dir() else path.parent


def _draw(
    results: Path, out: Path, formats: tuple[str, ...], slo: tuple[float, float] | None, table=None
) -> None:
    from radsim.study.plots import build_figures, write_figures
    from radsim.study.sweep import read_results

    table = read_results(results) if table is None else table
    figures = _from_table(results, lambda: build_figures(table, slo), "draw the plots")
    for path in write_figures(figures, out, formats, stream=sys.stderr):
        print(f"wrote {path}")


def _write_report(results: Path, out: Path, slo: tuple[float, float] | None) -> None:
    from radsim.study.report import write_report
    from radsim.study.sweep import read_results

    table = read_results(results)  # the page is built before anything is written
    print(f"wrote {_from_table(results, lambda: write_report(table, out, slo), 'write the report')}")


def _from_table(results: Path, make: Callable[[], Any], what: str) -> Any:
    """`make()`, with a table whose columns do not hold what they should reported as a bad input."""
    try:
        return make()
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise ConfigError(
            f"{results}: cannot {what} from this table ({type(exc).__name__}: {exc}); "
            "is it a radsim result table, whole and of this version?"
        ) from exc
