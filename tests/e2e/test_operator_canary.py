"""Canary rollouts end to end: the operator reads a real Prometheus scraping Istio-shaped metrics whose numbers
the test sets; good numbers step the weights up to promotion, bad numbers or none abort, and
`bertmesh rollout` reads and steers a rollout."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.cluster import KubeApi
from tests.e2e.kube_objects import (
    apply_md,
    children,
    condition,
    get_md,
    ready,
    route_weights,
    tiny,
    wait_for_md,
)
from tests.e2e.operator_process import StartOperator, get_json
from tests.e2e.processes import wait_until
from tests.e2e.prometheus import MetricsExporter, StartPrometheus, wait_for_scrape
from tests.e2e.simcluster import SimCluster

BUCKETS = ("5", "10", "25", "50", "100", "250", "500", "1000", "2500", "+Inf")
FAST = {"interval": "10s", "threshold": 1}


@dataclass
class Profile:
    """The traffic one canary workload serves: calls per second, share failing UNAVAILABLE, latency."""

    rps: float = 50.0
    error_ratio: float = 0.0
    latency_ms: float = 8.0


class IstioTraffic:
    """Counters as Istio's destination sidecars report them, advanced every 0.2s in the exporter.

    `istio_requests_total` by `grpc_response_status` and `istio_request_duration_milliseconds_bucket`, labelled
    with the destination workload, its namespace and service, as `bertmesh_operator.analysis` queries them.
    """

    def __init__(self, exporter: MetricsExporter, namespace: str) -> None:
        self.exporter = exporter
        self.namespace = namespace
        self.profiles: dict[str, Profile] = {}
        self.totals: dict[tuple[str, ...], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="istio-traffic", daemon=True)
        self._thread.start()

    def serve(self, model_deployment: str, profile: Profile) -> None:
        """Have the canary of `model_deployment` serve `profile` from now on."""
        self.profiles[model_deployment] = profile

    def _add(self, name: str, labels: dict[str, str], amount: float) -> None:
        key = (name, *sorted(f"{k}={v}" for k, v in labels.items()))
        self.totals[key] = self.totals.get(key, 0.0) + amount
        self.exporter.set(name, self.totals[key], labels, metric_type="counter")

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.2):
            now = time.monotonic()
            elapsed, last = now - last, now
            for md, profile in list(self.profiles.items()):
                labels = {
                    "reporter": "destination",
                    "request_protocol": "grpc",
                    "destination_workload_namespace": self.namespace,
                    "destination_workload": f"{md}-canary",
                    "destination_service_name": md,
                }
                calls = profile.rps * elapsed
                self._add(
                    "istio_requests_total", {**labels, "grpc_response_status": "0"}, calls * (1 - profile.error_ratio)
                )
                self._add("istio_requests_total", {**labels, "grpc_response_status": "14"}, calls * profile.error_ratio)
                for le in BUCKETS:
                    within = le == "+Inf" or profile.latency_ms <= float(le)
                    self._add(
                        "istio_request_duration_milliseconds_bucket", {**labels, "le": le}, calls if within else 0
                    )

    def close(self) -> None:
        """Stop advancing the counters."""
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def traffic(metrics_exporter: MetricsExporter, namespace: str) -> Iterator[IstioTraffic]:
    feeder = IstioTraffic(metrics_exporter, namespace)
    yield feeder
    feeder.close()


@pytest.fixture
def prometheus_url(start_prometheus: StartPrometheus, metrics_exporter: MetricsExporter) -> str:
    prom = start_prometheus([metrics_exporter.address])
    wait_for_scrape(prom, metrics_exporter.address)
    return prom.url


def canary(name: str, **policy: Any) -> dict[str, Any]:
    """`tiny(name)` whose spec now asks for revision v2 through a canary with `policy`."""
    candidate = {"storageUri": f"https://models.example.internal/{name}-v2.tar.gz", "revision": "v2"}
    return tiny(name, traffic={"canary": {"model": candidate, **policy}})


def phase(md: dict[str, Any]) -> str | None:
    return (md.get("status") or {}).get("phase")


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
    # Traffic went 100/0 -> 80/20 -> 40/60 and back to one route, never anything else.
    assert weights[0] in ({"stable": 100}, {"stable": 100, "canary": 0})
    assert {"stable": 80, "canary": 20} in weights and {"stable": 40, "canary": 60} in weights
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


def bertmesh(api: KubeApi, *args: str) -> subprocess.CompletedProcess[str]:
    """`bertmesh ...` as a user runs it, with the admin kubeconfig."""
    return subprocess.run(
        [sys.executable, "-m", "bertmesh_cli", *args],
        env=api.tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
