"""What the rendered objects and the spec promise, checked against the configuration istiod generated.

Each check reads the intent from the rendered objects (the Service's ports, the VirtualService's routes,
the AuthorizationPolicy's callers, the EnvoyFilter's patches) or from the ModelDeployment (its rate limit,
its status's weights), and returns what differs in the sidecar's configuration, in words: an empty list
means Envoy would run what bertmesh asked for. New routes, ports or callers are checked without new code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from bertmesh_operator.spec import RateLimitSpec
from tests.e2e.envoy_config import (
    ROUTER,
    cluster_name,
    connection_manager,
    http_filter,
    http_filters,
    inbound_chains,
    route_clusters,
)
from tests.e2e.xds import SidecarConfig

LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
RBAC = "envoy.filters.http.rbac"
TLS = "envoy.transport_sockets.tls"
# The caller's identity as Envoy knows it after the mTLS handshake: the SPIFFE URI in its certificate.
PEER_IDENTITY = "%DOWNSTREAM_PEER_URI_SAN%"
NOT_RETRIED = "resource-exhausted"

Obj = Mapping[str, Any]


def grpc_port(service: Obj) -> int:
    """The Service port that speaks gRPC (`appProtocol: grpc`)."""
    return int(next(p["port"] for p in service["spec"]["ports"] if p.get("appProtocol") == "grpc"))


def pod_ports(service: Obj, pod_spec: Obj) -> dict[int, int]:
    """Service port -> the container port it reaches (a named targetPort resolved in the pod's containers):
    the port of the pod's inbound filter chain."""
    named = {p["name"]: p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports", []) if "name" in p}
    ports: dict[int, int] = {}
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        ports[int(port["port"])] = int(named[target]) if isinstance(target, str) else int(target)
    return ports


def _for_port(vs_route: Obj, port: int) -> bool:
    # A route whose every match names another port is not in this port's virtual host.
    return any(m.get("port", port) == port for m in vs_route.get("match") or [{}])


def _envoy_routes(caller: SidecarConfig, host: str, port: int) -> list[Obj] | None:
    for vhost in caller.routes.get(str(port), {}).get("virtual_hosts", []):
        if vhost.get("name") == f"{host}:{port}":
            routes: list[Obj] = vhost.get("routes", [])
            return routes
    return None


def _header_matches(route: Obj) -> set[tuple[str, str]]:
    return {(h["name"], h.get("string_match", {}).get("exact", "")) for h in route.get("match", {}).get("headers", [])}


def routing_problems(caller: SidecarConfig, virtual_service: Obj, port: int, weights: Mapping[str, int]) -> list[str]:
    """The caller's outbound routes to the service follow the VirtualService route by route, the catch-all
    route splits by `weights` (subset -> %, from the status), each route mirrors what and as much as the
    VirtualService says (a re-index rollout's copy to the canary), and retries never cover resource-exhausted."""
    host = virtual_service["spec"]["hosts"][0]
    routes = _envoy_routes(caller, host, port)
    if routes is None:
        return [f"the caller has no route for {host}:{port} (route configs: {sorted(caller.routes)})"]
    wanted = [r for r in virtual_service["spec"]["http"] if _for_port(r, port)]
    problems: list[str] = []
    if [r.get("name") for r in routes] != [r["name"] for r in wanted]:
        problems.append(
            f"routes {[r.get('name') for r in routes]}, the VirtualService has {[r['name'] for r in wanted]}"
        )
    for vs_route, route in zip(wanted, routes, strict=False):
        name = vs_route["name"]
        clusters = {
            cluster_name(
                d["destination"]["host"],
                d["destination"].get("port", {}).get("number", port),
                d["destination"].get("subset", ""),
            ): d.get("weight", 100)
            for d in vs_route["route"]
            if d.get("weight", 100) > 0
        }
        if route_clusters(route) != clusters:
            problems.append(f"route {name} sends to {route_clusters(route)}, the VirtualService to {clusters}")
        headers = {(n, m["exact"]) for match in vs_route.get("match", []) for n, m in match.get("headers", {}).items()}
        if _header_matches(route) != headers:
            problems.append(f"route {name} matches headers {_header_matches(route)}, the VirtualService {headers}")
        mirrors = mirror_clusters(route)
        wanted_mirrors = {}
        if "mirror" in vs_route:
            target = vs_route["mirror"]
            mirror = cluster_name(target["host"], target.get("port", {}).get("number", port), target.get("subset", ""))
            wanted_mirrors[mirror] = float(vs_route.get("mirrorPercentage", {}).get("value", 100.0))
        if mirrors != wanted_mirrors:
            problems.append(f"route {name} mirrors to {mirrors}, the VirtualService to {wanted_mirrors}")
        retry_on = set(filter(None, route.get("route", {}).get("retry_policy", {}).get("retry_on", "").split(",")))
        if NOT_RETRIED in retry_on:
            problems.append(f"route {name} retries {NOT_RETRIED}: {sorted(retry_on)}")
        vs_retry_on = set(filter(None, vs_route.get("retries", {}).get("retryOn", "").split(",")))
        if retry_on != vs_retry_on:
            problems.append(f"route {name} retries on {sorted(retry_on)}, the VirtualService {sorted(vs_retry_on)}")
    catch_all = [r for r in routes if not r.get("match", {}).get("headers")]
    split = {cluster_name(host, port, subset): w for subset, w in weights.items() if w > 0}
    if not catch_all or route_clusters(catch_all[-1]) != split:
        got = route_clusters(catch_all[-1]) if catch_all else None
        problems.append(f"the catch-all route splits {got}, the status says {split}")
    return problems


FRACTION_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def mirror_clusters(route: Obj) -> dict[str, float]:
    """Envoy route -> the clusters it mirrors requests to, each with the percentage mirrored."""
    out: dict[str, float] = {}
    for policy in route.get("route", {}).get("request_mirror_policies", []):
        fraction = policy.get("runtime_fraction", {}).get("default_value")
        if fraction is None:  # no fraction: every request is mirrored
            out[policy["cluster"]] = 100.0
            continue
        denominator = FRACTION_DENOMINATORS[fraction.get("denominator", "HUNDRED")]
        out[policy["cluster"]] = round(100.0 * int(fraction.get("numerator", 0)) / denominator, 6)
    return out


def canary_problems(caller: SidecarConfig, host: str, port: int, pin: tuple[str, str] | None) -> list[str]:
    """With a header pin (name, value), the route matching it sends every call to the canary; without one
    (no canary, or aborted), no route of the service reaches the canary at all."""
    routes = _envoy_routes(caller, host, port)
    if routes is None:
        return [f"the caller has no route for {host}:{port}"]
    canary = cluster_name(host, port, "canary")
    if pin is None:
        return [f"route {r.get('name')} still reaches the canary" for r in routes if canary in route_clusters(r)]
    pinned = [r for r in routes if pin in _header_matches(r)]
    if not pinned:
        return [f"no route matches the header pin {pin}"]
    if route_clusters(pinned[0]) != {canary: 100}:
        return [f"the header pin {pin} sends to {route_clusters(pinned[0])}, not only to the canary"]
    return []


def mtls_problems(model: SidecarConfig, peer_authentication: Obj, port: int) -> list[str]:
    """With STRICT mTLS, every inbound chain of the port requires a client certificate: no plaintext chain."""
    if peer_authentication["spec"]["mtls"]["mode"] != "STRICT":
        return [f"the PeerAuthentication is not STRICT: {peer_authentication['spec']}"]
    chains = inbound_chains(model, port)
    if not chains:
        return [f"no inbound filter chain for port {port}"]
    problems = []
    for chain in chains:
        socket = chain.get("transport_socket", {})
        if socket.get("name") != TLS or socket.get("typed_config", {}).get("require_client_certificate") is not True:
            problems.append(f"inbound chain {chain.get('name')} accepts callers without a client certificate")
    return problems


def _principal_matchers(node: Any) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        if node.get("any") is True:
            yield ("any", "")
        name = node.get("authenticated", {}).get("principal_name")
        if name is not None:
            yield ("regex", name["safe_regex"]["regex"]) if "safe_regex" in name else ("exact", name.get("exact", ""))
        for key, value in node.items():
            if key != "authenticated":
                yield from _principal_matchers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _principal_matchers(item)


def expected_principals(authorization_policy: Obj) -> set[tuple[str, str]]:
    """How istiod writes the policy's sources into Envoy RBAC: exact SPIFFE ids, namespaces as regexes."""
    expected: set[tuple[str, str]] = set()
    for rule in authorization_policy["spec"]["rules"]:
        for source in (s["source"] for s in rule.get("from", [])):
            expected |= {("exact", f"spiffe://{p}") for p in source.get("principals", [])}
            expected |= {("regex", f".*/ns/{ns}/.*") for ns in source.get("namespaces", [])}
    return expected


def rbac_problems(model: SidecarConfig, authorization_policy: Obj) -> list[str]:
    """Each port the ALLOW policy covers has an RBAC filter allowing exactly the policy's callers."""
    spec = authorization_policy["spec"]
    ports = {int(p) for r in spec["rules"] for t in r.get("to", []) for p in t["operation"].get("ports", [])}
    expected = expected_principals(authorization_policy)
    problems: list[str] = []
    for port in sorted(ports):
        chains = inbound_chains(model, port)
        if not chains:
            problems.append(f"no inbound filter chain for port {port}")
        for chain in chains:
            rbac = http_filter(connection_manager(chain) or {}, RBAC)
            if rbac is None:
                problems.append(f"inbound chain {chain.get('name')} has no RBAC filter")
                continue
            rules = rbac.get("rules", {})
            if rules.get("action", "ALLOW") != spec["action"]:
                problems.append(f"RBAC action {rules.get('action', 'ALLOW')}, the policy says {spec['action']}")
            allowed = {m for p in rules.get("policies", {}).values() for m in _principal_matchers(p["principals"])}
            if allowed != expected:
                problems.append(f"port {port} allows {sorted(allowed)}, the policy lists {sorted(expected)}")
    return problems


def rate_limit_problems(model: SidecarConfig, limit: RateLimitSpec | None, port: int) -> list[str]:
    """The inbound chain of the port runs the spec's token bucket before the router, answering
    RESOURCE_EXHAUSTED, with one bucket per caller identity when `perCaller`; no limiter without a spec."""
    chains = inbound_chains(model, port)
    if not chains:
        return [f"no inbound filter chain for port {port}"]
    problems: list[str] = []
    for chain in chains:
        hcm = connection_manager(chain) or {}
        names = [h.get("name") for h in http_filters(hcm)]
        where = f"inbound chain {chain.get('name')} ({names})"
        config = http_filter(hcm, LOCAL_RATELIMIT)
        if limit is None:
            if config is not None:
                problems.append(f"{where} rate-limits though the spec sets no rateLimit")
            continue
        if config is None or not names or names[-1] != ROUTER or names.index(LOCAL_RATELIMIT) > names.index(ROUTER):
            problems.append(f"{where}: no local rate limit before the router")
            continue
        problems += [f"{where}: {p}" for p in _bucket_problems(config, limit)]
        if limit.per_caller:
            problems += [f"{where}: {p}" for p in _per_caller_problems(hcm, config, names)]
    return problems


def _bucket_problems(config: Obj, limit: RateLimitSpec) -> Iterator[str]:
    bucket = config.get("token_bucket", {})
    want = {"max_tokens": limit.effective_burst, "tokens_per_fill": limit.requests_per_second, "fill_interval": "1s"}
    if {k: bucket.get(k) for k in want} != want:
        yield f"token bucket {bucket}, the spec asks {want}"
    if config.get("rate_limited_as_resource_exhausted") is not True:
        yield "excess calls would get UNAVAILABLE (retried), not RESOURCE_EXHAUSTED"
    for key in ("filter_enabled", "filter_enforced"):
        percent = config.get(key, {}).get("default_value", {})
        if (percent.get("numerator"), percent.get("denominator", "HUNDRED")) != (100, "HUNDRED"):
            yield f"{key} is {percent or '0%'}, not 100%: the limiter would not limit every call"


def _per_caller_problems(hcm: Obj, config: Obj, names: list[Any]) -> Iterator[str]:
    keys = [
        entry["key"]
        for descriptor in config.get("descriptors", [])
        for entry in descriptor.get("entries", [])
        if not entry.get("value")
    ]
    if not keys:
        yield "no dynamic (empty-valued) descriptor: all callers share one bucket"
        return
    routes = [r for vh in hcm.get("route_config", {}).get("virtual_hosts", []) for r in vh.get("routes", [])]
    headers = {
        action["request_headers"]["header_name"]
        for route in routes
        for rate_limit in route.get("route", {}).get("rate_limits", [])
        for action in rate_limit.get("actions", [])
        if action.get("request_headers", {}).get("descriptor_key") in keys
    }
    if not routes or not headers:
        yield f"no inbound route turns a header into descriptor {keys}"
        return
    mutation = http_filter(hcm, HEADER_MUTATION) or {}
    identity = {
        m["append"]["header"]["key"]
        for m in mutation.get("mutations", {}).get("request_mutations", [])
        if m.get("append", {}).get("header", {}).get("value") == PEER_IDENTITY
        and m["append"].get("append_action") == "OVERWRITE_IF_EXISTS_OR_ADD"
    }
    if not headers <= identity:
        yield f"descriptor header(s) {sorted(headers)} are not overwritten with the peer identity {PEER_IDENTITY}"
    elif names.index(HEADER_MUTATION) > names.index(LOCAL_RATELIMIT):
        yield "the peer identity is written after the limiter reads it"
