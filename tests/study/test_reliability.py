"""A study run that is killed, resumed, run twice at once or asked too much: it tells the truth and loses nothing.

- SIGKILL of `radsim study run` at random moments, then a resume: the table equals an uninterrupted
  run's; after each kill the tables on disk are whole and the pool's workers are gone.
- A second run on a folder that a live process holds is refused, naming that process; the lock of a
  process that died is taken over.
- A study is checked whole before any point runs: its size from the axes (refused above the limit,
  fast, whatever the size), unread fixed inputs warned about; failed points give exit status 1.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from radsim.cli.main import main
from radsim.errors import ConfigError
from radsim.study import sweep
from radsim.study.load import load_study
from radsim.study.sweep import (
    LOCK_FILE,
    RESULTS_CSV,
    RESULTS_PARQUET,
    folder_lock,
    read_results,
    run_study,
    serial_runner,
)

KILL_STUDY = """
[study]
name = "kill"
[fixed]
hw = "h100_sxm"
arch = "llama3.1-8b"
prompt_tokens = 32
output_tokens = 8
[[grid]]
command = "estimate"
[grid.axes]
batch = [1, 2, 4, 8, 16, 32]
depth_fraction = [1.0, 0.75, 0.5, 0.25]
[[grid]]
command = "simulate"
arrival = "poisson"
rate_per_s = 20.0
duration_s = 3.0
[grid.axes]
depth_fraction = [1.0, 0.5]
seed = [0, 1, 2, 3]
"""
SMALL_STUDY = """
[study]
name = "{name}"
[fixed]
hw = "h100_sxm"
arch = "llama3.1-8b"
prompt_tokens = 32
output_tokens = 8
rate_per_s = 3.0   # read by simulations only: no grid here runs one
[[grid]]
command = "estimate"
[grid.axes]
batch = [1, 2]
"""


def _start(study: Path, out: Path) -> subprocess.Popen:
    """`radsim study run` in its own interpreter, two worker processes, a checkpoint every 0.2 s."""
    program = (
        "import sys; import radsim.study.sweep as sweep; sweep.CHECKPOINT_INTERVAL_S = 0.2; "
        "from radsim.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["study", "run", str(study), "--out", str(out), "--workers", "2", "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-c", program, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _check_whole(out: Path) -> int:
    """The tables a killed run left: both readable, the CSV no newer than the Parquet; their rows."""
    if not (out / RESULTS_PARQUET).exists():
        assert not (out / RESULTS_CSV).exists()
        return 0
    table = read_results(out)
    csv = read_results(out / RESULTS_CSV)
    assert set(csv["point_id"]) <= set(table["point_id"])
    return len(table)


def _rows_on_disk(out: Path) -> int:
    try:
        return len(pd.read_parquet(out / RESULTS_PARQUET, columns=["point_id"]))
    except (OSError, ValueError):
        return 0


def _kill_at_a_random_moment(proc: subprocess.Popen, out: Path, rng: random.Random, first: bool) -> bool:
    """SIGKILL the run: the first time at a random moment of its start-up, later a random moment
    after it wrote new rows. Whether it was killed (not finished first); its workers are gone after."""
    if first:
        time.sleep(rng.uniform(0.3, 1.5))
    else:
        before, deadline = _rows_on_disk(out), time.monotonic() + 30.0
        while proc.poll() is None and _rows_on_disk(out) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    killed = proc.wait(timeout=30) == -signal.SIGKILL
    deadline = time.monotonic() + 5.0
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "pool workers outlived their killed parent"
    return killed


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc for the pool's workers")
def test_killed_runs_resume_to_the_uninterrupted_table(tmp_path):
    study = tmp_path / "kill.toml"
    study.write_text(KILL_STUDY)
    out = tmp_path / "killed"
    rng = random.Random(16)
    progress = []
    for round in range(4):
        proc = _start(study, out)
        killed = _kill_at_a_random_moment(proc, out, rng, first=round == 0)
        progress.append((killed, _check_whole(out)))
    print(f"(killed, rows on disk) after each round: {progress}")
    assert sum(killed and 0 < rows < 32 for killed, rows in progress) >= 2  # killed mid-run, twice at least
    assert main(["study", "run", str(study), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_FILE).exists()
    reference = tmp_path / "reference"
    run_study(load_study(study), reference, serial_runner, stream=None)
    pd.testing.assert_frame_equal(read_results(out), read_results(reference))
    pd.testing.assert_frame_equal(read_results(out / RESULTS_CSV), read_results(reference / RESULTS_CSV))


def test_a_second_run_on_a_held_folder_is_refused_and_a_dead_holders_lock_taken(tmp_path, capsys):
    out = tmp_path / "shared"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from radsim.study.sweep import folder_lock\n"
            "with folder_lock(Path(sys.argv[1]), 'first'):\n"
            "    print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for name in ("first", "second"):  # the same study or another: either would lose results
            study = tmp_path / f"{name}.toml"
            study.write_text(SMALL_STUDY.format(name=name))
            assert main(["study", "run", str(study), "--out", str(out), "--quiet"]) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid}" in err and "in use" in err and "--out" in err, err
            assert not (out / RESULTS_PARQUET).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (out / LOCK_FILE).exists()  # a SIGKILL leaves the file, not the lock
    assert main(["study", "run", str(tmp_path / "second.toml"), "--out", str(out), "--quiet"]) == 0
    assert len(read_results(out)) == 2 and not (out / LOCK_FILE).exists()


def test_a_stale_lock_file_is_taken_over_and_the_same_process_cannot_lock_twice(tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (out / LOCK_FILE).write_text(f"pid {dead.stdout.strip()} on elsewhere, study 'old'\n")
    with folder_lock(out, "new") as path:
        assert f"pid {os.getpid()}" in path.read_text()
        with pytest.raises(ConfigError, match="already running"), folder_lock(out, "again"):
            pass
    assert not (out / LOCK_FILE).exists()


def test_checkpoints_write_both_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "CHECKPOINT_INTERVAL_S", 0.0)
    study = tmp_path / "s.toml"
    study.write_text(SMALL_STUDY.format(name="cp").replace("batch = [1, 2]", "batch = [1, 2, 3, 4]"))
    seen = []

    def runner(points, traces):
        for i, row in enumerate(serial_runner(points, traces)):
            if i == 2:  # by now two checkpoints were written: both files, whole
                seen.append(
                    (len(read_results(tmp_path / "out")), len(read_results(tmp_path / "out" / RESULTS_CSV)))
                )
            yield row

    run_study(load_study(study), tmp_path / "out", runner, stream=None)
    assert seen == [(2, 2)]


def test_a_study_is_sized_from_its_axes_before_anything_is_expanded(tmp_path, capsys):
    study = tmp_path / "huge.toml"
    keys = ("batch", "seed", "tp", "layers", "prefill_chunk")
    axes = "".join(f"{key} = {list(range(1, 101))}\n" for key in keys)
    study.write_text(SMALL_STUDY.format(name="huge").replace("batch = [1, 2]\n", axes))
    started = time.perf_counter()
    assert main(["study", "run", str(study), "--out", str(tmp_path / "o")]) == 2
    assert time.perf_counter() - started < 5.0  # 10^10 points: refused from the axes' lengths
    err = capsys.readouterr().err
    assert "10,000,000,000 points" in err and "limit of 100,000" in err and "--max-points" in err


def test_unread_fixed_inputs_are_warned_about(tmp_path, capsys):
    study = tmp_path / "warn.toml"
    study.write_text(SMALL_STUDY.format(name="warn"))
    assert main(["study", "run", str(study), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "radsim: warning:" in err and "'rate_per_s'" in err and "command simulate, capacity only" in err


def test_failed_points_fail_the_run_and_say_where_the_errors_are(tmp_path, capsys):
    study = tmp_path / "fail.toml"
    study.write_text(SMALL_STUDY.format(name="fail").replace('arch = "llama3.1-8b"', 'arch = "llama3.1-70b"'))
    assert main(["study", "run", str(study), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "2 points (2 failed)" in captured.out
    assert "2 point(s) failed" in captured.err and str(tmp_path / "o" / RESULTS_CSV) in captured.err
    assert "1 x " in captured.err and "does not fit" in captured.err
    table = read_results(tmp_path / "o" / RESULTS_CSV)
    assert (table["error"] != "").all()
