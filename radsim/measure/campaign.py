"""GPU campaign: what the cost model needs from one GPU, measured in one prepared, budgeted run.

Device time is scarce, so everything is one command that respects `--budget-s`, writes each
section's file as it goes and brings all back from one folder. Sections, most valuable first:

1. environment: GPU, driver, CUDA and torch versions, clocks and power limits (NVML), date; no host name.
2. power: board power through NVML (the total-energy counter where the GPU has one, else sampled
   power) while idle, while launching small elementwise kernels back to back, while copying a large
   buffer and while running a large bf16 GEMM, with the FLOP/s, bytes/s or kernels/s achieved.
3. bandwidth: copy and triad (a = b + s c) over buffers from cache-sized to DRAM-sized.
4. launch: seconds per tiny kernel launched eagerly, and per kernel replayed from a CUDA graph.
5. gemm: `F.linear` in bf16 and `torch._scaled_mm` in fp8 (e4m3, where the device has it) over M
   = 1..16384 (powers of two first, then others) and the N x K of every projection and LM head of
   Llama-3.1-8B, SmolLM2-135M and SmolLM2-1.7B (shapes read from `radsim/spec/archs/*.toml`).
6. attention: causal prefill SDPA (prompt 128-4096, batch 1-64) and decode SDPA (one query per
   sequence against a KV cache, batch 1-256, context 128-4096), bf16, the same models' heads.
7. measure: `radsim measure`'s harness (`radsim.measure.harness.measure_config`) over sequential and
   radial models (`radsim.measure.specs`: SmolLM2-135M with replayed and random routes, a ~1B
   SmolLM2-1.7B shape, the scratch shape), random weights, bf16 (fp32 on CPU), batch 1-256, prompts
   128-2048, contexts 128-4096 (what fits in 60% of the memory), with CUDA graphs and NVML energy as
   the harness does them. The harness runs slots in order (layer-major): there is no second policy.

Each section may use a share of the time left (`SECTIONS`); an unused share passes on. Inside a
section, items run coarse grid first, then refinements; before each item its cost is estimated
(rough speeds, corrected by what the section's earlier items took) and an item that would not fit
is skipped. Sweep timings are medians of repeats after warm-up, by CUDA events over calls replayed
from a CUDA graph (eager where capture fails; `time.perf_counter` on CPU).

Files written to `--out` (at most 8, each under 16 MiB; each rewritten atomically as it grows):
`manifest.json` (sections done, partial or skipped, with times, counts and reasons),
`environment.json` (environment, power points, launch overhead), `bandwidth.csv`, `gemm.csv`,
`attention.csv`, `measurements.csv` (the harness's columns, read by `radsim validate` and
`radsim calibrate --measurements`) and `campaign.log`. SI units throughout (`time_s`,
`flops_per_s`, `bandwidth_Bps`, `power_W`, `energy_J`).

On the GPU machine, from the repository root (needs torch and numpy, plus pandas and pyarrow for
the replayed traces; not simpy, plotly, scipy or dask, and radsim need not be installed):

    python -m radsim.measure.campaign --out "$OUT" --budget-s 450

The budget counts from the start of the run (CUDA start-up included); importing torch comes before
it. Bring the files back to `measurements/<gpu>-<date>/` (the manifest's `suggested_folder`),
commit them, then `radsim validate --hw h100_sxm --measurements measurements/<gpu>-<date>/measurements.csv`
(with the GPU's hardware file). `radsim calibrate` runs its own microbenchmarks on the machine it
runs on. `--dry-run` runs every section at tiny sizes (on CPU unless `--device` says otherwise) in
seconds: the rehearsal of the whole path.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import os
import re
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import radsim
from radsim.errors import ConfigError
from radsim.files import atomic_write_text, json_text, output_dir
from radsim.measure.harness import (
    COLUMNS,
    DTYPES,
    Config,
    Weights,
    _check_row,
    _stats,
    build_weights,
    check_device,
    grid,
    measure_config,
    write_csv,
)
from radsim.measure.specs import SPECS, spec_arch, step_routes
from radsim.measure.timing import CpuDevice, CudaDevice, PowerSampler, get_device
from radsim.routes.replay import StepRoutes
from radsim.spec.arch import load_arch

Device = CpuDevice | CudaDevice

#: Sections in order of value, with the share of the remaining budget each may use.
SECTIONS: dict[str, float] = {
    "environment": 0.0,
    "power": 0.08,
    "bandwidth": 0.05,
    "launch": 0.02,
    "gemm": 0.22,
    "attention": 0.15,
    "measure": 0.48,
}
SECTION_FILES = {
    "environment": "environment.json",
    "power": "environment.json",
    "bandwidth": "bandwidth.csv",
    "launch": "environment.json",
    "gemm": "gemm.csv",
    "attention": "attention.csv",
    "measure": "measurements.csv",
}
MANIFEST, LOG = "manifest.json", "campaign.log"
MAX_FILE_BYTES = 15 * 2**20  # a device run brings back files of at most 16 MiB
FLUSH_S = 5.0  # a growing table is rewritten at most this often (and when its section ends)

TIMED = ("time_s", "time_s_p10", "time_s_p90", "repeats", "inner", "timing")
BANDWIDTH_COLUMNS: tuple[str, ...] = ("kernel", "array_bytes", "bytes", "dtype", *TIMED, "bandwidth_Bps")
GEMM_COLUMNS: tuple[str, ...] = (
    *("model", "layer", "m", "n", "k", "dtype", *TIMED),
    *("flops", "flops_per_s", "bytes", "bandwidth_Bps"),
)
ATTENTION_COLUMNS: tuple[str, ...] = (
    *("model", "phase", "batch", "query_tokens", "context_tokens", "heads", "kv_heads", "head_dim"),
    *("dtype", "causal", *TIMED, "flops", "flops_per_s", "bytes", "bandwidth_Bps"),
)


@dataclass(frozen=True)
class CampaignConfig:
    """What `radsim campaign` runs: output folder, budget, size and device (checked on construction)."""

    out: str
    budget_s: float = 480.0
    dry_run: bool = False
    device: str | None = None  # None: cuda, or cpu with dry_run
    sections: tuple[str, ...] = tuple(SECTIONS)

    def __post_init__(self) -> None:
        b = self.budget_s
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b <= 0:
            raise ConfigError(f"--budget-s must be a finite number of seconds > 0, got {b!r}")
        if self.device is not None:
            check_device(self.device)
        if not self.sections:
            raise ConfigError(f"--sections is empty; allowed: {', '.join(SECTIONS)}")
        for name in self.sections:
            if name not in SECTIONS:
                raise ConfigError(f"--sections: unknown section {name!r}; allowed: {', '.join(SECTIONS)}")

    @property
    def device_name(self) -> str:
        """The device measured."""
        return self.device or ("cpu" if self.dry_run else "cuda")

    @property
    def selected(self) -> list[str]:
        """The sections to run, in campaign order."""
        return [s for s in SECTIONS if s in self.sections]


def config_from_args(args: argparse.Namespace) -> CampaignConfig:
    """The configuration of parsed `radsim campaign` options."""
    names = tuple(p.strip() for p in (args.sections or "").split(",") if p.strip())
    return CampaignConfig(args.out, args.budget_s, args.dry_run, args.device, names or tuple(SECTIONS))


@dataclass(frozen=True)
class GridPlan:
    """Models the harness measures over one set of axes."""

    models: tuple[str, ...]
    prefill_batches: tuple[int, ...]
    prompts: tuple[int, ...]
    decode_batches: tuple[int, ...]
    contexts: tuple[int, ...]


@dataclass(frozen=True)
class Sizes:
    """Every size the campaign uses: the full GPU campaign or the tiny rehearsal."""

    warmup: int
    repeats: int
    item_max_s: float  # timed work of one sweep item, at most
    sample_s: float  # calls per timed sample until it lasts this long (one graph replay on CUDA)
    power_s: float
    power_warm_s: float
    power_min_s: float
    power_stream_bytes: int
    power_gemm_n: int
    launch_kernels: int
    bandwidth_bytes: tuple[int, ...]
    gemm_archs: tuple[str, ...]
    gemm_m: tuple[tuple[int, ...], ...]  # groups, most informative first
    lm_head_max_m: int  # the head sees one row per sequence: no prompt-sized M
    fp8_max_flops: float  # fp8 points above this left out (CPUs emulate fp8, slowly)
    attention_archs: tuple[str, ...]
    prefill_batches: tuple[int, ...]
    prefill_seqs: tuple[int, ...]
    max_prefill_tokens: int
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    grid: tuple[GridPlan, ...]
    measure_warmup: int
    measure_repeats: int
    measure_min_s: float


POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTEXTS = (128, 256, 512, 1024, 2048, 4096)
PROMPTS = dict(prefill_batches=(1, 2, 4, 8, 16), prompts=(128, 256, 512, 1024, 2048))
FULL = Sizes(
    warmup=2,
    repeats=10,
    item_max_s=0.2,
    sample_s=1e-4,
    power_s=3.0,
    power_warm_s=0.5,
    power_min_s=0.5,
    power_stream_bytes=2**30,
    power_gemm_n=8192,
    launch_kernels=200,
    bandwidth_bytes=tuple(2**i for i in range(20, 33, 2)),  # 1 MiB (in L2) .. 4 GiB
    gemm_archs=("llama3.1-8b", "smollm2-135m", "smollm2-1.7b"),
    gemm_m=(
        tuple(2**i for i in range(15)),  # 1 .. 16384
        (3, 6, 12, 24, 48, 96, 192, 384, 768, 1536, 3072, 6144, 12288),  # 1.5 x powers of two
        (7, 100, 1000, 2047, 10000),  # off any tile
    ),
    lm_head_max_m=4096,
    fp8_max_flops=math.inf,
    attention_archs=("llama3.1-8b", "smollm2-135m", "smollm2-1.7b"),
    prefill_batches=(1, 2, 4, 8, 16, 32, 64),
    prefill_seqs=(128, 256, 512, 1024, 2048, 4096),
    max_prefill_tokens=2**17,
    decode_batches=POW2,
    decode_contexts=CONTEXTS,
    grid=(
        GridPlan(("smollm2-seq", "smollm2-radial"), **PROMPTS, decode_batches=POW2, contexts=CONTEXTS),
        GridPlan(
            ("smollm2-1.7b-seq", "smollm2-1.7b-half"), **PROMPTS, decode_batches=POW2, contexts=CONTEXTS
        ),
        GridPlan(("smollm2-half",), **PROMPTS, decode_batches=POW2, contexts=CONTEXTS),
        # the scratch shape holds 4096 positions: a decode step at context 4096 needs 4097
        GridPlan(
            ("scratch-seq", "scratch-radial", "scratch-radial-p05"),
            **PROMPTS,
            decode_batches=POW2,
            contexts=CONTEXTS[:-1],
        ),
    ),
    measure_warmup=3,
    measure_repeats=10,
    measure_min_s=0.05,
)
TINY = Sizes(
    warmup=1,
    repeats=3,
    item_max_s=0.02,
    sample_s=0.0,
    power_s=0.1,
    power_warm_s=0.02,
    power_min_s=0.02,
    power_stream_bytes=2**22,
    power_gemm_n=128,
    launch_kernels=20,
    bandwidth_bytes=(2**16, 2**20),
    gemm_archs=("smollm2-135m",),
    gemm_m=((1, 16), (3,)),
    lm_head_max_m=1,
    fp8_max_flops=2e6,
    attention_archs=("llama3.1-8b",),
    prefill_batches=(1,),
    prefill_seqs=(64, 128),
    max_prefill_tokens=128,
    decode_batches=(1, 2),
    decode_contexts=(128,),
    grid=(GridPlan(("tiny-seq", "tiny-radial", "scratch-radial"), (1, 2), (16,), (1, 2), (16,)),),
    measure_warmup=1,
    measure_repeats=3,
    measure_min_s=0.0,
)


@dataclass(frozen=True)
class Rates:
    """Rough speeds that estimate an item's cost before it runs: scheduling only, never reported."""

    flops_per_s: float
    bytes_per_s: float
    fill_Bps: float  # torch.randn into a new tensor
    launch_s: float
    item_s: float  # fixed cost of one item: allocation, capture, synchronisation, bookkeeping
    route_entry_s: float  # host work per (sequence, token, step) entry of a harness step's routes
    init_s_per_param: float  # building a harness model's random weights


RATES = {
    "cuda": Rates(3e14, 2e12, 2e11, 1e-5, 5e-3, 2e-7, 1e-9),
    "cpu": Rates(2e10, 5e9, 4e8, 2e-5, 2e-3, 2e-7, 2e-8),
}


def bisection_levels(n: int) -> list[int]:
    """Level of each of n ordered grid points: both ends 0, the middle 1, the quarters 2, ..."""
    level = [-1] * n
    k = 0
    while -1 in level:
        parts = 2**k
        for j in range(parts + 1):
            i = round(j * (n - 1) / parts)
            if level[i] < 0:
                level[i] = k
        k += 1
    return level


def levels_of(values: Iterable[int]) -> dict[int, int]:
    """Coarse-to-fine level of each distinct value (see `bisection_levels`)."""
    ordered = sorted(set(values))
    return dict(zip(ordered, bisection_levels(len(ordered)), strict=True))


def grouped_levels(groups: Sequence[Sequence[int]]) -> dict[int, int]:
    """Levels of values in groups: every level of a group before the first of the next."""
    out: dict[int, int] = {}
    for group in groups:
        base = max(out.values(), default=-1) + 1
        for v, lv in levels_of(group).items():
            out.setdefault(v, base + lv)
    return out


@dataclass(frozen=True)
class GemmPoint:
    """One GEMM: `m` rows through the (n x k) weight of a model's layer."""

    model: str
    layer: str
    m: int
    n: int
    k: int
    dtype: str


def layer_shapes(arch_name: str) -> list[tuple[str, int, int]]:
    """(layer, n, k) of every projection of one decoder layer and the LM head, as the harness fuses them."""
    a = load_arch(arch_name)
    ffn = a.ffn_matrices - 1  # gate and up fused (SwiGLU), or up alone
    return [
        ("qkv", a.q_width + 2 * a.kv_width, a.hidden_size),
        ("o", a.hidden_size, a.q_width),
        ("gate_up", ffn * a.ffn_size, a.hidden_size),
        ("down", a.hidden_size, a.ffn_size),
        ("lm_head", a.vocab_size, a.hidden_size),
    ]


def gemm_plan(sizes: Sizes, dtypes: Sequence[str]) -> list[GemmPoint]:
    """Every GEMM of the sweep, coarse M levels of every shape and dtype first."""
    level = grouped_levels(sizes.gemm_m)
    keyed = []
    for (di, dtype), (ai, arch), m in itertools.product(
        enumerate(dtypes), enumerate(sizes.gemm_archs), level
    ):
        for li, (layer, n, k) in enumerate(layer_shapes(arch)):
            if (layer != "lm_head" or m <= sizes.lm_head_max_m) and (
                dtype != "fp8" or 2.0 * m * n * k <= sizes.fp8_max_flops
            ):
                keyed.append(((level[m], di, ai, li, m), GemmPoint(arch, layer, m, n, k, dtype)))
    return [p for _, p in sorted(keyed, key=lambda kp: kp[0])]


@dataclass(frozen=True)
class AttentionPoint:
    """One SDPA call: causal prefill of `tokens` per sequence, or one decode query against `tokens` keys."""

    model: str
    phase: str
    batch: int
    tokens: int
    heads: int
    kv_heads: int
    head_dim: int


def attention_plan(sizes: Sizes) -> list[AttentionPoint]:
    """Prefill and decode points of every architecture, corners of each grid first."""
    axes = {
        "prefill": (sizes.prefill_batches, sizes.prefill_seqs),
        "decode": (sizes.decode_batches, sizes.decode_contexts),
    }
    keyed = []
    for ai, arch in enumerate(sizes.attention_archs):
        a = load_arch(arch)
        for pi, (phase, (batches, lengths)) in enumerate(axes.items()):
            lb, lt = levels_of(batches), levels_of(lengths)
            for b, t in itertools.product(batches, lengths):
                if phase == "prefill" and b * t > sizes.max_prefill_tokens:
                    continue
                point = AttentionPoint(arch, phase, b, t, a.num_heads, a.num_kv_heads, a.head_dim)
                keyed.append(((max(lb[b], lt[t]), ai, pi, b, t), point))
    return [p for _, p in sorted(keyed, key=lambda kp: kp[0])]


def bandwidth_plan(sizes: Sizes) -> list[tuple[str, int]]:
    """(kernel, bytes per array): DRAM- and cache-sized buffers first, copy before triad."""
    level = levels_of(sizes.bandwidth_bytes)
    order = sorted(sizes.bandwidth_bytes, key=lambda b: (level[b], -b))
    return [(kernel, b) for b in order for kernel in ("copy", "triad")]


def config_bytes(cfg: Config, dtype_bytes: int) -> float:
    """Device memory one harness configuration needs, roughly: weights, KV caches, activations."""
    spec = SPECS[cfg.model]
    a = spec_arch(spec)
    slots = a.num_layers * (2 if spec.trace else 1)  # replayed routes may take a second pass
    length = cfg.tokens + (cfg.phase == "decode")
    kv = 2 * 1.2 * cfg.batch * length * a.kv_width * dtype_bytes * slots  # K and V, + fill and gather
    tokens = cfg.batch * (cfg.tokens if cfg.phase == "prefill" else 1)
    act = 3 * tokens * (2 * a.ffn_size + a.q_width + 2 * a.kv_width + 4 * a.hidden_size) * dtype_bytes
    return a.total_params * dtype_bytes + kv + act + 4.0 * cfg.batch * a.vocab_size


def measure_plan(sizes: Sizes, memory_bytes: float, dtype_bytes: int = 2) -> list[Config]:
    """Harness configurations, corners of every model's grid first; those over `memory_bytes` left out."""
    keyed = []
    for gi, plan in enumerate(sizes.grid):
        configs = grid(
            list(plan.models),
            ["prefill", "decode"],
            list(plan.decode_batches),
            list(plan.prompts),
            list(plan.contexts),
            list(plan.prefill_batches),
        )
        levels = {
            "prefill": (levels_of(plan.prefill_batches), levels_of(plan.prompts)),
            "decode": (levels_of(plan.decode_batches), levels_of(plan.contexts)),
        }
        for c in configs:
            if c.phase == "prefill" and c.batch * c.tokens > sizes.max_prefill_tokens:
                continue
            if config_bytes(c, dtype_bytes) > memory_bytes:
                continue
            lb, lt = levels[c.phase]
            key = (max(lb[c.batch], lt[c.tokens]), gi, plan.models.index(c.model), c.phase, c.batch, c.tokens)
            keyed.append((key, c))
    return [c for _, c in sorted(keyed, key=lambda kc: kc[0])]


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


def _free_memory() -> None:
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
                _free_memory()
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


# ---------------------------------------------------------------- environment


def environment_section(ctx: Context, pace: Pace) -> SectionResult:
    """Device, driver, versions, clocks and limits; no host name."""
    env = {k: v for k, v in ctx.dev.environment().items() if k != "host"}
    env.update(numpy_version=np.__version__, radsim_version=radsim.__version__)
    if ctx.dev.kind == "cuda":
        index = ctx.dev.torch_device.index or 0
        props = torch.cuda.get_device_properties(index)
        env.update(
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(index))),
            cudnn_version=torch.backends.cudnn.version(),
            l2_cache_bytes=getattr(props, "L2_cache_size", None),
        )
        nvml, reason = open_nvml(ctx.dev)
        env["nvml"] = nvml.facts() if nvml is not None else {"status": "unavailable", "reason": reason}
    env["fp8_gemm"] = fp8_unavailable(ctx.dev.torch_device) or "available"
    ctx.set_environment("environment", env)
    ctx.log(f"  {env.get('device_name')}, torch {env.get('torch_version')}, CUDA {env.get('cuda_version')}")
    return SectionResult(done=1)


class Nvml:
    """One GPU through NVML (pynvml): board power, the total-energy counter, clocks and limits."""

    def __init__(self, index: int) -> None:
        import pynvml  # lazily: only a GPU campaign needs it

        pynvml.nvmlInit()
        self.nv, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)

    def query(self, name: str, *args: Any) -> Any:
        """`pynvml.<name>(handle, *args)`, or None where the GPU or driver does not support it."""
        try:
            value = getattr(self.nv, name)(self.handle, *args)
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported and kin: the figure is absent
            return None
        return value.decode() if isinstance(value, bytes) else value

    def power_W(self) -> float:
        """Board power now."""
        return self.nv.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def energy_J(self) -> float | None:
        """Energy since the driver loaded (Volta and later), or None."""
        mJ = self.query("nvmlDeviceGetTotalEnergyConsumption")
        return None if mJ is None else mJ / 1000.0

    def facts(self) -> dict[str, Any]:
        """Name, driver, clocks (now and at most), power limits, memory, modes."""
        nv, q = self.nv, self.query
        mW = lambda v: None if v is None else v / 1000.0  # noqa: E731
        mem = q("nvmlDeviceGetMemoryInfo")
        try:
            driver = nv.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001
            driver = None
        return dict(
            status="available",
            name=q("nvmlDeviceGetName"),
            driver_version=driver.decode() if isinstance(driver, bytes) else driver,
            sm_clock_MHz=q("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM),
            memory_clock_MHz=q("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM),
            max_sm_clock_MHz=q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM),
            max_memory_clock_MHz=q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_MEM),
            application_sm_clock_MHz=q("nvmlDeviceGetApplicationsClock", nv.NVML_CLOCK_SM),
            power_limit_W=mW(q("nvmlDeviceGetPowerManagementLimit")),
            enforced_power_limit_W=mW(q("nvmlDeviceGetEnforcedPowerLimit")),
            default_power_limit_W=mW(q("nvmlDeviceGetPowerManagementDefaultLimit")),
            memory_bytes=None if mem is None else mem.total,
            temperature_C=q("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
            persistence_mode=q("nvmlDeviceGetPersistenceMode"),
            mig_mode=q("nvmlDeviceGetMigMode"),
            energy_counter=self.energy_J() is not None,
        )


def open_nvml(dev: Device) -> tuple[Nvml | None, str | None]:
    """NVML for a CUDA device, or None and the reason it is unavailable."""
    if dev.kind != "cuda":
        return None, "no NVML power sensor on a CPU device"
    try:
        return Nvml(dev.torch_device.index or 0), None
    except ImportError as exc:
        return None, f"pynvml is not installed ({exc})"
    except Exception as exc:  # noqa: BLE001 - NVML missing from the driver, no permission, ...
        return None, f"NVML failed to start ({type(exc).__name__}: {exc})"


def fp8_unavailable(device: torch.device) -> str | None:
    """Why fp8 GEMMs (torch._scaled_mm, float8_e4m3fn) cannot run on `device`, or None."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no torch._scaled_mm or float8_e4m3fn"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"fp8 GEMMs need compute capability 8.9 or later; this GPU is {major}.{minor}"
    try:
        a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except Exception as exc:  # noqa: BLE001 - the probe is the detection
        return f"torch._scaled_mm fails on a 16x16x16 probe ({type(exc).__name__}: {str(exc)[:200]})"
    return None


# ---------------------------------------------------------------- power


@dataclass(frozen=True)
class Work:
    """A workload for a power point: one operation and the work it does."""

    op: Callable[[], Any]
    flops: float = 0.0
    moved_bytes: float = 0.0
    kernels: int = 1


def power_workloads(ctx: Context) -> list[tuple[str, Callable[[], Work | None]]]:
    """Idle, small kernels back to back, a large copy, a large bf16 GEMM."""
    dev, s = ctx.dev.torch_device, ctx.sizes

    def spin() -> Work:
        x = torch.zeros(4096, device=dev)
        return Work(lambda: x.add_(1.0))

    def stream() -> Work:
        src = torch.ones(s.power_stream_bytes // 2, device=dev, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        return Work(lambda: dst.copy_(src), moved_bytes=2.0 * s.power_stream_bytes)

    def gemm() -> Work:
        n = s.power_gemm_n
        a, b = (torch.randn(n, n, device=dev).to(torch.bfloat16) for _ in range(2))
        return Work(lambda: a @ b, flops=2.0 * n**3)

    return [("idle", lambda: None), ("spin", spin), ("stream", stream), ("gemm", gemm)]


def power_point(ctx: Context, nvml: Nvml | None, name: str, build, duration_s: float) -> list[dict]:
    """Mean board power over `duration_s` of one workload (after `power_warm_s` of it)."""
    work: Work | None = build()
    reps = 1
    if work is not None:
        work.op()
        ctx.dev.synchronize()
        t0 = time.perf_counter()
        work.op()
        ctx.dev.synchronize()
        reps = max(1, min(10000, math.ceil(0.02 / max(time.perf_counter() - t0, 1e-7))))

    def chunk() -> None:  # about 20 ms of work, then wait for it
        if work is None:
            time.sleep(0.02)
            return
        for _ in range(reps):
            work.op()
        ctx.dev.synchronize()

    _run_for(chunk, ctx.sizes.power_warm_s)
    sampler = PowerSampler(nvml.power_W, interval_s=0.02) if nvml is not None else None
    e0 = nvml.energy_J() if nvml is not None else None
    with sampler if sampler is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        chunks = _run_for(chunk, duration_s)
        elapsed = time.perf_counter() - t0
    e1 = nvml.energy_J() if nvml is not None else None
    energy = e1 - e0 if e0 is not None and e1 is not None else (sampler.energy_J if sampler else None)
    done = chunks * reps if work is not None else 0
    w = work or Work(lambda: None, kernels=0)
    return [
        dict(
            point=name,
            duration_s=elapsed,
            energy_J=energy,
            power_W=None if energy is None else energy / elapsed,
            sampled_power_W=sampler.mean_W if sampler else None,
            power_samples=len(sampler.samples) if sampler else 0,
            energy_source=None
            if nvml is None
            else ("total_energy_counter" if e0 is not None else "sampled_power"),
            flops_per_s=w.flops * done / elapsed if w.flops else None,
            bandwidth_Bps=w.moved_bytes * done / elapsed if w.moved_bytes else None,
            kernels_per_s=w.kernels * done / elapsed if w.kernels else None,
            sm_clock_MHz=nvml.query("nvmlDeviceGetClockInfo", nvml.nv.NVML_CLOCK_SM) if nvml else None,
            temperature_C=nvml.query("nvmlDeviceGetTemperature", nvml.nv.NVML_TEMPERATURE_GPU)
            if nvml
            else None,
        )
    ]


def _run_for(chunk: Callable[[], None], duration_s: float) -> int:
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < duration_s:
        chunk()
        n += 1
    return n


def power_section(ctx: Context, pace: Pace) -> SectionResult:
    """Power points; without NVML they still run (throughput) and power says why it is missing."""
    res, s = SectionResult(), ctx.sizes
    nvml, reason = open_nvml(ctx.dev)
    doc: dict[str, Any] = dict(status="measured" if nvml else "unavailable", reason=reason, points=[])
    if reason:
        res.notes.append(f"power unavailable: {reason}")
    workloads = power_workloads(ctx)
    per_point = pace.remaining_s() / len(workloads) / 1.3 - s.power_warm_s - ctx.rates.item_s
    duration = min(s.power_s, max(s.power_min_s, per_point))
    doc["duration_s"] = duration

    def write(rows: list[dict[str, Any]]) -> None:
        ctx.set_environment("power", dict(doc, points=rows))

    ctx.set_environment("power", doc)
    items = [
        Item(
            f"power/{name}",
            s.power_warm_s + duration + 0.1 + ctx.rates.item_s,
            functools.partial(power_point, ctx, nvml, name, build, duration),
        )
        for name, build in workloads
    ]
    run_items(ctx, items, pace, Sink(write), res)
    return res


# ---------------------------------------------------------------- bandwidth and launch


def bandwidth_section(ctx: Context, pace: Pace) -> SectionResult:
    """Copy and triad bandwidth over buffers from cache-sized to DRAM-sized."""
    res = SectionResult()
    dev, dt = ctx.dev.torch_device, torch.bfloat16

    def run(kernel: str, nbytes: int) -> list[dict[str, Any]]:
        n = nbytes // 2
        a, b = torch.ones(n, device=dev, dtype=dt), torch.ones(n, device=dev, dtype=dt)
        if kernel == "copy":
            fn, moved = (lambda: a.copy_(b)), 2 * n * 2
        else:
            c = torch.ones(n, device=dev, dtype=dt)
            fn, moved = (lambda: torch.add(b, c, alpha=0.5, out=a)), 3 * n * 2
        t = time_calls(ctx, fn)
        return [
            dict(
                kernel=kernel,
                array_bytes=2 * n,
                bytes=moved,
                dtype="bf16",
                **t,
                bandwidth_Bps=moved / t["time_s"],
            )
        ]

    items = [
        Item(
            f"bandwidth/{kernel}/{nbytes}",
            sweep_estimate(ctx, 0.0, (2 if kernel == "copy" else 3) * nbytes, 3 * nbytes / 50),
            functools.partial(run, kernel, nbytes),
        )
        for kernel, nbytes in bandwidth_plan(ctx.sizes)
    ]
    run_items(ctx, items, pace, ctx.csv_sink("bandwidth.csv", BANDWIDTH_COLUMNS), res)
    return res


def launch_section(ctx: Context, pace: Pace) -> SectionResult:
    """Seconds per tiny kernel: launched eagerly (host wall time to completion) and from a CUDA graph."""
    res, n = SectionResult(), ctx.sizes.launch_kernels
    x = torch.zeros(1, device=ctx.dev.torch_device)
    sync = ctx.dev.synchronize

    def kernels() -> None:
        for _ in range(n):
            x.add_(1.0)

    def wall(fn: Callable[[], Any], per: int) -> dict[str, float]:
        fn()
        sync()
        samples = []
        for _ in range(max(ctx.sizes.repeats, 5)):
            t0 = time.perf_counter()
            fn()
            sync()
            samples.append((time.perf_counter() - t0) / per)
        return _stats(samples)

    def eager() -> list[dict[str, Any]]:
        t = wall(kernels, n)
        return [
            dict(
                kernels=n,
                eager_launch_s=t["time_s"],
                eager_launch_s_p10=t["time_s_p10"],
                eager_launch_s_p90=t["time_s_p90"],
                synchronize_s=wall(lambda: None, 1)["time_s"],
            )
        ]

    def graph() -> list[dict[str, Any]]:
        many, one = ctx.dev.graph(kernels), ctx.dev.graph(lambda: x.add_(1.0))
        t = wall(many, n)
        return [
            dict(
                graph="measured",
                graph_launch_s=t["time_s"],
                graph_launch_s_p10=t["time_s_p10"],
                graph_launch_s_p90=t["time_s_p90"],
                graph_replay_s=wall(one, 1)["time_s"],
            )
        ]

    est = ctx.rates.item_s + 30 * n * ctx.rates.launch_s
    items = [Item("launch/eager", est, eager)]
    doc: dict[str, Any] = {}
    if ctx.dev.kind == "cuda":
        items.append(Item("launch/graph", est, graph))
    else:
        doc["graph"] = "unavailable: CUDA graphs need a CUDA device"
        res.notes.append("graph launch unavailable: CUDA graphs need a CUDA device")

    def write(rows: list[dict[str, Any]]) -> None:
        ctx.set_environment("launch", {k: v for r in [doc, *rows] for k, v in r.items()})

    run_items(ctx, items, pace, Sink(write), res)
    return res


# ---------------------------------------------------------------- GEMM and attention


def gemm_section(ctx: Context, pace: Pace) -> SectionResult:
    """bf16 and fp8 GEMMs over M and every model-layer shape."""
    res = SectionResult()
    dev = ctx.dev.torch_device
    why = fp8_unavailable(dev)
    if why:
        res.notes.append(f"fp8 skipped: {why}")
    weights: dict[tuple[int, int, str], torch.Tensor] = {}
    one = torch.ones((), device=dev)

    def weight(n: int, k: int, dtype: str) -> torch.Tensor:
        if (n, k, dtype) not in weights:
            weights.clear()  # one at a time: consecutive points share their shape
            w = torch.randn(n, k, device=dev)
            weights[(n, k, dtype)] = w.to(torch.float8_e4m3fn if dtype == "fp8" else torch.bfloat16)
        return weights[(n, k, dtype)]

    def run(p: GemmPoint) -> list[dict[str, Any]]:
        w = weight(p.n, p.k, p.dtype)
        if p.dtype == "fp8":
            x8, w8 = torch.randn(p.m, p.k, device=dev).to(torch.float8_e4m3fn), w.t()
            fn = lambda: torch._scaled_mm(x8, w8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
        else:
            x = torch.randn(p.m, p.k, device=dev).to(torch.bfloat16)
            fn = lambda: F.linear(x, w)  # noqa: E731
        with torch.inference_mode():
            t = time_calls(ctx, fn)
        flops, moved = 2.0 * p.m * p.n * p.k, _gemm_bytes(p)
        return [
            dict(
                asdict(p),
                **t,
                flops=flops,
                flops_per_s=flops / t["time_s"],
                bytes=moved,
                bandwidth_Bps=moved / t["time_s"],
            )
        ]

    items = [
        Item(
            f"gemm/{p.dtype}/{p.model}/{p.layer}/m{p.m}",
            sweep_estimate(ctx, 2.0 * p.m * p.n * p.k, _gemm_bytes(p), 4.0 * p.m * p.k),
            functools.partial(run, p),
        )
        for p in gemm_plan(ctx.sizes, ["bf16"] if why else ["bf16", "fp8"])
    ]
    run_items(ctx, items, pace, ctx.csv_sink("gemm.csv", GEMM_COLUMNS), res)
    return res


def _gemm_bytes(p: GemmPoint) -> float:
    size = 1 if p.dtype == "fp8" else 2
    return float((p.m * p.k + p.n * p.k) * size + p.m * p.n * 2)


def attention_section(ctx: Context, pace: Pace) -> SectionResult:
    """Causal prefill and decode SDPA in bf16 at model head shapes."""
    res = SectionResult()
    dev = ctx.dev.torch_device
    items = [
        Item(
            f"attention/{p.model}/{p.phase}/b{p.batch}/t{p.tokens}",
            sweep_estimate(ctx, *_attention_work(p), _attention_work(p)[1] * 2),
            functools.partial(_attention_run, ctx, dev, p),
        )
        for p in attention_plan(ctx.sizes)
    ]
    run_items(ctx, items, pace, ctx.csv_sink("attention.csv", ATTENTION_COLUMNS), res)
    return res


def _attention_work(p: AttentionPoint) -> tuple[float, float]:
    """FLOPs (QK and PV; causal half in prefill) and bytes (q, k, v, out in bf16) of one call."""
    q_tokens = p.tokens if p.phase == "prefill" else 1
    pairs = p.tokens * (p.tokens + 1) / 2 if p.phase == "prefill" else p.tokens
    flops = 4.0 * p.batch * p.heads * p.head_dim * pairs
    moved = 2.0 * p.batch * p.head_dim * (2 * p.heads * q_tokens + 2 * p.kv_heads * p.tokens)
    return flops, moved


def _attention_run(ctx: Context, dev: torch.device, p: AttentionPoint) -> list[dict[str, Any]]:
    q_tokens = p.tokens if p.phase == "prefill" else 1
    q = torch.randn(p.batch, p.heads, q_tokens, p.head_dim, device=dev).to(torch.bfloat16)
    k, v = (
        torch.randn(p.batch, p.kv_heads, p.tokens, p.head_dim, device=dev).to(torch.bfloat16) for _ in "kv"
    )
    causal = p.phase == "prefill"
    with torch.inference_mode():
        t = time_calls(
            ctx, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        )
    flops, moved = _attention_work(p)
    row = dict(
        model=p.model,
        phase=p.phase,
        batch=p.batch,
        query_tokens=q_tokens,
        context_tokens=p.tokens,
        heads=p.heads,
        kv_heads=p.kv_heads,
        head_dim=p.head_dim,
        dtype="bf16",
        causal=causal,
    )
    return [
        dict(
            row,
            **t,
            flops=flops,
            flops_per_s=flops / t["time_s"],
            bytes=moved,
            bandwidth_Bps=moved / t["time_s"],
        )
    ]


# ---------------------------------------------------------------- the harness grid


class HarnessRun:
    """Weights built once per model, trace routes read once per model and phase, graph fallback."""

    def __init__(self, ctx: Context, configs: list[Config]) -> None:
        self.ctx, self.configs = ctx, configs
        self._weights: dict[str, Weights] = {}
        self._routes: dict[tuple[str, str], StepRoutes] = {}
        self.graph_failures = 0

    def weights(self, model: str) -> Weights:
        """The model's random weights in the campaign's dtype, with rotary tables for its longest configuration."""
        if model not in self._weights:
            longest = max(c.tokens + 1 for c in self.configs if c.model == model)
            dev = self.ctx.dev.torch_device
            self._weights[model] = build_weights(
                SPECS[model],
                dev,
                DTYPES[self.ctx.measure_dtype],
                max_pos=longest + 1,
                init_on_device=dev.type == "cuda",
            )
        return self._weights[model]

    def routes(self, cfg: Config) -> StepRoutes:
        """The step's routes; a replayed trace's are a slice of the largest step (same rows, prefix)."""
        spec = SPECS[cfg.model]
        if spec.trace is None:
            return step_routes(spec, cfg.phase, cfg.batch, cfg.tokens)
        key = (cfg.model, cfg.phase)
        if key not in self._routes:
            mine = [c for c in self.configs if (c.model, c.phase) == key]
            self._routes[key] = step_routes(
                spec, cfg.phase, max(c.batch for c in mine), max(c.tokens for c in mine)
            )
        full = self._routes[key]
        length = cfg.tokens + (cfg.phase == "decode")
        return StepRoutes(cfg.phase, full.slots[: cfg.batch, :length], full.num_layers, full.kv_policy)

    def step_estimate_s(self, cfg: Config) -> float:
        """A rough step time: its FLOPs or its bytes at the prior rates, plus launches."""
        r, a = self.ctx.rates, spec_arch(SPECS[cfg.model])
        length = cfg.tokens + (cfg.phase == "decode")
        tokens = cfg.batch * (cfg.tokens if cfg.phase == "prefill" else 1)
        flops = 2.0 * a.total_params * tokens + 4.0 * tokens * a.num_layers * a.q_width * length
        moved = 2.0 * a.total_params + 4.0 * cfg.batch * length * a.kv_width * a.num_layers
        return max(flops / r.flops_per_s, moved / r.bytes_per_s) + 15 * a.num_layers * r.launch_s

    def repeats(self, cfg: Config) -> tuple[int, int]:
        """(warm-up, repeats): fewer for long steps, so that one configuration takes about a second."""
        s = self.ctx.sizes
        repeats = max(3, min(s.measure_repeats, int(0.25 / self.step_estimate_s(cfg))))
        return max(1, min(s.measure_warmup, repeats // 3)), repeats

    def estimate_s(self, cfg: Config) -> float:
        """Estimated seconds of measuring `cfg`: host-side routes, weights (once), timed steps."""
        r, s, a = self.ctx.rates, self.ctx.sizes, spec_arch(SPECS[cfg.model])
        step, (warmup, repeats) = self.step_estimate_s(cfg), self.repeats(cfg)
        timed = 2 * max(repeats * step, s.measure_min_s) + (warmup + 3) * step
        init = 0.0 if cfg.model in self._weights else a.total_params * r.init_s_per_param
        host = r.route_entry_s * cfg.batch * (cfg.tokens + 1) * a.num_layers
        return 10 * r.item_s + host + init + timed

    def run(self, cfg: Config) -> list[dict[str, Any]]:
        """The harness rows of `cfg`, checked as `radsim validate` reads them."""
        s, (warmup, repeats) = self.ctx.sizes, self.repeats(cfg)
        kw: dict[str, Any] = dict(warmup=warmup, repeats=repeats, weights=self.weights(cfg.model))
        kw |= dict(routes=self.routes(cfg), min_time_s=s.measure_min_s)
        dev = self.ctx.dev if self.graph_failures < 2 else self.ctx.eager
        try:
            rows = measure_config(dev, cfg, self.ctx.measure_dtype, **kw)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            if dev is self.ctx.eager or self.ctx.dev.kind != "cuda":
                raise
            self.graph_failures += 1
            self.ctx.log(
                f"  {cfg.config_id}: graph run failed ({type(exc).__name__}: {exc}); eager", echo=False
            )
            _free_memory()
            rows = measure_config(self.ctx.eager, cfg, self.ctx.measure_dtype, **kw)
        for i, row in enumerate(rows):  # a row `radsim validate` would refuse must not spoil the table
            _check_row(
                Path("measurements.csv"),
                i + 2,
                {k: "" if row.get(k) is None else str(row.get(k)) for k in COLUMNS},
            )
        step = rows[0]
        self.ctx.log(
            f"  {cfg.config_id:40s} {step['time_s'] * 1e3:9.3f} ms  peak {step['peak_memory_bytes'] / 1e6:.1f} MB",
            echo=False,
        )
        return rows


def memory_bytes(dev: Device) -> float:
    """Memory a configuration may plan to use: 60% of the GPU's, or of the host's on CPU."""
    if dev.kind == "cuda":
        return 0.6 * torch.cuda.get_device_properties(dev.torch_device.index or 0).total_memory
    return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure_section(ctx: Context, pace: Pace) -> SectionResult:
    """`radsim measure` configurations (harness rows, same columns) into measurements.csv."""
    res = SectionResult()
    configs = measure_plan(ctx.sizes, memory_bytes(ctx.dev), DTYPES[ctx.measure_dtype].itemsize)
    run = HarnessRun(ctx, configs)
    items = (Item(c.config_id, run.estimate_s(c), functools.partial(run.run, c)) for c in configs)
    run_items(ctx, items, pace, ctx.csv_sink("measurements.csv", COLUMNS), res)
    if run.graph_failures:
        res.notes.append(
            f"{run.graph_failures} configuration(s) fell back to eager steps (graph capture failed)"
        )
    return res


# ---------------------------------------------------------------- the campaign

RUNNERS: dict[str, Callable[[Context, Pace], SectionResult]] = {
    "environment": environment_section,
    "power": power_section,
    "bandwidth": bandwidth_section,
    "launch": launch_section,
    "gemm": gemm_section,
    "attention": attention_section,
    "measure": measure_section,
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_device(cfg: CampaignConfig) -> None:
    name = cfg.device_name
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: torch.cuda.is_available() is False here; allowed here: cpu")
    if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _open_device(cfg: CampaignConfig) -> tuple[Device, Device]:
    name = cfg.device_name
    threads = 1 if name == "cpu" else None  # one core, as `radsim measure` on CPU: robust to neighbours
    return get_device(name, threads, use_graphs=True), get_device(name, threads, use_graphs=False)


def _check_inputs(cfg: CampaignConfig) -> Path:
    folder = output_dir(cfg.out, "--out")
    if (folder / MANIFEST).exists():
        raise ConfigError(f"--out {folder}: already holds a campaign ({MANIFEST}); give an empty folder")
    if "measure" in cfg.sections:
        sizes = TINY if cfg.dry_run else FULL
        for model in {m for plan in sizes.grid for m in plan.models}:
            trace = SPECS[model].trace
            if trace and not os.path.exists(trace):
                raise ConfigError(
                    f"model {model} replays {trace}, which is not in {os.path.abspath('.')} (run from the repository root)"
                )
    return folder


def _suggested_folder(env: dict[str, Any]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", str(env.get("device_name", "device")).lower()).strip("-")
    return f"measurements/{name}-{str(env.get('date', _now()))[:10]}"


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Interrupted` (in the main thread), so the manifest records what was done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_campaign(cfg: CampaignConfig) -> dict[str, Any]:
    """Run the selected sections in order within the budget; returns the manifest (also written).

    The options, the output folder, the device and the traces are checked before anything runs.
    """
    _check_device(cfg)
    folder = _check_inputs(cfg)
    threads = torch.get_num_threads()
    try:
        return _run(cfg, folder)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: CampaignConfig, folder: Path) -> dict[str, Any]:
    dev, eager = _open_device(cfg)
    start = time.monotonic()
    end = start + cfg.budget_s - min(2.0, 0.02 * cfg.budget_s)  # time left to write the manifest
    sizes = TINY if cfg.dry_run else FULL
    ctx = Context(cfg, sizes, RATES[dev.kind], dev, eager, folder)
    entries: dict[str, dict[str, Any]] = {
        s: dict(name=s, status="pending", file=SECTION_FILES[s]) for s in SECTIONS
    }
    for s in SECTIONS:
        if s not in cfg.sections:
            entries[s].update(status="skipped", reasons=["not selected (--sections)"])
    manifest: dict[str, Any] = dict(
        campaign="radsim.measure.campaign",
        options=dict(out=str(folder), budget_s=cfg.budget_s, dry_run=cfg.dry_run, device=cfg.device_name),
        started_at=_now(),
        complete=False,
        sections=list(entries.values()),
    )

    def write_manifest() -> None:
        manifest["elapsed_s"] = time.monotonic() - start
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        manifest["files"] = {p.name: p.stat().st_size for p in files if p.name != MANIFEST}
        atomic_write_text(folder / MANIFEST, json_text(manifest, indent=2) + "\n")

    with open(folder / LOG, "a", encoding="utf-8") as log_file, _sigterm_raises():
        ctx.log_file = log_file
        write_manifest()
        ctx.log(
            f"campaign: {cfg.device_name}, budget {cfg.budget_s:g} s, {'dry run' if cfg.dry_run else 'full'}"
        )
        try:
            for name in cfg.selected:
                _run_section(ctx, name, entries[name], start, end, write_manifest)
            manifest["complete"] = True
        except (Interrupted, KeyboardInterrupt):
            manifest["interrupted"] = True
            raise
        finally:
            env = ctx.env_doc.get("environment", {})
            manifest.update(finished_at=_now(), suggested_folder=_suggested_folder(env))
            write_manifest()
    return manifest


def _run_section(
    ctx: Context, name: str, entry: dict[str, Any], start: float, end: float, write_manifest
) -> None:
    now = time.monotonic()
    rest = [s for s in ctx.cfg.selected if ctx.cfg.selected.index(s) >= ctx.cfg.selected.index(name)]
    share = SECTIONS[name] / sum(SECTIONS[s] for s in rest) if sum(SECTIONS[s] for s in rest) else 1.0
    deadline = now + max(0.0, end - now) * share
    entry.update(status="running", started_at=_now(), budget_s=max(0.0, deadline - now))
    write_manifest()
    ctx.log(f"{name}: up to {max(0.0, deadline - now):.1f} s ({now - start:.1f} s into the campaign)")
    t0 = time.monotonic()
    try:
        res = RUNNERS[name](ctx, Pace(deadline))
    except (Interrupted, KeyboardInterrupt):
        entry.update(status="interrupted", time_s=time.monotonic() - t0)
        raise
    except Exception as exc:  # noqa: BLE001 - a failed section leaves the others their time
        ctx.log(traceback.format_exc(), echo=False)
        res = SectionResult(failed=1, errors=[f"{type(exc).__name__}: {str(exc)[:500]}"])
    finally:
        _free_memory()
    entry.update(
        status=res.status(),
        time_s=time.monotonic() - t0,
        items_done=res.done,
        items_skipped=res.skipped,
        items_failed=res.failed,
        reasons=res.reasons(),
        errors=res.errors,
    )
    ctx.log(
        f"{name}: {entry['status']} in {entry['time_s']:.2f} s ({res.done} done, {res.skipped} skipped, {res.failed} failed)"
    )
    write_manifest()


def exit_status(manifest: dict[str, Any]) -> int:
    """0 when every selected section ran (fully, partly or skipped for time); 1 when one failed."""
    return 1 if any(s["status"] == "failed" for s in manifest["sections"]) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m radsim.measure.campaign`: the options of `radsim campaign`, without the rest of radsim."""
    from radsim.cli.measure import add_campaign_arguments  # the one definition of the options

    parser = argparse.ArgumentParser(
        prog="python -m radsim.measure.campaign", description=__doc__.splitlines()[0]
    )
    add_campaign_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return exit_status(run_campaign(config_from_args(args)))
    except ConfigError as exc:
        print(f"radsim: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Interrupted:
        print("radsim: interrupted (SIGTERM); manifest.json says what was done", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("radsim: interrupted; manifest.json says what was done", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
