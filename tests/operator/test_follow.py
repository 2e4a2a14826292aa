"""The per-ModelDeployment follower: a watch's wake reconciles at once, many wakes make one reconcile, and a
quiet object waits for the resync."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import pytest

from bertmesh_operator.handlers import Runtime, follow_children
from bertmesh_operator.observe import Child
from bertmesh_operator.readiness import PodView
from bertmesh_operator.reconcile import ObjectMemory, Outcome, Reconciler

OWNER = ("ml", "minilm")
BODY: Any = {"metadata": {"namespace": "ml", "name": "minilm", "uid": "u1", "resourceVersion": "1"}}


class CountingReconciler(Reconciler):
    """Counts reconciles; the first blocks until released, so wakes can pile up while it runs."""

    def __init__(self) -> None:
        self.calls = 0
        self.pods_seen: list[list[PodView]] = []
        self.release = threading.Event()

    def reconcile(
        self, body: Mapping[str, Any], children: Iterable[Child], memory: ObjectMemory, pods: Iterable[PodView] = ()
    ) -> Outcome:
        self.calls += 1
        self.pods_seen.append(list(pods))
        self.release.wait(timeout=30)
        return Outcome()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


async def until(predicate: Any) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_wakes_reconcile_at_once_and_coalesce(executor: ThreadPoolExecutor) -> None:
    reconciler = CountingReconciler()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=3600)
    follower = asyncio.create_task(follow_children(runtime, kopf.Body(BODY), kopf.Memo()))
    try:
        await until(lambda: OWNER in runtime.wakeups)
        assert reconciler.calls == 0  # nothing reported yet, and the resync is an hour away
        runtime.pods.put(OWNER, "p1", PodView(name="minilm-stable-1", uid="p1", track="stable", phase="Pending"))
        runtime.wake(OWNER)
        await until(lambda: reconciler.calls == 1)
        assert [p.name for p in reconciler.pods_seen[0]] == ["minilm-stable-1"]  # the pods go to the reconcile
        for _ in range(5):  # reported while the first reconcile runs: one more reconcile, not five
            runtime.wake(OWNER)
        reconciler.release.set()
        await until(lambda: reconciler.calls == 2)
        await asyncio.sleep(0.05)
        assert reconciler.calls == 2
        runtime.wake(("ml", "someone-else"))
        await asyncio.sleep(0.05)
        assert reconciler.calls == 2
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert OWNER not in runtime.wakeups


async def test_a_quiet_object_is_re_checked_at_the_resync(executor: ThreadPoolExecutor) -> None:
    reconciler = CountingReconciler()
    reconciler.release.set()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=0.05)
    follower = asyncio.create_task(follow_children(runtime, kopf.Body(BODY), kopf.Memo()))
    try:
        await until(lambda: reconciler.calls >= 2)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
