"""A real kube-apiserver on etcd, on loopback, for e2e tests: start it, use it (kubectl, helm), stop it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from tests.e2e.certs import make_ca, sign
from tests.e2e.manifests import Manifests, as_objects, as_path, to_yaml
from tests.e2e.processes import ManagedProcess, free_port, http_ok, run_command, wait_until
from tests.e2e.toolchain import Toolchain

NewNamespace = Callable[[], str]
"""The `new_namespace` fixture: `new_namespace() -> name`, a fresh namespace removed after the test."""

ADMIN_USER = "e2e-admin"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
FIELD_MANAGER = "bertmesh-e2e"


class KubeApi:
    """etcd + kube-apiserver on 127.0.0.1 (random ports, token auth, RBAC, service-account tokens).

    The admin (group system:masters) authenticates with `token`; `kubeconfig` holds it. Start with
    `KubeApi.start()`, stop with `stop()`; the `kube_api` fixture does both once per test session.
    """

    def __init__(self, toolchain: Toolchain, state_dir: Path, log_dir: Path | None = None) -> None:
        self.toolchain = toolchain
        self.state_dir = state_dir
        self.log_dir = log_dir or state_dir / "logs"
        self.pki_dir = state_dir / "pki"
        self.kubeconfig = state_dir / "kubeconfig"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.processes: list[ManagedProcess] = []
        self.start_seconds = 0.0

    @property
    def serving_cert_file(self) -> Path:
        """The certificate the apiserver generated for itself (--cert-dir): its serving cert, then its CA."""
        return self.pki_dir / "apiserver.crt"

    @property
    def ca_file(self) -> Path:
        """The CA that signed the apiserver's serving certificate: what clients verify it with."""
        return self.pki_dir / "ca.crt"

    @property
    def sa_key_file(self) -> Path:
        """The RSA key service-account tokens are signed with (the controller-manager needs it too)."""
        return self.pki_dir / "sa.key"

    @classmethod
    def start(
        cls, toolchain: Toolchain, state_dir: Path, log_dir: Path | None = None, *, istio_crds: bool = True
    ) -> KubeApi:
        """Start etcd and the apiserver under `state_dir` (logs in `log_dir`, default state_dir/logs), wait
        until /readyz, install Istio's CRDs."""
        api = cls(toolchain, state_dir, log_dir)
        try:
            api._start(istio_crds=istio_crds)
        except BaseException:
            api.stop()
            raise
        return api

    def _start(self, *, istio_crds: bool) -> None:
        began = time.monotonic()
        for d in (self.log_dir, self.pki_dir):
            d.mkdir(parents=True, exist_ok=True)
        run_command(["openssl", "genrsa", "-out", str(self.sa_key_file), "2048"])
        self._front_proxy_certs()
        tokens = self.pki_dir / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.toolchain.bin("etcd")),
                "--name=e2e",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                # Throwaway data: skipping fsync makes every write (and so every test) faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_until("etcd /health", lambda: http_ok(f"{etcd_url}/health"), watch=[etcd])
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.toolchain.bin("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.pki_dir}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self.sa_key_file}",
                f"--service-account-signing-key-file={self.sa_key_file}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # The apiserver would write its own address into the `kubernetes` Service's Endpoints, which
                # refuse loopback addresses; nothing here reaches it through that Service.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                # Aggregated APIs (KEDA's external metrics): the apiserver proxies to an APIService's endpoint
                # address itself (no kube-proxy here to route a Service's cluster IP), and proves who the caller
                # is with the front-proxy client certificate.
                "--enable-aggregator-routing=true",
                f"--requestheader-client-ca-file={self.pki_dir / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={self.pki_dir / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={self.pki_dir / 'front-proxy-client.key'}",
            ],
        )
        wait_until("kube-apiserver /readyz", self._ready, timeout=60, watch=[etcd, apiserver])
        # The CA alone, for --root-ca-file and kubeconfigs: the controller-manager publishes that file as a
        # ClusterTrustBundle, which refuses a leading non-CA certificate.
        blocks = self.serving_cert_file.read_text().split("-----END CERTIFICATE-----")
        self.ca_file.write_text(blocks[-2].strip() + "\n-----END CERTIFICATE-----\n")
        self._write_kubeconfig(self.kubeconfig, ADMIN_USER, self.token)
        if istio_crds:
            self.apply_manifests(self.toolchain.istio_crds)
        self.start_seconds = time.monotonic() - began

    def _front_proxy_certs(self) -> None:
        """A CA and the client certificate the apiserver presents when it proxies to an aggregated API."""
        ca, client = self.pki_dir / "front-proxy-ca", self.pki_dir / "front-proxy-client"
        make_ca(ca, "front-proxy-ca")
        sign(ca, client, "front-proxy-client")

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.log_dir)
        self.processes.append(proc)
        return proc

    def _ready(self) -> bool:
        if not self.serving_cert_file.is_file():  # the apiserver writes it before it listens
            return False
        return http_ok(f"{self.server}/readyz", token=self.token, cafile=self.serving_cert_file)

    def _write_kubeconfig(self, path: Path, user: str, token: str, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "e2e", "user": user, "namespace": namespace}}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        """Stop every process this instance started, newest first; idempotent."""
        for proc in reversed(self.processes):
            proc.stop()

    def tool_env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for kubectl, helm and the like: this cluster's kubeconfig, caches inside state_dir."""
        env = dict(os.environ)
        cache = self.state_dir / "cache"
        env.update(
            KUBECONFIG=str(kubeconfig or self.kubeconfig),
            # Discovery caches and helm's state stay out of $HOME: new ports each run grow them forever.
            KUBECACHEDIR=str(cache / "kube"),
            HELM_CACHE_HOME=str(cache / "helm-cache"),
            HELM_CONFIG_HOME=str(cache / "helm-config"),
            HELM_DATA_HOME=str(cache / "helm-data"),
        )
        return env

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
        timeout: float = 60.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster (as admin unless `kubeconfig` says otherwise)."""
        argv = [str(self.toolchain.bin("kubectl")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        return run_command(argv, check=check, stdin=stdin, timeout=timeout, env=self.tool_env(kubeconfig))

    def helm(
        self,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
        timeout: float = 120.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm (v4) against this cluster (as admin unless `kubeconfig` says otherwise)."""
        argv = [str(self.toolchain.bin("helm")), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        return run_command(argv, check=check, stdin=stdin, timeout=timeout, env=self.tool_env(kubeconfig))

    def api_client(self, kubeconfig: Path | None = None) -> k8s_client.ApiClient:
        """A new kubernetes.client.ApiClient for this cluster (admin unless `kubeconfig`); close it after."""
        # kubernetes.config is untyped; what it returns is an ApiClient.
        api_client: k8s_client.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig)
        )
        return api_client

    def apply_manifests(
        self,
        manifests: Manifests,
        *,
        namespace: str | None = None,
        field_manager: str = FIELD_MANAGER,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> list[dict[str, Any]]:
        """Server-side apply objects, a YAML file or a directory; return the objects as stored.

        CustomResourceDefinitions among them are waited for until Established, so custom objects can follow.
        """
        path = as_path(manifests)
        args = [
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={field_manager}",
            "-o",
            "json",
        ]
        args += ["-f", str(path) if path is not None else "-"]
        if namespace:
            args += ["-n", namespace]
        stdin = None if path is not None else to_yaml(manifests)
        out = self.kubectl(*args, stdin=stdin, timeout=timeout, kubeconfig=kubeconfig).stdout
        applied: dict[str, Any] = json.loads(out) if out.strip() else {"kind": "List", "items": []}
        objects: list[dict[str, Any]] = applied["items"] if applied.get("kind") == "List" else [applied]
        crds = [o["metadata"]["name"] for o in objects if o.get("kind") == "CustomResourceDefinition"]
        if crds:
            # One poll for all of them: `kubectl wait` watches each CRD in turn, ~0.1 s apiece.
            wait_until(
                f"{len(crds)} CRDs to be Established",
                lambda: self._established(crds, kubeconfig),
                timeout=timeout,
            )
        return objects

    def _established(self, crds: list[str], kubeconfig: Path | None) -> bool:
        out = self.kubectl("get", "crd", *crds, "-o", "json", kubeconfig=kubeconfig).stdout
        got = json.loads(out)
        items = got["items"] if got.get("kind") == "List" else [got]  # one name: the object itself
        return len(items) == len(crds) and all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in crd.get("status", {}).get("conditions", [])
            )
            for crd in items
        )

    def delete_manifests(self, manifests: Manifests, *, namespace: str | None = None) -> None:
        """Delete the objects (missing ones are fine) without waiting for finalizers."""
        args = ["delete", "--ignore-not-found", "--wait=false", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        self.kubectl(*args, stdin=to_yaml(as_objects(manifests)))

    def create_namespace(self, name: str | None = None) -> str:
        """Create a namespace (a random `e2e-xxxxxx` name unless given) and return its name."""
        name = name or f"e2e-{secrets.token_hex(3)}"
        self.kubectl("create", "namespace", name)
        return name

    def service_account_token(
        self, name: str, namespace: str = "default", *, duration: str = "1h", audience: str | None = None
    ) -> str:
        """A bound token for ServiceAccount `namespace/name` (TokenRequest, as `kubectl create token`)."""
        args = ["create", "token", name, "-n", namespace, f"--duration={duration}"]
        if audience:
            args.append(f"--audience={audience}")
        return self.kubectl(*args).stdout.strip()

    def service_account_kubeconfig(self, name: str, namespace: str = "default", *, duration: str = "1h") -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` (so its RBAC applies)."""
        path = self.state_dir / "kubeconfigs" / f"{namespace}.{name}.yaml"
        user = f"system:serviceaccount:{namespace}:{name}"
        token = self.service_account_token(name, namespace, duration=duration)
        return self._write_kubeconfig(path, user, token, namespace)
