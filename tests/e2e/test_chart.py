"""The chart against the real API server: it installs in both scopes, the CRD is served, and the operator's
ServiceAccount can do exactly what permissions.RULES says, proven with `kubectl auth can-i` and with real
server-side applies of an example's rendered children under its credentials.

No operator image runs here (no container runtime), so `helm test` is not run; the test pod's script runs
against this API server instead. Third-party objects (PodMonitor, KServe's ServingRuntime) are validated
server-side against their projects' real CRDs (hack/third-party-crds.sh).
"""

from __future__ import annotations

import http.server
import json
import math
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client

from bertmesh_operator.crd import CRD_NAME, CRD_PATH
from bertmesh_operator.permissions import CHILD_RESOURCES, CLUSTER_RULES, RULES, Rule
from model_server.metrics import Metrics
from tests.charts.chart import CHART, REPO, one
from tests.e2e.cluster import KubeApi, NewNamespace
from tests.e2e.processes import CommandError
from tests.e2e.prometheus import StartPrometheus, wait_for_scrape
from tests.e2e.toolchain import REQUIRE_ENV, e2e_required

pytestmark = pytest.mark.e2e

CRDS_SCRIPT = REPO / "hack" / "third-party-crds.sh"
# Between them every child kind the operator renders: a canary (two tracks, routes) and a rate limit.
# Between them every child kind: the first two render ScaledObjects, cpu-embedding a plain HPA.
EXAMPLES = [
    REPO / "examples" / "gpu-classifier-canary.yaml",
    REPO / "examples" / "rate-limited.yaml",
    REPO / "examples" / "cpu-embedding.yaml",
]
# KEDA's ScaledObject CRD (the one tests/operator checks rendered ScaledObjects against).
KEDA_CRD = REPO / "tests" / "operator" / "third_party" / "keda.sh_scaledobjects.yaml"
GROUP = "serving.bertmesh.io"
# Calls the operator never makes: each must be refused to its ServiceAccount.
Check = tuple[str, str, str]  # verb, resource (or resource/subresource), API group
NEVER: list[Check] = [
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("create", "pods/exec", ""),
    ("create", "pods", ""),
    ("get", "configmaps", ""),
    ("update", "deployments", "apps"),  # children are server-side applied (patch), never PUT
    ("create", "modeldeployments", GROUP),
    ("delete", "modeldeployments", GROUP),
    ("create", "rolebindings", "rbac.authorization.k8s.io"),
    ("patch", "gateways", "networking.istio.io"),
]
NEVER_CLUSTER: list[Check] = [
    ("list", "namespaces", ""),
    ("get", "customresourcedefinitions", "apiextensions.k8s.io"),
    ("create", "clusterroles", "rbac.authorization.k8s.io"),
    ("list", "nodes", ""),
]


def granted(rules: Sequence[Rule] = RULES) -> list[Check]:
    """(verb, resource, group) for every permission in `rules` (default permissions.RULES)."""
    return [(verb, resource, rule.api_group) for rule in rules for resource in rule.resources for verb in rule.verbs]


def can_i(api: KubeApi, kubeconfig: Path, verb: str, resource: str, group: str, namespace: str | None) -> bool:
    """`kubectl auth can-i` as the kubeconfig's user; namespace None asks cluster-wide (--all-namespaces)."""
    name, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, f"{name}.{group}" if group else name]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    result = api.kubectl(*args, check=False, kubeconfig=kubeconfig)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def answers(api: KubeApi, kubeconfig: Path, checks: list[Check], namespace: str | None) -> dict[Check, bool]:
    """`kubectl auth can-i` for each check."""
    return {check: can_i(api, kubeconfig, *check, namespace) for check in checks}


def allowed_by_review(api: KubeApi, kubeconfig: Path, checks: list[Check], namespace: str | None) -> list[Check]:
    """The checks a SelfSubjectAccessReview allows (what `kubectl auth can-i` asks), in-process: for sweeps."""
    allowed = []
    with api.api_client(kubeconfig) as client:
        reviews = k8s_client.AuthorizationV1Api(client)
        for verb, resource, group in checks:
            name, _, sub = resource.partition("/")
            attributes = k8s_client.V1ResourceAttributes(
                verb=verb, resource=name, subresource=sub or None, group=group, namespace=namespace
            )
            body = k8s_client.V1SelfSubjectAccessReview(
                spec=k8s_client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
            )
            status = reviews.create_self_subject_access_review(body).status
            if status is not None and status.allowed:
                allowed.append((verb, resource, group))
    return allowed


def install(api: KubeApi, release: str, namespace: str, values: dict[str, Any], tmp_path: Path) -> None:
    """`helm install` of the chart (the namespace created); takes over a CRD an earlier test applied. KEDA's
    ScaledObject CRD is applied first, as on a cluster with KEDA (installed by the admin): `kubectl auth can-i`
    resolves a resource through discovery, so the operator's scaledobjects rights can only be asked then."""
    api.apply_manifests(KEDA_CRD)
    values_file = tmp_path / f"{release}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    api.helm(
        "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        "--values", str(values_file), "--take-ownership",
    )  # fmt: skip


def render_children(namespace: str, tmp_path: Path) -> list[dict[str, Any]]:
    """`bertmesh render -f <examples>` with the examples placed in `namespace`: what the operator applies."""
    mds = [yaml.safe_load(path.read_text()) for path in EXAMPLES]
    for md in mds:
        md["metadata"]["namespace"] = namespace
    source = tmp_path / f"md-{namespace}.yaml"
    source.write_text(yaml.safe_dump_all(mds))
    out = subprocess.run(
        [sys.executable, "-m", "bertmesh_cli", "render", "-f", str(source), "-o", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def assert_crd_served(api: KubeApi) -> None:
    discovery = json.loads(api.kubectl("get", "--raw", f"/apis/{GROUP}/v1alpha1").stdout)
    assert "modeldeployments" in [r["name"] for r in discovery["resources"]]
    crd = json.loads(api.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"


def act_as_operator(api: KubeApi, kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    """The calls the operator makes in a namespace, with its credentials: apply children, patch the
    ModelDeployment and its status, post Events."""
    children = render_children(namespace, tmp_path)
    rendered = {(o["apiVersion"], o["kind"]) for o in children}
    assert rendered == set(CHILD_RESOURCES), f"not covered: {set(CHILD_RESOURCES) - rendered}"
    stored = api.apply_manifests(children, kubeconfig=kubeconfig, field_manager="bertmesh-operator")
    assert len(stored) == len(children)
    md = yaml.safe_load(EXAMPLES[0].read_text())
    api.apply_manifests(md, namespace=namespace)  # a model team's apply (as admin)
    name = md["metadata"]["name"]
    api.kubectl(
        "patch", "modeldeployment", name, "-n", namespace, "--type=merge",
        "-p", '{"metadata": {"finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]}}', kubeconfig=kubeconfig,
    )  # fmt: skip
    api.kubectl(
        "patch", "modeldeployment", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"message": "reconciled by the chart test"}}', kubeconfig=kubeconfig,
    )  # fmt: skip
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "ModelDeployment",
            "name": name,
            "namespace": namespace,
        },
        "reason": "Logging",
        "message": "posted with the operator's credentials",
        "type": "Normal",
    }
    api.kubectl("create", "-f", "-", stdin=json.dumps(event), kubeconfig=kubeconfig)
    # Pruning a child that is no longer rendered.
    api.kubectl("delete", "envoyfilter", "--all", "-n", namespace, kubeconfig=kubeconfig)
    unblock = '{"metadata": {"finalizers": null}}'  # no operator here to remove it
    api.kubectl("patch", "modeldeployment", name, "-n", namespace, "--type=merge", "-p", unblock)


@pytest.fixture(scope="module")
def third_party_crds() -> Path:
    """The cache of KServe's and prometheus-operator's CRDs; skips (or fails under CI) when not fetched."""
    out = subprocess.run(["bash", str(CRDS_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    if (path / ".complete").is_file():
        return path
    reason = f"third-party CRDs not fetched at {path}: run `make toolchain` (hack/third-party-crds.sh)"
    if e2e_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def test_cluster_scope_install(kube_api: KubeApi, namespace: str, new_namespace: NewNamespace, tmp_path: Path) -> None:
    release, release_ns = "bertmesh", new_namespace()
    install(kube_api, release, release_ns, yaml.safe_load((CHART / "ci" / "cluster-values.yaml").read_text()), tmp_path)
    assert_crd_served(kube_api)
    deployment = json.loads(kube_api.kubectl("get", "deployment", "bertmesh", "-n", release_ns, "-o", "json").stdout)
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    operator = kube_api.service_account_kubeconfig("bertmesh", release_ns)
    refused = [p for p, yes in answers(kube_api, operator, granted(), namespace).items() if not yes]
    assert not refused, f"permissions.RULES not granted: {refused}"
    assert can_i(kube_api, operator, "list", "modeldeployments", GROUP, None)  # cluster-wide watch
    refused = [p for p, yes in answers(kube_api, operator, granted(CLUSTER_RULES), None).items() if not yes]
    assert not refused, f"permissions.CLUSTER_RULES not granted: {refused}"
    allowed = [p for p, yes in answers(kube_api, operator, NEVER, namespace).items() if yes]
    allowed += [p for p, yes in answers(kube_api, operator, NEVER_CLUSTER, None).items() if yes]
    assert not allowed, f"granted beyond permissions.RULES: {allowed}"

    act_as_operator(kube_api, operator, namespace, tmp_path)

    kube_api.helm("uninstall", release, "--namespace", release_ns)
    assert_crd_served(kube_api)  # crds.keep: the CRD (and every ModelDeployment) survives
    assert kube_api.kubectl("get", "clusterrole", "bertmesh", check=False).returncode != 0


def test_namespaced_scope_install(
    kube_api: KubeApi, namespace: str, new_namespace: NewNamespace, tmp_path: Path
) -> None:
    kube_api.apply_manifests(CRD_PATH)  # installed outside the release: crds.enabled=false
    watched = [new_namespace(), new_namespace()]
    release, release_ns = "platform", new_namespace()
    values = {"scope": "namespaced", "namespaces": watched, "crds": {"enabled": False}}
    install(kube_api, release, release_ns, values, tmp_path)
    assert_crd_served(kube_api)
    objects = yaml.safe_load_all(kube_api.helm("get", "manifest", release, "-n", release_ns).stdout)
    assert not [o for o in objects if o and o["kind"] == "CustomResourceDefinition"]
    deployment = json.loads(
        kube_api.kubectl("get", "deployment", "platform-bertmesh", "-n", release_ns, "-o", "json").stdout
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == watched

    operator = kube_api.service_account_kubeconfig("platform-bertmesh", release_ns)
    refused = [p for p, yes in answers(kube_api, operator, granted(), watched[0]).items() if not yes]
    assert not refused, f"{watched[0]}: permissions.RULES not granted: {refused}"
    allowed = [p for p, yes in answers(kube_api, operator, NEVER, watched[0]).items() if yes]
    assert not allowed, f"{watched[0]}: granted beyond permissions.RULES: {allowed}"
    # The second namespace's Role is the same template: asked in-process (a kubectl process apiece is slow).
    assert set(allowed_by_review(kube_api, operator, [*granted(), *NEVER], watched[1])) == set(granted())
    # Nothing outside the watched namespaces, nothing cluster-wide (not even the CRDs cluster scope reads).
    clusterwide = [
        p
        for p, yes in answers(
            kube_api, operator, [("list", "customresourcedefinitions", "apiextensions.k8s.io")], None
        ).items()
        if yes
    ]
    assert not clusterwide, f"granted cluster-wide in scope namespaced: {clusterwide}"
    outside = allowed_by_review(kube_api, operator, granted(), namespace)
    assert not outside, f"granted in the unwatched namespace {namespace}: {outside}"
    cluster = allowed_by_review(kube_api, operator, [*granted(), *NEVER_CLUSTER], None)
    assert not cluster, f"granted cluster-wide: {cluster}"
    assert not can_i(kube_api, operator, "list", "modeldeployments", GROUP, None)  # the same, through kubectl

    act_as_operator(kube_api, operator, watched[0], tmp_path)
    with pytest.raises(CommandError, match="forbidden"):
        kube_api.apply_manifests(render_children(namespace, tmp_path), kubeconfig=operator)

    kube_api.helm("uninstall", release, "--namespace", release_ns)
    assert kube_api.kubectl("get", "role", "platform-bertmesh", "-n", watched[0], check=False).returncode != 0


def test_mesh_and_monitoring_objects_pass_server_side_validation(
    kube_api: KubeApi, third_party_crds: Path, new_namespace: NewNamespace, tmp_path: Path
) -> None:
    kube_api.apply_manifests(third_party_crds / "prometheus-operator" / "monitoring.coreos.com_podmonitors.yaml")
    kube_api.apply_manifests(CRD_PATH)
    locked = [new_namespace(), new_namespace()]
    monitoring = new_namespace()
    values = yaml.safe_load((CHART / "ci" / "monitoring-mesh-values.yaml").read_text())
    values["mesh"]["peerAuthentication"]["namespaces"] = locked
    values["monitoring"]["podMonitor"]["namespace"] = monitoring
    values["monitoring"]["dashboard"]["namespace"] = monitoring
    values["operator"].pop("priorityClassName")  # no such PriorityClass here
    values["crds"] = {"enabled": False}
    release_ns = new_namespace()
    install(kube_api, "observed", release_ns, values, tmp_path)

    for ns in locked:
        policy = json.loads(kube_api.kubectl("get", "peerauthentication", "-n", ns, "-o", "json").stdout)["items"]
        assert [p["spec"] for p in policy] == [{"mtls": {"mode": "STRICT"}}]
    monitor = json.loads(
        kube_api.kubectl("get", "podmonitor", "observed-bertmesh-model-servers", "-n", monitoring, "-o", "json").stdout
    )
    assert monitor["spec"]["podMetricsEndpoints"][0]["portNumber"] == 15020  # kept: the CRD knows the field
    dashboard = kube_api.kubectl("get", "configmap", "observed-bertmesh-dashboard", "-n", monitoring, "-o", "json")
    assert json.loads(json.loads(dashboard.stdout)["data"]["bertmesh-model-server.json"])["uid"]

    # The validation is real: the same PodMonitor with a misspelt field is refused.
    monitor["spec"]["podMetricsEndpoints"][0]["portNumbr"] = 15020
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        monitor["metadata"].pop(key, None)
    with pytest.raises(CommandError, match="portNumbr"):
        kube_api.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=json.dumps(monitor))
    kube_api.helm("uninstall", "observed", "--namespace", release_ns)


def test_kserve_accepts_the_serving_runtime(kube_api: KubeApi, third_party_crds: Path, namespace: str) -> None:
    kube_api.apply_manifests(third_party_crds / "kserve" / "serving.kserve.io_servingruntimes.yaml")
    runtime_path = REPO / "deploy" / "kserve" / "servingruntime.yaml"
    (stored,) = kube_api.apply_manifests(runtime_path, namespace=namespace)
    written = yaml.safe_load(runtime_path.read_text())
    # Nothing pruned: every field written is a field of KServe's schema.
    assert stored["spec"]["containers"] == written["spec"]["containers"]
    assert stored["spec"]["protocolVersions"] == ["grpc-v2"]
    assert stored["spec"]["supportedModelFormats"] == written["spec"]["supportedModelFormats"]
    # And the check is real: a misspelt field is refused, not silently dropped.
    written["spec"]["protocolVersion"] = written["spec"].pop("protocolVersions")
    with pytest.raises(CommandError, match="protocolVersion"):
        kube_api.kubectl(
            "apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(written)
        )


@pytest.fixture
def health_server() -> Iterator[dict[str, Any]]:
    """A stand-in for the operator's /healthz: answers `state["status"]`."""
    state: dict[str, Any] = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = state["status"] if self.path == "/healthz" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    yield state
    server.shutdown()


def test_the_helm_test_script_passes_against_a_real_api_server(
    kube_api: KubeApi, namespace: str, health_server: dict[str, Any], tmp_path: Path
) -> None:
    kube_api.apply_manifests(CRD_PATH)
    rendered = kube_api.helm("template", "bertmesh", str(CHART), "-n", "bertmesh-system").stdout
    pod = one([d for d in yaml.safe_load_all(rendered) if d], "Pod")
    script = pod["spec"]["containers"][0]["args"][0]
    # In the pod these are the mounted token, the in-cluster API address and the operator's Service.
    kube_api.kubectl("create", "serviceaccount", "helm-test", "-n", namespace)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(kube_api.service_account_token("helm-test", namespace))
    (sa / "ca.crt").write_text(kube_api.ca_file.read_text())

    def run(health_url: str) -> subprocess.CompletedProcess[str]:
        local = script
        for name, value in {
            "SA": str(sa),
            "API": f"{kube_api.server}/apis/{GROUP}/v1alpha1",
            "HEALTH": health_url,
            "PATIENCE_SECONDS": 3,
        }.items():
            local, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", local, count=1, flags=re.M)
            assert count == 1, name
        return subprocess.run([sys.executable, "-c", local], capture_output=True, text=True, timeout=60)

    passed = run(health_server["url"])
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.count("ok:") == 2
    health_server["status"] = 503
    failed = run(health_server["url"])
    assert failed.returncode != 0 and "FAILED: the operator answers" in failed.stderr


def test_every_dashboard_query_answers_on_a_real_prometheus(start_prometheus: StartPrometheus) -> None:
    from prometheus_client import start_http_server

    metrics = Metrics()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        labels = {"namespace": "ml", "pod": "sentiment-stable-0", "model_deployment": "sentiment", "track": "stable"}
        scrape = {"job_name": "model-servers", "static_configs": [{"targets": [address], "labels": labels}]}
        prom = start_prometheus(scrape_configs=[scrape])

        def traffic() -> None:
            for code in ("OK", "OK", "RESOURCE_EXHAUSTED"):
                metrics.requests.labels(method="Embed", code=code).inc()
                metrics.latency.labels(method="Embed").observe(0.02)
            metrics.batch_inputs.observe(8)
            metrics.batch_tokens.observe(512)
            metrics.batch_real.inc(512)
            metrics.batch_padded.inc(640)
            metrics.batch_seconds.observe(0.01)
            metrics.cache_hits.inc(3)
            metrics.cache_misses.inc(5)
            metrics.expired.inc(1)
            metrics.inflight.set(4)
            metrics.ready.set(1)
            metrics.queue_wait.observe(0.003)
            metrics.tokenization.observe(0.001)
            metrics.health_checks.labels(method="Check").inc()
            for code in ("200", "429"):
                metrics.http_requests.labels(route="/v1/embeddings", code=code).inc()
            metrics.http_latency.labels(route="/v1/embeddings").observe(0.02)

        metrics.bind_queue(lambda: 3.0, lambda: 700.0)
        metrics.model_info.labels("sentiment", "r1", "sequence-classification", "fp16", "packed", "cuda:0").set(1)
        traffic()
        wait_for_scrape(prom, address)
        traffic()  # counters move between scrapes, so every rate() is positive
        dashboard = json.loads((CHART / "dashboards" / "bertmesh-model-server.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, substitute in {"$__rate_interval": "1m", "$namespace": ".+", "$model": ".+"}.items():
                    expr = expr.replace(variable, substitute)
                answer = prom.wait_for_value(expr, lambda v: math.isfinite(v) and v > 0)
                assert answer > 0, f"{panel['title']}: {expr}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
