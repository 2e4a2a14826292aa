"""Closed- and open-loop drivers over any async call (asyncio; one process; the client's own CPU is measured).

Closed loop: `concurrency` workers each send the next request as soon as their previous one returns.
Open loop: requests start at Poisson arrival times whatever the server does; latency runs from the scheduled
arrival, so a server that falls behind is charged for the queueing it causes (no coordinated omission).
Both count only requests that complete inside the measurement window, after a warm-up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bench.corpus import Request

Call = Callable[[Request], Awaitable[None]]


@dataclass
class Window:
    """What completed inside one measurement window."""

    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    client_cpu_s: float = 0.0

    def record(self, request: Request, latency: float) -> None:
        """One request answered inside the window."""
        self.latencies_s.append(latency)
        self.requests.append(request)

    def fail(self, exc: BaseException) -> None:
        """One request failed inside the window."""
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"[:500]


async def closed_loop(
    call: Call, requests: Sequence[Request], concurrency: int, warmup_s: float, measure_s: float
) -> Window:
    """Runs `concurrency` workers for warmup_s + measure_s; counts what completes in the last measure_s."""
    loop = asyncio.get_running_loop()
    source = itertools.cycle(requests)
    start = loop.time()
    begin, end = start + warmup_s, start + warmup_s + measure_s
    window = Window(measure_s)
    cpu_marks: dict[str, float] = {}

    async def worker() -> None:
        while True:
            now = loop.time()
            if now >= end:
                return
            if now >= begin and "start" not in cpu_marks:
                cpu_marks["start"] = time.process_time()
            request = next(source)
            sent = loop.time()
            try:
                await call(request)
            except Exception as exc:
                done = loop.time()
                if begin <= done <= end:
                    window.fail(exc)
                await asyncio.sleep(0.01)  # an error storm must not spin the client
                continue
            done = loop.time()
            if begin <= done <= end:
                window.record(request, done - sent)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    window.client_cpu_s = time.process_time() - cpu_marks.get("start", time.process_time())
    return window


async def open_loop(
    call: Call,
    requests: Sequence[Request],
    arrivals: Sequence[float],
    warmup_s: float,
    measure_s: float,
    timeout_s: float = 30.0,
) -> Window:
    """Starts request i at arrivals[i] seconds; counts requests that arrive and complete inside the window.

    Requests still running timeout_s after the last arrival are counted as errors (a server that cannot keep
    up is visible as errors and as huge latencies, never as a quietly lower offered rate).
    """
    loop = asyncio.get_running_loop()
    source = itertools.cycle(requests)
    start = loop.time()
    begin, end = start + warmup_s, start + warmup_s + measure_s
    window = Window(measure_s)
    tasks: list[asyncio.Task[None]] = []
    cpu_start = 0.0

    async def one(request: Request, scheduled: float) -> None:
        try:
            await call(request)
        except Exception as exc:
            if begin <= scheduled < end:
                window.fail(exc)
            return
        if begin <= scheduled < end:
            window.record(request, loop.time() - scheduled)

    for offset in arrivals:
        scheduled = start + offset
        if scheduled >= end:
            break
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if not cpu_start and scheduled >= begin:
            cpu_start = time.process_time()
        tasks.append(asyncio.create_task(one(next(source), scheduled)))
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
            window.errors += 1
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            window.first_error = window.first_error or f"{len(late)} requests still running {timeout_s:.0f}s late"
    window.client_cpu_s = time.process_time() - (cpu_start or time.process_time())
    return window
