"""A simulated cluster on a KubeApi: controller-manager, scheduler, and kwok faking Nodes (some with GPUs)."""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.e2e.cluster import KubeApi
from tests.e2e.processes import ManagedProcess, free_port, http_ok, wait_until

# kwok manages only Nodes carrying this annotation, so real-looking Nodes a test creates stay untouched.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
# Two nodes with different GPU counts: a pod asking for 2 fits only the second, one asking for 3 fits none.
DEFAULT_GPU_NODES: Mapping[str, int] = {"gpu-node-1": 1, "gpu-node-2": 2}


def fake_node(
    name: str,
    *,
    gpus: int = 0,
    cpu: str = "32",
    memory: str = "256Gi",
    pods: int = 110,
    labels: Mapping[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node object kwok will run: Ready, with the given capacity (and `nvidia.com/gpu` when gpus > 0)."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    if gpus:
        capacity[GPU_RESOURCE] = str(gpus)
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    if gpus:
        node_labels["nvidia.com/gpu.present"] = "true"
    node_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": dict([FAKE_NODE_ANNOTATION]), "labels": node_labels},
        "spec": {"taints": taints or []},
        # The apiserver keeps a Node's status on create (as a kubelet registering itself relies on).
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


class SimCluster:
    """kube-controller-manager, kube-scheduler and kwok on a KubeApi: pods get scheduled and become Ready.

    No container ever runs: kwok moves pods bound to its fake Nodes to Running/Ready. `stop()` leaves the
    KubeApi running; the `sim_cluster` fixture starts and stops it once per session.
    """

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.processes: list[ManagedProcess] = []
        self.gpu_nodes: dict[str, int] = {}
        self.start_seconds = 0.0

    @classmethod
    def start(cls, api: KubeApi, gpu_nodes: Mapping[str, int] = DEFAULT_GPU_NODES) -> SimCluster:
        """Start the controllers and kwok, add fake GPU nodes (name -> GPU count), wait until all is Ready."""
        sim = cls(api)
        try:
            sim._start(gpu_nodes)
        except BaseException:
            sim.stop()
            raise
        return sim

    def _start(self, gpu_nodes: Mapping[str, int]) -> None:
        began = time.monotonic()
        api = self.api
        kubeconfig = str(api.kubeconfig)
        cm_port, sched_port = free_port(), free_port()
        controller_manager = self._spawn(
            "kube-controller-manager",
            [
                str(api.toolchain.bin("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--cert-dir={api.state_dir / 'pki' / 'controller-manager'}",
                "--leader-elect=false",
                # Without these two the ServiceAccount token controller does not run: no `default`
                # ServiceAccount appears and the apiserver refuses pods.
                f"--service-account-private-key-file={api.sa_key_file}",
                f"--root-ca-file={api.ca_file}",
                "--use-service-account-credentials=false",
                "--profiling=false",
            ],
        )
        scheduler = self._spawn(
            "kube-scheduler",
            [
                str(api.toolchain.bin("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        kwok_config = api.state_dir / "kwok.yaml"
        kwok_config.write_text("")  # not ~/.kwok/kwok.yaml: only the flags below
        kwok = self._spawn(
            "kwok",
            [
                str(api.toolchain.bin("kwok")),
                f"--config={kwok_config}",
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=" + "=".join(FAKE_NODE_ANNOTATION),
                f"--server-address=127.0.0.1:{free_port()}",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                # Heartbeats through node Leases, as kubelets send them: without, kwok's status heartbeat
                # sometimes comes later than the node lifecycle controller's 50s grace, which then marks the
                # Node unknown and every pod on it NotReady for good (kwok does not make them Ready again).
                "--node-lease-duration-seconds=40",
            ],
        )
        everything = [*api.processes, controller_manager, scheduler, kwok]
        for name, port in (("kube-controller-manager", cm_port), ("kube-scheduler", sched_port)):
            healthz = functools.partial(http_ok, f"https://127.0.0.1:{port}/healthz", insecure=True)
            wait_until(f"{name} /healthz", healthz, timeout=60, watch=everything)
        for name, gpus in gpu_nodes.items():
            self.add_fake_node(name, gpus=gpus)
        wait_until("the default ServiceAccount", self._default_sa_exists, timeout=60, watch=everything)
        wait_until("fake nodes Ready", lambda: self._nodes_ready(list(gpu_nodes)), timeout=60, watch=everything)
        self.start_seconds = time.monotonic() - began

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.api.log_dir)
        self.processes.append(proc)
        return proc

    def add_fake_node(self, name: str, *, gpus: int = 0, **node_args: Any) -> dict[str, Any]:
        """Create a fake Node kwok runs (see `fake_node` for the arguments) and return it as stored."""
        node = fake_node(name, gpus=gpus, **node_args)
        out = self.api.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(node)).stdout
        if gpus:
            self.gpu_nodes[name] = gpus
        created: dict[str, Any] = json.loads(out)
        return created

    @contextlib.contextmanager
    def temporary_node(self, prefix: str, *, gpus: int = 0, **node_args: Any) -> Iterator[str]:
        """A fake node named `<prefix>-<random>` (see `fake_node`) for the `with` block, then deleted."""
        name = f"{prefix}-{secrets.token_hex(3)}"
        self.add_fake_node(name, gpus=gpus, **node_args)
        try:
            yield name
        finally:
            self.api.kubectl("delete", "node", name, "--wait=false", check=False)

    def _default_sa_exists(self) -> bool:
        return self.api.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

    def _nodes_ready(self, names: list[str]) -> bool:
        out = self.api.kubectl("get", "nodes", *names, "-o", "json").stdout
        nodes = json.loads(out).get("items", [])
        return len(nodes) == len(names) and all(_is_ready(n) for n in nodes)

    def stop(self) -> None:
        """Stop the controllers and kwok, newest first; idempotent."""
        for proc in reversed(self.processes):
            proc.stop()

    @property
    def log_dir(self) -> Path:
        """Where every component's log is (the KubeApi's log directory)."""
        return self.api.log_dir


def _is_ready(obj: Mapping[str, Any]) -> bool:
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
