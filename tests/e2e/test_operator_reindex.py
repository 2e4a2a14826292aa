"""Re-index rollouts end to end on the real API server: an embedder whose canary changes embedding space gets a
mirror, 100/0 weights and the header route to the canary; promotion flips to 0/100 in one apply; abort removes
the mirror; the re-index job's annotation promotes after a mirror check passes on Prometheus; a canary that keeps
its space still steps through its weights."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

from tests.e2e.cluster import KubeApi
from tests.e2e.istio_traffic import IstioTraffic, Profile
from tests.e2e.kube_objects import (
    apply_md,
    bertmesh,
    children,
    condition,
    get_md,
    phase,
    ready,
    route_weights,
    tiny,
    wait_for_md,
)
from tests.e2e.operator_process import StartOperator
from tests.e2e.processes import wait_until
from tests.e2e.simcluster import SimCluster

REINDEXED = "serving.bertmesh.io/reindexed-space"


def embedder(name: str, **spec: Any) -> dict[str, Any]:
    """`tiny(name)` as an embedding model."""
    md = tiny(name, **spec)
    md["spec"]["model"]["task"] = "embedding"
    return md


def new_model(name: str, **policy: Any) -> dict[str, Any]:
    """The embedder now asking for another model (another space) through a canary with `policy`."""
    candidate = {"storageUri": f"https://models.example.internal/{name}-v2.tar.gz", "revision": "v2"}
    return embedder(name, traffic={"canary": {"model": candidate, **policy}})


def canary_status(md: dict[str, Any]) -> dict[str, Any]:
    return dict((md.get("status") or {}).get("canary") or {})


def mirroring(md: dict[str, Any]) -> bool:
    canary = canary_status(md)
    return canary.get("mode") == "Reindex" and canary.get("step") == 1 and phase(md) == "Progressing"


def promoted_to_v2(md: dict[str, Any]) -> bool:
    return phase(md) == "Stable" and md["status"]["stable"]["model"]["revision"] == "v2" and ready(md)


class RouteRecorder:
    """Every version of one VirtualService's routes the API server announces (a watch, so none is missed)."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.versions: list[tuple[int, list[dict[str, Any]]]] = []
        self._closed = threading.Event()
        self._client = api.api_client()
        # The kubernetes client is untyped.
        self._watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        custom = k8s_client.CustomObjectsApi(self._client)
        selector = f"metadata.name={name}"
        args = ("networking.istio.io", "v1", namespace, "virtualservices")
        self._stream = self._watch.stream(  # type: ignore[no-untyped-call]
            custom.list_namespaced_custom_object, *args, field_selector=selector
        )
        self._thread = threading.Thread(target=self._run, name="route-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                obj = event["object"]
                version = (obj["metadata"]["generation"], obj["spec"]["http"])
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)
        except Exception:
            if not self._closed.is_set():  # closing the client ends the read with an error: expected then
                raise

    def close(self) -> None:
        """Stop watching."""
        self._closed.set()
        self._watch.stop()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def record_routes(md_crd: KubeApi, namespace: str) -> Iterator[Any]:
    recorders: list[RouteRecorder] = []

    def start(name: str) -> RouteRecorder:
        recorder = RouteRecorder(md_crd, namespace, name)
        recorders.append(recorder)
        return recorder

    yield start
    for recorder in recorders:
        recorder.close()


def split(route: dict[str, Any]) -> dict[str, int]:
    return {d["destination"]["subset"]: d["weight"] for d in route["route"]}


def test_a_new_space_is_mirrored_then_promoted_at_once_or_aborted_without_a_mirror(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator, record_routes: Any
) -> None:
    api = md_crd
    operator = start_operator([namespace])
    for name in ("flip", "dropped"):
        apply_md(api, namespace, embedder(name))
    for name in ("flip", "dropped"):
        wait_for_md(api, namespace, name, "ready", ready, operator=operator)
    recorder = record_routes("flip")
    # Checks every 30 minutes: only the commands move these rollouts.
    for name in ("flip", "dropped"):
        apply_md(api, namespace, new_model(name, interval="30m", mirrorPercent=20))
    for name in ("flip", "dropped"):
        md = wait_for_md(api, namespace, name, "mirroring", mirroring, operator=operator)
        assert canary_status(md)["mirrorPercent"] == 20 and canary_status(md)["weight"] == 0
        assert "waiting for re-index" in md["status"]["message"]
        assert canary_status(md)["embeddingSpace"] != md["status"]["stable"]["embeddingSpace"]
        routes = {r["name"]: r for r in children(api, namespace, name)[("VirtualService", name)]["spec"]["http"]}
        assert list(routes) == ["canary-pin", "weighted", "canary-pin-http", "weighted-http"]
        for suffix in ("", "-http"):  # the gRPC port's routes, then the HTTP port's
            pin, weighted = routes[f"canary-pin{suffix}"], routes[f"weighted{suffix}"]
            assert pin["match"][0]["headers"] == {"x-bertmesh-track": {"exact": "canary"}}
            assert split(pin) == {"canary": 100}
            assert split(weighted) == {"stable": 100, "canary": 0}
            assert weighted["mirror"]["subset"] == "canary" and weighted["mirrorPercentage"] == {"value": 20.0}

    status = bertmesh(api, "rollout", "status", "flip", "-n", namespace)
    assert status.returncode == 0, status.stderr
    assert "Mode:          Reindex: embedding space changes from auto:" in status.stdout
    assert "Mirror:        20% of live traffic mirrored to the canary" in status.stdout
    assert "Weights:       stable 100%, canary 0%" in status.stdout
    # `kubectl get md` says why Canary % stays 0: the CRD's Mode column.
    table = api.kubectl("get", "md", "flip", "-n", namespace).stdout.splitlines()
    row = dict(zip(table[0].replace("CANARY %", "CANARY").split(), table[1].split(), strict=True))
    assert (row["CANARY"], row["MODE"]) == ("0", "Reindex"), table

    def last_mirrored() -> tuple[int, list[dict[str, Any]]] | None:
        last = recorder.versions[-1] if recorder.versions else None
        return last if last is not None and "mirror" in last[1][-1] else None

    mirrored = wait_until("the mirror recorded", last_mirrored, timeout=10)
    promote = bertmesh(api, "rollout", "promote", "flip", "-n", namespace)
    assert promote.returncode == 0, promote.stderr
    wait_for_md(api, namespace, "flip", "promoted", promoted_to_v2, operator=operator, timeout=60)
    wait_until("the final routes recorded", lambda: len(recorder.versions[-1][1]) == 2, timeout=10)
    after = recorder.versions[recorder.versions.index(mirrored) + 1 :]
    generation, routes = after[0]
    # One apply took each port's route from 100/0 with a mirror to 0/100 without one, and nothing in between.
    assert generation == mirrored[0] + 1
    for flipped in (r for r in routes if r["name"].startswith("weighted")):
        assert split(flipped) == {"stable": 0, "canary": 100} and "mirror" not in flipped
    for _, routes in recorder.versions:
        for weighted in (r for r in routes if r["name"].startswith("weighted")):
            assert not all(split(weighted).get(track, 0) > 0 for track in ("stable", "canary")), routes
    assert route_weights(children(api, namespace, "flip")[("VirtualService", "flip")]) == {"stable": 100}

    abort = bertmesh(api, "rollout", "abort", "dropped", "-n", namespace)
    assert abort.returncode == 0, abort.stderr
    md = wait_for_md(api, namespace, "dropped", "aborted", lambda m: phase(m) == "Aborted", operator=operator)
    assert canary_status(md)["mirrorPercent"] == 0
    remaining = children(api, namespace, "dropped")[("VirtualService", "dropped")]["spec"]["http"]
    assert [r["name"] for r in remaining] == ["weighted", "weighted-http"]
    assert all(split(r) == {"stable": 100} and "mirror" not in r for r in remaining)
    refused = bertmesh(api, "rollout", "promote", "dropped", "-n", namespace)
    assert refused.returncode == 1 and "aborted re-index canary has no replicas" in refused.stderr


def test_the_reindexed_annotation_promotes_after_a_mirror_check_passes(
    sim_cluster: SimCluster,
    md_crd: KubeApi,
    namespace: str,
    start_operator: StartOperator,
    prometheus_url: str,
    traffic: IstioTraffic,
) -> None:
    api = md_crd
    operator = start_operator([namespace], prometheus_url=prometheus_url)
    apply_md(api, namespace, embedder("indexed"))
    wait_for_md(api, namespace, "indexed", "ready", ready, operator=operator)
    # The mirrored calls, as the canary's sidecar reports them.
    traffic.serve("indexed", Profile(error_ratio=0.0, latency_ms=8))
    apply_md(api, namespace, new_model("indexed", interval="10s", threshold=1))
    md = wait_for_md(
        api,
        namespace,
        "indexed",
        "a passing mirror check",
        lambda m: condition(m, "Progressing").get("reason") == "WaitingForReindex",
        operator=operator,
        timeout=60,
    )
    assert phase(md) == "Progressing" and canary_status(md)["weight"] == 0
    api.kubectl("annotate", "md", "indexed", "-n", namespace, f"{REINDEXED}={canary_status(md)['embeddingSpace']}")
    wait_for_md(api, namespace, "indexed", "promoted", promoted_to_v2, operator=operator, timeout=60)


def test_a_canary_in_the_same_space_still_steps_through_its_weights(
    sim_cluster: SimCluster,
    md_crd: KubeApi,
    namespace: str,
    start_operator: StartOperator,
    prometheus_url: str,
    traffic: IstioTraffic,
) -> None:
    api = md_crd
    operator = start_operator([namespace], prometheus_url=prometheus_url)
    stable = embedder("requant")
    stable["spec"]["model"]["embeddingSpace"] = "minilm"
    apply_md(api, namespace, stable)
    wait_for_md(api, namespace, "requant", "ready", ready, operator=operator)
    traffic.serve("requant", Profile(error_ratio=0.0, latency_ms=8))
    stable["spec"]["traffic"] = {
        "canary": {"runtime": {"image": "ghcr.io/bertmesh/model-server:0.2.0"}, "steps": [20, 60], "interval": "10s"}
    }
    apply_md(api, namespace, stable)
    seen: list[dict[str, int]] = []

    def at(weight: int) -> bool:
        weights = route_weights(children(api, namespace, "requant")[("VirtualService", "requant")])
        if weights not in seen:
            seen.append(weights)
        return weights == {"stable": 100 - weight, "canary": weight}

    wait_until("the canary at 20%", lambda: at(20), timeout=30, watch=[operator.process])
    md = get_md(api, namespace, "requant")
    assert canary_status(md)["mode"] == "Weighted"
    assert "both tracks write embedding space minilm" in canary_status(md)["modeReason"]
    wait_until("the canary at 60%", lambda: at(60), timeout=30, watch=[operator.process])
    assert all(
        "mirror" not in r for r in children(api, namespace, "requant")[("VirtualService", "requant")]["spec"]["http"]
    )
