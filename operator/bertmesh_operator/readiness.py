"""Why a track's pods are not ready, from what the pods and their Deployment report. Pure.

The operator watches the pods of its Deployments (by the `serving.bertmesh.io/model-deployment` label) and
keeps one small `PodView` per pod: what `kubectl describe pod` shows at the top (scheduling, each container's
state, the last termination) and nothing else. `not_ready_reason` picks the one line a person needs: the
scheduler's message for a pod no node fits (a missing PersistentVolumeClaim is one of those), the kubelet's
reason for a container that cannot start (ImagePullBackOff, CrashLoopBackOff with the last termination
message), a container running but not started or not ready (a failing startup or readiness probe), or the
Deployment's own failure (pods refused by a quota or admission). Pod logs are never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bertmesh_operator.render.context import MD_LABEL, TRACK_LABEL

# Waiting reasons every healthy pod passes through: not worth a message while nothing else is wrong.
TRANSIENT_WAITING = frozenset({"ContainerCreating", "PodInitializing"})
MESSAGE_LIMIT = 512  # characters of one pod-given message carried into the condition


@dataclass(frozen=True, slots=True)
class ContainerView:
    """One container's state as its pod's status reports it."""

    name: str
    init: bool = False
    ready: bool = False
    started: bool | None = None  # None: the kubelet does not say (no startup probe information)
    running: bool = False
    waiting_reason: str = ""
    waiting_message: str = ""
    last_exit_code: int | None = None
    last_reason: str = ""  # the last termination's reason (Error, OOMKilled, ...)
    last_message: str = ""  # the last termination message (terminationMessagePath)


@dataclass(frozen=True, slots=True)
class PodView:
    """What one pod says about why it is (not) ready."""

    name: str
    uid: str
    track: str | None
    phase: str
    deleting: bool = False
    unschedulable: str | None = None  # the PodScheduled=False message (the scheduler's), when unschedulable
    ready: bool = False
    containers: tuple[ContainerView, ...] = ()


def _container(status: Mapping[str, Any], *, init: bool) -> ContainerView:
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    exit_code = last.get("exitCode")
    return ContainerView(
        name=str(status.get("name", "")),
        init=init,
        ready=bool(status.get("ready")),
        started=status.get("started") if isinstance(status.get("started"), bool) else None,
        running="running" in state,
        waiting_reason=str(waiting.get("reason", "")),
        waiting_message=str(waiting.get("message", "")),
        last_exit_code=exit_code if isinstance(exit_code, int) else None,
        last_reason=str(last.get("reason", "")),
        last_message=str(last.get("message", "")).strip(),
    )


def pod_owner(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (namespace, ModelDeployment name) a pod serves, from its label; None if it has none."""
    meta = body.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(MD_LABEL)
    return (str(meta.get("namespace", "")), str(owner)) if owner else None


def pod_view(body: Mapping[str, Any]) -> PodView:
    """The `PodView` of a pod object."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or () if isinstance(c, Mapping)}
    scheduled = conditions.get("PodScheduled") or {}
    unschedulable = None
    if scheduled.get("status") == "False":
        unschedulable = str(scheduled.get("message") or scheduled.get("reason") or "not scheduled")
    containers = tuple(_container(s, init=True) for s in status.get("initContainerStatuses") or ()) + tuple(
        _container(s, init=False) for s in status.get("containerStatuses") or ()
    )
    return PodView(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        track=(meta.get("labels") or {}).get(TRACK_LABEL),
        phase=str(status.get("phase", "")),
        deleting=bool(meta.get("deletionTimestamp")),
        unschedulable=unschedulable,
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        containers=containers,
    )


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _container_problem(container: ContainerView) -> tuple[int, str] | None:
    """(severity, message) of a container that keeps its pod from being ready; higher severity first."""
    kind = "init container" if container.init else "container"
    if container.waiting_reason and container.waiting_reason not in TRANSIENT_WAITING:
        message = f"{container.waiting_reason}: {kind} {container.name}"
        if container.waiting_message:
            message += f": {container.waiting_message}"
        if container.last_exit_code is not None:
            message += f"; last exit code {container.last_exit_code}"
            if container.last_reason:
                message += f" ({container.last_reason})"
            if container.last_message:
                message += f": {container.last_message}"
        return 3, message
    if container.running and not container.ready and not container.init:
        if container.started is False:
            return 2, f"StartupProbe: {kind} {container.name} is running but has not passed its startup probe"
        return 1, f"ReadinessProbe: {kind} {container.name} is running but not passing its readiness probe"
    if container.waiting_reason:
        return 0, f"{container.waiting_reason}: {kind} {container.name}"
    return None


def _pod_problem(pod: PodView) -> tuple[int, str] | None:
    if pod.unschedulable is not None:
        return 4, f"Unschedulable: {pod.unschedulable}"
    problems = [p for p in map(_container_problem, pod.containers) if p is not None]
    return max(problems, key=lambda p: p[0]) if problems else None


def not_ready_reason(pods: Iterable[PodView], track: str, deployment_failure: str | None = None) -> str | None:
    """Why the track's pods are not ready, as one line naming the pod; None when no pod says (or all are ready).

    The most telling problem wins (unschedulable, then a container that cannot start, then a failing startup
    probe, then a failing readiness probe), the first pod by name among equals, so the line is stable from
    one reconcile to the next. A Deployment that could not create its pods at all (`deployment_failure`)
    comes before everything, because then there are no pods to ask.
    """
    if deployment_failure:
        return _clip(deployment_failure)
    found: list[tuple[int, str, str]] = []
    for pod in pods:
        if pod.track != track or pod.deleting or pod.ready or pod.phase in ("Succeeded", "Failed"):
            continue
        problem = _pod_problem(pod)
        if problem is not None:
            found.append((-problem[0], pod.name, problem[1]))
    if not found:
        return None
    _, name, message = min(found)
    return _clip(f"pod {name}: {message}")


def deployment_failure(body: Mapping[str, Any]) -> str | None:
    """The Deployment's own reason for missing pods (ReplicaFailure, or a progress deadline exceeded)."""
    for condition in (body.get("status") or {}).get("conditions") or ():
        kind, status = condition.get("type"), condition.get("status")
        if (kind == "ReplicaFailure" and status == "True") or (kind == "Progressing" and status == "False"):
            reason = condition.get("reason") or kind
            return f"{reason}: {condition.get('message') or ''}".rstrip(": ")
    return None
