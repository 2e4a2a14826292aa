"""The status: the rollout state round-trips through it; conditions follow the Kubernetes convention."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, initial_state, step
from bertmesh_operator.spec import ModelDeploymentSpec
from bertmesh_operator.states import Phase, Reason
from bertmesh_operator.status import conditions, degraded_status_patch, rollout_state, rollout_status
from bertmesh_operator.status_model import ModelDeploymentStatus

MakeManifest = Callable[..., dict[str, Any]]
CANARY = {"model": {"storageUri": "pvc://models/v2"}, "steps": [10, 50]}
READY = Observation(canary_ready_replicas=1)


@pytest.fixture
def spec(make_md: MakeManifest) -> ModelDeploymentSpec:
    return parse_model_deployment(make_md({"traffic": {"canary": CANARY}})).spec


def _roundtrip(state: RolloutState, spec: ModelDeploymentSpec, now: datetime) -> RolloutState:
    fields = rollout_status(state, spec, stable_ready_replicas=2, canary_ready_replicas=1)
    fields["conditions"] = [c.wire() for c in conditions(state, stable_ready_replicas=2, generation=3, now=now)]
    status = ModelDeploymentStatus.model_validate(fields)
    return rollout_state(status, spec)


def test_every_phase_round_trips(spec: ModelDeploymentSpec, t0: datetime) -> None:
    states = [initial_state(spec)]
    state = step(states[0], None, spec, t0)
    states.append(state)
    state = step(state, READY, spec, t0)
    states.append(state)
    states.append(step(state, None, spec, t0, Command("promote", state.canary_revision or "")))
    states.append(step(state, None, spec, t0, Command("abort", state.canary_revision or "")))
    assert {s.phase for s in states} == set(Phase)
    for original in states:
        assert _roundtrip(original, spec, t0) == original


def test_a_reason_this_operator_never_gives_reads_back_as_the_phases_own(
    spec: ModelDeploymentSpec, t0: datetime
) -> None:
    state = step(step(initial_state(spec), None, spec, t0), READY, spec, t0)
    fields = rollout_status(state, spec, stable_ready_replicas=2, canary_ready_replicas=1)
    written = [c.wire() for c in conditions(state, stable_ready_replicas=2, generation=3, now=t0)]
    assert state.reason is Reason.CANARY_READY
    assert rollout_state(ModelDeploymentStatus.model_validate({**fields, "conditions": written}), spec) == state
    for condition in written:
        condition["reason"] = "EditedByHand"
    edited = rollout_state(ModelDeploymentStatus.model_validate({**fields, "conditions": written}), spec)
    assert edited == replace(state, reason=Reason.CANARY_STARTED)
    without = rollout_state(ModelDeploymentStatus.model_validate(fields), spec)
    assert without.reason is Reason.CANARY_STARTED and without.phase is Phase.PROGRESSING


def test_no_status_means_the_initial_state(spec: ModelDeploymentSpec) -> None:
    assert rollout_state(None, spec) == initial_state(spec)
    assert rollout_state(ModelDeploymentStatus(), spec) == initial_state(spec)


def test_status_wire_form(spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = step(initial_state(spec), None, spec, t0)
    state = step(state, READY, spec, t0)
    fields = rollout_status(state, spec, stable_ready_replicas=3, canary_ready_replicas=1)
    assert fields["phase"] == "Progressing"
    assert fields["stable"]["readyReplicas"] == 3
    assert fields["stable"]["model"]["storageUri"] == "pvc://models/minilm"
    canary = fields["canary"]
    assert (canary["weight"], canary["step"], canary["steps"], canary["failedChecks"]) == (10, 1, 2, 0)
    assert canary["stepStartedAt"] == "2026-01-01T00:00:00Z"
    stable_only = rollout_status(initial_state(spec), spec, stable_ready_replicas=1, canary_ready_replicas=0)
    assert stable_only["canary"] is None  # an explicit null clears the canary under a merge patch


def test_conditions_on_abort(spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = step(initial_state(spec), None, spec, t0)
    state = step(state, READY, spec, t0)
    first = conditions(state, stable_ready_replicas=2, generation=4, now=t0)
    by_type = {c.type: c for c in first}
    assert (by_type["Ready"].status, by_type["Progressing"].status, by_type["Degraded"].status) == (
        "True",
        "True",
        "False",
    )
    assert all(c.observed_generation == 4 for c in first)
    aborted = step(state, None, spec, t0, Command("abort", state.canary_revision or ""))
    later = t0 + timedelta(minutes=5)
    after = conditions(aborted, stable_ready_replicas=2, generation=4, now=later, previous=first)
    second = {c.type: c for c in after}
    assert (second["Degraded"].status, second["Degraded"].reason) == ("True", "CanaryAborted")
    assert "100% of traffic is on stable" in second["Degraded"].message
    assert second["Progressing"].status == "False"
    # Unchanged conditions keep their transition time; changed ones move to now.
    assert second["Ready"].last_transition_time == t0
    assert second["Degraded"].last_transition_time == later


def test_not_ready_without_stable_replicas(spec: ModelDeploymentSpec, t0: datetime) -> None:
    found = conditions(initial_state(spec), stable_ready_replicas=0, generation=1, now=t0)
    ready = {c.type: c for c in found}
    assert (ready["Ready"].status, ready["Ready"].reason) == ("False", "NoReadyReplicas")


def test_status_patch_is_a_valid_status(spec: ModelDeploymentSpec, t0: datetime) -> None:
    from bertmesh_operator.status import status_patch

    state = step(initial_state(spec), None, spec, t0)
    patch = status_patch(
        state,
        spec,
        generation=7,
        stable_ready_replicas=1,
        canary_ready_replicas=0,
        grpc_endpoint="minilm.ml.svc.cluster.local:50051",
        now=t0,
    )
    status = ModelDeploymentStatus.model_validate(patch)
    assert (status.observed_generation, status.grpc_endpoint, status.phase) == (
        7,
        "minilm.ml.svc.cluster.local:50051",
        "Progressing",
    )
    assert rollout_state(status, spec) == state
    again = status_patch(
        state,
        spec,
        generation=7,
        stable_ready_replicas=1,
        canary_ready_replicas=0,
        grpc_endpoint="minilm.ml.svc.cluster.local:50051",
        now=t0.replace(hour=5),
        previous=status,
    )
    assert again == patch  # nothing changed, so nothing moves (transition times included)


def test_status_patch_passes_the_crd_status_schema(spec: ModelDeploymentSpec, t0: datetime) -> None:
    import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock

    from bertmesh_operator.crd import openapi_schema
    from bertmesh_operator.status import status_patch

    schema = openapi_schema()["properties"]["status"]
    state = initial_state(spec)
    for observation in (None, READY, Observation(stable_ready=True)):
        state = step(state, observation, spec, t0)
        patch = status_patch(
            state,
            spec,
            generation=1,
            stable_ready_replicas=1,
            canary_ready_replicas=1,
            grpc_endpoint="minilm.ml.svc.cluster.local:50051",
            now=t0,
        )
        # A null in a merge patch deletes the field; what is stored has no nulls.
        stored = {k: v for k, v in patch.items() if v is not None}
        jsonschema.Draft202012Validator(schema).validate(stored)


def test_a_degraded_write_keeps_ready_and_progressing_and_the_rollout(spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = step(initial_state(spec), READY, spec, t0)
    fields = rollout_status(state, spec, stable_ready_replicas=2, canary_ready_replicas=1)
    fields["conditions"] = [c.wire() for c in conditions(state, stable_ready_replicas=2, generation=3, now=t0)]
    previous = ModelDeploymentStatus.model_validate(fields)
    later = t0 + timedelta(minutes=5)
    patch = degraded_status_patch(previous, reason=Reason.INVALID_SPEC, message="spec.x: bad", generation=4, now=later)
    assert set(patch) == {"observedGeneration", "conditions"}  # the rollout fields stay as they were
    assert patch["observedGeneration"] == 4
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert by_type["Ready"] == next(c.wire() for c in previous.conditions or () if c.type == "Ready")
    assert by_type["Progressing"]["reason"] == "CanaryStarted"
    degraded = by_type["Degraded"]
    assert (degraded["status"], degraded["reason"], degraded["message"]) == ("True", "InvalidSpec", "spec.x: bad")
    assert degraded["observedGeneration"] == 4
    assert degraded["lastTransitionTime"] == later.isoformat().replace("+00:00", "Z")
    # Still degraded a reconcile later: the transition time stays.
    again = degraded_status_patch(
        ModelDeploymentStatus.model_validate({**fields, **patch}),
        reason=Reason.INVALID_SPEC,
        message="spec.x: bad",
        generation=4,
        now=later + timedelta(minutes=1),
    )
    assert again == patch


def test_a_degraded_write_before_anything_was_deployed_says_unknown(t0: datetime) -> None:
    patch = degraded_status_patch(None, reason=Reason.INVALID_SPEC, message="bad", generation=1, now=t0)
    statuses = {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}
    assert statuses == {
        "Ready": ("Unknown", "InvalidSpec"),
        "Progressing": ("Unknown", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }
