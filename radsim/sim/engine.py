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

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import simpy

from radsim.cost.host import host_wait_energy_J, iteration_time_s, launch_counts
from radsim.cost.layer import Execution
from radsim.cost.loads import (
    EXECUTION_POLICIES,
    HELD,
    KV,
    PAIRS,
    VISITORS,
    Q,
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
from radsim.sim.scheduler import Batch, DecodeRun, PrefillRun, Scheduler, SchedulerConfig
from radsim.sim.workload import Request
from radsim.spec.arch import Arch
from radsim.spec.engine import DEFAULT_ENGINE, EngineProfile, load_engine
from radsim.spec.hardware import Hardware

ROUTE_BLOCK = 1024  # requests whose routes are drawn together
PROGRESS_EVERY = 256  # iterations between calls of `Simulation.on_progress`
MIN_RUN = 8  # decode iterations worth advancing over at once (measured: 2 costs 15-20% more than 8 on a saturated hour at batch 256, and gains nothing on the 10k workload)
RUN_ELEMENTS = 1 << 14  # (steps x rows) of one vectorised run: bounds its arrays


def _delay_to(now: float, end: float) -> float:
    """The delay that brings simpy's clock from `now` exactly to `end` (now + delay == end)."""
    delay = end - now
    while now + delay < end:
        delay = math.nextafter(delay, math.inf)
    while now + delay > end:
        delay = math.nextafter(delay, -math.inf)
    return delay


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
    engine: EngineProfile = field(default_factory=lambda: load_engine(DEFAULT_ENGINE))

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


TIMELINE_FIELDS = (
    *("replica", "start_at", "time_s", "energy_J", "requests", "prefill_tokens"),
    *("decode_tokens", "kv_bytes", "waiting"),
)
_INTEGER_FIELDS = {"replica", "requests", "prefill_tokens", "decode_tokens", "waiting"}
_FLUSH_ROWS = 4096  # iterations kept as tuples before they are packed into a block


class Timeline:
    """Every iteration of a run (the fields of `Iteration`), packed by column into float64 blocks
    (72 bytes an iteration; counts are exact in float64). Iterating yields `Iteration`s;
    `column(name)` and `array()` give numpy arrays.

    What the metrics need of it is also summed block by block as the run goes (`kv_peak_bytes`,
    `decode_only_s`, `decode_only_count`, `waiting_peak`: the most requests waiting at an iteration
    that starts by `horizon_s`), so that with `keep=False` the blocks are dropped once summed and
    the memory of a run stays flat in its length; the figures are the same either way.
    """

    def __init__(self, keep: bool = True, horizon_s: float = math.inf) -> None:
        self.keep, self.horizon_s = keep, horizon_s
        self._rows: list[tuple] = []
        self._pending: list[np.ndarray] = []  # blocks not summed yet (summed together, cheaply)
        self._pending_rows = 0
        self._blocks: list[np.ndarray] = []
        self._length = 0
        self.kv_peak_bytes = 0.0
        self.decode_only_s = 0.0
        self.decode_only_count = 0
        self.waiting_peak = 0

    def __len__(self) -> int:
        return self._length

    def append(self, *values: float) -> None:
        """One iteration, its values in `TIMELINE_FIELDS` order."""
        self._rows.append(values)
        self._length += 1
        if len(self._rows) >= _FLUSH_ROWS:
            self._flush()

    def extend(self, block: np.ndarray) -> None:
        """Several iterations at once: (iterations, fields) in `TIMELINE_FIELDS` order, float64."""
        self._flush()
        self._length += len(block)
        self._queue(block)

    def _flush(self) -> None:
        if self._rows:
            block = np.array(self._rows, dtype=np.float64).reshape(-1, len(TIMELINE_FIELDS))
            self._rows = []
            self._queue(block)

    def _queue(self, block: np.ndarray) -> None:
        """A packed block, summed with the next ones once they hold `_FLUSH_ROWS` iterations."""
        self._pending.append(block)
        self._pending_rows += len(block)
        if self._pending_rows >= _FLUSH_ROWS:
            self._sum()

    def _sum(self) -> None:
        """Add the pending blocks to the sums (and keep them, with `keep`)."""
        if not self._pending:
            return
        block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        self.kv_peak_bytes = max(self.kv_peak_bytes, float(block[:, _KV].max()))
        only = (block[:, _PREFILL] == 0) & (block[:, _DECODE] > 0)
        self.decode_only_s += float(block[only, _TIME].sum())
        self.decode_only_count += int(np.count_nonzero(only))
        before = block[:, _START] <= self.horizon_s
        if before.any():
            self.waiting_peak = max(self.waiting_peak, int(block[before, _WAITING].max()))
        if self.keep:
            self._blocks.append(block)

    def summed(self) -> Timeline:
        """Self, with every iteration so far in the sums (call before reading them)."""
        self._flush()
        self._sum()
        return self

    def array(self) -> np.ndarray:
        """(iterations, fields) of every iteration so far."""
        if not self.keep:
            raise ValueError("this timeline keeps only its sums (Timeline(keep=False))")
        self.summed()
        if len(self._blocks) != 1:
            self._blocks = [
                np.concatenate(self._blocks) if self._blocks else np.zeros((0, len(TIMELINE_FIELDS)))
            ]
        return self._blocks[0]

    def column(self, name: str) -> np.ndarray:
        return self.array()[:, TIMELINE_FIELDS.index(name)]

    def __iter__(self):
        for row in self.array().tolist():
            yield Iteration(
                *(int(v) if f in _INTEGER_FIELDS else v for f, v in zip(TIMELINE_FIELDS, row, strict=True))
            )


_START, _TIME, _PREFILL, _DECODE, _KV, _WAITING = (
    TIMELINE_FIELDS.index(f)
    for f in ("start_at", "time_s", "prefill_tokens", "decode_tokens", "kv_bytes", "waiting")
)


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

    def __init__(
        self, cfg: SimConfig, routes: RouteBook, requests: list[Request], keep_timeline: bool = True
    ) -> None:
        """`keep_timeline=False` keeps only the timeline's sums (see `Timeline`): memory flat in
        the number of requests, the same metrics."""
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
        self.launches = launch_counts(cfg.hw, cfg.arch, cfg.exe)  # dispatch of the engine profile
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
        last_arrival = self.requests[-1].arrival_at if self.requests else math.inf
        self.timeline = Timeline(keep_timeline, horizon_s=last_arrival)
        self._last_step_s = 0.0  # duration of the latest iteration: sizes the next decode run
        self._arrival_times = np.array([r.arrival_at for r in self.requests], dtype=np.float64)
        self.on_progress: Callable[[int], None] | None = None  # called with the requests completed so far
        # advance over runs of identical decode iterations at once (layer-major execution, one
        # replica); False prices every iteration on its own: the reference the tests compare with
        self.advance = cfg.execution_policy == "layer_major" and cfg.replicas == 1
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
            if self.advance and single and batch.decode_rows.size <= self.table.max_rows:
                steps = sched.run_length(batch)
                if steps >= MIN_RUN:
                    yield from self._run_decodes(replica, batch, steps)
                    continue
                if batch.prefill_rows.size and sched.prefill_run_length(batch) >= 2:
                    yield from self._run_prefills(replica, batch, sched.prefill_run_length(batch))
                    continue
            time_s, energy_J = self.iteration_totals(batch, sched, hosted=True)[:2].tolist()
            self._last_step_s = time_s
            devices = self.cfg.exe.tp
            idle = self.env.now - replica.last_end_at
            replica.energy_J += idle * self.cfg.hw.idle_power_W * devices + energy_J * devices
            self.timeline.append(
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
            yield self.env.timeout(time_s)
            replica.busy_s += time_s
            replica.last_end_at = self.env.now
            sched.finish(batch, self.env.now)
            if self.on_progress is not None and len(self.timeline) % PROGRESS_EVERY == 0:
                self.on_progress(sum(len(r.scheduler.done) for r in self.replicas))

    def _run_decodes(self, replica: Replica, batch: Batch, steps: int):
        """Advance over a run of decode-only iterations of the same rows at once: priced in one
        vectorised call, booked as the step-by-step loop books each (`advance=False` runs that
        loop; tests/sim/test_advance.py holds the two equal). The run ends with the first iteration
        that completes a request (booked by `Scheduler.finish_run`), or before one that would
        overflow the KV cache or plan differently because a request arrived that it could admit."""
        sched = replica.scheduler
        count = int(batch.decode_rows.size)
        steps = min(steps, max(MIN_RUN, RUN_ELEMENTS // max(count, 1)))
        first_new = self._next
        cut = first_new < len(self.requests) and sched.admits_on_arrival(batch)
        now = self.env.now
        if cut and self._last_step_s > 0:
            # the run ends at the next arrival: price about as many steps as fit before it
            horizon = self.requests[first_new].arrival_at - now
            steps = max(1, min(steps, int(horizon / self._last_step_s * 1.1) + 2))
        run = sched.decode_run(batch, steps)
        totals = self.run_totals(run, sched)  # at least the first step: `batch` fits
        clock = self._clock(now, totals)
        k, arrived = self._arrived(clock, len(totals), cut)
        if k < run.steps:
            run, totals = run.first(k), totals[:k]
        tokens = np.full(k, count)
        end = self._book_run(replica, totals, clock, arrived, run.new_entries, count, 0 * tokens, tokens)
        yield self.env.timeout(_delay_to(now, end))
        sched.finish_run(run, clock[:k], clock[1 : k + 1])

    def _run_prefills(self, replica: Replica, batch: Batch, steps: int):
        """Advance over a run of iterations that decode the same rows and prefill chunks of one
        prompt (`Scheduler.prefill_run_length`), as `_run_decodes` does over decode runs. The run
        ends with the chunk that completes the prompt, unless a request waits by then that its
        spare budget could admit, or before one that would overflow the KV cache."""
        sched = replica.scheduler
        count = int(batch.decode_rows.size)
        run = sched.prefill_run(batch, steps)
        totals = self.prefill_run_totals(run, sched)
        now = self.env.now
        clock = self._clock(now, totals)
        k, arrived = self._arrived(clock, len(totals), False)
        if sched.admits_after_prefill(run):
            late = arrived is not None and arrived[-1] > self._next
            if sched.waiting_count or late:
                k -= 1  # (at least the first step stays: its chunk takes the whole budget)
        if k < run.steps:
            run, totals = run.first(k), totals[:k]
            arrived = None if arrived is None else arrived[:k]
        end = self._book_run(
            replica, totals, clock, arrived, run.new_entries, count + 1, run.sizes, np.full(k, count)
        )
        yield self.env.timeout(_delay_to(now, end))
        sched.finish_prefill_run(run, clock[:k], clock[1 : k + 1])

    @staticmethod
    def _clock(now: float, totals: np.ndarray) -> np.ndarray:
        """Plan times of a run's iterations and the end of the last, as simpy's clock advances:
        one addition per iteration (accumulate is sequential)."""
        clock = np.empty(len(totals) + 1)
        clock[0] = now
        clock[1:] = totals[:, 0]
        return np.add.accumulate(clock, out=clock)

    def _arrived(self, clock: np.ndarray, k: int, cut: bool) -> tuple[int, np.ndarray | None]:
        """Arrivals up to each later plan of a run (clock[1:k]) join the queue there: the requests
        delivered by each plan (None: none arrives), and with `cut` the run ends before the first
        plan that sees one."""
        first_new = self._next
        if first_new == len(self.requests) or k < 2 or self.requests[first_new].arrival_at > clock[k - 1]:
            return k, None
        if cut:
            return int(np.searchsorted(clock[1:k], self.requests[first_new].arrival_at)) + 1, None
        arrived = np.searchsorted(self._arrival_times, clock[:k], side="right")
        arrived[0] = first_new
        return k, arrived

    def _book_run(
        self,
        replica: Replica,
        totals: np.ndarray,
        clock: np.ndarray,
        arrived: np.ndarray | None,
        new_entries: np.ndarray,
        requests: int,
        prefill_tokens: np.ndarray,
        decode_tokens: np.ndarray,
    ) -> float:
        """Book a run's k iterations (`totals`, planned at clock[:k]) into the timeline and the
        replica's energy and busy time as the step-by-step loop books each, deliver the requests
        that arrive by its plans, and return when the last ends."""
        sched, devices = replica.scheduler, self.cfg.exe.tp
        k = len(totals)
        block = np.empty((k, len(TIMELINE_FIELDS)))
        block[:, 0] = replica.index
        block[:, 1] = clock[:k]
        block[:, 2:4] = totals[:, :2]
        block[:, 3] *= devices
        block[:, 4] = requests
        block[:, 5] = prefill_tokens
        block[:, 6] = decode_tokens
        block[0, 7] = sched.entries_used
        np.add.accumulate(new_entries[:-1], out=block[1:, 7])  # exact: integer counts
        block[1:, 7] += sched.entries_used
        block[:, 7] *= sched.entry_bytes
        block[:, 8] = sched.waiting_count
        if arrived is not None:
            block[:, 8] += arrived - self._next
        # energy and busy time, added in order as the step-by-step loop adds them
        books = np.empty((k + 1, 2))
        books[0] = replica.energy_J, replica.busy_s
        books[1:, 0] = block[:, 3]
        books[1:, 1] = totals[:, 0]
        idle = float(clock[0]) - replica.last_end_at  # before the first; none between iterations
        books[1, 0] += idle * self.cfg.hw.idle_power_W * devices
        replica.energy_J, replica.busy_s = np.add.accumulate(books, axis=0)[-1].tolist()
        self.timeline.extend(block)
        delivered = self._next if arrived is None else int(arrived[-1])
        while self._next < delivered:  # delivered in order, as at each plan
            self._deliver(replica, self._next)
            self._next += 1
        end = float(clock[k])
        replica.last_end_at = end
        self._last_step_s = float(totals[-1, 0])
        if (
            self.on_progress is not None
            and (len(self.timeline) // PROGRESS_EVERY) > (len(self.timeline) - k) // PROGRESS_EVERY
        ):
            self.on_progress(sum(len(r.scheduler.done) for r in self.replicas))
        return end

    def _run_load(self, run: DecodeRun) -> np.ndarray:
        """(5, k, W): the load matrix of each step of a decode run, side by side (sums of counts: exact)."""
        layers, policy = self.cfg.arch.num_layers, self.cfg.exe.kv_policy
        k, d, w = run.visits.shape
        visits = run.visits
        load = np.empty((5, k, w))
        np.add.reduce(visits, axis=1, out=load[VISITORS])
        load[Q] = load[VISITORS]
        load[KV] = load[VISITORS]
        if policy == "none":
            assert run.held is not None
            load[PAIRS] = np.einsum("kdw,kdw->kw", visits, run.held + 1.0)
        else:
            weight = run.context + 1.0  # (k, d): a query reads its held entries and itself
            np.matmul(weight[:, None, :], visits, out=load[PAIRS][:, None, :])
            load[KV, :, :layers] = d
            if policy == "compute":
                load[Q, :, :layers] = d
                load[PAIRS, :, :layers] = np.add.reduce(weight, axis=1)[:, None]
            if w > layers:
                assert run.held is not None
                later = np.einsum("kdw,kdw->kw", visits[:, :, layers:], run.held[:, :, layers:] + 1.0)
                load[PAIRS, :, layers:] = later
        load[HELD] = load[PAIRS]
        return load

    def _price_run(
        self, load: np.ndarray, heads: np.ndarray, sequences: int, decode_only: bool
    ) -> np.ndarray:
        """(k, FIELDS) of a run's steps from their loads (5, k, W) and heads (k, FIELDS)."""
        _, k, w = load.shape
        fields = self.table.layer_fields(load.reshape(5, k * w))  # (4, k * w)
        totals = np.add.reduce(fields.reshape(4, k, w), axis=2).T + heads
        if not self.cfg.engine.adds_nothing:
            passes = np.count_nonzero(load[KV] > 0, axis=1)
            self._host(totals, passes, sequences, decode_only)
        return totals

    def run_totals(self, run: DecodeRun, sched: Scheduler) -> np.ndarray:
        """(k, FIELDS) of each iteration of a decode run, priced as `iteration_totals` prices each."""
        d = run.visits.shape[1]
        return self._price_run(self._run_load(run), self.table.head_totals(d, d), d, True)

    def prefill_run_totals(self, run: PrefillRun, sched: Scheduler) -> np.ndarray:
        """(k, FIELDS) of each iteration of a prefill run, priced as `iteration_totals` prices each:
        the decodes' load plus the chunk's (`radsim.cost.loads.slot_load` of one row)."""
        layers, policy = self.cfg.arch.num_layers, self.cfg.exe.kv_policy
        load = self._run_load(run.decode)
        d = run.decode.visits.shape[1]
        v = run.visits
        kv = v.copy()
        if policy != "none":  # every token writes a first-pass entry
            kv[:, :layers] = run.sizes[:, None]
        q = kv if policy == "compute" else v
        load[Q] += q
        load[KV] += kv
        load[VISITORS] += v
        load[PAIRS] += q * (run.held + (kv + 1.0) * 0.5)
        load[HELD] += (q > 0) * (run.held + kv)
        logits = np.full(run.steps, d)
        logits[-1] += run.completes
        heads = self.table.head_rows(d + run.sizes, logits)
        return self._price_run(load, heads, d + 1, False)

    def _host(self, totals: np.ndarray, passes, sequences: int, decode_only: bool) -> None:
        """Iterations' GPU time in `totals` (rows of FIELDS) to their wall time under the engine
        profile (`radsim.cost.host`), with the device's active power while it waits on the host."""
        cfg = self.cfg
        launches = self.launches.launches(passes, cfg.engine)
        gpu = totals[..., 0]
        wall = iteration_time_s(cfg.engine, gpu, launches, passes, sequences, decode_only, cfg.exe.routed)
        totals[..., 1] += host_wait_energy_J(cfg.hw, wall - gpu)
        totals[..., 0] = wall

    def iteration_totals(self, batch: Batch, sched: Scheduler, hosted: bool = False) -> np.ndarray:
        """Price one iteration, as an array of `radsim.cost.table.FIELDS`: layer launches under the
        execution policy, then embedding and head; with `hosted`, the engine profile's host time."""
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
        total = total + table.head_totals(batch.token_count, int(batch.logit_rows))
        if hosted and not cfg.engine.adds_nothing:
            sequences = int(batch.decode_rows.size + batch.prefill_rows.size)
            self._host(total, np.count_nonzero(load[KV] > 0), sequences, not batch.prefill_rows.size)
        return total
