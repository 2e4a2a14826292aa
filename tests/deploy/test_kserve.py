"""The KServe ServingRuntime runs the bertmesh server the way KServe expects: OIP v2 over gRPC, the model at
/mnt/models. Its schema is checked server-side against KServe's real CRD in tests/e2e/test_chart.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bertmesh_operator.render.deployment import SERVER_UID
from bertmesh_operator.spec import DEFAULT_IMAGE
from model_server.config import parse_args

RUNTIME = Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "servingruntime.yaml"
# KServe's InferenceServiceProtocol values (pkg/constants): grpc-v2 is the Open Inference Protocol over gRPC.
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}


def runtime() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RUNTIME.read_text())
    return loaded


def test_identity() -> None:
    obj = runtime()
    assert (obj["apiVersion"], obj["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    spec = obj["spec"]
    assert spec["protocolVersions"] == ["grpc-v2"] and set(spec["protocolVersions"]) <= KSERVE_PROTOCOLS
    assert spec["supportedModelFormats"][0]["name"] == "bertmesh"
    assert spec["annotations"]["prometheus.kserve.io/port"] == "9400"


def test_the_server_accepts_the_arguments_as_kserve_fills_them_in() -> None:
    (container,) = runtime()["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor's settings into
    assert container["image"] == DEFAULT_IMAGE
    assert container["command"] == ["bertmesh", "serve"]
    # KServe replaces {{.Name}} with the InferenceService's name (ReplacePlaceholders).
    args = [arg.replace("{{.Name}}", "sentiment") for arg in container["args"]]
    config = parse_args(args)
    assert str(config.model.path) == "/mnt/models"  # where KServe's storage initializer puts the model
    assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 50051, 9400)
    assert args[args.index("--model-name") + 1] == "sentiment"


def test_grpc_port_and_probe() -> None:
    (container,) = runtime()["spec"]["containers"]
    (port,) = container["ports"]
    # KServe (raw deployments) treats ports named *grpc* or *h2c* as gRPC; Knative needs exactly h2c.
    assert port == {"name": "h2c", "containerPort": 50051, "protocol": "TCP"}
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}


def test_restricted_and_read_only() -> None:
    spec = runtime()["spec"]
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == SERVER_UID and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert spec["volumes"][0]["name"] == "tmp" and "emptyDir" in spec["volumes"][0]
