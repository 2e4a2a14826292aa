"""The examples: each is a valid ModelDeployment whose rendered objects a cluster accepts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock
import kubernetes_validate
import pytest
import yaml

from bertmesh_operator.commands.render import render_documents
from bertmesh_operator.crd import openapi_schema
from bertmesh_operator.render import RenderOptions
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, initial_state, step
from bertmesh_operator.states import Phase
from tests.example_files import EXAMPLE_DIR, model_deployment_examples

EXAMPLES = model_deployment_examples()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rendered(path: Path) -> dict[str, dict[str, Any]]:
    objects = render_documents(path.read_text(), RenderOptions(), NOW)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def test_the_examples_exist() -> None:
    assert [p.relative_to(EXAMPLE_DIR).as_posix() for p in EXAMPLES] == [
        "cpu-embedding.yaml",
        "gpu-classifier-canary.yaml",
        "rate-limited.yaml",
        "semantic-search/embedder.yaml",
        "semantic-search/reranker.yaml",
    ]


def test_semantic_search_pairs_an_embedder_with_a_cross_encoder_reranker() -> None:
    embedder = rendered(EXAMPLE_DIR / "semantic-search" / "embedder.yaml")["Deployment/search-embed-stable"]
    reranker = rendered(EXAMPLE_DIR / "semantic-search" / "reranker.yaml")["Deployment/search-rerank-stable"]
    tasks = [d["spec"]["template"]["spec"]["containers"][0]["args"] for d in (embedder, reranker)]
    assert [args[args.index("--task") + 1] for args in tasks] == ["embedding", "rerank"]
    init = reranker["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"] == ["s3://models/ms-marco-minilm-l6-v2/v1", "/mnt/models"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_the_crd_schema(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert path.read_text().startswith("#"), "every example explains itself first"
    jsonschema.Draft202012Validator(openapi_schema()).validate(manifest)
    parse_model_deployment(manifest)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("version", ["1.33", "1.37"])
def test_example_renders_objects_a_cluster_accepts(path: Path, version: str) -> None:
    for key, obj in rendered(path).items():
        assert obj["metadata"]["namespace"] == "default", key
        if obj["apiVersion"].split("/")[0].endswith(("istio.io", "keda.sh")):
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_cpu_embedding() -> None:
    objects = rendered(EXAMPLES[0])
    assert "Deployment/minilm-embed-canary" not in objects
    hpa = objects["HorizontalPodAutoscaler/minilm-embed-stable"]["spec"]
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    pod = objects["Deployment/minilm-embed-stable"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "bertmesh-models", "readOnly": True}
    args = pod["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/mnt/models/all-MiniLM-L6-v2"
    assert args[args.index("--task") + 1] == "embedding"


def test_gpu_classifier_canary_starts_its_canary() -> None:
    objects = rendered(EXAMPLES[1])
    canary = objects["Deployment/sentiment-canary"]["spec"]["template"]["spec"]
    assert canary["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert canary["initContainers"][0]["args"] == ["s3://models/sentiment/v2", "/mnt/models"]
    stable = objects["Deployment/sentiment-stable"]["spec"]["template"]["spec"]
    assert stable["initContainers"][0]["args"] == ["s3://models/sentiment/v1", "/mnt/models"]
    pin, weighted, *_http = objects["VirtualService/sentiment"]["spec"]["http"]
    assert pin["match"] == [{"headers": {"x-bertmesh-track": {"exact": "canary"}}, "port": 50051}]
    # Weight 0 until a canary replica is ready.
    assert [r["weight"] for r in weighted["route"]] == [100, 0]


def test_gpu_classifier_canary_can_be_folded_after_promotion() -> None:
    manifest = yaml.safe_load(EXAMPLES[1].read_text())
    spec = parse_model_deployment(manifest).spec
    state = step(initial_state(spec), None, spec, NOW)
    state = step(state, Observation(canary_ready_replicas=1), spec, NOW)
    state = step(state, None, spec, NOW, Command("promote", state.canary_revision or ""))
    state = step(state, Observation(stable_ready=True), spec, NOW)
    assert state.phase is Phase.STABLE
    folded = manifest["spec"] | {"model": manifest["spec"]["model"] | manifest["spec"]["traffic"]["canary"]["model"]}
    folded["traffic"] = {"timeout": "10s"}
    folded_spec = parse_model_deployment(manifest | {"spec": folded}).spec
    after = step(state, None, folded_spec, NOW)
    assert (after.phase, after.weights.canary) == (Phase.STABLE, 0)


def test_rate_limited_example() -> None:
    objects = rendered(EXAMPLES[2])
    patches = objects["EnvoyFilter/embed-public-ratelimit"]["spec"]["configPatches"]
    config = patches[1]["patch"]["value"]["typed_config"]
    assert config["rate_limited_as_resource_exhausted"] is True
    assert config["descriptors"][0]["token_bucket"] == {
        "max_tokens": 100,
        "tokens_per_fill": 50,
        "fill_interval": "1s",
    }
    (rule,) = objects["AuthorizationPolicy/embed-public"]["spec"]["rules"]
    assert rule["from"] == [
        {"source": {"namespaces": ["batch"]}},
        {"source": {"principals": ["cluster.local/ns/web/sa/frontend"]}},
    ]
