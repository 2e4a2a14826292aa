"""Where a pod gets its model: a read-only PVC, or a download into an emptyDir by a storage initializer.

Either way the server sees the model read-only under /mnt/models and never needs network access or
credentials itself: those belong to the init container only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bertmesh_operator.render.context import MODEL_DIR, RenderContext
from bertmesh_operator.spec import ModelSpec

MODEL_VOLUME = "model"
TMP_VOLUME = "tmp"
# Istio leaves traffic of its own uid (1337) unredirected: the init container runs before the sidecar is up,
# so its download must bypass the proxy (what KServe does for the same reason).
ISTIO_PROXY_UID = 1337


@dataclass(frozen=True)
class ModelSource:
    """The pod-spec pieces that bring a model into a pod."""

    model_path: str
    volumes: list[dict[str, Any]]
    init_containers: list[dict[str, Any]] = field(default_factory=list)


def model_source(ctx: RenderContext, model: ModelSpec) -> ModelSource:
    """Volumes, init containers and the server's --model path for a model's storageUri."""
    uri = model.storage_uri
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        path = path.strip("/")
        volume = {"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        return ModelSource(model_path=f"{MODEL_DIR}/{path}" if path else MODEL_DIR, volumes=[volume])
    size = ctx.spec.resources.model_volume_size
    volume = {"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": size}}
    return ModelSource(model_path=MODEL_DIR, volumes=[volume], init_containers=[_initializer(ctx, model)])


def _initializer(ctx: RenderContext, model: ModelSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "storage-initializer",
        "image": ctx.options.storage_initializer_image,
        "imagePullPolicy": "IfNotPresent",
        "args": [model.storage_uri, MODEL_DIR],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": ISTIO_PROXY_UID,
            "runAsGroup": ISTIO_PROXY_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": MODEL_VOLUME, "mountPath": MODEL_DIR},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    if model.secret_name is not None:
        container["envFrom"] = [{"secretRef": {"name": model.secret_name}}]
    return container
