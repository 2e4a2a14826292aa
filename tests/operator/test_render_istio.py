"""render(): the Istio objects, field by field (the real istioctl validate/analyze checks come later)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from bertmesh_operator.render import RenderOptions, render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, initial_state, step

MakeManifest = Callable[..., dict[str, Any]]
HOST = "minilm.ml.svc.cluster.local"
CANARY = {"model": {"storageUri": "pvc://models/v2"}, "steps": [10, 50]}
PORTS = (50051, 8080)  # gRPC, HTTP: routed, rate-limited and authorised alike


def objects_of(manifest: dict[str, Any], state: RolloutState | None = None, **options: Any) -> dict[str, Any]:
    rendered = render(manifest, state=state, options=RenderOptions(**options))
    return {o["kind"]: o for o in rendered if "istio.io" in o["apiVersion"]}


def progressing(manifest: dict[str, Any], t0: datetime, *, checks: int = 0) -> RolloutState:
    spec = parse_model_deployment(manifest).spec
    state = step(initial_state(spec), None, spec, t0)
    state = step(state, Observation(canary_ready_replicas=1), spec, t0)
    good = Observation(canary_ready_replicas=1, success_rate=1.0, p99_latency_ms=1.0)
    for i in range(checks):
        state = step(state, good, spec, t0.replace(minute=i + 1))
    return state


def test_api_versions(make_md: MakeManifest) -> None:
    objects = objects_of(make_md({"rateLimit": {"requestsPerSecond": 5}}))
    assert {kind: o["apiVersion"] for kind, o in objects.items()} == {
        "DestinationRule": "networking.istio.io/v1",
        "VirtualService": "networking.istio.io/v1",
        "PeerAuthentication": "security.istio.io/v1",
        "AuthorizationPolicy": "security.istio.io/v1",
        "EnvoyFilter": "networking.istio.io/v1alpha3",
    }


def test_stable_only_virtual_service(make_md: MakeManifest) -> None:
    vs = objects_of(make_md())["VirtualService"]["spec"]
    assert vs["hosts"] == [HOST]
    assert [route["name"] for route in vs["http"]] == ["weighted", "weighted-http"]
    for route, port in zip(vs["http"], PORTS, strict=True):  # each port routed to itself
        assert route["match"] == [{"port": port}]
        assert route["route"] == [
            {"destination": {"host": HOST, "subset": "stable", "port": {"number": port}}, "weight": 100}
        ]
        assert route["timeout"] == "30s"
        assert route["retries"] == {
            "attempts": 2,
            "perTryTimeout": "30s",
            "retryOn": "connect-failure,refused-stream,unavailable,cancelled",
        }


def test_retries_never_include_resource_exhausted(make_md: MakeManifest, t0: datetime) -> None:
    manifest = make_md({"traffic": {"canary": CANARY}})
    for route in objects_of(manifest, progressing(manifest, t0))["VirtualService"]["spec"]["http"]:
        assert "resource-exhausted" not in route["retries"]["retryOn"]
        assert "retriable-status-codes" not in route["retries"]["retryOn"]


def test_retries_can_be_turned_off(make_md: MakeManifest) -> None:
    vs = objects_of(make_md({"traffic": {"retryAttempts": 0, "timeout": "5s"}}))["VirtualService"]["spec"]
    assert vs["http"][0]["retries"] == {"attempts": 0}
    assert vs["http"][0]["timeout"] == "5s"


@pytest.mark.parametrize(("checks", "canary_weight"), [(0, 10), (1, 50)])
def test_weights_and_header_pin_while_progressing(
    make_md: MakeManifest, t0: datetime, checks: int, canary_weight: int
) -> None:
    manifest = make_md({"traffic": {"canary": CANARY | {"headerPin": {"name": "x-track", "value": "next"}}}})
    routes = objects_of(manifest, progressing(manifest, t0, checks=checks))["VirtualService"]["spec"]["http"]
    assert [r["name"] for r in routes] == ["canary-pin", "weighted", "canary-pin-http", "weighted-http"]
    for (pin, weighted), port in zip((routes[:2], routes[2:]), PORTS, strict=True):
        assert pin["match"] == [{"headers": {"x-track": {"exact": "next"}}, "port": port}]
        assert pin["route"] == [
            {"destination": {"host": HOST, "subset": "canary", "port": {"number": port}}, "weight": 100}
        ]
        assert weighted["match"] == [{"port": port}]
        assert {r["destination"]["port"]["number"] for r in weighted["route"]} == {port}
        weights = {r["destination"]["subset"]: r["weight"] for r in weighted["route"]}
        assert weights == {"stable": 100 - canary_weight, "canary": canary_weight}


def test_abort_returns_routing_to_100_percent_stable(make_md: MakeManifest, t0: datetime) -> None:
    manifest = make_md({"traffic": {"canary": CANARY}})
    state = progressing(manifest, t0, checks=1)
    spec = parse_model_deployment(manifest).spec
    aborted = step(state, None, spec, t0, Command("abort", state.canary_revision or ""))
    routes = objects_of(manifest, aborted)["VirtualService"]["spec"]["http"]
    assert [route["name"] for route in routes] == ["weighted", "weighted-http"]
    for route in routes:
        assert [(r["destination"]["subset"], r["weight"]) for r in route["route"]] == [("stable", 100)]


def test_destination_rule(make_md: MakeManifest) -> None:
    dr = objects_of(make_md({"autoscaling": {"maxReplicas": 10}}))["DestinationRule"]["spec"]
    assert dr["host"] == HOST
    policy = dr["trafficPolicy"]
    assert policy["tls"] == {"mode": "ISTIO_MUTUAL"}
    assert policy["loadBalancer"] == {"simple": "LEAST_REQUEST"}
    assert policy["connectionPool"]["http"]["http2MaxRequests"] == 4 * 10 * 64
    assert policy["connectionPool"]["tcp"]["connectTimeout"] == "5s"
    outlier = policy["outlierDetection"]
    assert (outlier["consecutive5xxErrors"], outlier["consecutiveGatewayErrors"]) == (0, 5)
    assert outlier["maxEjectionPercent"] == 50
    assert dr["subsets"] == [
        {"name": "stable", "labels": {"serving.bertmesh.io/track": "stable"}},
        {"name": "canary", "labels": {"serving.bertmesh.io/track": "canary"}},
    ]


def test_custom_cluster_domain(make_md: MakeManifest) -> None:
    objects = objects_of(make_md(), cluster_domain="corp.example")
    assert objects["DestinationRule"]["spec"]["host"] == "minilm.ml.svc.corp.example"
    assert objects["VirtualService"]["spec"]["hosts"] == ["minilm.ml.svc.corp.example"]


def test_peer_authentication_is_strict(make_md: MakeManifest) -> None:
    pa = objects_of(make_md())["PeerAuthentication"]["spec"]
    assert pa == {
        "selector": {"matchLabels": {"serving.bertmesh.io/model-deployment": "minilm"}},
        "mtls": {"mode": "STRICT"},
    }


def test_authorization_defaults_to_the_same_namespace(make_md: MakeManifest) -> None:
    ap = objects_of(make_md())["AuthorizationPolicy"]["spec"]
    assert ap["action"] == "ALLOW"
    assert ap["selector"] == {"matchLabels": {"serving.bertmesh.io/model-deployment": "minilm"}}
    assert ap["rules"] == [
        {"from": [{"source": {"namespaces": ["ml"]}}], "to": [{"operation": {"ports": ["50051", "8080"]}}]}
    ]


def test_authorization_allows_only_the_listed_callers(make_md: MakeManifest) -> None:
    callers = [
        {"namespace": "web"},
        {"namespace": "search", "serviceAccount": "indexer"},
        {"namespace": "web"},
        {"namespace": "api", "serviceAccount": "gateway"},
    ]
    manifest = make_md({"access": {"allowedCallers": callers}})
    (rule,) = objects_of(manifest, trust_domain="prod.example")["AuthorizationPolicy"]["spec"]["rules"]
    assert rule["from"] == [
        {"source": {"namespaces": ["web"]}},
        {"source": {"principals": ["prod.example/ns/api/sa/gateway", "prod.example/ns/search/sa/indexer"]}},
    ]
    sa_only = make_md({"access": {"allowedCallers": [{"namespace": "a", "serviceAccount": "b"}]}})
    (rule,) = objects_of(sa_only)["AuthorizationPolicy"]["spec"]["rules"]
    assert rule["from"] == [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]


def test_no_rate_limit_no_envoy_filter(make_md: MakeManifest) -> None:
    assert "EnvoyFilter" not in objects_of(make_md())


def inbound_match(port: int) -> dict[str, Any]:
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


ALWAYS = {"numerator": 100, "denominator": "HUNDRED"}


@pytest.mark.parametrize("port", PORTS)
def test_shared_rate_limit_answers_resource_exhausted(make_md: MakeManifest, port: int) -> None:
    """Both ports' listeners get the limiter (gRPC callers see RESOURCE_EXHAUSTED, HTTP callers 429)."""
    ef = objects_of(make_md({"rateLimit": {"requestsPerSecond": 20, "burst": 40}}))["EnvoyFilter"]
    assert ef["metadata"]["name"] == "minilm-ratelimit"
    spec = ef["spec"]
    assert spec["workloadSelector"] == {"labels": {"serving.bertmesh.io/model-deployment": "minilm"}}
    assert [p["match"]["listener"]["portNumber"] for p in spec["configPatches"]] == list(PORTS)
    patch = spec["configPatches"][PORTS.index(port)]
    assert patch["applyTo"] == "HTTP_FILTER"
    assert patch["match"] == inbound_match(port)
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    value = patch["patch"]["value"]
    assert value["name"] == "envoy.filters.http.local_ratelimit"
    assert value["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bertmesh_rate_limit",
        "token_bucket": {"max_tokens": 40, "tokens_per_fill": 20, "fill_interval": "1s"},
        "filter_enabled": {"runtime_key": "bertmesh_rate_limit_enabled", "default_value": ALWAYS},
        "filter_enforced": {"runtime_key": "bertmesh_rate_limit_enforced", "default_value": ALWAYS},
        "rate_limited_as_resource_exhausted": True,
    }


@pytest.mark.parametrize("port", PORTS)
def test_per_caller_rate_limit_keys_buckets_by_verified_identity(make_md: MakeManifest, port: int) -> None:
    manifest = make_md({"rateLimit": {"requestsPerSecond": 20, "perCaller": True}})
    patches = objects_of(manifest, max_callers=500)["EnvoyFilter"]["spec"]["configPatches"]
    assert len(patches) == 3 * len(PORTS)  # the same three patches on each port's listener
    header, limiter, route = patches[3 * PORTS.index(port) : 3 * PORTS.index(port) + 3]
    # 1. The caller header is overwritten from the mTLS peer identity, before the limiter runs.
    assert (header["applyTo"], header["match"], header["patch"]["operation"]) == (
        "HTTP_FILTER",
        inbound_match(port),
        "INSERT_BEFORE",
    )
    mutation = header["patch"]["value"]
    assert mutation["name"] == "envoy.filters.http.header_mutation"
    assert mutation["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        "mutations": {
            "request_mutations": [
                {
                    "append": {
                        "header": {"key": "x-bertmesh-caller", "value": "%DOWNSTREAM_PEER_URI_SAN%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                }
            ]
        },
    }
    # 2. One dynamic bucket per caller value.
    config = limiter["patch"]["value"]["typed_config"]
    assert config["rate_limited_as_resource_exhausted"] is True
    assert config["descriptors"] == [
        {
            "entries": [{"key": "caller", "value": ""}],
            "token_bucket": {"max_tokens": 20, "tokens_per_fill": 20, "fill_interval": "1s"},
        }
    ]
    assert config["always_consume_default_token_bucket"] is False
    assert config["max_dynamic_descriptors"] == 500
    # 3. The inbound route turns the header into the `caller` descriptor.
    assert route["applyTo"] == "HTTP_ROUTE"
    assert route["match"] == {
        "context": "SIDECAR_INBOUND",
        "routeConfiguration": {"vhost": {"name": f"inbound|http|{port}", "route": {"action": "ANY"}}},
    }
    assert route["patch"] == {
        "operation": "MERGE",
        "value": {
            "route": {
                "rate_limits": [
                    {
                        "actions": [
                            {
                                "request_headers": {
                                    "header_name": "x-bertmesh-caller",
                                    "descriptor_key": "caller",
                                }
                            }
                        ]
                    }
                ]
            }
        },
    }
