"""What the operator reads from its children: track readiness, what to prune, and what changed since apply."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from bertmesh_operator.observe import (
    Child,
    ChildRegistry,
    DeploymentState,
    analysis_due,
    applied_digest,
    child_key,
    child_of,
    content_version,
    observe_tracks,
    stale_children,
)
from bertmesh_operator.render import render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Observation, initial_state, step
from bertmesh_operator.spec import ModelDeploymentSpec
from bertmesh_operator.states import Phase

MakeManifest = Callable[..., dict[str, Any]]
UID = "11111111-2222-3333-4444-555555555555"
CANARY = {"model": {"storageUri": "pvc://models/v2"}, "steps": [10, 50], "interval": "1m"}


def deployment(
    revision: str,
    *,
    track: str = "stable",
    generation: int = 2,
    observed: int = 2,
    desired: int | None = 2,
    replicas: int = 2,
    updated: int = 2,
    ready: int = 2,
    available: int = 2,
    owner: str = UID,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"metadata": {"labels": {"serving.bertmesh.io/revision": revision}}}}
    if desired is not None:
        spec["replicas"] = desired
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"minilm-{track}",
            "namespace": "ml",
            "uid": f"uid-{track}",
            "generation": generation,
            "resourceVersion": "7",
            "labels": {"serving.bertmesh.io/model-deployment": "minilm", "serving.bertmesh.io/track": track},
            "ownerReferences": [{"kind": "ModelDeployment", "name": "minilm", "uid": owner, "controller": True}],
        },
        "spec": spec,
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
        },
    }


def child(body: dict[str, Any]) -> Child:
    found = child_of(body)
    assert found is not None
    assert found[0] == ("ml", "minilm")
    return found[1]


@pytest.fixture
def canary_spec(make_md: MakeManifest) -> ModelDeploymentSpec:
    return parse_model_deployment(make_md({"traffic": {"canary": CANARY}})).spec


def test_an_unlabelled_object_is_not_a_child() -> None:
    assert child_of({"metadata": {"name": "x", "labels": {"app": "x"}}}) is None


def test_ready_pods_of_a_revision_count_only_when_it_is_the_template_and_observed() -> None:
    assert child(deployment("abc")).deployment == DeploymentState("abc", 2, 2, 2, 2, 2, 2, 2)
    state = child(deployment("abc", ready=1)).deployment
    assert state is not None and state.ready_of("abc") == 1 and state.ready_of("def") == 0
    stale = child(deployment("abc", generation=3, observed=2)).deployment
    assert stale is not None and stale.ready_of("abc") == 0  # the controller has not seen the new template yet
    # Mid-rollout: 3 pods, 1 updated; the 2 ready ones may both be old, so none is known to run the revision.
    rolling = child(deployment("abc", replicas=3, updated=1, ready=2)).deployment
    assert rolling is not None and rolling.ready_of("abc") == 0
    rolling = child(deployment("abc", replicas=3, updated=1, ready=3)).deployment
    assert rolling is not None and rolling.ready_of("abc") == 1


@pytest.mark.parametrize(
    ("fields", "done"),
    [
        ({}, True),
        ({"updated": 1, "replicas": 3, "available": 2}, False),  # old pods left
        ({"available": 1}, False),
        ({"generation": 3}, False),
        ({"desired": None, "replicas": 1, "updated": 1, "ready": 1, "available": 1}, True),  # replicas defaults to 1
    ],
)
def test_rolled_out_means_every_pod_updated_and_available(fields: dict[str, Any], done: bool) -> None:
    state = child(deployment("abc", **fields)).deployment
    assert state is not None
    assert state.rolled_out("abc") is done
    assert state.rolled_out("other") is False


def test_tracks_are_read_for_the_state_s_revisions(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = step(initial_state(canary_spec), None, canary_spec, t0)
    assert state.canary_revision is not None
    children = [
        child(deployment(state.stable_revision, ready=2)),
        child(deployment(state.canary_revision, track="canary", desired=1, replicas=1, updated=1, ready=1)),
    ]
    seen = observe_tracks(children, state, UID)
    assert (seen.stable_ready_replicas, seen.canary_ready_replicas, seen.stable_rolled_out) == (2, 1, True)
    # Deployments owned by another object (a deleted namesake's, say) are not this one's tracks.
    assert observe_tracks(children, state, "someone-else").stable_ready_replicas == 0


def test_stale_children_are_owned_and_no_longer_rendered(make_md: MakeManifest) -> None:
    manifest = make_md()
    manifest["metadata"]["uid"] = UID
    rendered = render(manifest)
    canary = child(deployment("abc", track="canary"))
    foreign = child(deployment("abc", track="canary", owner="other-uid"))
    kept = child(deployment("abc"))
    assert stale_children([kept, canary, foreign], rendered, UID) == [canary]
    assert child_key("networking.istio.io/v1alpha3", "EnvoyFilter", "x") == ("networking.istio.io", "EnvoyFilter", "x")
    assert child_key("v1", "Service", "x") == ("", "Service", "x")


def test_content_version_ignores_status_but_not_edits() -> None:
    body = deployment("abc")
    version = content_version(body)
    body["status"]["readyReplicas"] = 0
    body["metadata"]["resourceVersion"] = "8"
    assert content_version(body) == version
    body["metadata"]["labels"]["extra"] = "x"
    assert content_version(body) != version
    body["metadata"]["generation"] = 3
    assert content_version(body).startswith("gen:3:")
    service = {"metadata": {"name": "s", "resourceVersion": "9"}}
    assert content_version(service) == "rv:9"  # no generation: any change counts


def test_analysis_is_due_once_the_interval_at_a_step_has_passed(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    policy = canary_spec.traffic.policy
    waiting = step(initial_state(canary_spec), None, canary_spec, t0)
    assert not analysis_due(waiting, policy, t0 + timedelta(hours=1))  # step 0: waiting for a ready canary
    running = step(waiting, Observation(canary_ready_replicas=1), canary_spec, t0)
    assert running.phase is Phase.PROGRESSING and running.step == 1
    assert not analysis_due(running, policy, t0 + timedelta(seconds=59))
    assert analysis_due(running, policy, t0 + timedelta(seconds=60))
    assert not analysis_due(initial_state(canary_spec), policy, t0 + timedelta(hours=1))


def test_the_registry_follows_objects_by_uid() -> None:
    registry = ChildRegistry()
    body = deployment("abc")
    registry.upsert(body)
    assert [c.name for c in registry.children("ml", "minilm")] == ["minilm-stable"]
    moved = copy.deepcopy(body)
    moved["metadata"]["labels"]["serving.bertmesh.io/model-deployment"] = "other"
    registry.upsert(moved)  # relabelled: it is the other ModelDeployment's now
    assert registry.children("ml", "minilm") == []
    assert len(registry.children("ml", "other")) == 1
    unlabelled = copy.deepcopy(body)
    del unlabelled["metadata"]["labels"]["serving.bertmesh.io/model-deployment"]
    registry.upsert(unlabelled)
    assert len(registry) == 0
    registry.upsert(body)
    registry.discard("uid-stable")
    registry.discard("never-seen")
    assert len(registry) == 0 and registry.children("ml", "minilm") == []


def test_the_registry_wakes_the_owner_when_a_deployment_reports_something_new() -> None:
    registry = ChildRegistry()
    applied = deployment("abc", observed=0, replicas=0, updated=0, ready=0, available=0)
    del applied["status"]
    assert registry.upsert(applied) is None  # the operator's own apply: nothing reported yet
    respec = copy.deepcopy(applied)
    respec["metadata"]["generation"] = 3
    assert registry.upsert(respec) is None  # a spec change alone: the controller has not reported
    reported = deployment("abc", ready=0, available=0)
    assert registry.upsert(reported) == ("ml", "minilm")
    assert registry.upsert(reported) is None  # the same again: no wake
    assert registry.upsert(deployment("abc", ready=1, available=1)) == ("ml", "minilm")
    failing = deployment("abc", ready=1, available=1)
    failing["status"]["conditions"] = [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}]
    assert registry.upsert(failing) == ("ml", "minilm")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "minilm",
            "namespace": "ml",
            "uid": "uid-svc",
            "resourceVersion": "9",
            "labels": {"serving.bertmesh.io/model-deployment": "minilm"},
        },
    }
    assert registry.upsert(service) is None
    assert registry.discard("uid-svc") == ("ml", "minilm")  # a deleted child: re-created without waiting
    assert registry.discard("uid-svc") is None


def test_the_applied_digest_is_trusted_only_while_no_one_else_wrote_the_object() -> None:
    ours = {
        "manager": "bertmesh-operator",
        "operation": "Apply",
        "time": "2026-01-01T00:00:10Z",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:serving.bertmesh.io/applied": {}}}},
    }
    meta: dict[str, Any] = {"annotations": {"serving.bertmesh.io/applied": "d1"}, "managedFields": [ours]}
    assert applied_digest(meta) == "d1"
    status = {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "subresource": "status",
        "time": "2026-01-02T00:00:00Z",
    }
    earlier = {"manager": "kubectl-client-side-apply", "operation": "Update", "time": "2026-01-01T00:00:09Z"}
    assert applied_digest({**meta, "managedFields": [ours, status, earlier]}) == "d1"
    same_second = {"manager": "kubectl-edit", "operation": "Update", "time": "2026-01-01T00:00:10Z"}
    assert applied_digest({**meta, "managedFields": [ours, same_second]}) is None
    other_apply = {"manager": "someone", "operation": "Apply", "time": "2026-01-01T00:01:00Z"}
    assert applied_digest({**meta, "managedFields": [ours, other_apply]}) is None
    assert applied_digest({"annotations": {}, "managedFields": [ours]}) is None
    assert applied_digest({**meta, "managedFields": []}) is None  # no record of the operator's apply
