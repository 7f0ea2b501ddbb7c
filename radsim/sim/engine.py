"""The serving simulator: a simpy process for each replica's iteration loop (and, with several
replicas, one for arrivals).

Each replica runs iterations back to back while it has work: the scheduler (`radsim.sim.scheduler`)
picks the iteration's tokens, the executor turns their routes into layer loads, the tabulated cost
model prices them, and the replica holds the device for that long (`env.timeout`). Between
iterations an idle replica waits for an arrival and draws idle power. A single replica takes the
requests that have arrived into its queue before it plans each iteration; with several, an arrival
process sends each request to the replica with the fewest requests in the system. Routes are drawn
for blocks of requests at once. Everything that is not a timing decision is a plain function in
the scheduler, the executor or the metrics module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import simpy

from radsim.cost.layer import Execution
from radsim.cost.loads import (
    EXECUTION_POLICIES,
    decode_load,
    skipper_load,
    slot_load,
    step_decode_load,
    step_load,
)
from radsim.cost.memory import activation_bytes, kv_entry_bytes, weights_bytes
from radsim.cost.table import CostTable
from radsim.errors import ConfigError
from radsim.routes.book import RouteBook
from radsim.sim.scheduler import Batch, Scheduler, SchedulerConfig
from radsim.sim.workload import Request
from radsim.spec.arch import Arch
from radsim.spec.hardware import Hardware

ROUTE_BLOCK = 1024  # requests whose routes are drawn together
PROGRESS_EVERY = 256  # iterations between calls of `Simulation.on_progress`


@dataclass(frozen=True)
class SimConfig:
    """A deployment to simulate: device, model, execution, scheduler and replicas."""

    hw: Hardware
    arch: Arch
    exe: Execution
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    execution_policy: str = "layer_major"
    replicas: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.execution_policy not in EXECUTION_POLICIES:
            raise ConfigError(
                f"execution policy '{self.execution_policy}'; allowed: {', '.join(EXECUTION_POLICIES)}"
            )
        if self.replicas < 1:
            raise ConfigError("--replicas must be >= 1")
        if self.execution_policy == "step_sync" and self.exe.kv_policy == "compute":
            raise ConfigError(
                "kv policy 'compute' runs attention for every token in every layer: use --execution layer_major"
            )


@dataclass(slots=True)
class Iteration:
    """One iteration of one replica, for the timeline."""

    replica: int
    start_at: float
    time_s: float
    energy_J: float
    requests: int
    prefill_tokens: int
    decode_tokens: int
    kv_bytes: float
    waiting: int


@dataclass
class Replica:
    """A replica's state: its scheduler and its energy and busy-time books."""

    index: int
    scheduler: Scheduler
    wake: simpy.Event
    busy_s: float = 0.0
    energy_J: float = 0.0
    last_end_at: float = 0.0


class Simulation:
    """One simulated run: build it, call `run`, read `requests`, `timeline` and the replicas."""

    def __init__(self, cfg: SimConfig, routes: RouteBook, requests: list[Request]) -> None:
        self.cfg, self.routes = cfg, routes
        self.requests = sorted(requests, key=lambda r: r.arrival_at)  # stable: ties keep their order
        limit = cfg.arch.max_position_embeddings
        too_long = [r for r in requests if r.prompt_tokens + r.output_tokens > limit]
        if too_long:
            r = too_long[0]
            raise ConfigError(
                f"{len(too_long)} request(s) exceed the {limit} positions of {cfg.arch.name}, e.g. request {r.id} "
                f"with {r.prompt_tokens}+{r.output_tokens} tokens; lower --max-length or the mean lengths"
            )
        self.env = simpy.Environment()
        sched = cfg.scheduler
        self.table = CostTable(cfg.hw, cfg.arch, cfg.exe, max_rows=sched.max_tokens_per_iteration)
        kv_capacity = self._kv_capacity()
        self.rng = np.random.default_rng(cfg.seed)
        self.replicas = [
            Replica(
                i,
                Scheduler(sched, routes, kv_capacity, kv_entry_bytes(cfg.arch, cfg.exe), cfg.exe.kv_policy),
                self.env.event(),
            )
            for i in range(cfg.replicas)
        ]
        self.timeline: list[Iteration] = []
        self.on_progress: Callable[[int], None] | None = None  # called with the requests completed so far
        self._next = 0  # next request to deliver (one replica)
        self._block = -1
        self._block_routes: tuple[np.ndarray, ...] = ()
        start = min((r.arrival_at for r in requests), default=0.0)
        for replica in self.replicas:  # energy is counted from the first arrival, as the makespan is
            replica.last_end_at = start

    def _kv_capacity(self) -> float:
        """Bytes per device left for the KV cache after weights and peak activations."""
        cfg = self.cfg
        sched = cfg.scheduler
        fixed = weights_bytes(cfg.arch, cfg.exe) + activation_bytes(
            cfg.arch, cfg.exe, sched.max_tokens_per_iteration, sched.max_batch
        )
        free = cfg.hw.memory_capacity_bytes * sched.memory_fraction - fixed
        if free <= 0:
            raise ConfigError(
                f"{cfg.arch.name} can never run on {cfg.hw.stem} (tp={cfg.exe.tp}): weights and activations need "
                f"{fixed / 1e9:.3g} GB of {cfg.hw.memory_capacity_bytes * sched.memory_fraction / 1e9:.3g} GB usable"
            )
        return free

    def run(self) -> None:
        """Simulate until every request has completed."""
        if len(self.replicas) > 1:
            self.env.process(self._arrivals())
        for replica in self.replicas:
            self.env.process(self._serve(replica))
        self.env.run()

    def _routes(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Route-book tokens of request i, their cumulative KV entries and its prompt's slot visits,
        drawn in blocks of requests."""
        block, k = divmod(i, ROUTE_BLOCK)
        if block != self._block:
            chunk = self.requests[block * ROUTE_BLOCK : (block + 1) * ROUTE_BLOCK]
            prompts = np.array([r.prompt_tokens for r in chunk], dtype=np.int64)
            lengths = prompts + np.array([r.output_tokens for r in chunk], dtype=np.int64)
            tokens, offsets, visits = self.routes.assign_with_prefixes(self.rng, lengths, prompts)
            cum = self.replicas[0].scheduler.entries_cumsum(tokens)
            self._block, self._block_routes = block, (tokens, cum, offsets, lengths, visits)
        tokens, cum, offsets, lengths, visits = self._block_routes
        a, n = int(offsets[k]), int(lengths[k])
        base = cum[a - 1] if a else 0
        return tokens[a : a + n], cum[a : a + n] - base, visits[k]

    def _deliver(self, replica: Replica, i: int) -> None:
        replica.scheduler.arrive(self.requests[i], *self._routes(i))

    def _arrivals(self):
        """Several replicas: each arrival joins the replica with the fewest requests in the system."""
        for i, request in enumerate(self.requests):
            if request.arrival_at > self.env.now:  # simultaneous arrivals join the queue together
                yield self.env.timeout(request.arrival_at - self.env.now)
            replica = min(self.replicas, key=lambda r: (r.scheduler.in_system, r.index))
            self._deliver(replica, i)
            if not replica.wake.triggered:
                replica.wake.succeed()

    def _serve(self, replica: Replica):
        sched, single = replica.scheduler, len(self.replicas) == 1
        while True:
            if single:  # one replica: requests that have arrived join its queue before it plans
                while (
                    self._next < len(self.requests) and self.requests[self._next].arrival_at <= self.env.now
                ):
                    self._deliver(replica, self._next)
                    self._next += 1
            batch = sched.next_batch(self.env.now)
            if batch is None:  # idle until an arrival; the run ends when no event is left
                if single:
                    if self._next == len(self.requests):
                        return
                    yield self.env.timeout(self.requests[self._next].arrival_at - self.env.now)
                    continue
                replica.wake = self.env.event()
                yield replica.wake
                continue
            time_s, energy_J = self.iteration_totals(batch, sched)[:2].tolist()
            devices = self.cfg.exe.tp
            idle = self.env.now - replica.last_end_at
            replica.energy_J += idle * self.cfg.hw.idle_power_W * devices + energy_J * devices
            self.timeline.append(
                Iteration(
                    replica.index,
                    self.env.now,
                    time_s,
                    energy_J * devices,
                    int(batch.decode_rows.size + batch.prefill_rows.size),
                    batch.prefill_tokens,
                    batch.decode_tokens,
                    sched.kv_bytes,
                    sched.waiting_count,
                )
            )
            yield self.env.timeout(time_s)
            replica.busy_s += time_s
            replica.last_end_at = self.env.now
            sched.finish(batch, self.env.now)
            if self.on_progress is not None and len(self.timeline) % PROGRESS_EVERY == 0:
                self.on_progress(sum(len(r.scheduler.done) for r in self.replicas))

    def iteration_totals(self, batch: Batch, sched: Scheduler) -> np.ndarray:
        """Price one iteration, as an array of `radsim.cost.table.FIELDS`: layer launches under the
        execution policy, then embedding and head."""
        cfg, book, table = self.cfg, self.routes, self.table
        layers, policy = cfg.arch.num_layers, cfg.exe.kv_policy
        if cfg.execution_policy == "layer_major":
            load = decode_load(batch.decode_visits, batch.decode_context, batch.decode_held, policy, layers)
            if batch.prefill_rows.size:
                held = sched.held_entries(batch.prefill_rows)
                load += slot_load(batch.prefill_visits, batch.prefill_new, held, policy, layers)
            total = table.layer_totals(load, tokens=batch.token_count)
        else:
            steps = book.steps.shape[1]
            decode = batch.decode_book_tokens
            held = sched.held_entries(batch.decode_rows)
            columns = sched.column_of  # the scheduler keeps only the slots routes visit
            load = step_decode_load(book.steps[decode], columns[book.step_slots[decode]], held, layers, steps)
            if batch.prefill_rows.size:
                tokens = np.concatenate(batch.prefill_parts)
                visit, step = np.nonzero(book.steps[tokens] >= 0)
                layer = book.steps[tokens[visit], step].astype(np.int64)
                slot = columns[book.step_slots[tokens[visit], step]]
                request = np.repeat(np.arange(batch.prefill_rows.size), batch.prefill_new)[visit]
                held = sched.held_entries(batch.prefill_rows)
                load += step_load(request, step, layer, slot, held, policy, layers, steps)
            total = table.layer_totals(load, tokens=batch.token_count)
            if policy == "copy":
                total = total + table.layer_totals(skipper_load(batch.slot_visits, batch.new_tokens, layers))
        return total + table.head_totals(batch.token_count, int(batch.logit_rows))
