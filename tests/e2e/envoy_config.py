"""Reading a sidecar's decoded xDS configuration (`tests/e2e/xds.py`), and checking EnvoyFilter patches in it.

An EnvoyFilter whose `match` selects nothing is silently ignored by istiod, so "every patch applied" means:
each patch's match selects at least one target in the configuration istiod generated, and the patch's value
is there. `unapplied_patches` reports each patch that fails either, in words.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tests.e2e.xds import SidecarConfig

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
VIRTUAL_INBOUND = "virtualInbound"

Dict = dict[str, Any]


def cluster_name(host: str, port: int, subset: str = "") -> str:
    """Istio's name for the outbound cluster of a service port (and subset)."""
    return f"outbound|{port}|{subset}|{host}"


def inbound_chains(config: SidecarConfig, port: int) -> list[Dict]:
    """The filter chains of the inbound listener that serve traffic to `port` of the pod."""
    listener = config.listeners.get(VIRTUAL_INBOUND, {})
    return [
        chain
        for chain in listener.get("filter_chains", [])
        if chain.get("filter_chain_match", {}).get("destination_port") == port
    ]


def connection_manager(chain: Mapping[str, Any]) -> Dict | None:
    """The HTTP connection manager's typed config in a filter chain, or None for a TCP chain."""
    for net_filter in chain.get("filters", []):
        if net_filter.get("name") == HCM:
            hcm: Dict = net_filter.get("typed_config", {})
            return hcm
    return None


def http_filters(hcm: Mapping[str, Any]) -> list[Dict]:
    """The HTTP filters of a connection manager, in the order Envoy runs them."""
    return list(hcm.get("http_filters", []))


def http_filter(hcm: Mapping[str, Any], name: str) -> Dict | None:
    """One HTTP filter's typed config by filter name, or None when the chain lacks it."""
    for http in http_filters(hcm):
        if http.get("name") == name:
            config: Dict = http.get("typed_config", {})
            return config
    return None


def all_route_configs(config: SidecarConfig) -> Iterator[Dict]:
    """Every RouteConfiguration: those fetched over RDS and those inline in listeners (inbound ones)."""
    yield from config.routes.values()
    for listener in config.listeners.values():
        for chain in listener.get("filter_chains", []):
            hcm = connection_manager(chain)
            if hcm is not None and "route_config" in hcm:
                yield hcm["route_config"]


def virtual_hosts(config: SidecarConfig, name: str) -> list[Dict]:
    """Every virtual host of that name, in any route configuration."""
    return [vh for rc in all_route_configs(config) for vh in rc.get("virtual_hosts", []) if vh.get("name") == name]


def route_clusters(route: Mapping[str, Any]) -> dict[str, int]:
    """Where a route sends its traffic: cluster -> weight (a single cluster gets 100)."""
    action = route.get("route", {})
    if "cluster" in action:
        return {action["cluster"]: 100}
    return {c["name"]: c.get("weight", 0) for c in action.get("weighted_clusters", {}).get("clusters", [])}


def contains(actual: Any, wanted: Any) -> bool:
    """Whether `wanted` (a patch value) is present in `actual`: dicts by subset, lists element by element.

    A field the decoded config lacks counts as its proto default, so a patch's `value: ""` or `false` matches.
    """
    if isinstance(wanted, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(contains(actual[k], v) if k in actual else not v for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(actual, list) and all(any(contains(a, w) for a in actual) for w in wanted)
    return bool(actual == wanted)


def _chains_matching(config: SidecarConfig, match: Mapping[str, Any]) -> list[Dict]:
    listener_match = match.get("listener", {})
    inbound = match.get("context") == "SIDECAR_INBOUND"
    chains: list[Dict] = []
    for name, listener in config.listeners.items():
        if "name" in listener_match and listener_match["name"] != name:
            continue
        if not inbound and name == VIRTUAL_INBOUND:
            continue
        if inbound and name != VIRTUAL_INBOUND and "name" not in listener_match:
            continue
        port = listener_match.get("portNumber")
        listener_port = listener.get("address", {}).get("socket_address", {}).get("port_value")
        for chain in listener.get("filter_chains", []):
            chain_port = chain.get("filter_chain_match", {}).get("destination_port") if inbound else listener_port
            if port is not None and chain_port != port:
                continue
            wanted_chain = listener_match.get("filterChain", {})
            if "name" in wanted_chain and chain.get("name") != wanted_chain["name"]:
                continue
            if _chain_has_filter(chain, wanted_chain.get("filter", {})):
                chains.append(chain)
    return chains


def _chain_has_filter(chain: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    if not wanted:
        return True
    for net_filter in chain.get("filters", []):
        if "name" in wanted and net_filter.get("name") != wanted["name"]:
            continue
        sub = wanted.get("subFilter", {}).get("name")
        if sub is None or any(h.get("name") == sub for h in net_filter.get("typed_config", {}).get("http_filters", [])):
            return True
    return False


def _http_filter_problem(chains: list[Dict], patch: Mapping[str, Any]) -> str | None:
    operation, value = patch["patch"]["operation"], patch["patch"].get("value", {})
    anchor = patch["match"].get("listener", {}).get("filterChain", {}).get("filter", {}).get("subFilter", {})
    for chain in chains:
        hcm = connection_manager(chain) or {}
        names = [h.get("name") for h in http_filters(hcm)]
        if operation in ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD"):
            if value.get("name") not in names:
                return f"filter {value.get('name')} missing from chain {chain.get('name')}"
            inserted = http_filter(hcm, value["name"])
            if not contains(inserted, value.get("typed_config", {})):
                return f"filter {value['name']} in chain {chain.get('name')} differs from the patch: {inserted}"
            before = operation == "INSERT_BEFORE" and anchor.get("name") in names
            if before and names.index(value["name"]) > names.index(anchor["name"]):
                return f"filter {value['name']} is not before {anchor['name']} in chain {chain.get('name')}"
    return None


def _route_targets(config: SidecarConfig, match: Mapping[str, Any]) -> list[Dict]:
    wanted = match.get("routeConfiguration", {})
    vhost = wanted.get("vhost", {})
    inbound = match.get("context") == "SIDECAR_INBOUND"
    routes: list[Dict] = []
    for rc in all_route_configs(config):
        if inbound != rc.get("name", "").startswith("inbound|"):
            continue
        if "name" in wanted and rc.get("name") != wanted["name"]:
            continue
        for vh in rc.get("virtual_hosts", []):
            if "name" in vhost and vh.get("name") != vhost["name"]:
                continue
            route_name = vhost.get("route", {}).get("name")
            routes += [r for r in vh.get("routes", []) if route_name is None or r.get("name") == route_name]
    return routes


def unapplied_patches(envoy_filter: Mapping[str, Any], config: SidecarConfig) -> list[str]:
    """Each configPatch of the EnvoyFilter that selects nothing in `config`, or whose value is not there.

    Knows the patch kinds bertmesh renders (HTTP_FILTER and HTTP_ROUTE); any other kind is reported as
    unchecked, so a new kind cannot pass unverified.
    """
    problems: list[str] = []
    name = envoy_filter["metadata"]["name"]
    for index, patch in enumerate(envoy_filter["spec"]["configPatches"]):
        where = f"EnvoyFilter {name} patch {index} ({patch['applyTo']} {patch['patch']['operation']})"
        if patch["applyTo"] == "HTTP_FILTER":
            chains = _chains_matching(config, patch["match"])
            if not chains:
                problems.append(f"{where}: its match selects no filter chain: {patch['match']}")
            elif (problem := _http_filter_problem(chains, patch)) is not None:
                problems.append(f"{where}: {problem}")
        elif patch["applyTo"] == "HTTP_ROUTE":
            routes = _route_targets(config, patch["match"])
            if not routes:
                problems.append(f"{where}: its match selects no route: {patch['match']}")
            elif patch["patch"]["operation"] == "MERGE":
                problems += [
                    f"{where}: route {r.get('name')} lacks the merged value"
                    for r in routes
                    if not contains(r, patch["patch"]["value"])
                ]
        else:
            problems.append(f"{where}: this checker does not know {patch['applyTo']} patches")
    return problems
