"""`bertmesh operator` as a real process against the harness, as a ServiceAccount holding exactly the RBAC rules
of `bertmesh_operator.permissions` (so every API call it makes is proven to be declared there)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from bertmesh_operator.crd import CRD_PATH
from bertmesh_operator.permissions import CLUSTER_RULES, RULES
from tests.e2e.cluster import KubeApi
from tests.e2e.processes import ManagedProcess, free_port, http_ok, wait_until

OPERATOR_NAMESPACE = "bertmesh-system"
OPERATOR_ACCOUNT = "bertmesh-operator"
CLUSTER_ROLE = "bertmesh-operator-e2e"


def cluster_role() -> dict[str, Any]:
    """A ClusterRole holding exactly permissions.RULES and CLUSTER_RULES (the chart's grants in scope cluster)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": CLUSTER_ROLE},
        "rules": [
            {"apiGroups": [r.api_group], "resources": list(r.resources), "verbs": list(r.verbs)}
            for r in [*RULES, *CLUSTER_RULES]
        ],
    }


def install_crd(api: KubeApi) -> None:
    """Install (or update) the ModelDeployment CRD and wait until it is Established."""
    api.apply_manifests(CRD_PATH)


def operator_kubeconfig(api: KubeApi) -> Path:
    """A kubeconfig for the operator's ServiceAccount, bound cluster-wide to permissions.RULES."""
    api.apply_manifests(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE},
            },
            cluster_role(),
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": CLUSTER_ROLE},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
                "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
            },
        ]
    )
    return api.service_account_kubeconfig(OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, duration="2h")


class OperatorProcess:
    """One `python -m bertmesh_cli operator ...` process; `kill()` is SIGKILL, `stop()` SIGTERM."""

    _started = 0

    def __init__(
        self,
        api: KubeApi,
        kubeconfig: Path,
        namespaces: Sequence[str],
        *,
        prometheus_url: str = "http://127.0.0.1:9",
        resync_seconds: float = 1.0,
        workers: int = 4,
        autoscaler: str = "keda",
    ) -> None:
        OperatorProcess._started += 1
        self.api = api
        self.port = free_port()
        argv = [sys.executable, "-m", "bertmesh_cli", "operator"]
        for namespace in namespaces:
            argv += ["--namespace", namespace]
        argv += [
            f"--prometheus-url={prometheus_url}",
            "--health-host=127.0.0.1",
            f"--health-port={self.port}",
            f"--resync-seconds={resync_seconds:g}",
            f"--workers={workers}",
            f"--autoscaler={autoscaler}",
        ]
        name = f"operator-{'-'.join(namespaces) or 'all'}-{OperatorProcess._started}"
        self.process = ManagedProcess(name, argv, api.log_dir, env=api.tool_env(kubeconfig))

    @property
    def log_path(self) -> Path:
        """Where the operator logs."""
        return self.process.log_path

    def wait_live(self, timeout: float = 60.0) -> None:
        """Wait until kopf's liveness endpoint answers."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        wait_until("the operator's /healthz", lambda: http_ok(url), timeout=timeout, watch=[self.process])

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a node loss would: no cleanup of any kind."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        self.process.stop()

    def check_running(self) -> None:
        """Raise ProcessExitedError (with the log's tail) if it exited."""
        self.process.check_running()


class StartOperator(Protocol):
    """The `start_operator` fixture's type."""

    def __call__(
        self,
        namespaces: Sequence[str],
        *,
        prometheus_url: str = ...,
        resync_seconds: float = ...,
        workers: int = ...,
        autoscaler: str = ...,
    ) -> OperatorProcess: ...


def get_json(api: KubeApi, *args: str) -> Any:
    """`kubectl get ... -o json`, decoded."""
    return json.loads(api.kubectl("get", *args, "-o", "json").stdout)
