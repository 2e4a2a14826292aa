"""Every Istio object the operator renders, for every example at every rollout phase, passes the real
`istioctl validate`, and `istioctl analyze` of each whole rendered set (Services and Deployments included)
reports no error; every weighted route sums to 100 (which istioctl does not check). The embedding examples'
canaries change embedding space, so they run as re-index rollouts: their routed phase carries the mirror."""

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
from tests.example_files import model_deployment_examples

EXAMPLES = model_deployment_examples()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def embedder(manifest: dict[str, Any]) -> bool:
    """Whether the example serves an embedding model."""
    return bool(manifest["spec"]["model"].get("task") == "embedding")


def with_canary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The example with a canary of a new model revision (examples without one get it added).

    An embedder's new model writes another embedding space: its canary asks for no weighted steps (refused).
    """
    out = copy.deepcopy(manifest)
    out["metadata"] = {**out["metadata"], "namespace": "ml", "uid": "7c0ffee0-0000-4000-8000-000000000000"}
    traffic = out["spec"].setdefault("traffic", {})
    policy = {} if embedder(out) else {"steps": [10, 50]}
    traffic.setdefault("canary", {"model": {"storageUri": "pvc://models/next", "revision": "next"}, **policy})
    return out


def phases(manifest: dict[str, Any]) -> dict[str, RolloutState]:
    """The rollout states whose objects differ: stable only, canary at 0%, routed (or mirrored), promoting,
    aborted."""
    spec = parse_model_deployment(manifest).spec
    stable = initial_state(spec)
    waiting = step(stable, None, spec, T0)
    routed = step(waiting, Observation(canary_ready_replicas=1), spec, T0)
    promoting = step(routed, None, spec, T0, Command("promote", routed.canary_revision or ""))
    aborted = step(routed, None, spec, T0, Command("abort", routed.canary_revision or ""))
    return {"stable": stable, "waiting": waiting, "routed": routed, "promoting": promoting, "aborted": aborted}


CASES = [
    pytest.param(path, phase, id=f"{path.stem}-{phase}")
    for path in EXAMPLES
    for phase in ("stable", "waiting", "routed", "promoting", "aborted")
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
    vs = next(o for o in istio if o["kind"] == "VirtualService")
    weighted = vs["spec"]["http"][-1]
    if phase == "routed":
        assert [r["name"] for r in vs["spec"]["http"]] == ["canary-pin", "weighted", "canary-pin-http", "weighted-http"]
        weighted_routes = [r for r in vs["spec"]["http"] if r["name"].startswith("weighted")]
        for weighted in weighted_routes:
            mirrored = "mirror" in weighted
            assert mirrored == embedder(manifest)
            if mirrored:
                assert weighted["mirror"]["subset"] == "canary" and weighted["mirrorPercentage"] == {"value": 10.0}
                assert weighted["mirror"]["port"] == weighted["route"][0]["destination"]["port"]
                assert {d["destination"]["subset"]: d["weight"] for d in weighted["route"]} == {
                    "stable": 100,
                    "canary": 0,
                }
    else:
        assert "mirror" not in weighted
    if phase == "promoting" and embedder(manifest):
        assert {d["destination"]["subset"]: d["weight"] for d in weighted["route"]} == {"stable": 0, "canary": 100}
