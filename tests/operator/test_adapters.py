"""The thin adapters over HTTP: the Kubernetes REST calls (paths, content types, error kinds) and Prometheus
queries (values, no data, unreachable), each against a tiny local HTTP server that records what it got."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client as k8s

from bertmesh_operator.analysis import AnalysisTarget
from bertmesh_operator.errors import ApiRejectedError, MetricsUnavailableError, TransientApiError
from bertmesh_operator.kube import KubeClient, resource_path
from bertmesh_operator.prometheus import PrometheusClient


@dataclass
class Stub:
    """A local HTTP server answering every request with `status` and `body`; it records the requests."""

    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@pytest.fixture(scope="module")
def stub_server() -> Iterator[Stub]:
    state = Stub()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            payload = self.rfile.read(length) if length else b""
            url = urllib.parse.urlsplit(self.path)
            state.requests.append(
                {
                    "method": self.command,
                    "path": url.path,
                    "query": dict(urllib.parse.parse_qsl(url.query)),
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(payload) if payload else None,
                }
            )
            data = json.dumps(state.body).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            for key, value in state.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def stub(stub_server: Stub) -> Stub:
    """The module's server, answering 200 {} again and with no requests recorded."""
    stub_server.status, stub_server.body, stub_server.headers = 200, {}, {}
    stub_server.requests.clear()
    return stub_server


def kube_client(url: str) -> KubeClient:
    configuration = k8s.Configuration(host=url)
    configuration.retries = 0
    return KubeClient(k8s.ApiClient(configuration), timeout=5)


DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "m-stable", "namespace": "ml"},
}


def test_paths() -> None:
    assert resource_path("v1", "services", "ml", "m") == "/api/v1/namespaces/ml/services/m"
    assert resource_path("apps/v1", "deployments", "ml") == "/apis/apps/v1/namespaces/ml/deployments"
    assert (
        resource_path("serving.bertmesh.io/v1alpha1", "modeldeployments", "ml", "m", "status")
        == "/apis/serving.bertmesh.io/v1alpha1/namespaces/ml/modeldeployments/m/status"
    )


def test_apply_is_a_forced_server_side_apply_with_one_field_manager(stub: Stub) -> None:
    stub.body = {**DEPLOYMENT, "metadata": {**DEPLOYMENT["metadata"], "resourceVersion": "5"}}
    stored = kube_client(stub.url).apply(DEPLOYMENT)
    assert stored["metadata"]["resourceVersion"] == "5"
    (request,) = stub.requests
    assert request["method"] == "PATCH"
    assert request["path"] == "/apis/apps/v1/namespaces/ml/deployments/m-stable"
    assert request["query"] == {"fieldManager": "bertmesh-operator", "force": "true"}
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["body"] == DEPLOYMENT


def test_an_unknown_kind_is_never_written(stub: Stub) -> None:
    with pytest.raises(ApiRejectedError, match="not a kind the operator may write"):
        kube_client(stub.url).apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "x"}})
    assert stub.requests == []


def test_status_is_a_merge_patch_of_the_status_subresource(stub: Stub) -> None:
    kube_client(stub.url).patch_model_deployment_status("ml", "m", {"phase": "Stable", "canary": None})
    (request,) = stub.requests
    assert request["path"].endswith("/namespaces/ml/modeldeployments/m/status")
    assert request["content_type"] == "application/merge-patch+json"
    assert request["body"] == {"status": {"phase": "Stable", "canary": None}}


def test_delete_carries_a_uid_precondition_and_a_missing_object_is_fine(stub: Stub) -> None:
    assert kube_client(stub.url).delete("apps/v1", "Deployment", "ml", "m-canary", "uid-1")
    assert stub.requests[0]["body"]["preconditions"] == {"uid": "uid-1"}
    stub.status, stub.body = 404, {"kind": "Status", "message": "not found"}
    assert not kube_client(stub.url).delete("apps/v1", "Deployment", "ml", "m-canary", "uid-1")
    assert kube_client(stub.url).get_model_deployment("ml", "m") is None


@pytest.mark.parametrize(
    ("status", "headers", "delay"),
    [(429, {"Retry-After": "3"}, 3.0), (500, {}, 5.0), (503, {}, 5.0), (409, {}, 5.0)],
)
def test_what_heals_is_transient(stub: Stub, status: int, headers: dict[str, str], delay: float) -> None:
    stub.status, stub.headers, stub.body = status, headers, {"kind": "Status", "message": "try later"}
    with pytest.raises(TransientApiError, match="try later") as caught:
        kube_client(stub.url).apply(DEPLOYMENT)
    assert caught.value.delay == delay


@pytest.mark.parametrize("status", [403, 422])
def test_what_needs_a_person_is_rejected_with_the_api_server_s_message(stub: Stub, status: int) -> None:
    stub.status, stub.body = status, {"kind": "Status", "message": 'deployments.apps "m-stable" is forbidden'}
    with pytest.raises(ApiRejectedError, match="is forbidden") as caught:
        kube_client(stub.url).apply(DEPLOYMENT)
    assert caught.value.status == status


def test_an_unreachable_api_server_is_transient() -> None:
    with pytest.raises(TransientApiError, match="unreachable"):
        kube_client("http://127.0.0.1:9").get_model_deployment("ml", "m")


TARGET = AnalysisTarget(namespace="ml", service="m", workload="m-canary", window="10s")


def vector(value: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, value]}]}}


def test_prometheus_values_and_no_data(stub: Stub) -> None:
    stub.body = vector("0.995")
    metrics = PrometheusClient(stub.url).canary_metrics(TARGET)
    assert metrics.success_rate == metrics.p99_latency_ms == 0.995
    first, second = stub.requests
    assert first["path"] == "/api/v1/query"
    assert 'destination_workload="m-canary"' in first["query"]["query"]
    assert "histogram_quantile(0.99" in second["query"]["query"]
    stub.body = {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert PrometheusClient(stub.url).query("up") is None  # no traffic: missing data, not an error
    stub.body = vector("NaN")
    assert PrometheusClient(stub.url).query("up") is None


@pytest.mark.parametrize(("status", "body"), [(503, {}), (400, {"status": "error"}), (200, {"status": "error"})])
def test_prometheus_that_cannot_answer_is_unavailable(stub: Stub, status: int, body: dict[str, Any]) -> None:
    stub.status, stub.body = status, body
    with pytest.raises(MetricsUnavailableError):
        PrometheusClient(stub.url).query("up")


def test_unreachable_prometheus_is_unavailable() -> None:
    with pytest.raises(MetricsUnavailableError, match="unreachable"):
        PrometheusClient("http://127.0.0.1:9", timeout=2).query("up")


def test_a_kind_the_api_server_does_not_serve_says_which_crd_is_missing(stub: Stub) -> None:
    stub.status, stub.body = 404, "404 page not found"
    virtual_service = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "m", "namespace": "ml"},
    }
    with pytest.raises(ApiRejectedError, match="VirtualService is not served by the API server: install its CRD"):
        kube_client(stub.url).apply(virtual_service)


def test_children_are_listed_by_label_in_pages_with_their_kind(stub: Stub) -> None:
    stub.body = {"items": [{"metadata": {"name": "x"}}], "metadata": {}}
    found: list[dict[str, Any]] = []
    missing = kube_client(stub.url).list_children(["ml"], "serving.bertmesh.io/model-deployment", found.append)
    assert missing == []
    assert len(found) == len(stub.requests) == 11  # one page per child kind
    assert {(o["apiVersion"], o["kind"]) for o in found} >= {("apps/v1", "Deployment"), ("v1", "Service")}
    assert stub.requests[0]["query"]["labelSelector"] == "serving.bertmesh.io/model-deployment"
    assert all("/namespaces/ml/" in r["path"] for r in stub.requests)
    stub.requests.clear()
    stub.status, stub.body = 404, "404 page not found"
    found.clear()
    missing = kube_client(stub.url).list_children([], "x", found.append)
    assert found == [] and len(missing) == 11
    assert all("/namespaces/" not in r["path"] for r in stub.requests)  # every namespace
