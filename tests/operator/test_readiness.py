"""Why a track's pods are not ready: from pod and Deployment objects as the API server reports them."""

from __future__ import annotations

from typing import Any

import pytest

from bertmesh_operator.readiness import deployment_failure, not_ready_reason, pod_owner, pod_view

SCHEDULER = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


def pod(name: str = "minilm-stable-7d9-abcde", *, track: str = "stable", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"uid-{name}",
            "labels": {"serving.bertmesh.io/model-deployment": "minilm", "serving.bertmesh.io/track": track},
        },
        "status": {"phase": "Pending", **status},
    }


def container(name: str = "server", **fields: Any) -> dict[str, Any]:
    return {"name": name, "ready": False, "restartCount": 0, **fields}


UNSCHEDULABLE = pod(
    conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": SCHEDULER}]
)
NO_PVC = pod(
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": '0/2 nodes are available: persistentvolumeclaim "models" not found.',
        }
    ]
)
IMAGE_PULL = pod(
    containerStatuses=[
        container(
            state={
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": 'Back-off pulling image "ghcr.io/bertmesh/model-server:nope"',
                }
            }
        )
    ]
)
CRASH_LOOP = pod(
    phase="Running",
    containerStatuses=[
        container(
            state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            lastState={
                "terminated": {"exitCode": 2, "reason": "Error", "message": "checkpoint has no tokenizer files\n"}
            },
            restartCount=3,
        )
    ],
)
STARTUP_PROBE = pod(phase="Running", containerStatuses=[container(state={"running": {}}, started=False)])
READINESS_PROBE = pod(phase="Running", containerStatuses=[container(state={"running": {}}, started=True)])
INIT_FAILING = pod(
    initContainerStatuses=[
        container(
            "storage-initializer",
            state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
            lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": "s3: access denied"}},
        )
    ],
    containerStatuses=[container(state={"waiting": {"reason": "PodInitializing"}})],
)
CREATING = pod(containerStatuses=[container(state={"waiting": {"reason": "ContainerCreating"}})])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (UNSCHEDULABLE, f"pod minilm-stable-7d9-abcde: Unschedulable: {SCHEDULER}"),
        (
            NO_PVC,
            "pod minilm-stable-7d9-abcde: Unschedulable: "
            '0/2 nodes are available: persistentvolumeclaim "models" not found.',
        ),
        (
            IMAGE_PULL,
            "pod minilm-stable-7d9-abcde: ImagePullBackOff: container server: "
            'Back-off pulling image "ghcr.io/bertmesh/model-server:nope"',
        ),
        (
            CRASH_LOOP,
            "pod minilm-stable-7d9-abcde: CrashLoopBackOff: container server: back-off 40s restarting failed "
            "container; last exit code 2 (Error): checkpoint has no tokenizer files",
        ),
        (
            STARTUP_PROBE,
            "pod minilm-stable-7d9-abcde: StartupProbe: container server is running but has not passed its "
            "startup probe",
        ),
        (
            READINESS_PROBE,
            "pod minilm-stable-7d9-abcde: ReadinessProbe: container server is running but not passing its "
            "readiness probe",
        ),
        (
            INIT_FAILING,
            "pod minilm-stable-7d9-abcde: CrashLoopBackOff: init container storage-initializer: back-off; last "
            "exit code 1 (Error): s3: access denied",
        ),
        (CREATING, "pod minilm-stable-7d9-abcde: ContainerCreating: container server"),
    ],
    ids=[
        "unschedulable",
        "missing-pvc",
        "image-pull",
        "crash-loop",
        "startup-probe",
        "readiness-probe",
        "init",
        "creating",
    ],
)
def test_the_reason_a_pod_gives_is_carried(body: dict[str, Any], expected: str) -> None:
    assert not_ready_reason([pod_view(body)], "stable") == expected


def test_ready_pods_and_other_tracks_say_nothing() -> None:
    ready = pod(phase="Running", conditions=[{"type": "Ready", "status": "True"}])
    canary = pod("minilm-canary-1", track="canary", **UNSCHEDULABLE["status"])
    assert not_ready_reason([pod_view(ready), pod_view(canary)], "stable") is None
    assert not_ready_reason([pod_view(canary)], "canary") is not None
    assert not_ready_reason([], "stable") is None


def test_a_terminating_pod_is_not_the_reason() -> None:
    going = pod(**UNSCHEDULABLE["status"])
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not_ready_reason([pod_view(going)], "stable") is None


def test_the_most_telling_problem_wins_and_ties_go_to_the_first_pod_by_name() -> None:
    probe = pod("a-pod", **READINESS_PROBE["status"])
    pulling = pod("b-pod", **IMAGE_PULL["status"])
    stuck = pod("c-pod", **UNSCHEDULABLE["status"])
    also_stuck = pod("d-pod", **UNSCHEDULABLE["status"])
    pods = [pod_view(p) for p in (also_stuck, probe, pulling, stuck)]
    assert not_ready_reason(pods, "stable") == f"pod c-pod: Unschedulable: {SCHEDULER}"
    assert not_ready_reason(pods[1:3], "stable", None).startswith("pod b-pod: ImagePullBackOff")  # type: ignore[union-attr]


def test_a_deployment_that_cannot_create_pods_says_so_first() -> None:
    body = {
        "status": {
            "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "minilm-stable-x" is forbidden: exceeded quota: gpu',
                },
            ]
        }
    }
    failure = deployment_failure(body)
    assert failure == 'FailedCreate: pods "minilm-stable-x" is forbidden: exceeded quota: gpu'
    assert not_ready_reason([pod_view(UNSCHEDULABLE)], "stable", failure) == failure
    assert deployment_failure({"status": {"conditions": [{"type": "Progressing", "status": "True"}]}}) is None


def test_long_messages_are_clipped_to_one_line() -> None:
    body = pod(**CRASH_LOOP["status"])
    body["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"] = "Traceback\n" + "x" * 5000
    reason = not_ready_reason([pod_view(body)], "stable")
    assert reason is not None and "\n" not in reason and len(reason) == 512 and reason.endswith("...")


def test_a_pod_s_owner_comes_from_its_label() -> None:
    assert pod_owner(UNSCHEDULABLE) == ("ml", "minilm")
    assert pod_owner({"metadata": {"name": "x", "namespace": "ml", "labels": {}}}) is None
