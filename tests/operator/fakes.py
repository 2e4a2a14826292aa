"""In-memory stand-ins for what a reconcile talks to: the API server, Prometheus and the clock."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bertmesh_operator.analysis import AnalysisTarget
from bertmesh_operator.errors import ApiRejectedError
from bertmesh_operator.observe import Child, child_of
from bertmesh_operator.prometheus import CanaryMetrics


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeCluster:
    """The API calls of a reconcile, in memory; Deployments report every pod ready at once (as kwok does)."""

    def __init__(self, md: dict[str, Any]) -> None:
        self.md = md
        self.version = 1
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        self.status_writes = 0
        self.gets = 0
        self.reject: str | None = None
        # Resources (plural names) discovery says are not served, as on a cluster without their CRD.
        self.unserved: set[str] = set()
        self.discoveries = 0

    def _bump(self, meta: dict[str, Any]) -> None:
        self.version += 1
        meta["resourceVersion"] = str(self.version)

    def get_model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return copy.deepcopy(self.md) if self.md else None

    def served(self, api_version: str, plural: str) -> bool:
        self.discoveries += 1
        return plural not in self.unserved

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "ScaledObject" and "scaledobjects" in self.unserved:
            raise ApiRejectedError(404, "keda.sh/v1alpha1 ScaledObject is not served")
        if self.reject is not None and obj["kind"] == self.reject:
            raise ApiRejectedError(403, f"{obj['kind']} is forbidden")
        key = (obj["kind"], obj["metadata"]["name"])
        stored = copy.deepcopy(dict(obj))
        old = self.objects.get(key)
        generation = (old or {}).get("metadata", {}).get("generation", 0)
        stored["metadata"]["uid"] = f"uid-{key[1]}-{key[0]}"
        if old is None or old.get("spec") != stored.get("spec"):
            generation += 1
        if obj["kind"] not in ("Service", "ServiceAccount"):
            stored["metadata"]["generation"] = generation
        if obj["kind"] == "Deployment":
            replicas = stored["spec"].get("replicas", 1)
            stored["status"] = {
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }
        annotations: dict[str, Any] = {f"f:{name}": {} for name in stored["metadata"].get("annotations") or {}}
        # The API server's record of the apply (time: a fixed second; tests add later writers by hand).
        stored["metadata"]["managedFields"] = [
            {
                "manager": "bertmesh-operator",
                "operation": "Apply",
                "time": "2026-01-01T00:00:00Z",
                "fieldsV1": {"f:metadata": {"f:annotations": annotations}},
            }
        ]
        self._bump(stored["metadata"])
        self.objects[key] = stored
        self.applied.append(key)
        return copy.deepcopy(stored)

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> bool:
        self.deleted.append((kind, name))
        return self.objects.pop((kind, name), None) is not None

    def patch_model_deployment_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        self.status_writes += 1
        self.md.setdefault("status", {})
        _merge(self.md["status"], status)
        self._bump(self.md["metadata"])
        return copy.deepcopy(self.md)

    def children(self) -> list[Child]:
        """What the operator's watch index holds."""
        found = [child_of(obj) for obj in self.objects.values()]
        return [c for _, c in (f for f in found if f is not None)]

    def edit_spec(self, spec: dict[str, Any]) -> None:
        self.md["spec"] = spec
        self.md["metadata"]["generation"] += 1
        self._bump(self.md["metadata"])


class FakeMetrics:
    """A metrics source whose answer the test sets."""

    def __init__(self) -> None:
        self.answer: CanaryMetrics | Exception = CanaryMetrics(success_rate=1.0, p99_latency_ms=5.0)
        self.asked: list[AnalysisTarget] = []

    def canary_metrics(self, target: AnalysisTarget) -> CanaryMetrics:
        self.asked.append(target)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
