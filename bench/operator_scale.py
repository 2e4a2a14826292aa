"""How long the operator takes to converge N ModelDeployments on a real kube-apiserver, and its peak memory.

A script, not a test: `python bench/operator_scale.py --count 100 --count 1000` (needs `make toolchain`).

For each N, on a fresh etcd + kube-apiserver (Istio's CRDs and bertmesh's CRD installed, no controllers, so
"converged" means: every child applied and every status written at its generation, not pods running):

1. burst: the operator runs; N ModelDeployments are created (10 namespaces, 4 threads); time from the first
   create until every status says observedGeneration == generation and every child exists;
2. restart: the operator is SIGKILLed and started again; time until it has resumed (re-reconciled) all N;
3. idle: the operator's CPU use over 30 s with nothing to do (re-checks every 30 s, the default);
4. the operator's peak RSS (VmHWM) over the whole run, and the children counted by label.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client as k8s_client  # noqa: E402
from kubernetes import watch as k8s_watch  # noqa: E402

from bertmesh_operator.crd import CRD_PATH  # noqa: E402
from bertmesh_operator.kube import KubeClient  # noqa: E402
from bertmesh_operator.resource import GROUP, PLURAL, VERSION  # noqa: E402
from bertmesh_operator.states import Phase  # noqa: E402
from tests.e2e.cluster import KubeApi  # noqa: E402
from tests.e2e.processes import ManagedProcess, free_port, http_ok, wait_until  # noqa: E402
from tests.e2e.toolchain import find_toolchain  # noqa: E402

NAMESPACES = 10
CHILDREN_PER_MD = 9  # ServiceAccount, Service, Deployment, HPA, PDB, DestinationRule, VirtualService, PA, AP


def manifest(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.bertmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"md-{index:04d}", "namespace": f"bench-{index % NAMESPACES}"},
        "spec": {
            "model": {"storageUri": f"pvc://models/m{index}", "task": "embedding", "revision": "v1"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "cpu"},
        },
    }


def rss_peak_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def write_counts(api: KubeApi) -> dict[str, int]:
    """The API server's mutating requests so far, by verb and resource (its own apiserver_request_total)."""
    text = api.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        verb = re.search(r'verb="([A-Z]+)"', line)
        resource = re.search(r'resource="([a-z]*)"', line)
        if verb and verb.group(1) in ("POST", "PUT", "PATCH", "APPLY", "DELETE"):
            key = f"{verb.group(1)} {resource.group(1) if resource else ''}"
            counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def process_cpu(api: KubeApi, operator_pid: int) -> dict[str, float]:
    """CPU seconds so far of etcd, the API server, the operator and this script."""
    seconds = {proc.name: cpu_seconds(proc.pid) for proc in api.processes}
    seconds["operator"] = cpu_seconds(operator_pid)
    seconds["bench"] = cpu_seconds(os.getpid())
    return seconds


def is_converged(md: dict[str, Any]) -> bool:
    """Whether the operator has written this ModelDeployment's status for its current spec."""
    status = md.get("status") or {}
    return bool(
        status.get("observedGeneration") == md["metadata"]["generation"] and status.get("phase") == Phase.STABLE
    )


class ConvergedWatch:
    """The converged ModelDeployments, followed by one watch in a thread.

    A watch, not a LIST of every ModelDeployment each second: at 1,000 objects that polling alone took a large
    share of the API server's CPU, slowing the very operator it was timing.
    """

    def __init__(self, client: Any) -> None:
        self.done: set[str] = set()
        self._client = client
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="converged-watch", daemon=True)
        self._thread.start()

    def count(self) -> int:
        """How many are converged now."""
        with self._lock:
            return len(self.done)

    def stop(self) -> None:
        """Ends the watch (within its server-side timeout)."""
        self._stopped.set()

    def _run(self) -> None:
        api = k8s_client.CustomObjectsApi(self._client)
        while not self._stopped.is_set():
            stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(api.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_seconds=5):  # type: ignore[no-untyped-call]
                    obj = event["object"]
                    key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                    with self._lock:
                        if event["type"] != "DELETED" and is_converged(obj):
                            self.done.add(key)
                        else:
                            self.done.discard(key)
                    if self._stopped.is_set():
                        break
            except Exception as error:  # the API server restarting or a dropped stream: watch again
                print(f"converged watch: {error}", file=sys.stderr, flush=True)
                time.sleep(0.5)
            finally:
                stream.stop()  # type: ignore[no-untyped-call]


def start_operator(api: KubeApi, log_dir: Path, workers: int) -> tuple[ManagedProcess, int]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bertmesh_cli",
        "operator",
        "--all-namespaces",
        "--health-host=127.0.0.1",
        f"--health-port={port}",
        f"--workers={workers}",
        "--prometheus-url=http://127.0.0.1:9",
    ]
    proc = ManagedProcess(f"operator-{time.monotonic_ns()}", argv, log_dir, env=api.tool_env())
    wait_until("operator /healthz", lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=120, watch=[proc])
    return proc, port


def resumed(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count(": followed (phase ")


def run(count: int, workers: int, keep: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bertmesh-scale-{count}-"))
    api = KubeApi.start(find_toolchain(), work / "kube-api")
    result: dict[str, Any] = {"count": count, "workers": workers}
    try:
        api.apply_manifests(CRD_PATH)
        for n in range(NAMESPACES):
            api.create_namespace(f"bench-{n}")
        operator, _ = start_operator(api, api.log_dir, workers)
        peak = 0.0
        with api.api_client() as client:
            kube = KubeClient(client)

            def create(index: int) -> None:
                obj = manifest(index)
                path = f"/apis/serving.bertmesh.io/v1alpha1/namespaces/{obj['metadata']['namespace']}/modeldeployments"
                kube.request("POST", path, body=obj, content_type="application/json")

            watcher = ConvergedWatch(client)
            writes_before, cpu_before = write_counts(api), process_cpu(api, operator.pid)
            began = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(create, range(count)))
            result["create_s"] = round(time.monotonic() - began, 1)

            def all_converged() -> bool:
                nonlocal peak
                peak = max(peak, rss_peak_mib(operator.pid))
                return watcher.count() == count

            wait_until(f"{count} converged", all_converged, timeout=3600, interval=0.2, watch=[operator])
            result["burst_converge_s"] = round(time.monotonic() - began, 1)
            watcher.stop()
            writes, cpu = write_counts(api), process_cpu(api, operator.pid)
            result["burst_writes_per_md"] = {
                key: round((n - writes_before.get(key, 0)) / count, 2)
                for key, n in sorted(writes.items())
                if n > writes_before.get(key, 0)
            }
            result["burst_cpu_s"] = {name: round(s - cpu_before.get(name, 0.0), 1) for name, s in cpu.items()}
            deployments = api.kubectl("get", "deployments", "-A", "-o", "name", timeout=120).stdout.split()
            services = api.kubectl("get", "services", "-A", "-l", "serving.bertmesh.io/model-deployment", "-o", "name")
            result["deployments"] = len(deployments)
            result["services"] = len(services.stdout.split())

            before = cpu_seconds(operator.pid)
            time.sleep(30)  # a fixed window on purpose: it measures idle cost, it waits for nothing
            result["idle_cpu_percent"] = round(100 * (cpu_seconds(operator.pid) - before) / 30, 1)
            peak = max(peak, rss_peak_mib(operator.pid))
            result["peak_rss_mib_burst"] = round(peak, 1)

            os.killpg(operator.pid, signal.SIGKILL)
            operator.popen.wait(timeout=30)
            began = time.monotonic()
            second, _ = start_operator(api, api.log_dir, workers)
            wait_until(
                f"{count} resumed",
                lambda: resumed(second.log_path) >= count,
                timeout=3600,
                interval=0.5,
                watch=[second],
            )
            result["restart_resume_s"] = round(time.monotonic() - began, 1)
            result["peak_rss_mib_restart"] = round(rss_peak_mib(second.pid), 1)
            second.stop()
    finally:
        api.stop()
        if not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            result["workdir"] = str(work)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, action="append", help="ModelDeployments (repeatable); default 100")
    parser.add_argument("--workers", type=int, default=8, help="the operator's --workers; default 8")
    parser.add_argument("--keep", action="store_true", help="keep the apiserver's directory and logs")
    args = parser.parse_args()
    for count in args.count or [100]:
        print(json.dumps(run(count, args.workers, args.keep)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
