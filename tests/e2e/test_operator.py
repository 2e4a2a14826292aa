"""The operator against a real control plane (apiserver, controllers, scheduler, kwok GPU nodes): it creates
every child with owner references and status conditions, reverts edits, reports an invalid spec as Degraded,
converges after SIGKILL without duplicates, and deletion removes everything."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bertmesh_operator.handlers import FINALIZER
from bertmesh_operator.render import RenderOptions, render
from tests.e2e.cluster import KubeApi
from tests.e2e.kube_objects import (
    apply_md,
    children,
    condition,
    get_md,
    ready,
    route_weights,
    tiny,
    wait_for_md,
)
from tests.e2e.operator_process import OperatorProcess, StartOperator, get_json, install_crd, operator_kubeconfig
from tests.e2e.processes import wait_until
from tests.e2e.simcluster import SimCluster
from tests.e2e.toolchain import Toolchain

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def expected_children(md: dict[str, Any], autoscaler: str = "keda") -> set[tuple[str, str]]:
    """(kind, name) of every object render() gives for the ModelDeployment as stored (status included)."""
    options = RenderOptions(autoscaler="hpa" if autoscaler == "hpa" else "keda")
    return {(o["kind"], o["metadata"]["name"]) for o in render(md, options=options)}


def assert_owned(md: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    for key, obj in objects.items():
        refs = obj["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
            ("ModelDeployment", md["metadata"]["name"], md["metadata"]["uid"], True)
        ], key


@pytest.fixture
def l4_node(sim_cluster: SimCluster) -> Iterator[str]:
    """A tainted 4-GPU node labelled like an NVIDIA L4 node (what examples/gpu-classifier-canary.yaml asks for)."""
    with sim_cluster.temporary_node(
        "l4-node",
        gpus=4,
        labels={"nvidia.com/gpu.product": "NVIDIA-L4"},
        taints=[{"key": "dedicated", "value": "inference", "effect": "NoSchedule"}],
    ) as name:
        yield name


def model_claim(api: KubeApi, namespace: str, claim: str) -> None:
    """A PersistentVolumeClaim bound to a PersistentVolume made for it (the models a platform team filled)."""
    volume = f"{namespace}-{claim}"
    api.apply_manifests(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/{volume}"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        ]
    )


def test_every_example_gets_its_children_status_and_ready_gpu_pods(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, l4_node: str, start_operator: StartOperator
) -> None:
    api = md_crd
    model_claim(api, namespace, "bertmesh-models")
    # Plain HPAs: they scale each Deployment to minReplicas with no metrics source at all (KEDA's tier,
    # test_autoscaling_keda.py, proves the ScaledObjects).
    operator = start_operator([namespace], autoscaler="hpa")
    names = []
    for path in EXAMPLES:
        api.kubectl("apply", "-n", namespace, "-f", str(path))
        names.append(yaml.safe_load(path.read_text())["metadata"]["name"])

    for name in names:
        # minReplicas is 2 in every example: the HPA scales the Deployment up from the API server's default of 1.
        md = wait_for_md(
            api,
            namespace,
            name,
            "2 ready stable replicas",
            lambda m: ready(m) and m["status"]["stable"]["readyReplicas"] == 2,
            operator=operator,
            timeout=120,
        )
        objects = children(api, namespace, name)
        assert set(objects) == expected_children(md, "hpa")
        assert_owned(md, objects)
        generation = md["metadata"]["generation"]
        assert {c["type"]: c["observedGeneration"] for c in md["status"]["conditions"]} == {
            "Ready": generation,
            "Progressing": generation,
            "Degraded": generation,
            "Autoscaling": generation,
        }
        assert condition(md, "Degraded")["status"] == "False"
        assert md["status"]["grpcEndpoint"] == f"{name}.{namespace}.svc.cluster.local:50051"

    # The classifier starts with a canary (its spec carries one): 1 canary pod, step 1 at 5%, on the L4 node.
    sentiment = wait_for_md(
        api,
        namespace,
        "sentiment",
        "canary at its first step",
        lambda m: (m["status"].get("canary") or {}).get("weight") == 5,
        operator=operator,
    )
    assert sentiment["status"]["phase"] == "Progressing"
    assert condition(sentiment, "Progressing")["status"] == "True"
    assert sentiment["status"]["canary"]["readyReplicas"] == 1
    objects = children(api, namespace, "sentiment")
    assert route_weights(objects[("VirtualService", "sentiment")]) == {"stable": 95, "canary": 5}
    pods = get_json(api, "pods", "-n", namespace, "-l", "serving.bertmesh.io/model-deployment=sentiment")["items"]
    assert len(pods) == 3
    assert {p["spec"]["nodeName"] for p in pods} == {l4_node}
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" for p in pods)
    # The rate-limited service has its EnvoyFilter; the others have none.
    assert ("EnvoyFilter", "embed-public-ratelimit") in children(api, namespace, "embed-public")
    printed = api.kubectl("get", "md", "-n", namespace).stdout
    assert all(line.split()[1] == "True" for line in printed.splitlines()[1:]), printed


def test_edits_to_children_are_reverted(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    api = md_crd
    operator = start_operator([namespace])
    apply_md(api, namespace, tiny("edited"))
    wait_for_md(api, namespace, "edited", "ready", ready, operator=operator)
    image = get_json(api, "deployment", "edited-stable", "-n", namespace)["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]

    patch = '[{"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 50}]'
    api.kubectl("patch", "virtualservice.networking.istio.io", "edited", "-n", namespace, "--type=json", "-p", patch)
    api.kubectl("set", "image", "deployment/edited-stable", "-n", namespace, "model-server=example.com/evil:1")
    api.kubectl("delete", "service", "edited", "-n", namespace)
    api.kubectl("delete", "peerauthentication.security.istio.io", "edited", "-n", namespace)

    def reverted() -> bool:
        objects = children(api, namespace, "edited")
        deployment = objects[("Deployment", "edited-stable")]
        return (
            route_weights(objects[("VirtualService", "edited")]) == {"stable": 100}
            and deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
            and ("Service", "edited") in objects
            and ("PeerAuthentication", "edited") in objects
        )

    wait_until("every edit reverted", reverted, timeout=30, watch=[operator.process])


def test_an_invalid_spec_that_gets_past_the_schema_is_degraded_not_a_crash(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    api = md_crd
    operator = start_operator([namespace])
    good = tiny("candidate")
    apply_md(api, namespace, good)
    wait_for_md(api, namespace, "candidate", "ready", ready, operator=operator)
    before = set(children(api, namespace, "candidate"))

    # Each part validates on its own (the API server accepts it); the candidate as a whole does not: its
    # batch would not fit in the queue it inherits.
    bad = tiny("candidate", traffic={"canary": {"runtime": {"maxBatchTokens": 300000}}})
    apply_md(api, namespace, bad)
    md = wait_for_md(
        api,
        namespace,
        "candidate",
        "Degraded InvalidSpec",
        lambda m: (
            condition(m, "Degraded").get("reason") == "InvalidSpec"
            and m["status"]["observedGeneration"] == m["metadata"]["generation"]
        ),
        operator=operator,
    )
    degraded = condition(md, "Degraded")
    assert degraded["status"] == "True"
    assert "maxQueuedTokens must be at least maxBatchTokens" in degraded["message"]
    assert degraded["observedGeneration"] == md["metadata"]["generation"]
    assert condition(md, "Ready")["status"] == "True"  # still serving the last good spec
    assert set(children(api, namespace, "candidate")) == before  # nothing touched
    events = get_json(api, "events", "-n", namespace, "--field-selector", "involvedObject.name=candidate")["items"]
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events)

    apply_md(api, namespace, good)
    md = wait_for_md(api, namespace, "candidate", "recovered", ready, operator=operator)
    assert condition(md, "Degraded")["status"] == "False"
    operator.check_running()


def test_a_killed_operator_converges_after_restart_without_duplicates(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    api = md_crd
    names = [f"killed-{i}" for i in range(6)]
    for name in names:
        apply_md(api, namespace, tiny(name))
    first = start_operator([namespace], workers=1)

    def some_children() -> bool:
        out = api.kubectl("get", "services", "-n", namespace, "-o", "name").stdout
        return bool(out.strip())

    wait_until("the first children", some_children, timeout=60, interval=0.05, watch=[first.process])
    first.kill()
    unfinished = [n for n in names if not (get_md(api, namespace, n).get("status") or {}).get("phase")]
    assert unfinished, "every ModelDeployment was reconciled before the kill: nothing was cut short"

    second = start_operator([namespace], workers=2)
    for name in names:
        md = wait_for_md(api, namespace, name, "ready", ready, operator=second, timeout=90)
        objects = children(api, namespace, name)
        assert set(objects) == expected_children(md)
        assert_owned(md, objects)
        assert not md["metadata"].get("finalizers")  # nothing blocks deletion while no operator runs
        replica_sets = get_json(
            api, "replicasets", "-n", namespace, "-l", f"serving.bertmesh.io/model-deployment={name}"
        )
        assert len(replica_sets["items"]) == 1  # the pod template never flapped


def test_deleting_a_model_deployment_removes_its_children(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    api = md_crd
    operator = start_operator([namespace])
    apply_md(api, namespace, tiny("doomed", rateLimit={"requestsPerSecond": 10}))
    wait_for_md(api, namespace, "doomed", "ready", ready, operator=operator)
    assert len(children(api, namespace, "doomed")) == 10

    api.kubectl("delete", "md", "doomed", "-n", namespace, "--wait=false")

    def all_gone() -> bool:
        left = api.kubectl("get", "md", "-n", namespace, "-o", "name").stdout.strip()
        pods = get_json(api, "pods", "-n", namespace)["items"]
        return not left and not children(api, namespace, "doomed") and not pods

    wait_until("the ModelDeployment, its children and pods gone", all_gone, timeout=60, watch=[operator.process])


def test_the_finalizer_of_earlier_operators_is_removed_and_deletion_is_not_blocked(
    md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    """Operators before 2026-12 put kopf's finalizer on every ModelDeployment; this one needs none (no kopf
    daemons, timers or change handlers), takes the old one off, and then deletion never waits for it."""
    api = md_crd
    legacy = tiny("legacy")
    legacy["metadata"]["finalizers"] = [FINALIZER]
    apply_md(api, namespace, legacy)
    operator = start_operator([namespace])
    wait_for_md(
        api,
        namespace,
        "legacy",
        "finalizer removed and reconciled",
        lambda m: not m["metadata"].get("finalizers") and (m.get("status") or {}).get("phase"),
        operator=operator,
    )
    operator.stop()
    api.kubectl("delete", "md", "legacy", "-n", namespace, "--timeout=30s")  # with no operator running
    assert not api.kubectl("get", "md", "-n", namespace, "-o", "name").stdout.strip()


KEDA_CRD = Path(__file__).resolve().parents[1] / "operator" / "third_party" / "keda.sh_scaledobjects.yaml"


def test_a_kind_installed_after_the_operator_started_is_applied_and_watched_without_a_restart(
    k8s_toolchain: Toolchain, tmp_path: Path
) -> None:
    """KEDA installed after bertmesh (scope cluster, the chart's default): the ScaledObject goes out at the next
    discovery (a minute at most, even with a 10-minute resync), and kopf watches it from then on, so a deleted one
    comes back within seconds, not at the resync. An apiserver of its own: the session's has KEDA's CRD
    once an earlier test applied it."""
    with contextlib.ExitStack() as stack:
        api = KubeApi.start(k8s_toolchain, tmp_path / "kube-api", tmp_path / "logs")
        stack.callback(api.stop)
        install_crd(api)
        namespace = api.create_namespace("late-keda")
        operator = OperatorProcess(api, operator_kubeconfig(api), [], resync_seconds=600)
        stack.callback(operator.stop)
        operator.wait_live()
        apply_md(api, namespace, tiny("embedder", autoscaling={"minReplicas": 1, "maxReplicas": 2}))
        missing = wait_for_md(
            api,
            namespace,
            "embedder",
            "Autoscaling False: AutoscalerMissing",
            lambda m: condition(m, "Autoscaling").get("reason") == "AutoscalerMissing",
            operator=operator,
        )
        assert condition(missing, "Autoscaling")["status"] == "False"

        api.apply_manifests(KEDA_CRD)
        wait_for_md(
            api,
            namespace,
            "embedder",
            "Autoscaling True",
            lambda m: condition(m, "Autoscaling").get("status") == "True",
            operator=operator,
            timeout=100,
        )
        scaled = get_json(api, "scaledobject", "embedder-stable", "-n", namespace)
        api.kubectl("delete", "scaledobject", "embedder-stable", "-n", namespace)
        # Only a watch on the new kind brings it back this fast.
        back = wait_until(
            "the deleted ScaledObject re-applied",
            lambda: get_json(api, "scaledobject", "-n", namespace)["items"] or None,
            timeout=10,
            interval=0.5,
            watch=[operator.process],
        )
        assert [o["metadata"]["name"] for o in back] == ["embedder-stable"]
        assert back[0]["metadata"]["uid"] != scaled["metadata"]["uid"]
        log = operator.log_path.read_text()
        assert "Not enough permissions" not in log, "kopf could not watch the CRDs"
        # The operator's discovery saw the kind appear and had kopf scan its group (bertmesh_operator.rescan), so
        # the watch does not hinge on kopf's own CRD events outrunning the API server's discovery.
        assert "kopf rescanned the resources of keda.sh" in log and "did not rescan" not in log
