"""The ModelDeployment CRD on a real apiserver: it installs, its printer columns work, and the API server itself
refuses invalid ModelDeployments (OpenAPI bounds and CEL rules) with messages naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bertmesh_operator.crd import CRD_NAME
from bertmesh_operator.errors import InvalidSpecError
from bertmesh_operator.resource import parse_model_deployment
from tests.e2e.cluster import KubeApi
from tests.e2e.kube_objects import manifest
from tests.e2e.operator_process import get_json

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def md(name: str = "minilm", **spec: Any) -> dict[str, Any]:
    """A ModelDeployment of the PVC model, with `spec` on top."""
    return manifest(name, {"model": {"storageUri": "pvc://models/minilm"}} | spec)


def test_the_crd_is_established_and_kubectl_prints_its_columns(md_crd: KubeApi, namespace: str) -> None:
    crd = get_json(md_crd, "crd", CRD_NAME)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    assert established["NamesAccepted"] == "True"
    for path in EXAMPLES:
        md_crd.kubectl("apply", "-n", namespace, "-f", str(path))
    table = md_crd.kubectl("get", "md", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "MODEL", "CANARY", "%", "MODE", "REPLICAS", "AGE"]
    assert {row.split()[0] for row in table[1:]} == {"embed-public", "minilm-embed", "sentiment"}
    assert "s3://models/sentiment/v1" in md_crd.kubectl("get", "modeldeployment", "sentiment", "-n", namespace).stdout
    wide = md_crd.kubectl("get", "md", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-3:] == ["PHASE", "REVISION", "AGE"]
    # Defaults are applied by the API server from the schema.
    stored = get_json(md_crd, "md", "minilm-embed", "-n", namespace)
    assert stored["spec"]["traffic"] == {"retryAttempts": 2, "timeout": "30s"}
    assert stored["spec"]["runtime"]["maxQueuedTokens"] == 262144


INVALID = [
    pytest.param(
        md(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
        ["spec.autoscaling", "minReplicas must not exceed maxReplicas"],
        id="min-above-max",
    ),
    pytest.param(
        md(traffic={"canary": {"model": {"storageUri": "pvc://models/v2"}, "steps": [50, 10]}}),
        ["spec.traffic.canary.steps", "strictly ascending"],
        id="steps-not-ascending",
    ),
    pytest.param(
        md(traffic={"canary": {"model": {"storageUri": "pvc://models/v2"}, "steps": [10, 150]}}),
        ["spec.traffic.canary.steps[1]", "less than or equal to 100"],
        id="step-above-100",
    ),
    pytest.param(
        md(model={"storageUri": "ftp://models/minilm"}),
        ["spec.model.storageUri", "should match"],
        id="bad-storage-scheme",
    ),
    pytest.param(md(name="m" * 53), ["metadata.name", "may not be more than 52"], id="name-too-long"),
    pytest.param(md(name="1minilm"), ["metadata.name must be a DNS-1035 label"], id="name-starts-with-digit"),
    pytest.param(
        md(traffic={"canary": {"steps": [10, 50]}}),
        ["spec.traffic.canary", "canary needs a model or runtime override"],
        id="canary-without-change",
    ),
    pytest.param(
        md(traffic={"canary": {"runtime": {"precision": "fp16"}}, "timeout": "2h"}),
        ["spec.traffic", "timeout must be between 1s and 1h"],
        id="timeout-out-of-range",
    ),
    pytest.param(
        md(rateLimit={"requestsPerSecond": 100, "burst": 10}),
        ["spec.rateLimit.burst", "burst must be at least requestsPerSecond"],
        id="burst-below-rate",
    ),
    pytest.param(
        md(runtime={"precision": "fp16"}),
        ["spec.runtime.precision", "fp16/bf16 needs gpus > 0"],
        id="fp16-on-cpu",
    ),
    pytest.param(
        md(resources={"gpus": 2}),
        ["spec.resources.gpus", "less than or equal to 1"],
        id="two-gpus-per-replica",
    ),
    pytest.param(
        md(resources={"nodeSelector": {"bad key!": "x"}}),
        ["spec.resources.nodeSelector", "nodeSelector keys must be label keys"],
        id="node-selector-key",
    ),
]


@pytest.mark.parametrize(("manifest", "expected"), INVALID)
def test_the_api_server_refuses_an_invalid_model_deployment(
    md_crd: KubeApi, namespace: str, manifest: dict[str, Any], expected: list[str]
) -> None:
    result = md_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0, f"accepted: {manifest}"
    for part in expected:
        assert part in result.stderr, result.stderr
    assert md_crd.kubectl("get", "md", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_a_valid_model_deployment_is_accepted_and_status_is_a_subresource(md_crd: KubeApi, namespace: str) -> None:
    manifest = md(traffic={"canary": {"model": {"storageUri": "pvc://models/v2"}, "steps": [10, 50]}})
    md_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))
    # A write to the main resource cannot set status (the operator's memory is the status subresource).
    with_status = copy.deepcopy(manifest)
    with_status["status"] = {"phase": "Aborted"}
    md_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(with_status))
    assert "status" not in get_json(md_crd, "md", "minilm", "-n", namespace)


def _embedder(canary: dict[str, Any], **model: Any) -> dict[str, Any]:
    """An embedder (revision v1) with this canary; `model` adds to or replaces stable's model fields."""
    return md(model={"storageUri": "pvc://models/minilm", "task": "embedding", "revision": "v1", **model},
              traffic={"canary": canary})  # fmt: skip


# The space rule in CEL and in Python on the same specs: refused by both, or accepted by both.
SPACE_RULE = [
    pytest.param(_embedder({"model": {"storageUri": "pvc://models/bge"}, "steps": [10, 50]}), False, id="new-uri"),
    pytest.param(
        _embedder({"model": {"embeddingSpace": "s2"}, "stepWeight": 20}, embeddingSpace="s1"), False, id="new-space"
    ),
    pytest.param(
        _embedder({"model": {"revision": "v2"}, "maxWeight": 30}, embeddingSpace="s1"), False, id="declared-reset"
    ),
    pytest.param(_embedder({"model": {"storageUri": "pvc://models/minilm"}, "steps": [10]}), False, id="rev-dropped"),
    pytest.param(
        _embedder({"model": {"storageUri": "pvc://models/bge", "task": "embedding"}, "steps": [10]}, task="auto"),
        False,
        id="canary-embeds",
    ),
    pytest.param(_embedder({"model": {"storageUri": "pvc://models/bge"}}), True, id="reindex-no-steps"),
    pytest.param(
        _embedder({"model": {"storageUri": "pvc://m/bge", "embeddingSpace": "s1"}, "steps": [10]}, embeddingSpace="s1"),
        True,
        id="same-declared-space",
    ),
    pytest.param(_embedder({"runtime": {"precision": "int8"}, "steps": [10]}), True, id="runtime-only"),
    pytest.param(_embedder({"model": {"revision": "v1"}, "steps": [10]}), True, id="same-revision"),
    pytest.param(
        _embedder({"model": {"storageUri": "pvc://models/bge"}, "steps": [10]}, task="fill-mask"), True, id="no-vectors"
    ),
    pytest.param(_embedder({"model": {"storageUri": "pvc://models/bge"}, "steps": [10]}, task="auto"), True, id="auto"),
]


@pytest.mark.parametrize(("manifest", "accepted"), SPACE_RULE)
def test_weighted_steps_across_embedding_spaces_are_refused_by_cel_as_by_pydantic(
    md_crd: KubeApi, namespace: str, manifest: dict[str, Any], accepted: bool
) -> None:
    result = md_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        assert "spec.traffic.canary" in result.stderr and "never split by weight" in result.stderr, result.stderr
    try:
        parse_model_deployment(manifest)
    except InvalidSpecError as error:
        assert not accepted, error
        assert "never split by weight" in str(error)
    else:
        assert accepted
