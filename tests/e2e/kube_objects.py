"""Reading a ModelDeployment and its children back from the harness's apiserver, and `bertmesh` run against it, for
the operator's e2e tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from bertmesh_operator.permissions import CHILD_RESOURCES
from bertmesh_operator.render.context import MD_LABEL
from tests.e2e.cluster import KubeApi
from tests.e2e.operator_process import OperatorProcess
from tests.e2e.processes import wait_until

# kubectl's names for every child kind, fully qualified (Istio's "Service" kinds must not be confused).
CHILD_KINDS = {kind: f"{plural}.{group}" if group else plural for (_, kind), (group, plural) in CHILD_RESOURCES.items()}


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A ModelDeployment named `name` with this spec."""
    return {
        "apiVersion": "serving.bertmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def tiny(name: str, revision: str = "v1", **spec: Any) -> dict[str, Any]:
    """A small CPU ModelDeployment: one replica, model downloaded by the storage initializer."""
    body: dict[str, Any] = {
        "model": {"storageUri": f"https://models.example.internal/{name}-{revision}.tar.gz", "revision": revision},
        "resources": {"cpu": "1", "memory": "1Gi"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "cpu"},
    }
    return manifest(name, body | spec)


def ready(md: dict[str, Any]) -> bool:
    """Reconciled at its generation, with a ready stable replica."""
    meta, status = md["metadata"], md.get("status") or {}
    return status.get("observedGeneration") == meta["generation"] and condition(md, "Ready").get("status") == "True"


def apply_md(api: KubeApi, namespace: str, manifest: Mapping[str, Any]) -> None:
    """`kubectl apply` a ModelDeployment, as a user does."""
    api.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(dict(manifest)))


def get_md(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    """The ModelDeployment as stored."""
    found: dict[str, Any] = json.loads(api.kubectl("get", "md", name, "-n", namespace, "-o", "json").stdout)
    return found


def children(api: KubeApi, namespace: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object labelled as a child of the ModelDeployment, by (kind, name).

    Only the kinds the apiserver serves: `kubectl get` of one it does not (KEDA's ScaledObject before a KEDA
    test installed its CRDs) fails the whole call.
    """
    served = set(api.kubectl("api-resources", "-o", "name", check=False).stdout.split())
    kinds = ",".join(name for name in CHILD_KINDS.values() if name in served)
    out = api.kubectl("get", kinds, "-n", namespace, "-l", f"{MD_LABEL}={name}", "-o", "json").stdout
    return {(o["kind"], o["metadata"]["name"]): o for o in json.loads(out)["items"]}


def condition(md: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """One status condition (empty when absent)."""
    for found in (md.get("status") or {}).get("conditions") or ():
        if found.get("type") == kind:
            return dict(found)
    return {}


def route_weights(virtual_service: Mapping[str, Any]) -> dict[str, int]:
    """The weighted route's split, subset -> weight."""
    for route in virtual_service["spec"]["http"]:
        if route.get("name") == "weighted":
            return {d["destination"]["subset"]: d["weight"] for d in route["route"]}
    raise AssertionError(f"no weighted route in {virtual_service['spec']}")


def wait_for_md(
    api: KubeApi,
    namespace: str,
    name: str,
    what: str,
    predicate: Any,
    *,
    operator: OperatorProcess | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Poll the ModelDeployment until `predicate(md)` holds; return it (fails fast if the operator died)."""

    def probe() -> dict[str, Any] | None:
        md = get_md(api, namespace, name)
        return md if predicate(md) else None

    watch = [operator.process] if operator is not None else []
    return wait_until(f"{namespace}/{name}: {what}", probe, timeout=timeout, interval=0.25, watch=watch)


def phase(md: Mapping[str, Any]) -> str | None:
    """The rollout phase in the status (None before the first reconcile)."""
    found: str | None = (md.get("status") or {}).get("phase")
    return found


def bertmesh(api: KubeApi, *args: str) -> subprocess.CompletedProcess[str]:
    """`bertmesh ...` as a user runs it, with the admin kubeconfig."""
    return subprocess.run(
        [sys.executable, "-m", "bertmesh_cli", *args],
        env=api.tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
