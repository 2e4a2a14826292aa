"""Token-budget batching on token counts only (no torch): the queue between requests and the model.

Inputs of many requests wait in one queue. Whenever the model is free, the next batch is formed by one of two
cost models. A padding backend pays for inputs x longest: the batch is the oldest waiting input plus the inputs
nearest to it in length, while that padded size fits the token budget, the input count fits the cap, and
padding stays a small share of the work. A packed backend pays for real tokens only: the batch is the waiting
inputs in arrival order while their tokens fit the budget and their count fits the cap. While less than a batch
is waiting, formation waits at most `max_delay_s` (from the oldest input's arrival) for company. Up to
`concurrency` batches run at once (for a backend that prepares the next batch while one computes); one by
default. Admission is bounded by queued tokens: over the bound a request is refused whole with Overloaded
(RESOURCE_EXHAUSTED) before anything is queued.
Inputs whose deadline passed are failed with DeadlineExceeded and never computed; cancelled inputs are dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from model_server.errors import BackendFailure, DeadlineExceeded, NotReady, Overloaded

P = TypeVar("P")
R = TypeVar("R")
log = logging.getLogger(__name__)

# Padding is tolerated while it stays under this share of a batch's real tokens...
PAD_TOLERANCE = 0.25
# ...or while the whole batch is this small: tiny batches cost their fixed overhead, not their padding.
SMALL_BATCH_TOKENS = 256


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Bounds of batch formation and admission."""

    max_batch_tokens: int
    max_batch_requests: int
    max_delay_s: float
    max_queued_tokens: int


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one executed batch held, for metrics."""

    inputs: int
    tokens: int
    padded_tokens: int
    seconds: float
    queue_seconds: tuple[float, ...] = ()  # each input's wait from submission to its batch's start


def select_packed(costs: Sequence[int], max_tokens: int, max_items: int) -> list[int]:
    """Indices into `costs` (arrival order) of the next batch for a backend that computes real tokens only."""
    chosen: list[int] = []
    total = 0
    for i, cost in enumerate(costs):
        if len(chosen) == max_items:
            break
        if chosen and total + cost > max_tokens:
            continue  # a later, shorter input may still fit
        chosen.append(i)
        total += cost
    return chosen


def select_batch(costs: Sequence[int], max_tokens: int, max_items: int) -> list[int]:
    """Indices into `costs` (arrival order, index 0 the oldest) of the next batch, sorted by length.

    Starts from the oldest input and grows greedily by the neighbour in length order that adds the least
    padding, while the batch fits `max_tokens` padded tokens and `max_items` inputs and its padding stays
    within PAD_TOLERANCE of its real tokens (or the batch is under SMALL_BATCH_TOKENS).
    """
    if not costs:
        return []
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    pos = order.index(0)
    lo = hi = pos
    real, longest = costs[0], costs[0]
    while hi - lo + 1 < max_items:
        options = []
        if lo > 0:
            c = costs[order[lo - 1]]
            options.append((longest - c, -1, c))
        if hi + 1 < len(order):
            c = costs[order[hi + 1]]
            options.append(((c - longest) * (hi - lo + 1), 1, c))
        if not options:
            break
        _, side, c = min(options)
        new_longest = max(longest, c)
        padded = new_longest * (hi - lo + 2)
        new_real = real + c
        if padded > max_tokens or (padded > SMALL_BATCH_TOKENS and padded > new_real * (1 + PAD_TOLERANCE)):
            break
        if side < 0:
            lo -= 1
        else:
            hi += 1
        real, longest = new_real, new_longest
    return order[lo : hi + 1]


def selection(padded: bool) -> Callable[[Sequence[int], int, int], list[int]]:
    """The batch selection for a backend that pads to the longest input (select_batch) or packs (select_packed)."""
    return select_batch if padded else select_packed


@dataclass(eq=False, slots=True)
class _Request(Generic[P, R]):
    """One submitted request: one future for all its inputs' results (not one per input: each future, its
    callbacks and a gather over them cost the event loop microseconds per input)."""

    future: asyncio.Future[list[R]]
    results: list[R | None]
    remaining: int  # inputs not computed yet
    inputs: list[_Pending[P, R]] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Pending(Generic[P, R]):
    cost: int
    payload: P
    deadline: float | None
    request: _Request[P, R]
    index: int  # in the request
    enqueued: float
    queued: bool = field(default=True)


class TokenBudgetBatcher(Generic[P, R]):
    """Queues inputs (a token count and a payload each) and runs them in token-budget batches, `concurrency` at
    a time."""

    def __init__(
        self,
        run_batch: Callable[[list[P]], Awaitable[list[R]]],
        limits: BatchLimits,
        *,
        padded: bool = True,
        concurrency: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_expired: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_batch = run_batch
        self.limits = limits
        self._padded = padded
        self._select = selection(padded)
        self._on_batch = on_batch
        self._on_expired = on_expired
        self._clock = clock
        self._queue: list[_Pending[P, R]] = []
        self._queued_tokens = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._concurrency = concurrency
        self._running: set[asyncio.Task[None]] = set()  # batches being computed

    @property
    def queued_tokens(self) -> int:
        """Tokens of the inputs waiting (admitted, not yet in a batch)."""
        return self._queued_tokens

    @property
    def queued_inputs(self) -> int:
        """Inputs waiting (admitted, not yet in a batch)."""
        return sum(1 for p in self._queue if p.queued)

    def start(self) -> None:
        """Starts the batch loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        """Refuses new inputs, computes every admitted one, then stops the loop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task

    def submit(self, items: Sequence[tuple[int, P]], deadline: float | None) -> asyncio.Future[list[R]]:
        """Admits a request's inputs (cost, payload) all or none; returns one future of their results, in order.
        It fails with the first input that fails (DeadlineExceeded, BackendFailure); cancelling it drops the
        inputs still queued.

        Raises Overloaded when the queue would exceed max_queued_tokens, NotReady while closing.
        """
        if self._closing:
            raise NotReady("server is shutting down; retry on another replica")
        total = sum(cost for cost, _ in items)
        if self._queued_tokens + total > self.limits.max_queued_tokens:
            raise Overloaded(
                f"server overloaded: {self._queued_tokens} tokens queued + {total} requested exceed "
                f"max_queued_tokens={self.limits.max_queued_tokens}; retry with backoff"
            )
        now = self._clock()
        request: _Request[P, R] = _Request(asyncio.get_running_loop().create_future(), [None] * len(items), len(items))
        if not items:
            request.future.set_result([])
            return request.future
        request.inputs = [_Pending(cost, payload, deadline, request, i, now) for i, (cost, payload) in enumerate(items)]
        request.future.add_done_callback(functools.partial(self._on_request_done, request))
        self._queue.extend(request.inputs)
        self._queued_tokens += total
        self._arrived.set()
        return request.future

    async def submit_when_room(self, items: Sequence[tuple[int, P]], deadline: float | None) -> asyncio.Future[list[R]]:
        """Like submit, but waits for queue room instead of refusing (back-pressure for streams)."""
        while True:
            try:
                return self.submit(items, deadline)
            except Overloaded:
                self._room.clear()
                timeout = None if deadline is None else deadline - self._clock()
                if timeout is not None and timeout <= 0:
                    raise DeadlineExceeded("deadline passed while waiting for queue room") from None
                try:
                    await asyncio.wait_for(self._room.wait(), timeout)
                except TimeoutError:
                    raise DeadlineExceeded("deadline passed while waiting for queue room") from None

    def _on_request_done(self, request: _Request[P, R], _future: asyncio.Future[list[R]]) -> None:
        if request.remaining:  # ended before all its inputs were computed: failed or cancelled
            for pending in request.inputs:
                if pending.queued:
                    self._release(pending)

    def _release(self, pending: _Pending[P, R]) -> None:
        pending.queued = False
        self._queued_tokens -= pending.cost
        self._room.set()

    def _expire(self, now: float) -> None:
        expired = 0
        for p in self._queue:
            if p.queued and p.deadline is not None and p.deadline <= now:
                self._release(p)
                if not p.request.future.done():
                    p.request.future.set_exception(DeadlineExceeded("deadline passed while queued; not computed"))
                expired += 1
        if expired and self._on_expired is not None:
            self._on_expired(expired)

    def _take(self) -> list[_Pending[P, R]]:
        self._queue = [p for p in self._queue if p.queued]
        if not self._queue:
            return []
        chosen = self._select(
            [p.cost for p in self._queue], self.limits.max_batch_tokens, self.limits.max_batch_requests
        )
        batch = [self._queue[i] for i in chosen]
        for p in batch:
            self._release(p)
        return batch

    async def _wait_for_company(self) -> bool:
        """With less than a batch queued, waits up to max_delay (from the oldest's arrival) for more; True when it
        waited."""
        if self._closing or self.limits.max_delay_s <= 0:
            return False
        if self._queued_tokens >= self.limits.max_batch_tokens:
            return False
        oldest = min(p.enqueued for p in self._queue if p.queued)
        remaining = oldest + self.limits.max_delay_s - self._clock()
        if remaining <= 0:
            return False
        self._arrived.clear()
        # A timer that sets the event, not wait_for: no task and no cancellation per wait on the hot path.
        timer = asyncio.get_running_loop().call_later(remaining, self._arrived.set)
        try:
            await self._arrived.wait()
        finally:
            timer.cancel()
        return True

    async def _loop(self) -> None:
        while True:
            if len(self._running) >= self._concurrency:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            if self._queued_tokens == 0 and not any(p.queued for p in self._queue):
                self._queue.clear()
                if self._closing:
                    if self._running:
                        await asyncio.wait(self._running)
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if await self._wait_for_company():
                continue
            self._expire(self._clock())
            batch = self._take()
            if batch:
                running = asyncio.get_running_loop().create_task(self._execute(batch), name="batch")
                self._running.add(running)
                running.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending[P, R]]) -> None:
        # Requests that ended between selection and now (cancelled, or failed by another input): never compute for a
        # caller who left.
        batch = [p for p in batch if not p.request.future.done()]
        if not batch:
            return
        started = self._clock()
        try:
            results = await self._run_batch([p.payload for p in batch])
        except Exception as exc:  # a model fault fails this batch's callers, never the loop
            log.exception("batch of %d inputs failed", len(batch))
            for p in batch:
                if not p.request.future.done():
                    p.request.future.set_exception(BackendFailure(f"model failed on a batch: {type(exc).__name__}"))
            return
        for p, result in zip(batch, results, strict=True):
            request = p.request
            if request.future.done():
                continue
            request.results[p.index] = result
            request.remaining -= 1
            if not request.remaining:
                request.future.set_result(request.results)  # type: ignore[arg-type]  # every slot filled
        if self._on_batch is not None:
            real = sum(p.cost for p in batch)
            computed = max(p.cost for p in batch) * len(batch) if self._padded else real
            waits = tuple(started - p.enqueued for p in batch)
            self._on_batch(BatchStats(len(batch), real, computed, self._clock() - started, waits))
