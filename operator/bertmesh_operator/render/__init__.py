"""`render(md)`: every Kubernetes and Istio object a ModelDeployment needs, as plain dicts. Pure.

No kopf, no Kubernetes client, no I/O: the same function backs the operator (which server-side applies the
result) and `bertmesh render` (which prints it). The rollout state decides which tracks exist and the
traffic split; without one, it comes from the object's status, or is the initial state (stable only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bertmesh_operator.render.context import RenderContext, RenderOptions, Track, grpc_endpoint
from bertmesh_operator.render.deployment import render_deployment
from bertmesh_operator.render.istio_ratelimit import render_envoy_filter
from bertmesh_operator.render.istio_security import render_authorization_policy, render_peer_authentication
from bertmesh_operator.render.istio_traffic import render_destination_rule, render_virtual_service
from bertmesh_operator.render.scaling import render_autoscaler, render_pdb
from bertmesh_operator.render.service import render_service, render_service_account
from bertmesh_operator.resource import ModelDeployment, parse_model_deployment
from bertmesh_operator.rollout import RolloutState
from bertmesh_operator.status import rollout_state

__all__ = ["RenderOptions", "Track", "grpc_endpoint", "render"]


def render(
    md: Mapping[str, Any] | ModelDeployment,
    *,
    state: RolloutState | None = None,
    options: RenderOptions | None = None,
) -> list[dict[str, Any]]:
    """Return every child object of a ModelDeployment, in apply order (identities and subsets first)."""
    model = parse_model_deployment(md)
    if state is None:
        state = rollout_state(model.status, model.spec)
    ctx = RenderContext(md=model, state=state, options=options or RenderOptions())
    objects = [render_service_account(ctx), render_service(ctx)]
    objects += [render_deployment(ctx, track) for track in ctx.tracks]
    objects += [render_autoscaler(ctx, track) for track in ctx.tracks if not track.scaled_down]
    objects += [
        render_pdb(ctx),
        render_destination_rule(ctx),
        render_virtual_service(ctx),
        render_peer_authentication(ctx),
        render_authorization_policy(ctx),
    ]
    envoy_filter = render_envoy_filter(ctx)
    if envoy_filter is not None:
        objects.append(envoy_filter)
    return objects
