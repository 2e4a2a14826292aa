"""Closed- and open-loop drivers over any async call (asyncio, one process; the client's own CPU is measured).

Closed loop: `concurrency` callers each send their next request as soon as the previous one returns.
Open loop: requests start at given arrival times whatever the server does.

One set of rules for both benchmarks (`bertmesh bench` and `python -m bench`):

- **Warm-up, then a window.** Each run sends the same load for `warmup_s` before its measurement window, and
  nothing answered during the warm-up counts. A run starts from an empty queue and idle threads; without a
  warm-up (as the capacity report had) its first requests meet no queue, which flatters open-loop latency,
  and a closed loop's ramp-up is averaged into its throughput.
- **Open loop: by arrival.** The window is the `measure_s` after the warm-up. Requests whose scheduled arrival
  falls inside it count, latency from that scheduled arrival, so a server that falls behind is charged for the
  queueing it causes (no coordinated omission); throughput is what counted over `measure_s`.
- **Closed loop: whole round trips.** The window opens at an answer to caller 0 once the warm-up is over and
  every caller has had an answer (a full pipeline), and closes at caller 0's first answer `measure_s` or more
  later; the answers inside it count, latency from their send; throughput is what counted over the window's
  actual length. Between two answers to one caller every other caller is answered about as many times, so
  the count is whole round trips of the loop. A batching server answers in waves, and at high concurrency a
  wave can take longer than a short window: a window of fixed clock length then counts a whole wave or none
  (the capacity report's 1 s budget-sweep windows read 1-12 req/s for a 13 req/s model).
- **Timeout.** Load stops when the window closes; requests still running `timeout_s` (30 s) later are cancelled
  and counted as failures of kind `timeout`; a window that no answer opens or closes is bounded by the clock
  `timeout_s` late. A server that cannot keep up shows as timeouts and huge latencies, never as a run that
  hangs (the capacity report waited forever) or a quietly lower rate.
- **Failures.** Any exception a call raises counts as a failure of its type's name (a closed-loop caller
  pauses 10 ms after one, so an error storm does not spin the client). Callers decide what a kind means:
  the capacity report reads `Overloaded` as shed and refuses any other.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Call = Callable[[T], Awaitable[object]]  # sends one request; its answer is not looked at

DEFAULT_TIMEOUT_S = 30.0
TIMEOUT = "timeout"  # the failure kind of requests cancelled at the timeout
ERROR_PAUSE_S = 0.01


@dataclass
class Window(Generic[T]):
    """What one run counted in its measurement window."""

    seconds: float  # the window's length
    latencies_s: list[float] = field(default_factory=list)
    requests: list[T] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # exception type name (or TIMEOUT) -> count
    first_error: str = ""
    client_cpu_s: float = 0.0

    @property
    def errors(self) -> int:
        """Requests that failed or timed out."""
        return sum(self.failures.values())

    def record(self, request: T, latency: float) -> None:
        """One request answered inside the window."""
        self.latencies_s.append(latency)
        self.requests.append(request)

    def fail(self, kind: str, detail: str, count: int = 1) -> None:
        """`count` requests failed with `kind`; the first failure's detail is kept."""
        self.failures[kind] = self.failures.get(kind, 0) + count
        if not self.first_error:
            self.first_error = detail[:500]


class _Run(Generic[T]):
    """One run's clock, request source and window, and the client's CPU from its first send inside the window."""

    def __init__(self, requests: Sequence[T], warmup_s: float, measure_s: float, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.source = itertools.cycle(requests)
        self.start = self.loop.time()
        self.earliest = self.start + warmup_s
        self.measure_s = measure_s
        self.timeout_s = timeout_s
        self.window: Window[T] = Window(measure_s)
        self.begin, self.end = math.inf, math.inf
        self.closed = asyncio.Event()
        self._cpu_start: float | None = None

    def open_at(self, begin: float) -> None:
        """The window starts at `begin` (loop time)."""
        self.begin = begin

    def close_at(self, end: float) -> None:
        """The window ends at `end` (loop time): load stops."""
        self.end = end
        self.window.seconds = end - self.begin
        self.closed.set()

    def sending(self, moment: float) -> T:
        """The next request, sent at `moment`; the first send inside the window starts the client's CPU clock."""
        if self._cpu_start is None and moment >= self.begin:
            self._cpu_start = time.process_time()
        return next(self.source)

    def fail(self, exc: Exception) -> None:
        """One counted request raised `exc`."""
        self.window.fail(type(exc).__name__, f"{type(exc).__name__}: {exc}")

    async def finish(self, tasks: list[asyncio.Task[None]]) -> Window[T]:
        """Waits for `tasks` until timeout_s after the window; cancels and counts the late ones as timeouts."""
        await self.closed.wait()
        if tasks:
            wait_s = self.end + self.timeout_s - self.loop.time()
            done, late = await asyncio.wait(tasks, timeout=max(wait_s, 0.0))
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                detail = f"{len(late)} requests still running {self.timeout_s:.0f} s after the window"
                self.window.fail(TIMEOUT, detail, len(late))
            for task in done:
                task.result()  # a bug in the driver itself must not pass silently
        now = time.process_time()
        self.window.client_cpu_s = now - (self._cpu_start if self._cpu_start is not None else now)
        return self.window


class _RoundTrips:
    """A closed loop's window: from one of caller 0's answers to a later one (see the rules above)."""

    def __init__(self, run: _Run[T], callers: int) -> None:
        self._run = run
        self._waiting = callers  # callers yet to have their first answer
        self._armed = False
        self._timer = run.loop.call_at(run.earliest + run.timeout_s, self._open_by_clock)

    def answer(self, caller: int, done: float, first: bool) -> bool:
        """`caller` was answered at `done` (its first answer if `first`); whether the answer counts."""
        run = self._run
        self._waiting -= first
        if run.begin == math.inf:
            self._armed = self._armed or (self._waiting == 0 and done >= run.earliest)
            if self._armed and caller == 0:
                self._open(done)
            return False
        if run.closed.is_set() or done <= run.begin:
            return False
        if caller == 0 and done >= run.begin + run.measure_s:
            self._timer.cancel()
            run.close_at(done)
        return True

    def _open(self, begin: float) -> None:
        run = self._run
        self._timer.cancel()
        run.open_at(begin)
        self._timer = run.loop.call_at(begin + run.measure_s + run.timeout_s, self._close_by_clock)

    def _open_by_clock(self) -> None:
        self._open(self._run.loop.time())

    def _close_by_clock(self) -> None:
        self._run.close_at(self._run.loop.time())


async def closed_loop(
    call: Call[T],
    requests: Sequence[T],
    concurrency: int,
    warmup_s: float,
    measure_s: float,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Window[T]:
    """Runs `concurrency` callers over `requests` (cycled): a warm-up, then a window of measure_s or a bit more."""
    run: _Run[T] = _Run(requests, warmup_s, measure_s, timeout_s)
    bounds = _RoundTrips(run, concurrency)
    loop = run.loop

    async def caller(index: int) -> None:
        first = True
        while not run.closed.is_set():
            sent = loop.time()
            request = run.sending(sent)
            try:
                await call(request)
            except Exception as exc:
                if bounds.answer(index, loop.time(), first):
                    run.fail(exc)
                await asyncio.sleep(ERROR_PAUSE_S)
            else:
                done = loop.time()
                if bounds.answer(index, done, first):
                    run.window.record(request, done - sent)
            first = False

    return await run.finish([asyncio.create_task(caller(i)) for i in range(concurrency)])


async def open_loop(
    call: Call[T],
    requests: Sequence[T],
    arrivals: Sequence[float],
    warmup_s: float,
    measure_s: float,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Window[T]:
    """Starts request i (cycled) at arrivals[i] seconds; counts those that arrive inside the last measure_s."""
    run: _Run[T] = _Run(requests, warmup_s, measure_s, timeout_s)
    run.open_at(run.earliest)
    end = run.earliest + measure_s
    loop = run.loop

    async def one(request: T, scheduled: float) -> None:
        counted = run.begin <= scheduled < end
        try:
            await call(request)
        except Exception as exc:
            if counted:
                run.fail(exc)
            return
        if counted:
            run.window.record(request, loop.time() - scheduled)

    tasks: list[asyncio.Task[None]] = []
    for offset in arrivals:
        scheduled = run.start + offset
        if scheduled >= end:
            break
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(run.sending(scheduled), scheduled)))
    run.close_at(end)
    run.window.seconds = measure_s  # exactly, not end - begin in floating point
    return await run.finish(tasks)
