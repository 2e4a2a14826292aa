"""The generated CRD: current, a valid structural schema with bounds everywhere, same defaults and rules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bertmesh_operator import spec as spec_module
from bertmesh_operator.crd import CRD_PATH, crd_manifest, crd_yaml, openapi_schema
from bertmesh_operator.resource import NAME_RULE, parse_model_deployment
from bertmesh_operator.schema import CrdModel

MakeManifest = Callable[..., dict[str, Any]]


def test_committed_crd_is_current() -> None:
    assert CRD_PATH.read_text() == crd_yaml(), "stale CRD: run `.venv/bin/python hack/gen_crd.py`"


def test_generator_check_mode(repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(repo / "hack" / "gen_crd.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_crd_is_a_valid_kubernetes_object() -> None:
    manifest = yaml.safe_load(CRD_PATH.read_text())
    assert manifest == crd_manifest()
    kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_crd_names_and_columns() -> None:
    crd = crd_manifest()["spec"]
    assert crd["names"]["kind"] == "ModelDeployment"
    assert crd["names"]["shortNames"] == ["md"]
    assert crd["scope"] == "Namespaced"
    (version,) = crd["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert columns == ["Ready", "Model", "Canary %", "Mode", "Replicas", "Age"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_bounded() -> None:
    problems = []
    for path, node in _nodes(openapi_schema()):
        kind = node.get("type")
        if kind is None:
            problems.append(f"{path}: no type")
        forbidden_keywords = ("$ref", "anyOf", "oneOf", "allOf", "title", "const", "uniqueItems", "nullable")
        for forbidden in (*forbidden_keywords, "patternProperties"):  # the API server refuses them
            if forbidden in node:
                problems.append(f"{path}: {forbidden}")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties false")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            problems.append(f"{path}: unbounded string")
        if kind in ("integer", "number") and not ("minimum" in node and "maximum" in node):
            problems.append(f"{path}: unbounded number")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{path}: unbounded list")
        open_object = "properties" not in node and "maxProperties" not in node
        if kind == "object" and path not in ("", ".metadata") and open_object:
            problems.append(f"{path}: object without properties or maxProperties")
    assert problems == []


def test_object_defaults_are_spelled_out() -> None:
    """The API server checks a default against the CEL rules as written, without defaulting inside it first:
    `default: {}` on runtime/resources/autoscaling/traffic fails their rules ("no such key") at CRD creation."""
    for path, node in _nodes(openapi_schema()):
        if node.get("type") == "object" and "default" in node:
            fields = {name: sub["default"] for name, sub in node["properties"].items() if "default" in sub}
            assert node["default"] == fields, path


def _rules_at(schema: dict[str, Any]) -> dict[str, list[str]]:
    return {path: [r["rule"] for r in node["x-kubernetes-validations"]] for path, node in _nodes(schema)
            if "x-kubernetes-validations" in node}  # fmt: skip


def test_every_cel_rule_of_every_model_is_in_the_crd() -> None:
    in_crd = {rule for rules in _rules_at(openapi_schema()).values() for rule in rules}
    models = [getattr(spec_module, name) for name in spec_module.__all__]
    expected = {rule.rule for model in models if isinstance(model, type) and issubclass(model, CrdModel)
                for rule in model.cel_rules} | {NAME_RULE.rule}  # fmt: skip
    assert expected <= in_crd
    assert len(expected) >= 15


def test_cross_field_rules_sit_on_the_object_whose_fields_they_relate() -> None:
    rules = _rules_at(openapi_schema())
    assert "self.minReplicas <= self.maxReplicas" in rules[".spec.autoscaling"]
    canary = " ".join(rules[".spec.traffic.canary"])
    assert "isSorted()" in canary and "!(has(self.steps) && has(self.stepWeight))" in canary
    assert any("has(self.canary.model) || has(self.canary.runtime)" in r for r in rules[".spec.traffic"])
    steps = openapi_schema()["properties"]["spec"]["properties"]["traffic"]["properties"]["canary"]
    steps = steps["properties"]["steps"]
    # A sorted set is strictly ascending; item bounds keep each step within 1..100.
    assert steps["x-kubernetes-list-type"] == "set"
    assert (steps["items"]["minimum"], steps["items"]["maximum"]) == (1, 100)


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: defaults fill absent fields, recursively."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [_apply_defaults(schema["items"], v) for v in value]
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = sub["default"]
        if name in out:
            out[name] = _apply_defaults(sub, out[name])
    return out


@pytest.mark.parametrize(
    "fragment",
    [
        {},
        {"traffic": {"canary": {"model": {"storageUri": "pvc://m/v2"}, "steps": [5, 50]}}},
        {"rateLimit": {"requestsPerSecond": 5}, "resources": {"tolerations": [{"key": "k"}]}},
    ],
)
def test_api_server_defaults_equal_pydantic_defaults(make_md: MakeManifest, fragment: dict[str, Any]) -> None:
    manifest = make_md(fragment)
    schema = openapi_schema()["properties"]["spec"]
    defaulted = _apply_defaults(schema, manifest["spec"])
    parsed = parse_model_deployment(manifest).spec
    assert defaulted == parsed.wire()
    # So the revision of what the operator reads back equals the revision of what `bertmesh render` saw.
    reparsed = parse_model_deployment(manifest | {"spec": defaulted}).spec
    assert reparsed.desired_serving.revision == parsed.desired_serving.revision
