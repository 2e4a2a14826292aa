"""render(): the Kubernetes workload objects (Deployments, Service, HPA, PDB), as a cluster would see them."""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any

import kubernetes_validate
import pytest

from bertmesh_operator.render import RenderOptions, grpc_endpoint, render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, initial_state, step
from bertmesh_operator.spec.serving import Task as SpecTask
from bertmesh_operator.states import Phase

MakeManifest = Callable[..., dict[str, Any]]
Objects = list[dict[str, Any]]
CANARY = {"model": {"storageUri": "pvc://models/v2", "revision": "v2"}, "steps": [10, 50]}


def by_key(objects: Objects) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def container(deployment: dict[str, Any], name: str = "model-server") -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name)


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def rollout(manifest: dict[str, Any], t0: datetime, phase: Phase) -> RolloutState:
    """Drive the state machine to a phase, as the operator would."""
    spec = parse_model_deployment(manifest).spec
    state = step(initial_state(spec), None, spec, t0)
    if phase is Phase.STABLE:
        return initial_state(spec)
    state = step(state, Observation(canary_ready_replicas=1), spec, t0)
    revision = state.canary_revision or ""
    if phase is Phase.PROMOTING:
        state = step(state, None, spec, t0, Command("promote", revision))
    if phase is Phase.ABORTED:
        state = step(state, None, spec, t0, Command("abort", revision))
    assert state.phase is phase
    return state


def test_stable_only_objects(make_md: MakeManifest) -> None:
    objects = render(make_md())
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in objects] == [
        "ServiceAccount/minilm",
        "Service/minilm",
        "Deployment/minilm-stable",
        "ScaledObject/minilm-stable",
        "PodDisruptionBudget/minilm",
        "DestinationRule/minilm",
        "VirtualService/minilm",
        "PeerAuthentication/minilm",
        "AuthorizationPolicy/minilm",
    ]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "ml"
        labels = obj["metadata"]["labels"]
        assert labels["serving.bertmesh.io/model-deployment"] == "minilm"
        assert labels["app.kubernetes.io/instance"] == "minilm"
        assert labels["app.kubernetes.io/managed-by"] == "bertmesh-operator"
        assert "ownerReferences" not in obj["metadata"]  # no uid offline


def test_owner_reference_once_the_uid_is_known(make_md: MakeManifest) -> None:
    manifest = make_md()
    manifest["metadata"]["uid"] = "0b6f-uid"
    for obj in render(manifest):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "serving.bertmesh.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "minilm",
            "uid": "0b6f-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_server_container_follows_the_contract(make_md: MakeManifest) -> None:
    manifest = make_md(
        {
            "model": {"storageUri": "pvc://models/minilm/v1", "task": "embedding", "revision": "v1"},
            "runtime": {"maxBatchDelayMs": 2.5, "precision": "int8"},
            "resources": {"cpu": "1500m"},
        }
    )
    server = container(by_key(render(manifest))["Deployment/minilm-stable"])
    assert server["image"] == "ghcr.io/bertmesh/model-server:0.1.0"
    assert server["command"] == ["bertmesh", "serve"]
    args = server["args"]
    expected = {
        "--model": "/mnt/models/minilm/v1",
        "--model-name": "minilm",
        "--revision": "v1",
        "--task": "embedding",
        "--host": "0.0.0.0",
        "--port": "50051",
        "--http-port": "8080",
        "--metrics-port": "9400",
        "--device": "cpu",
        "--precision": "int8",
        "--max-batch-tokens": "16384",
        "--max-batch-requests": "64",
        "--max-batch-delay-ms": "2.5",
        "--max-queued-tokens": "262144",
        "--max-inputs-per-request": "64",
        "--max-chars-per-input": "20000",
        "--max-tokens-per-input": "512",
        "--max-message-bytes": "4194304",
        "--cache-entries": "10000",
        "--grace-seconds": "20",
        "--drain-delay-seconds": "0",  # the preStop pause is the pod's endpoint-propagation window
        "--threads": "2",  # 1500m rounded up
    }
    assert {flag: arg(args, flag) for flag in expected} == expected
    assert len(args) == 2 * len(expected)
    assert server["ports"] == [
        {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "http-metrics", "containerPort": 9400, "protocol": "TCP"},
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # probes stay gRPC
        assert server[probe]["grpc"] == {"port": 50051, "service": ""}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in server["env"]


def test_every_server_task_is_a_spec_task_passed_to_the_server(make_md: MakeManifest) -> None:
    """The CRD's task enum is the server's `--task` choices (model_server.tasks.Task), rerank included."""
    server_tasks = {"embedding", "sequence-classification", "token-classification", "fill-mask", "rerank"}
    assert set(typing.get_args(SpecTask)) == {"auto", *server_tasks}
    manifest = make_md({"model": {"storageUri": "pvc://models/ms-marco/v1", "task": "rerank"}})
    assert arg(container(by_key(render(manifest))["Deployment/minilm-stable"])["args"], "--task") == "rerank"


def test_pod_is_restricted_with_a_read_only_root(make_md: MakeManifest) -> None:
    for fragment in ({}, {"model": {"storageUri": "s3://bucket/minilm", "secretName": "s3-creds"}}):
        pod = by_key(render(make_md(fragment)))["Deployment/minilm-stable"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        allowed = {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected", "downwardAPI"}
        for volume in pod["volumes"]:
            assert set(volume) - {"name"} <= allowed
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert host not in pod
        tmp = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp")
        assert tmp["name"] == "tmp"


def test_model_from_a_pvc_is_mounted_read_only(make_md: MakeManifest) -> None:
    pod = by_key(render(make_md()))["Deployment/minilm-stable"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    model = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": "/mnt/models", "readOnly": True}


def test_model_from_object_storage_is_downloaded_by_an_init_container(make_md: MakeManifest) -> None:
    manifest = make_md(
        {
            "model": {"storageUri": "s3://bucket/minilm", "secretName": "s3-creds"},
            "resources": {"modelVolumeSize": "3Gi"},
        }
    )
    deployment = by_key(render(manifest))["Deployment/minilm-stable"]
    pod = deployment["spec"]["template"]["spec"]
    init = container(deployment, "storage-initializer")
    assert init["image"] == "kserve/storage-initializer:v0.17.0"
    assert init["args"] == ["s3://bucket/minilm", "/mnt/models"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert init["securityContext"]["runAsUser"] == 1337  # bypasses the not-yet-running sidecar
    assert {"name": "model", "mountPath": "/mnt/models"} in init["volumeMounts"]
    assert next(v for v in pod["volumes"] if v["name"] == "model") == {
        "name": "model",
        "emptyDir": {"sizeLimit": "3Gi"},
    }
    server_mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")
    assert server_mount["readOnly"] is True
    assert arg(pod["containers"][0]["args"], "--model") == "/mnt/models"
    # The server itself never sees the credentials.
    assert "envFrom" not in pod["containers"][0]
    options = RenderOptions(storage_initializer_image="registry.local/si:1")
    pinned = by_key(render(manifest, options=options))["Deployment/minilm-stable"]
    assert container(pinned, "storage-initializer")["image"] == "registry.local/si:1"


def test_gpu_limits_tolerations_and_node_selector(make_md: MakeManifest) -> None:
    manifest = make_md(
        {
            "resources": {
                "gpus": 1,
                "nodeSelector": {"nvidia.com/gpu.product": "A100"},
                "tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
            }
        }
    )
    deployment = by_key(render(manifest))["Deployment/minilm-stable"]
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "cpu" not in server["resources"]["limits"]
    assert arg(server["args"], "--device") == "cuda"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    cpu_pod = by_key(render(make_md()))["Deployment/minilm-stable"]["spec"]["template"]["spec"]
    assert "tolerations" not in cpu_pod
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"]


def test_grace_period_outlasts_the_server_drain(make_md: MakeManifest) -> None:
    deployment = by_key(render(make_md({"runtime": {"graceSeconds": 45}})))["Deployment/minilm-stable"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 45 + 5
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["proxy.istio.io/config"] == '{"terminationDrainDuration": "50s"}'


def test_pod_template_metadata(make_md: MakeManifest) -> None:
    template = by_key(render(make_md()))["Deployment/minilm-stable"]["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/scrape"] == "true"
    assert template["annotations"]["prometheus.io/port"] == "9400"
    assert template["annotations"]["prometheus.io/path"] == "/metrics"
    assert template["labels"]["sidecar.istio.io/inject"] == "true"
    assert template["labels"]["serving.bertmesh.io/track"] == "stable"
    revision = parse_model_deployment(make_md()).spec.base_serving.revision
    assert template["labels"]["serving.bertmesh.io/revision"] == revision
    assert template["labels"]["service.istio.io/canonical-revision"] == revision


def test_service_spans_both_tracks_with_grpc_and_http_app_protocols(make_md: MakeManifest) -> None:
    service = by_key(render(make_md()))["Service/minilm"]
    assert service["spec"]["selector"] == {"serving.bertmesh.io/model-deployment": "minilm"}
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
    ]
    assert grpc_endpoint("minilm", "ml") == "minilm.ml.svc.cluster.local:50051"


def test_pdb(make_md: MakeManifest) -> None:
    pdb = by_key(render(make_md()))["PodDisruptionBudget/minilm"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"] == {"matchLabels": {"serving.bertmesh.io/model-deployment": "minilm"}}


def test_canary_track_while_progressing(make_md: MakeManifest, t0: datetime) -> None:
    manifest = make_md({"traffic": {"canary": CANARY}})
    state = rollout(manifest, t0, Phase.PROGRESSING)
    objects = by_key(render(manifest, state=state))
    stable, canary = objects["Deployment/minilm-stable"], objects["Deployment/minilm-canary"]
    assert arg(container(stable)["args"], "--model") == "/mnt/models/minilm"
    assert arg(container(canary)["args"], "--model") == "/mnt/models/v2"
    assert arg(container(canary)["args"], "--revision") == "v2"
    assert canary["spec"]["selector"]["matchLabels"]["serving.bertmesh.io/track"] == "canary"
    assert "replicas" not in canary["spec"]  # the canary's autoscaler owns it
    scaler = objects["ScaledObject/minilm-canary"]["spec"]
    assert (scaler["minReplicaCount"], scaler["scaleTargetRef"]["name"]) == (1, "minilm-canary")


def test_aborted_canary_runs_no_replicas(make_md: MakeManifest, t0: datetime) -> None:
    manifest = make_md({"traffic": {"canary": CANARY}})
    objects = by_key(render(manifest, state=rollout(manifest, t0, Phase.ABORTED)))
    assert objects["Deployment/minilm-canary"]["spec"]["replicas"] == 0
    assert "ScaledObject/minilm-canary" not in objects
    assert "ScaledObject/minilm-stable" in objects


def test_promoting_runs_the_candidate_on_both_tracks(make_md: MakeManifest, t0: datetime) -> None:
    manifest = make_md({"traffic": {"canary": CANARY}})
    objects = by_key(render(manifest, state=rollout(manifest, t0, Phase.PROMOTING)))
    for track in ("stable", "canary"):
        assert arg(container(objects[f"Deployment/minilm-{track}"])["args"], "--revision") == "v2"


def test_render_uses_the_status_when_no_state_is_given(make_md: MakeManifest, t0: datetime) -> None:
    from bertmesh_operator.status import rollout_status

    manifest = make_md({"traffic": {"canary": CANARY}})
    state = rollout(manifest, t0, Phase.PROGRESSING)
    spec = parse_model_deployment(manifest).spec
    manifest["status"] = rollout_status(state, spec, stable_ready_replicas=1, canary_ready_replicas=1)
    assert render(manifest) == render(manifest, state=state)


def test_render_is_pure(make_md: MakeManifest) -> None:
    manifest = make_md({"rateLimit": {"requestsPerSecond": 5, "perCaller": True}})
    before = copy.deepcopy(manifest)
    assert render(manifest) == render(manifest)
    assert manifest == before


def test_long_names_still_fit_kubernetes_limits(make_md: MakeManifest, t0: datetime) -> None:
    name = "m" * 52
    manifest = make_md({"traffic": {"canary": CANARY}}, name=name)
    for obj in render(manifest, state=rollout(manifest, t0, Phase.PROGRESSING)):
        assert len(obj["metadata"]["name"]) <= 63
        assert all(len(v) <= 63 for v in obj["metadata"]["labels"].values())


FRAGMENTS: list[dict[str, Any]] = [
    {},
    {"model": {"storageUri": "https://example.com/minilm.tar.gz"}, "autoscaling": {"metric": "cpu"}},
    {
        "model": {"storageUri": "gs://bucket/m", "secretName": "gcs"},
        "resources": {"gpus": 1, "tolerations": [{"operator": "Exists"}], "nodeSelector": {"gpu": "l4"}},
        "runtime": {"precision": "fp16"},
        "rateLimit": {"requestsPerSecond": 50, "burst": 100, "perCaller": True},
        "access": {"allowedCallers": [{"namespace": "web"}, {"namespace": "api", "serviceAccount": "gw"}]},
        "traffic": {"canary": CANARY | {"runtime": {"maxBatchTokens": 8192}}},
    },
]


@pytest.mark.parametrize("fragment", FRAGMENTS)
@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("version", ["1.33", "1.37"])
def test_core_objects_pass_kubernetes_validate_strict(
    make_md: MakeManifest, t0: datetime, fragment: dict[str, Any], phase: Phase, version: str
) -> None:
    manifest = make_md(fragment | {"traffic": fragment.get("traffic", {"canary": CANARY})})
    manifest["metadata"]["uid"] = "1234"
    for obj in render(manifest, state=rollout(manifest, t0, phase)):
        # Istio's objects are checked by istioctl (e2e), KEDA's against its CRD (test_render_scaling).
        if obj["apiVersion"].split("/")[0].endswith(("istio.io", "keda.sh")):
            continue
        kubernetes_validate.validate(obj, version, strict=True)
