"""RBAC grants the operator exactly bertmesh_operator.permissions.RULES: nothing less, nothing more, no wildcards.

The expected grants are derived from permissions.RULES at test time, so a rule the operator adds fails this test
until the chart grants it too (hack/gen_chart.py regenerates the chart's rules from the same list).
"""

from __future__ import annotations

from typing import Any

import pytest

from bertmesh_operator.permissions import CHILD_RESOURCES, RULES, Rule
from tests.charts.chart import CI_VALUES, RELEASE_NAMESPACE, Helm, Obj, by_kind, expected_grants, operator_grants

RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def rbac_objects(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in RBAC_KINDS]


def _diff(granted: set[Any], expected: set[Any]) -> str:
    return f"missing: {sorted(expected - granted)}\nextra: {sorted(granted - expected)}"


def test_rules_cover_every_child_kind_the_operator_renders() -> None:
    granted = {(rule.api_group, resource) for rule in RULES for resource in rule.resources}
    assert set(CHILD_RESOURCES.values()) <= granted


def test_cluster_scope_grants_exactly_the_rules_cluster_wide(helm: Helm) -> None:
    objects = helm.template()
    granted = operator_grants(objects, "bertmesh", RELEASE_NAMESPACE)
    expected = expected_grants([""])
    assert granted == expected, _diff(granted, expected)
    # Reading the CRDs (kopf's watch of kinds installed later) is granted, and only that: no get, no write.
    crd_grants = {g for g in granted if g[2] == "customresourcedefinitions"}
    assert crd_grants == {("", "apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")


@pytest.mark.parametrize("namespaces", [["ml"], ["search", "recommendations", "ads"]])
def test_namespaced_scope_grants_exactly_the_rules_in_each_namespace(helm: Helm, namespaces: list[str]) -> None:
    objects = helm.template(values={"scope": "namespaced", "namespaces": namespaces})
    granted = operator_grants(objects, "bertmesh", RELEASE_NAMESPACE)
    expected = expected_grants(namespaces)
    assert granted == expected, _diff(granted, expected)
    # Nothing cluster-wide for the operator (the aggregated roles are for people and bound to nobody here).
    assert not by_kind(objects, "ClusterRoleBinding")
    for role in by_kind(objects, "ClusterRole"):
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"])


def test_a_custom_service_account_is_the_one_bound(helm: Helm) -> None:
    values = {"serviceAccount": {"create": False, "name": "platform-operator"}}
    objects = helm.template(values=values)
    assert not by_kind(objects, "ServiceAccount")
    assert operator_grants(objects, "platform-operator", RELEASE_NAMESPACE) == expected_grants([""])
    pod = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"


def test_no_service_account_name_without_creating_one_is_refused(helm: Helm) -> None:
    out = helm.template_text(values={"serviceAccount": {"create": False}}, check=False)
    assert out.returncode != 0 and "serviceAccount.name" in out.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_no_wildcards_resource_names_or_non_resource_urls(helm: Helm, values: Any) -> None:
    for obj in rbac_objects(helm.template([values])):
        for rule in obj.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{obj['kind']}/{obj['metadata']['name']}: {rule}"
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule


def test_aggregated_roles_only_cover_model_deployments(helm: Helm) -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(helm.template(), "ClusterRole")}
    view, edit = roles["bertmesh-view"], roles["bertmesh-edit"]
    for role in (view, edit):
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["serving.bertmesh.io"]
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    off = helm.template(values={"rbac": {"aggregateToDefaultRoles": False}})
    assert [r["metadata"]["name"] for r in by_kind(off, "ClusterRole")] == ["bertmesh"]


def test_rbac_create_false_renders_no_rbac(helm: Helm) -> None:
    assert not rbac_objects(helm.template(values={"rbac": {"create": False}}))


def test_a_rule_the_operator_adds_fails_until_the_chart_grants_it(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.charts.chart as chart

    granted = operator_grants(helm.template(), "bertmesh", RELEASE_NAMESPACE)
    monkeypatch.setattr(chart, "RULES", [*RULES, Rule("", ("configmaps",), ("get",))])
    assert granted != expected_grants([""])
    assert expected_grants([""]) - granted == {("", "", "configmaps", "get")}
