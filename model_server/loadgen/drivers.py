"""Closed- and open-loop drivers over any async call (asyncio, one process; the client's own CPU is measured).

Closed loop: `concurrency` callers each send their next request as soon as the previous one returns.
Open loop: requests start at given arrival times whatever the server does.

One set of rules for both benchmarks (`bertmesh bench` and `python -m bench`):

- **Warm-up, then a window.** Each run sends the same load for `warmup_s` before its `measure_s` window, and
  nothing sent or answered during the warm-up counts. A run starts from an empty queue and idle threads; without
  a warm-up (as the capacity report had) its first requests meet no queue, which flatters open-loop latency,
  and a closed loop's ramp-up is averaged into its throughput.
- **What counts.** Closed loop: requests that complete inside the window, latency from their send.
  Open loop: requests whose scheduled arrival falls inside the window, latency from that scheduled arrival, so a
  server that falls behind is charged for the queueing it causes (no coordinated omission). Throughput is what
  counted divided by the window, in both.
- **Timeout.** Load stops at the window's end; requests still running `timeout_s` (30 s) later are cancelled
  and counted as failures of kind `timeout`. A server that cannot keep up shows as timeouts and huge
  latencies, never as a run that hangs (the capacity report waited forever) or a quietly lower rate.
- **Failures.** Any exception a call raises counts as a failure of its type's name (a closed-loop caller
  pauses 10 ms after one, so an error storm does not spin the client). Callers decide what a kind means:
  the capacity report reads `Overloaded` as shed and refuses any other.
"""

from __future__ import annotations

import asyncio
import itertools
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

    seconds: float
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


class _ClientCpu:
    """The client's CPU seconds from the window's start (its first send inside it) to the run's end."""

    def __init__(self) -> None:
        self._start: float | None = None

    def mark(self) -> None:
        if self._start is None:
            self._start = time.process_time()

    def seconds(self) -> float:
        now = time.process_time()
        return now - (self._start if self._start is not None else now)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _drain(tasks: list[asyncio.Task[None]], end: float, timeout_s: float, window: Window[T]) -> None:
    """Waits for the run's tasks until `timeout_s` after the window's `end`; cancels and counts the late ones."""
    if not tasks:
        return
    wait_s = end + timeout_s - asyncio.get_running_loop().time()
    done, late = await asyncio.wait(tasks, timeout=max(wait_s, 0.0))
    for task in late:
        task.cancel()
    if late:
        await asyncio.gather(*late, return_exceptions=True)
        window.fail(TIMEOUT, f"{len(late)} requests still running {timeout_s:.0f} s after the window", len(late))
    for task in done:
        task.result()  # a bug in the driver itself must not pass silently


async def closed_loop(
    call: Call[T],
    requests: Sequence[T],
    concurrency: int,
    warmup_s: float,
    measure_s: float,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Window[T]:
    """Runs `concurrency` callers over `requests` (cycled) for warmup_s + measure_s; counts the last measure_s."""
    loop = asyncio.get_running_loop()
    source = itertools.cycle(requests)
    start = loop.time()
    begin, end = start + warmup_s, start + warmup_s + measure_s
    window: Window[T] = Window(measure_s)
    cpu = _ClientCpu()

    async def caller() -> None:
        while (sent := loop.time()) < end:
            if sent >= begin:
                cpu.mark()
            request = next(source)
            try:
                await call(request)
            except Exception as exc:
                if begin <= loop.time() <= end:
                    window.fail(type(exc).__name__, _describe(exc))
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            done = loop.time()
            if begin <= done <= end:
                window.record(request, done - sent)

    callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await _drain(callers, end, timeout_s, window)
    window.client_cpu_s = cpu.seconds()
    return window


async def open_loop(
    call: Call[T],
    requests: Sequence[T],
    arrivals: Sequence[float],
    warmup_s: float,
    measure_s: float,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Window[T]:
    """Starts request i (cycled) at arrivals[i] seconds; counts those that arrive inside the last measure_s."""
    loop = asyncio.get_running_loop()
    source = itertools.cycle(requests)
    start = loop.time()
    begin, end = start + warmup_s, start + warmup_s + measure_s
    window: Window[T] = Window(measure_s)
    cpu = _ClientCpu()

    async def one(request: T, scheduled: float) -> None:
        counted = begin <= scheduled < end
        try:
            await call(request)
        except Exception as exc:
            if counted:
                window.fail(type(exc).__name__, _describe(exc))
            return
        if counted:
            window.record(request, loop.time() - scheduled)

    tasks: list[asyncio.Task[None]] = []
    for offset in arrivals:
        scheduled = start + offset
        if scheduled >= end:
            break
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if scheduled >= begin:
            cpu.mark()
        tasks.append(asyncio.create_task(one(next(source), scheduled)))
    await _drain(tasks, end, timeout_s, window)
    window.client_cpu_s = cpu.seconds()
    return window
