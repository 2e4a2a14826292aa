"""The status follows the pods, not a timer: Ready arrives with the pods and says why when there are none (the
scheduler's message, as `kubectl describe` shows it), and after any number of SIGKILLs at random points of a
mixed workload every ModelDeployment's status matches its children again within seconds.

Every operator here re-checks only every 10 minutes (`--resync-seconds 600`): what the tests wait for (well
under that) can only come from the watches of the Deployments and their pods.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from bertmesh_operator.render import render
from tests.e2e.cluster import KubeApi
from tests.e2e.kube_objects import apply_md, children, condition, ready, tiny, wait_for_md
from tests.e2e.operator_process import StartOperator
from tests.e2e.processes import wait_until
from tests.e2e.simcluster import SimCluster

RESYNC = 600.0  # far beyond every wait below
CANARY = {"steps": [50], "interval": "10s", "threshold": 1}


def md_events(api: KubeApi, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events posted on a ModelDeployment."""
    selector = f"involvedObject.kind=ModelDeployment,involvedObject.name={name}"
    out = api.kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def deployment_ready(api: KubeApi, namespace: str, name: str) -> int:
    """readyReplicas of a Deployment as its controller reports it (0 when absent)."""
    found = api.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return 0
    return int((json.loads(found.stdout).get("status") or {}).get("readyReplicas") or 0)


def test_ready_follows_the_pods_not_the_timer(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    api = md_crd
    operator = start_operator([namespace], resync_seconds=RESYNC)
    apply_md(api, namespace, tiny("follows"))
    md = wait_for_md(api, namespace, "follows", "Ready", ready, operator=operator, timeout=90)
    assert md["status"]["stable"]["readyReplicas"] == deployment_ready(api, namespace, "follows-stable") >= 1
    # Two replicas: the second pod's readiness reaches the status through the Deployment's watch too.
    apply_md(api, namespace, tiny("follows", autoscaling={"minReplicas": 2, "maxReplicas": 3, "metric": "cpu"}))
    wait_for_md(
        api,
        namespace,
        "follows",
        "2 ready stable replicas",
        lambda m: ready(m) and m["status"]["stable"]["readyReplicas"] == 2,
        operator=operator,
        timeout=90,
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"model": {"storageUri": "pvc://no-such-claim/model", "revision": "v1"}},
            'persistentvolumeclaim "no-such-claim" not found',
        ),
        ({"resources": {"cpu": "500", "memory": "1Gi"}}, "Insufficient cpu"),
    ],
    ids=["missing-pvc", "no-node-fits-the-cpu"],
)
def test_not_ready_says_what_the_scheduler_says(
    sim_cluster: SimCluster,
    md_crd: KubeApi,
    namespace: str,
    start_operator: StartOperator,
    spec: dict[str, Any],
    expected: str,
) -> None:
    api = md_crd
    operator = start_operator([namespace], resync_seconds=RESYNC)
    apply_md(api, namespace, tiny("stuck", **spec))

    def says_why(md: dict[str, Any]) -> bool:
        found = condition(md, "Ready")
        return found.get("status") == "False" and expected in found.get("message", "")

    md = wait_for_md(
        api, namespace, "stuck", f"Ready=False saying {expected!r}", says_why, operator=operator, timeout=90
    )
    message = condition(md, "Ready")["message"]
    assert message.startswith("0 stable replica(s) ready") and "Unschedulable: " in message, message
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]

    def posted() -> bool:
        return any(
            e["type"] == "Warning" and e["reason"] == "NoReadyReplicas" and expected in e["message"]
            for e in md_events(api, namespace, "stuck")
        )

    wait_until("a Warning Event with the scheduler's message", posted, timeout=30, watch=[operator.process])


# ----- chaos: SIGKILL at random points of a mixed workload -----


def consistent(api: KubeApi, namespace: str, alive: set[str]) -> str | None:
    """None when every ModelDeployment's status matches its children (and the deleted ones are gone), else why."""
    stored = json.loads(api.kubectl("get", "md", "-n", namespace, "-o", "json").stdout)["items"]
    names = {md["metadata"]["name"] for md in stored}
    if names != alive:
        return f"ModelDeployments {sorted(names)}, expected {sorted(alive)}"
    for md in stored:
        name, status = md["metadata"]["name"], md.get("status") or {}
        if status.get("observedGeneration") != md["metadata"]["generation"]:
            return f"{name}: observedGeneration {status.get('observedGeneration')} != {md['metadata']['generation']}"
        objects = set(children(api, namespace, name))
        wanted = {(o["kind"], o["metadata"]["name"]) for o in render(md)}
        if objects != wanted:
            return f"{name}: children {sorted(objects ^ wanted)} differ from the render"
        replicas = deployment_ready(api, namespace, f"{name}-stable")
        reported = (status.get("stable") or {}).get("readyReplicas")
        if reported != replicas:
            return f"{name}: status says {reported} stable replica(s) ready, the Deployment {replicas}"
        if condition(md, "Ready").get("status") != ("True" if replicas > 0 else "False"):
            return f"{name}: Ready is {condition(md, 'Ready').get('status')} with {replicas} ready"
    return None


class Workload:
    """A seeded mix of creates, spec edits, canaries and deletions on one namespace."""

    def __init__(self, api: KubeApi, namespace: str, rng: random.Random) -> None:
        self.api, self.namespace, self.rng = api, namespace, rng
        self.alive: dict[str, int] = {}  # name -> revision number
        self.created = 0

    def _apply(self, name: str, revision: int, *, canary: bool) -> None:
        spec: dict[str, Any] = {}
        if canary:
            model = {"storageUri": f"https://models.example.internal/{name}-c{revision}.tar.gz"}
            spec["traffic"] = {"canary": {"model": model, **CANARY}}
        apply_md(self.api, self.namespace, tiny(name, f"v{revision}", **spec))
        self.alive[name] = revision

    def step(self) -> str:
        """One random change; returns what it did."""
        actions: list[Callable[[], str]] = [self.create]
        if self.alive:
            actions += [self.edit, self.canary, self.delete]
        return self.rng.choice(actions)()

    def create(self) -> str:
        self.created += 1
        name = f"chaos-{self.created}"
        self._apply(name, 1, canary=False)
        return f"create {name}"

    def edit(self) -> str:
        name = self.rng.choice(sorted(self.alive))
        self._apply(name, self.alive[name] + 1, canary=False)
        return f"edit {name}"

    def canary(self) -> str:
        name = self.rng.choice(sorted(self.alive))
        self._apply(name, self.alive[name] + 1, canary=True)
        return f"canary {name}"

    def delete(self) -> str:
        name = self.rng.choice(sorted(self.alive))
        self.api.kubectl("delete", "md", name, "-n", self.namespace, "--wait=false")
        del self.alive[name]
        return f"delete {name}"


def test_status_matches_the_children_after_every_sigkill(
    sim_cluster: SimCluster, md_crd: KubeApi, namespace: str, start_operator: StartOperator
) -> None:
    api = md_crd
    seed = random.randrange(2**32)
    print(f"chaos seed: {seed}")  # rerun a failure with this seed in place of randrange
    rng = random.Random(seed)
    workload = Workload(api, namespace, rng)
    for _ in range(3):
        workload.create()
    operator = start_operator([namespace], resync_seconds=RESYNC)
    for round_ in range(8):
        done = [workload.step() for _ in range(rng.randint(1, 3))]
        # Somewhere between "nothing handled yet" and "mid-way through the reconciles and pod updates".
        time.sleep(rng.uniform(0.0, 3.0))
        operator.kill()
        operator = start_operator([namespace], resync_seconds=RESYNC)
        alive = set(workload.alive)
        what = f"seed {seed}, round {round_} after {done}: status matches the children"
        last: list[str | None] = [None]

        def settled(alive: set[str] = alive, last: list[str | None] = last) -> bool:
            last[0] = consistent(api, namespace, alive)
            return last[0] is None

        try:
            wait_until(what, settled, timeout=30, interval=0.5, watch=[operator.process])
        except Exception as error:
            raise AssertionError(f"{what}: {last[0]}") from error
    assert consistent(api, namespace, set(workload.alive)) is None  # and it stays so: no flapping
