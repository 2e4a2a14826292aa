"""Every Kubernetes API call the operator makes, as RBAC rules: one list that the operator's client code, the
Helm chart's ClusterRole/Role and the RBAC test all read, so a new call cannot ship without its permission.
"""

from __future__ import annotations

from dataclasses import dataclass

# Children are server-side applied (patch), read back (get, list, watch) and pruned when no longer rendered
# (delete). Nothing is ever created with POST or replaced with PUT, but an apply that creates its object is
# also authorized as `create` by the API server (tests/e2e/test_chart.py applies children with the chart's
# ServiceAccount: without create, the first apply of every child is forbidden).
CHILD_VERBS = ("get", "list", "watch", "create", "patch", "delete")


@dataclass(frozen=True, slots=True)
class Rule:
    """One RBAC rule: an API group, its resources and the verbs used on them."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]


# (apiVersion, kind) of each child render() may return -> (API group, plural resource).
CHILD_RESOURCES: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ServiceAccount"): ("", "serviceaccounts"),
    ("v1", "Service"): ("", "services"),
    ("apps/v1", "Deployment"): ("apps", "deployments"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("autoscaling", "horizontalpodautoscalers"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("keda.sh", "scaledobjects"),
    ("policy/v1", "PodDisruptionBudget"): ("policy", "poddisruptionbudgets"),
    ("networking.istio.io/v1", "VirtualService"): ("networking.istio.io", "virtualservices"),
    ("networking.istio.io/v1", "DestinationRule"): ("networking.istio.io", "destinationrules"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): ("networking.istio.io", "envoyfilters"),
    ("security.istio.io/v1", "PeerAuthentication"): ("security.istio.io", "peerauthentications"),
    ("security.istio.io/v1", "AuthorizationPolicy"): ("security.istio.io", "authorizationpolicies"),
}


# The pods of the operator's Deployments: watched (by label) only to say why they are not ready.
POD_RESOURCE = "pods"


def _child_rules() -> list[Rule]:
    by_group: dict[str, list[str]] = {}
    for group, plural in CHILD_RESOURCES.values():
        by_group.setdefault(group, [])
        if plural not in by_group[group]:
            by_group[group].append(plural)
    return [Rule(group, tuple(sorted(plurals)), CHILD_VERBS) for group, plurals in sorted(by_group.items())]


# The operator's own API calls beyond its children.
OWN_RULES = [
    # Watched for changes; patched for rollout commands and to take off the finalizer earlier versions put.
    Rule("serving.bertmesh.io", ("modeldeployments",), ("get", "list", "watch", "patch")),
    Rule("serving.bertmesh.io", ("modeldeployments/status",), ("get", "patch")),
    # kopf reports handler outcomes as Events on the ModelDeployment.
    Rule("", ("events",), ("create",)),
    Rule("events.k8s.io", ("events",), ("create",)),
    # The pods' watch (readiness.py): read-only, never their logs.
    Rule("", (POD_RESOURCE,), ("list", "watch")),
]

RULES: list[Rule] = [*OWN_RULES, *_child_rules()]

# Granted only with a cluster-wide scope (every namespace): kopf watches the CRDs so that a kind installed after
# the operator started (KEDA's ScaledObject) is watched at once, without a restart. Read-only, and no `get`:
# kopf only lists and watches them. A namespaced operator gets nothing cluster-wide and sees new kinds at its
# next start.
CLUSTER_RULES: list[Rule] = [Rule("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"))]
