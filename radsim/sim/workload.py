"""Workloads: when requests arrive and how long their prompts and outputs are.

Arrival processes: Poisson (exponential gaps at `rate_per_s`), bursty gamma (gaps with the same mean
and coefficient of variation `burstiness`; 1 is Poisson, larger is burstier), and replay of a CSV
with columns `arrival_s,prompt_tokens,output_tokens`. Lengths are fixed, uniform on [low, high], or
lognormal with a given mean and coefficient of variation, clipped to [1, max]. Everything is drawn
from one seeded generator, so the same configuration gives the same requests.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radsim.errors import ConfigError
from radsim.files import read_text

ARRIVALS = ("poisson", "gamma", "replay")
LENGTH_KINDS = ("fixed", "uniform", "lognormal")
MAX_REQUESTS = 10_000_000  # most requests one workload draws (an hour at 40/s is 144,000)


@dataclass(frozen=True)
class Request:
    """One request: when it arrives and how many tokens it brings and wants."""

    id: int
    arrival_at: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution."""

    kind: str = "fixed"
    mean: float = 512.0
    cv: float = 0.5  # lognormal: coefficient of variation
    low: int = 1  # uniform bounds
    high: int = 1024
    max_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_KINDS:
            raise ConfigError(f"length kind '{self.kind}'; allowed: {', '.join(LENGTH_KINDS)}")
        if self.mean < 1 or self.cv < 0 or not 1 <= self.low <= self.high or self.max_tokens < 1:
            raise ConfigError("lengths need mean >= 1, cv >= 0, 1 <= low <= high, max_tokens >= 1")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` lengths as integers in [1, max_tokens]."""
        if self.kind == "fixed":
            values = np.full(n, self.mean)
        elif self.kind == "uniform":
            values = rng.integers(self.low, self.high + 1, size=n).astype(np.float64)
        else:
            sigma2 = np.log1p(self.cv**2)
            values = rng.lognormal(np.log(self.mean) - sigma2 / 2, np.sqrt(sigma2), size=n)
        return np.clip(np.rint(values), 1, self.max_tokens).astype(np.int64)


@dataclass(frozen=True)
class WorkloadConfig:
    """Arrivals over [0, duration_s) and the lengths of each request."""

    arrival: str = "poisson"
    rate_per_s: float = 1.0
    duration_s: float = 60.0
    burstiness: float = 1.0  # gamma: coefficient of variation of the gaps
    prompt: LengthDist = field(default_factory=lambda: LengthDist(mean=512))
    output: LengthDist = field(default_factory=lambda: LengthDist(mean=128))
    replay_csv: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arrival not in ARRIVALS:
            raise ConfigError(f"arrival '{self.arrival}'; allowed: {', '.join(ARRIVALS)}")
        if self.arrival == "replay" and not self.replay_csv:
            raise ConfigError("arrival 'replay' needs a CSV file (--replay FILE)")
        if self.arrival != "replay" and (self.rate_per_s <= 0 or self.duration_s <= 0):
            raise ConfigError("--rate and --duration must be > 0")
        if self.burstiness <= 0:
            raise ConfigError("--burstiness must be > 0")
        if self.arrival != "replay" and self.rate_per_s * self.duration_s > MAX_REQUESTS:
            raise ConfigError(
                f"'rate_per_s' x 'duration_s' = {self.rate_per_s * self.duration_s:.3g} requests; "
                f"allowed: at most {MAX_REQUESTS:,} per run (lower the rate or the duration)"
            )


def generate(cfg: WorkloadConfig) -> list[Request]:
    """The requests of a workload, in arrival order."""
    if cfg.arrival == "replay":
        return read_replay(Path(cfg.replay_csv or ""))
    rng = np.random.default_rng(cfg.seed)
    expected = int(cfg.rate_per_s * cfg.duration_s * 1.5 + 10 * np.sqrt(cfg.rate_per_s * cfg.duration_s) + 10)
    mean_gap = 1.0 / cfg.rate_per_s
    if cfg.arrival == "poisson":
        gaps = rng.exponential(mean_gap, size=expected)
    else:
        shape = 1.0 / cfg.burstiness**2
        gaps = rng.gamma(shape, mean_gap / shape, size=expected)
    times = np.cumsum(gaps)
    times = times[times < cfg.duration_s]
    prompts, outputs = cfg.prompt.sample(rng, times.size), cfg.output.sample(rng, times.size)
    return [
        Request(i, float(t), int(p), int(o))
        for i, (t, p, o) in enumerate(zip(times, prompts, outputs, strict=True))
    ]


def read_replay(path: Path) -> list[Request]:
    """Requests from a CSV with columns arrival_s, prompt_tokens, output_tokens (any order).

    Arrivals are finite seconds >= 0 and token counts integers >= 1; a bad row fails naming the
    file, the line and the column.
    """
    need = ("arrival_s", "prompt_tokens", "output_tokens")
    text = read_text(path, "replay file")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from exc
    header = reader.fieldnames or []
    missing = [c for c in need if c not in header]
    if missing:
        raise ConfigError(
            f"{path}: replay CSV needs columns {', '.join(need)} (missing: {', '.join(missing)})"
        )
    if not rows:
        raise ConfigError(f"{path}: replay CSV has no requests (one row per request after the header)")
    requests = [_replay_row(path, line, row) for line, row in rows]
    requests.sort(key=lambda r: r[0])
    return [Request(i, a, p, o) for i, (a, p, o) in enumerate(requests)]


def _replay_row(path: Path, line: int, row: dict) -> tuple[float, int, int]:
    if None in row:
        raise ConfigError(f"{path}:{line}: the row has more fields than the header")
    if None in row.values():
        raise ConfigError(f"{path}:{line}: the row has fewer fields than the header (a truncated file?)")
    try:
        arrival = float(row["arrival_s"])
    except ValueError:
        raise ConfigError(
            f"{path}:{line}: arrival_s is {row['arrival_s']!r}; allowed: seconds, a finite number >= 0"
        ) from None
    if not math.isfinite(arrival) or arrival < 0:
        raise ConfigError(
            f"{path}:{line}: arrival_s is {row['arrival_s']!r}; allowed: seconds, a finite number >= 0"
        )
    counts = []
    for column in ("prompt_tokens", "output_tokens"):
        try:
            counts.append(int(row[column]))
        except ValueError:
            counts.append(0)
        if counts[-1] < 1:
            raise ConfigError(
                f"{path}:{line}: {column} is {row[column]!r}; allowed: token counts >= 1 (integers)"
            )
    return arrival, counts[0], counts[1]
