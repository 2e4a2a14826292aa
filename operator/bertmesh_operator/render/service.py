"""The Kubernetes objects that give the model an identity and an address: ServiceAccount and Service.

One Service spans both tracks: Istio's DestinationRule subsets split it by the track label, so callers only
ever know `<md>.<namespace>.svc:50051` (gRPC) and `:8080` (HTTP). The ports declare `appProtocol: grpc` and
`http` so the mesh speaks HTTP/2 and reports gRPC status codes on one, HTTP status codes on the other (what
canary analysis reads).
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import SERVED_PORTS, RenderContext


def render_service_account(ctx: RenderContext) -> dict[str, Any]:
    """The pods' own identity, so mTLS principals and callers' policies can name this model precisely."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(ctx.name, "identity"),
        "automountServiceAccountToken": False,
    }


def render_service(ctx: RenderContext) -> dict[str, Any]:
    """The Service (gRPC and HTTP ports) selecting the pods of every track."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(ctx.name, "endpoint"),
        "spec": {
            "type": "ClusterIP",
            "selector": ctx.selector(),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP", "appProtocol": name}
                for name, port in SERVED_PORTS
            ],
        },
    }
