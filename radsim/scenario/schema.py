"""The scenario: one frozen, validated description of a run, and the one place its inputs are defined.

A scenario says what runs (`command`: the static `estimate`, the serving simulator `simulate`, or a
`capacity` search over simulations, as the radsim command of that name), on
what (hardware, architecture, dtype, tensor parallelism), with which routes (a trace, or a depth
fraction under a named depth distribution), under which workload, scheduler, SLOs and prices. Every
input is declared once below, as a dataclass field whose metadata (`Input`) gives its type, default,
allowed values or range, the commands that read it and its help text. The CLI flags of `radsim
estimate` and `radsim simulate` (`radsim.cli.scenario_args`), the inputs of a study point
(`radsim.study.load`) and the benchmarks are all built from this table, so an input has one name,
one default, one set of allowed values and one check everywhere. A study point is a scenario.

Adding an input: one field here (with `later=True`, so that existing studies keep their point ids)
and the line of `radsim.scenario.run` that passes it to the model it configures.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from radsim.cost.layer import DTYPE_BYTES, EXPERT_LAUNCHES
from radsim.cost.loads import EXECUTION_POLICIES
from radsim.errors import ConfigError
from radsim.routes.synthetic import DEPTH_DISTRIBUTIONS, ROUTE_SHAPES
from radsim.sim.scheduler import BATCHING_POLICIES
from radsim.sim.workload import LENGTH_KINDS
from radsim.spec.engine import DEFAULT_ENGINE, load_engine
from radsim.spec.kv import KV_POLICIES

COMMANDS = ("estimate", "simulate", "capacity")
#: The name `command` had before `engine` came to name the serving engine profile.
LEGACY_COMMAND_KEY = "engine"
ARRIVALS = ("batch", "poisson", "gamma", "replay")
_SIM = ("simulate", "capacity")  # capacity: a search over simulations


@dataclass(frozen=True)
class Input:
    """What an input is: its type, allowed values or range, the commands that read it, its help."""

    kind: type
    default: Any
    help: str
    allowed: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # strictly above `minimum`
    commands: tuple[str, ...] = COMMANDS
    flags: tuple[str, ...] = ()  # other CLI spellings (older flag names)
    later: bool = False  # added after studies shipped: enters a point id only when not at its default
    required: bool = False


def _input(default: Any, kind: type, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"input": Input(kind, default, help, **spec)})


@dataclass(frozen=True)
class Scenario:
    """A run: every input with its default; construction checks each value and their combination."""

    command: str = _input(
        "estimate",
        str,
        "what runs: the static-batch estimate, the serving simulator, or a capacity search over"
        " simulations (the radsim command of that name)",
        allowed=COMMANDS,
    )
    hw: str = _input("", str, "hardware name (radsim hw list) or TOML path", required=True)
    arch: str = _input("", str, "architecture name (radsim arch list) or TOML path", required=True)
    layers: int = _input(0, int, "layer count (0: the architecture's own)", minimum=0)
    dtype: str = _input(
        "bf16", str, "weights and KV cache dtype (activations 16 bit)", allowed=tuple(DTYPE_BYTES)
    )
    tp: int = _input(1, int, "tensor-parallel devices per replica", minimum=1)
    depth_fraction: float = _input(
        1.0,
        float,
        "fraction of layers a token visits (parametric routes)",
        minimum=0.0,
        maximum=1.0,
        positive=True,
    )
    visited_layers: int = _input(
        0, int, "layers a token visits (> 0 sets depth_fraction = this / layers)", minimum=0
    )
    trace: str = _input(
        "", str, "routing trace (Parquet) to draw routes from; '' draws parametric routes", commands=_SIM
    )
    reuse_prob: float = _input(
        0.0, float, "parametric: chance a token revisits a layer", minimum=0.0, maximum=1.0, commands=_SIM
    )
    kv_policy: str = _input(
        "",
        str,
        "what a skipped layer does to its KV cache ('': the trace's; early exit copy; else none)",
        allowed=("", *KV_POLICIES),
    )
    route_shape: str = _input(
        "random",
        str,
        "parametric: layers anywhere, or a prefix of the stack",
        allowed=ROUTE_SHAPES,
        commands=_SIM,
        later=True,
    )
    expert_launch: str = _input(
        "grouped",
        str,
        "Finedeep experts: one grouped launch per projection, or one each",
        allowed=EXPERT_LAUNCHES,
        later=True,
    )
    execution: str = _input(
        "layer_major",
        str,
        "one launch per layer and pass, or every routing step a barrier",
        allowed=EXECUTION_POLICIES,
    )
    batch: int = _input(
        1, int, "requests of the static batch (estimate; simulate with arrival batch)", minimum=1
    )
    prompt_tokens: int = _input(
        512,
        int,
        "prompt tokens per request (the mean, for length distributions)",
        minimum=1,
        flags=("--prompt", "--prompt-mean"),
    )
    output_tokens: int = _input(
        128,
        int,
        "output tokens per request (the mean, for length distributions)",
        minimum=1,
        flags=("--output", "--output-mean"),
    )
    prefill_chunk: int = _input(
        8192,
        int,
        "most tokens one iteration processes, prefill chunk and decodes (0: the whole static batch)",
        minimum=0,
        flags=("--max-tokens",),
    )
    arrival: str = _input(
        "poisson",
        str,
        "a static batch at t=0, Poisson or gamma arrivals, or a replayed CSV",
        allowed=ARRIVALS,
        commands=_SIM,
    )
    rate_per_s: float = _input(
        1.0,
        float,
        "requests per second (poisson, gamma)",
        minimum=0.0,
        positive=True,
        commands=_SIM,
        flags=("--rate",),
    )
    duration_s: float = _input(
        60.0,
        float,
        "seconds of arrivals (poisson, gamma)",
        minimum=0.0,
        positive=True,
        commands=_SIM,
        flags=("--duration",),
    )
    burstiness: float = _input(
        1.0,
        float,
        "gamma: coefficient of variation of the gaps (1 is Poisson)",
        minimum=0.0,
        positive=True,
        commands=_SIM,
    )
    lengths: str = _input(
        "fixed",
        str,
        "request lengths: fixed, uniform on [1, 2 mean], or lognormal",
        allowed=LENGTH_KINDS,
        commands=_SIM,
    )
    replicas: int = _input(
        1, int, "replicas; arrivals join the one with the fewest requests", minimum=1, commands=_SIM
    )
    slo_ttft_s: float = _input(
        2.0,
        float,
        "time-to-first-token target of goodput (s)",
        minimum=0.0,
        commands=_SIM,
        flags=("--slo-ttft",),
    )
    slo_tpot_s: float = _input(
        0.1,
        float,
        "time-per-output-token target of goodput (s)",
        minimum=0.0,
        commands=_SIM,
        flags=("--slo-tpot",),
    )
    electricity_usd_per_kWh: float = _input(
        0.081, float, "electricity price, USD per kWh", minimum=0.0, flags=("--electricity-usd-per-kwh",)
    )
    seed: int = _input(0, int, "random seed of routes and arrivals", minimum=0)
    label: str = _input("", str, "a name for plots (e.g. the architecture a grid stands for)", later=True)
    depth_distribution: str = _input(
        "exact",
        str,
        "exact: round(f L) layers per token; bernoulli: each layer with probability f",
        allowed=DEPTH_DISTRIBUTIONS,
        later=True,
    )
    max_batch: int = _input(
        256,
        int,
        "most sequences a replica runs at once (arrivals other than batch)",
        minimum=1,
        commands=_SIM,
        later=True,
    )
    batching: str = _input(
        "",
        str,
        "'': static for arrival batch, else continuous",
        allowed=("", *BATCHING_POLICIES),
        commands=_SIM,
        later=True,
    )
    chunked_prefill: bool = _input(
        True, bool, "split prompts across iterations to fit the token budget", commands=_SIM, later=True
    )
    memory_fraction: float = _input(
        0.9,
        float,
        "share of device memory the engine may use",
        minimum=0.0,
        maximum=1.0,
        positive=True,
        commands=_SIM,
        later=True,
    )
    length_cv: float = _input(
        0.5, float, "lognormal lengths: coefficient of variation", minimum=0.0, commands=_SIM, later=True
    )
    max_length_tokens: int = _input(
        0,
        int,
        "cap on prompt and on output lengths (0: four times the mean)",
        minimum=0,
        commands=_SIM,
        later=True,
        flags=("--max-length",),
    )
    slo_percentile: int = _input(
        90,
        int,
        "capacity: percentile of TTFT and TPOT the SLOs bound",
        allowed=(50, 90, 99),
        commands=("capacity",),
        later=True,
        flags=("--percentile",),
    )
    replay: str = _input(
        "", str, "arrival replay: CSV with arrival_s,prompt_tokens,output_tokens", commands=_SIM, later=True
    )
    engine: str = _input(
        DEFAULT_ENGINE,
        str,
        "serving-engine profile: host launch, CUDA-graph and scheduling time around the GPU's kernels "
        "(radsim engine list; a TOML path); 'ideal' adds none",
        later=True,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), f"'{f.name}'")
        self._check_combination()

    def _check_combination(self) -> None:
        command = self.command
        load_engine(self.engine)  # a shipped profile or a readable file, else a ConfigError naming it
        for f in fields(self):
            spec = input_of(f.name)
            if command not in spec.commands and getattr(self, f.name) != f.default:
                raise ConfigError(f"'{f.name}' applies only to command(s) {', '.join(spec.commands)}")
        if command == "estimate" and self.execution != "layer_major":
            raise ConfigError(
                "command 'estimate' launches each layer once per step; execution 'step_sync' needs command 'simulate'"
            )
        if self.trace and (self.depth_fraction != 1.0 or self.visited_layers):
            raise ConfigError("a trace sets the depth; leave depth_fraction and visited_layers unset")
        if self.visited_layers and self.depth_fraction != 1.0:
            raise ConfigError("give depth_fraction or visited_layers, not both")
        if self.route_shape != "random" and (self.trace or self.reuse_prob):
            raise ConfigError("route_shape shapes parametric routes; leave trace and reuse_prob unset")
        if command == "capacity" and self.arrival not in ("poisson", "gamma"):
            raise ConfigError("command 'capacity' searches over the rate of poisson or gamma arrivals")
        if command == "capacity" and self.replicas != 1:
            raise ConfigError("command 'capacity' is per replica: leave replicas at 1")
        if command != "estimate" and self.arrival != "batch" and self.batch != default_of("batch"):
            raise ConfigError(
                f"'batch' is the static batch of arrival 'batch'; arrival '{self.arrival}' runs up to 'max_batch' sequences"
            )
        if self.arrival == "replay" and not self.replay:
            raise ConfigError("arrival 'replay' needs 'replay', a CSV file (--replay FILE)")
        if self.replay and self.arrival != "replay":
            raise ConfigError("'replay' is read with arrival 'replay' only")
        if command != "estimate" and self.prefill_chunk == 0 and self.arrival != "batch":
            raise ConfigError("'prefill_chunk' 0 (the whole static batch) needs arrival 'batch'")
        if command != "estimate" and self.execution == "step_sync" and self.kv_policy == "compute":
            raise ConfigError(
                "kv policy 'compute' runs attention for every token in every layer: use execution layer_major"
            )

    # -- what the inputs imply -------------------------------------------------------------------
    @property
    def static_batch(self) -> bool:
        """Whether the requests are one batch at t=0 (estimate, or simulate with arrival batch)."""
        return self.command == "estimate" or self.arrival == "batch"

    @property
    def batching_policy(self) -> str:
        """The scheduler's batching: `batching`, else static for a static batch, else continuous."""
        return self.batching or ("static" if self.static_batch else "continuous")

    @property
    def sequences_per_batch(self) -> int:
        """Most sequences one iteration holds: the static batch, else `max_batch`."""
        return self.batch if self.static_batch else self.max_batch

    def as_dict(self) -> dict[str, Any]:
        """Every input by name (plain Python values: every input is a scalar, so no deep copy)."""
        return {name: getattr(self, name) for name in SCENARIO_FIELDS}

    @property
    def point_id(self) -> str:
        """A stable id: the first 16 hex digits of the SHA-256 of the inputs as canonical JSON.

        The same computation keeps its id across releases, so that existing studies keep their stored
        results: inputs added later enter only when not at their default; the maximum batch of a
        serving run is hashed under `batch`, which held it before `max_batch` existed; the command is
        hashed under `engine`, its name before `engine` came to name the serving engine profile; an
        input the command does not read is hashed at its value of the first release (arrival
        'batch'); and the depth distribution of parametric routes enters only where it differs from
        the one its command drew before it could be chosen (estimate exact, simulate bernoulli).
        """
        values = self.as_dict()
        if self.command != "estimate" and not self.static_batch:
            values["batch"], values["max_batch"] = self.max_batch, default_of("max_batch")
        if self.command not in input_of("arrival").commands:
            values["arrival"] = "batch"
        legacy_law = "exact" if self.command == "estimate" else "bernoulli"
        if self.trace or self.depth_distribution == legacy_law:
            values["depth_distribution"] = default_of("depth_distribution")  # left out below
        keys = [k for k in values if not input_of(k).later or values[k] != default_of(k)]
        hashed = {_HASHED_AS.get(k, k): values[k] for k in keys}
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def routes_label(self) -> str:
        """What the tokens visit: 'sequential', 'depth 0.5', '16 layers' or 'trace NAME'."""
        if self.trace:
            return f"trace {Path(self.trace).stem}"
        law = "" if self.depth_distribution == "exact" else f" {self.depth_distribution}"
        if self.visited_layers:
            return f"{self.visited_layers} layers"
        if self.depth_fraction == 1.0 and self.reuse_prob == 0.0:
            return "sequential"
        if self.route_shape == "early_exit":
            return f"early exit, depth {self.depth_fraction:g}{law}"
        reuse = f", reuse {self.reuse_prob:g}" if self.reuse_prob else ""
        return f"depth {self.depth_fraction:g}{law}{reuse}"


SCENARIO_FIELDS = tuple(f.name for f in fields(Scenario))
#: Inputs hashed into a point id under another name: `command` under its earlier name (so that
#: existing studies keep their ids), and so an input named `engine` under a name of its own.
_HASHED_AS = {"command": LEGACY_COMMAND_KEY, LEGACY_COMMAND_KEY: "engine_profile"}
_FIELD = {f.name: f for f in fields(Scenario)}


def input_of(name: str) -> Input:
    """The declaration of one input."""
    return _FIELD[name].metadata["input"]


def default_of(name: str) -> Any:
    """The default of one input."""
    default = _FIELD[name].default
    assert default is not MISSING
    return default


#: Every input by name, in table order.
INPUTS: dict[str, Input] = {name: input_of(name) for name in SCENARIO_FIELDS}


def check_value(key: str, value: Any, where: str) -> None:
    """Raise ConfigError unless `value` is of the input's type, allowed and in range (finite)."""
    spec = input_of(key)
    if spec.kind is bool:
        ok = isinstance(value, bool)
    elif spec.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec.kind) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{where} must be {spec.kind.__name__}, got {value!r}")
    if spec.allowed and value not in spec.allowed:
        raise ConfigError(f"{where} is {value!r}; allowed: {', '.join(map(repr, spec.allowed))}")
    if spec.kind in (int, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        low, high = spec.minimum, spec.maximum
        if low is not None and (value < low or (spec.positive and value == low)):
            raise ConfigError(f"{where} must be {'>' if spec.positive else '>='} {low:g}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{where} must be <= {high:g}, got {value!r}")
    if spec.required and not value:
        raise ConfigError(f"{where} is required")


def check_legacy_inputs(values: dict[str, Any], where: str, axis: bool = False) -> None:
    """Raise ConfigError for an input written under its earlier name: `engine` = estimate, simulate
    or capacity is now `command` (`engine` names the serving engine profile). With `axis`, each
    value is a list of an axis's values."""
    if LEGACY_COMMAND_KEY not in values:
        return
    given = values[LEGACY_COMMAND_KEY]
    listed = given if axis and isinstance(given, list) else [given]
    if not any(isinstance(v, str) and v in COMMANDS for v in listed):
        return  # another value: the serving engine profile's, checked as that input
    shown = json.dumps(given)
    raise ConfigError(
        f"{where}: '{LEGACY_COMMAND_KEY}' = {shown} is now written 'command = {shown}' "
        f"('{LEGACY_COMMAND_KEY}' names the serving engine profile)"
    )


def scenario_from(values: dict[str, Any], where: str = "<scenario>") -> Scenario:
    """A scenario from a mapping of inputs (a study point, parsed flags); errors name `where` and the field."""
    check_legacy_inputs(values, where)
    unknown = sorted(set(values) - set(SCENARIO_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown input(s) {unknown}; allowed: {', '.join(SCENARIO_FIELDS)}")
    for key in ("command", "hw", "arch"):
        if key not in values:
            raise ConfigError(f"{where}: '{key}' is required (in [fixed], the grid or its axes)")
    typed: dict[str, Any] = {
        k: float(v) if input_of(k).kind is float and isinstance(v, int) else v for k, v in values.items()
    }
    try:  # construction checks every value (check_value) and their combination
        return Scenario(**typed)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
