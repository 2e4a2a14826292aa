"""The Deployment of one track: the bertmesh server container, its probes, security and scheduling.

The container runs `bertmesh serve` with every limit spelled out (what you see in the manifest is what
runs), as non-root on a read-only root filesystem under Pod Security "restricted", with gRPC health probes
that follow the server's health (NOT_SERVING until warm and from SIGTERM on).
"""

from __future__ import annotations

import math
from typing import Any

from bertmesh_operator.render.context import (
    CONTAINER,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    REVISION_LABEL,
    RenderContext,
    Track,
)
from bertmesh_operator.render.storage import MODEL_VOLUME, TMP_VOLUME, model_source
from bertmesh_operator.schema import quantity_value
from bertmesh_operator.spec import ResourcesSpec, ServingSpec

SERVER_UID = 1000
GPU_RESOURCE = "nvidia.com/gpu"
# Endpoints take a moment to drop a terminating pod everywhere; the server keeps serving meanwhile.
PRE_STOP_SECONDS = 5
GRACE_MARGIN_SECONDS = 10


def server_args(name: str, serving: ServingSpec, resources: ResourcesSpec, model_path: str) -> list[str]:
    """The `bertmesh serve` arguments for one track (the model-server container contract)."""
    model, runtime = serving.model, serving.runtime
    threads = runtime.threads or max(1, math.ceil(quantity_value(resources.cpu)))
    options: list[tuple[str, object]] = [
        ("--model", model_path),
        ("--model-name", name),
        ("--revision", model.revision or serving.revision),
        ("--task", model.task),
        ("--host", "0.0.0.0"),
        ("--port", GRPC_PORT),
        ("--http-port", HTTP_PORT),
        ("--metrics-port", METRICS_PORT),
        ("--device", "cuda" if resources.gpus > 0 else "cpu"),
        ("--precision", runtime.precision),
        ("--max-batch-tokens", runtime.max_batch_tokens),
        ("--max-batch-requests", runtime.max_batch_requests),
        ("--max-batch-delay-ms", format(runtime.max_batch_delay_ms, "g")),
        ("--max-queued-tokens", runtime.max_queued_tokens),
        ("--max-inputs-per-request", runtime.max_inputs_per_request),
        ("--max-chars-per-input", runtime.max_chars_per_input),
        ("--max-tokens-per-input", runtime.max_tokens_per_input),
        ("--max-message-bytes", runtime.max_message_bytes),
        ("--cache-entries", runtime.cache_entries),
        ("--grace-seconds", runtime.grace_seconds),
        # The preStop pause already keeps the pod serving while endpoints drop it; a second wait inside the
        # server would only eat into the termination grace.
        ("--drain-delay-seconds", 0),
        ("--threads", threads),
    ]
    return [part for flag, value in options for part in (flag, str(value))]


def termination_grace_seconds(serving: ServingSpec) -> int:
    """The pod's grace period: preStop pause, then the server's own drain, then a margin."""
    return PRE_STOP_SECONDS + serving.runtime.grace_seconds + GRACE_MARGIN_SECONDS


def _probe(period: int, timeout: int, failures: int) -> dict[str, Any]:
    # service "" is the whole-server health the bertmesh server reports (and what kubelet asks by default).
    return {
        "grpc": {"port": GRPC_PORT, "service": ""},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _container(ctx: RenderContext, track: Track, model_path: str) -> dict[str, Any]:
    resources = ctx.spec.resources
    runtime = track.serving.runtime
    limits: dict[str, Any] = {"memory": resources.memory}
    if resources.gpus > 0:
        limits[GPU_RESOURCE] = resources.gpus
    return {
        "name": CONTAINER,
        "image": runtime.image,
        "imagePullPolicy": runtime.image_pull_policy,
        "command": ["bertmesh", "serve"],
        "args": server_args(ctx.name, track.serving, resources, model_path),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "http-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # No hub downloads ever; libraries that cache under $HOME write to the /tmp volume.
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        ],
        # No CPU limit: CFS throttling would add tail latency; the request reserves the share.
        "resources": {"requests": {"cpu": resources.cpu, "memory": resources.memory}, "limits": limits},
        # Model load can take minutes (large checkpoints, GPU warm-up): allow 10 minutes to start.
        "startupProbe": _probe(period=5, timeout=2, failures=120),
        "readinessProbe": _probe(period=5, timeout=2, failures=2),
        "livenessProbe": _probe(period=10, timeout=5, failures=6),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": SERVER_UID,
            "runAsGroup": SERVER_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": MODEL_VOLUME, "mountPath": "/mnt/models", "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }


def _tolerations(ctx: RenderContext) -> list[dict[str, Any]]:
    resources = ctx.spec.resources
    tolerations = [t.wire() for t in resources.tolerations or ()]
    gpu = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    if resources.gpus > 0 and gpu not in tolerations:
        tolerations.append(gpu)
    return tolerations


def _spread(ctx: RenderContext, track: Track) -> list[dict[str, Any]]:
    # Soft spreading across zones and nodes: never blocks scheduling on a small or GPU-scarce cluster.
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": ctx.selector(track.name)},
            "matchLabelKeys": ["pod-template-hash"],
        }
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]


def pod_template(ctx: RenderContext, track: Track) -> dict[str, Any]:
    """The pod template of one track."""
    source = model_source(ctx, track.serving.model)
    grace = termination_grace_seconds(track.serving)
    labels = {
        **ctx.labels("model-server", track.name),
        REVISION_LABEL: track.revision,
        "app.kubernetes.io/version": track.serving.model.revision or track.revision,
        "service.istio.io/canonical-name": ctx.name,
        "service.istio.io/canonical-revision": track.revision,
        "sidecar.istio.io/inject": "true",
    }
    annotations = {
        "kubectl.kubernetes.io/default-container": CONTAINER,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
        # Keep the sidecar draining as long as the server does, so in-flight calls are answered.
        "proxy.istio.io/config": f'{{"terminationDrainDuration": "{grace - GRACE_MARGIN_SECONDS}s"}}',
    }
    spec: dict[str, Any] = {
        "serviceAccountName": ctx.name,
        # The server never talks to the Kubernetes API; Istio mounts its own token.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVER_UID,
            "runAsGroup": SERVER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": _spread(ctx, track),
        "containers": [_container(ctx, track, source.model_path)],
        "volumes": [*source.volumes, {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if source.init_containers:
        spec["initContainers"] = source.init_containers
    if ctx.spec.resources.node_selector:
        spec["nodeSelector"] = dict(ctx.spec.resources.node_selector)
    tolerations = _tolerations(ctx)
    if tolerations:
        spec["tolerations"] = tolerations
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}


def render_deployment(ctx: RenderContext, track: Track) -> dict[str, Any]:
    """The Deployment of one track; replicas are left to its HorizontalPodAutoscaler unless scaled down."""
    spec: dict[str, Any] = {
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": ctx.selector(track.name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": pod_template(ctx, track),
    }
    if track.scaled_down:
        spec["replicas"] = 0
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(ctx.track_name(track.name), "model-server", track.name),
        "spec": spec,
    }
