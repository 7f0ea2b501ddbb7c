"""`radsim study run`, `radsim study plot` and `radsim report` on the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from radsim.errors import ConfigError

DEFAULT_RESULTS = Path("results")


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
    run.set_defaults(func=_run)
    plot = commands.add_parser("plot", help="draw a study's plots (HTML and PNG) from its result table")
    plot.add_argument("results", help="result folder, results.parquet or results.csv")
    plot.add_argument("--out", help="plot folder (default: plots/ beside the table)")
    plot.add_argument("--format", default="html,png", help="comma-separated: html, png")
    plot.set_defaults(func=_plot)
    report = sub.add_parser("report", help="one self-contained HTML page of a study's plots and tables")
    report.add_argument("results", help="result folder, results.parquet or results.csv")
    report.add_argument("--out", help="HTML file (default: report.html beside the table)")
    report.set_defaults(func=_report)


def _workers(requested: int | None) -> int:
    if requested is not None and requested < 1:
        raise ConfigError(f"--workers must be >= 1, got {requested}")
    return requested or len(os.sched_getaffinity(0))


def _run(args: argparse.Namespace) -> None:
    from radsim.study.load import load_study
    from radsim.study.sweep import dask_runner, process_runner, run_study, serial_runner

    study = load_study(args.file)
    out = Path(args.out) if args.out else DEFAULT_RESULTS / study.name
    workers = _workers(args.workers)
    stream = None if args.quiet else sys.stderr
    if args.scheduler or args.dask_local:
        from distributed import Client, LocalCluster

        if args.scheduler:
            client = Client(args.scheduler)
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
            client = Client(cluster)
        with client:
            table = run_study(study, out, dask_runner(client), stream, args.retry_failed)
    else:
        runner = serial_runner if workers == 1 else process_runner(workers)
        table = run_study(study, out, runner, stream, args.retry_failed)
    failed = int((table["error"] != "").sum())
    print(f"{len(table)} points ({failed} failed) -> {out / 'results.parquet'}, {out / 'results.csv'}")
    if args.plot:
        _draw(out, out / "plots", ("html", "png"))
        _write_report(out, out / "report.html")


def _plot(args: argparse.Namespace) -> None:
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = sorted(set(formats) - {"html", "png"})
    if bad or not formats:
        raise ConfigError(f"--format {args.format!r}: allowed formats are html, png")
    folder = _folder(args.results)
    _draw(Path(args.results), Path(args.out) if args.out else folder / "plots", formats)


def _report(args: argparse.Namespace) -> None:
    _write_report(Path(args.results), Path(args.out) if args.out else _folder(args.results) / "report.html")


def _folder(results: str | Path) -> Path:
    path = Path(results)
    return path if path.is_dir() else path.parent


def _draw(results: Path, out: Path, formats: tuple[str, ...]) -> None:
    from radsim.study.plots import build_figures, write_figures
    from radsim.study.sweep import read_results

    figures = build_figures(read_results(results))
    for path in write_figures(figures, out, formats):
        print(f"wrote {path}")


def _write_report(results: Path, out: Path) -> None:
    from radsim.study.report import write_report
    from radsim.study.sweep import read_results

    print(f"wrote {write_report(read_results(results), out)}")
