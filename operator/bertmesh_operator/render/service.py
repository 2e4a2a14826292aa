"""The Kubernetes objects that give the model an identity and an address: ServiceAccount and Service.

One Service spans both tracks: Istio's DestinationRule subsets split it by the track label, so callers only
ever know `<md>.<namespace>.svc:50051`. Its port declares `appProtocol: grpc` so the mesh speaks HTTP/2
and reports gRPC status codes (what canary analysis reads).
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import GRPC_PORT, RenderContext


def render_service_account(ctx: RenderContext) -> dict[str, Any]:
    """The pods' own identity, so mTLS principals and callers' policies can name this model precisely."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(ctx.name, "identity"),
        "automountServiceAccountToken": False,
    }


def render_service(ctx: RenderContext) -> dict[str, Any]:
    """The gRPC Service selecting the pods of every track."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(ctx.name, "endpoint"),
        "spec": {
            "type": "ClusterIP",
            "selector": ctx.selector(),
            "ports": [
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                }
            ],
        },
    }
