"""The pure mapping between the rollout state and the ModelDeployment status (`status_model`), both ways.

The status is the operator's memory: the rollout state (including the exact model and runtime each track
serves) round-trips through it, so a restarted operator resumes a rollout where it stopped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from bertmesh_operator.rollout import RolloutState, initial_state
from bertmesh_operator.rollout_mode import decide_mode
from bertmesh_operator.spec import ModelDeploymentSpec, ServingSpec
from bertmesh_operator.states import ENTERED_WITH, IN_FLIGHT, Phase, Reason, RolloutMode
from bertmesh_operator.status_model import CanaryStatus, Condition, ConditionType, ModelDeploymentStatus, TrackStatus


def rollout_state(status: ModelDeploymentStatus | None, spec: ModelDeploymentSpec) -> RolloutState:
    """Rebuild the rollout state from a status (or the initial state when there is none yet)."""
    if status is None or status.stable is None or status.phase is None:
        return initial_state(spec)
    stable = ServingSpec(model=status.stable.model, runtime=status.stable.runtime)
    phase = status.phase
    canary = status.canary
    if phase is Phase.STABLE or canary is None:
        return RolloutState(stable=stable, message=status.message or "")
    candidate = ServingSpec(model=canary.model, runtime=canary.runtime)
    # A status written before modes existed: the tracks decide (they still differ, short of Promoting).
    decision = decide_mode(stable, candidate, spec.traffic.policy)
    return RolloutState(
        stable=stable,
        phase=phase,
        canary=candidate,
        step=canary.step,
        canary_weight=canary.weight,
        failed_checks=canary.failed_checks,
        step_started_at=canary.step_started_at,
        reason=_reason_of(status, phase),
        message=status.message or "",
        mode=canary.mode or decision.mode,
        mode_reason=canary.mode_reason or decision.reason,
        mirror_percent=canary.mirror_percent,
    )


def _reason_of(status: ModelDeploymentStatus, phase: Phase) -> Reason:
    wanted: ConditionType = "Degraded" if phase is Phase.ABORTED else "Progressing"
    for condition in status.conditions or ():
        if condition.type == wanted:
            try:
                return Reason(condition.reason)
            except ValueError:  # written by hand, or by another version: not a reason this operator gives
                break
    return ENTERED_WITH[phase]


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
        embedding_space=state.stable.model.effective_embedding_space,
    )
    canary = None
    if state.canary is not None:
        canary = CanaryStatus(
            revision=state.canary.revision,
            ready_replicas=canary_ready_replicas,
            model=state.canary.model,
            runtime=state.canary.runtime,
            embedding_space=state.canary.model.effective_embedding_space,
            weight=state.canary_weight,
            step=state.step,
            steps=1 if state.mode is RolloutMode.REINDEX else len(spec.traffic.policy.schedule),
            failed_checks=state.failed_checks,
            step_started_at=state.step_started_at,
            mode=state.mode,
            mode_reason=state.mode_reason,
            mirror_percent=state.mirror_percent,
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
    not_ready: str | None = None,
    autoscaler_missing: str | None = None,
) -> list[Condition]:
    """The Ready, Progressing, Degraded and Autoscaling conditions; an unchanged one keeps its transition time.

    `not_ready` is why the stable pods are not ready (`readiness.not_ready_reason`), carried in Ready's message
    while no stable replica is ready. `autoscaler_missing` says why the tracks have no autoscaler (KEDA not
    installed): Autoscaling is False with it, else True.
    """
    ready_message = f"{stable_ready_replicas} stable replica(s) ready, revision {state.stable_revision}"
    if not_ready and stable_ready_replicas == 0:
        ready_message += f"; {not_ready}"
    rolling = state.phase in IN_FLIGHT
    aborted = state.phase is Phase.ABORTED
    wanted: list[tuple[ConditionType, bool, Reason, str]] = [
        (
            "Ready",
            stable_ready_replicas > 0,
            Reason.SERVING if stable_ready_replicas > 0 else Reason.NO_READY_REPLICAS,
            ready_message,
        ),
        ("Progressing", rolling, state.reason if rolling else Reason.NO_ROLLOUT, state.message if rolling else ""),
        ("Degraded", aborted, state.reason if aborted else Reason.AS_EXPECTED, state.message if aborted else ""),
        (
            "Autoscaling",
            autoscaler_missing is None,
            Reason.AUTOSCALED if autoscaler_missing is None else Reason.AUTOSCALER_MISSING,
            autoscaler_missing or "",
        ),
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
    not_ready: str | None = None,
    autoscaler_missing: str | None = None,
) -> dict[str, Any]:
    """The whole status to write after a reconcile (a merge patch body for the status subresource)."""
    found = conditions(
        state,
        stable_ready_replicas=stable_ready_replicas,
        generation=generation,
        now=now,
        previous=previous.conditions if previous is not None else None,
        not_ready=not_ready,
        autoscaler_missing=autoscaler_missing,
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
    reason: Reason,
    message: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status write when the operator cannot act on a generation (an invalid spec, refused objects).

    Degraded becomes True with the reason; Ready and Progressing and the rollout fields stay as they were (the
    children are left alone), or are Unknown when nothing was ever deployed; Autoscaling stays if present.
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
    # The conditions list is replaced whole by a merge patch: keep what says whether the tracks autoscale.
    if "Autoscaling" in before:
        found.append(before["Autoscaling"])
    return {"observedGeneration": generation, "conditions": [c.wire() for c in found]}
