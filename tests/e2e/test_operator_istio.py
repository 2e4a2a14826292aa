"""Every Istio object the operator renders, for every example at every rollout phase, passes the real
`istioctl validate`, and `istioctl analyze` of each whole rendered set (Services and Deployments included)
reports no error; every weighted route sums to 100 (which istioctl does not check)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bertmesh_operator.render import render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, initial_state, step
from tests.e2e.istio import IstioAnalyze, IstioValidate

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("**/*.yaml"))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def with_canary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The example with a canary of a new model revision (examples without one get it added)."""
    out = copy.deepcopy(manifest)
    out["metadata"] = {**out["metadata"], "namespace": "ml", "uid": "7c0ffee0-0000-4000-8000-000000000000"}
    traffic = out["spec"].setdefault("traffic", {})
    traffic.setdefault("canary", {"model": {"storageUri": "pvc://models/next", "revision": "next"}, "steps": [10, 50]})
    return out


def phases(manifest: dict[str, Any]) -> dict[str, RolloutState]:
    """The rollout states whose objects differ: stable only, canary at 0%, canary routed, aborted."""
    spec = parse_model_deployment(manifest).spec
    stable = initial_state(spec)
    waiting = step(stable, None, spec, T0)
    routed = step(waiting, Observation(canary_ready_replicas=1), spec, T0)
    aborted = step(routed, None, spec, T0, Command("abort", routed.canary_revision or ""))
    return {"stable": stable, "waiting": waiting, "routed": routed, "aborted": aborted}


CASES = [
    pytest.param(path, phase, id=f"{path.stem}-{phase}")
    for path in EXAMPLES
    for phase in ("stable", "waiting", "routed", "aborted")
]


@pytest.mark.parametrize(("path", "phase"), CASES)
def test_rendered_istio_objects_validate_and_analyze_clean(
    path: Path, phase: str, istio_validate: IstioValidate, istio_analyze: IstioAnalyze
) -> None:
    manifest = with_canary(yaml.safe_load(path.read_text()))
    objects = render(manifest, state=phases(manifest)[phase])
    istio = [o for o in objects if o["apiVersion"].endswith(".istio.io/v1") or "istio.io/" in o["apiVersion"]]
    assert {o["kind"] for o in istio} >= {"VirtualService", "DestinationRule", "PeerAuthentication"}
    istio_validate(istio)
    result = istio_analyze(objects)
    assert result.ok, result.output
    for vs in (o for o in istio if o["kind"] == "VirtualService"):
        for route in vs["spec"]["http"]:
            assert sum(d.get("weight", 100) for d in route["route"]) == 100, route
    if phase == "routed":
        vs = next(o for o in istio if o["kind"] == "VirtualService")
        assert [r["name"] for r in vs["spec"]["http"]] == ["canary-pin", "weighted", "canary-pin-http", "weighted-http"]
