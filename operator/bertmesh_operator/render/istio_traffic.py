"""Istio routing: the VirtualService that splits traffic between tracks and the DestinationRule behind it.

Weights come from the rollout state (they always sum to 100). Retries cover only calls that never reached a
server or that the server refused before work began (connect-failure, refused-stream, unavailable,
cancelled): never resource-exhausted, which is the rate limiter or the server shedding load, and retrying it
would only multiply the overload.

A re-index rollout (`rollout_mode`) mirrors a share of the weighted route's calls to the canary: Envoy sends a
copy, discards its answer and never waits for it, so callers only ever get vectors of stable's space.
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import GRPC_PORT, TRACK_LABEL, RenderContext, TrackName

RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"
NETWORKING = "networking.istio.io/v1"


def _destination(ctx: RenderContext, subset: TrackName) -> dict[str, Any]:
    return {"host": ctx.host, "subset": subset, "port": {"number": GRPC_PORT}}


def _resilience(ctx: RenderContext) -> dict[str, Any]:
    traffic = ctx.spec.traffic
    retries: dict[str, Any] = {"attempts": traffic.retry_attempts}
    if traffic.retry_attempts > 0:
        retries |= {"perTryTimeout": traffic.timeout, "retryOn": RETRY_ON}
    return {"timeout": traffic.timeout, "retries": retries}


def render_virtual_service(ctx: RenderContext) -> dict[str, Any]:
    """Routes: the header pin to the canary first (while one is routable), then the split and any mirror."""
    weights = ctx.state.weights
    routes: list[dict[str, Any]] = []
    split = [{"destination": _destination(ctx, "stable"), "weight": weights.stable}]
    if ctx.canary_routable:
        pin = ctx.spec.traffic.policy.header_pin
        routes.append(
            {
                "name": "canary-pin",
                "match": [{"headers": {pin.name: {"exact": pin.value}}}],
                "route": [{"destination": _destination(ctx, "canary"), "weight": 100}],
                **_resilience(ctx),
            }
        )
        split.append({"destination": _destination(ctx, "canary"), "weight": weights.canary})
    weighted: dict[str, Any] = {"name": "weighted", "route": split, **_resilience(ctx)}
    if ctx.canary_routable and ctx.state.mirror_percent > 0:
        weighted["mirror"] = _destination(ctx, "canary")
        weighted["mirrorPercentage"] = {"value": float(ctx.state.mirror_percent)}
    routes.append(weighted)
    return {
        "apiVersion": NETWORKING,
        "kind": "VirtualService",
        "metadata": ctx.metadata(ctx.name, "routing"),
        "spec": {"hosts": [ctx.host], "http": routes},
    }


def render_destination_rule(ctx: RenderContext) -> dict[str, Any]:
    """Subsets per track, mTLS, least-request balancing, a connection pool and outlier detection."""
    runtime = ctx.state.stable.runtime
    # A circuit breaker well above what every replica can queue, so it only trips on a runaway client.
    max_requests = max(1024, 4 * ctx.spec.autoscaling.max_replicas * runtime.max_batch_requests)
    return {
        "apiVersion": NETWORKING,
        "kind": "DestinationRule",
        "metadata": ctx.metadata(ctx.name, "routing"),
        "spec": {
            "host": ctx.host,
            "trafficPolicy": {
                "loadBalancer": {"simple": "LEAST_REQUEST"},
                "connectionPool": {
                    "tcp": {"connectTimeout": "5s"},
                    "http": {"http2MaxRequests": max_requests},
                },
                # Eject only on gateway errors (UNAVAILABLE, DEADLINE_EXCEEDED as 503/504): INTERNAL from one
                # bad input must not eject a healthy pod, and RESOURCE_EXHAUSTED (429) is load, not failure.
                "outlierDetection": {
                    "consecutive5xxErrors": 0,
                    "consecutiveGatewayErrors": 5,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50,
                },
                "tls": {"mode": "ISTIO_MUTUAL"},
            },
            "subsets": [{"name": track, "labels": {TRACK_LABEL: track}} for track in ("stable", "canary")],
        },
    }
