"""Running a study: evaluate its points in parallel, resume, show progress, write the table atomically.

Points run in local processes by default (`concurrent.futures`), or on a Dask cluster (a
`dask.distributed.Client`). Whatever runs them, each point is evaluated alone from its own inputs and
seed, and the table lists the points in the order the study expands them, so every runner gives
the same table. Both files of the table (`results.parquet` and `results.csv` in the output folder)
are rewritten through uniquely named temporary files and `os.replace` as points finish (at most once
a second), so an interrupted or killed run leaves whole tables behind; the next run keeps their rows
and evaluates only the missing points.

A run holds a lock on its output folder (`.radsim.lock`, a POSIX record lock that the kernel
releases when the process ends, however it ends): a second run on the same folder is refused,
naming the process that holds it; the lock of a process that has ended is simply taken. Local
worker processes watch their parent and exit when it is gone, so a killed run leaves none behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from radsim.errors import ConfigError
from radsim.files import atomic_write
from radsim.scenario.schema import COMMANDS, LEGACY_COMMAND_KEY, default_of
from radsim.study.load import INPUTS, Study, expand, resolve_trace
from radsim.study.point import evaluate

RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
LOCK_FILE = ".radsim.lock"
CHECKPOINT_INTERVAL_S = 1.0
PARENT_POLL_S = 0.2  # how often a worker checks that the process that started it is alive
_HELD: set[Path] = set()  # folders this process holds (POSIX locks do not exclude their own process)

#: A runner takes the points to evaluate and the resolved trace files, and yields rows as they finish.
Runner = Callable[[list[dict[str, Any]], dict[str, str]], Iterator[dict[str, Any]]]


def serial_runner(points: list[dict[str, Any]], traces: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Evaluate the points one after another in this process."""
    for point in points:
        yield evaluate(point, traces.get(point["trace"]))


def process_runner(workers: int) -> Runner:
    """Evaluate the points in `workers` local processes."""

    def run(points: list[dict[str, Any]], traces: dict[str, str]) -> Iterator[dict[str, Any]]:
        with ProcessPoolExecutor(
            max_workers=workers, initializer=watch_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = {pool.submit(evaluate, p, traces.get(p["trace"])): p for p in points}
            try:
                for future in as_completed(futures):
                    yield _result(future, futures[future])
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    return run


def watch_parent(parent: int, poll_s: float = PARENT_POLL_S) -> None:
    """In a worker: exit as soon as `parent` (the process that started the pool) is gone.

    A pool's workers otherwise outlive a parent killed with SIGKILL, computing for nobody. A daemon
    thread compares `os.getppid()` with the parent's id (an orphan is adopted by another process).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="radsim-watch-parent", daemon=True).start()


def dask_runner(client: Any) -> Runner:
    """Evaluate the points as tasks on the Dask cluster behind `client` (a distributed.Client)."""

    def run(points: list[dict[str, Any]], traces: dict[str, str]) -> Iterator[dict[str, Any]]:
        from distributed import as_completed as dask_completed

        files = [traces.get(p["trace"]) for p in points]
        futures = client.map(evaluate, points, files, pure=False)
        by_key = {f.key: p for f, p in zip(futures, points, strict=True)}
        try:
            for future in dask_completed(futures):
                yield _result(future, by_key[future.key])
        finally:
            client.cancel(futures)

    return run


def _result(future: Any, point: dict[str, Any]) -> dict[str, Any]:
    """A finished task's row; a task that died (worker lost, pickling) becomes a failed row."""
    try:
        return future.result()
    except Exception as exc:
        return {**point, "error": f"{type(exc).__name__}: {exc} (in the runner)"}


class Progress:
    """The study's progress bar (`radsim.progress.bar`): points done of the study's, failures counted."""

    def __init__(self, total: int, done: int, stream: TextIO | None = sys.stderr) -> None:
        from radsim.progress import bar

        self.failed = 0
        self.bar = bar(total, "points", stream, initial=done)

    def update(self, row: dict[str, Any]) -> None:
        """Count one finished point."""
        if row.get("error"):
            self.failed += 1
            self.bar.set_postfix_str(f"{self.failed} failed", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Finish the bar's line."""
        self.bar.close()


def run_study(
    study: Study,
    out_dir: str | Path,
    runner: Runner = serial_runner,
    stream: TextIO | None = sys.stderr,
    retry_failed: bool = False,
) -> pd.DataFrame:
    """Evaluate the study's missing points with `runner`, write and return the whole table.

    The output folder is locked for the run (`folder_lock`); the table is checkpointed as points
    finish and written once more at the end, also when the run is interrupted.
    """
    out = Path(out_dir)
    points = expand(study)
    order = {p["point_id"]: i for i, p in enumerate(points)}
    traces = {p["trace"]: str(resolve_trace(p["trace"], study.path)) for p in points if p["trace"]}
    with folder_lock(out, study.name):
        _remove_stale_temporaries(out)
        rows = _finished_rows(out, study.name, order, retry_failed)
        todo = [p for p in points if p["point_id"] not in rows]
        progress = Progress(len(points), len(rows), stream)
        last_write = time.perf_counter()
        try:
            for row in runner(todo, traces):
                rows[row["point_id"]] = {"study": study.name, "study_description": study.description, **row}
                progress.update(row)
                if time.perf_counter() - last_write >= CHECKPOINT_INTERVAL_S:
                    write_table(results_table(rows.values(), order), out)
                    last_write = time.perf_counter()
        finally:
            progress.close()
            table = results_table(rows.values(), order)
            write_table(table, out)
    return table


@contextlib.contextmanager
def folder_lock(out: Path, study: str) -> Iterator[Path]:
    """Hold `out/.radsim.lock` for a run: refuse a folder another live process holds.

    The lock is a POSIX record lock (`fcntl.lockf`): the kernel drops it when the holder exits, even
    by SIGKILL, so a lock file left by a dead run is taken over. The file names the holder (process
    id, host, study) for the message another run shows.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = (out / LOCK_FILE).resolve()
    if path in _HELD:
        raise ConfigError(f"{out}: this process is already running a study into this folder")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{out} is in use by another `radsim study run` ({holder}); wait for it to finish, "
                "stop it, or choose another --out folder"
            ) from None
        if _same_file(fd, path):  # not unlinked by a run that finished meanwhile
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, study '{study}'\n".encode())
    _HELD.add(path)
    try:
        yield path
    finally:
        _HELD.discard(path)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing drops the lock


def _remove_stale_temporaries(out: Path) -> None:
    """Temporaries of the table left by a killed run (the lock says no one else writes them now)."""
    for name in (RESULTS_PARQUET, RESULTS_CSV):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text else "a process that has not yet written its id"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _finished_rows(
    out: Path, name: str, order: dict[str, int], retry_failed: bool
) -> dict[str, dict[str, Any]]:
    """Rows of an earlier run of this study that are still points of it (and succeeded, if retrying)."""
    path = out / RESULTS_PARQUET
    if not path.exists():
        return {}
    try:
        old = pd.read_parquet(path)
    except Exception as exc:
        raise ConfigError(
            f"{path}: cannot read earlier results ({exc}); remove the file to start over"
        ) from exc
    missing = {"point_id", "study", "error"} - set(old.columns)
    if missing:
        raise ConfigError(
            f"{path}: not a radsim result table (no column(s) {', '.join(sorted(missing))}); "
            "remove it or choose another --out folder"
        )
    old = upgrade_columns(old)
    studies = set(old["study"])
    if studies - {name}:
        raise ConfigError(
            f"{path} holds results of study {sorted(studies)}, not '{name}'; choose another --out folder"
        )
    keep = old["point_id"].isin(order)
    if retry_failed:
        keep &= old["error"].fillna("") == ""
    return {r["point_id"]: r for r in old[keep].to_dict("records")}


def results_table(rows: Iterable[dict[str, Any]], order: dict[str, int]) -> pd.DataFrame:
    """Rows in study order; columns: id, study, inputs, routes label, metrics, then the error."""
    ordered = sorted(rows, key=lambda r: order[r["point_id"]])
    first = ["point_id", "study", *INPUTS, "routes"]
    skip = {*first, "error"}
    metrics = list(dict.fromkeys(k for row in ordered for k in row if k not in skip))  # first seen first
    table = pd.DataFrame.from_records(ordered, columns=[*first, *metrics, "error"])
    table["error"] = table["error"].fillna("")
    return table


def write_table(table: pd.DataFrame, out: Path, csv: bool = True) -> None:
    """Write the table as Parquet (and CSV) through uniquely named temporary files and atomic renames."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RESULTS_PARQUET, lambda tmp: table.to_parquet(tmp, index=False))
    if csv:
        atomic_write(out / RESULTS_CSV, lambda tmp: table.to_csv(tmp, index=False))


def upgrade_columns(table: pd.DataFrame) -> pd.DataFrame:
    """A table as this release writes it, from one an earlier release wrote.

    Before `engine` came to name the serving engine profile, the column `command` was `engine`: a
    table without `command` whose `engine` holds only estimate, simulate and capacity has it renamed
    (its point ids are the same: `Scenario.point_id`), so its results resume, plot and report.
    A table from before engine profiles has no `engine` column: its points ran under the default
    profile, which is filled in.
    """
    old = LEGACY_COMMAND_KEY
    if "command" not in table and old in table and set(table[old]) <= set(COMMANDS):
        table = table.rename(columns={old: "command"})
    if "command" in table and "engine" not in table:
        table = table.assign(engine=default_of("engine"))
    return table


def read_results(path: str | Path) -> pd.DataFrame:
    """A result table from its Parquet or CSV file, or from the folder that holds it.

    ConfigError names the file when it is missing, unreadable, not Parquet/CSV or not a result table.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_PARQUET
    if not path.exists():
        raise ConfigError(f"{path}: no result table (run `radsim study run STUDY --out DIR` first)")
    if path.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"{path}: a result table is results.parquet or results.csv (or their folder)")
    try:
        table = (
            pd.read_csv(path, keep_default_na=False, na_values=[""], encoding="utf-8")
            if path.suffix == ".csv"
            else pd.read_parquet(path)
        )
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        kind = "CSV" if path.suffix == ".csv" else "Parquet"
        raise ConfigError(
            f"{path}: not a readable {kind} result table ({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:  # pyarrow's errors are not all OSError/ValueError
        if type(exc).__module__.split(".")[0] != "pyarrow":
            raise
        raise ConfigError(f"{path}: not a readable Parquet result table ({exc})") from exc
    table = upgrade_columns(table)
    missing = {"point_id", "command", "error"} - set(table.columns)
    if missing:
        legacy = (
            f"; its column '{LEGACY_COMMAND_KEY}' holds {sorted(map(str, set(table[LEGACY_COMMAND_KEY])))[:3]}, "
            f"not only {', '.join(COMMANDS)}"
            if "command" in missing and LEGACY_COMMAND_KEY in table
            else ""
        )
        raise ConfigError(f"{path}: not a study result table (missing columns {sorted(missing)}{legacy})")
    for key in [
        "error",
        "routes",
        "routes_source",
        "warnings",
        "study_description",
        *(k for k, spec in INPUTS.items() if spec.kind is str),
    ]:
        if key in table:  # CSV reads an empty string as missing
            table[key] = table[key].astype(object).fillna("").astype(str)
    _check_result_columns(table, path)
    return table


def _check_result_columns(table: pd.DataFrame, path: Path) -> None:
    """Inputs of the numeric kinds must be numbers; commands must be known (a corrupt table fails here)."""
    bad_commands = sorted(map(str, set(table["command"]) - set(COMMANDS)))
    if bad_commands:
        raise ConfigError(
            f"{path}: column 'command' holds {bad_commands[:3]}; allowed: {', '.join(COMMANDS)}"
        )
    for key, spec in INPUTS.items():
        if key in table and spec.kind in (int, float) and not pd.api.types.is_numeric_dtype(table[key]):
            raise ConfigError(f"{path}: column '{key}' must hold numbers ({spec.kind.__name__})")
