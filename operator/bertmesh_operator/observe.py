"""What the operator sees of a ModelDeployment's children, as plain data, and what it concludes from it. Pure.

The operator watches every object carrying the `serving.bertmesh.io/model-deployment` label and keeps one small
`Child` per object in memory (a `ChildRegistry`). From those it reads the tracks' readiness (the rollout's
observation), which children are no longer rendered (prune), and whether a child changed since the operator
applied it (so an unchanged child is not applied again on every re-check: status updates do not count).
The registry is an `OwnerIndex` (the pods' watch keeps one too), and says which owner a change should wake.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from bertmesh_operator.readiness import deployment_failure
from bertmesh_operator.render.context import MD_LABEL, REVISION_LABEL, TRACK_LABEL
from bertmesh_operator.rollout import RolloutState
from bertmesh_operator.spec import CanarySpec
from bertmesh_operator.states import Phase

# (API group, kind, name): a child's identity whatever API version it is read or written with.
ChildKey = tuple[str, str, str]
# On every child: the digest of the rendered object the operator applied (its own apply writes it), so a
# restarted operator knows which children are still exactly what it would apply now.
APPLIED_ANNOTATION = "serving.bertmesh.io/applied"


def child_key(api_version: str, kind: str, name: str) -> ChildKey:
    """The identity of a child object."""
    group = api_version.rpartition("/")[0]
    return (group, kind, name)


def content_version(body: Mapping[str, Any]) -> str:
    """What changes when someone changes an object, and not when a controller updates its status.

    The generation (bumped by spec changes) plus the labels, annotations and owner references, for kinds that
    have a generation; the resourceVersion (any change at all) for those that do not.
    """
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    if not isinstance(generation, int):
        return f"rv:{meta.get('resourceVersion', '')}"
    tracked = [meta.get("labels"), meta.get("annotations"), meta.get("ownerReferences")]
    fingerprint = hashlib.sha256(json.dumps(tracked, sort_keys=True).encode()).hexdigest()[:16]
    return f"gen:{generation}:{fingerprint}"


def applied_digest(meta: Mapping[str, Any]) -> str | None:
    """The digest a child's last apply by the operator left on it, if no one has written it since; else None.

    "Since" is read from managedFields: the operator's apply is the entry owning the annotation; any other
    writer of the object itself (not of its status or scale subresources: controllers) at the same second or
    later means an edit the operator has not taken back yet.
    """
    found = (meta.get("annotations") or {}).get(APPLIED_ANNOTATION)
    if not isinstance(found, str):
        return None
    ours: str | None = None
    others: list[str] = []
    for entry in meta.get("managedFields") or ():
        if entry.get("subresource"):
            continue
        fields = (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        if entry.get("operation") == "Apply" and f"f:{APPLIED_ANNOTATION}" in fields:
            ours = str(entry.get("time") or "")
        else:
            others.append(str(entry.get("time") or ""))
    if not ours or any(time >= ours for time in others):
        return None
    return found


@dataclass(frozen=True)
class DeploymentState:
    """The fields of a Deployment that say which revision it runs and how far it got."""

    revision: str | None  # the pod template's serving.bertmesh.io/revision label
    generation: int
    observed_generation: int
    desired: int  # spec.replicas (1 when unset, as the API server defaults it)
    replicas: int  # status.replicas: pods of every revision
    updated: int
    ready: int
    available: int
    failure: str | None = None  # why the Deployment could not create its pods (readiness.deployment_failure)

    @property
    def reported(self) -> tuple[int, int, int, int, int, str | None]:
        """What the Deployment controller reports (its status): a change here can change the owner's status."""
        return (self.observed_generation, self.replicas, self.updated, self.ready, self.available, self.failure)

    @property
    def current(self) -> bool:
        """Whether the Deployment controller has seen the latest spec."""
        return self.observed_generation >= self.generation

    def ready_of(self, revision: str) -> int:
        """Ready pods certainly running `revision` (old pods are counted as ready first: a lower bound)."""
        if self.revision != revision or not self.current:
            return 0
        old = max(0, self.replicas - self.updated)
        return max(0, min(self.updated, self.ready - old))

    def rolled_out(self, revision: str) -> bool:
        """Whether every pod runs `revision` and is available (what `kubectl rollout status` waits for)."""
        return (
            self.revision == revision
            and self.current
            and self.updated >= self.desired
            and self.replicas == self.updated
            and self.available >= self.updated
        )


@dataclass(frozen=True)
class Child:
    """One object a ModelDeployment owns, as the operator's watch last saw it."""

    api_version: str
    kind: str
    name: str
    uid: str
    version: str  # content_version(): changes when the object is edited, not when its status is
    owner_uid: str | None  # the uid of its controller owner reference
    track: str | None = None
    deployment: DeploymentState | None = None
    applied: str | None = None  # applied_digest(): what the operator applied, if untouched since

    @property
    def key(self) -> ChildKey:
        """The object's identity."""
        return child_key(self.api_version, self.kind, self.name)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def _deployment_state(body: Mapping[str, Any]) -> DeploymentState:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    return DeploymentState(
        revision=template_labels.get(REVISION_LABEL),
        generation=_int(body["metadata"].get("generation"), 1),
        observed_generation=_int(status.get("observedGeneration")),
        desired=_int(spec.get("replicas"), 1),
        replicas=_int(status.get("replicas")),
        updated=_int(status.get("updatedReplicas")),
        ready=_int(status.get("readyReplicas")),
        available=_int(status.get("availableReplicas")),
        failure=deployment_failure(body),
    )


def child_of(body: Mapping[str, Any]) -> tuple[tuple[str, str], Child] | None:
    """The (namespace, ModelDeployment name) an object belongs to and its `Child`; None if not labelled."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    owner = labels.get(MD_LABEL)
    if not owner:
        return None
    controller = next((ref for ref in meta.get("ownerReferences") or () if ref.get("controller")), None)
    kind = body.get("kind", "")
    child = Child(
        api_version=body.get("apiVersion", ""),
        kind=kind,
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        version=content_version(body),
        owner_uid=controller.get("uid") if controller else None,
        track=labels.get(TRACK_LABEL),
        deployment=_deployment_state(body) if kind == "Deployment" else None,
        applied=applied_digest(meta),
    )
    return (meta.get("namespace", ""), owner), child


T = TypeVar("T")
Owner = tuple[str, str]  # (namespace, ModelDeployment name)


class OwnerIndex(Generic[T]):
    """Values by owner and uid; keyed by uid, so an object whose owner label moves moves with it."""

    def __init__(self) -> None:
        self._by_owner: dict[Owner, dict[str, T]] = {}
        self._owner_of: dict[str, Owner] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def put(self, owner: Owner, uid: str, value: T) -> T | None:
        """Record `value` for `uid` under `owner`; returns what was recorded for it there before, if anything."""
        if self._owner_of.get(uid) not in (None, owner):
            self.pop(uid)
        children = self._by_owner.setdefault(owner, {})
        previous = children.get(uid)
        children[uid] = value
        self._owner_of[uid] = owner
        return previous

    def pop(self, uid: str) -> tuple[Owner, T] | None:
        """Forget `uid`; returns its owner and value, or None if it was not recorded."""
        owner = self._owner_of.pop(uid, None)
        if owner is None:
            return None
        children = self._by_owner.get(owner, {})
        value = children.pop(uid)
        if not children:
            self._by_owner.pop(owner, None)
        return owner, value

    def values(self, owner: Owner) -> list[T]:
        """A copy of the owner's values."""
        return list(self._by_owner.get(owner, {}).values())


# What a Deployment reports before its controller has seen it: a new Deployment changes nothing observed.
_UNREPORTED = (0, 0, 0, 0, 0, None)


class ChildRegistry:
    """Every labelled child as last seen, by (namespace, ModelDeployment name). Not thread-safe: one writer."""

    def __init__(self) -> None:
        self._index: OwnerIndex[Child] = OwnerIndex()

    def __len__(self) -> int:
        return len(self._index)

    def upsert(self, body: Mapping[str, Any]) -> Owner | None:
        """Record an object as it is now (one no longer labelled is forgotten).

        Returns the owner whose status may change because of it (a Deployment's reported state changed, or a
        child was forgotten), else None: the operator's own applies wake no one.
        """
        uid = (body.get("metadata") or {}).get("uid", "")
        found = child_of(body)
        if found is None:
            return self.discard(uid)
        owner, child = found
        previous = self._index.put(owner, uid, child)
        if child.deployment is None:
            return None
        before = previous.deployment.reported if previous is not None and previous.deployment else _UNREPORTED
        return owner if child.deployment.reported != before else None

    def discard(self, uid: str) -> Owner | None:
        """Forget a deleted object; returns its owner if it was known."""
        found = self._index.pop(uid)
        return found[0] if found is not None else None

    def children(self, namespace: str, name: str) -> list[Child]:
        """A copy of the ModelDeployment's children."""
        return self._index.values((namespace, name))


@dataclass(frozen=True)
class TracksSeen:
    """What the Deployments say about the tracks of a rollout state."""

    stable_ready_replicas: int = 0  # ready pods of the stable Deployment, whatever their revision
    canary_ready_replicas: int = 0  # ready pods of the state's canary revision
    stable_rolled_out: bool = False  # the stable Deployment runs the state's stable revision everywhere
    stable_failure: str | None = None  # why the stable Deployment could not create its pods


def _deployment(children: Iterable[Child], track: str, owner_uid: str) -> DeploymentState | None:
    for child in children:
        if child.deployment is not None and child.track == track and child.owner_uid == owner_uid:
            return child.deployment
    return None


def observe_tracks(children: Iterable[Child], state: RolloutState, owner_uid: str) -> TracksSeen:
    """Read the tracks' readiness for `state` from the ModelDeployment's Deployments."""
    children = list(children)
    stable = _deployment(children, "stable", owner_uid)
    canary = _deployment(children, "canary", owner_uid)
    canary_revision = state.canary_revision
    return TracksSeen(
        stable_ready_replicas=stable.ready if stable is not None else 0,
        canary_ready_replicas=canary.ready_of(canary_revision) if canary and canary_revision else 0,
        stable_rolled_out=stable is not None and stable.rolled_out(state.stable_revision),
        stable_failure=stable.failure if stable is not None else None,
    )


def analysis_due(state: RolloutState, policy: CanarySpec, now: datetime) -> bool:
    """Whether this reconcile checks the canary's metrics (so the operator must ask Prometheus)."""
    if state.phase is not Phase.PROGRESSING or state.step == 0:
        return False
    started = state.step_started_at or now
    return (now - started).total_seconds() >= policy.interval_seconds


def stale_children(children: Iterable[Child], rendered: Iterable[Mapping[str, Any]], owner_uid: str) -> list[Child]:
    """Children this ModelDeployment controls that the latest render no longer has (to delete).

    Only objects whose controller owner reference is this very ModelDeployment are ever pruned: a labelled
    object someone else made, or one left by a deleted namesake, is not ours to delete.
    """
    wanted = {child_key(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in rendered}
    return sorted(
        (c for c in children if c.owner_uid == owner_uid and c.key not in wanted),
        key=lambda c: c.key,
    )
