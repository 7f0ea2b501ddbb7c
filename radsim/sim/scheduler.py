"""Iteration-level scheduling of one replica: batching, chunked prefill, KV admission, preemption.

`continuous` batching (as vLLM and TGI do) re-forms the batch every iteration: every running request
that has its prompt in the KV cache decodes one token, prompts still being prefilled take chunks of
the remaining token budget (`chunked_prefill`), and waiting requests are admitted, first come first
served, while a batch slot is free and the KV cache can hold their prompt. If the cache cannot take
an iteration's new entries, the most recently admitted request is preempted: its KV entries are
freed and it waits again at the head of the queue, to be recomputed (prompt plus generated tokens
prefilled again) when readmitted. `static` batching (request-level scheduling, as a framework's
`generate` runs a batch) admits up to `max_batch` requests whose whole KV cache fits, prefills all
their prompts (in chunks of the token budget), then decodes them in lockstep until the last one
completes, before admitting more: a request whose prompt is in the cache waits for the others'.

KV entries are counted per request and per (pass, layer) slot, from the routes: under the `none`
policy a token holds an entry where it visits; under `copy`/`compute` every first-pass layer holds
one for every token, plus the visits of later passes.

Running requests live in rows of numpy arrays, so an iteration costs numpy calls over rows; Python
loops run only over prefilling rows and over admissions, preemptions and completions.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from radsim.errors import ConfigError
from radsim.routes.book import RouteBook
from radsim.sim.workload import Request

BATCHING_POLICIES = ("continuous", "static")
FREE, PREFILLING, DECODING = 0, 1, 2  # what a scheduler row is doing
ITL_BINS = np.logspace(-7, 4, 2201)  # inter-token latency histogram edges, seconds
_ITL_EDGES = ITL_BINS.tolist()


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching policy and its limits."""

    policy: str = "continuous"
    max_batch: int = 256
    max_tokens_per_iteration: int = 8192
    chunked_prefill: bool = True
    memory_fraction: float = 0.9  # share of device memory the engine may use (weights, KV, activations)

    def __post_init__(self) -> None:
        if self.policy not in BATCHING_POLICIES:
            raise ConfigError(f"batching policy '{self.policy}'; allowed: {', '.join(BATCHING_POLICIES)}")
        if self.max_batch < 1 or self.max_tokens_per_iteration < 1:
            raise ConfigError("--max-batch and --max-tokens must be >= 1")
        if not 0 < self.memory_fraction <= 1:
            raise ConfigError("--memory-fraction must be in (0, 1]")


@dataclass
class Finished:
    """A completed request's timestamps."""

    request: Request
    first_token_at: float
    done_at: float
    preemptions: int


class Queued(NamedTuple):
    """A request in the queue, with what it keeps across a preemption."""

    request: Request
    tokens: np.ndarray  # route-book token of each position
    generated: int  # tokens generated before (recomputed when admitted)
    first_token_at: float
    last_token_at: float
    preemptions: int
    cum_entries: np.ndarray  # cumulative KV entries of its positions
    prompt_visits: np.ndarray | None  # (W,) slot visits summed over the prompt


@dataclass
class Batch:
    """What one iteration processes: decoding rows (one token each) and prefill chunks.

    Decoding rows come first in the flat views (`new_tokens`, `slot_visits`); the two parts are kept
    apart because a decode row's load has a closed form that prefill chunks lack.
    """

    decode_rows: np.ndarray  # (D,) scheduler rows that decode one token
    decode_book_tokens: np.ndarray  # (D,) route-book token each of them processes
    decode_visits: np.ndarray  # (D, W) visits per (pass, layer) slot, 0 or 1
    decode_context: np.ndarray  # (D,) tokens each holds in the KV cache
    decode_held: np.ndarray | None  # (D, W) entries per slot (first pass implicit under copy/compute)
    prefill_rows: np.ndarray  # (P,) scheduler rows that prefill a chunk
    prefill_new: np.ndarray  # (P,) tokens of each chunk
    prefill_parts: list[np.ndarray]  # route-book tokens of each chunk
    prefill_visits: np.ndarray  # (P, W) visits per slot, summed over the chunk
    prefill_entries: np.ndarray  # (P, W) KV entries each chunk adds per slot
    new_entries: float  # KV entries the iteration adds
    logit_rows: int  # tokens whose logits are sampled (decodes and completed prefills)
    prefill_tokens: int  # prompt (or recomputed) tokens in the iteration
    completing: list[int]  # prefilling rows whose prefill this iteration completes

    @property
    def decode_tokens(self) -> int:
        """Decoded tokens in the iteration."""
        return int(self.decode_rows.size)

    @property
    def token_count(self) -> int:
        """New tokens in the iteration."""
        return self.prefill_tokens + self.decode_tokens

    @cached_property
    def new_tokens(self) -> np.ndarray:
        """(R,) tokens each row brings."""
        return np.concatenate([np.ones(self.decode_rows.size, dtype=np.int64), self.prefill_new])

    @cached_property
    def slot_visits(self) -> np.ndarray:
        """(R, W) visits per row and slot."""
        return np.concatenate([self.decode_visits, self.prefill_visits])


@dataclass
class DecodeRun:
    """k iterations from now on that decode the same rows and nothing else (`Scheduler.decode_run`):
    per step, the route-book token each row processes, its slot visits, its context and the KV
    entries it holds before the step, and the entries the step adds."""

    rows: np.ndarray  # (D,) scheduler rows
    tokens: np.ndarray  # (k, D) route-book tokens
    visits: np.ndarray  # (k, D, W) visits per slot, 0 or 1
    context: np.ndarray  # (k, D) tokens each row holds in the KV cache before the step
    held: np.ndarray | None  # (k, D, W) entries per slot before the step (None as in `Batch.decode_held`)
    new_entries: np.ndarray  # (k,) KV entries each step adds

    @property
    def steps(self) -> int:
        return int(self.tokens.shape[0])

    def first(self, k: int) -> DecodeRun:
        """The run's first k iterations."""
        held = None if self.held is None else self.held[:k]
        return DecodeRun(
            self.rows, self.tokens[:k], self.visits[:k], self.context[:k], held, self.new_entries[:k]
        )


@dataclass
class PrefillRun:
    """k iterations from now on that decode the same rows (`decode`) and prefill one prompt, a chunk
    each (`Scheduler.prefill_run`): per step, the chunk's tokens, its slot visits, the KV entries it
    adds and those the prompt's row holds before it, and the entries the step adds in all."""

    decode: DecodeRun
    row: int  # the prefilling row
    sizes: np.ndarray  # (k,) tokens of each chunk
    visits: np.ndarray  # (k, W) visits per slot, summed over each chunk
    entries: np.ndarray  # (k, W) KV entries each chunk adds per slot
    held: np.ndarray  # (k, W) entries the row holds per slot before each step (as `held_entries`)
    new_entries: np.ndarray  # (k,) KV entries each step adds (decodes and chunk)
    completes: bool  # whether the last chunk completes the prompt

    @property
    def steps(self) -> int:
        return int(self.sizes.shape[0])

    def first(self, k: int) -> PrefillRun:
        """The run's first k iterations."""
        done = self.completes and k == self.steps
        return PrefillRun(
            self.decode.first(k), self.row, self.sizes[:k], self.visits[:k], self.entries[:k],
            self.held[:k], self.new_entries[:k], done,
        )  # fmt: skip


class Scheduler:
    """Waiting queue and running rows of one replica, with its KV-cache books."""

    def __init__(
        self,
        cfg: SchedulerConfig,
        book: RouteBook,
        kv_capacity_bytes: float,
        entry_bytes: float,
        kv_policy: str,
    ) -> None:
        self.cfg, self.book, self.kv_policy = cfg, book, kv_policy
        self.capacity_entries = kv_capacity_bytes / entry_bytes
        self.entry_bytes = entry_bytes
        n = cfg.max_batch
        self.num_layers = layers = book.num_layers
        # under copy/compute every token holds a first-pass entry in every layer, so those slots'
        # entries equal the row's context and are not stored (`context` stands for them)
        self.shared_first_pass = kv_policy != "none"
        # Columns: the slots some route of the book visits (under copy/compute every first-pass slot,
        # first); a slot nobody visits launches nothing, so it is left out of every per-row array.
        used: np.ndarray = np.asarray(book.slots.any(axis=0))
        if self.shared_first_pass:
            used[:layers] = True
        self.columns = np.flatnonzero(used)
        self.column_of = np.full(book.slots.shape[1], -1, dtype=np.int64)
        self.column_of[self.columns] = np.arange(self.columns.size)
        w = self.columns.size
        slots = np.ascontiguousarray(book.slots[:, self.columns])  # rows contiguous: taken by token
        entries = slots.astype(np.float64, order="C")
        if self.shared_first_pass:
            entries[:, :layers] = 1.0
        self._slots_f64 = slots.astype(np.float64, order="C")
        self._book_cum = np.ascontiguousarray(book.cum_slots[:, self.columns])
        self._entries_per_token = entries.sum(axis=1).astype(np.int64)  # integer sums are fast
        self.held = np.zeros((n, w))  # KV entries per row and slot (see shared_first_pass)
        self.context = np.zeros(n, dtype=np.int64)  # tokens of each row in the KV cache
        self.active = np.zeros(n, dtype=bool)
        self._free_rows = list(range(n))  # a heap
        self.phase = np.zeros(n, dtype=np.int8)  # FREE, PREFILLING or DECODING
        self.request: list[Request | None] = [None] * n
        self.routes = np.zeros((n, 1), dtype=np.int64)  # route-book token of each row's positions
        self.output = np.zeros(n, dtype=np.int64)
        self.target = np.zeros(n, dtype=np.int64)  # positions whose KV must exist before the next token
        self.generated = np.zeros(n, dtype=np.int64)  # tokens generated before admission (recompute)
        self.prompt = np.zeros(n, dtype=np.int64)
        self.end_context = np.zeros(n, dtype=np.int64)  # context after the last token is generated
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.first_token_at = np.full(n, np.nan)
        self.last_token_at = np.full(n, np.nan)  # of prefilling rows; a decoding row emitted at the last plan
        self.stalled = np.zeros(n, dtype=bool)  # decoding rows that sat out iterations (static batching)
        self._planned_at = 0.0  # when the current iteration was planned
        self.preempted = False  # whether planning the current iteration preempted a request
        self.admitted_at = np.full(n, np.nan)
        self.cum_entries: list[np.ndarray | None] = [None] * n
        self.waiting: deque[Queued] = deque()
        self.prompt_visits: list[np.ndarray | None] = [None] * n  # (W,) slot visits of each row's prompt
        self.done: list[Finished] = []
        self.entries_used = 0.0
        self.itl_histogram = np.zeros(len(ITL_BINS) + 1, dtype=np.int64)  # gaps per ITL_BINS bin
        self.itl_sum, self.itl_count = 0.0, 0  # seconds, gaps

    # -- books ---------------------------------------------------------------------------------
    @property
    def in_system(self) -> int:
        """Requests waiting or running."""
        return len(self.waiting) + int(self.active.sum())

    @property
    def waiting_count(self) -> int:
        """Requests in the queue."""
        return len(self.waiting)

    @property
    def kv_bytes(self) -> float:
        """KV-cache bytes held now."""
        return self.entries_used * self.entry_bytes

    def held_entries(self, rows: np.ndarray) -> np.ndarray:
        """(R, W) KV entries each row holds per slot."""
        held = self.held[rows]
        if self.shared_first_pass:
            held[:, : self.num_layers] = self.context[rows][:, None]
        return held

    def entries_cumsum(self, tokens: np.ndarray) -> np.ndarray:
        """Cumulative KV entries of a run of route-book tokens."""
        return np.cumsum(self._entries_per_token.take(tokens))

    def arrive(
        self,
        request: Request,
        tokens: np.ndarray,
        cum: np.ndarray | None = None,
        prompt_visits: np.ndarray | None = None,
    ) -> None:
        """A request joins the queue with its token routes; it must fit in the KV cache alone.

        `cum`, the cumulative KV entries of its positions (`entries_cumsum`), is computed if not given;
        admission needs are lookups in it from here on. `prompt_visits`, the slot visits summed
        over the prompt, spare summing them when the prompt is prefilled in one chunk.
        """
        if cum is None:
            cum = self.entries_cumsum(tokens)
        if prompt_visits is not None:
            prompt_visits = prompt_visits[self.columns]
        need = cum[request.prompt_tokens + request.output_tokens - 2]
        if need > self.capacity_entries:
            raise ConfigError(
                f"request {request.id} ({request.prompt_tokens}+{request.output_tokens} tokens) needs "
                f"{need * self.entry_bytes / 1e9:.2f} GB of KV cache; only "
                f"{self.capacity_entries * self.entry_bytes / 1e9:.2f} GB fit next to the weights"
            )
        self.waiting.append(Queued(request, tokens, 0, np.nan, np.nan, 0, cum, prompt_visits))

    # -- planning ------------------------------------------------------------------------------
    def next_batch(self, now: float) -> Batch | None:
        """The next iteration's work, or None when there is nothing to do."""
        self._planned_at = now
        self.preempted = False
        if self.cfg.policy == "static" and not self.active.any():
            self._admit_static(now)
        decode = (self.phase == DECODING).nonzero()[0]
        if self.cfg.policy == "static" and decode.size and (self.phase == PREFILLING).any():
            self.stalled[decode] = True  # a static batch decodes once every prompt is in the cache
            decode = decode[:0]
        budget = self.cfg.max_tokens_per_iteration - decode.size
        chunks: dict[int, int] = {}
        for row in (self.phase == PREFILLING).nonzero()[0].tolist():
            budget = self._plan_prefill(row, chunks, budget, bool(decode.size))
        if self.cfg.policy == "continuous":
            self._admit(now, chunks, budget, bool(decode.size))
        return self._fit(decode, chunks)

    def _plan_prefill(self, row: int, chunks: dict[int, int], budget: int, busy: bool) -> int:
        left = int(self.target[row] - self.context[row])
        if budget <= 0:
            return budget
        if not self.cfg.chunked_prefill:
            if left > budget and (busy or chunks):
                return budget
            chunks[row] = left
            return budget - left
        chunks[row] = min(left, budget)
        return budget - chunks[row]

    def _admit(self, now: float, chunks: dict[int, int], budget: int, busy: bool) -> None:
        while self.waiting and budget > 0 and self._free_rows:
            head = self.waiting[0]
            need = head.cum_entries[head.request.prompt_tokens + head.generated - 1]
            if self.entries_used + need > self.capacity_entries:
                return
            row = self._place(now)
            budget = self._plan_prefill(row, chunks, budget, busy)

    def _admit_static(self, now: float) -> None:
        entries = self.entries_used
        while self.waiting and self._free_rows:
            head = self.waiting[0]
            need = head.cum_entries[head.request.prompt_tokens + head.request.output_tokens - 2]
            if entries + need > self.capacity_entries:
                return
            entries += need
            self._place(now)

    def _place(self, now: float) -> int:
        request, tokens, generated, first, last, preemptions, cum, prompt_visits = self.waiting.popleft()
        row = heapq.heappop(self._free_rows)  # the lowest free row
        self.prompt_visits[row] = prompt_visits
        self.cum_entries[row] = cum
        self.active[row] = True
        self.phase[row] = PREFILLING
        if tokens.size > self.routes.shape[1]:
            grown = np.zeros((self.routes.shape[0], tokens.size), dtype=np.int64)
            grown[:, : self.routes.shape[1]] = self.routes
            self.routes = grown
        self.request[row] = request
        self.routes[row, : tokens.size] = tokens
        self.output[row] = request.output_tokens
        self.prompt[row] = request.prompt_tokens
        self.end_context[row] = request.prompt_tokens + request.output_tokens - 1
        self.target[row] = request.prompt_tokens + generated
        self.context[row], self.generated[row] = 0, generated
        self.first_token_at[row], self.preemptions[row] = first, preemptions
        self.admitted_at[row] = now
        self.last_token_at[row] = now if np.isnan(first) else last
        return row

    def _fit(self, decode: np.ndarray, chunks: dict[int, int]) -> Batch | None:
        """The batch, after preempting the latest admitted requests until its new KV entries fit."""
        while decode.size or chunks:
            batch = self._batch(decode, chunks)
            if self.entries_used + batch.new_entries <= self.capacity_entries:
                return batch
            running = np.flatnonzero(self.active)
            victim = int(running[np.argmax(self.admitted_at[running])])
            decode = decode[decode != victim]
            chunks.pop(victim, None)
            self._preempt(victim)
            self.preempted = True
        return None

    def _chunk(self, row: int, n: int) -> np.ndarray:
        start = int(self.context[row])
        return self.routes[row][start : start + n]

    def _preempt(self, row: int) -> None:
        request, cum = self.request[row], self.cum_entries[row]
        assert request is not None and cum is not None
        length = request.prompt_tokens + request.output_tokens
        decoding = self.phase[row] == DECODING  # it emitted a token when this iteration was planned
        emitted_at = float(self.last_token_at[row]) if self.stalled[row] or not decoding else self._planned_at
        state = (
            int(self.context[row] - self.prompt[row] + 1) if decoding else int(self.generated[row]),
            float(self.first_token_at[row]),
            emitted_at,
            int(self.preemptions[row]) + 1,
        )
        self.waiting.appendleft(
            Queued(request, self.routes[row, :length].copy(), *state, cum, self.prompt_visits[row])
        )
        self._free(row)

    def _free(self, row: int) -> None:
        cum, context = self.cum_entries[row], int(self.context[row])
        assert cum is not None
        self.entries_used -= float(cum[context - 1]) if context else 0.0
        self.held[row] = 0.0
        self.context[row] = 0
        self.active[row] = False
        heapq.heappush(self._free_rows, row)
        self.phase[row] = FREE
        self.stalled[row] = False
        self.request[row] = None
        self.cum_entries[row] = None
        self.prompt_visits[row] = None

    def _batch(self, decode: np.ndarray, chunks: dict[int, int]) -> Batch:
        context_decode = self.context[decode]
        tokens = self.routes[decode, context_decode]
        visits = self._slots_f64.take(tokens, axis=0)
        held = None
        if not self.shared_first_pass:
            held = self.held[decode]
        elif visits.shape[1] > self.num_layers:
            held = self.held_entries(decode)
        new_entries = float(np.add.reduce(self._entries_per_token.take(tokens)))
        if chunks:
            rows, sizes = np.array(list(chunks)), np.array(list(chunks.values()))
            parts = [self._chunk(r, n) for r, n in chunks.items()]
            whole = [
                known
                for r, n in chunks.items()
                if (known := self.prompt_visits[r]) is not None
                and n == self.prompt[r]
                and not self.context[r]
            ]
            if len(whole) == len(chunks):  # whole prompts in one chunk each: their visits are known
                chunk_visits = np.array(whole, dtype=np.float64)
            else:
                chunk_visits = self._chunk_visits(
                    parts[0] if len(parts) == 1 else np.concatenate(parts), sizes
                )
            entries = self._entries(chunk_visits, sizes)
            new_entries += float(np.add.reduce(entries, axis=None))
            context, target = self.context, self.target
            completing = [r for r, n in chunks.items() if context[r] + n == target[r]]
            prefill_tokens = sum(chunks.values())
        else:
            rows, sizes, parts = _EMPTY_ROWS, _EMPTY_ROWS, []
            chunk_visits = entries = np.zeros((0, visits.shape[1]))
            completing, prefill_tokens = [], 0
        return Batch(
            decode,
            tokens,
            visits,
            context_decode,
            held,
            rows,
            sizes,
            parts,
            chunk_visits,
            entries,
            new_entries,
            int(decode.size) + len(completing),
            prefill_tokens,
            completing,
        )

    def _chunk_visits(self, tokens: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Slot visits summed per chunk, from the book's cumulative counts.

        A request's tokens are runs of consecutive book tokens (whole trace sequences), so each run
        costs one difference of cumulative counts instead of a sum over its tokens.
        """
        n = tokens.size
        run_start = np.empty(n, dtype=bool)
        run_start[0] = True
        np.not_equal(tokens[1:], tokens[:-1] + 1, out=run_start[1:])
        single = sizes.size == 1
        if not single:
            offsets = np.cumsum(sizes) - sizes  # each chunk's first token
            run_start[offsets] = True
        starts = run_start.nonzero()[0]
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:] - 1
        ends[-1] = n - 1
        runs = self._book_cum.take(tokens[ends] + 1, axis=0)
        runs -= self._book_cum.take(tokens[starts], axis=0)
        if single:
            return np.add.reduce(runs, axis=0, keepdims=True)
        return np.add.reduceat(runs, np.searchsorted(starts, offsets), axis=0)  # every chunk starts a run

    def _entries(self, visits: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """KV entries the rows add per slot: their visits, or under copy/compute every first-pass layer."""
        if not self.shared_first_pass:
            return visits
        entries = visits.copy()
        entries[:, : self.num_layers] = counts[:, None]
        return entries

    # -- runs of identical decode iterations -----------------------------------------------------
    def run_length(self, batch: Batch) -> int:
        """Iterations from `batch` on (itself included) that the scheduler would plan as the same
        decode-only batch, up to and including the first that completes a request: 0 when `batch`
        prefills or a row waits for a static batch. KV capacity and arrivals are checked by the
        caller (`decode_run`, and the engine)."""
        if (
            batch.prefill_rows.size
            or self.preempted
            or self.stalled.any()
            or (self.phase == PREFILLING).any()
        ):
            return 0  # (after a preemption the victim, first in the queue, might fit at the next plan)
        rows = batch.decode_rows
        if not rows.size:
            return 0
        return int((self.end_context[rows] - batch.decode_context).min())  # the last completes one

    def admits_on_arrival(self, batch: Batch) -> bool:
        """Whether a request arriving while `batch`'s run goes on could be admitted at a later plan
        (a request already waiting cannot: KV entries only grow during the run, and rows and the
        token budget stay as they are)."""
        return (
            self.cfg.policy == "continuous"
            and not self.waiting
            and bool(self._free_rows)
            and self.cfg.max_tokens_per_iteration - int(batch.decode_rows.size) > 0
        )

    def decode_run(self, batch: Batch, steps: int) -> DecodeRun:
        """The first `steps` iterations of `batch`'s run, cut where the KV cache would overflow (that
        iteration preempts: it is planned as usual)."""
        rows, context = batch.decode_rows, batch.decode_context
        offsets = np.arange(steps)
        ctx = context[None, :] + offsets[:, None]  # (k, D)
        tokens = self.routes[rows[None, :], ctx]
        added = np.add.reduce(self._entries_per_token.take(tokens), axis=1).astype(np.float64)
        k = steps  # entries are integer counts: every sum below is exact
        if self.entries_used + float(np.add.reduce(added)) > self.capacity_entries:
            fits = self.entries_used + np.cumsum(added) <= self.capacity_entries
            k = int(np.argmin(fits))
            tokens, ctx, added = tokens[:k], ctx[:k], added[:k]
        visits = self._slots_f64.take(tokens, axis=0)  # (k, D, W)
        held = None
        if batch.decode_held is not None:
            before = np.cumsum(visits, axis=0) - visits  # visits of the earlier steps of the run
            held = batch.decode_held[None] + before
            if self.shared_first_pass:
                held[:, :, : self.num_layers] = ctx[:, :, None]
        return DecodeRun(rows, tokens, visits, ctx, held, added)

    def finish_run(self, run: DecodeRun, starts: np.ndarray, ends: np.ndarray) -> None:
        """Book a run's iterations, planned at `starts` and done at `ends`, as `finish` books each."""
        rows, layers = run.rows, self.num_layers
        self.entries_used += float(run.new_entries.sum())  # exact: integer counts
        if not self.shared_first_pass:
            self.held[rows] += run.visits.sum(axis=0)  # exact: counts
        elif run.visits.shape[2] > layers:
            self.held[rows, layers:] += run.visits[:, :, layers:].sum(axis=0)
        self.context[rows] = run.context[-1] + 1
        count = int(rows.size)
        gaps = np.empty(len(starts) + 1)
        np.subtract(ends, starts, out=gaps[1:])  # each iteration's gap, as `finish` computes it
        np.add.at(self.itl_histogram, np.searchsorted(ITL_BINS, gaps[1:], side="left"), count)
        gaps[1:] *= count
        gaps[0] = self.itl_sum
        self.itl_sum = float(np.add.accumulate(gaps)[-1])  # in order, as `finish` adds
        self.itl_count += count * len(starts)
        self._planned_at = float(starts[-1])
        # only the last iteration of a run can complete requests (`run_length`)
        done = rows[self.context[rows] >= self.end_context[rows]]
        if done.size:
            now = float(ends[-1])
            for row in done.tolist():
                self._complete(row, now)

    def prefill_run_length(self, batch: Batch) -> int:
        """Iterations from `batch` on (itself included) that the scheduler would plan as the same
        decode rows and a chunk of the same prompt, up to the one that completes the prompt: 0
        unless `batch` is continuous batching's plan of one prefilling row whose chunk takes the
        whole token budget (so that nothing else is admitted), and no decoding row completes in
        them. KV capacity, and arrivals that the completing chunk's spare budget could admit, are
        checked by the caller (`prefill_run`, and the engine)."""
        if (
            self.cfg.policy != "continuous"
            or not self.cfg.chunked_prefill
            or self.preempted
            or batch.prefill_rows.size != 1
        ):
            return 0
        row, rows = int(batch.prefill_rows[0]), batch.decode_rows
        budget = self.cfg.max_tokens_per_iteration - int(rows.size)
        if int(batch.prefill_new[0]) != budget or np.count_nonzero(self.phase == PREFILLING) != 1:
            return 0
        steps = -(-int(self.target[row] - self.context[row]) // budget)  # chunks left of the prompt
        if rows.size:  # the decoding rows go on until one would complete
            steps = min(steps, int((self.end_context[rows] - batch.decode_context).min()) - 1)
        return steps

    def prefill_run(self, batch: Batch, steps: int) -> PrefillRun:
        """The first `steps` iterations of `batch`'s prefill run (`prefill_run_length`), cut where the
        KV cache would overflow (that iteration preempts: it is planned as usual)."""
        decode = self.decode_run(batch, steps)
        k, row = decode.steps, int(batch.prefill_rows[0])
        budget = self.cfg.max_tokens_per_iteration - int(batch.decode_rows.size)
        start, left = int(self.context[row]), int(self.target[row] - self.context[row])
        sizes = np.minimum(left - budget * np.arange(k), budget)
        visits = self._chunk_visits(self.routes[row, start : start + int(sizes.sum())], sizes)
        entries = self._entries(visits, sizes)
        added = decode.new_entries + np.add.reduce(entries, axis=1)  # exact: integer counts
        if self.entries_used + float(np.add.reduce(added)) > self.capacity_entries:
            k = int(np.argmin(self.entries_used + np.cumsum(added) <= self.capacity_entries))
            decode, sizes, visits, entries, added = (
                decode.first(k),
                sizes[:k],
                visits[:k],
                entries[:k],
                added[:k],
            )
        held = np.empty_like(entries)
        held[0] = self.held_entries(batch.prefill_rows)[0]
        np.cumsum(entries[:-1], axis=0, out=held[1:])  # what the earlier chunks of the run add
        held[1:] += held[0]
        completes = int(sizes.sum()) == left
        return PrefillRun(decode, row, sizes, visits, entries, held, added, completes)

    def finish_prefill_run(self, run: PrefillRun, starts: np.ndarray, ends: np.ndarray) -> None:
        """Book a prefill run's iterations, planned at `starts` and done at `ends`, as `finish` books each."""
        self.finish_run(run.decode, starts, ends)  # no decoding row completes in it
        row = run.row
        self.entries_used += float(np.add.reduce(run.entries, axis=None))
        self.held[row] += np.add.reduce(run.entries, axis=0)
        self.context[row] += int(run.sizes.sum())
        if run.completes:
            now = float(ends[-1])
            self._first_token(row, now)
            if self.context[row] >= self.end_context[row]:
                self._complete(row, now)

    def admits_after_prefill(self, run: PrefillRun) -> bool:
        """Whether the spare budget of the run's last, completing chunk could admit a request
        waiting by then (a row is free)."""
        budget = self.cfg.max_tokens_per_iteration - int(run.decode.rows.size)
        return run.completes and int(run.sizes[-1]) < budget and bool(self._free_rows)

    # -- completion ----------------------------------------------------------------------------
    def finish(self, batch: Batch, now: float) -> None:
        """Book the iteration: KV entries written, tokens emitted, requests completed."""
        self.entries_used += batch.new_entries
        decode, layers = batch.decode_rows, self.num_layers
        if not self.shared_first_pass:
            assert batch.decode_held is not None
            self.held[decode] = batch.decode_held + batch.decode_visits
        elif batch.decode_visits.shape[1] > layers:
            self.held[decode, layers:] += batch.decode_visits[:, layers:]
        context = batch.decode_context + 1
        self.context[decode] = context
        if decode.size:  # every decoding row emitted at the plan: its gap is this iteration
            stalled = self.stalled[decode]
            if stalled.any():  # rows that waited for a static batch's prompts: gaps since their token
                for row in decode[stalled].tolist():
                    self._book_gaps(now - float(self.last_token_at[row]), 1)
                self.stalled[decode] = False
            self._book_gaps(now - self._planned_at, int(decode.size - stalled.sum()))
        done = decode[context >= self.end_context[decode]]
        rows = batch.prefill_rows
        finished = done.tolist()
        if rows.size == 1:  # the common case: one prompt joins (first-pass columns unused under copy/compute)
            row = int(rows[0])
            self.held[row] += batch.prefill_entries[0]
            self.context[row] += int(batch.prefill_new[0])
        elif rows.size:
            self.held[rows] += batch.prefill_entries
            self.context[rows] += batch.prefill_new
        for row in batch.completing:
            self._first_token(row, now)
            if self.context[row] >= self.end_context[row]:
                finished.append(row)
        for row in finished:
            self._complete(row, now)

    def _complete(self, row: int, now: float) -> None:
        """Row's request has generated its last token at `now`: book it and free the row."""
        request = self.request[row]
        assert request is not None
        self.done.append(Finished(request, float(self.first_token_at[row]), now, int(self.preemptions[row])))
        self._free(row)

    def _first_token(self, row: int, now: float) -> None:
        """A row whose prefill completed emits a token: its first, or after a recompute the next one."""
        if self.generated[row] > 0:
            self._book_gaps(now - float(self.last_token_at[row]), 1)
        else:
            self.first_token_at[row] = now
        self.last_token_at[row] = now
        self.phase[row] = DECODING

    def _book_gaps(self, gap: float, count: int) -> None:
        """`count` inter-token gaps of `gap` seconds into the histogram and the sums."""
        self.itl_histogram[bisect.bisect_left(_ITL_EDGES, gap)] += count  # = np.searchsorted(ITL_BINS)
        self.itl_sum += gap * count
        self.itl_count += count


_EMPTY_ROWS = np.zeros(0, dtype=np.int64)
