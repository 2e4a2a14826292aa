"""What every renderer shares: names, labels, selectors, owner references and the tracks to run.

Names derive from the ModelDeployment's name only (`<md>`, `<md>-stable`, `<md>-canary`), so a rendered set is
reproducible and two ModelDeployments in one namespace never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bertmesh_operator.resource import API_VERSION, KIND, ModelDeployment
from bertmesh_operator.rollout import RolloutState
from bertmesh_operator.spec import ModelDeploymentSpec, ServingSpec

GRPC_PORT = 50051
HTTP_PORT = 8080  # the server's HTTP front (OpenAI, Cohere-style rerank and text-embeddings-inference routes)
METRICS_PORT = 9400
# The ports callers reach, by Service port name (also the Istio protocol of each): routed, limited and
# authorised alike. Probes and metrics stay off this list.
SERVED_PORTS: tuple[tuple[str, int], ...] = (("grpc", GRPC_PORT), ("http", HTTP_PORT))
MODEL_DIR = "/mnt/models"
CONTAINER = "model-server"
MD_LABEL = "serving.bertmesh.io/model-deployment"
TRACK_LABEL = "serving.bertmesh.io/track"
REVISION_LABEL = "serving.bertmesh.io/revision"
DEFAULT_STORAGE_INITIALIZER = "kserve/storage-initializer:v0.17.0"

TrackName = Literal["stable", "canary"]
Autoscaler = Literal["keda", "hpa"]
# Istio's sample Prometheus addon; the chart and the operator's --prometheus-url say where it really is.
DEFAULT_PROMETHEUS_URL = "http://prometheus.istio-system.svc:9090"


@dataclass(frozen=True)
class RenderOptions:
    """Cluster facts the spec does not carry; the defaults suit a standard Istio install."""

    cluster_domain: str = "cluster.local"
    trust_domain: str = "cluster.local"
    storage_initializer_image: str = DEFAULT_STORAGE_INITIALIZER
    # LRU bound on per-caller token buckets in each sidecar (Envoy dynamic descriptors).
    max_callers: int = 1000
    # What scales a track on a bertmesh metric: KEDA ScaledObjects, or plain HPAs on Pods metrics (these need
    # a custom-metrics adapter). `cpu` is a plain HPA either way.
    autoscaler: Autoscaler = "keda"
    # The Prometheus KEDA's triggers query (the server's gauges, scraped as the chart's PodMonitor labels them).
    prometheus_url: str = DEFAULT_PROMETHEUS_URL


@dataclass(frozen=True)
class Track:
    """One Deployment's worth of serving: which revision it runs and whether it may run replicas."""

    name: TrackName
    serving: ServingSpec
    scaled_down: bool = False

    @property
    def revision(self) -> str:
        """The serving revision this track runs."""
        return self.serving.revision


@dataclass(frozen=True)
class RenderContext:
    """A ModelDeployment, its rollout state and the render options, with the derived names and labels."""

    md: ModelDeployment
    state: RolloutState
    options: RenderOptions

    @property
    def name(self) -> str:
        """The ModelDeployment's name, which every child's name starts with."""
        return self.md.name

    @property
    def namespace(self) -> str:
        """The namespace every child lives in."""
        return self.md.namespace

    @property
    def spec(self) -> ModelDeploymentSpec:
        """The ModelDeployment's spec."""
        return self.md.spec

    @property
    def host(self) -> str:
        """The Service's fully qualified name, as Istio routes it."""
        return f"{self.name}.{self.namespace}.svc.{self.options.cluster_domain}"

    @property
    def tracks(self) -> list[Track]:
        """The stable track, then the canary track while a rollout has one."""
        tracks = [Track("stable", self.state.stable)]
        if self.state.canary is not None:
            tracks.append(Track("canary", self.state.canary, scaled_down=self.state.canary_scaled_down))
        return tracks

    @property
    def canary_routable(self) -> bool:
        """Whether routes to the canary exist (a canary that is not aborted)."""
        return self.state.canary is not None and not self.state.canary_scaled_down

    def track_name(self, track: TrackName) -> str:
        """The name of a per-track object (Deployment, HorizontalPodAutoscaler)."""
        return f"{self.name}-{track}"

    def selector(self, track: TrackName | None = None) -> dict[str, str]:
        """Labels selecting the pods of the ModelDeployment, or of one track (immutable once applied)."""
        labels = {MD_LABEL: self.name}
        if track is not None:
            labels[TRACK_LABEL] = track
        return labels

    def labels(self, component: str, track: TrackName | None = None) -> dict[str, str]:
        """Labels of a child object: the recommended app.kubernetes.io set plus the selector labels."""
        return {
            "app.kubernetes.io/name": "bertmesh-model",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "bertmesh",
            "app.kubernetes.io/managed-by": "bertmesh-operator",
            **self.selector(track),
        }

    def metadata(self, name: str, component: str, track: TrackName | None = None) -> dict[str, Any]:
        """A child's metadata: name, namespace, labels, and an owner reference once its uid is known."""
        labels = self.labels(component, track)
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": labels}
        uid = self.md.metadata.uid
        if uid:
            meta["ownerReferences"] = [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": self.name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        return meta


def grpc_endpoint(name: str, namespace: str, cluster_domain: str = "cluster.local") -> str:
    """The host:port callers use to reach a ModelDeployment over gRPC."""
    return f"{name}.{namespace}.svc.{cluster_domain}:{GRPC_PORT}"
