"""Istio security: mutual TLS required on the model's pods, and only the listed callers allowed.

An ALLOW AuthorizationPolicy on a workload denies every request that matches none of its rules, so listing
callers is enough to shut everyone else out. Callers are identified by their mTLS identity (a namespace, or
a service account's principal `<trust-domain>/ns/<ns>/sa/<sa>`), never by network address.
"""

from __future__ import annotations

from typing import Any

from bertmesh_operator.render.context import SERVED_PORTS, RenderContext

SECURITY = "security.istio.io/v1"


def render_peer_authentication(ctx: RenderContext) -> dict[str, Any]:
    """STRICT mTLS for the model's pods: plaintext callers are refused."""
    return {
        "apiVersion": SECURITY,
        "kind": "PeerAuthentication",
        "metadata": ctx.metadata(ctx.name, "security"),
        "spec": {"selector": {"matchLabels": ctx.selector()}, "mtls": {"mode": "STRICT"}},
    }


def caller_sources(ctx: RenderContext) -> list[dict[str, Any]]:
    """The `from` sources of the policy: one for whole namespaces, one for single service accounts."""
    callers = ctx.spec.access.allowed_callers
    if callers is None:
        return [{"source": {"namespaces": [ctx.namespace]}}]
    namespaces = sorted({c.namespace for c in callers if c.service_account is None})
    principals = sorted(
        {
            f"{ctx.options.trust_domain}/ns/{c.namespace}/sa/{c.service_account}"
            for c in callers
            if c.service_account is not None
        }
    )
    sources: list[dict[str, Any]] = []
    if namespaces:
        sources.append({"source": {"namespaces": namespaces}})
    if principals:
        sources.append({"source": {"principals": principals}})
    return sources


def render_authorization_policy(ctx: RenderContext) -> dict[str, Any]:
    """ALLOW the listed callers on the gRPC and HTTP ports; everything else is denied."""
    return {
        "apiVersion": SECURITY,
        "kind": "AuthorizationPolicy",
        "metadata": ctx.metadata(ctx.name, "security"),
        "spec": {
            "selector": {"matchLabels": ctx.selector()},
            "action": "ALLOW",
            "rules": [
                {"from": caller_sources(ctx), "to": [{"operation": {"ports": [str(port) for _, port in SERVED_PORTS]}}]}
            ],
        },
    }
