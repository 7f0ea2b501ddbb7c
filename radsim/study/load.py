"""What-if studies: a TOML file of fixed values and grids of axes, expanded into points.

A study file (`studies/NAME.toml`) has a `[study]` table (name, description, seed), a `[fixed]`
table of inputs shared by every point, and one or more `[[grid]]` tables. Each grid names its
`engine` (`estimate`: the static batch of `radsim.cost.estimate`; `simulate`: the serving simulator),
may fix more inputs, and lists its axes in `[grid.axes]`; its points are the Cartesian product of
the axes. Every input has a default (`INPUTS`), units in its name and a checked type and range, and
each point is identified by a stable hash of its inputs, so an interrupted run resumes where it left
off. Loading does no evaluation: `radsim.study.point` evaluates a point and `radsim.study.sweep` runs a study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError

ENGINES = ("estimate", "simulate")
ARRIVALS = ("batch", "poisson", "gamma")


@dataclass(frozen=True)
class Input:
    """One input of a point: its type, default, allowed values and the engines that read it."""

    kind: type
    default: Any
    allowed: tuple = ()
    engines: tuple[str, ...] = ENGINES
    minimum: float | None = None
    maximum: float | None = None


_SIM = ("simulate",)
#: Every input a point has, in table order. `batch` is the static batch (estimate, and simulate
#: with arrival 'batch') or the scheduler's maximum batch (simulate with Poisson/gamma arrivals).
INPUTS: dict[str, Input] = {
    "engine": Input(str, None, ENGINES),
    "hw": Input(str, None),
    "arch": Input(str, None),
    "layers": Input(int, 0, minimum=0),  # 0: the architecture's own layer count
    "dtype": Input(str, "bf16", ("fp32", "fp16", "bf16", "fp8")),
    "tp": Input(int, 1, minimum=1),
    "depth_fraction": Input(float, 1.0, minimum=0.0, maximum=1.0),
    "visited_layers": Input(int, 0, minimum=0),  # > 0: depth_fraction = visited_layers / layers
    "trace": Input(str, ""),  # a routing trace (path); "" draws parametric routes
    "reuse_prob": Input(float, 0.0, engines=_SIM, minimum=0.0, maximum=1.0),
    "kv_policy": Input(str, "", ("", "none", "copy", "compute")),  # "": the trace's, else none
    # parametric routes: each layer at random, or early exit (layers 0..k-1, k ~ Binomial(L, f))
    "route_shape": Input(str, "random", ("random", "early_exit"), engines=_SIM),
    "expert_launch": Input(str, "grouped", ("grouped", "per_expert")),  # Finedeep experts
    "execution": Input(str, "layer_major", ("layer_major", "step_sync")),
    "batch": Input(int, 1, minimum=1),
    "prompt_tokens": Input(int, 512, minimum=1),
    "output_tokens": Input(int, 128, minimum=1),
    "prefill_chunk": Input(int, 8192, minimum=0),
    "arrival": Input(str, "batch", ARRIVALS, engines=_SIM),
    "rate_per_s": Input(float, 1.0, engines=_SIM, minimum=0.0),
    "duration_s": Input(float, 60.0, engines=_SIM, minimum=0.0),
    "burstiness": Input(float, 1.0, engines=_SIM, minimum=0.0),
    "lengths": Input(str, "fixed", ("fixed", "lognormal"), engines=_SIM),
    "replicas": Input(int, 1, engines=_SIM, minimum=1),
    "slo_ttft_s": Input(float, 2.0, engines=_SIM, minimum=0.0),
    "slo_tpot_s": Input(float, 0.1, engines=_SIM, minimum=0.0),
    "electricity_usd_per_kWh": Input(float, 0.081, minimum=0.0),
    "seed": Input(int, 0, minimum=0),
    "label": Input(str, ""),  # a name for the plots (e.g. the architecture a grid stands for)
}
#: Inputs added after studies were first shipped: they enter a point's id only when not at their
#: default, so the points of earlier studies keep their ids (and their stored results).
_LATER_INPUTS = ("route_shape", "expert_launch", "label")
#: Inputs that may not vary along an axis together (a trace fixes the depth).
_DEPTH_KEYS = ("depth_fraction", "visited_layers", "trace")


@dataclass(frozen=True)
class Grid:
    """One block of points: values it fixes and axes it sweeps (name -> values, in order)."""

    fixed: tuple[tuple[str, Any], ...]
    axes: tuple[tuple[str, tuple], ...]

    @property
    def size(self) -> int:
        """Number of points in the grid."""
        n = 1
        for _, values in self.axes:
            n *= len(values)
        return n


@dataclass(frozen=True)
class Study:
    """A validated study file: its name, seed, shared values and grids."""

    name: str
    description: str
    path: Path
    fixed: tuple[tuple[str, Any], ...]
    grids: tuple[Grid, ...]


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; raise ConfigError naming the file and the field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read study file: {exc}") from exc
    return parse_study(raw, path)


def parse_study(raw: dict[str, Any], path: Path) -> Study:
    """Validate the parsed TOML of a study file and build the dataclass."""
    _check_keys(raw, {"study", "fixed", "grid"}, str(path))
    head = raw.get("study", {})
    _check_keys(head, {"name", "description", "seed"}, f"{path}: [study]")
    name = head.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: [study] name must be a non-empty string, got {name!r}")
    fixed = dict(raw.get("fixed", {}))
    if "seed" in head:
        fixed.setdefault("seed", head["seed"])
    _check_values(fixed, f"{path}: [fixed]")
    grids = raw.get("grid")
    if not isinstance(grids, list) or not grids:
        raise ConfigError(
            f"{path}: a study needs at least one [[grid]] table (with an engine and [grid.axes])"
        )
    study = Study(
        name,
        str(head.get("description", "")),
        path,
        tuple(fixed.items()),
        tuple(_grid(g, fixed, f"{path}: grid {i + 1}") for i, g in enumerate(grids)),
    )
    expand(study)  # every point must be valid before anything runs
    return study


def _grid(raw: Any, shared: dict[str, Any], where: str) -> Grid:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    own = {k: v for k, v in raw.items() if k != "axes"}
    _check_values(own, where)
    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}: 'axes' must be a table of name = [values]")
    for key, values in axes.items():
        if key not in INPUTS:
            raise ConfigError(f"{where}: unknown axis '{key}'; allowed: {', '.join(INPUTS)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: axis '{key}' must be a non-empty list, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: axis '{key}' repeats a value: {values}")
        for v in values:
            _check_value(key, v, f"{where}: axis '{key}'")
        if key in own or key in shared:
            raise ConfigError(f"{where}: '{key}' is an axis and also a fixed value; give it once")
    varying = [k for k in _DEPTH_KEYS if k in axes]
    if len(varying) > 1:
        raise ConfigError(
            f"{where}: axes {varying} both set the depth; sweep one of {', '.join(_DEPTH_KEYS)}"
        )
    return Grid(tuple(own.items()), tuple((k, tuple(v)) for k, v in axes.items()))


def _check_keys(raw: Any, allowed: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


def _check_values(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if key not in INPUTS:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: {', '.join(INPUTS)}")
        _check_value(key, value, f"{where}: '{key}'")


def _check_value(key: str, value: Any, where: str) -> None:
    spec = INPUTS[key]
    ok = isinstance(value, spec.kind) and not isinstance(value, bool)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{where} must be {spec.kind.__name__}, got {value!r}")
    if spec.allowed and value not in spec.allowed:
        raise ConfigError(f"{where} is {value!r}; allowed: {', '.join(map(repr, spec.allowed))}")
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{where} must be >= {spec.minimum:g}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(f"{where} must be <= {spec.maximum:g}, got {value!r}")


def expand(study: Study) -> list[dict[str, Any]]:
    """Every point of the study, in file order: inputs with defaults filled, plus `point_id`."""
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, grid in enumerate(study.grids, start=1):
        names = [k for k, _ in grid.axes]
        for combo in itertools.product(*(v for _, v in grid.axes)):
            own = {**dict(grid.fixed), **dict(zip(names, combo, strict=True))}
            engine = own.get("engine", dict(study.fixed).get("engine"))
            # a shared value that the point's engine does not read is left out, not an error
            shared = {k: v for k, v in study.fixed if engine in INPUTS[k].engines}
            values = {**shared, **own}
            point = make_point(values, f"{study.path}: grid {number}")
            if point["point_id"] not in seen:  # grids may overlap; a point runs once
                seen.add(point["point_id"])
                points.append(point)
    return points


def make_point(values: dict[str, Any], where: str = "<point>") -> dict[str, Any]:
    """Fill defaults, check what the engine allows, and add the point's id and routes label."""
    for key in ("engine", "hw", "arch"):
        if key not in values:
            raise ConfigError(f"{where}: '{key}' is required (in [fixed], the grid or its axes)")
    engine = values["engine"]
    for key, value in values.items():
        spec = INPUTS[key]
        if engine not in spec.engines and value != spec.default:
            raise ConfigError(f"{where}: '{key}' applies only to engine(s) {', '.join(spec.engines)}")
    if engine == "estimate" and values.get("execution", "layer_major") != "layer_major":
        raise ConfigError(
            f"{where}: engine 'estimate' launches each layer once per step; "
            "execution 'step_sync' needs engine 'simulate'"
        )
    if engine == "estimate" and values.get("trace"):
        raise ConfigError(
            f"{where}: engine 'estimate' draws random layers from depth_fraction; "
            "a trace needs engine 'simulate'"
        )
    if values.get("trace") and (values.get("depth_fraction", 1.0) != 1.0 or values.get("visited_layers")):
        raise ConfigError(f"{where}: a trace sets the depth; leave depth_fraction and visited_layers unset")
    if values.get("visited_layers") and values.get("depth_fraction", 1.0) != 1.0:
        raise ConfigError(f"{where}: give depth_fraction or visited_layers, not both")
    if values.get("depth_fraction", 1.0) <= 0:
        raise ConfigError(f"{where}: 'depth_fraction' must be > 0")
    if values.get("route_shape", "random") != "random" and (values.get("trace") or values.get("reuse_prob")):
        raise ConfigError(f"{where}: route_shape shapes parametric routes; leave trace and reuse_prob unset")
    point = {key: _typed(key, values.get(key, spec.default)) for key, spec in INPUTS.items()}
    point["point_id"] = point_id(point)
    point["routes"] = routes_label(point)
    return point


def _typed(key: str, value: Any) -> Any:
    return float(value) if INPUTS[key].kind is float else value


def point_id(inputs: dict[str, Any]) -> str:
    """A stable id of a point: the first 16 hex digits of the SHA-256 of its inputs as JSON."""
    keys = [k for k in INPUTS if k not in _LATER_INPUTS or inputs[k] != INPUTS[k].default]
    canonical = json.dumps({k: inputs[k] for k in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def routes_label(point: dict[str, Any]) -> str:
    """What the tokens visit: 'sequential', 'depth 0.5', '16 layers' or 'trace NAME'."""
    if point["trace"]:
        return f"trace {Path(point['trace']).stem}"
    if point["visited_layers"]:
        return f"{point['visited_layers']} layers"
    if point["depth_fraction"] == 1.0 and point["reuse_prob"] == 0.0:
        return "sequential"
    if point["route_shape"] == "early_exit":
        return f"early exit, depth {point['depth_fraction']:g}"
    reuse = f", reuse {point['reuse_prob']:g}" if point["reuse_prob"] else ""
    return f"depth {point['depth_fraction']:g}{reuse}"


def resolve_trace(trace: str, study_path: Path | None = None) -> Path:
    """A trace path as written in a study: relative to the working directory, else to the repository."""
    candidates = [Path(trace)]
    if study_path is not None:
        candidates += [study_path.resolve().parent / trace, study_path.resolve().parent.parent / trace]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise ConfigError(f"trace '{trace}' not found (looked in {', '.join(str(c) for c in candidates)})")
