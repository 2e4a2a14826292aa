"""Autoscaling on the server's own in-flight gauge with real parts, end to end.

The real apiserver with KEDA's metrics API server registered as the external metrics API, the real KEDA
operator, the real controller-manager's HPA controller, a real Prometheus scraping a real `bertmesh serve`
that stands in for the track's one pod (its series relabelled as that pod's), and the operator rendering a
ScaledObject for the ModelDeployment: load raises the Deployment's replicas, quiet brings them back after
the (shortened) stabilisation window, and with Prometheus gone the fallback count holds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from tests.e2e.cluster import KubeApi
from tests.e2e.keda import Keda
from tests.e2e.kube_objects import apply_md, condition, tiny, wait_for_md
from tests.e2e.operator_process import StartOperator
from tests.e2e.processes import ManagedProcess, free_port, wait_until
from tests.e2e.prometheus import StartPrometheus

NAME = "scaled"
# A sentence the bundled MiniLM takes a while over: eight callers keep the in-flight gauge near eight.
LONG = " ".join(["transformers weigh every token against every other token"] * 18)
CALLERS = 8
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 2,
    "metric": "inflight",
    "target": 2,  # eight in flight over a target of two: the HPA wants four, capped at two
    "scaleDownStabilizationSeconds": 10,
    "fallbackReplicas": 2,
}


def diagnosis(prometheus: Any, load: Load) -> str:
    """What Prometheus holds of the gauge and how the load fared, for a failure message."""
    held = prometheus.query(f'bertmesh_inflight_requests{{model_deployment="{NAME}"}}')
    return f"Prometheus has {held}; load answered {load.answered}, errors {load.errors[-3:]}"


class Load:
    """`CALLERS` threads calling Embed back to back until stopped."""

    def __init__(self, target: str) -> None:
        self.stopping = threading.Event()
        self.answered = 0
        self.errors: list[str] = []
        self.channel = grpc.insecure_channel(target)
        stub = pb_grpc.InferenceServiceStub(self.channel)

        def call(caller: int) -> None:
            sent = 0
            while not self.stopping.is_set():
                sent += 1
                # Never the same text twice: the server's result cache would answer at once.
                texts = [f"{LONG} {caller} {sent} {half}" for half in range(2)]
                try:
                    stub.Embed(pb.EmbedRequest(inputs=texts), timeout=60)
                except grpc.RpcError as error:
                    self.errors.append(f"{error.code()}: {error.details()}")
                    continue
                self.answered += 1

        self.threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(CALLERS)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Let every call in flight finish, then close the channel."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)
        self.channel.close()


@pytest.fixture
def model_server(kube_api: KubeApi) -> Iterator[tuple[str, int]]:
    """`bertmesh serve` on the bundled model (CPU), serving: (gRPC target, metrics port)."""
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "bertmesh_cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--metrics-port", str(metrics_port), "--http-port", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = ManagedProcess("bertmesh-serve", argv, kube_api.log_dir, env=env)
    target = f"127.0.0.1:{port}"

    def serving() -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    try:
        wait_until("bertmesh serve SERVING", serving, timeout=240, interval=1.0, watch=[process])
        yield target, metrics_port
    finally:
        process.stop()


def replicas(api: KubeApi, namespace: str) -> int:
    """The stable Deployment's wanted replicas (what the HPA sets)."""
    found = api.kubectl("get", "deployment", f"{NAME}-stable", "-n", namespace, "-o", "jsonpath={.spec.replicas}")
    return int(found.stdout or 0)


def keda_hpa(api: KubeApi, namespace: str) -> dict[str, Any] | None:
    """The HPA KEDA made for the stable track's ScaledObject, once it exists."""
    got = api.kubectl("get", "hpa", f"keda-hpa-{NAME}-stable", "-n", namespace, "-o", "json", check=False)
    return json.loads(got.stdout) if got.returncode == 0 else None


def hpa_condition(hpa: dict[str, Any], kind: str) -> str | None:
    """One HPA condition's status ("True", "False") or None."""
    for found in (hpa.get("status") or {}).get("conditions") or ():
        if found.get("type") == kind:
            return str(found.get("status"))
    return None


def scaled_to(api: KubeApi, namespace: str, wanted: int, what: str, timeout: float, why: Any) -> None:
    """Wait until the stable Deployment wants `wanted` replicas; on timeout say what KEDA's HPA saw."""
    try:
        wait_until(what, lambda: replicas(api, namespace) == wanted, timeout=timeout, interval=1.0)
    except TimeoutError as error:
        hpa = keda_hpa(api, namespace) or {}
        raise AssertionError(f"{error}; HPA status {json.dumps(hpa.get('status'))}; {why()}") from None


def test_keda_scales_a_track_on_its_servers_inflight_requests_and_holds_the_fallback(
    keda: Keda,
    md_crd: KubeApi,
    namespace: str,
    start_operator: StartOperator,
    start_prometheus: StartPrometheus,
    model_server: tuple[str, int],
) -> None:
    api = md_crd
    target, metrics_port = model_server
    # The server stands in for the track's pod: its series carry the labels the chart's PodMonitor writes.
    labels = {"namespace": namespace, "model_deployment": NAME, "track": "stable", "pod": f"{NAME}-stable-0"}
    scrape = {
        "job_name": "model-server",
        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"], "labels": labels}],
    }
    prometheus = start_prometheus(scrape_configs=[scrape])
    operator = start_operator([namespace], prometheus_url=prometheus.url)
    apply_md(api, namespace, tiny(NAME, autoscaling=AUTOSCALING))

    def metrics_readable() -> dict[str, Any] | None:
        hpa = keda_hpa(api, namespace)
        return hpa if hpa is not None and hpa_condition(hpa, "ScalingActive") == "True" else None

    # At rest: the chain answers (Prometheus -> KEDA -> external metrics API -> HPA) and wants minReplicas.
    hpa = wait_until(
        "KEDA's HPA reads the metric", metrics_readable, timeout=120, interval=1.0, watch=[operator.process]
    )
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 2
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 10
    assert replicas(api, namespace) == 1
    md = wait_for_md(api, namespace, NAME, "autoscaling", lambda m: condition(m, "Autoscaling").get("status") == "True")
    assert condition(md, "Autoscaling")["reason"] == "Autoscaled"

    load = Load(target)
    try:
        began = time.monotonic()
        scaled_to(api, namespace, 2, "scaled up to 2", 150, lambda: diagnosis(prometheus, load))
        up_seconds = time.monotonic() - began
    finally:
        load.stop()
    assert load.answered > 0
    began = time.monotonic()
    scaled_to(api, namespace, 1, "scaled back to 1", 150, lambda: diagnosis(prometheus, load))
    down_seconds = time.monotonic() - began

    # Prometheus gone: after three failed reads KEDA reports the fallback (2), and it holds.
    prometheus.stop()
    began = time.monotonic()
    scaled_to(api, namespace, 2, "fallback to 2", 180, lambda: "Prometheus stopped")
    fallback_seconds = time.monotonic() - began
    held_until = time.monotonic() + 30
    while time.monotonic() < held_until:
        assert replicas(api, namespace) == 2, "the fallback count did not hold"
        time.sleep(1)
    print(f"\nkeda e2e: up in {up_seconds:.0f}s, down in {down_seconds:.0f}s, fallback in {fallback_seconds:.0f}s")
