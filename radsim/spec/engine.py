"""Serving-engine profiles: the host-side time an engine spends around the GPU's kernels.

A profile (one TOML file per engine in `radsim/spec/engines/`, every figure with its source) says how
an engine drives the GPU, which the hardware model cannot know: how long the host takes to launch a
kernel that is not in a CUDA graph, whether and up to which batch decode iterations replay captured
graphs (and how mixed prefill/decode iterations launch), the host's fixed work per iteration
(scheduling, input preparation, the sampled tokens' copy back) and its work per sequence per
iteration (output processing, stop checks, bookkeeping), and whether that host work overlaps the
GPU's iteration (an asynchronous or "zero-overhead" scheduler) or runs between iterations.
`radsim.cost.host` turns a profile and an iteration's GPU time, launches and sequences into the
iteration's wall time; every command takes `--engine NAME` (or a TOML path).

`ideal` (the default) adds nothing: the GPU's kernels back to back, an upper bound on any engine's
speed and radsim's model before engine profiles. The other shipped profiles: `eager` (PyTorch eager,
graph-free), `graphs` (PyTorch with CUDA-graph decode, serial host loop), `vllm`, `sglang`, `trtllm`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import read_text

ENGINE_DIR = Path(__file__).resolve().parent / "engines"
#: How an iteration that holds prefill tokens (or a decode batch above `graph_max_batch`) launches:
#: every kernel from the host; or as piecewise CUDA graphs, one replay per layer pass plus the
#: attention kernels launched between the pieces (vLLM's piecewise compilation).
MIXED_LAUNCHES = ("eager", "piecewise")
#: All-reduce implementations: a serving engine's custom kernel for small messages (NCCL above), or
#: NCCL throughout (plain torch.distributed).
ALLREDUCE_ALGORITHMS = ("custom", "nccl")
#: Kernels of a layer pass launched from the host between the graph pieces of a piecewise iteration
#: (RoPE with the KV-cache write, and attention; `radsim.cost.layer` prices both).
PIECEWISE_EAGER_KERNELS = 2


@dataclass(frozen=True)
class EngineProfile:
    """One serving engine's host costs, SI units; `sources` maps each figure's key to its source."""

    name: str
    stem: str
    description: str
    host_launch_s: float  # host time to launch one kernel outside a CUDA graph
    eager_kernels_per_pass: (
        int  # kernels one layer pass launches outside graphs (0: the cost model's fused count)
    )
    graph_launch_s: float  # host time to replay one captured CUDA graph
    decode_graphs: bool  # decode-only iterations replay a captured graph
    graph_max_batch: int  # largest decode batch with a captured graph (0: none)
    mixed_launches: str  # how other iterations launch: MIXED_LAUNCHES
    host_iteration_s: float  # host work per iteration: schedule, prepare inputs, copy tokens back
    host_sequence_s: float  # host work per sequence per iteration: outputs, stop checks, bookkeeping
    overlap: bool  # the host prepares the next iteration while the GPU runs this one
    allreduce: str  # ALLREDUCE_ALGORITHMS: the collective its tensor-parallel layers call
    kernel_tables: str  # the framework whose measured kernel tables price it ('': the hardware file's)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def adds_nothing(self) -> bool:
        """Whether the profile leaves every iteration at its GPU time (`ideal`)."""
        return not (
            self.host_launch_s or self.graph_launch_s or self.host_iteration_s or self.host_sequence_s
        )

    def graphed(self, sequences: int, decode_only: bool) -> bool:
        """Whether an iteration of `sequences` sequences replays a captured decode graph."""
        return self.decode_graphs and decode_only and 0 < sequences <= self.graph_max_batch

    def summary(self) -> dict[str, Any]:
        """The figures by key (for JSON output and `radsim engine show`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}


_TEXT = ("name", "description")
_SECONDS = ("host_launch_s", "graph_launch_s", "host_iteration_s", "host_sequence_s")
_FIGURES = (
    *_SECONDS,
    *("eager_kernels_per_pass", "graph_max_batch", "decode_graphs", "mixed_launches", "overlap"),
    *("allreduce", "kernel_tables"),
)
_CHOICES = {"mixed_launches": MIXED_LAUNCHES, "allreduce": ALLREDUCE_ALGORITHMS}
DEFAULT_ENGINE = "ideal"


def list_engines() -> list[str]:
    """Names (file stems) of the shipped engine profiles."""
    return sorted(p.stem for p in ENGINE_DIR.glob("*.toml"))


def load_engine(name_or_path: str | Path) -> EngineProfile:
    """A shipped profile by name, or a TOML file by path; errors name the file, field and allowed values."""
    return _load(str(name_or_path))


@lru_cache(maxsize=32)
def _load(name_or_path: str) -> EngineProfile:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = ENGINE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(
                f"unknown engine '{name_or_path}'; allowed: {', '.join(list_engines())} or a TOML path"
            )
    elif not path.is_file():
        raise ConfigError(f"{path}: engine profile not found")
    try:
        raw = tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_engine(raw, path)


def parse_engine(raw: dict[str, Any], path: Path) -> EngineProfile:
    """Validate the parsed TOML of an engine profile and build the dataclass."""
    allowed = (*_TEXT, *_FIGURES)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
    values: dict[str, Any] = {"stem": path.stem}
    for key in _TEXT:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{path}: '{key}' must be a non-empty string")
        values[key] = raw[key]
    sources: dict[str, str] = {}
    for key in _FIGURES:
        if key not in raw:
            raise ConfigError(f"{path}: missing '{key}' (an inline table {{value = ..., source = \"...\"}})")
        entry = raw[key]
        if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
            raise ConfigError(
                f"{path}: '{key}' must be an inline table {{value = ..., source = \"...\"}}, got {entry!r}"
            )
        if not isinstance(entry["source"], str) or not entry["source"].strip():
            raise ConfigError(f"{path}: '{key}.source' must be a non-empty string")
        values[key], sources[key] = _value(key, entry["value"], path), entry["source"]
    if values["decode_graphs"] and values["graph_max_batch"] < 1:
        raise ConfigError(f"{path}: 'graph_max_batch' must be >= 1 when 'decode_graphs' is true")
    return EngineProfile(**values, sources=sources)


def _value(key: str, value: Any, path: Path) -> Any:
    where = f"{path}: '{key}.value'"
    if key in ("decode_graphs", "overlap"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if key == "kernel_tables":
        if not isinstance(value, str) or (value and not value.replace("_", "").isalnum()):
            raise ConfigError(f"{where} must be a framework name such as 'vllm' (or ''), got {value!r}")
        return value
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ConfigError(f"{where} is {value!r}; allowed: {', '.join(_CHOICES[key])}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where} must be a finite number >= 0, got {value!r}")
    if key in ("graph_max_batch", "eager_kernels_per_pass"):
        if float(value) != int(value):
            raise ConfigError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)
