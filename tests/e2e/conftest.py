"""Fixtures for tests against a real control plane (docs/testing.md). Every test in tests/e2e is marked e2e.

Session-scoped, started once and shared: `kube_api` (etcd + kube-apiserver), `sim_cluster` (adds the
controller-manager, the scheduler and kwok with fake GPU nodes), `istioctl`/`istio_validate`/`istio_analyze`.
Per test: `namespace`, `api_client`, `start_prometheus`, `metrics_exporter`, `traffic` (Istio-shaped canary
metrics through it) and `prometheus_url` (a Prometheus scraping it). For the operator: `md_crd` (the
ModelDeployment CRD, session), `start_operator` (per test). For the mesh: `istiod` (per module). All need
the toolchain that `make toolchain` builds: without it they skip, or fail when BERTMESH_REQUIRE_E2E=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s_client

from tests.e2e.cluster import KubeApi, NewNamespace
from tests.e2e.istio import IstioAnalyze, Istioctl, IstioValidate
from tests.e2e.istio_traffic import IstioTraffic
from tests.e2e.istiod import Istiod, IstiodMissingError, find_istiod
from tests.e2e.keda import Keda, KedaMissingError, find_keda
from tests.e2e.operator_process import OperatorProcess, StartOperator, install_crd, operator_kubeconfig
from tests.e2e.prometheus import MetricsExporter, Prometheus, StartPrometheus, wait_for_scrape
from tests.e2e.simcluster import SimCluster
from tests.e2e.toolchain import REQUIRE_ENV, Toolchain, ToolchainMissingError, e2e_required, find_toolchain

T = TypeVar("T")

E2E_DIR = Path(__file__).parent
# Set to 1 to keep the whole working directory (etcd data, certificates, kubeconfigs) even after a pass.
KEEP_ENV = "BERTMESH_E2E_KEEP"
_kept_logs = pytest.StashKey[list[Path]]()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as e2e, so `-m "not e2e"` leaves the whole tier out."""
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say where the control plane's logs were kept (after a failure)."""
    for path in config.stash.get(_kept_logs, []):
        terminalreporter.write_line(f"e2e: control-plane logs kept in {path}", yellow=True)


def require_built(find: Callable[[], T], missing: type[Exception]) -> T:
    """`find()`, or skip the test (fail it under BERTMESH_REQUIRE_E2E=1) when it raises `missing`."""
    try:
        return find()
    except missing as exc:
        reason = str(exc)  # failed or skipped outside the except block: no chained traceback in the report
    if e2e_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the e2e tier may not be skipped)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def k8s_toolchain() -> Toolchain:
    """The built binaries; skips the test (fails it under BERTMESH_REQUIRE_E2E=1) when they are missing."""
    return require_built(find_toolchain, ToolchainMissingError)


@pytest.fixture(scope="session")
def istiod_binary(k8s_toolchain: Toolchain) -> Path:
    """pilot-discovery as hack/istiod.sh builds it; skips (fails under BERTMESH_REQUIRE_E2E=1) when missing."""
    return require_built(find_istiod, IstiodMissingError)


@pytest.fixture(scope="module")
def istiod(istiod_binary: Path, sim_cluster: SimCluster, e2e_log_dir: Path) -> Iterator[Istiod]:
    """A real istiod on the session's apiserver (kwok runs the pods it sees), one per test module.

    `.xds_address` serves plaintext ADS (`tests/e2e/xds.py` asks it as a pod's sidecar); `.debug("configz")`
    lists the Istio objects it holds.
    """
    started = Istiod.start(istiod_binary, sim_cluster.api, e2e_log_dir)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def keda_home(k8s_toolchain: Toolchain) -> Path:
    """KEDA as hack/keda.sh builds it; skips (fails under BERTMESH_REQUIRE_E2E=1) when missing."""
    return require_built(find_keda, KedaMissingError)


@pytest.fixture(scope="module")
def keda(keda_home: Path, sim_cluster: SimCluster, e2e_log_dir: Path) -> Iterator[Keda]:
    """KEDA's operator and metrics API server on the session's apiserver, the external metrics API registered
    and answering; one per test module, unregistered afterwards."""
    started = Keda.start(keda_home, sim_cluster.api, e2e_log_dir)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def e2e_workdir(request: pytest.FixtureRequest, k8s_toolchain: Toolchain) -> Iterator[Path]:
    """A temporary directory for the session's control plane; `logs/` in it survives a failed run."""
    workdir = Path(tempfile.mkdtemp(prefix="bertmesh-e2e-"))
    (workdir / "logs").mkdir()
    yield workdir
    if os.environ.get(KEEP_ENV, "") not in ("", "0"):
        request.config.stash.setdefault(_kept_logs, []).append(workdir)
    elif request.session.testsfailed:
        for child in workdir.iterdir():
            if child.name != "logs":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        request.config.stash.setdefault(_kept_logs, []).append(workdir / "logs")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def e2e_log_dir(e2e_workdir: Path) -> Path:
    """Where every process the harness starts writes its log (`<name>.log`)."""
    return e2e_workdir / "logs"


@pytest.fixture(scope="session")
def kube_api(k8s_toolchain: Toolchain, e2e_workdir: Path, e2e_log_dir: Path) -> Iterator[KubeApi]:
    """etcd + kube-apiserver on loopback with Istio's CRDs installed, shared by the whole session.

    Use `kube_api.kubectl(...)`, `.helm(...)`, `.apply_manifests(...)`, `.api_client()`, `.kubeconfig`,
    `.server`, `.service_account_kubeconfig(name, namespace)`. No controllers run: Deployments make no pods
    and deleted namespaces stay Terminating unless `sim_cluster` is also requested.
    """
    api = KubeApi.start(k8s_toolchain, e2e_workdir / "kube-api", e2e_log_dir)
    print(f"\ne2e: kube-apiserver {api.server} ready in {api.start_seconds:.1f}s, logs in {e2e_log_dir}")
    yield api
    api.stop()


@pytest.fixture(scope="session")
def sim_cluster(kube_api: KubeApi) -> Iterator[SimCluster]:
    """Controllers, scheduler and kwok on `kube_api`, with fake GPU nodes gpu-node-1 (1 GPU), gpu-node-2 (2).

    Once any test asks for it, it runs for the rest of the session on the shared apiserver.
    """
    sim = SimCluster.start(kube_api)
    print(f"\ne2e: simulated cluster ready in {sim.start_seconds:.1f}s, nodes {sim.gpu_nodes}")
    yield sim
    sim.stop()


def remove_namespace(kube_api: KubeApi, name: str) -> None:
    """Delete a namespace without waiting for it, but force-remove its pods at once.

    A Pending pod left in a Terminating namespace is still a scheduling candidate: a later test's fake GPU
    node would be filled by it (seen in CI: an earlier test's classifier pods took 3 of the 4 GPUs of the
    next test's L4 node). The namespace itself finishes in the background.
    """
    kube_api.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
    # Terminating now, so no controller can create new pods in it; clear the ones there (bounded).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kube_api.kubectl(
            "delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", "--wait=false", check=False
        )
        left = kube_api.kubectl("get", "pods", "-n", name, "-o", "name", check=False)
        if left.returncode == 0 and not left.stdout.strip():
            return
        time.sleep(0.5)


@pytest.fixture
def new_namespace(kube_api: KubeApi) -> Iterator[NewNamespace]:
    """`new_namespace() -> name`: fresh namespaces for one test, all removed (`remove_namespace`) afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(kube_api.create_namespace())
        return made[-1]

    yield make
    for name in made:
        remove_namespace(kube_api, name)


@pytest.fixture
def namespace(new_namespace: NewNamespace) -> str:
    """A fresh namespace (e2e-xxxxxx) for one test, removed afterwards (see `remove_namespace`)."""
    return new_namespace()


@pytest.fixture
def api_client(kube_api: KubeApi) -> Iterator[k8s_client.ApiClient]:
    """A kubernetes.client.ApiClient authenticated as the admin, closed after the test."""
    with kube_api.api_client() as client:
        yield client


@pytest.fixture(scope="session")
def istioctl(k8s_toolchain: Toolchain, e2e_workdir: Path) -> Istioctl:
    """The pinned istioctl, run offline (no apiserver needed)."""
    return Istioctl(k8s_toolchain.bin("istioctl"), e2e_workdir)


@pytest.fixture(scope="session")
def istio_validate(istioctl: Istioctl) -> IstioValidate:
    """`istio_validate(objects_or_path, check=True) -> IstioctlResult`: `istioctl validate -f`, offline.

    Raises IstioctlError (an AssertionError carrying istioctl's message) when rejected, unless check=False.
    """
    return istioctl.validate


@pytest.fixture(scope="session")
def istio_analyze(istioctl: Istioctl) -> IstioAnalyze:
    """`istio_analyze(objects_or_path, check=True, failure_threshold="Error") -> IstioctlResult`, offline.

    Reported codes (e.g. IST0101) are in `.codes`; raises IstioctlError on errors unless check=False.
    """
    return istioctl.analyze


@pytest.fixture
def start_prometheus(k8s_toolchain: Toolchain, e2e_workdir: Path, e2e_log_dir: Path) -> Iterator[StartPrometheus]:
    """`start_prometheus(targets=(), *, scrape_configs=None, scrape_interval="1s") -> Prometheus`.

    Each call starts the real Prometheus on loopback scraping `targets` ("host:port") and waits until it is
    ready; every one started is stopped after the test.
    """
    started: list[Prometheus] = []

    def start(
        targets: Sequence[str] = (),
        *,
        scrape_configs: Sequence[Mapping[str, Any]] | None = None,
        scrape_interval: str = "1s",
    ) -> Prometheus:
        work_dir = Path(tempfile.mkdtemp(prefix="prometheus-", dir=e2e_workdir))
        prom = Prometheus.start(
            k8s_toolchain.bin("prometheus"),
            work_dir,
            e2e_log_dir,
            targets,
            scrape_configs=scrape_configs,
            scrape_interval=scrape_interval,
        )
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()


@pytest.fixture
def metrics_exporter() -> Iterator[MetricsExporter]:
    """A tiny exporter on 127.0.0.1 (`.address`) serving the samples the test `.set(name, value, labels)`."""
    exporter = MetricsExporter()
    yield exporter
    exporter.close()


@pytest.fixture
def traffic(metrics_exporter: MetricsExporter, namespace: str) -> Iterator[IstioTraffic]:
    """Istio-shaped metrics of the canaries in `namespace`, served through `metrics_exporter`."""
    feeder = IstioTraffic(metrics_exporter, namespace)
    yield feeder
    feeder.close()


@pytest.fixture
def prometheus_url(start_prometheus: StartPrometheus, metrics_exporter: MetricsExporter) -> str:
    """A Prometheus that has scraped `metrics_exporter` at least once."""
    prom = start_prometheus([metrics_exporter.address])
    wait_for_scrape(prom, metrics_exporter.address)
    return prom.url


@pytest.fixture(scope="session")
def md_crd(kube_api: KubeApi) -> KubeApi:
    """The ModelDeployment CRD installed (Established) on the session's apiserver; returns the KubeApi."""
    install_crd(kube_api)
    return kube_api


@pytest.fixture
def start_operator(md_crd: KubeApi) -> Iterator[StartOperator]:
    """`start_operator(namespaces, prometheus_url=..., resync_seconds=1, workers=4, autoscaler="keda")`.

    Runs `bertmesh operator` as a process, as a ServiceAccount bound to exactly permissions.RULES, and waits
    for its /healthz. Each one started is stopped after the test (it puts no finalizer: nothing to clean up).
    """
    kubeconfig = operator_kubeconfig(md_crd)
    started: list[tuple[OperatorProcess, Sequence[str]]] = []

    def start(
        namespaces: Sequence[str],
        *,
        prometheus_url: str = "http://127.0.0.1:9",
        resync_seconds: float = 1.0,
        workers: int = 4,
        autoscaler: str = "keda",
    ) -> OperatorProcess:
        process = OperatorProcess(
            md_crd,
            kubeconfig,
            namespaces,
            prometheus_url=prometheus_url,
            resync_seconds=resync_seconds,
            workers=workers,
            autoscaler=autoscaler,
        )
        started.append((process, namespaces))
        process.wait_live()
        return process

    yield start
    for process, _ in started:
        process.stop()
