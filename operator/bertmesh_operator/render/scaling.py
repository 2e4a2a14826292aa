"""How many pods run and how many may be disrupted: an autoscaler per track and one PDB.

The model-aware metrics (in-flight requests, queued tokens) are the server's own gauges in Prometheus. With
the `keda` autoscaler (the default) each track gets a KEDA ScaledObject whose Prometheus trigger reads them
directly, so nothing else needs installing; with `hpa` they are Pods metrics of a plain HPA, which a
custom-metrics adapter (e.g. prometheus-adapter) must serve. `cpu` is always a plain HPA (metrics-server).
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import RenderContext, Track, TrackName

# The server's gauges behind each spec metric (the model-server container contract).
POD_METRICS = {"inflight": "bertmesh_inflight_requests", "queuedTokens": "bertmesh_queue_tokens"}


def _metric(ctx: RenderContext) -> dict[str, Any]:
    autoscaling = ctx.spec.autoscaling
    target = autoscaling.effective_target(ctx.spec.resources.gpus)
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


# Consecutive failed reads of Prometheus after which a ScaledObject holds its fallback replica count.
FALLBACK_FAILURE_THRESHOLD = 3


def uses_keda(ctx: RenderContext) -> bool:
    """Whether the tracks are scaled by KEDA ScaledObjects (a bertmesh metric with the keda autoscaler)."""
    return ctx.options.autoscaler == "keda" and ctx.spec.autoscaling.metric != "cpu"


def _min_replicas(ctx: RenderContext, track: TrackName) -> int:
    # The canary starts from one replica: it takes a share of traffic only step by step.
    return ctx.spec.autoscaling.min_replicas if track == "stable" else 1


def _behavior(ctx: RenderContext) -> dict[str, Any]:
    """The HPA behaviour every track's autoscaler gets, whichever object carries it."""
    return {
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
            "stabilizationWindowSeconds": ctx.spec.autoscaling.scale_down_stabilization_seconds,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
    }


def render_hpa(ctx: RenderContext, track: Track) -> dict[str, Any]:
    """The HorizontalPodAutoscaler of one track (the canary starts from one replica)."""
    name = ctx.track_name(track.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.metadata(name, "autoscaler", track.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": _min_replicas(ctx, track.name),
            "maxReplicas": ctx.spec.autoscaling.max_replicas,
            "metrics": [_metric(ctx)],
            "behavior": _behavior(ctx),
        },
    }


def track_query(ctx: RenderContext, track: TrackName) -> str:
    """PromQL for the sum of the track's gauge over its pods.

    Selected by the labels the chart's PodMonitor writes (namespace, model_deployment, track). A sum, not an
    average: KEDA's trigger is an AverageValue target, so the HPA divides it by the threshold (the per-pod
    target) to get the replicas wanted.
    """
    gauge = POD_METRICS[ctx.spec.autoscaling.metric]
    return f'sum({gauge}{{namespace="{ctx.namespace}",model_deployment="{ctx.name}",track="{track}"}})'


def render_scaled_object(ctx: RenderContext, track: Track) -> dict[str, Any]:
    """The KEDA ScaledObject of one track: a Prometheus trigger on the track's own gauge, the HPA's behaviour."""
    autoscaling = ctx.spec.autoscaling
    name = ctx.track_name(track.name)
    low = _min_replicas(ctx, track.name)
    fallback = autoscaling.fallback_replicas if autoscaling.fallback_replicas is not None else low
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": ctx.metadata(name, "autoscaler", track.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": low,
            "maxReplicaCount": autoscaling.max_replicas,
            # Prometheus unreadable: keep this many, or what runs when that is more (never a scale-down on no
            # data: the load that is not measured is still there).
            "fallback": {
                "failureThreshold": FALLBACK_FAILURE_THRESHOLD,
                "replicas": min(max(fallback, low), autoscaling.max_replicas),
                "behavior": "currentReplicasIfHigher",
            },
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(ctx)}},
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": ctx.options.prometheus_url,
                        "query": track_query(ctx, track.name),
                        "threshold": str(autoscaling.effective_target(ctx.spec.resources.gpus)),
                    },
                }
            ],
        },
    }


def render_autoscaler(ctx: RenderContext, track: Track) -> dict[str, Any]:
    """The autoscaler of one track: a ScaledObject for a bertmesh metric under KEDA, else an HPA."""
    return render_scaled_object(ctx, track) if uses_keda(ctx) else render_hpa(ctx, track)


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
