"""Coalescer: calls waiting together run as one, each gets its own results or its own error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
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


async def _hold_first(coalescer: Coalescer[str, str, str], recorder: Recorder) -> asyncio.Task[list[str]]:
    """Starts a call whose run blocks the only worker until the gate opens."""
    first = asyncio.ensure_future(coalescer("k", ["first"]))
    assert await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait, 10)
    return first


async def test_calls_waiting_together_run_once_and_each_gets_its_slice() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as executor:
        coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=100)
        first = await _hold_first(coalescer, recorder)
        waiting = [asyncio.ensure_future(coalescer("k", [f"a{i}", f"b{i}"])) for i in range(4)]
        await asyncio.sleep(0.01)
        recorder.gate.set()
        assert await first == ["k:FIRST"]
        assert await asyncio.gather(*waiting) == [[f"k:A{i}", f"k:B{i}"] for i in range(4)]
    # One run for the first call, one for the four that waited behind it.
    assert recorder.runs == [("k", ["first"]), ("k", [x for i in range(4) for x in (f"a{i}", f"b{i}")])]


async def test_a_run_holds_at_most_max_items_and_a_bigger_call_runs_alone() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as executor:
        coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=4)
        first = await _hold_first(coalescer, recorder)
        sizes = (2, 2, 1, 6, 1)
        calls = [
            asyncio.ensure_future(coalescer("k", [f"{n}-{i}" for i in range(size)])) for n, size in enumerate(sizes)
        ]
        await asyncio.sleep(0.01)
        recorder.gate.set()
        await first
        answers = await asyncio.gather(*calls)
    assert answers == [[f"k:{n}-{i}" for i in range(size)] for n, size in enumerate(sizes)]
    # Oldest first: 2+2 fill a run, 1 cannot join the 6 (over 4), the 6 runs alone, then the last 1.
    assert [len(items) for _, items in recorder.runs] == [1, 4, 1, 6, 1]


async def test_keys_are_never_mixed() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as executor:
        coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=100)
        first = await _hold_first(coalescer, recorder)
        calls = [asyncio.ensure_future(coalescer(key, [item])) for key, item in (("x", "1"), ("y", "2"), ("x", "3"))]
        await asyncio.sleep(0.01)
        recorder.gate.set()
        await first
        assert await asyncio.gather(*calls) == [["x:1"], ["y:2"], ["x:3"]]
    assert sorted(recorder.runs[1:]) == [("x", ["1", "3"]), ("y", ["2"])]


async def test_an_error_reaches_only_the_call_it_belongs_to() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as executor:
        coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=100)
        first = await _hold_first(coalescer, recorder)
        good = asyncio.ensure_future(coalescer("k", ["ok"]))
        bad = asyncio.ensure_future(coalescer("k", ["bad"]))
        also_good = asyncio.ensure_future(coalescer("k", ["fine"]))
        await asyncio.sleep(0.01)
        recorder.gate.set()
        await first
        assert await good == ["k:OK"]
        assert await also_good == ["k:FINE"]
        with pytest.raises(ValueError, match="cannot run k"):
            await bad


async def test_a_cancelled_call_leaves_the_others_answered() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(1) as executor:
        coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=100)
        first = await _hold_first(coalescer, recorder)
        gone = asyncio.ensure_future(coalescer("k", ["gone"]))
        kept = asyncio.ensure_future(coalescer("k", ["kept"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        recorder.gate.set()
        await first
        assert await kept == ["k:KEPT"]
        assert gone.cancelled()


async def test_after_the_executor_shuts_down_calls_are_refused_not_left_waiting() -> None:
    recorder = Recorder()
    recorder.gate.set()
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    coalescer: Coalescer[str, str, str] = Coalescer(recorder, executor, workers=1, max_items=100)
    with pytest.raises(NotReady, match="shutting down"):
        await asyncio.wait_for(coalescer("k", ["late"]), 5)
