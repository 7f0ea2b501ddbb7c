"""The budget, item by item: what fits before a section's deadline, rows kept and rewritten atomically, timing.

`Pace` learns how far the estimates are off; `run_items` runs what fits and records what failed;
a `Sink` rewrites its file every few seconds and at the end, never past `MAX_FILE_BYTES`;
`time_calls` times one operation (CUDA events over graph replays on a GPU).
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from radsim.files import atomic_write_text, json_text
from radsim.measure.campaign.config import CampaignConfig, Device, Rates, Sizes
from radsim.measure.harness import _stats, write_csv

MAX_FILE_BYTES = 15 * 2**20  # a device run brings back files of at most 16 MiB
FLUSH_S = 5.0  # a growing table is rewritten at most this often (and when its section ends)


class Pace:
    """What fits before a section's deadline, item by item; learns how far the estimates are off."""

    def __init__(self, deadline_at: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline_at, self._clock = deadline_at, clock
        self._ratios: list[float] = []
        self._seen = 0

    @property
    def scale(self) -> float:
        """Actual over estimated cost: median of the recent items, damped toward 1."""
        return statistics.median([1.0, 1.0, *self._ratios[-15:]])

    def remaining_s(self) -> float:
        """Seconds until the deadline."""
        return self.deadline_at - self._clock()

    def fits(self, estimate_s: float) -> bool:
        """Whether an item estimated at `estimate_s` ends before the deadline."""
        return estimate_s * self.scale <= self.remaining_s()

    def learn(self, estimate_s: float, actual_s: float) -> None:
        """Record what an item took (the first of a section warms libraries up and is not learnt)."""
        self._seen += 1
        if self._seen > 1 and estimate_s > 0:
            self._ratios.append(min(max(actual_s / estimate_s, 0.05), 50.0))


@dataclass(frozen=True)
class Item:
    """One measurement: a name, its estimated cost and what runs it (returning table rows)."""

    key: str
    estimate_s: float
    run: Callable[[], list[dict[str, Any]]]


@dataclass
class SectionResult:
    """Counts of a section's items and why some did not run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    capped: bool = False

    def status(self) -> str:
        """done, partial, skipped or failed."""
        if self.done and not (self.skipped or self.failed):
            return "done"
        if self.done:
            return "partial"
        return "failed" if self.failed else "skipped"

    def reasons(self) -> list[str]:
        """Why items were skipped or failed."""
        out = (
            [f"{self.skipped} item(s) did not fit in the budget"] if self.skipped and not self.capped else []
        )
        out += [f"stopped at the {MAX_FILE_BYTES // 2**20} MiB file-size cap"] if self.capped else []
        out += [f"{self.failed} item(s) failed (errors below)"] if self.failed else []
        return out + self.notes


class Sink:
    """One section's rows, rewritten atomically to their file every few seconds and at the end."""

    def __init__(self, write: Callable[[list[dict[str, Any]]], None], clock=time.monotonic) -> None:
        self.rows: list[dict[str, Any]] = []
        self._write, self._clock, self._bytes, self._last = write, clock, 0, clock()

    def add(self, rows: list[dict[str, Any]]) -> bool:
        """Keep `rows` unless the file would pass `MAX_FILE_BYTES`; False when it would."""
        size = sum(len(",".join("" if v is None else str(v) for v in r.values())) + 2 for r in rows)
        if self._bytes + size > MAX_FILE_BYTES:
            return False
        self.rows += rows
        self._bytes += size
        if self._clock() - self._last >= FLUSH_S:
            self.flush()
        return True

    def flush(self) -> None:
        """Write every row kept so far (nothing while there are none)."""
        if self.rows:
            self._write(self.rows)
        self._last = self._clock()


class Interrupted(BaseException):
    """SIGTERM arrived: stop after writing what is done (a BaseException, past `except Exception`)."""


@dataclass
class Context:
    """What every section reads and writes: sizes, devices, the output folder and the log."""

    cfg: CampaignConfig
    sizes: Sizes
    rates: Rates
    dev: Device  # CUDA graphs where they apply
    eager: Device  # the same device, no graphs
    folder: Path
    env_doc: dict[str, Any] = field(default_factory=dict)
    log_file: Any = None

    def log(self, line: str, echo: bool = True) -> None:
        """A line in campaign.log (and on stdout when `echo`)."""
        if echo:
            print(line, flush=True)
        if self.log_file is not None:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def set_environment(self, key: str, value: Any) -> None:
        """Set one part of environment.json and rewrite it."""
        self.env_doc[key] = value
        atomic_write_text(self.folder / "environment.json", json_text(self.env_doc, indent=2) + "\n")

    @property
    def measure_dtype(self) -> str:
        """The harness's dtype: bf16 on a GPU, fp32 on CPU (as `radsim measure` and the CPU hardware files)."""
        return "bf16" if self.dev.kind == "cuda" else "fp32"

    def csv_sink(self, name: str, columns: tuple[str, ...]) -> Sink:
        """A sink writing `name` (CSV with `columns`) in the output folder."""
        return Sink(lambda rows: write_csv(rows, self.folder / name, columns))


def free_memory() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_items(ctx: Context, items: Iterable[Item], pace: Pace, sink: Sink, res: SectionResult) -> None:
    """Run each item that fits the pace; rows into `sink` (written even when interrupted); failures recorded."""
    try:
        for item in items:
            if res.capped or not pace.fits(item.estimate_s):
                res.skipped += 1
                continue
            t0 = time.monotonic()
            try:
                rows = item.run()
            except Exception as exc:  # noqa: BLE001 - one failed point must not end a one-shot campaign
                res.failed += 1
                if len(res.errors) < 8:
                    res.errors.append(f"{item.key}: {type(exc).__name__}: {str(exc)[:300]}")
                ctx.log(f"  {item.key} failed: {type(exc).__name__}: {exc}", echo=res.failed <= 3)
                ctx.log(traceback.format_exc(), echo=False)
                free_memory()
                continue
            pace.learn(item.estimate_s, time.monotonic() - t0)
            if not sink.add(rows):
                res.capped = True
                res.skipped += 1
                continue
            res.done += 1
            ctx.log(f"  {item.key}: {_brief(rows[0])} ({time.monotonic() - t0:.2f} s)", echo=False)
    finally:
        sink.flush()


def _brief(row: dict[str, Any]) -> str:
    keys = ("time_s", "flops_per_s", "bandwidth_Bps", "power_W", "eager_launch_s", "graph_launch_s")
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys if isinstance(row.get(k), float))


def time_calls(ctx: Context, fn: Callable[[], Any]) -> dict[str, Any]:
    """Median seconds of one call of `fn` (and p10, p90), timed after warm-up.

    Calls repeat within a sample until it lasts `sample_s`; on CUDA that sample is one CUDA-graph
    replay timed by events (eager where capture fails), so a short kernel is not timed by its launch.
    """
    s, dev = ctx.sizes, ctx.dev
    fn()
    dev.synchronize()
    probe = dev.timer()
    probe.mark()
    fn()
    probe.mark()
    call_s = max(probe.elapsed_s()[0], 1e-7)
    inner = max(1, min(64, math.ceil(s.sample_s / call_s)))

    def calls() -> None:
        for _ in range(inner):
            fn()

    run, timing = calls, "eager" if dev.kind == "cuda" else "host"
    if dev.kind == "cuda":
        try:
            run, timing = dev.graph(calls), "cuda_graph"
        except Exception as exc:  # noqa: BLE001 - an op that cannot be captured is timed eagerly
            ctx.log(f"  graph capture failed ({type(exc).__name__}: {exc}); timing eagerly", echo=False)
    for _ in range(s.warmup):
        run()
    repeats = max(3, min(s.repeats, int(s.item_max_s / (inner * call_s))))
    timer = dev.timer()
    timer.mark()
    for _ in range(repeats):
        run()
        timer.mark()
    return dict(_stats([t / inner for t in timer.elapsed_s()]), repeats=repeats, inner=inner, timing=timing)


def sweep_estimate(ctx: Context, flops: float, moved_bytes: float, filled_bytes: float) -> float:
    """Estimated seconds of one `time_calls` item (allocation included)."""
    r, s = ctx.rates, ctx.sizes
    call = r.launch_s + max(flops / r.flops_per_s, moved_bytes / r.bytes_per_s)
    inner = max(1, min(64, math.ceil(s.sample_s / call)))
    timed = min(s.item_max_s, s.repeats * inner * call)
    return r.item_s + filled_bytes / r.fill_Bps + (3 + (1 + s.warmup) * inner) * call + timed
