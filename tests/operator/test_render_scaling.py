"""The autoscaler of each track: a KEDA ScaledObject on the server's gauges, or a plain HPA."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock
import pytest
import yaml

from bertmesh_operator.render import RenderOptions, render
from bertmesh_operator.states import Phase
from tests.operator.test_render_workloads import CANARY, FRAGMENTS, MakeManifest, by_key, rollout

KEDA_CRD = Path(__file__).parent / "third_party" / "keda.sh_scaledobjects.yaml"
HPA = RenderOptions(autoscaler="hpa")


@cache
def scaled_object_schema() -> dict[str, Any]:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_a_bertmesh_metric_gets_a_scaled_object_on_its_tracks_own_gauge(make_md: MakeManifest) -> None:
    manifest = make_md({"autoscaling": {"minReplicas": 2, "maxReplicas": 8, "metric": "queuedTokens", "target": 4096}})
    options = RenderOptions(prometheus_url="http://prom.monitoring.svc:9090")
    objects = by_key(render(manifest, options=options))
    assert "HorizontalPodAutoscaler/minilm-stable" not in objects
    scaled = objects["ScaledObject/minilm-stable"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "minilm-stable"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 8)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    # A sum over the track's pods against a per-pod threshold: the HPA wants ceil(sum / threshold) pods.
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prom.monitoring.svc:9090",
        "query": 'sum(bertmesh_queue_tokens{namespace="ml",model_deployment="minilm",track="stable"})',
        "threshold": "4096",
    }


def test_the_default_metric_is_queued_tokens_per_pod_by_the_pods_device(make_md: MakeManifest) -> None:
    trigger = by_key(render(make_md()))["ScaledObject/minilm-stable"]["spec"]["triggers"][0]
    assert trigger["metadata"]["query"] == (
        'sum(bertmesh_queue_tokens{namespace="ml",model_deployment="minilm",track="stable"})'
    )
    assert trigger["metadata"]["threshold"] == "512"  # a CPU pod
    gpu = make_md({"resources": {"gpus": 1}, "runtime": {"precision": "fp16"}})
    assert by_key(render(gpu))["ScaledObject/minilm-stable"]["spec"]["triggers"][0]["metadata"]["threshold"] == "16384"
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.istio-system.svc:9090"


def test_the_scaled_object_scales_like_the_hpa_would(make_md: MakeManifest) -> None:
    manifest = make_md({"autoscaling": {"scaleDownStabilizationSeconds": 45}})
    scaled = by_key(render(manifest))["ScaledObject/minilm-stable"]["spec"]
    hpa = by_key(render(manifest, options=HPA))["HorizontalPodAutoscaler/minilm-stable"]["spec"]
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 45
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


@pytest.mark.parametrize(
    ("autoscaling", "fallback"),
    [
        ({}, {"failureThreshold": 3, "replicas": 1, "behavior": "currentReplicasIfHigher"}),
        ({"minReplicas": 2, "maxReplicas": 6}, {"failureThreshold": 3, "replicas": 2,
                                                "behavior": "currentReplicasIfHigher"}),
        ({"maxReplicas": 6, "fallbackReplicas": 4}, {"failureThreshold": 3, "replicas": 4,
                                                     "behavior": "currentReplicasIfHigher"}),
        ({"maxReplicas": 3, "fallbackReplicas": 9}, {"failureThreshold": 3, "replicas": 3,
                                                     "behavior": "currentReplicasIfHigher"}),
    ],
)  # fmt: skip
def test_prometheus_unreadable_holds_the_fallback_or_what_runs(
    make_md: MakeManifest, autoscaling: dict[str, Any], fallback: dict[str, Any]
) -> None:
    spec = by_key(render(make_md({"autoscaling": autoscaling})))["ScaledObject/minilm-stable"]["spec"]
    assert spec["fallback"] == fallback


def test_each_track_queries_its_own_pods(make_md: MakeManifest, t0: datetime) -> None:
    manifest = make_md({"traffic": {"canary": CANARY}, "autoscaling": {"minReplicas": 3, "maxReplicas": 5}})
    objects = by_key(render(manifest, state=rollout(manifest, t0, Phase.PROGRESSING)))
    canary = objects["ScaledObject/minilm-canary"]["spec"]
    assert canary["scaleTargetRef"]["name"] == "minilm-canary"
    assert 'track="canary"' in canary["triggers"][0]["metadata"]["query"]
    assert (canary["minReplicaCount"], canary["maxReplicaCount"], canary["fallback"]["replicas"]) == (1, 5, 1)
    stable = objects["ScaledObject/minilm-stable"]["spec"]
    assert 'track="stable"' in stable["triggers"][0]["metadata"]["query"]
    assert objects["ScaledObject/minilm-canary"]["metadata"]["labels"]["serving.bertmesh.io/track"] == "canary"


def test_cpu_keeps_the_plain_hpa_under_keda(make_md: MakeManifest) -> None:
    objects = by_key(render(make_md({"autoscaling": {"metric": "cpu"}})))
    assert not [key for key in objects if key.startswith("ScaledObject/")]
    metrics = objects["HorizontalPodAutoscaler/minilm-stable"]["spec"]["metrics"]
    assert metrics == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]


@pytest.mark.parametrize(
    ("fragment", "metric"),
    [
        ({}, {"type": "Pods", "pods": {"metric": {"name": "bertmesh_queue_tokens"},
                                       "target": {"type": "AverageValue", "averageValue": "512"}}}),
        ({"metric": "inflight"}, {"type": "Pods", "pods": {"metric": {"name": "bertmesh_inflight_requests"},
                                  "target": {"type": "AverageValue", "averageValue": "16"}}}),
        ({"metric": "queuedTokens", "target": 4096},
         {"type": "Pods", "pods": {"metric": {"name": "bertmesh_queue_tokens"},
                                   "target": {"type": "AverageValue", "averageValue": "4096"}}}),
        ({"metric": "cpu"},
         {"type": "Resource", "resource": {"name": "cpu",
                                           "target": {"type": "Utilization", "averageUtilization": 70}}}),
    ],
)  # fmt: skip
def test_the_hpa_autoscaler_reads_pods_metrics(
    make_md: MakeManifest, fragment: dict[str, Any], metric: dict[str, Any]
) -> None:
    manifest = make_md({"autoscaling": {"minReplicas": 2, "maxReplicas": 8, **fragment}})
    objects = by_key(render(manifest, options=HPA))
    assert not [key for key in objects if key.startswith("ScaledObject/")]
    hpa = objects["HorizontalPodAutoscaler/minilm-stable"]["spec"]
    assert hpa["metrics"] == [metric]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "minilm-stable"}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


@pytest.mark.parametrize("fragment", FRAGMENTS)
@pytest.mark.parametrize("phase", list(Phase))
def test_scaled_objects_pass_kedas_own_schema(
    make_md: MakeManifest, t0: datetime, fragment: dict[str, Any], phase: Phase
) -> None:
    manifest = make_md(fragment | {"traffic": fragment.get("traffic", {"canary": CANARY})})
    manifest["metadata"]["uid"] = "1234"
    scaled = [o for o in render(manifest, state=rollout(manifest, t0, phase)) if o["kind"] == "ScaledObject"]
    for obj in scaled:
        jsonschema.Draft7Validator(scaled_object_schema()).validate(obj)
    tracks = 2 if phase in (Phase.PROGRESSING, Phase.PROMOTING) else 1  # an aborted canary has no autoscaler
    assert len(scaled) == (0 if fragment.get("autoscaling", {}).get("metric") == "cpu" else tracks)


def test_keda_schema_refuses_what_it_should() -> None:
    # The schema check above is only worth something if the schema is strict where it matters.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(scaled_object_schema()).validate(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "prometheus"}]},
            }
        )
