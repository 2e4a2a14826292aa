"""model_server.loadgen: percentiles, arrival schedules, and the closed/open-loop rules both benchmarks share.

Fake async calls stand in for a server; assertions are on what gets counted, never on how fast anything ran.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from model_server.loadgen.drivers import TIMEOUT, closed_loop, open_loop
from model_server.loadgen.schedules import poisson_arrivals
from model_server.loadgen.stats import median, percentile


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_poisson_arrivals_are_seeded_and_near_the_rate() -> None:
    a = poisson_arrivals(50.0, 20.0, seed=1)
    assert a == poisson_arrivals(50.0, 20.0, seed=1)
    assert a != poisson_arrivals(50.0, 20.0, seed=2)
    assert all(0 <= x < 20 for x in a)
    assert a == sorted(a)
    assert 800 < len(a) < 1200
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 1.0, seed=1)


async def test_closed_loop_does_not_count_the_warm_up() -> None:
    sent: list[int] = []

    async def call(request: int) -> None:
        sent.append(request)
        await asyncio.sleep(0.01)

    window = await closed_loop(call, [1, 2, 3], concurrency=2, warmup_s=0.5, measure_s=0.1)
    # five sixths of the run is warm-up: were it counted, nearly every request sent would be
    assert 0 < len(window.latencies_s) < len(sent) / 2
    assert window.seconds >= 0.1 and window.errors == 0
    assert set(window.requests) <= {1, 2, 3}


async def test_closed_loop_opens_its_window_only_once_every_caller_has_had_an_answer() -> None:
    server = asyncio.Lock()  # one request at a time: four callers each wait for the other three

    async def call(request: int) -> None:
        async with server:
            await asyncio.sleep(0.05)

    window = await closed_loop(call, [1], concurrency=4, warmup_s=0.0, measure_s=0.3)
    # a window opened at once would count the ramp: answers after 0.05 and 0.10 s, before the queue is full
    assert window.latencies_s and min(window.latencies_s) >= 0.2 - 1e-3


async def test_closed_loop_window_spans_whole_waves_of_a_batching_server() -> None:
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[None]] = []
    ticks: list[float] = []

    async def batch(request: int) -> None:
        pending.append(answer := loop.create_future())
        await answer

    async def batcher() -> None:  # answers everything queued every 0.2 s, in arrival order: waves of four
        while True:
            await asyncio.sleep(0.2)
            ticks.append(loop.time())
            for answer in pending:
                answer.set_result(None)
            pending.clear()

    server = asyncio.create_task(batcher())
    window = await closed_loop(batch, [1], concurrency=4, warmup_s=0.0, measure_s=0.3)
    server.cancel()
    wave_rate = 4 * (len(ticks) - 1) / (ticks[-1] - ticks[0])
    # a 0.3 s clock window would count one wave or two: 13 or 27 req/s for a 20 req/s server
    assert len(window.requests) % 4 == 0
    assert len(window.requests) / window.seconds == pytest.approx(wave_rate, rel=0.05)


async def test_closed_loop_counts_failures_by_kind_and_keeps_sending() -> None:
    async def call(request: int) -> None:
        await asyncio.sleep(0)
        if request % 2:
            raise ValueError(f"odd request {request}")

    window = await closed_loop(call, [1, 2], concurrency=1, warmup_s=0.0, measure_s=0.2)
    assert window.failures["ValueError"] > 0 and window.latencies_s
    assert window.errors == window.failures["ValueError"]
    assert window.first_error == "ValueError: odd request 1"
    assert set(window.requests) == {2}


async def test_closed_loop_cancels_and_counts_requests_past_the_timeout() -> None:
    cancelled: list[int] = []

    async def hangs(request: int) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(request)
            raise

    window = await closed_loop(hangs, [7], concurrency=3, warmup_s=0.0, measure_s=0.05, timeout_s=0.05)
    assert window.failures == {TIMEOUT: 3} and not window.latencies_s
    assert cancelled == [7, 7, 7]
    assert "still running" in window.first_error


async def test_open_loop_counts_what_arrives_inside_the_window_and_sends_nothing_after_it() -> None:
    sent: list[str] = []

    async def call(request: str) -> None:
        sent.append(request)

    arrivals = [0.0, 0.05, 0.1, 0.3, 0.35, 0.7]
    window = await open_loop(call, ["a", "b", "c", "d", "e", "f"], arrivals, warmup_s=0.2, measure_s=0.3)
    assert sent == ["a", "b", "c", "d", "e"]  # the arrival after the window's end is never sent
    assert window.requests == ["d", "e"]  # the warm-up's three are sent but not counted
    assert window.seconds == 0.3


async def test_open_loop_latency_runs_from_the_scheduled_arrival() -> None:
    server = asyncio.Lock()  # one request at a time: a burst queues

    async def call(request: int) -> None:
        async with server:
            await asyncio.sleep(0.05)

    window = await open_loop(call, [1], [0.0, 0.0, 0.0, 0.0], warmup_s=0.0, measure_s=1.0)
    latencies = sorted(window.latencies_s)
    # the fourth request waited for three others: it is charged for their time too
    assert [x >= 0.05 * (i + 1) - 1e-3 for i, x in enumerate(latencies)] == [True] * 4


async def test_open_loop_cancels_and_counts_requests_past_the_timeout() -> None:
    async def hangs(request: int) -> None:
        await asyncio.Event().wait()

    window = await open_loop(hangs, [1], [0.0, 0.01], warmup_s=0.0, measure_s=0.05, timeout_s=0.05)
    assert window.failures == {TIMEOUT: 2} and window.errors == 2
