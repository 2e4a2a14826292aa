"""Coalescer: calls waiting together run as one, each gets its own results or its own error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from model_server.coalesce import Coalescer
from model_server.errors import NotReady


class Recorder:
    """A run function that upper-cases items, records each run, and can hold the first run until released."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, list[str]]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, key: str, items: Sequence[str]) -> list[str]:
        self.started.set()
        self.gate.wait(10)
        self.runs.append((key, list(items)))
        if "bad" in items:
            raise ValueError(f"cannot run {key}")
        return [f"{key}:{item.upper()}" for item in items]


Calls = Sequence[tuple[str, list[str]]]


async def behind_a_busy_worker(
    calls: Calls, *, max_items: int = 100, meanwhile: Callable[[list[asyncio.Task[list[str]]]], object] | None = None
) -> tuple[list[asyncio.Task[list[str]]], Recorder]:
    """Holds the only worker with a first call, queues `calls` (key, items) behind it, runs `meanwhile` on their
    futures, releases the worker; returns the futures, all done, and the recorder."""
    recorder = Recorder()
    with ThreadPoolExecutor(1) as executor:
        coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=max_items)
        first = asyncio.ensure_future(coalescer("k", ["first"]))
        assert await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait, 10)
        futures = [asyncio.ensure_future(coalescer(key, items)) for key, items in calls]
        await asyncio.sleep(0.01)
        if meanwhile is not None:
            meanwhile(futures)
        recorder.gate.set()
        assert await first == ["k:FIRST"]
        await asyncio.wait(futures, timeout=10)
    assert all(f.done() for f in futures)
    return futures, recorder


async def test_calls_waiting_together_run_once_and_each_gets_its_slice() -> None:
    futures, recorder = await behind_a_busy_worker([("k", [f"a{i}", f"b{i}"]) for i in range(4)])
    assert [f.result() for f in futures] == [[f"k:A{i}", f"k:B{i}"] for i in range(4)]
    # One run for the first call, one for the four that waited behind it.
    assert recorder.runs == [("k", ["first"]), ("k", [x for i in range(4) for x in (f"a{i}", f"b{i}")])]


async def test_a_run_holds_at_most_max_items_and_a_bigger_call_runs_alone() -> None:
    sizes = (2, 2, 1, 6, 1)
    calls = [("k", [f"{n}-{i}" for i in range(size)]) for n, size in enumerate(sizes)]
    futures, recorder = await behind_a_busy_worker(calls, max_items=4)
    assert [f.result() for f in futures] == [[f"k:{n}-{i}" for i in range(size)] for n, size in enumerate(sizes)]
    # Oldest first: 2+2 fill a run, 1 cannot join the 6 (over 4), the 6 runs alone, then the last 1.
    assert [len(items) for _, items in recorder.runs] == [1, 4, 1, 6, 1]


async def test_keys_are_never_mixed() -> None:
    futures, recorder = await behind_a_busy_worker([("x", ["1"]), ("y", ["2"]), ("x", ["3"])])
    assert [f.result() for f in futures] == [["x:1"], ["y:2"], ["x:3"]]
    assert sorted(recorder.runs[1:]) == [("x", ["1", "3"]), ("y", ["2"])]


async def test_an_error_reaches_only_the_call_it_belongs_to() -> None:
    futures, _ = await behind_a_busy_worker([("k", ["ok"]), ("k", ["bad"]), ("k", ["fine"])])
    good, bad, also_good = futures
    assert good.result() == ["k:OK"]
    assert also_good.result() == ["k:FINE"]
    with pytest.raises(ValueError, match="cannot run k"):
        bad.result()


async def test_a_cancelled_call_leaves_the_others_answered() -> None:
    futures, _ = await behind_a_busy_worker([("k", ["gone"]), ("k", ["kept"])], meanwhile=lambda f: f[0].cancel())
    gone, kept = futures
    assert gone.cancelled()
    assert kept.result() == ["k:KEPT"]


async def test_after_the_executor_shuts_down_calls_are_refused_not_left_waiting() -> None:
    recorder = Recorder()
    recorder.gate.set()
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=100)
    with pytest.raises(NotReady, match="shutting down"):
        await asyncio.wait_for(coalescer("k", ["late"]), 5)
