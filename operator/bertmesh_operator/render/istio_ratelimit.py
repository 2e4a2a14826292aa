"""The rate limit: an EnvoyFilter adding Envoy's local rate limit to the model's inbound sidecars.

Each replica's sidecar keeps a token bucket per served port (`requestsPerSecond` refilled every second,
`burst` deep) and answers excess gRPC calls with RESOURCE_EXHAUSTED (`rate_limited_as_resource_exhausted`),
which clients and the mesh's retry policy treat as "back off", unlike the default UNAVAILABLE that they retry;
excess HTTP requests get Envoy's 429 Too Many Requests. The filter and its patches repeat for the gRPC and the
HTTP port's inbound listener, so neither protocol is a way around the limit.

With `perCaller`, a header_mutation filter first overwrites `x-bertmesh-caller` with the caller's verified
mTLS identity (`%DOWNSTREAM_PEER_URI_SAN%`, so a client cannot spoof it), the inbound route turns that
header into a `caller` descriptor, and a descriptor with an empty value gives every distinct caller its own
bucket (Envoy dynamic descriptors, Envoy 1.34+ / Istio 1.26+).
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import SERVED_PORTS, RenderContext
from bertmesh_operator.spec import RateLimitSpec

CALLER_HEADER = "x-bertmesh-caller"
CALLER_KEY = "caller"
LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
_TYPE = "type.googleapis.com/envoy.extensions.filters.http"


def inbound_vhost(port: int) -> str:
    """Istio's name of the inbound HTTP virtual host of a port."""
    return f"inbound|http|{port}"


def _inbound_filter_match(port: int) -> dict[str, Any]:
    return {
        "context": "SIDECAR_INBOUND",
        "listener": {
            "portNumber": port,
            "filterChain": {
                "filter": {
                    "name": "envoy.filters.network.http_connection_manager",
                    "subFilter": {"name": "envoy.filters.http.router"},
                }
            },
        },
    }


def _bucket(limit: RateLimitSpec) -> dict[str, Any]:
    return {
        "max_tokens": limit.effective_burst,
        "tokens_per_fill": limit.requests_per_second,
        "fill_interval": "1s",
    }


def _percent(key: str) -> dict[str, Any]:
    # Both fractions default to 0% in Envoy: without them the filter would count but never limit.
    return {"runtime_key": key, "default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def local_rate_limit_config(limit: RateLimitSpec, max_callers: int) -> dict[str, Any]:
    """The typed_config of envoy.filters.http.local_ratelimit for a rateLimit spec."""
    config: dict[str, Any] = {
        "@type": f"{_TYPE}.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bertmesh_rate_limit",
        "token_bucket": _bucket(limit),
        "filter_enabled": _percent("bertmesh_rate_limit_enabled"),
        "filter_enforced": _percent("bertmesh_rate_limit_enforced"),
        "rate_limited_as_resource_exhausted": True,
    }
    if limit.per_caller:
        config |= {
            "descriptors": [{"entries": [{"key": CALLER_KEY, "value": ""}], "token_bucket": _bucket(limit)}],
            # A caller's call takes from its own bucket only, not also from the shared default one.
            "always_consume_default_token_bucket": False,
            "max_dynamic_descriptors": max_callers,
        }
    return config


def _caller_header_patch(port: int) -> dict[str, Any]:
    mutation = {
        "append": {
            "header": {"key": CALLER_HEADER, "value": "%DOWNSTREAM_PEER_URI_SAN%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    }
    return {
        "applyTo": "HTTP_FILTER",
        "match": _inbound_filter_match(port),
        "patch": {
            "operation": "INSERT_BEFORE",
            "value": {
                "name": HEADER_MUTATION,
                "typed_config": {
                    "@type": f"{_TYPE}.header_mutation.v3.HeaderMutation",
                    "mutations": {"request_mutations": [mutation]},
                },
            },
        },
    }


def _caller_descriptor_patch(port: int) -> dict[str, Any]:
    action = {"request_headers": {"header_name": CALLER_HEADER, "descriptor_key": CALLER_KEY}}
    return {
        "applyTo": "HTTP_ROUTE",
        "match": {
            "context": "SIDECAR_INBOUND",
            "routeConfiguration": {"vhost": {"name": inbound_vhost(port), "route": {"action": "ANY"}}},
        },
        "patch": {"operation": "MERGE", "value": {"route": {"rate_limits": [{"actions": [action]}]}}},
    }


def render_envoy_filter(ctx: RenderContext) -> dict[str, Any] | None:
    """The EnvoyFilter for `spec.rateLimit`, or None when the spec sets no rate limit."""
    limit = ctx.spec.rate_limit
    if limit is None:
        return None
    patches: list[dict[str, Any]] = []
    for _, port in SERVED_PORTS:
        rate_limit_patch = {
            "applyTo": "HTTP_FILTER",
            "match": _inbound_filter_match(port),
            "patch": {
                "operation": "INSERT_BEFORE",
                "value": {
                    "name": LOCAL_RATELIMIT,
                    "typed_config": local_rate_limit_config(limit, ctx.options.max_callers),
                },
            },
        }
        # Patches apply in order, each inserted just before the router: header first, then the limiter.
        if limit.per_caller:
            patches += [_caller_header_patch(port), rate_limit_patch, _caller_descriptor_patch(port)]
        else:
            patches.append(rate_limit_patch)
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": ctx.metadata(f"{ctx.name}-ratelimit", "rate-limit"),
        "spec": {"workloadSelector": {"labels": ctx.selector()}, "configPatches": patches},
    }
