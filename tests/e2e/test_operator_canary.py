"""Canary rollouts end to end: the operator reads a real Prometheus scraping Istio-shaped metrics whose numbers
the test sets; good numbers step the weights up to promotion, bad numbers or none abort, and
`bertmesh rollout` reads and steers a rollout."""

from __future__ import annotations

from typing import Any

from tests.e2e.cluster import KubeApi
from tests.e2e.istio_traffic import IstioTraffic, Profile
from tests.e2e.kube_objects import (
    apply_md,
    bertmesh,
    children,
    condition,
    get_md,
    phase,
    ready,
    route_weights,
    tiny,
    wait_for_md,
)
from tests.e2e.operator_process import StartOperator, get_json
from tests.e2e.processes import wait_until
from tests.e2e.simcluster import SimCluster

FAST = {"interval": "10s", "threshold": 1}


def canary(name: str, **policy: Any) -> dict[str, Any]:
    """`tiny(name)` whose spec now asks for revision v2 through a canary with `policy`."""
    candidate = {"storageUri": f"https://models.example.internal/{name}-v2.tar.gz", "revision": "v2"}
    return tiny(name, traffic={"canary": {"model": candidate, **policy}})


def canary_weight(md: dict[str, Any]) -> int | None:
    return ((md.get("status") or {}).get("canary") or {}).get("weight")


def test_good_metrics_step_the_canary_up_to_promotion(
    sim_cluster: SimCluster,
    md_crd: KubeApi,
    namespace: str,
    start_operator: StartOperator,
    prometheus_url: str,
    traffic: IstioTraffic,
) -> None:
    api = md_crd
    operator = start_operator([namespace], prometheus_url=prometheus_url)
    apply_md(api, namespace, tiny("good"))
    wait_for_md(api, namespace, "good", "ready", ready, operator=operator)
    traffic.serve("good", Profile(error_ratio=0.001, latency_ms=8))

    apply_md(api, namespace, canary("good", steps=[20, 60], **FAST, analysis={"minSuccessRate": 0.99}))
    weights: list[dict[str, int]] = []

    def at(weight: int) -> dict[str, Any] | None:
        md = get_md(api, namespace, "good")
        vs = children(api, namespace, "good")[("VirtualService", "good")]
        if route_weights(vs) not in weights:
            weights.append(route_weights(vs))
        return (
            md
            if canary_weight(md) == weight and route_weights(vs) == {"stable": 100 - weight, "canary": weight}
            else None
        )

    wait_until("the canary at 20%", lambda: at(20), timeout=30, watch=[operator.process])
    wait_until("the canary at 60%", lambda: at(60), timeout=30, watch=[operator.process])
    md = wait_for_md(
        api,
        namespace,
        "good",
        "promoted: stable serves v2",
        lambda m: phase(m) == "Stable" and m["status"]["stable"]["model"]["revision"] == "v2" and ready(m),
        operator=operator,
        timeout=60,
    )
    assert md["status"].get("canary") is None
    objects = children(api, namespace, "good")
    assert ("Deployment", "good-canary") not in objects
    assert ("HorizontalPodAutoscaler", "good-canary") not in objects
    assert route_weights(objects[("VirtualService", "good")]) == {"stable": 100}
    container = objects[("Deployment", "good-stable")]["spec"]["template"]["spec"]["initContainers"][0]
    assert container["args"][0].endswith("good-v2.tar.gz")
    # Traffic went 100/0 -> 80/20 -> 40/60 and back to one route, never anything else (the first poll may come
    # after the canary was ready and took its first step).
    allowed = [
        {"stable": 100},
        {"stable": 100, "canary": 0},
        {"stable": 80, "canary": 20},
        {"stable": 40, "canary": 60},
    ]
    assert all(w in allowed for w in weights), weights
    assert weights.index({"stable": 80, "canary": 20}) < weights.index({"stable": 40, "canary": 60})
    events = get_json(api, "events", "-n", namespace, "--field-selector", "involvedObject.name=good")["items"]
    reasons = {e["reason"] for e in events}
    assert {"CanaryStarted", "CanaryReady", "CheckPassed", "Promoting", "Promoted"} <= reasons


def test_bad_metrics_or_none_abort_to_100_percent_stable_and_a_canary_at_zero(
    sim_cluster: SimCluster,
    md_crd: KubeApi,
    namespace: str,
    start_operator: StartOperator,
    prometheus_url: str,
    traffic: IstioTraffic,
) -> None:
    api = md_crd
    operator = start_operator([namespace], prometheus_url=prometheus_url)
    cases = {
        "failing": ("success rate 0.5", Profile(error_ratio=0.5)),
        "slow": ("p99 latency", Profile(latency_ms=800)),
        "silent": ("no metrics for the canary", None),
    }
    for name, (_, profile) in cases.items():
        if profile is not None:
            traffic.serve(name, profile)
        apply_md(api, namespace, canary(name, steps=[50], analysis={"maxP99LatencyMs": 250}, **FAST))

    for name, (why, _) in cases.items():
        md = wait_for_md(
            api, namespace, name, "aborted", lambda m: phase(m) == "Aborted", operator=operator, timeout=60
        )
        degraded = condition(md, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "CanaryAborted")
        assert why in degraded["message"], degraded["message"]
        assert md["status"]["canary"]["weight"] == 0
        assert md["status"]["stable"]["model"]["revision"] == "v1"
        objects = children(api, namespace, name)
        vs = objects[("VirtualService", name)]
        assert [route["name"] for route in vs["spec"]["http"]] == ["weighted", "weighted-http"]  # no header pin
        assert route_weights(vs) == {"stable": 100}
        assert objects[("Deployment", f"{name}-canary")]["spec"]["replicas"] == 0
        assert ("HorizontalPodAutoscaler", f"{name}-canary") not in objects

    def scaled_to_zero(name: str) -> bool:
        status = get_json(api, "deployment", f"{name}-canary", "-n", namespace).get("status") or {}
        return not status.get("replicas")

    wait_until("every canary at zero pods", lambda: all(scaled_to_zero(n) for n in cases), timeout=30)
    # The operator owns the aborted canary's replica count: scaling it up by hand is reverted.
    api.kubectl("scale", "deployment", "failing-canary", "-n", namespace, "--replicas=2")
    wait_until(
        "the manual scale-up reverted",
        lambda: get_json(api, "deployment", "failing-canary", "-n", namespace)["spec"]["replicas"] == 0,
        timeout=30,
        watch=[operator.process],
    )
    assert ready(get_md(api, namespace, "failing"))  # stable kept serving throughout


def test_rollout_status_abort_and_promote_from_the_command_line(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    api = md_crd
    operator = start_operator([namespace])
    apply_md(api, namespace, tiny("steady"))
    # Checks every 30 minutes: nothing but the commands moves this rollout.
    apply_md(api, namespace, canary("steered", steps=[10, 50], interval="30m"))
    wait_for_md(api, namespace, "steady", "ready", ready, operator=operator)
    wait_for_md(api, namespace, "steered", "canary at 10%", lambda m: canary_weight(m) == 10, operator=operator)

    status = bertmesh(api, "rollout", "status", "steered", "-n", namespace)
    assert status.returncode == 0, status.stderr
    assert "Phase:         Progressing" in status.stdout
    assert "Weights:       stable 90%, canary 10%" in status.stdout
    assert "Step:          1/2" in status.stdout
    assert "Failed checks: 0/3" in status.stdout
    assert "Canary:        v2" in status.stdout

    nothing = bertmesh(api, "rollout", "promote", "steady", "-n", namespace)
    assert nothing.returncode == 1
    assert f"no rollout in progress for {namespace}/steady (phase Stable)" in nothing.stderr
    missing = bertmesh(api, "rollout", "status", "nope", "-n", namespace)
    assert missing.returncode == 1 and "not found" in missing.stderr

    abort = bertmesh(api, "rollout", "abort", "steered", "-n", namespace)
    assert abort.returncode == 0, abort.stderr
    md = wait_for_md(api, namespace, "steered", "aborted", lambda m: phase(m) == "Aborted", operator=operator)
    assert "rollout abort command" in condition(md, "Degraded")["message"]
    assert route_weights(children(api, namespace, "steered")[("VirtualService", "steered")]) == {"stable": 100}
    again = bertmesh(api, "rollout", "abort", "steered", "-n", namespace)
    assert again.returncode == 1 and "already aborted" in again.stderr

    promote = bertmesh(api, "rollout", "promote", "steered", "-n", namespace)
    assert promote.returncode == 0, promote.stderr
    md = wait_for_md(
        api,
        namespace,
        "steered",
        "promoted",
        lambda m: phase(m) == "Stable" and m["status"]["stable"]["model"]["revision"] == "v2" and ready(m),
        operator=operator,
        timeout=60,
    )
    assert condition(md, "Degraded")["status"] == "False"
    final = bertmesh(api, "rollout", "status", "steered", "-n", namespace)
    assert "Phase:         Stable" in final.stdout and "Canary:        -" in final.stdout
