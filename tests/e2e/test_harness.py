"""The harness itself, against the real binaries: what every other e2e test relies on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, watch

from tests.e2e.cluster import KubeApi
from tests.e2e.istio import IstioAnalyze, IstioctlError, IstioValidate
from tests.e2e.processes import CommandError, wait_until
from tests.e2e.prometheus import MetricsExporter, StartPrometheus
from tests.e2e.simcluster import GPU_RESOURCE, SimCluster

pytestmark = pytest.mark.e2e

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.e2e.bertmesh.io"},
    "spec": {
        "group": "e2e.bertmesh.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 8},
                                    "colour": {"type": "string", "maxLength": 16},
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_installs_and_custom_object_round_trips(
    kube_api: KubeApi, namespace: str, api_client: client.ApiClient
) -> None:
    kube_api.apply_manifests(WIDGET_CRD)  # waits until Established
    objects = client.CustomObjectsApi(api_client)
    body = {
        "apiVersion": "e2e.bertmesh.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3, "colour": "teal", "unknown": "pruned"},
    }
    objects.create_namespaced_custom_object("e2e.bertmesh.io", "v1", namespace, "widgets", body)

    got = cast(
        dict[str, Any],
        objects.get_namespaced_custom_object("e2e.bertmesh.io", "v1", namespace, "widgets", "w1"),
    )

    assert got["spec"] == {"size": 3, "colour": "teal"}  # the structural schema prunes unknown fields
    bad = {**body, "metadata": {"name": "w2"}, "spec": {"size": 99}}
    with pytest.raises(client.ApiException) as refused:
        objects.create_namespaced_custom_object("e2e.bertmesh.io", "v1", namespace, "widgets", bad)
    assert refused.value.status == 422


def test_watch_sees_an_update(namespace: str, api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="watched"), data={"step": "1"})
    created = core.create_namespaced_config_map(namespace, cm)
    assert created.metadata is not None
    core.patch_namespaced_config_map("watched", namespace, {"data": {"step": "2"}})

    # A watch from the creation's resourceVersion replays what happened after it, so no thread is needed.
    # (kubernetes.watch has no type hints.)
    events = watch.Watch().stream(  # type: ignore[no-untyped-call]
        core.list_namespaced_config_map,
        namespace,
        resource_version=created.metadata.resource_version,
        timeout_seconds=10,
    )
    for event in events:
        if event["type"] == "MODIFIED" and event["object"].metadata.name == "watched":
            assert event["object"].data == {"step": "2"}
            break
    else:
        pytest.fail("the watch ended without seeing the update")


def test_kubectl_apply(kube_api: KubeApi, namespace: str, tmp_path: Path) -> None:
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  k: v\n")

    kube_api.kubectl("apply", "-n", namespace, "-f", str(manifest))

    got = json.loads(kube_api.kubectl("get", "configmap", "applied", "-n", namespace, "-o", "json").stdout)
    assert got["data"] == {"k": "v"}
    assert "v1.37" in kube_api.kubectl("version", "-o", "json").stdout


def test_helm_install_of_a_small_chart(kube_api: KubeApi, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("message: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  message: {{ .Values.message | quote }}\n"
    )

    kube_api.helm("install", "demo", str(chart), "-n", namespace, "--set", "message=hi", "--wait")

    got = json.loads(kube_api.kubectl("get", "configmap", "demo-cm", "-n", namespace, "-o", "json").stdout)
    assert got["data"] == {"message": "hi"}
    releases = json.loads(kube_api.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]


def test_service_account_credentials_get_only_their_rbac(kube_api: KubeApi, namespace: str) -> None:
    kube_api.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kube_api.kubectl("create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", "-n", namespace)
    kube_api.kubectl(
        "create",
        "rolebinding",
        "reader",
        "--role=read-cm",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    kubeconfig = kube_api.service_account_kubeconfig("reader", namespace)

    whoami = json.loads(kube_api.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    kube_api.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig)
    with pytest.raises(CommandError, match=r"(?i)forbidden"):
        kube_api.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig)


def test_istio_crds_are_installed(kube_api: KubeApi, namespace: str) -> None:
    stored = kube_api.apply_manifests(virtual_service(weights=(90, 10), namespace=namespace))
    assert stored[0]["spec"]["http"][0]["route"][1]["weight"] == 10


def test_istio_base_chart_renders_and_the_apiserver_accepts_it(kube_api: KubeApi) -> None:
    chart = kube_api.toolchain.istio_base_chart
    kube_api.apply_manifests({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
    # No istiod runs here, so no default-revision webhook that would point at it.
    rendered = kube_api.helm("template", "istio-base", str(chart), "-n", "istio-system", "--set", "defaultRevision=")
    # A server-side dry run: the CRDs the session installed stay as they are for every other test.
    out = kube_api.kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-", stdin=rendered.stdout
    )
    assert "virtualservices.networking.istio.io serverside-applied (server dry run)" in out.stdout


def _pod(name: str, gpus: int) -> dict[str, Any]:
    resources = {"limits": {GPU_RESOURCE: str(gpus)}, "requests": {GPU_RESOURCE: str(gpus)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        # kwok runs no containers: the image is never pulled.
        "spec": {"containers": [{"name": "model", "image": "registry.invalid/model:0", "resources": resources}]},
    }


def _get(kube_api: KubeApi, kind: str, name: str, namespace: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(kube_api.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    return got


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def test_gpu_pod_lands_on_a_fake_gpu_node_and_becomes_ready(sim_cluster: SimCluster, namespace: str) -> None:
    api = sim_cluster.api
    api.apply_manifests(_pod("one-gpu", 1), namespace=namespace)

    def ready() -> dict[str, Any] | None:
        pod = _get(api, "pod", "one-gpu", namespace)
        cond = _condition(pod, "Ready")
        return pod if cond and cond["status"] == "True" else None

    pod = wait_until("the 1-GPU pod to be Ready", ready, timeout=30)
    assert pod["spec"]["nodeName"] in sim_cluster.gpu_nodes
    assert pod["status"]["phase"] == "Running"


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(sim_cluster: SimCluster, namespace: str) -> None:
    api = sim_cluster.api
    too_many = max(sim_cluster.gpu_nodes.values()) + 1
    api.apply_manifests(_pod("greedy", too_many), namespace=namespace)

    def unschedulable() -> dict[str, Any] | None:
        cond = _condition(_get(api, "pod", "greedy", namespace), "PodScheduled")
        return cond if cond and cond["status"] == "False" and cond["reason"] == "Unschedulable" else None

    cond = wait_until("the scheduler to report the pod Unschedulable", unschedulable, timeout=30)
    assert f"Insufficient {GPU_RESOURCE}" in cond["message"]
    pod = _get(api, "pod", "greedy", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]


def test_deployment_on_gpu_nodes_gets_ready_replicas(sim_cluster: SimCluster, namespace: str) -> None:
    api = sim_cluster.api
    labels = {"app": "gpu-model"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-model"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": _pod("unused", 1)["spec"]},
        },
    }
    api.apply_manifests(deployment, namespace=namespace)

    def all_ready() -> bool:
        return bool(_get(api, "deployment", "gpu-model", namespace).get("status", {}).get("readyReplicas") == 2)

    wait_until("2/2 replicas Ready", all_ready, timeout=60)


def virtual_service(
    *,
    weights: tuple[int, int],
    timeout: str = "5s",
    subsets: tuple[str, str] = ("stable", "canary"),
    namespace: str = "models",
) -> dict[str, Any]:
    """A VirtualService splitting gRPC traffic for host `model` between two subsets."""
    route = [
        {"destination": {"host": "model", "subset": subset}, "weight": weight}
        for subset, weight in zip(subsets, weights, strict=True)
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "model", "namespace": namespace},
        "spec": {"hosts": ["model"], "http": [{"route": route, "timeout": timeout}]},
    }


def test_istio_validate_accepts_a_valid_and_rejects_an_invalid_virtual_service(
    istio_validate: IstioValidate,
) -> None:
    assert istio_validate(virtual_service(weights=(90, 10))).ok

    with pytest.raises(IstioctlError) as rejected:
        istio_validate(virtual_service(weights=(90, 10), timeout="soon"))
    assert 'invalid duration "soon"' in str(rejected.value)
    result = istio_validate(virtual_service(weights=(90, 10), timeout="soon"), check=False)
    assert not result.ok and result.returncode != 0


def _service_and_rule(subsets: list[str]) -> list[dict[str, Any]]:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "model", "namespace": "models"},
        "spec": {
            "selector": {"app": "model"},
            "ports": [{"name": "grpc", "port": 8081, "appProtocol": "grpc"}],
        },
    }
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "model", "namespace": "models"},
        "spec": {"host": "model", "subsets": [{"name": s, "labels": {"track": s}} for s in subsets]},
    }
    return [service, rule]


def test_istio_analyze_reports_a_route_to_an_undefined_subset(istio_analyze: IstioAnalyze) -> None:
    vs = virtual_service(weights=(90, 10))
    assert istio_analyze([vs, *_service_and_rule(["stable", "canary"])]).ok

    result = istio_analyze([vs, *_service_and_rule(["stable"])], check=False)

    assert not result.ok
    assert "IST0101" in result.codes, result.output


def test_prometheus_scrapes_the_value_an_exporter_serves(
    start_prometheus: StartPrometheus, metrics_exporter: MetricsExporter
) -> None:
    metrics_exporter.set("bertmesh_e2e_answer", 42.5, {"track": "canary"})
    prom = start_prometheus([metrics_exporter.address])

    assert prom.wait_for_value('bertmesh_e2e_answer{track="canary"}', lambda v: v == 42.5) == 42.5
    metrics_exporter.set("bertmesh_e2e_answer", 7, {"track": "canary"})
    assert prom.wait_for_value('bertmesh_e2e_answer{track="canary"}', lambda v: v == 7) == 7
