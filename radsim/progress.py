"""Progress bars of long jobs (study runs, capacity searches, long simulations, training, capture),
drawn by tqdm on stderr.

One look everywhere: what is counted, done/total, rate and time left. A bar redraws in place on a
terminal; on a pipe or a log file it writes a line at most every `LOG_INTERVAL_S` seconds (and the
final state), so that logs stay short. `stream=None` draws nothing.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # seconds between lines when the stream is not a terminal


class _Lines:
    """A stream for a pipe or a log: each redraw of the bar becomes a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(
    total: int | None,
    unit: str,
    stream: TextIO | None = sys.stderr,
    initial: int = 0,
    desc: str | None = None,
) -> tqdm:
    """A progress bar counting `unit`s (e.g. "points", "requests"), `initial` of them already done."""
    tty = bool(stream is not None and stream.isatty())
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=f" {unit}",
        file=(stream if tty else _Lines(stream)) if stream is not None else sys.stderr,
        disable=stream is None,
        dynamic_ncols=tty,
        ncols=None if tty else 100,
        mininterval=0.1 if tty else LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S if tty else 10 * LOG_INTERVAL_S,
        bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit}{postfix} [{elapsed}<{remaining}, {rate_fmt}]"
        if total is not None
        else "{desc}{n_fmt}{unit}{postfix} [{elapsed}, {rate_fmt}]",
        leave=True,
    )
