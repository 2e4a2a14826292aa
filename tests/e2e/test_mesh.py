"""The mesh as Envoy would run it: a real istiod compiles the operator's Istio objects, and an xDS client asks it
for the configuration of a model pod's sidecar and of a caller pod's sidecar.

For every example ModelDeployment: as written, with a canary in progress (weights from the status), and after
an abort. The caller's routes follow the VirtualService with the status's weights and never retry
resource-exhausted; the model's inbound gRPC chain requires mTLS, allows exactly the listed callers, and runs
the spec's rate limit before the router; every EnvoyFilter patch took effect. A broken EnvoyFilter match is
reported by the same check. The configuration is what istiod sends, not proof that Envoy accepts it (no Envoy
binary here: docs/testing.md).
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from bertmesh_operator.render import render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.status import rollout_status
from tests.e2e.cluster import KubeApi, NewNamespace
from tests.e2e.envoy_config import connection_manager, http_filters, inbound_chains, unapplied_patches
from tests.e2e.istiod import Istiod
from tests.e2e.mesh_checks import (
    LOCAL_RATELIMIT,
    canary_problems,
    grpc_port,
    mtls_problems,
    pod_ports,
    rate_limit_problems,
    rbac_problems,
    routing_problems,
)
from tests.e2e.processes import wait_until
from tests.e2e.simcluster import SimCluster
from tests.e2e.test_operator_istio import phases, with_canary
from tests.e2e.xds import Sidecar, SidecarConfig, fetch_sidecar_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
# Pods are bound to this node by name: only kwok runs them, and the taint keeps other tests' pods off it.
MESH_TAINT = {"key": "bertmesh.io/mesh-e2e", "value": "true", "effect": "NoSchedule"}
CONVERGE_SECONDS = 60.0

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def mesh_node(sim_cluster: SimCluster) -> Iterator[str]:
    """A fake node for this module's pods, labelled like the L4 node the GPU example selects."""
    with sim_cluster.temporary_node(
        "mesh-node",
        gpus=8,
        labels={"nvidia.com/gpu.product": "NVIDIA-L4"},
        taints=[MESH_TAINT, {"key": "dedicated", "value": "inference", "effect": "NoSchedule"}],
    ) as name:
        yield name


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    """The objects of one kind, in render order."""
    return [o for o in objects if o["kind"] == kind]


def apply_rendered(api: KubeApi, manifest: Obj) -> list[Obj]:
    """Render the ModelDeployment (its status decides the rollout state) and apply what istiod reads.

    Deployments and HPAs are left out: the test binds one pod per track itself (`run_model_pods`).
    """
    objects = render(manifest)
    api.apply_manifests([o for o in objects if o["kind"] not in ("Deployment", "HorizontalPodAutoscaler")])
    return objects


def _pod_with_ip(api: KubeApi, namespace: str, name: str) -> Obj | None:
    out = api.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    pod: Obj = json.loads(out.stdout) if out.returncode == 0 else {}
    return pod if pod.get("status", {}).get("podIP") else None


def run_pod(api: KubeApi, pod: Obj, node: str) -> Obj:
    """Create the pod on `node` (kwok runs it) and return it once it has an IP."""
    pod = copy.deepcopy(pod)
    pod["spec"]["nodeName"] = node
    meta = pod["metadata"]
    existing = _pod_with_ip(api, meta["namespace"], meta["name"])
    if existing is not None:  # a track that kept running from the previous phase
        return existing
    # A new namespace's ServiceAccount appears a moment after it: the apiserver refuses pods until then.
    wait_until(
        f"pod {meta['name']} created",
        lambda: api.kubectl("apply", "-f", "-", stdin=json.dumps(pod), check=False).returncode == 0,
    )
    found: Obj = wait_until(f"pod {meta['name']} IP", lambda: _pod_with_ip(api, meta["namespace"], meta["name"]))
    return found


def run_model_pods(api: KubeApi, objects: list[Obj], node: str) -> list[Sidecar]:
    """One pod per rendered Deployment (its pod template), as the Deployment's first replica."""
    sidecars = []
    for deployment in of_kind(objects, "Deployment"):
        template = deployment["spec"]["template"]
        meta = deployment["metadata"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-0", "namespace": meta["namespace"], **template["metadata"]},
            "spec": template["spec"],
        }
        sidecars.append(Sidecar.of_pod(run_pod(api, pod, node), workload=meta["name"]))
    return sidecars


def run_caller(api: KubeApi, authorization_policy: Obj, node: str) -> Sidecar:
    """A pod of the first caller the AuthorizationPolicy allows (its namespace and service account)."""
    source = authorization_policy["spec"]["rules"][0]["from"][0]["source"]
    if "principals" in source:
        _, namespace, _, account = source["principals"][0].split("/")[-4:]
    else:
        namespace, account = source["namespaces"][0], "default"
    if api.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        api.create_namespace(namespace)
    if account != "default":
        api.kubectl("create", "serviceaccount", account, "-n", namespace, check=False)
    name = f"caller-{secrets.token_hex(3)}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "caller"}},
        "spec": {"serviceAccountName": account, "containers": [{"name": "app", "image": "caller:1"}]},
    }
    return Sidecar.of_pod(run_pod(api, pod, node))


Check = Callable[[SidecarConfig], list[str]]


def converged(istiod: Istiod, sidecar: Sidecar, check: Check) -> SidecarConfig:
    """Ask istiod as `sidecar` until `check` finds nothing wrong; fail with what was still wrong.

    istiod applies changes after a debounce, so the first answers may predate the objects just applied.
    """
    last: list[str] = []

    def probe() -> SidecarConfig | None:
        nonlocal last
        config = fetch_sidecar_config(istiod.xds_address, sidecar)
        last = check(config)
        return config if not last else None

    try:
        return wait_until(f"istiod's config for {sidecar.node_id}", probe, timeout=CONVERGE_SECONDS)
    except TimeoutError:
        pytest.fail(f"the sidecar of {sidecar.pod} never got what was asked for:\n" + "\n".join(last), pytrace=False)


def model_check(manifest: Obj, objects: list[Obj]) -> Check:
    """The model pod's inbound side: the rate limit and STRICT mTLS on every Service port (gRPC and HTTP), RBAC,
    and every EnvoyFilter patch applied."""
    service = of_kind(objects, "Service")[0]
    ports = pod_ports(service, of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"])
    limit = parse_model_deployment(manifest).spec.rate_limit
    (peer_authentication,) = of_kind(objects, "PeerAuthentication")
    (authorization_policy,) = of_kind(objects, "AuthorizationPolicy")

    def check(config: SidecarConfig) -> list[str]:
        problems: list[str] = []
        for port in ports.values():  # gRPC and HTTP: the same bucket, STRICT mTLS on both
            problems += rate_limit_problems(config, limit, port)
            problems += mtls_problems(config, peer_authentication, port)
        problems += rbac_problems(config, authorization_policy)
        for envoy_filter in of_kind(objects, "EnvoyFilter"):
            problems += unapplied_patches(envoy_filter, config)
        return problems

    return check


def caller_check(manifest: Obj, objects: list[Obj]) -> Check:
    """The caller's outbound side, on every Service port (gRPC and HTTP): the VirtualService's routes with the
    status's weights and mirror, and the spec's header pin to the canary while one is routed or mirrored (no
    route to the canary otherwise)."""
    ports = [int(p["port"]) for p in of_kind(objects, "Service")[0]["spec"]["ports"]]
    (virtual_service,) = of_kind(objects, "VirtualService")
    host = virtual_service["spec"]["hosts"][0]
    weights = status_weights(manifest)
    header_pin = parse_model_deployment(manifest).spec.traffic.policy.header_pin
    pin = (header_pin.name, header_pin.value) if weights["canary"] > 0 or mirrored(manifest) else None

    def check(config: SidecarConfig) -> list[str]:
        problems: list[str] = []
        for port in ports:
            problems += routing_problems(config, virtual_service, port, weights)
            problems += canary_problems(config, host, port, pin)
        return problems

    return check


def with_status(manifest: Obj, phase: str) -> Obj:
    """The ModelDeployment with a canary and the status the operator writes in that rollout phase."""
    out = with_canary(manifest)
    out["metadata"] = {"name": manifest["metadata"]["name"], "namespace": manifest["metadata"]["namespace"]}
    state = phases(out)[phase]
    spec = parse_model_deployment(out).spec
    out["status"] = rollout_status(state, spec, stable_ready_replicas=1, canary_ready_replicas=1)
    return out


def mirrored(manifest: Obj) -> bool:
    """Whether the status says a re-index rollout mirrors calls to a ready canary (it has no weight)."""
    canary = (manifest.get("status") or {}).get("canary") or {}
    return canary.get("mode") == "Reindex" and int(canary.get("mirrorPercent") or 0) > 0


def status_weights(manifest: Obj) -> dict[str, int]:
    """subset -> % as the status says: the canary's weight (0 once aborted), the rest to stable."""
    canary = (manifest.get("status") or {}).get("canary") or {}
    weight = int(canary.get("weight", 0))
    return {"stable": 100 - weight, "canary": weight}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_sidecars_get_what_the_example_asks_for_through_a_canary_and_its_abort(
    path: Path, istiod: Istiod, mesh_node: str, kube_api: KubeApi, new_namespace: NewNamespace
) -> None:
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"] = {"name": manifest["metadata"]["name"], "namespace": new_namespace()}

    objects = apply_rendered(kube_api, manifest)
    models = run_model_pods(kube_api, objects, mesh_node)
    caller = run_caller(kube_api, of_kind(objects, "AuthorizationPolicy")[0], mesh_node)
    converged(istiod, caller, caller_check(manifest, objects))
    for model in models:
        converged(istiod, model, model_check(manifest, objects))

    routed = with_status(manifest, "routed")
    weights = status_weights(routed)
    # A canary gets a share of the calls; an embedder's canary of another space only a mirrored copy of them.
    assert 0 < weights["canary"] < 100 or (mirrored(routed) and weights["canary"] == 0), routed["status"]
    objects = apply_rendered(kube_api, routed)
    models = run_model_pods(kube_api, objects, mesh_node)
    assert {m.labels["serving.bertmesh.io/track"] for m in models} == {"stable", "canary"}
    converged(istiod, caller, caller_check(routed, objects))
    for model in models:
        converged(istiod, model, model_check(routed, objects))

    aborted = with_status(manifest, "aborted")
    assert status_weights(aborted) == {"stable": 100, "canary": 0}
    objects = apply_rendered(kube_api, aborted)
    converged(istiod, caller, caller_check(aborted, objects))


def broken_copy(envoy_filter: Obj, suffix: str, listener: Mapping[str, Any], vhost: str) -> Obj:
    """The EnvoyFilter under another name, each listener match updated with `listener`, each vhost renamed."""
    broken = copy.deepcopy(envoy_filter)
    broken["metadata"]["name"] += suffix
    for patch in broken["spec"]["configPatches"]:
        if "listener" in patch["match"]:
            patch["match"]["listener"].update(listener)
        if "routeConfiguration" in patch["match"]:
            patch["match"]["routeConfiguration"]["vhost"]["name"] = vhost
    return broken


def test_an_envoy_filter_whose_match_selects_nothing_is_reported(
    istiod: Istiod, mesh_node: str, kube_api: KubeApi, new_namespace: NewNamespace
) -> None:
    manifest = yaml.safe_load((EXAMPLES[0].parent / "rate-limited.yaml").read_text())
    manifest["metadata"] = {"name": manifest["metadata"]["name"], "namespace": new_namespace()}
    objects = render(manifest)
    (good,) = of_kind(objects, "EnvoyFilter")
    port = grpc_port(of_kind(objects, "Service")[0])
    broken = [
        broken_copy(good, "-wrong-port", {"portNumber": port + 1}, f"inbound|http|{port + 1}"),
        # The chain's name where the inbound listener's belongs, and the outbound naming of the vhost.
        broken_copy(good, "-wrong-name", {"name": f"0.0.0.0_{port}"}, f"inbound|grpc|{port}"),
    ]
    # One informer delivers EnvoyFilters in order: once the good one shows, istiod has seen the broken ones.
    kube_api.apply_manifests(
        [o for o in objects if o["kind"] not in ("Deployment", "HorizontalPodAutoscaler", "EnvoyFilter")]
    )
    kube_api.apply_manifests([*broken, good])
    (model, *_) = run_model_pods(kube_api, objects, mesh_node)
    config = converged(istiod, model, model_check(manifest, objects))

    for envoy_filter in broken:
        report = unapplied_patches(envoy_filter, config)
        assert len(report) == len(good["spec"]["configPatches"]), report
        assert all(envoy_filter["metadata"]["name"] in line and "selects no" in line for line in report), report
    # istiod agrees: had a broken copy matched, a second limiter would have been inserted.
    for chain in inbound_chains(config, port):
        names = [h["name"] for h in http_filters(connection_manager(chain) or {})]
        assert names.count(LOCAL_RATELIMIT) == 1, names
