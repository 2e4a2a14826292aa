"""values.yaml documents every key; values.schema.json closes every object, so a mistyped value fails at install."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.charts.chart import CHART, Helm, Obj, schema

VALUES = CHART / "values.yaml"
# Nested Kubernetes types the API server validates (core/v1 affinity terms): open on purpose.
OPAQUE = "A Kubernetes API object; the API server validates its contents."


def schema_nodes(node: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


def test_every_object_level_is_closed() -> None:
    for path, node in schema_nodes(schema()):
        if node.get("type") != "object" or path == ".global":
            continue
        if node.get("description") == OPAQUE:
            assert "properties" not in node, path
            continue
        extra = node.get("additionalProperties")
        assert extra is not None, f"{path or '<root>'} has no additionalProperties"
        if "properties" in node:
            assert extra is False, f"{path or '<root>'}: additionalProperties must be false"
        else:  # a map (labels, nodeSelector, resource quantities): keys free, values typed
            assert isinstance(extra, dict) and extra, path


def _keys(data: Any, path: str = "") -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield f"{path}.{key}"
            yield from _keys(value, f"{path}.{key}")


def _declared(node: Obj, path: str = "") -> Iterator[str]:
    """The chart's own keys: not the fields inside a Kubernetes type such as core/v1 Affinity."""
    for name, sub in node.get("properties", {}).items():
        yield f"{path}.{name}"
        if sub.get("description") != OPAQUE and "core/v1" not in sub.get("description", ""):
            yield from _declared(sub, f"{path}.{name}")


def test_values_yaml_and_schema_declare_the_same_keys() -> None:
    declared = set(_declared(schema())) - {".global"}
    defaults = set(_keys(yaml.safe_load(VALUES.read_text())))
    # Entries inside a map or a Kubernetes type (resources.requests.cpu, the dashboard's label) are data: their
    # nearest declared ancestor is a leaf of the chart's own keys.
    leaves = {k for k in declared if not any(d.startswith(k + ".") for d in declared)}

    def is_data(key: str) -> bool:
        ancestors = [key[:i] for i in range(len(key)) if key[i] == "." and key[:i] in declared]
        return bool(ancestors) and ancestors[-1] in leaves

    assert {k for k in defaults if not is_data(k)} == declared


def test_every_key_in_values_yaml_is_commented() -> None:
    declared = set(_declared(schema()))
    lines = VALUES.read_text().splitlines()
    stack: list[tuple[int, str]] = []
    checked = 0
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(f".{k}" for _, k in stack) + f".{key}"
        stack.append((indent, key))
        if path not in declared:
            continue  # an entry of a map value (resources.requests.cpu)
        previous = lines[i - 1].strip()
        assert previous.startswith("#"), f"values.yaml line {i + 1}: `{path[1:]}` has no comment above it"
        checked += 1
    assert checked == len(declared - {".global"})


def test_helm_lint_accepts_the_schema(helm: Helm) -> None:
    assert schema()["$schema"] == "http://json-schema.org/draft-07/schema#"
    helm.run("lint", "--strict", str(CHART))


# Each is a mistake a user could make; helm must refuse the install and say where.
MISTAKES: list[tuple[dict[str, Any], str]] = [
    ({"operator": {"resyncSecond": 10}}, "additional properties 'resyncSecond' not allowed"),
    ({"crd": {"enabled": False}}, "additional properties 'crd' not allowed"),
    ({"crds": {"enabled": "no"}}, "/crds/enabled"),
    ({"scope": "Namespaced"}, "/scope"),
    ({"scope": "namespaced"}, "/namespaces"),  # namespaced with no namespace
    ({"namespaces": ["ml"]}, "/namespaces"),  # namespaces ignored in cluster scope: refused, not ignored
    ({"scope": "namespaced", "namespaces": ["ML_Team"]}, "/namespaces/0"),
    ({"scope": "namespaced", "namespaces": ["a", "a"]}, "/namespaces"),
    ({"operator": {"healthPort": "8080"}}, "/operator/healthPort"),
    ({"operator": {"healthPort": 80}}, "/operator/healthPort"),
    ({"operator": {"prometheusUrl": "prometheus:9090"}}, "/operator/prometheusUrl"),
    ({"operator": {"autoscaler": "adapter"}}, "/operator/autoscaler"),
    ({"operator": {"resources": {"requests": {"memory": "lots"}}}}, "/operator/resources/requests/memory"),
    ({"operator": {"resources": {"request": {"cpu": "1"}}}}, "additional properties 'request' not allowed"),
    ({"operator": {"tolerations": [{"key": "a", "effect": "NoSchedul"}]}}, "/operator/tolerations/0/effect"),
    ({"operator": {"affinity": {"nodeAfinity": {}}}}, "additional properties 'nodeAfinity' not allowed"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"image": {"pullPolicy": "always"}}, "/image/pullPolicy"),
    ({"mesh": {"peerAuthentication": {"enabled": True}}}, "/mesh/peerAuthentication/namespaces"),
    ({"monitoring": {"podMonitor": {"endpoint": "sidecar"}}}, "/monitoring/podMonitor/endpoint"),
    ({"monitoring": {"podMonitor": {"interval": "15 seconds"}}}, "/monitoring/podMonitor/interval"),
    ({"monitoring": {"dashboard": {"labels": {"grafana_dashboard": 1}}}}, "/monitoring/dashboard/labels"),
    ({"tests": {"enable": False}}, "additional properties 'enable' not allowed"),
]


@pytest.mark.parametrize(("values", "where"), MISTAKES, ids=[where for _, where in MISTAKES])
def test_schema_refuses_a_mistyped_value(helm: Helm, values: dict[str, Any], where: str) -> None:
    result = helm.template_text(values=values, check=False)
    assert result.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert where in result.stderr, result.stderr


def test_schema_accepts_a_full_namespaced_install(helm: Helm) -> None:
    values = {
        "scope": "namespaced",
        "namespaces": ["search", "ads"],
        "image": {"tag": "0.1.1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "ghcr-pull"}],
        "operator": {"resources": {"requests": {"cpu": 0.1, "memory": "200Mi"}}},
        "mesh": {"peerAuthentication": {"enabled": True}},
    }
    assert helm.template(values=values)
