"""The operator's Kubernetes API calls, as plain dicts over the `kubernetes` client's REST layer.

Every call here is one of `permissions.RULES`: children are server-side applied (PATCH with one field manager
and force) and deleted; ModelDeployments are read, annotated (`bertmesh rollout`) and their status patched.
Failures are sorted into two kinds: `TransientApiError` for what heals by itself (the API server unreachable,
overloaded, restarting, a write conflict) and `ApiRejectedError` for what needs a person (a forbidden verb, an
object the API server refuses, a kind it does not serve), both defined in `errors`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from bertmesh_operator.errors import ApiRejectedError, TransientApiError
from bertmesh_operator.permissions import CHILD_RESOURCES
from bertmesh_operator.resource import GROUP, PLURAL, VERSION

FIELD_MANAGER: Final = "bertmesh-operator"
APPLY_PATCH: Final = "application/apply-patch+yaml"  # JSON is YAML: the client sends the body as JSON
MERGE_PATCH: Final = "application/merge-patch+json"
# Statuses that say "try again": throttled, conflicting write, the API server or etcd not answering.
TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


def missing_kubeconfig(kubeconfig: str | None, environ: Mapping[str, str]) -> None:
    """Raises ConfigException "file not found: PATH" when no kubeconfig file the load would read exists.

    The kubernetes client says "Invalid kube-config file. No configuration found." for a path that is not there,
    which reads as a broken file rather than a wrong path.
    """
    if kubeconfig is not None:
        paths = [kubeconfig]
    else:
        paths = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p] or ["~/.kube/config"]
    if not any(os.path.isfile(os.path.expanduser(path)) for path in paths):
        raise k8s_config.ConfigException(f"file not found: {', '.join(paths)}")


def load_api_client(kubeconfig: str | None = None, *, pool_size: int | None = None) -> k8s.ApiClient:
    """An ApiClient for the in-cluster service account, or the kubeconfig ($KUBECONFIG, ~/.kube/config)."""
    configuration = k8s.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        missing_kubeconfig(kubeconfig, os.environ)
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    if pool_size is not None:
        configuration.connection_pool_maxsize = pool_size
    return k8s.ApiClient(configuration)


def kubeconfig_namespace(kubeconfig: str | None = None) -> str:
    """The namespace of the kubeconfig's current context (or of the pod), else "default"."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
                return handle.read().strip() or "default"
        except OSError:
            return "default"
    try:
        _, current = k8s_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except Exception:  # no kubeconfig: the load that follows says so properly
        return "default"
    namespace = ((current or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


def resource_path(
    api_version: str, plural: str, namespace: str | None, name: str | None = None, subresource: str | None = None
) -> str:
    """The REST path of a resource collection, object or subresource."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [root]
    if namespace is not None:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name is not None:
        parts.append(name)
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


def plural_of(api_version: str, kind: str) -> str:
    """The resource name of a child kind (the operator writes only the kinds permissions.py lists)."""
    try:
        return CHILD_RESOURCES[(api_version, kind)][1]
    except KeyError:
        raise ApiRejectedError(0, f"{api_version} {kind} is not a kind the operator may write") from None


def _message(status: int, body: str | None, fallback: str) -> str:
    try:
        parsed = json.loads(body or "")
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])
    return f"HTTP {status}: {fallback}"


class KubeClient:
    """The API calls the operator and `bertmesh rollout` make; bodies and answers are plain dicts."""

    def __init__(self, api_client: k8s.ApiClient, *, field_manager: str = FIELD_MANAGER, timeout: float = 30.0):
        self.api_client = api_client
        self.field_manager = field_manager
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """One REST call; returns the decoded answer, or raises TransientApiError / ApiRejectedError."""
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        _, url, headers, body, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        where = f"{method} {path}"
        try:
            response = self.api_client.call_api(
                method, url, header_params=headers, body=body, _request_timeout=self.timeout
            )
            data = response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise TransientApiError(f"{where}: the API server is unreachable: {error}") from None
        except ApiException as error:  # the REST layer's own: TLS failures, throttled reads after its retries
            status, text, reason = int(error.status or 0), str(error.body or ""), str(error.reason)
            if status == 0 or status in TRANSIENT_STATUSES:
                raise TransientApiError(f"{where}: {_message(status, text, reason)}") from None
            raise ApiRejectedError(status, f"{where}: {_message(status, text, reason)}") from None
        status = int(response.status)
        text = data.decode("utf-8", errors="replace") if data else ""
        if 200 <= status < 300:
            decoded = json.loads(text) if text else {}
            return decoded if isinstance(decoded, dict) else {}
        message = _message(status, text, str(response.reason))
        if status in TRANSIENT_STATUSES:
            retry_after = response.headers.get("Retry-After") if response.headers else None
            delay = float(retry_after) if retry_after and retry_after.isdigit() else 5.0
            raise TransientApiError(f"{where}: {message}", delay=delay)
        raise ApiRejectedError(status, f"{where}: {message}")

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one child object with the operator's field manager, taking over conflicts."""
        meta = obj["metadata"]
        path = resource_path(
            obj["apiVersion"], plural_of(obj["apiVersion"], obj["kind"]), meta["namespace"], meta["name"]
        )
        query = [("fieldManager", self.field_manager), ("force", "true")]
        try:
            return self.request("PATCH", path, query=query, body=dict(obj), content_type=APPLY_PATCH)
        except ApiRejectedError as error:
            if error.status == 404:  # the resource type itself is missing (an object would be created)
                raise ApiRejectedError(
                    404, f"{obj['apiVersion']} {obj['kind']} is not served by the API server: install its CRD ({error})"
                ) from None
            raise

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Delete one child, only if it is still the object with `uid`; False when it is already gone."""
        path = resource_path(api_version, plural_of(api_version, kind), namespace, name)
        body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        try:
            self.request("DELETE", path, body=body, content_type="application/json")
        except ApiRejectedError as error:
            if error.status == 404:
                return False
            raise
        return True

    def get_model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ModelDeployment as stored now, or None when it does not exist."""
        try:
            return self.request("GET", resource_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name))
        except ApiRejectedError as error:
            if error.status == 404:
                return None
            raise

    def patch_model_deployment_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource; returns the stored object."""
        path = resource_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name, "status")
        query = [("fieldManager", self.field_manager)]
        return self.request("PATCH", path, query=query, body={"status": dict(status)}, content_type=MERGE_PATCH)

    def annotate_model_deployment(self, namespace: str, name: str, annotations: Mapping[str, str]) -> dict[str, Any]:
        """Merge-patch annotations onto a ModelDeployment; returns the stored object."""
        path = resource_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name)
        body = {"metadata": {"annotations": dict(annotations)}}
        query = [("fieldManager", self.field_manager)]
        return self.request("PATCH", path, query=query, body=body, content_type=MERGE_PATCH)

    def list_children(
        self, namespaces: Sequence[str], label: str, keep: Callable[[dict[str, Any]], object]
    ) -> list[str]:
        """Pass every child kind's objects carrying `label` (in `namespaces`, or all when empty) to `keep`, a page
        at a time (a thousand ModelDeployments' children never sit in memory at once); returns the kinds the API
        server does not serve."""
        missing: list[str] = []
        scopes: list[str | None] = list(namespaces) or [None]
        for (api_version, kind), (_, plural) in CHILD_RESOURCES.items():
            try:
                for namespace in scopes:
                    self._list(api_version, kind, plural, namespace, label, keep)
            except ApiRejectedError as error:
                if error.status != 404:
                    raise
                missing.append(f"{api_version} {kind}")
        return missing

    def _list(
        self,
        api_version: str,
        kind: str,
        plural: str,
        namespace: str | None,
        label: str,
        keep: Callable[[dict[str, Any]], object],
    ) -> None:
        path = resource_path(api_version, plural, namespace)
        token = ""
        while True:
            query = [("labelSelector", label), ("limit", "500")] + ([("continue", token)] if token else [])
            page = self.request("GET", path, query=query)
            for item in page.pop("items", None) or ():
                keep({"apiVersion": api_version, "kind": kind, **item})  # list items leave out their kind
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def served(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (discovery, which every authenticated user may read)."""
        try:
            found = self.request("GET", "/api/v1" if api_version == "v1" else f"/apis/{api_version}")
        except ApiRejectedError as error:
            if error.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or ())
