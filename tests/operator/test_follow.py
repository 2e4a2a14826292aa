"""The per-ModelDeployment follower: started by the object's first watch event and reconciling at once; a
wake reconciles at once, many wakes make one reconcile, the operator's own status write wakes nothing, a quiet
object waits for the resync, a rollout in flight is re-checked every tick, and deletion ends it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import pytest

from bertmesh_operator import handlers
from bertmesh_operator.handlers import Runtime
from bertmesh_operator.observe import Child
from bertmesh_operator.readiness import PodView
from bertmesh_operator.reconcile import ObjectMemory, Outcome, Reconciler
from bertmesh_operator.states import Phase

OWNER = ("ml", "minilm")
BODY: Any = {"metadata": {"namespace": "ml", "name": "minilm", "uid": "u1", "resourceVersion": "1"}}


class CountingReconciler(Reconciler):
    """Counts reconciles; the first blocks until released, so wakes can pile up while it runs."""

    def __init__(self, outcome: Outcome | None = None) -> None:
        self.calls = 0
        self.pods_seen: list[list[PodView]] = []
        self.bodies: list[Mapping[str, Any]] = []
        self.release = threading.Event()
        self.outcome = outcome or Outcome()

    def reconcile(
        self, body: Mapping[str, Any], children: Iterable[Child], memory: ObjectMemory, pods: Iterable[PodView] = ()
    ) -> Outcome:
        self.calls += 1
        self.pods_seen.append(list(pods))
        self.bodies.append(body)
        self.release.wait(timeout=30)
        if self.outcome.status_written:  # as the real reconcile: its write's version is remembered
            memory.known_resource_version = "written"
        return self.outcome


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


def body(version: str = "1", uid: str = "u1") -> kopf.Body:
    raw: Any = {"metadata": {**BODY["metadata"], "resourceVersion": version, "uid": uid}}
    return kopf.Body(raw)


async def test_wakes_reconcile_at_once_and_coalesce(executor: ThreadPoolExecutor) -> None:
    reconciler = CountingReconciler()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=3600)
    runtime.observe(None, body())  # the first event (the start-up listing too) reconciles at once
    try:
        await until(lambda: reconciler.calls == 1)
        runtime.pods.put(OWNER, "p1", PodView(name="minilm-stable-1", uid="p1", track="stable", phase="Pending"))
        for _ in range(5):  # reported while the first reconcile runs: one more reconcile, not five
            runtime.wake(OWNER)
        reconciler.release.set()
        await until(lambda: reconciler.calls == 2)
        assert [p.name for p in reconciler.pods_seen[1]] == ["minilm-stable-1"]  # the pods go to the reconcile
        await asyncio.sleep(0.05)
        assert reconciler.calls == 2
        runtime.wake(("ml", "someone-else"))
        await asyncio.sleep(0.05)
        assert reconciler.calls == 2
        runtime.observe("MODIFIED", body("2"))  # an edit: reconciled, with the new body
        await until(lambda: reconciler.calls == 3)
        assert reconciler.bodies[-1]["metadata"]["resourceVersion"] == "2"
    finally:
        runtime.stop(OWNER)
    assert OWNER not in runtime.followed


async def test_the_operators_own_status_write_wakes_nothing(executor: ThreadPoolExecutor) -> None:
    reconciler = CountingReconciler(Outcome(status_written=True))
    reconciler.release.set()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=3600)
    runtime.observe(None, body())
    try:
        await until(lambda: reconciler.calls == 1)
        runtime.observe("MODIFIED", body("written"))  # the watch shows the write the reconcile made
        await asyncio.sleep(0.05)
        assert reconciler.calls == 1
        assert runtime.followed[OWNER].body["metadata"]["resourceVersion"] == "written"  # kept all the same
    finally:
        runtime.stop(OWNER)


async def test_deletion_ends_the_follower_and_a_namesake_gets_a_new_one(executor: ThreadPoolExecutor) -> None:
    reconciler = CountingReconciler()
    reconciler.release.set()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=3600)
    runtime.observe(None, body())
    await until(lambda: reconciler.calls == 1)
    first = runtime.followed[OWNER].task
    runtime.observe("DELETED", body("2"))
    assert OWNER not in runtime.followed
    await until(lambda: first is not None and first.done())
    runtime.observe("ADDED", body("3", uid="u2"))  # made again under the same name
    await until(lambda: reconciler.calls == 2)
    assert runtime.followed[OWNER].uid == "u2"
    runtime.observe("MODIFIED", body("4", uid="u3"))  # and again, its deletion unseen: the newest wins
    await until(lambda: reconciler.calls == 3)
    assert runtime.followed[OWNER].uid == "u3"
    runtime.stop(OWNER)


async def test_a_reconcile_that_finds_the_object_gone_ends_the_follower(executor: ThreadPoolExecutor) -> None:
    reconciler = CountingReconciler(Outcome(gone=True))
    reconciler.release.set()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=0.01)
    runtime.observe(None, body())
    await until(lambda: OWNER not in runtime.followed)
    await asyncio.sleep(0.05)
    assert reconciler.calls == 1


@pytest.mark.parametrize(("phase", "rechecked"), [(Phase.PROGRESSING, True), (Phase.STABLE, False)])
async def test_a_rollout_in_flight_is_re_checked_every_tick(
    executor: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, phase: Phase, rechecked: bool
) -> None:
    monkeypatch.setattr(handlers, "ROLLOUT_TICK_SECONDS", 0.03)
    reconciler = CountingReconciler(Outcome(phase=phase))
    reconciler.release.set()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=3600)
    runtime.observe(None, body())
    try:
        await asyncio.sleep(0.3)
        assert (reconciler.calls >= 3) is rechecked
        assert reconciler.calls >= 1
    finally:
        runtime.stop(OWNER)


async def test_a_quiet_object_is_re_checked_at_the_resync(executor: ThreadPoolExecutor) -> None:
    reconciler = CountingReconciler()
    reconciler.release.set()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=0.05)
    runtime.observe(None, body())
    try:
        await until(lambda: reconciler.calls >= 3)
    finally:
        runtime.stop(OWNER)


@pytest.mark.parametrize(("recheck", "rechecked"), [(0.03, True), (None, False)])
async def test_a_missing_autoscaler_kind_is_re_checked_at_the_discovery_interval_not_the_resync(
    executor: ThreadPoolExecutor, recheck: float | None, rechecked: bool
) -> None:
    reconciler = CountingReconciler(Outcome(phase=Phase.STABLE, recheck=recheck))
    reconciler.release.set()
    runtime = Runtime(reconciler=reconciler, executor=executor, resync_seconds=3600)
    runtime.observe(None, body())
    try:
        await asyncio.sleep(0.3)
        assert (reconciler.calls >= 3) is rechecked
    finally:
        runtime.stop(OWNER)
