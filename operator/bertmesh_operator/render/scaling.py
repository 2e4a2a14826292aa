"""How many pods run and how many may be disrupted: an autoscaling/v2 HPA per track and one PDB.

The model-aware metrics (in-flight requests, queued tokens) are Pods metrics served by a custom-metrics
adapter (e.g. prometheus-adapter) from the server's own gauges; cpu needs only metrics-server.
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import RenderContext, Track

# The server's gauges behind each spec metric (the model-server container contract).
POD_METRICS = {"inflight": "bertmesh_inflight_requests", "queuedTokens": "bertmesh_queue_tokens"}


def _metric(ctx: RenderContext) -> dict[str, Any]:
    autoscaling = ctx.spec.autoscaling
    target = autoscaling.effective_target
    if autoscaling.metric == "cpu":
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
        }
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": POD_METRICS[autoscaling.metric]},
            "target": {"type": "AverageValue", "averageValue": str(target)},
        },
    }


def render_hpa(ctx: RenderContext, track: Track) -> dict[str, Any]:
    """The HorizontalPodAutoscaler of one track (the canary starts from one replica)."""
    autoscaling = ctx.spec.autoscaling
    name = ctx.track_name(track.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.metadata(name, "autoscaler", track.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": autoscaling.min_replicas if track.name == "stable" else 1,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [_metric(ctx)],
            "behavior": {
                # Scale up fast (double, or +2 pods, per minute): a queue that fills sheds calls.
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 60},
                        {"type": "Pods", "value": 2, "periodSeconds": 60},
                    ],
                },
                # Scale down slowly: a model pod takes minutes to come back.
                "scaleDown": {
                    "stabilizationWindowSeconds": autoscaling.scale_down_stabilization_seconds,
                    "selectPolicy": "Min",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                },
            },
        },
    }


def render_pdb(ctx: RenderContext) -> dict[str, Any]:
    """At most one pod of the ModelDeployment evicted at a time (drains proceed even at one replica)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": ctx.metadata(ctx.name, "disruption-budget"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": ctx.selector()},
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
