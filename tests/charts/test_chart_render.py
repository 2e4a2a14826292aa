"""The chart renders, lints and produces objects a cluster accepts, for every ci/*-values.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.charts.chart import CHART, CI_VALUES, RELEASE_NAMESPACE, Helm, Obj, by_kind, one

# Kinds whose schemas kubernetes-validate does not carry: checked structurally here, server-side in
# tests/e2e/test_chart.py (Istio's CRDs, prometheus-operator's CRD).
THIRD_PARTY = {("security.istio.io/v1", "PeerAuthentication"), ("monitoring.coreos.com/v1", "PodMonitor")}
EXPECTED_CI = {"cluster", "namespaced", "namespaced-mesh", "monitoring-mesh", "crds-disabled"}


def ids(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


def test_the_ci_values_cover_every_mode() -> None:
    assert {ids(p) for p in CI_VALUES} == EXPECTED_CI


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: "defaults" if p is None else ids(p))
def test_helm_lint_strict(helm: Helm, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    out = helm.run(*args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
@pytest.mark.parametrize("version", ["1.33", "1.37"])
def test_every_object_passes_kubernetes_validate_strict(helm: Helm, values: Path, version: str) -> None:
    objects = helm.template([values])
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in THIRD_PARTY:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_every_object_is_labelled_and_placed(helm: Helm, values: Path) -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in helm.template([values]):
        meta = obj["metadata"]
        assert (obj["kind"] in cluster_scoped) == ("namespace" not in meta), f"{obj['kind']}/{meta['name']}"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "bertmesh"
        if obj["kind"] != "CustomResourceDefinition":  # the operator's file, byte for byte
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
            assert meta["labels"]["app.kubernetes.io/instance"] == "bertmesh"


def _restricted(pod: Obj, where: str) -> None:
    """Pod Security Standard "restricted", as the admission controller checks it."""
    spec = pod["spec"]
    pod_sc = spec.get("securityContext", {})
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
        assert not sc.get("privileged"), where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert "ports" not in container or all("hostPort" not in p for p in container["ports"]), where
    allowed_volumes = {"name", "emptyDir", "configMap", "secret", "projected", "persistentVolumeClaim"}
    for volume in spec.get("volumes", []):
        assert set(volume) <= allowed_volumes, where


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_pods_meet_pod_security_restricted(helm: Helm, values: Path) -> None:
    objects = helm.template([values])
    _restricted(one(objects, "Deployment")["spec"]["template"], "operator Deployment")
    for pod in by_kind(objects, "Pod"):
        _restricted(pod, f"Pod/{pod['metadata']['name']}")


def _operator(objects: list[Obj]) -> tuple[Obj, Obj]:
    deployment = one(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_operator_deployment_defaults(helm: Helm) -> None:
    objects = helm.template()
    deployment, container = _operator(objects)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # kopf standalone: never two operators at once
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "bertmesh"
    assert pod["automountServiceAccountToken"] is True
    assert container["image"] == "ghcr.io/bertmesh/operator:0.1.0"
    assert container["command"] == ["bertmesh"]
    assert container["args"] == [
        "operator",
        "--all-namespaces",
        "--prometheus-url",
        "http://prometheus.istio-system.svc:9090",
        "--autoscaler",
        "keda",
        "--health-host",
        "0.0.0.0",
        "--health-port",
        "8080",
        "--resync-seconds",
        "30",
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Read-only root: /tmp is the one writable path (an emptyDir).
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    service = one(objects, "Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "health"


def test_namespaced_operator_gets_one_namespace_flag_per_namespace(helm: Helm) -> None:
    _, container = _operator(helm.template(values={"scope": "namespaced", "namespaces": ["a", "b"]}))
    args = container["args"]
    assert "--all-namespaces" not in args
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--namespace"] == ["a", "b"]


def test_operator_options_reach_the_command_line(helm: Helm) -> None:
    values: dict[str, Any] = {
        "operator": {
            "prometheusUrl": "http://prom.monitoring:9090",
            "autoscaler": "hpa",
            "resyncSeconds": 120,
            "verbose": True,
        },
        "image": {"digest": "sha256:" + "ab" * 32, "tag": "ignored"},
    }
    _, container = _operator(helm.template(values=values))
    args = container["args"]
    assert args[args.index("--prometheus-url") + 1] == "http://prom.monitoring:9090"
    assert args[args.index("--resync-seconds") + 1] == "120"
    assert args[args.index("--autoscaler") + 1] == "hpa"
    assert args[-1] == "--verbose"
    assert container["image"] == "ghcr.io/bertmesh/operator@sha256:" + "ab" * 32


def test_scheduling_values_reach_the_pod(helm: Helm) -> None:
    objects = helm.template([CHART / "ci" / "monitoring-mesh-values.yaml"])
    pod = one(objects, "Deployment")["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["spec"]["affinity"]
    assert pod["spec"]["priorityClassName"] == "platform-critical"
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "platform"


def test_strict_mtls_in_each_listed_namespace(helm: Helm) -> None:
    objects = helm.template([CHART / "ci" / "monitoring-mesh-values.yaml"])
    policies = by_kind(objects, "PeerAuthentication")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["search", "web"]
    for policy in policies:
        # No selector: the policy covers the whole namespace.
        assert policy["spec"] == {"mtls": {"mode": "STRICT"}}
        assert policy["apiVersion"] == "security.istio.io/v1"


def test_strict_mtls_defaults_to_the_watched_namespaces(helm: Helm) -> None:
    objects = helm.template([CHART / "ci" / "namespaced-mesh-values.yaml"])
    assert [p["metadata"]["namespace"] for p in by_kind(objects, "PeerAuthentication")] == ["ml"]


def test_no_mesh_or_monitoring_objects_by_default(helm: Helm) -> None:
    kinds = {o["kind"] for o in helm.template()}
    assert kinds == {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "Pod",
    }


@pytest.mark.parametrize(
    ("values", "port"),
    [("monitoring-mesh-values.yaml", {"portNumber": 15020}), ("namespaced-mesh-values.yaml", {"port": "http-metrics"})],
)
def test_pod_monitor_scrapes_the_model_servers(helm: Helm, values: str, port: dict[str, Any]) -> None:
    objects = helm.template([CHART / "ci" / values])
    monitor = one(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    # The labels the operator puts on every model-server pod (bertmesh_operator.render).
    assert spec["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "bertmesh-model", "app.kubernetes.io/component": "model-server"}
    }
    (endpoint,) = spec["podMetricsEndpoints"]
    assert {k: endpoint[k] for k in port} == port
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    assert targets == {"model_deployment", "track"}  # what the dashboard filters and splits by
    if values.startswith("namespaced"):
        assert spec["namespaceSelector"] == {"matchNames": ["ml"]}
    else:
        assert spec["namespaceSelector"] == {"any": True}
        assert monitor["metadata"]["namespace"] == "monitoring"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_model_server_pods_carry_the_labels_and_port_the_pod_monitor_selects() -> None:
    from bertmesh_operator.render import render

    md = {
        "apiVersion": "serving.bertmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ml"},
        "spec": {"model": {"storageUri": "pvc://models/m"}},
    }
    (deployment,) = [o for o in render(md) if o["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "bertmesh-model"
    assert labels["app.kubernetes.io/component"] == "model-server"
    assert labels["serving.bertmesh.io/model-deployment"] == "m"
    assert labels["serving.bertmesh.io/track"] == "stable"
    ports = template["spec"]["containers"][0]["ports"]
    assert {"name": "http-metrics", "containerPort": 9400, "protocol": "TCP"} in ports
    # Istio's metrics merging (the istioMerged endpoint) follows these annotations.
    annotations = template["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "9400")


def test_helm_test_pod(helm: Helm) -> None:
    pod = one(helm.template(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/bertmesh/operator:0.1.0"
    script = container["args"][0]
    assert "http://bertmesh.bertmesh-system.svc:8080/healthz" in script
    assert "/apis/serving.bertmesh.io/v1alpha1" in script
    compile(script, "helm-test", "exec")  # valid Python
    assert not by_kind(helm.template(values={"tests": {"enabled": False}}), "Pod")


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: "defaults" if p is None else ids(p))
def test_notes_render(helm: Helm, values: Path | None) -> None:
    args = ["install", "bertmesh", str(CHART), "--dry-run=client", "--namespace", RELEASE_NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    out = helm.run(*args).stdout
    notes = out[out.index("NOTES:") :]
    assert "kubectl apply" in notes and "examples/cpu-embedding.yaml" in notes
    assert "rollout status deployment/bertmesh" in notes


def test_notes_say_to_install_keda_only_when_it_is_the_autoscaler(helm: Helm) -> None:
    args = ["install", "bertmesh", str(CHART), "--dry-run=client", "--namespace", RELEASE_NAMESPACE]
    keda = helm.run(*args).stdout
    assert "install KEDA" in keda and "http://prometheus.istio-system.svc:9090" in keda[keda.index("NOTES:") :]
    hpa = helm.run(*args, "--set", "operator.autoscaler=hpa").stdout
    assert "KEDA" not in hpa[hpa.index("NOTES:") :]
