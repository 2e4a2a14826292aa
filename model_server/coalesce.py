"""Calls that wait together run together: one worker-thread call for the items of every waiting call with the
same key (no torch).

Tokenising request by request costs the event loop one executor hop and one wake-up per request; under load
many requests wait at once, and one `encode_batch` over all their texts costs the loop one hop for the lot and
hands the tokenizer bigger batches (`python -m bench feed`, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from model_server.errors import NotReady

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")  # an item
R = TypeVar("R")  # a result


@dataclass(slots=True)
class _Call(Generic[K, T, R]):
    key: K
    items: Sequence[T]
    future: asyncio.Future[list[R]]


class Coalescer(Generic[K, T, R]):
    """Runs `run(key, items)` on an executor for the items of the calls waiting with one key, oldest first, up to
    `max_items` items per run (a bigger call runs alone) and at most `workers` runs at a time; each call gets its
    own slice of the results, in order. Bounding a run bounds how long its first call waits for its last.

    When a run over several calls raises, each of them is run alone, so an error reaches only the call it
    belongs to. A call cancelled while waiting is still computed with its group, and its result dropped.
    """

    def __init__(
        self, run: Callable[[K, Sequence[T]], list[R]], executor: Executor, workers: int, max_items: int
    ) -> None:
        self._run = run
        self._executor = executor
        self._workers = workers
        self._max_items = max_items
        self._lock = threading.Lock()
        self._waiting: list[_Call[K, T, R]] = []
        self._active = 0  # workers draining the waiting calls; read and written on the event loop only

    async def __call__(self, key: K, items: Sequence[T]) -> list[R]:
        """The results of `run(key, items)`, computed together with the calls waiting beside this one."""
        loop = asyncio.get_running_loop()
        call: _Call[K, T, R] = _Call(key, items, loop.create_future())
        with self._lock:
            self._waiting.append(call)
        self._start(loop)
        return await call.future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._active >= self._workers or not self._waiting:
            return
        self._active += 1
        try:
            self._executor.submit(self._drain, loop)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._active -= 1
            with self._lock:
                calls, self._waiting = self._waiting, []
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(NotReady("server is shutting down; retry on another replica"))

    def _take(self) -> list[_Call[K, T, R]]:
        """The oldest waiting calls up to max_items items (at least one call), removed from the waiting list."""
        with self._lock:
            count = total = 0
            for call in self._waiting:
                if count and total + len(call.items) > self._max_items:
                    break
                count += 1
                total += len(call.items)
            taken, self._waiting = self._waiting[:count], self._waiting[count:]
        return taken

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a worker thread: runs the waiting calls, up to max_items items per run (each key's group once),
        waking the loop once per run, until none is waiting."""
        try:
            while calls := self._take():
                outcomes: list[tuple[_Call[K, T, R], list[R] | BaseException]] = []
                try:
                    groups: dict[K, list[_Call[K, T, R]]] = {}
                    for call in calls:
                        groups.setdefault(call.key, []).append(call)
                    for key, group in groups.items():
                        outcomes.extend(self._run_group(key, group))
                except BaseException as exc:  # never leave a caller waiting
                    outcomes = [(call, exc) for call in calls]
                loop.call_soon_threadsafe(self._deliver, outcomes)
        finally:
            loop.call_soon_threadsafe(self._finished, loop)

    def _run_group(self, key: K, group: list[_Call[K, T, R]]) -> list[tuple[_Call[K, T, R], list[R] | BaseException]]:
        if len(group) > 1:
            try:
                results = self._run(key, [item for call in group for item in call.items])
            except Exception:  # each call is run alone below, and gets its own error
                pass
            else:
                out: list[tuple[_Call[K, T, R], list[R] | BaseException]] = []
                start = 0
                for call in group:
                    out.append((call, results[start : start + len(call.items)]))
                    start += len(call.items)
                return out
        alone: list[tuple[_Call[K, T, R], list[R] | BaseException]] = []
        for call in group:
            try:
                alone.append((call, self._run(key, call.items)))
            except Exception as exc:  # delivered to its caller on the event loop
                alone.append((call, exc))
        return alone

    def _deliver(self, outcomes: list[tuple[_Call[K, T, R], list[R] | BaseException]]) -> None:
        """On the event loop: resolves each call's future."""
        for call, outcome in outcomes:
            if call.future.done():  # cancelled while its group ran
                continue
            if isinstance(outcome, BaseException):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)

    def _finished(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the event loop: a worker found nothing waiting; calls that arrived since get a new run."""
        self._active -= 1
        self._start(loop)
