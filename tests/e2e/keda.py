"""A real KEDA (its operator and its metrics API server) on the session's apiserver.

The metrics API server is an aggregated API (`v1beta1.external.metrics.k8s.io`): the apiserver reaches it
through a Service's endpoint, and endpoints may not hold loopback addresses. So the test makes a network
namespace with a veth pair and serves the adapter on the root end's private address (10.x.y.1), which the
apiserver on this host can dial like any local address. Operator and adapter talk gRPC over mutual TLS with
one certificate this module makes.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.certs import make_ca, sign
from tests.e2e.cluster import KubeApi
from tests.e2e.processes import ManagedProcess, free_port, http_ok, run_command, wait_until

NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
SERVICE = "keda-metrics-apiserver"
REPO_ROOT = Path(__file__).resolve().parents[2]
KEDA_SCRIPT = REPO_ROOT / "hack" / "keda.sh"


class KedaMissingError(RuntimeError):
    """KEDA is not built, or this machine cannot give it a non-loopback address; the message says why."""


def find_keda() -> Path:
    """The directory hack/keda.sh built (bin/, share/crd/), or raise why it cannot be used."""
    out = subprocess.run(["bash", str(KEDA_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True)
    home = Path(out.stdout.strip()).parent
    if not (home / ".complete").is_file():
        raise KedaMissingError(
            f"KEDA is not built at {home}: run `make toolchain` "
            "(hack/keda.sh; ~6 min cold, cached in ~/.cache/bertmesh)"
        )
    if os.geteuid() != 0:
        raise KedaMissingError("the KEDA tier makes a network namespace (ip netns add): it must run as root")
    return home


class VethAddress:
    """A private address on the root end of a veth pair whose other end lives in a network namespace."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.netns = f"bmk-{tag}"
        self.link = f"bmk{tag}a"
        octet = os.getpid() % 250 + 1
        self.address = f"10.231.{octet}.1"
        peer = f"10.231.{octet}.2"
        steps = [
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", self.link, "type", "veth", "peer", "name", f"bmk{tag}b"],
            ["ip", "link", "set", f"bmk{tag}b", "netns", self.netns],
            ["ip", "-n", self.netns, "addr", "add", f"{peer}/30", "dev", f"bmk{tag}b"],
            ["ip", "-n", self.netns, "link", "set", f"bmk{tag}b", "up"],
            ["ip", "addr", "add", f"{self.address}/30", "dev", self.link],
            ["ip", "link", "set", self.link, "up"],
        ]
        try:
            for step in steps:
                run_command(step)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Delete the pair and the namespace; idempotent."""
        run_command(["ip", "link", "del", self.link], check=False)
        run_command(["ip", "netns", "del", self.netns], check=False)


def _certificates(directory: Path, address: str) -> None:
    """ca.crt, tls.crt, tls.key as KEDA reads them: one certificate both sides of its gRPC present."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, tls = directory / "ca", directory / "tls"
    make_ca(ca, "keda-e2e-ca")
    sign(
        ca,
        tls,
        "keda-operator",
        f"subjectAltName=IP:127.0.0.1,IP:{address},DNS:localhost,DNS:keda-operator.keda.svc.cluster.local\n"
        "extendedKeyUsage=serverAuth,clientAuth\n",
    )


class Keda:
    """keda-operator and keda-adapter against `api`, the adapter registered as the external metrics API."""

    def __init__(self, api: KubeApi, veth: VethAddress, processes: list[ManagedProcess]) -> None:
        self.api = api
        self.veth = veth
        self.processes = processes

    @classmethod
    def start(cls, home: Path, api: KubeApi, log_dir: Path) -> Keda:
        """Install KEDA's CRDs, start both processes, register the APIService and wait until it is Available."""
        if api.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
            api.create_namespace(NAMESPACE)
        api.apply_manifests(home / "share" / "crd")
        veth = VethAddress()
        keda = cls(api, veth, [])
        try:
            keda._start(home, log_dir)
        except BaseException:
            keda.stop()
            raise
        return keda

    def _start(self, home: Path, log_dir: Path) -> None:
        api = self.api
        work = Path(tempfile.mkdtemp(prefix="keda-", dir=api.state_dir))
        certs, no_ca = work / "certs", work / "ca"
        no_ca.mkdir()
        _certificates(certs, self.veth.address)
        env = dict(api.tool_env(), KUBECONFIG=str(api.kubeconfig), KEDA_CLUSTER_OBJECT_NAMESPACE=NAMESPACE)
        env["WATCH_NAMESPACE"] = ""
        grpc_port, probe_port, secure_port = free_port(), free_port(), free_port()
        operator = ManagedProcess(
            "keda-operator",
            [
                str(home / "bin" / "keda-operator"),
                "--leader-elect=false",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{probe_port}",
                f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
                f"--cert-dir={certs}",
                f"--ca-dir={no_ca}",
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                "--enable-apiservice-patching=false",
            ],
            log_dir,
            env=env,
        )
        self.processes.append(operator)
        wait_until(
            "keda-operator /readyz",
            lambda: http_ok(f"http://127.0.0.1:{probe_port}/readyz"),
            timeout=60,
            watch=[operator],
        )
        adapter = ManagedProcess(
            "keda-adapter",
            [
                str(home / "bin" / "keda-adapter"),
                f"--bind-address={self.veth.address}",
                f"--secure-port={secure_port}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--port={free_port()}",
                f"--metrics-service-address=127.0.0.1:{grpc_port}",
                f"--lister-kubeconfig={api.kubeconfig}",
                f"--authentication-kubeconfig={api.kubeconfig}",
                f"--authorization-kubeconfig={api.kubeconfig}",
            ],
            log_dir,
            env=env,
        )
        self.processes.append(adapter)
        api.apply_manifests(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                    "spec": {"ports": [{"name": "https", "port": 443, "targetPort": secure_port}]},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                    "subsets": [
                        {"addresses": [{"ip": self.veth.address}], "ports": [{"name": "https", "port": secure_port}]}
                    ],
                },
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": APISERVICE},
                    "spec": {
                        "group": "external.metrics.k8s.io",
                        "version": "v1beta1",
                        "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                        # The adapter's certificate is this module's own; the apiserver is not told its CA.
                        "insecureSkipTLSVerify": True,
                        "groupPriorityMinimum": 100,
                        "versionPriority": 100,
                    },
                },
            ]
        )
        wait_until(
            f"APIService {APISERVICE} Available",
            lambda: api.kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1", check=False).returncode == 0,
            timeout=90,
            interval=1.0,
            watch=[*api.processes, *self.processes],
        )

    def stop(self) -> None:
        """Unregister the APIService first (an unanswered one breaks discovery for everyone), then stop."""
        self.api.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", "--wait=false", check=False)
        for process in reversed(self.processes):
            process.stop()
        self.veth.remove()
