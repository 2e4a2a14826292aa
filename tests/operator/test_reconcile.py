"""One reconcile, against an in-memory API (no cluster): what it applies, prunes and writes, and when not."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from bertmesh_operator.errors import MetricsUnavailableError
from bertmesh_operator.observe import Child
from bertmesh_operator.prometheus import CanaryMetrics
from bertmesh_operator.readiness import pod_view
from bertmesh_operator.reconcile import NEW_KIND_SETTLE_SECONDS, ObjectMemory, Reconciler
from bertmesh_operator.rollout import COMMAND_ANNOTATION, REINDEXED_ANNOTATION
from tests.operator.fakes import Clock, FakeCluster, FakeMetrics

MakeManifest = Callable[..., dict[str, Any]]
UID = "0b0e5c1e-0000-4000-8000-000000000001"
CANARY = {"model": {"storageUri": "pvc://models/v2"}, "steps": [20, 60], "interval": "10s", "threshold": 1}


@pytest.fixture
def stored(make_md: MakeManifest) -> dict[str, Any]:
    md = make_md()
    md["metadata"].update(uid=UID, generation=1, resourceVersion="1")
    return md


@pytest.fixture
def world(stored: dict[str, Any], t0: datetime) -> tuple[FakeCluster, FakeMetrics, Clock, Reconciler]:
    cluster, metrics, clock = FakeCluster(stored), FakeMetrics(), Clock(t0)
    return cluster, metrics, clock, Reconciler(cluster, metrics, clock=clock)


World = tuple[FakeCluster, FakeMetrics, Clock, Reconciler]


def run(world: World, memory: ObjectMemory) -> Any:
    cluster, _, _, reconciler = world
    return reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)


def test_a_new_model_deployment_gets_every_child_and_a_status(world: World) -> None:
    cluster, _, _, _ = world
    memory = ObjectMemory()
    outcome = run(world, memory)
    assert outcome.applied == 9 and outcome.pruned == 0 and outcome.status_written
    assert {kind for kind, _ in cluster.applied} >= {"Deployment", "Service", "VirtualService", "DestinationRule"}
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == UID for o in cluster.objects.values())
    status = cluster.md["status"]
    assert status["phase"] == "Stable" and status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded", "Autoscaling"}
    autoscaling = next(c for c in status["conditions"] if c["type"] == "Autoscaling")
    assert (autoscaling["status"], autoscaling["reason"]) == ("True", "Autoscaled")
    assert ("ScaledObject", "minilm-stable") in cluster.applied


def test_a_re_check_of_an_unchanged_model_deployment_makes_no_write(world: World) -> None:
    cluster, _, _, _ = world
    memory = ObjectMemory()
    run(world, memory)
    run(world, memory)  # the children are now seen (ready): the status says so
    writes, applied = cluster.status_writes, len(cluster.applied)
    outcome = run(world, memory)
    assert (outcome.applied, outcome.pruned, outcome.status_written) == (0, 0, False)
    assert (cluster.status_writes, len(cluster.applied), cluster.gets) == (writes, applied, 0)


def test_an_edited_or_deleted_child_is_applied_again_and_only_that(world: World) -> None:
    cluster, _, _, _ = world
    memory = ObjectMemory()
    run(world, memory)
    run(world, memory)
    cluster.objects[("VirtualService", "minilm")]["metadata"]["generation"] += 1  # someone edited its spec
    del cluster.objects[("Service", "minilm")]
    cluster.applied.clear()
    run(world, memory)
    assert sorted(cluster.applied) == [("Service", "minilm"), ("VirtualService", "minilm")]


def test_a_restarted_operator_applies_nothing_that_is_as_it_left_it_and_changes_nothing(world: World) -> None:
    cluster, _, _, _ = world
    run(world, ObjectMemory())
    before = copy.deepcopy(cluster.objects)
    cluster.applied.clear()
    outcome = run(world, ObjectMemory())  # a new process: nothing remembered, the applied digests trusted
    assert outcome.applied == 0
    assert cluster.objects == before


def test_a_canary_steps_on_good_metrics_then_promotes_and_prunes(world: World, t0: datetime) -> None:
    cluster, metrics, clock, _ = world
    memory = ObjectMemory()
    run(world, memory)
    cluster.edit_spec({**cluster.md["spec"], "traffic": {"canary": CANARY}})
    run(world, memory)  # canary created, weight 0
    assert ("Deployment", "minilm-canary") in cluster.objects
    run(world, memory)  # the canary is ready: step 1
    assert cluster.md["status"]["canary"]["weight"] == 20
    vs = cluster.objects[("VirtualService", "minilm")]
    assert [r["name"] for r in vs["spec"]["http"]] == ["canary-pin", "weighted", "canary-pin-http", "weighted-http"]
    clock.now = t0 + timedelta(seconds=10)
    run(world, memory)
    assert cluster.md["status"]["canary"]["weight"] == 60
    assert metrics.asked[-1].workload == "minilm-canary" and metrics.asked[-1].window == "10s"
    clock.now = t0 + timedelta(seconds=20)
    run(world, memory)
    assert cluster.md["status"]["phase"] == "Promoting"
    run(world, memory)  # the stable Deployment rolled out the candidate
    assert cluster.md["status"]["phase"] == "Stable"
    # The reconcile that found it rolled out no longer renders the canary, and pruned it.
    assert sorted(cluster.deleted) == [("Deployment", "minilm-canary"), ("ScaledObject", "minilm-canary")]
    assert cluster.md["status"]["stable"]["model"]["storageUri"] == "pvc://models/v2"


def test_bad_metrics_abort_the_canary_to_zero_replicas_and_100_percent_stable(world: World, t0: datetime) -> None:
    cluster, metrics, clock, _ = world
    memory = ObjectMemory()
    run(world, memory)
    cluster.edit_spec({**cluster.md["spec"], "traffic": {"canary": CANARY}})
    run(world, memory)
    run(world, memory)
    metrics.answer = CanaryMetrics(success_rate=0.5, p99_latency_ms=5.0)
    clock.now = t0 + timedelta(seconds=10)
    outcome = run(world, memory)
    assert cluster.md["status"]["phase"] == "Aborted"
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "CanaryAborted")]
    vs = cluster.objects[("VirtualService", "minilm")]
    assert [r["name"] for r in vs["spec"]["http"]] == ["weighted", "weighted-http"]
    assert [[d["weight"] for d in route["route"]] for route in vs["spec"]["http"]] == [[100], [100]]
    assert cluster.objects[("Deployment", "minilm-canary")]["spec"]["replicas"] == 0
    assert ("ScaledObject", "minilm-canary") in cluster.deleted
    degraded = next(c for c in cluster.md["status"]["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CanaryAborted")


def test_unreachable_prometheus_defers_the_check_and_asks_for_an_early_retry(world: World, t0: datetime) -> None:
    cluster, metrics, clock, _ = world
    memory = ObjectMemory()
    run(world, memory)
    cluster.edit_spec({**cluster.md["spec"], "traffic": {"canary": CANARY}})
    run(world, memory)
    run(world, memory)
    metrics.answer = MetricsUnavailableError("Prometheus at http://p:9090 is unreachable: refused")
    clock.now = t0 + timedelta(seconds=10)
    outcome = run(world, memory)
    assert outcome.retry is not None and "unreachable" in outcome.retry and outcome.retry_delay > 0
    status = cluster.md["status"]
    assert (status["phase"], status["canary"]["weight"], status["canary"]["failedChecks"]) == ("Progressing", 20, 0)
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "AnalysisDeferred"


def test_no_metrics_are_asked_for_before_a_check_is_due(world: World) -> None:
    cluster, metrics, _, _ = world
    memory = ObjectMemory()
    run(world, memory)
    cluster.edit_spec({**cluster.md["spec"], "traffic": {"canary": CANARY}})
    for _ in range(3):
        run(world, memory)
    assert metrics.asked == []


def test_an_abort_command_for_the_current_canary_aborts_it(world: World) -> None:
    cluster, _, _, _ = world
    memory = ObjectMemory()
    run(world, memory)
    cluster.edit_spec({**cluster.md["spec"], "traffic": {"canary": CANARY}})
    run(world, memory)
    revision = cluster.md["status"]["canary"]["revision"]
    cluster.md["metadata"]["annotations"] = {COMMAND_ANNOTATION: "abort:0000"}  # another rollout's: ignored
    run(world, memory)
    assert cluster.md["status"]["phase"] == "Progressing"
    cluster.md["metadata"]["annotations"] = {COMMAND_ANNOTATION: f"abort:{revision}"}
    run(world, memory)
    assert cluster.md["status"]["phase"] == "Aborted"
    assert "rollout abort command" in cluster.md["status"]["message"]


def test_an_invalid_spec_is_degraded_once_and_nothing_is_applied(world: World) -> None:
    cluster, _, _, _ = world
    memory = ObjectMemory()
    run(world, memory)
    applied = len(cluster.applied)
    spec = copy.deepcopy(cluster.md["spec"])
    spec["traffic"] = {"canary": {"runtime": {"maxBatchTokens": 300000}}}
    cluster.edit_spec(spec)
    outcome = run(world, memory)
    assert outcome.invalid is not None and "maxQueuedTokens" in outcome.invalid
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "InvalidSpec")]
    degraded = next(c for c in cluster.md["status"]["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["observedGeneration"]) == ("True", "InvalidSpec", 2)
    assert cluster.md["status"]["observedGeneration"] == 2
    writes = cluster.status_writes
    again = run(world, memory)
    assert again.invalid is not None and not again.status_written and again.events == ()
    assert (len(cluster.applied), cluster.status_writes) == (applied, writes)


def test_a_refused_object_is_degraded_and_the_rollout_does_not_advance(world: World) -> None:
    cluster, _, _, _ = world
    cluster.reject = "VirtualService"
    outcome = run(world, ObjectMemory())
    assert outcome.retry is not None and "forbidden" in outcome.retry
    assert outcome.retry_delay >= 30
    status = cluster.md["status"]
    assert "phase" not in status  # no rollout state written for objects that were not applied
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")


def test_a_body_older_than_our_own_status_write_is_read_afresh(world: World) -> None:
    cluster, _, _, reconciler = world
    memory = ObjectMemory()
    stale = copy.deepcopy(cluster.md)
    run(world, memory)
    assert cluster.gets == 0
    reconciler.reconcile(stale, cluster.children(), memory)  # the watch had not caught up yet
    assert cluster.gets == 1


def test_a_deleted_or_deleting_model_deployment_is_left_alone(world: World) -> None:
    cluster, _, _, reconciler = world
    body = copy.deepcopy(cluster.md)
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert reconciler.reconcile(body, [], ObjectMemory()).gone
    del body["metadata"]["deletionTimestamp"]
    cluster.md = {}  # gone from the API server; the handler's body is older than what this process wrote
    assert reconciler.reconcile(body, [], ObjectMemory(known_resource_version="999")).gone
    assert cluster.gets == 1
    assert cluster.applied == []


def test_every_child_is_applied_again_after_a_while_whatever_the_watch_says(world: World) -> None:
    cluster, metrics, clock, _ = world
    ticks = iter(range(0, 10_000, 100))
    reconciler = Reconciler(cluster, metrics, clock=clock, monotonic=lambda: float(next(ticks)), full_apply_seconds=250)
    memory = ObjectMemory()
    for _ in range(3):  # at 0, 100, 200 s: everything once, then nothing
        reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)
    assert len(cluster.applied) == 9
    reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)  # 300 s: a lost event is repaired
    assert len(cluster.applied) == 18


def test_a_child_already_gone_is_reported_so_the_registry_forgets_it(world: World) -> None:
    cluster, _, _, _ = world
    memory = ObjectMemory()
    run(world, memory)
    children = cluster.children()
    stale = next(c for c in children if c.kind == "Deployment")
    ghost = Child(
        api_version=stale.api_version,
        kind="Deployment",
        name="minilm-canary",
        uid="ghost-uid",
        version="rv:1",
        owner_uid=UID,
        track="canary",
    )
    outcome = cluster_reconcile(world, [*children, ghost], memory)
    assert outcome.vanished == ("ghost-uid",) and outcome.pruned == 0


def cluster_reconcile(world: World, children: list[Child], memory: ObjectMemory) -> Any:
    cluster, _, _, reconciler = world
    return reconciler.reconcile(copy.deepcopy(cluster.md), children, memory)


def test_a_reindex_rollout_measures_the_mirrored_canary_and_promotes_on_the_annotation(
    world: World, t0: datetime
) -> None:
    cluster, metrics, clock, _ = world
    memory = ObjectMemory()
    cluster.md["spec"]["model"]["task"] = "embedding"
    run(world, memory)
    reindex = {"model": {"storageUri": "pvc://models/v2"}, "interval": "10s"}
    cluster.edit_spec({**cluster.md["spec"], "traffic": {"canary": reindex}})
    run(world, memory)
    run(world, memory)  # the canary is ready: mirrored, no weight
    weighted = cluster.objects[("VirtualService", "minilm")]["spec"]["http"][-1]
    assert [d["weight"] for d in weighted["route"]] == [100, 0] and weighted["mirrorPercentage"] == {"value": 10.0}
    clock.now = t0 + timedelta(seconds=10)
    run(world, memory)
    # Mirrored calls reach the canary under the "-shadow" host: only its workload selects them.
    assert (metrics.asked[-1].workload, metrics.asked[-1].service) == ("minilm-canary", None)
    assert cluster.md["status"]["phase"] == "Progressing"
    space = cluster.md["status"]["canary"]["embeddingSpace"]
    cluster.md["metadata"]["annotations"] = {REINDEXED_ANNOTATION: space}
    clock.now = t0 + timedelta(seconds=20)
    run(world, memory)
    assert cluster.md["status"]["phase"] == "Promoting"
    weighted = cluster.objects[("VirtualService", "minilm")]["spec"]["http"][-1]
    assert [d["weight"] for d in weighted["route"]] == [0, 100] and "mirror" not in weighted


def _unready(cluster: FakeCluster) -> None:
    status = cluster.objects[("Deployment", "minilm-stable")]["status"]
    status.update(readyReplicas=0, availableReplicas=0)


def _ready_condition(cluster: FakeCluster) -> dict[str, Any]:
    return next(c for c in cluster.md["status"]["conditions"] if c["type"] == "Ready")


def test_ready_says_why_no_pod_is_ready_and_posts_it_once(world: World) -> None:
    cluster, _, _, reconciler = world
    memory = ObjectMemory()
    run(world, memory)
    _unready(cluster)
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    stuck = {
        "metadata": {
            "name": "minilm-stable-1",
            "uid": "p1",
            "labels": {"serving.bertmesh.io/model-deployment": "minilm", "serving.bertmesh.io/track": "stable"},
        },
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
        },
    }
    pods = [pod_view(stuck)]
    outcome = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory, pods)
    ready = _ready_condition(cluster)
    assert ready["status"] == "False" and ready["reason"] == "NoReadyReplicas"
    assert ready["message"].endswith(f"; pod minilm-stable-1: Unschedulable: {message}")
    assert [(e.type, e.reason, e.message) for e in outcome.events] == [
        ("Warning", "NoReadyReplicas", f"pod minilm-stable-1: Unschedulable: {message}")
    ]
    again = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory, pods)
    assert not again.status_written and again.events == ()
    # Without the pods' word, the condition falls back to the count alone.
    reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory, [])
    assert ";" not in _ready_condition(cluster)["message"]


def test_a_ready_track_carries_no_pod_reason(world: World) -> None:
    cluster, _, _, reconciler = world
    memory = ObjectMemory()
    run(world, memory)
    stuck = {
        "metadata": {"name": "minilm-stable-2", "uid": "p2", "labels": {"serving.bertmesh.io/track": "stable"}},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "message": "x"}]},
    }
    outcome = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory, [pod_view(stuck)])
    assert _ready_condition(cluster)["status"] == "True" and "Unschedulable" not in _ready_condition(cluster)["message"]
    assert outcome.events == ()


def test_a_restarted_operator_applies_only_the_children_someone_wrote_since(world: World) -> None:
    cluster, _, _, reconciler = world
    run(world, ObjectMemory())
    assert len(cluster.applied) == 9
    edited = cluster.objects[("Service", "minilm")]["metadata"]
    edited["managedFields"].append({"manager": "kubectl-edit", "operation": "Update", "time": "2026-01-01T00:00:05Z"})
    # Controllers writing status or scale are not edits.
    scaled = cluster.objects[("Deployment", "minilm-stable")]["metadata"]
    scaled["managedFields"].append(
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "subresource": "status",
            "time": "2026-01-02T00:00:00Z",
        }
    )
    restarted = ObjectMemory()  # a new process: nothing remembered
    outcome = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), restarted)
    assert outcome.applied == 1 and cluster.applied[9:] == [("Service", "minilm")]
    assert reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), restarted).applied == 0


def test_a_child_whose_render_changed_while_the_operator_was_down_is_applied(world: World) -> None:
    cluster, _, _, reconciler = world
    run(world, ObjectMemory())
    cluster.edit_spec({**cluster.md["spec"], "model": {**cluster.md["spec"]["model"], "revision": "v2"}})
    outcome = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), ObjectMemory())
    # The new revision goes out as a canary: its objects and the route change, the rest is as it was.
    assert sorted(cluster.applied[9:]) == [
        ("Deployment", "minilm-canary"),
        ("ScaledObject", "minilm-canary"),
        ("VirtualService", "minilm"),
    ]
    assert outcome.applied == 3


def _autoscaling_condition(cluster: FakeCluster) -> dict[str, Any]:
    return next(c for c in cluster.md["status"]["conditions"] if c["type"] == "Autoscaling")


def test_without_kedas_crd_no_scaled_object_is_applied_and_the_status_says_to_install_it(
    world: World, t0: datetime
) -> None:
    cluster, metrics, clock, _ = world
    cluster.unserved = {"scaledobjects"}
    now = [0.0]
    # What the watches are told (bertmesh_operator.rescan), with whether the ScaledObject was applied by then.
    served: list[tuple[str, bool]] = []
    reconciler = Reconciler(
        cluster,
        metrics,
        clock=clock,
        monotonic=lambda: now[0],
        discovery_seconds=60,
        on_served=lambda version: served.append((version, ("ScaledObject", "minilm-stable") in cluster.applied)),
    )
    memory = ObjectMemory()
    outcome = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)
    # Everything else serves; the one object that would be refused is not sent at all.
    assert ("ScaledObject", "minilm-stable") not in cluster.applied
    assert ("Deployment", "minilm-stable") in cluster.applied and outcome.retry is None
    assert outcome.recheck == 60  # back when discovery may be asked again, whatever the resync
    condition = _autoscaling_condition(cluster)
    assert (condition["status"], condition["reason"]) == ("False", "AutoscalerMissing")
    assert "keda.sh/v1alpha1 ScaledObject is not served" in condition["message"]
    assert "install KEDA" in condition["message"] and "--autoscaler hpa" in condition["message"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "AutoscalerMissing")]
    assert cluster.md["status"]["phase"] == "Stable"  # the rollout is not blocked by it
    # Said once, and discovery is asked once a minute, not once per reconcile.
    now[0] = 30.0
    again = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)
    assert again.events == () and cluster.discoveries == 1
    # KEDA installed: noticed at the next discovery, the ScaledObject goes out and the condition clears.
    cluster.unserved = set()
    now[0] = 61.0
    healed = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)
    assert ("ScaledObject", "minilm-stable") in cluster.applied and healed.status_written
    condition = _autoscaling_condition(cluster)
    assert (condition["status"], condition["reason"], condition["message"]) == ("True", "Autoscaled", "")
    assert healed.events == ()
    # The watches heard of the kind once, when it became served, before the ScaledObject went out.
    assert served == [("keda.sh/v1alpha1", False)]
    # Back soon: the new kind's watch lists after a moment, and a ScaledObject deleted before that is never
    # reported gone; the next reconcile puts it back (here: deleted, and the watch never showed it).
    assert healed.recheck == NEW_KIND_SETTLE_SECONDS
    cluster.objects.pop(("ScaledObject", "minilm-stable"))
    now[0] = 61.0 + NEW_KIND_SETTLE_SECONDS
    settled = reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)
    assert ("ScaledObject", "minilm-stable") in cluster.objects and settled.recheck is None
    # A later discovery that finds the kind served again says nothing.
    now[0] = 130.0
    reconciler.reconcile(copy.deepcopy(cluster.md), cluster.children(), memory)
    assert cluster.discoveries == 3 and served == [("keda.sh/v1alpha1", False)]


def test_cpu_and_the_hpa_autoscaler_never_ask_for_keda(stored: dict[str, Any], t0: datetime) -> None:
    from bertmesh_operator.render import RenderOptions

    stored["spec"]["autoscaling"] = {"metric": "cpu"}
    cluster = FakeCluster(stored)
    cluster.unserved = {"scaledobjects"}
    Reconciler(cluster, FakeMetrics(), clock=Clock(t0)).reconcile(copy.deepcopy(cluster.md), [], ObjectMemory())
    assert ("HorizontalPodAutoscaler", "minilm-stable") in cluster.applied
    assert _autoscaling_condition(cluster)["status"] == "True" and cluster.discoveries == 0
    stored["spec"]["autoscaling"] = {"metric": "inflight"}
    cluster = FakeCluster(stored)
    cluster.unserved = {"scaledobjects"}
    hpa = Reconciler(cluster, FakeMetrics(), RenderOptions(autoscaler="hpa"), clock=Clock(t0))
    hpa.reconcile(copy.deepcopy(cluster.md), [], ObjectMemory())
    assert ("HorizontalPodAutoscaler", "minilm-stable") in cluster.applied
    assert _autoscaling_condition(cluster)["status"] == "True" and cluster.discoveries == 0


def test_a_later_invalid_spec_keeps_the_autoscaling_condition(world: World) -> None:
    cluster = world[0]
    cluster.unserved = {"scaledobjects"}
    run(world, ObjectMemory())
    cluster.edit_spec({**cluster.md["spec"], "autoscaling": {"minReplicas": 5, "maxReplicas": 2}})
    run(world, ObjectMemory())
    conditions = {c["type"]: c for c in cluster.md["status"]["conditions"]}
    assert set(conditions) == {"Ready", "Progressing", "Degraded", "Autoscaling"}
    assert conditions["Degraded"]["reason"] == "InvalidSpec"
    assert conditions["Autoscaling"]["reason"] == "AutoscalerMissing"
