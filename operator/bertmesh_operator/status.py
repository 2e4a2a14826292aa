"""The ModelDeployment status: its models, and the pure mapping between it and the rollout state.

The status is the operator's memory: the rollout state (including the exact model and runtime each track
serves) round-trips through it, so a restarted operator resumes a rollout where it stopped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from bertmesh_operator.rollout import Phase, RolloutState, initial_state
from bertmesh_operator.schema import CrdModel
from bertmesh_operator.spec import ModelDeploymentSpec, ModelSpec, RuntimeSpec, ServingSpec

ConditionType = Literal["Ready", "Progressing", "Degraded"]
Revision = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[a-f0-9]+$")]
Replicas = Annotated[int, Field(ge=0, le=100000)]


class Condition(CrdModel):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    observed_generation: int | None = Field(default=None, ge=0, le=2**53)
    last_transition_time: datetime


class TrackStatus(CrdModel):
    """One track: the revision it serves, exactly what that revision is, and its ready replicas."""

    revision: Revision
    ready_replicas: Replicas = 0
    model: ModelSpec
    runtime: RuntimeSpec


class CanaryStatus(TrackStatus):
    """The canary track and its progress."""

    weight: int = Field(default=0, ge=0, le=100, description="Share of traffic routed to the canary (%).")
    step: int = Field(default=0, ge=0, le=20, description="Current step (1-based); 0 before the first.")
    steps: int = Field(default=0, ge=0, le=20, description="Number of steps in the schedule.")
    failed_checks: int = Field(default=0, ge=0, le=100)
    step_started_at: datetime | None = None


class ModelDeploymentStatus(CrdModel):
    """What the operator observed and decided."""

    # Tolerate fields other writers keep in status (kopf's own bookkeeping, for instance).
    model_config = CrdModel.model_config | ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, ge=0, le=2**53)
    conditions: Annotated[list[Condition], Field(max_length=8)] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: Literal["Stable", "Progressing", "Promoting", "Aborted"] | None = None
    stable: TrackStatus | None = None
    canary: CanaryStatus | None = None
    grpc_endpoint: str | None = Field(default=None, max_length=320, description="host:port to call over gRPC.")
    message: str | None = Field(default=None, max_length=32768)


def rollout_state(status: ModelDeploymentStatus | None, spec: ModelDeploymentSpec) -> RolloutState:
    """Rebuild the rollout state from a status (or the initial state when there is none yet)."""
    if status is None or status.stable is None or status.phase is None:
        return initial_state(spec)
    stable = ServingSpec(model=status.stable.model, runtime=status.stable.runtime)
    phase = Phase(status.phase)
    canary = status.canary
    if phase is Phase.STABLE or canary is None:
        return RolloutState(stable=stable, message=status.message or "")
    return RolloutState(
        stable=stable,
        phase=phase,
        canary=ServingSpec(model=canary.model, runtime=canary.runtime),
        step=canary.step,
        canary_weight=canary.weight,
        failed_checks=canary.failed_checks,
        step_started_at=canary.step_started_at,
        reason=_reason_of(status, phase),
        message=status.message or "",
    )


def _reason_of(status: ModelDeploymentStatus, phase: Phase) -> str:
    wanted = "Degraded" if phase is Phase.ABORTED else "Progressing"
    for condition in status.conditions or ():
        if condition.type == wanted:
            return condition.reason
    return phase.value


def rollout_status(
    state: RolloutState,
    spec: ModelDeploymentSpec,
    *,
    stable_ready_replicas: int,
    canary_ready_replicas: int,
) -> dict[str, Any]:
    """The status fields that describe the rollout state, in wire form (camelCase)."""
    stable = TrackStatus(
        revision=state.stable_revision,
        ready_replicas=stable_ready_replicas,
        model=state.stable.model,
        runtime=state.stable.runtime,
    )
    canary = None
    if state.canary is not None:
        canary = CanaryStatus(
            revision=state.canary.revision,
            ready_replicas=canary_ready_replicas,
            model=state.canary.model,
            runtime=state.canary.runtime,
            weight=state.canary_weight,
            step=state.step,
            steps=len(spec.traffic.policy.schedule),
            failed_checks=state.failed_checks,
            step_started_at=state.step_started_at,
        )
    return {
        "phase": state.phase.value,
        "stable": stable.wire(),
        # An explicit null removes a previous canary from the status under a merge patch.
        "canary": None if canary is None else canary.wire(),
        "message": state.message,
    }


def conditions(
    state: RolloutState,
    *,
    stable_ready_replicas: int,
    generation: int | None,
    now: datetime,
    previous: list[Condition] | None = None,
) -> list[Condition]:
    """The Ready, Progressing and Degraded conditions; an unchanged one keeps its transition time."""
    rolling = state.phase in (Phase.PROGRESSING, Phase.PROMOTING)
    aborted = state.phase is Phase.ABORTED
    wanted: list[tuple[ConditionType, bool, str, str]] = [
        (
            "Ready",
            stable_ready_replicas > 0,
            "Serving" if stable_ready_replicas > 0 else "NoReadyReplicas",
            f"{stable_ready_replicas} stable replica(s) ready, revision {state.stable_revision}",
        ),
        ("Progressing", rolling, state.reason if rolling else "NoRollout", state.message if rolling else ""),
        ("Degraded", aborted, state.reason if aborted else "AsExpected", state.message if aborted else ""),
    ]
    before = {c.type: c for c in previous or ()}
    result = []
    for kind, ok, reason, message in wanted:
        status: Literal["True", "False"] = "True" if ok else "False"
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == status else now
        result.append(
            Condition(
                type=kind,
                status=status,
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=since,
            )
        )
    return result


def status_patch(
    state: RolloutState,
    spec: ModelDeploymentSpec,
    *,
    generation: int | None,
    stable_ready_replicas: int,
    canary_ready_replicas: int,
    grpc_endpoint: str,
    now: datetime,
    previous: ModelDeploymentStatus | None = None,
) -> dict[str, Any]:
    """The whole status to write after a reconcile (a merge patch body for the status subresource)."""
    found = conditions(
        state,
        stable_ready_replicas=stable_ready_replicas,
        generation=generation,
        now=now,
        previous=previous.conditions if previous is not None else None,
    )
    return {
        "observedGeneration": generation,
        "conditions": [c.wire() for c in found],
        "grpcEndpoint": grpc_endpoint,
        **rollout_status(
            state,
            spec,
            stable_ready_replicas=stable_ready_replicas,
            canary_ready_replicas=canary_ready_replicas,
        ),
    }


def degraded_status_patch(
    previous: ModelDeploymentStatus | None,
    *,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status write when the operator cannot act on a generation (an invalid spec, refused objects).

    Degraded becomes True with the reason; Ready and Progressing and the rollout fields stay as they were (the
    children are left alone), or are Unknown when nothing was ever deployed.
    """
    before = {c.type: c for c in (previous.conditions if previous is not None else None) or ()}
    found: list[Condition] = []
    for kind in ("Ready", "Progressing"):
        old = before.get(kind)
        if old is None:
            old = Condition(
                type=kind,
                status="Unknown",
                reason=reason,
                message="nothing deployed yet",
                observed_generation=generation,
                last_transition_time=now,
            )
        found.append(old)
    old_degraded = before.get("Degraded")
    since = old_degraded.last_transition_time if old_degraded is not None and old_degraded.status == "True" else now
    found.append(
        Condition(
            type="Degraded",
            status="True",
            reason=reason,
            message=message,
            observed_generation=generation,
            last_transition_time=since,
        )
    )
    return {"observedGeneration": generation, "conditions": [c.wire() for c in found]}
