"""One reconcile of one ModelDeployment: the imperative shell around the pure core.

read (a fresh object, its children as the watch last saw them, the canary's metrics when a check is due) →
step the rollout → render → server-side apply what changed → prune what is no longer rendered → write the
status when it changed. Every step is idempotent and the status (the rollout's memory) is written last, so a
process killed anywhere in between redoes the same reconcile when it comes back, with the same names: no
duplicates. Synchronous, like the kubernetes client; the kopf handlers run it in a thread pool, one at a time
per object.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from bertmesh_operator.analysis import canary_target
from bertmesh_operator.errors import ApiRejectedError, InvalidSpecError, MetricsUnavailableError
from bertmesh_operator.observe import (
    APPLIED_ANNOTATION,
    Child,
    ChildKey,
    analysis_due,
    child_key,
    content_version,
    observe_tracks,
    stale_children,
)
from bertmesh_operator.permissions import CHILD_RESOURCES
from bertmesh_operator.prometheus import MetricsSource
from bertmesh_operator.readiness import PodView, not_ready_reason
from bertmesh_operator.render import RenderOptions, grpc_endpoint, render
from bertmesh_operator.resource import ModelDeployment, parse_model_deployment
from bertmesh_operator.rollout import (
    COMMAND_ANNOTATION,
    REINDEXED_ANNOTATION,
    Command,
    Observation,
    RolloutState,
    step,
)
from bertmesh_operator.spec import CanarySpec
from bertmesh_operator.states import Phase, Reason, RolloutMode
from bertmesh_operator.status import degraded_status_patch, rollout_state, status_patch
from bertmesh_operator.status_model import ModelDeploymentStatus

# Reasons that tell a person something went wrong (Warning events); the rest are Normal.
WARNING_REASONS = frozenset(
    {Reason.CHECK_FAILED, Reason.CANARY_ABORTED, Reason.ANALYSIS_DEFERRED, Reason.INVALID_SPEC, Reason.APPLY_FAILED}
)
# After an optional kind becomes served, reconciles come back this soon (instead of at the resync) for as long:
# the new kind's watch may start listing after an object of it was deleted (see Reconciler._settling).
NEW_KIND_SETTLE_SECONDS = 5.0
# Child kinds that another project's CRD brings, which the operator can do without: when the API server does
# not serve one, its objects are left out (an apply would fail, and every other child still works) and the
# status says what to install.
OPTIONAL_KINDS: dict[tuple[str, str], str] = {
    ("keda.sh/v1alpha1", "ScaledObject"): "install KEDA (docs/install.md) or run the operator with --autoscaler "
    "hpa; until then no autoscaler is applied and each track keeps its replica count",
}


class ClusterClient(Protocol):
    """The API calls a reconcile makes (`kube.KubeClient`; a fake in tests)."""

    def get_model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ModelDeployment as stored now, or None."""
        ...

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one child; returns it as stored."""
        ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Delete one child if it is still `uid`."""
        ...

    def patch_model_deployment_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the status; returns the stored object."""
        ...

    def served(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (discovery)."""
        ...


@dataclass
class ObjectMemory:
    """What this process remembers of one ModelDeployment between reconciles; losing it costs only API calls."""

    # The newest resourceVersion known of the ModelDeployment: a handler's body older than our own status
    # write would rewind the rollout, so a body with another version is read afresh first.
    known_resource_version: str | None = None
    # Per child: the digest of what was last applied and the content_version of the API server's answer. A
    # child the watch still shows at that version is unchanged (neither edited nor deleted): not applied again.
    applied: dict[ChildKey, tuple[str, str]] = field(default_factory=dict)
    # When every child was last applied regardless (monotonic seconds): a safety net for a watch event lost.
    # None before the first reconcile in this process, which trusts a child's applied digest (observe.py).
    applied_all_at: float | None = None


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: Reason
    message: str


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did, and whether to come back sooner than the next re-check."""

    gone: bool = False
    invalid: str | None = None  # the InvalidSpec message
    phase: Phase | None = None
    applied: int = 0
    pruned: int = 0
    vanished: tuple[str, ...] = ()  # uids of children found already deleted (the watch had not said so)
    status_written: bool = False
    events: tuple[Event, ...] = ()
    retry: str | None = None  # why to come back early (metrics unavailable, objects refused)
    retry_delay: float = 0.0
    # An optional kind (KEDA's ScaledObject) is not served: come back when discovery may be asked again, so
    # installing it is noticed within that, whatever the resync.
    recheck: float | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def digest(obj: Mapping[str, Any]) -> str:
    """A stable fingerprint of a rendered object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Reconciler:
    """Reconciles ModelDeployments through one API client and one metrics source."""

    def __init__(
        self,
        kube: ClusterClient,
        metrics: MetricsSource,
        options: RenderOptions | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        rejected_retry_seconds: float = 60.0,
        metrics_retry_seconds: float = 5.0,
        full_apply_seconds: float = 600.0,
        discovery_seconds: float = 60.0,
        on_served: Callable[[str], None] | None = None,
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.options = options or RenderOptions()
        self.clock = clock
        self.monotonic = monotonic
        self.full_apply_seconds = full_apply_seconds
        self.rejected_retry_seconds = rejected_retry_seconds
        self.metrics_retry_seconds = metrics_retry_seconds
        # Discovery answers per optional kind, (served, monotonic time asked): a CRD installed later is noticed
        # within discovery_seconds, without a discovery request per reconcile.
        self.discovery_seconds = discovery_seconds
        self._served: dict[tuple[str, str], tuple[bool, float]] = {}
        # Called with an optional kind's apiVersion when discovery finds it served for the first time, or again
        # after it was not, before it is applied: the watches take the kind up (bertmesh_operator.rescan).
        self.on_served = on_served
        # When each optional kind was last found newly served (monotonic): see _settling.
        self._served_at: dict[tuple[str, str], float] = {}

    def reconcile(
        self,
        body: Mapping[str, Any],
        children: Iterable[Child],
        memory: ObjectMemory,
        pods: Iterable[PodView] = (),
    ) -> Outcome:
        """Bring one ModelDeployment's children and status in line with its spec and rollout.

        `pods` are the ModelDeployment's pods as the watch last saw them: only read to say why none is ready.
        """
        fresh = self._fresh(body, memory)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return Outcome(gone=True)
        children = list(children)
        now = self.clock()
        try:
            md = parse_model_deployment(fresh)
        except InvalidSpecError as error:
            written = self._write_degraded(fresh, memory, Reason.INVALID_SPEC, str(error), now)
            events = (Event("Warning", Reason.INVALID_SPEC, str(error)),) if written else ()
            return Outcome(invalid=str(error), status_written=written, events=events)

        uid = md.metadata.uid or ""
        spec, policy = md.spec, md.spec.traffic.policy
        before = rollout_state(md.status, spec)
        observation = self._observe(md, before, policy, children, now)
        command = Command.parse((md.metadata.annotations or {}).get(COMMAND_ANNOTATION))
        state = step(before, observation, spec, now, command)

        started = self.monotonic()
        rendered = render(md, state=state, options=self.options)
        objects, missing = self._servable(rendered, started)
        try:
            applied = self._apply(objects, children, memory, started)
            pruned, vanished = self._prune(objects, children, uid, md.namespace, memory)
        except ApiRejectedError as error:
            written = self._write_degraded(fresh, memory, Reason.APPLY_FAILED, str(error), now)
            return Outcome(
                phase=before.phase,
                status_written=written,
                events=(Event("Warning", Reason.APPLY_FAILED, str(error)),) if written else (),
                retry=str(error),
                retry_delay=self.rejected_retry_seconds,
            )

        seen = observe_tracks(children, state, uid)
        not_ready = None
        if seen.stable_ready_replicas == 0:
            not_ready = not_ready_reason(pods, "stable", seen.stable_failure)
        patch = status_patch(
            state,
            spec,
            generation=md.metadata.generation,
            stable_ready_replicas=seen.stable_ready_replicas,
            canary_ready_replicas=seen.canary_ready_replicas,
            grpc_endpoint=grpc_endpoint(md.name, md.namespace, self.options.cluster_domain),
            now=now,
            previous=md.status,
            not_ready=not_ready,
            autoscaler_missing=missing,
        )
        written = self._write_status(md, fresh.get("status"), patch, memory)
        posted = _transition_events(before, state)
        old_status = fresh.get("status")
        if written and not_ready is not None and _message_of(old_status, "Ready") != _message_of(patch, "Ready"):
            posted += (Event("Warning", Reason.NO_READY_REPLICAS, not_ready),)
        if (
            written
            and missing is not None
            and _message_of(old_status, "Autoscaling") != _message_of(patch, "Autoscaling")
        ):
            posted += (Event("Warning", Reason.AUTOSCALER_MISSING, missing),)
        return Outcome(
            phase=state.phase,
            applied=applied,
            pruned=pruned,
            vanished=vanished,
            status_written=written,
            events=posted,
            retry=observation.metrics_error,
            retry_delay=self.metrics_retry_seconds if observation.metrics_error else 0.0,
            recheck=self.discovery_seconds if missing is not None else self._settling(rendered, started),
        )

    def _servable(self, objects: list[dict[str, Any]], now: float) -> tuple[list[dict[str, Any]], str | None]:
        """The objects the API server can take, and what to install for the optional ones it cannot."""
        kinds = {(o["apiVersion"], o["kind"]) for o in objects} & OPTIONAL_KINDS.keys()
        absent = sorted(kind for kind in kinds if not self._kind_served(kind, now))
        if not absent:
            return objects, None
        kept = [o for o in objects if (o["apiVersion"], o["kind"]) not in absent]
        return kept, "; ".join(f"{v} {k} is not served by the API server: {OPTIONAL_KINDS[(v, k)]}" for v, k in absent)

    def _kind_served(self, kind: tuple[str, str], now: float) -> bool:
        known = self._served.get(kind)
        if known is not None and now - known[1] < self.discovery_seconds:
            return known[0]
        served = self.kube.served(kind[0], CHILD_RESOURCES[kind][1])
        self._served[kind] = (served, now)
        if served and (known is None or not known[0]):
            self._served_at[kind] = now
            if self.on_served is not None:
                self.on_served(kind[0])
        return served

    def _settling(self, objects: list[dict[str, Any]], now: float) -> float | None:
        """A reconcile soon, while an optional kind among `objects` has only just become served: the watch of the
        new kind starts with a LIST, and an object of it deleted before that LIST is never reported as gone, so
        the next reconcile is what puts it back (it applies whatever the watches have not shown)."""
        kinds = {(o["apiVersion"], o["kind"]) for o in objects}
        if any(now - at < NEW_KIND_SETTLE_SECONDS for kind, at in self._served_at.items() if kind in kinds):
            return NEW_KIND_SETTLE_SECONDS
        return None

    def _fresh(self, body: Mapping[str, Any], memory: ObjectMemory) -> Mapping[str, Any] | None:
        version = body["metadata"].get("resourceVersion")
        if memory.known_resource_version in (None, version):
            memory.known_resource_version = version
            return body
        meta = body["metadata"]
        fresh = self.kube.get_model_deployment(meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
            return None
        memory.known_resource_version = fresh["metadata"].get("resourceVersion")
        return fresh

    def _observe(
        self, md: ModelDeployment, state: RolloutState, policy: CanarySpec, children: list[Child], now: datetime
    ) -> Observation:
        seen = observe_tracks(children, state, md.metadata.uid or "")
        observation = Observation(
            canary_ready_replicas=seen.canary_ready_replicas,
            stable_ready=seen.stable_rolled_out,
            reindexed_space=(md.metadata.annotations or {}).get(REINDEXED_ANNOTATION),
        )
        if not analysis_due(state, policy, now) or seen.canary_ready_replicas == 0:
            return observation
        mirrored = state.mode is RolloutMode.REINDEX
        try:
            measured = self.metrics.canary_metrics(
                canary_target(md.name, md.namespace, policy.interval, mirrored=mirrored)
            )
        except MetricsUnavailableError as error:
            return replace(observation, metrics_error=str(error))
        return replace(observation, success_rate=measured.success_rate, p99_latency_ms=measured.p99_latency_ms)

    def _apply(self, objects: list[dict[str, Any]], children: list[Child], memory: ObjectMemory, started: float) -> int:
        live = {child.key: child for child in children}
        first = memory.applied_all_at is None
        everything = memory.applied_all_at is not None and started - memory.applied_all_at >= self.full_apply_seconds
        count = 0
        for obj in objects:
            key = child_key(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
            fingerprint = digest(obj)
            child = live.get(key)
            # Unchanged since this process applied it, or (just started) since any run of the operator did.
            if child is not None and not everything and _unchanged(child, memory.applied.get(key), fingerprint, first):
                memory.applied[key] = (fingerprint, child.version)
                continue
            stored = self.kube.apply(_stamped(obj, fingerprint))
            memory.applied[key] = (fingerprint, content_version(stored))
            count += 1
        if first or everything:
            memory.applied_all_at = started
        return count

    def _prune(
        self, objects: list[dict[str, Any]], children: list[Child], uid: str, namespace: str, memory: ObjectMemory
    ) -> tuple[int, tuple[str, ...]]:
        count, vanished = 0, []
        for child in stale_children(children, objects, uid):
            if self.kube.delete(child.api_version, child.kind, namespace, child.name, child.uid):
                count += 1
            else:
                vanished.append(child.uid)
            memory.applied.pop(child.key, None)
        return count, tuple(vanished)

    def _write_status(self, md: ModelDeployment, current: Any, patch: dict[str, Any], memory: ObjectMemory) -> bool:
        current = current if isinstance(current, dict) else {}
        if all(current.get(key) == value for key, value in patch.items()):
            return False
        stored = self.kube.patch_model_deployment_status(md.namespace, md.name, patch)
        memory.known_resource_version = stored.get("metadata", {}).get("resourceVersion")
        return True

    def _write_degraded(
        self, body: Mapping[str, Any], memory: ObjectMemory, reason: Reason, message: str, now: datetime
    ) -> bool:
        meta = body["metadata"]
        current = body.get("status")
        try:
            previous = ModelDeploymentStatus.model_validate(current or {}, by_alias=True)
        except ValueError:
            previous = None
        patch = degraded_status_patch(
            previous, reason=reason, message=message, generation=meta.get("generation"), now=now
        )
        current = current if isinstance(current, dict) else {}
        if all(current.get(key) == value for key, value in patch.items()):
            return False
        stored = self.kube.patch_model_deployment_status(meta["namespace"], meta["name"], patch)
        memory.known_resource_version = stored.get("metadata", {}).get("resourceVersion")
        return True


def _unchanged(child: Child, remembered: tuple[str, str] | None, fingerprint: str, first: bool) -> bool:
    """Whether a child is still exactly what the operator would apply (so it is not applied again)."""
    return remembered == (fingerprint, child.version) or (first and child.applied == fingerprint)


def _stamped(obj: Mapping[str, Any], fingerprint: str) -> dict[str, Any]:
    """The object to apply: the rendered one with its digest in an annotation."""
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_ANNOTATION: fingerprint}
    return {**obj, "metadata": meta}


def _message_of(status: Any, condition_type: str) -> str | None:
    """A condition's message in a status as stored or as patched."""
    if not isinstance(status, dict):
        return None
    for condition in status.get("conditions") or ():
        if isinstance(condition, dict) and condition.get("type") == condition_type:
            return str(condition.get("message", ""))
    return None


def _transition_events(before: RolloutState, after: RolloutState) -> tuple[Event, ...]:
    """One event per rollout transition (a new phase, reason, step or failed check), none while it waits."""
    if (before.phase, before.reason, before.step, before.failed_checks, before.canary_revision) == (
        after.phase,
        after.reason,
        after.step,
        after.failed_checks,
        after.canary_revision,
    ):
        return ()
    kind: Literal["Normal", "Warning"] = "Warning" if after.reason in WARNING_REASONS else "Normal"
    return (Event(kind, after.reason, after.message or after.reason),)
