"""A minimal xDS client: asks istiod over ADS, as one pod's sidecar, for its clusters, listeners and routes.

It sends what a real istio-proxy's bootstrap sends (node id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`
and the node metadata istiod reads: NAMESPACE, LABELS, INSTANCE_IPS, SERVICE_ACCOUNT, ISTIO_VERSION, ...) and
decodes the answers with Envoy's own protos (PyPI `xds-protos`) into plain dicts keyed by proto field names,
the names EnvoyFilter patches use. Typed configs of types outside Envoy's API (Istio's own filters) decode to
`{"@type": url}` only.
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import pkgutil
import queue
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # type: ignore[import-untyped]
from google.protobuf import any_pb2, descriptor, descriptor_pool, json_format, message, message_factory, struct_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# The Istio release the pinned master commit precedes (its VERSION file says 1.31): istiod gates features on it.
PROXY_ISTIO_VERSION = "1.31.0"
CLUSTER_ID = "Kubernetes"  # istiod's default name for the cluster it runs in


@dataclass(frozen=True)
class Sidecar:
    """Who is asking: the pod whose istio-proxy the configuration is for."""

    pod: str
    namespace: str
    ip: str
    labels: Mapping[str, str]
    service_account: str
    workload: str
    container_ports: tuple[Mapping[str, Any], ...] = ()
    containers: tuple[str, ...] = ()
    node_name: str = ""

    @classmethod
    def of_pod(cls, pod: Mapping[str, Any], workload: str | None = None) -> Sidecar:
        """The sidecar of a Pod object as the apiserver returns it (with status.podIP set)."""
        meta, spec = pod["metadata"], pod["spec"]
        ports = tuple(p for c in spec.get("containers", []) for p in c.get("ports", []))
        return cls(
            pod=meta["name"],
            namespace=meta["namespace"],
            ip=pod["status"]["podIP"],
            labels=dict(meta.get("labels", {})),
            service_account=spec.get("serviceAccountName", "default"),
            workload=workload or meta["name"],
            container_ports=ports,
            containers=tuple(c["name"] for c in spec.get("containers", [])),
            node_name=spec.get("nodeName", ""),
        )

    @property
    def node_id(self) -> str:
        """The Envoy node id a sidecar presents: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`."""
        return f"sidecar~{self.ip}~{self.pod}.{self.namespace}~{self.namespace}.svc.cluster.local"

    def node(self) -> base_pb2.Node:
        """The Envoy Node message, with the metadata istio-agent puts in the bootstrap."""
        metadata: dict[str, Any] = {
            "ISTIO_VERSION": PROXY_ISTIO_VERSION,
            "NAMESPACE": self.namespace,
            "NAME": self.pod,
            "POD_NAME": self.pod,
            "LABELS": dict(self.labels),
            "INSTANCE_IPS": self.ip,
            "SERVICE_ACCOUNT": self.service_account,
            "WORKLOAD_NAME": self.workload,
            "OWNER": f"kubernetes://apis/apps/v1/namespaces/{self.namespace}/deployments/{self.workload}",
            "CLUSTER_ID": CLUSTER_ID,
            "MESH_ID": "cluster.local",
            "NODE_NAME": self.node_name,
            "INTERCEPTION_MODE": "REDIRECT",
            # A JSON string, as istio-agent forwards it from the pod's annotations.
            "POD_PORTS": json.dumps(list(self.container_ports)),
            "APP_CONTAINERS": ",".join(self.containers),
            "ENVOY_STATUS_PORT": 15021,
            "ENVOY_PROMETHEUS_PORT": 15090,
        }
        meta = struct_pb2.Struct()
        meta.update(metadata)
        return base_pb2.Node(id=self.node_id, cluster=f"{self.workload}.{self.namespace}", metadata=meta)


@dataclass
class SidecarConfig:
    """What istiod would send one sidecar, decoded: resources by name for each xDS type."""

    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    listeners: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: str = ""


def fetch_sidecar_config(address: str, sidecar: Sidecar, *, timeout: float = 30.0) -> SidecarConfig:
    """Open one ADS stream to istiod as `sidecar`; request CDS, LDS, then RDS for every route LDS names."""
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    node = sidecar.node()

    def ask(type_url: str, names: list[str]) -> None:
        requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=type_url, resource_names=names))

    config = SidecarConfig()
    with grpc.insecure_channel(address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        responses: Iterator[discovery_pb2.DiscoveryResponse] = stub.StreamAggregatedResources(
            iter(requests.get, None), timeout=timeout
        )
        try:
            ask(CLUSTER, [])
            config.clusters = _named(_next_of(responses, CLUSTER))
            ask(LISTENER, [])
            listeners = _next_of(responses, LISTENER)
            config.listeners = _named(listeners)
            config.version = listeners.version_info
            route_names = sorted(set(rds_route_names(config.listeners.values())))
            if route_names:
                ask(ROUTE, route_names)
                config.routes = _named(_next_of(responses, ROUTE))
        finally:
            requests.put(None)
    return config


def _next_of(responses: Iterator[discovery_pb2.DiscoveryResponse], type_url: str) -> discovery_pb2.DiscoveryResponse:
    # istiod may push other types on the same stream in between; skip them.
    for response in responses:
        if response.type_url == type_url:
            return response
    raise RuntimeError(f"istiod closed the ADS stream before answering {type_url}")


def _named(response: discovery_pb2.DiscoveryResponse) -> dict[str, dict[str, Any]]:
    decoded = [any_to_dict(r) for r in response.resources]
    return {str(r.get("name", "")): r for r in decoded}


def rds_route_names(listeners: Any) -> Iterator[str]:
    """The RouteConfiguration names the listeners' HTTP connection managers fetch over RDS."""
    for listener in listeners:
        for chain in listener.get("filter_chains", []):
            for net_filter in chain.get("filters", []):
                rds = net_filter.get("typed_config", {}).get("rds")
                if rds and rds.get("route_config_name"):
                    yield rds["route_config_name"]


@functools.cache
def _load_envoy_types() -> descriptor_pool.DescriptorPool:
    # Registering every Envoy message type lets Any fields (filter typed_configs) be decoded by type URL.
    for root in ("envoy", "xds", "udpa"):
        package = importlib.import_module(root)
        for module in pkgutil.walk_packages(package.__path__, f"{root}."):
            if module.name.endswith("_pb2"):
                importlib.import_module(module.name)
    return descriptor_pool.Default()


def any_to_dict(value: any_pb2.Any) -> dict[str, Any]:
    """Decode an Any into a dict with "@type"; unknown types (Istio's own) keep only "@type"."""
    pool = _load_envoy_types()
    try:
        desc = pool.FindMessageTypeByName(value.type_url.rsplit("/", 1)[-1])
    except KeyError:
        return {"@type": value.type_url}
    inner = message_factory.GetMessageClass(desc)()
    inner.ParseFromString(value.value)
    return {"@type": value.type_url, **message_to_dict(inner)}


def message_to_dict(msg: message.Message) -> dict[str, Any]:
    """A message as a dict keyed by proto field names: set fields and every enum, Anys decoded (any_to_dict)."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: _field_value(value_fd, v) for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_field_value(fd, v) for v in value]
        else:
            out[fd.name] = _field_value(fd, value)
    for enum_fd in msg.DESCRIPTOR.fields:
        # An enum at its zero value is not "set" in proto3, yet patches spell it out ("HUNDRED", "ALLOW").
        if enum_fd.enum_type is not None and not enum_fd.is_repeated and enum_fd.containing_oneof is None:
            out.setdefault(enum_fd.name, enum_fd.enum_type.values_by_number[0].name)
    return out


def _field_value(fd: descriptor.FieldDescriptor, value: Any) -> Any:
    if fd.message_type is not None:
        if fd.message_type.full_name == "google.protobuf.Any":
            return any_to_dict(value)
        if fd.message_type.full_name.startswith("google.protobuf."):
            # Durations as "1s", wrappers as their value, Structs as dicts: how EnvoyFilter patches write them.
            return json_format.MessageToDict(value, preserving_proto_field_name=True)
        return message_to_dict(value)
    if fd.enum_type is not None:
        enum_value = fd.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if fd.type == descriptor.FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value
