"""A real istiod (Istio's pilot-discovery) on loopback, watching the session's apiserver.

It compiles the Istio objects and the Services and Pods it finds there into the xDS configuration each
sidecar would receive; `tests/e2e/xds.py` asks it for that configuration as a given pod's sidecar. Only
plaintext xDS and the debug HTTP port are served: no certificates, no webhooks (nothing would call them).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.cluster import KubeApi
from tests.e2e.processes import ManagedProcess, free_port, http_ok, wait_until

NAMESPACE = "istio-system"
REPO_ROOT = Path(__file__).resolve().parents[2]
ISTIOD_SCRIPT = REPO_ROOT / "hack" / "istiod.sh"
# Points the tests at a pilot-discovery other than the one hack/istiod.sh --print-dir names.
ISTIOD_BIN_ENV = "BERTMESH_ISTIOD_BIN"


class IstiodMissingError(RuntimeError):
    """pilot-discovery is not built; the message says how to build it."""


def find_istiod() -> Path:
    """The pilot-discovery binary ($BERTMESH_ISTIOD_BIN, else hack/istiod.sh's cache), or raise why not."""
    override = os.environ.get(ISTIOD_BIN_ENV)
    if override:
        binary = Path(override)
    else:
        out = subprocess.run(["bash", str(ISTIOD_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True)
        bin_dir = Path(out.stdout.strip())
        if not (bin_dir.parent / ".complete").is_file():
            raise IstiodMissingError(
                f"istiod is not built at {bin_dir.parent}: run `make toolchain` "
                "(hack/istiod.sh; ~4.5 min cold, cached in ~/.cache/bertmesh)"
            )
        binary = bin_dir / "pilot-discovery"
    if not os.access(binary, os.X_OK):
        raise IstiodMissingError(f"{binary} is not an executable pilot-discovery: run `make toolchain`")
    return binary


class Istiod:
    """pilot-discovery on 127.0.0.1: plaintext xDS at `xds_address`, debug endpoints under `http_url`."""

    def __init__(self, process: ManagedProcess, xds_address: str, http_url: str) -> None:
        self.process = process
        self.xds_address = xds_address
        self.http_url = http_url

    @classmethod
    def start(cls, binary: Path, api: KubeApi, log_dir: Path) -> Istiod:
        """Create istio-system, start pilot-discovery against `api` and wait until it says /ready."""
        if api.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
            api.create_namespace(NAMESPACE)
        http_port, grpc_port, monitoring_port = free_port(), free_port(), free_port()
        env = dict(
            os.environ,
            POD_NAMESPACE=NAMESPACE,
            # The CA keys istiod would mint for itself stay in the session's directory, never in the repo.
            ROOT_CA_DIR=str(api.state_dir / "istiod-ca"),
        )
        process = ManagedProcess(
            "istiod",
            [
                str(binary),
                "discovery",
                f"--kubeconfig={api.kubeconfig}",
                f"--httpAddr=127.0.0.1:{http_port}",
                f"--grpcAddr=127.0.0.1:{grpc_port}",
                "--secureGRPCAddr=",
                "--httpsAddr=",
                f"--monitoringAddr=127.0.0.1:{monitoring_port}",
                "--domain=cluster.local",
                "--log_output_level=default:info",
            ],
            log_dir,
            env=env,
        )
        istiod = cls(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")
        try:
            watch = [*api.processes, process]
            wait_until("istiod /ready", lambda: http_ok(f"{istiod.http_url}/ready"), timeout=90, watch=watch)
        except BaseException:
            process.stop()
            raise
        return istiod

    def debug(self, path: str) -> Any:
        """GET one of istiod's debug endpoints (e.g. `configz`) as JSON."""
        self.process.check_running()
        with urllib.request.urlopen(f"{self.http_url}/debug/{path}", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """Stop pilot-discovery; idempotent."""
        self.process.stop()
