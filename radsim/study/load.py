"""What-if studies: a TOML file of fixed values and grids of axes, expanded into points.

A study file (`studies/NAME.toml`) has a `[study]` table (name, description, seed), a `[fixed]`
table of inputs shared by every point, and one or more `[[grid]]` tables. Each grid names its
`command` (`estimate`: the static batch of `radsim.cost.estimate`; `simulate`: the serving simulator;
`capacity`: a search over simulations),
may fix more inputs, and lists its axes in `[grid.axes]`; its points are the Cartesian product of
the axes. A point is a scenario (`radsim.scenario.schema`): every input has one default, units in
its name and a checked type and range, and each point is identified by a stable hash of its inputs
(`Scenario.point_id`), so an interrupted run resumes where it left off. Loading does no evaluation: `radsim.study.point` evaluates a point and `radsim.study.sweep` runs a study.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import read_text
from radsim.scenario.schema import (
    INPUTS,
    SCENARIO_FIELDS,
    check_legacy_inputs,
    check_value,
    scenario_from,
)

#: Most points a study may expand to unless the caller raises the limit (`radsim study run --max-points`).
DEFAULT_MAX_POINTS = 100_000

#: Inputs that name files or registry entries, or must fit the architecture: checked once per combination.
_RESOURCE_KEYS = ("command", "hw", "dtype", "arch", "layers", "visited_layers", "trace", "replay")

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
    #: what the file asks that has no effect (a fixed input no grid's command reads), for stderr
    warnings: tuple[str, ...] = ()
    #: one point per combination of the inputs that name files or registry entries, with its grid
    resources: tuple[tuple[int, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def size(self) -> int:
        """Points of every grid together (before overlapping grids are merged)."""
        return sum(g.size for g in self.grids)


def load_study(path: str | Path, max_points: int = DEFAULT_MAX_POINTS, check_files: bool = True) -> Study:
    """Read and validate a study file; raise ConfigError naming the file, grid and field.

    Everything is checked before any point runs: the file's keys and values, the number of points
    (at most `max_points`, counted from the axes before anything is expanded), every point's
    inputs and their combination and, with `check_files`, what the points name (hardware,
    architectures, traces, replay files: `check_resources`).
    """
    path = Path(path)
    text = read_text(path, "study file")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    study = parse_study(raw, path, max_points)
    if check_files:
        check_resources(study)
    return study


def parse_study(raw: dict[str, Any], path: Path, max_points: int = DEFAULT_MAX_POINTS) -> Study:
    """Validate the parsed TOML of a study file and build the dataclass (no file is opened)."""
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
            f"{path}: a study needs at least one [[grid]] table (with a command and [grid.axes])"
        )
    parsed = tuple(_grid(g, fixed, f"{path}: grid {i + 1}") for i, g in enumerate(grids))
    _check_size(parsed, path, max_points)
    study = Study(name, str(head.get("description", "")), path, tuple(fixed.items()), parsed)
    resources: dict[tuple, tuple[int, tuple[tuple[str, Any], ...]]] = {}
    for number, point in _grid_points(study):  # every point must be valid before anything runs
        resources.setdefault(tuple(point[k] for k in _RESOURCE_KEYS), (number, tuple(point.items())))
    warnings = _unread_fixed(fixed, parsed, path)
    return replace(study, warnings=warnings, resources=tuple(resources.values()))


def _check_size(grids: tuple[Grid, ...], path: Path, max_points: int) -> None:
    """Refuse a study above `max_points` points, counted from the axes' lengths (nothing expanded)."""
    total = sum(g.size for g in grids)
    if total <= max_points:
        return
    shapes = "; ".join(
        f"grid {i}: {' x '.join(f'{len(v)} {k}' for k, v in g.axes) or '1'} = {g.size:,}"
        for i, g in enumerate(grids, start=1)
    )
    raise ConfigError(
        f"{path}: {total:,} points ({shapes}), above the limit of {max_points:,}; "
        f"shorten the axes or raise the limit (radsim study run --max-points {total})"
    )


def _unread_fixed(fixed: dict[str, Any], grids: tuple[Grid, ...], path: Path) -> tuple[str, ...]:
    """A warning for every [fixed] input that no grid's command reads (it is left out of every point)."""
    commands = {dict(g.fixed).get("command", fixed.get("command")) for g in grids}
    unread = [k for k in fixed if not commands & set(INPUTS[k].commands)]
    return tuple(
        f"{path}: [fixed] '{k}' is read by command {', '.join(INPUTS[k].commands)} only and no grid runs "
        f"{'it' if len(INPUTS[k].commands) == 1 else 'them'} (grids run {', '.join(sorted(map(str, commands)))}); "
        "it has no effect"
        for k in unread
    )


def check_resources(study: Study) -> None:
    """Load what the points name, once per combination: hardware (and its dtype's peak),
    architecture (and layer count), traces (readable, valid, mappable), replay files.

    ConfigError names the file, the grid and the field; nothing has run yet.
    """
    from radsim.scenario.run import resolve

    for number, items in study.resources:
        point = dict(items)
        where = f"{study.path}: grid {number}"
        try:
            trace_file = str(resolve_trace(point["trace"], study.path)) if point["trace"] else None
            resolve(scenario_from({k: point[k] for k in SCENARIO_FIELDS}, where), trace_file)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _grid(raw: Any, shared: dict[str, Any], where: str) -> Grid:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    own = {k: v for k, v in raw.items() if k != "axes"}
    _check_values(own, where)
    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}: 'axes' must be a table of name = [values]")
    check_legacy_inputs(axes, f"{where}: [grid.axes]", axis=True)
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
    check_legacy_inputs(values, where)
    for key, value in values.items():
        if key not in INPUTS:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: {', '.join(INPUTS)}")
        _check_value(key, value, f"{where}: '{key}'")


def _check_value(key: str, value: Any, where: str) -> None:
    check_value(key, value, where)


def expand(study: Study) -> list[dict[str, Any]]:
    """Every point of the study, in file order: inputs with defaults filled, plus `point_id`."""
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _, point in _grid_points(study):
        if point["point_id"] not in seen:  # grids may overlap; a point runs once
            seen.add(point["point_id"])
            points.append(point)
    return points


def _grid_points(study: Study) -> Iterator[tuple[int, dict[str, Any]]]:
    """(grid number, point) for every combination of every grid's axes, in file order."""
    for number, grid in enumerate(study.grids, start=1):
        names = [k for k, _ in grid.axes]
        for combo in itertools.product(*(v for _, v in grid.axes)):
            own = {**dict(grid.fixed), **dict(zip(names, combo, strict=True))}
            command = own.get("command", dict(study.fixed).get("command"))
            # a shared value that the point's command does not read is left out (with a warning at load)
            shared = {k: v for k, v in study.fixed if command in INPUTS[k].commands}
            yield number, make_point({**shared, **own}, f"{study.path}: grid {number}")


def make_point(values: dict[str, Any], where: str = "<point>") -> dict[str, Any]:
    """The point of these inputs: every input of its scenario (defaults filled), its id and routes label."""
    scenario = scenario_from(values, where)
    return {**scenario.as_dict(), "point_id": scenario.point_id, "routes": scenario.routes_label}


def point_id(inputs: dict[str, Any]) -> str:
    """The id of a point given its inputs (see `radsim.scenario.schema.Scenario.point_id`)."""
    return scenario_from({k: inputs[k] for k in INPUTS if k in inputs}).point_id


def resolve_trace(trace: str, study_path: Path | None = None) -> Path:
    """A trace path as written in a study: relative to the working directory, else to the repository."""
    candidates = [Path(trace)]
    if study_path is not None:
        candidates += [study_path.resolve().parent / trace, study_path.resolve().parent.parent / trace]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise ConfigError(f"trace '{trace}' not found (looked in {', '.join(str(c) for c in candidates)})")
