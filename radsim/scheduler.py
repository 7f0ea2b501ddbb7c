"""Iteration-level scheduling of one replica: batching, chunked prefill, KV admission, preemption.

`continuous` batching (as vLLM and TGI do) re-forms the batch every iteration: every running request
that has its prompt in the KV cache decodes one token, prompts still being prefilled take chunks of
the remaining token budget (`chunked_prefill`), and waiting requests are admitted, first come first
served, while a batch slot is free and the KV cache can hold their prompt. If the cache cannot take
an iteration's new entries, the most recently admitted request is preempted: its KV entries are
freed and it waits again at the head of the queue, to be recomputed (prompt plus generated tokens
prefilled again) when readmitted. `static` batching admits up to `max_batch` requests whose whole
KV cache fits, and runs them to completion before admitting more.

KV entries are counted per request and per (pass, layer) slot, from the routes: under the `none`
policy a token holds an entry where it visits; under `copy`/`compute` every first-pass layer holds
one for every token, plus the visits of later passes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from radsim.errors import ConfigError
from radsim.routes import RouteBook
from radsim.workload import Request

POLICIES = ("continuous", "static")
ITL_BINS = np.logspace(-7, 4, 2201)  # inter-token latency histogram edges, seconds


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching policy and its limits."""

    policy: str = "continuous"
    max_batch: int = 256
    max_tokens_per_iteration: int = 8192
    chunked_prefill: bool = True
    memory_fraction: float = 0.9  # share of device memory the engine may use (weights, KV, activations)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"batching policy '{self.policy}'; allowed: {', '.join(POLICIES)}")
        if self.max_batch < 1 or self.max_tokens_per_iteration < 1:
            raise ConfigError("--max-batch and --max-tokens must be >= 1")
        if not 0 < self.memory_fraction <= 1:
            raise ConfigError("--memory-fraction must be in (0, 1]")


class RequestState:
    """Progress of one request."""

    __slots__ = (
        "request",
        "tokens",
        "target",
        "prefilled",
        "generated",
        "row",
        "first_token_at",
        "last_token_at",
        "done_at",
        "preemptions",
        "admitted_at",
    )

    def __init__(self, request: Request, tokens: np.ndarray) -> None:
        self.request, self.tokens = request, tokens
        self.target = request.prompt_tokens  # positions whose KV must exist before the next token
        self.prefilled = 0
        self.generated = 0
        self.row = -1
        self.first_token_at: float | None = None
        self.last_token_at = 0.0
        self.done_at: float | None = None
        self.preemptions = 0
        self.admitted_at: float | None = None


@dataclass
class Batch:
    """What one iteration processes: per running row, its new tokens and their routes."""

    rows: np.ndarray  # (R,) scheduler rows
    new_tokens: np.ndarray  # (R,) tokens each row brings
    tokens: np.ndarray  # (T,) route-book token index of every new token
    token_rows: np.ndarray  # (T,) position in `rows` of each new token
    slot_visits: np.ndarray  # (R, W) visits per (pass, layer) slot
    prefill_tokens: int
    decode_tokens: int
    logit_rows: int  # tokens whose logits are sampled (decodes and completed prefills)
    states: list[RequestState]

    def visit_slots(self, book: RouteBook, visit_rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Slot (pass x layers + layer) of each (token row, step) visit."""
        layer = book.steps[self.tokens[visit_rows], steps].astype(np.int64)
        prev = np.where(steps > 0, book.steps[self.tokens[visit_rows], np.maximum(steps - 1, 0)], -1)
        new_pass = (steps > 0) & (layer <= prev)
        # passes are counted along each token's route: cumulative new passes per token row
        order = np.lexsort((steps, visit_rows))
        passes = np.zeros_like(steps)
        cum = np.cumsum(new_pass[order])
        start = np.r_[True, visit_rows[order][1:] != visit_rows[order][:-1]]
        base = np.maximum.accumulate(np.where(start, cum - new_pass[order], 0))
        passes[order] = cum - base
        return passes * book.num_layers + layer


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
        self.cfg, self.book = cfg, book
        self.capacity_entries = kv_capacity_bytes / entry_bytes
        self.entry_bytes = entry_bytes
        w = book.slots.shape[1]
        self.held = np.zeros((cfg.max_batch, w))
        self.rows: list[RequestState | None] = [None] * cfg.max_batch
        self.waiting: deque[RequestState] = deque()
        self.done: list[RequestState] = []
        self.entries_used = 0.0
        self.arrived_count = 0
        self.itl_histogram = np.zeros(len(ITL_BINS) + 1, dtype=np.int64)
        self.itl_sum, self.itl_count = 0.0, 0
        first = np.arange(w) < book.num_layers
        entries = book.slots.astype(np.float64)
        if kv_policy != "none":
            entries[:, first] = 1.0  # every token holds a first-pass entry in every layer
        self.token_entries = entries  # (tokens, W) KV entries a token adds per slot

    # -- books ---------------------------------------------------------------------------------
    @property
    def in_system(self) -> int:
        """Requests waiting or running."""
        return len(self.waiting) + sum(r is not None for r in self.rows)

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    @property
    def completed_count(self) -> int:
        return len(self.done)

    @property
    def kv_bytes(self) -> float:
        """KV-cache bytes held now."""
        return self.entries_used * self.entry_bytes

    def arrive(self, request: Request, tokens: np.ndarray) -> None:
        """A request joins the queue with its token routes."""
        state = RequestState(request, tokens)
        need = self.token_entries[tokens[: request.prompt_tokens + request.output_tokens - 1]].sum()
        if need > self.capacity_entries:
            raise ConfigError(
                f"request {request.id} ({request.prompt_tokens}+{request.output_tokens} tokens) needs "
                f"{need * self.entry_bytes / 1e9:.2f} GB of KV cache; only {self.capacity_entries * self.entry_bytes / 1e9:.2f} GB fit"
            )
        self.waiting.append(state)
        self.arrived_count += 1

    # -- planning ------------------------------------------------------------------------------
    def next_batch(self, now: float) -> Batch | None:
        """The next iteration's work, or None when there is nothing to do."""
        plan: list[tuple[RequestState, int]] = []
        budget = self.cfg.max_tokens_per_iteration
        running = [s for s in self.rows if s is not None]
        if self.cfg.policy == "static" and not running:
            running = self._admit_static(now)
        for state in running:
            if state.prefilled == state.target and state.generated < state.request.output_tokens:
                plan.append((state, 1))
                budget -= 1
        for state in running:
            budget = self._plan_prefill(state, plan, budget)
        if self.cfg.policy == "continuous":
            budget = self._admit(now, plan, budget)
        plan = self._fit(plan)
        return self._batch(plan) if plan else None

    def _plan_prefill(self, state: RequestState, plan: list, budget: int) -> int:
        left = state.target - state.prefilled
        if left <= 0 or budget <= 0:
            return budget
        chunk = min(left, budget) if self.cfg.chunked_prefill else left
        if not self.cfg.chunked_prefill and left > budget and plan:
            return budget
        plan.append((state, chunk))
        return budget - chunk

    def _admit(self, now: float, plan: list, budget: int) -> int:
        while self.waiting and budget > 0 and None in self.rows:
            state = self.waiting[0]
            need = self.token_entries[state.tokens[: state.target]].sum()
            if self.entries_used + need > self.capacity_entries:
                break
            self.waiting.popleft()
            self._place(state, now)
            budget = self._plan_prefill(state, plan, budget)
        return budget

    def _admit_static(self, now: float) -> list[RequestState]:
        admitted, entries = [], self.entries_used
        while self.waiting and len(admitted) < self.cfg.max_batch:
            state = self.waiting[0]
            r = state.request
            need = self.token_entries[state.tokens[: r.prompt_tokens + r.output_tokens - 1]].sum()
            if entries + need > self.capacity_entries:
                break
            entries += need
            admitted.append(self.waiting.popleft())
            self._place(admitted[-1], now)
        return admitted

    def _place(self, state: RequestState, now: float) -> None:
        state.row = self.rows.index(None)
        self.rows[state.row] = state
        state.admitted_at = now if state.admitted_at is None else state.admitted_at

    def _fit(self, plan: list) -> list:
        """Preempt the most recently admitted requests until the iteration's new KV entries fit."""
        while plan:
            new = sum(self.token_entries[self._positions(s, n)].sum() for s, n in plan)
            if self.entries_used + new <= self.capacity_entries:
                return plan
            victim = max((s for s in self.rows if s is not None), key=lambda s: (s.admitted_at, s.request.id))
            plan = [(s, n) for s, n in plan if s is not victim]
            self._preempt(victim)
        return plan

    def _preempt(self, state: RequestState) -> None:
        self.entries_used -= self.held[state.row].sum()
        self.held[state.row] = 0.0
        self.rows[state.row] = None
        state.row, state.prefilled = -1, 0
        state.target = state.request.prompt_tokens + state.generated
        state.preemptions += 1
        self.waiting.appendleft(state)

    def _positions(self, state: RequestState, n: int) -> np.ndarray:
        """Route-book tokens processed: the next prefill chunk, or the last generated token."""
        if state.prefilled < state.target:
            return state.tokens[state.prefilled : state.prefilled + n]
        return state.tokens[
            state.request.prompt_tokens + state.generated - 1 : state.request.prompt_tokens + state.generated
        ]

    def _batch(self, plan: list) -> Batch:
        tokens = [self._positions(s, n) for s, n in plan]
        counts = np.array([len(t) for t in tokens])
        flat = np.concatenate(tokens)
        token_rows = np.repeat(np.arange(len(plan)), counts)
        slot_visits = np.zeros((len(plan), self.book.slots.shape[1]))
        np.add.at(slot_visits, token_rows, self.book.slots[flat])
        prefill = sum(n for s, n in plan if s.prefilled < s.target)
        completing = sum(1 for s, n in plan if s.prefilled < s.target and s.prefilled + n == s.target)
        decode = len(flat) - prefill
        return Batch(
            np.array([s.row for s, _ in plan]),
            counts,
            flat,
            token_rows,
            slot_visits,
            prefill,
            decode,
            decode + completing,
            [s for s, _ in plan],
        )

    # -- completion ----------------------------------------------------------------------------
    def finish(self, batch: Batch, now: float) -> None:
        """Book the iteration: KV entries written, tokens emitted, requests completed."""
        added = np.zeros_like(batch.slot_visits)
        np.add.at(added, batch.token_rows, self.token_entries[batch.tokens])
        self.held[batch.rows] += added
        self.entries_used += added.sum()
        for state, n in zip(batch.states, batch.new_tokens, strict=True):
            if state.prefilled < state.target:
                state.prefilled += int(n)
                if state.prefilled < state.target:
                    continue
            self._emit(state, now)

    def _emit(self, state: RequestState, now: float) -> None:
        if state.first_token_at is None:
            state.first_token_at = now
        elif state.generated > 0:
            gap = now - state.last_token_at
            self.itl_histogram[np.searchsorted(ITL_BINS, gap)] += 1
            self.itl_sum, self.itl_count = self.itl_sum + gap, self.itl_count + 1
        state.generated += 1
        state.last_token_at = now
        if state.generated >= state.request.output_tokens:
            state.done_at = now
            self.entries_used -= self.held[state.row].sum()
            self.held[state.row] = 0.0
            self.rows[state.row] = None
            state.row = -1
            self.done.append(state)
