"""What a scenario builds and runs: its hardware, architecture, execution, routes, requests and
scheduler, and the two runs on it (the static estimate and the serving simulation).

`run_estimate` prices the static batch (`radsim.cost.estimate`); `run_simulation` runs the serving
simulator (`radsim.sim.engine`) and summarises it (`radsim.sim.metrics`). The CLI commands and the
study evaluator call these two and nothing else, so a scenario gives the same numbers whichever way
it is run. Hardware, architectures and traces are cached per process: a sweep reads each once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from radsim.cost.layer import Execution
from radsim.cost.money import Pricing
from radsim.errors import ConfigError
from radsim.files import check_text
from radsim.routes.synthetic import is_routed
from radsim.scenario.schema import Scenario
from radsim.spec.arch import Arch, load_arch
from radsim.spec.engine import EngineProfile, load_engine
from radsim.spec.hardware import Hardware, load_hardware
from radsim.spec.kernel_tables import framework_tables

if TYPE_CHECKING:
    from radsim.routes.book import RouteBook
    from radsim.sim.engine import Simulation
    from radsim.sim.metrics import SLO
    from radsim.sim.workload import Request


def load_hw(name: str) -> Hardware:
    """A hardware model by registry name or TOML path (a path must be readable UTF-8 text)."""
    if str(name).endswith(".toml"):
        check_text(name, "hardware file")
    return load_hardware(name)


def load_architecture(name: str) -> Arch:
    """An architecture by registry name or TOML path (a path must be readable UTF-8 text)."""
    if str(name).endswith(".toml"):
        check_text(name, "architecture file")
    return load_arch(name)


T = TypeVar("T")


@lru_cache(maxsize=32)
def _hardware(name: str) -> Hardware:
    return load_hw(name)


@lru_cache(maxsize=64)
def _arch(name: str, layers: int) -> Arch:
    arch = load_architecture(name)
    return arch if layers in (0, arch.num_layers) else arch.with_layers(layers)


@lru_cache(maxsize=64)
def _engine_hardware(name: str, engine: str) -> Hardware:
    """The device with the kernel tables of the engine's framework, where they were imported."""
    hw = _hardware(name)
    framework = load_engine(engine).kernel_tables
    if not framework or hw.kernel_tables is None:
        return hw
    tables = framework_tables(hw.kernel_tables, framework)
    if tables is None or tables is hw.kernel_tables:
        return hw
    source = f"measured: {framework} tables selected by engine '{engine}' [{tables.source}]"
    return replace(hw, kernel_tables=tables, sources={**hw.sources, "kernel_tables": source})


def hardware(s: Scenario) -> Hardware:
    """The scenario's device (a registry name or a TOML path), priced from the kernel tables of the
    engine profile's framework where the device has them; its dtype must have a matrix peak."""
    hw = _engine_hardware(s.hw, s.engine)
    hw.peak_flops(s.dtype)
    return hw


def architecture(s: Scenario) -> Arch:
    """The scenario's architecture, with `layers` layers when given."""
    return _arch(s.arch, s.layers)


def depth_fraction(s: Scenario, arch: Arch) -> float:
    """The depth fraction of parametric routes: `visited_layers / layers` when given."""
    if not s.visited_layers:
        return s.depth_fraction
    if s.visited_layers > arch.num_layers:
        raise ConfigError(
            f"visited_layers {s.visited_layers} exceeds the {arch.num_layers} layers of {arch.name}"
        )
    return s.visited_layers / arch.num_layers


def resolve(s: Scenario, trace_file: str | None = None) -> None:
    """Load what the scenario names and check that it fits together, without running anything.

    Hardware (with a matrix peak for the dtype), architecture (with `layers`), visited layers
    within the depth, the trace (readable, valid, mappable onto the architecture) and the replay
    CSV. ConfigError names the field. A study calls this for each combination of these inputs
    among its points before the first point runs.
    """
    _field("hw", lambda: _hardware(s.hw))
    _field("dtype", lambda: hardware(s))
    _field("arch", lambda: _arch(s.arch, 0))
    arch = _field("layers", lambda: architecture(s))
    _field("visited_layers", lambda: depth_fraction(s, arch))
    if s.trace:
        _field("trace", lambda: route_book(s, arch, trace_file))
    if s.replay:
        from radsim.sim.workload import read_replay

        _field("replay", lambda: read_replay(Path(s.replay)))


def _field(name: str, check: Callable[[], T]) -> T:
    """`check()`, its ConfigError prefixed with the input it concerns."""
    try:
        return check()
    except ConfigError as exc:
        raise ConfigError(f"'{name}': {exc}") from None


def pricing(s: Scenario) -> Pricing:
    """Electricity price (device rental comes from the hardware file)."""
    return Pricing(s.electricity_usd_per_kWh)


def slo(s: Scenario) -> SLO:
    """The latency targets of goodput."""
    from radsim.sim.metrics import SLO

    return SLO(s.slo_ttft_s, s.slo_tpot_s)


def engine_profile(s: Scenario) -> EngineProfile:
    """The serving-engine profile the scenario names (`radsim.spec.engine`)."""
    return load_engine(s.engine)


def estimate_execution(s: Scenario, arch: Arch) -> Execution:
    """How the static estimate runs the model: a router wherever some token skips a layer."""
    routed = is_routed(arch.num_layers, depth_fraction(s, arch), s.depth_distribution)
    allreduce = engine_profile(s).allreduce
    return Execution(s.dtype, s.tp, s.kv_policy or "none", routed, s.expert_launch, allreduce)


def run_estimate(s: Scenario) -> dict[str, Any]:
    """The static batch of `radsim.cost.estimate`, as its flat dict of metrics."""
    from radsim.cost.estimate import Workload, estimate

    hw, arch = hardware(s), architecture(s)
    work = Workload(
        s.batch,
        s.prompt_tokens,
        s.output_tokens,
        depth_fraction(s, arch),
        s.prefill_chunk,
        s.seed,
        s.depth_distribution,
    )
    return estimate(hw, arch, estimate_execution(s, arch), work, pricing(s), engine_profile(s))


@lru_cache(maxsize=16)
def _trace_routes(path: str, num_layers: int) -> tuple[RouteBook, str, bool, dict[str, Any]]:
    from radsim.routes.cache import cached_routes

    book, meta = cached_routes(path, num_layers)  # read once (and then from the compact cache)
    routed = meta["model"]["kind"] != "sequential"  # a sequential model has no router to run
    return book, meta["kv_policy"], routed, meta


def route_book(s: Scenario, arch: Arch, trace_file: str | None = None) -> tuple[RouteBook, str, bool]:
    """The routes requests draw from, the KV policy that applies and whether a router runs.

    `trace_file` is where the scenario's trace was found (a study resolves it beside the study file).
    """
    from radsim.routes.synthetic import parametric

    if s.trace:
        book, policy, routed, _ = _trace_routes(trace_file or s.trace, arch.num_layers)
        return book, s.kv_policy or policy, routed
    fraction = depth_fraction(s, arch)
    book = parametric(
        arch.num_layers,
        fraction,
        s.reuse_prob,
        s.seed,
        distribution=s.depth_distribution,
        shape=s.route_shape,
    )
    default_policy = "copy" if s.route_shape == "early_exit" else "none"
    routed = is_routed(arch.num_layers, fraction, s.depth_distribution) or s.reuse_prob > 0
    return book, s.kv_policy or default_policy, routed


def requests(s: Scenario) -> list[Request]:
    """The requests: a static batch at t=0, Poisson or gamma arrivals, or a replayed CSV."""
    from radsim.sim.workload import LengthDist, Request, WorkloadConfig, generate

    if s.arrival == "batch":
        return [Request(i, 0.0, s.prompt_tokens, s.output_tokens) for i in range(s.batch)]

    def lengths(mean: int) -> LengthDist:
        cap = s.max_length_tokens or 4 * mean
        return LengthDist(s.lengths, float(mean), s.length_cv, 1, max(1, 2 * mean), cap)

    arrival = s.arrival
    workload = WorkloadConfig(
        arrival,
        s.rate_per_s,
        s.duration_s,
        s.burstiness,
        lengths(s.prompt_tokens),
        lengths(s.output_tokens),
        replay_csv=s.replay or None,
        seed=s.seed,
    )
    return generate(workload)


def build_simulation(s: Scenario, trace_file: str | None = None, keep_timeline: bool = True) -> Simulation:
    """The serving simulation of the scenario, ready to run (`keep_timeline=False`: only the
    timeline's sums are kept, memory flat in the run's length; `radsim.sim.engine.Timeline`)."""
    from radsim.sim.engine import SimConfig, Simulation
    from radsim.sim.scheduler import SchedulerConfig

    hw, arch = hardware(s), architecture(s)
    book, policy, routed = route_book(s, arch, trace_file)
    engine = engine_profile(s)
    exe = Execution(s.dtype, s.tp, policy, routed, s.expert_launch, engine.allreduce)
    budget = s.prefill_chunk or s.batch * s.prompt_tokens
    sched = SchedulerConfig(
        s.batching_policy, s.sequences_per_batch, budget, s.chunked_prefill, s.memory_fraction
    )
    cfg = SimConfig(hw, arch, exe, sched, s.execution, s.replicas, s.seed, engine)
    return Simulation(cfg, book, requests(s), keep_timeline)


def run_simulation(
    s: Scenario,
    trace_file: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    keep_timeline: bool = True,
) -> tuple[Simulation, dict[str, Any]]:
    """Simulate the scenario; the finished simulation and its metrics (`radsim.sim.metrics.summarize`),
    with where its routes came from (`routes_source`) and what to be wary of (`warnings`).
    `on_progress(completed)` is called now and then with the requests completed (a progress bar)."""
    from radsim.sim.metrics import summarize

    sim = build_simulation(s, trace_file, keep_timeline)
    sim.on_progress = on_progress
    sim.run()
    metrics = summarize(sim, slo(s), pricing(s))
    source, warnings = routes_provenance(s, architecture(s), trace_file)
    metrics["routes_source"] = source
    metrics["warnings"] = warnings + overload_warnings(s, sim)
    return sim, metrics


#: A trace whose model has this many times fewer (or more) layers than the architecture is flagged.
STRETCH_WARNING_RATIO = 2.0
#: Requests still waiting when arrivals stop, as a share of all requests, that flag an overloaded run.
OVERLOAD_WAITING_SHARE = 0.05


def routes_provenance(s: Scenario, arch: Arch, trace_file: str | None = None) -> tuple[str, list[str]]:
    """Where the routes come from, in one line, and warnings about how they were used."""
    if not s.trace:
        return f"parametric: {s.routes_label} ({s.depth_distribution} depths, seed {s.seed})", []
    meta = _trace_routes(trace_file or s.trace, arch.num_layers)[3]  # read once, with the routes
    model, quality, data = meta["model"], meta.get("quality", {}), meta.get("data", {})
    ppl = quality.get("perplexity")
    where = (
        f"perplexity {ppl:.1f} on {data.get('tokens', '?')} held-out tokens" if ppl else "no quality recorded"
    )
    layers = int(model["num_layers"])
    source = (
        f"trace {s.trace}: {model['kind']} model {model.get('name', '?')}, {layers} layers, {where}; "
        f"mapped onto the {arch.num_layers} layers of {arch.name}"
        + (
            ""
            if layers == arch.num_layers
            else f" (each of its layers stands for {arch.num_layers / layers:.3g})"
        )
    )
    warnings = []
    ratio = max(arch.num_layers / layers, layers / arch.num_layers)
    if ratio > STRETCH_WARNING_RATIO:
        warnings.append(
            f"routes of a {layers}-layer model ({model.get('name', '?')}) stretched onto the {arch.num_layers} layers "
            f"of {arch.name} ({ratio:.3g}x): every token's route is that small model's, block by block"
        )
    return source, warnings


def overload_warnings(s: Scenario, sim: Simulation) -> list[str]:
    """A warning when requests pile up: many still waiting when the arrivals stopped."""
    if s.arrival == "batch" or not sim.timeline or not sim.requests:
        return []
    waiting = sim.timeline.summed().waiting_peak  # at iterations that start by the last arrival
    if waiting > max(10, OVERLOAD_WAITING_SHARE * len(sim.requests)):
        return [
            f"arrivals exceed capacity: up to {waiting} requests were waiting before the last arrival "
            f"({len(sim.requests)} requests at {s.rate_per_s:g}/s); latencies grow with the run's length "
            "(radsim capacity finds the rate that meets the SLOs)"
        ]
    return []
