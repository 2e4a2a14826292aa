"""Istio routing: the VirtualService that splits traffic between tracks and the DestinationRule behind it.

Weights come from the rollout state (they always sum to 100), the same on the gRPC and the HTTP port, each
port with its own routes (the header pin, then the split) so a call stays on the port it came to. Retries
cover only calls that never reached a server or that the server refused before work began (connect-failure,
refused-stream, unavailable, cancelled): never resource-exhausted, which is the rate limiter or the server
shedding load, and retrying it would only multiply the overload.

A re-index rollout (`rollout_mode`) mirrors a share of each port's weighted calls to the canary: Envoy sends a
copy, discards its answer and never waits for it, so callers only ever get vectors of stable's space.
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import SERVED_PORTS, TRACK_LABEL, RenderContext, TrackName

RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"
NETWORKING = "networking.istio.io/v1"


def _destination(ctx: RenderContext, subset: TrackName, port: int) -> dict[str, Any]:
    return {"host": ctx.host, "subset": subset, "port": {"number": port}}


def _resilience(ctx: RenderContext) -> dict[str, Any]:
    traffic = ctx.spec.traffic
    retries: dict[str, Any] = {"attempts": traffic.retry_attempts}
    if traffic.retry_attempts > 0:
        retries |= {"perTryTimeout": traffic.timeout, "retryOn": RETRY_ON}
    return {"timeout": traffic.timeout, "retries": retries}


def render_virtual_service(ctx: RenderContext) -> dict[str, Any]:
    """Routes per served port: the header pin to the canary first (while one is routable), then the weighted
    split and any mirror; gRPC's routes keep the names `canary-pin` and `weighted`, HTTP's add `-http`."""
    routes = [route for name, port in SERVED_PORTS for route in _port_routes(ctx, name, port)]
    return {
        "apiVersion": NETWORKING,
        "kind": "VirtualService",
        "metadata": ctx.metadata(ctx.name, "routing"),
        "spec": {"hosts": [ctx.host], "http": routes},
    }


def _port_routes(ctx: RenderContext, name: str, port: int) -> list[dict[str, Any]]:
    weights = ctx.state.weights
    suffix = "" if name == "grpc" else f"-{name}"
    on_port = {"port": port}
    routes: list[dict[str, Any]] = []
    split = [{"destination": _destination(ctx, "stable", port), "weight": weights.stable}]
    if ctx.canary_routable:
        pin = ctx.spec.traffic.policy.header_pin
        routes.append(
            {
                "name": f"canary-pin{suffix}",
                "match": [{"headers": {pin.name: {"exact": pin.value}}, **on_port}],
                "route": [{"destination": _destination(ctx, "canary", port), "weight": 100}],
                **_resilience(ctx),
            }
        )
        split.append({"destination": _destination(ctx, "canary", port), "weight": weights.canary})
    weighted: dict[str, Any] = {"name": f"weighted{suffix}", "match": [on_port], "route": split, **_resilience(ctx)}
    if ctx.canary_routable and ctx.state.mirror_percent > 0:
        weighted["mirror"] = _destination(ctx, "canary", port)
        weighted["mirrorPercentage"] = {"value": float(ctx.state.mirror_percent)}
    routes.append(weighted)
    return routes


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
