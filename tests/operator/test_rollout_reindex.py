"""Re-index rollouts: an embedder whose canary writes another embedding space is mirrored, never split by weight.

The mode decision, the spec rule refusing weighted steps across spaces, the state machine in re-index mode, the
rendered VirtualService (mirror, 100/0, header pin, 0/100 on promotion), the status and `bertmesh rollout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from bertmesh_operator.analysis import canary_target, success_rate_query
from bertmesh_operator.commands.rollout import RolloutCommandError, command_for, format_status
from bertmesh_operator.errors import InvalidSpecError
from bertmesh_operator.render import render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, Weights, initial_state, step
from bertmesh_operator.rollout_mode import decide_mode
from bertmesh_operator.spec import ModelDeploymentSpec
from bertmesh_operator.states import Phase, Reason, RolloutMode
from bertmesh_operator.status import rollout_state, status_patch
from bertmesh_operator.status_model import ModelDeploymentStatus

MakeManifest = Callable[..., dict[str, Any]]
MINUTE = timedelta(minutes=1)
GOOD = Observation(canary_ready_replicas=1, success_rate=0.999, p99_latency_ms=20.0)
EMBEDDER = {"model": {"storageUri": "pvc://models/minilm", "task": "embedding", "revision": "v1"}}
NEW_SPACE = {"traffic": {"canary": {"model": {"storageUri": "pvc://models/bge", "revision": "v2"}, "threshold": 2}}}


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


@pytest.fixture
def spec_of(make_md: MakeManifest) -> Callable[..., ModelDeploymentSpec]:
    """An embedder's spec with `fragments` merged over it in turn."""

    def build(*fragments: dict[str, Any]) -> ModelDeploymentSpec:
        spec = EMBEDDER
        for fragment in fragments:
            spec = _merged(spec, fragment)
        return parse_model_deployment(make_md(spec)).spec

    return build


def mirroring(spec: ModelDeploymentSpec, t0: datetime) -> RolloutState:
    """A re-index rollout whose canary just became ready."""
    state = step(initial_state(spec), None, spec, t0)
    assert (state.phase, state.mode, state.weights, state.mirror_percent) == (
        Phase.PROGRESSING,
        RolloutMode.REINDEX,
        Weights(100, 0),
        0,
    )
    state = step(state, Observation(canary_ready_replicas=1), spec, t0)
    assert (state.step, state.weights, state.mirror_percent) == (1, Weights(100, 0), spec.traffic.policy.mirror_percent)
    return state


def virtual_service(spec: ModelDeploymentSpec, state: RolloutState, make_md: MakeManifest) -> dict[str, Any]:
    manifest = make_md(spec.wire())
    return next(o for o in render(manifest, state=state) if o["kind"] == "VirtualService")


# --- the mode -------------------------------------------------------------------------------------------------


def test_a_new_embedding_model_is_a_reindex_rollout_and_says_why(spec_of: Callable[..., ModelDeploymentSpec]) -> None:
    spec = spec_of(NEW_SPACE)
    decision = decide_mode(spec.base_serving, spec.desired_serving, spec.traffic.policy)
    assert decision.mode is RolloutMode.REINDEX
    old, new = spec.model.effective_embedding_space, spec.desired_serving.model.effective_embedding_space
    assert old.startswith("auto:") and new.startswith("auto:") and old != new
    assert f"embedding space changes from {old} to {new}" in decision.reason


@pytest.mark.parametrize(
    ("fragment", "why"),
    [
        ({"traffic": {"canary": {"runtime": {"image": "ghcr.io/bertmesh/model-server:0.2.0"}}}}, "both tracks"),
        ({"traffic": {"canary": {"runtime": {"precision": "int8"}}}}, "both tracks write embedding space"),
        # A re-exported model that declares the same space keeps the weighted canary.
        (
            {
                "model": {**EMBEDDER["model"], "embeddingSpace": "minilm"},
                "traffic": {
                    "canary": {"model": {"storageUri": "pvc://models/minilm-onnx", "embeddingSpace": "minilm"}}
                },
            },
            "both tracks write embedding space minilm",
        ),
        ({"model": {"storageUri": "pvc://m/a", "task": "fill-mask"}, **NEW_SPACE}, "writes no vectors"),
        ({"model": {"storageUri": "pvc://m/a", "task": "auto"}, **NEW_SPACE}, "declare task: embedding"),
    ],
)
def test_same_space_or_no_embedder_keeps_the_weighted_canary(
    spec_of: Callable[..., ModelDeploymentSpec], fragment: dict[str, Any], why: str
) -> None:
    spec = spec_of(fragment)
    decision = decide_mode(spec.base_serving, spec.desired_serving, spec.traffic.policy)
    assert decision.mode is RolloutMode.WEIGHTED
    assert why in decision.reason


def test_a_new_location_or_version_resets_a_declared_space_unless_declared_again(
    spec_of: Callable[..., ModelDeploymentSpec],
) -> None:
    declared = {"model": {**EMBEDDER["model"], "embeddingSpace": "minilm"}}
    moved = spec_of(declared, {"traffic": {"canary": {"model": {"revision": "v2"}}}}).desired_serving.model
    assert moved.embedding_space is None and moved.effective_embedding_space.startswith("auto:")
    kept = spec_of(declared, {"traffic": {"canary": {"runtime": {"threads": 2}}}}).desired_serving.model
    assert kept.effective_embedding_space == "minilm"


@pytest.mark.parametrize(
    "policy", [{"steps": [10, 50]}, {"stepWeight": 20}, {"maxWeight": 30}], ids=["steps", "stepWeight", "maxWeight"]
)
def test_weighted_steps_across_spaces_are_refused(make_md: MakeManifest, policy: dict[str, Any]) -> None:
    canary = {"model": {"storageUri": "pvc://models/bge"}, **policy}
    with pytest.raises(InvalidSpecError, match="never split by weight"):
        parse_model_deployment(make_md({**EMBEDDER, "traffic": {"canary": canary}}))
    # The same steps are fine for a classifier, or for an embedder that keeps its space.
    parse_model_deployment(
        make_md({"model": {"storageUri": "pvc://m/a", "task": "fill-mask"}, "traffic": {"canary": canary}})
    )
    same = {"model": {"storageUri": "pvc://models/bge", "embeddingSpace": "minilm"}, **policy}
    declared = {"model": {**EMBEDDER["model"], "embeddingSpace": "minilm"}, "traffic": {"canary": same}}
    parse_model_deployment(make_md(declared))


def test_steps_the_spec_cannot_see_are_ignored_and_the_status_says_so(
    spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    # Stable already runs model A; the spec now names model B with a runtime-only weighted canary: the rule
    # sees no space change in the spec, the rollout does.
    running = spec_of()
    spec = spec_of({"model": {"storageUri": "pvc://models/bge", "task": "embedding"}},
                   {"traffic": {"canary": {"runtime": {"threads": 2}, "steps": [10, 50]}}})  # fmt: skip
    state = step(RolloutState(stable=running.base_serving), None, spec, t0)
    assert state.mode is RolloutMode.REINDEX
    assert "the weighted steps in traffic.canary are ignored" in state.mode_reason
    state = step(state, Observation(canary_ready_replicas=1), spec, t0)
    assert state.weights == Weights(100, 0)


# --- the state machine ----------------------------------------------------------------------------------------


def test_passing_mirror_checks_wait_for_reindex_without_weight(
    spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE)
    state = mirroring(spec, t0)
    assert "waiting for re-index" in state.message
    for minute in range(1, 6):
        state = step(state, GOOD, spec, t0 + minute * MINUTE)
        assert (state.phase, state.weights, state.mirror_percent) == (Phase.PROGRESSING, Weights(100, 0), 10)
        assert state.reason is Reason.WAITING_FOR_REINDEX and "waiting for re-index" in state.message


def test_failed_mirror_checks_abort_and_remove_the_mirror(
    spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE)
    state = mirroring(spec, t0)
    bad = Observation(canary_ready_replicas=1, success_rate=0.5, p99_latency_ms=20.0)
    state = step(state, bad, spec, t0 + MINUTE)
    assert (state.reason, state.failed_checks, state.mirror_percent) == (Reason.CHECK_FAILED, 1, 10)
    state = step(state, Observation(canary_ready_replicas=1), spec, t0 + 2 * MINUTE)
    assert (state.phase, state.weights, state.mirror_percent) == (Phase.ABORTED, Weights(100, 0), 0)
    assert "no metrics for the canary" in state.message


def test_promote_moves_everything_at_once_then_stable_takes_over(
    spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE)
    state = mirroring(spec, t0)
    promoted = step(state, GOOD, spec, t0 + 10 * MINUTE, Command("promote", state.canary_revision or ""))
    assert (promoted.phase, promoted.weights, promoted.mirror_percent) == (Phase.PROMOTING, Weights(0, 100), 0)
    assert promoted.stable == spec.desired_serving
    # While stable's pods switch space the canary keeps everything, whatever the spec says meanwhile.
    third = spec_of({"traffic": {"canary": {"model": {"storageUri": "pvc://models/e5"}}}})
    waiting = step(promoted, Observation(canary_ready_replicas=1), third, t0 + 11 * MINUTE)
    assert waiting == promoted
    done = step(promoted, Observation(stable_ready=True), spec, t0 + 12 * MINUTE)
    assert (done.phase, done.weights, done.canary, done.reason) == (Phase.STABLE, Weights(100, 0), None, "Promoted")


def test_the_reindexed_annotation_promotes_at_the_next_passing_check(
    spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE)
    space = spec.desired_serving.model.effective_embedding_space
    state = mirroring(spec, t0)
    other = step(state, replace(GOOD, reindexed_space="auto:000000000000"), spec, t0 + MINUTE)
    assert other.phase is Phase.PROGRESSING  # another space's index says nothing about this canary
    failing = Observation(canary_ready_replicas=1, success_rate=0.1, p99_latency_ms=1.0, reindexed_space=space)
    assert step(other, failing, spec, t0 + 2 * MINUTE).phase is Phase.PROGRESSING
    done = Observation(canary_ready_replicas=1, success_rate=1.0, p99_latency_ms=1.0, reindexed_space=space)
    promoted = step(other, done, spec, t0 + 2 * MINUTE)
    assert (promoted.phase, promoted.weights) == (Phase.PROMOTING, Weights(0, 100))
    assert f"re-index of embedding space {space} is complete" in promoted.message


def test_an_aborted_reindex_canary_cannot_be_promoted(
    spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE)
    state = mirroring(spec, t0)
    aborted = step(state, GOOD, spec, t0, Command("abort", state.canary_revision or ""))
    assert (aborted.phase, aborted.mirror_percent) == (Phase.ABORTED, 0)
    again = step(aborted, GOOD, spec, t0 + MINUTE, Command("promote", state.canary_revision or ""))
    assert (again.phase, again.weights) == (Phase.ABORTED, Weights(100, 0))


# --- render, analysis, status, CLI ------------------------------------------------------------------------------


def test_the_virtual_service_mirrors_pins_and_flips(
    spec_of: Callable[..., ModelDeploymentSpec], make_md: MakeManifest, t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE, {"traffic": {"canary": {"mirrorPercent": 25}}})
    state = mirroring(spec, t0)
    routes = virtual_service(spec, state, make_md)["spec"]["http"]
    assert [r["name"] for r in routes] == ["canary-pin", "weighted", "canary-pin-http", "weighted-http"]
    for (pin, weighted), port in zip((routes[:2], routes[2:]), (50051, 8080), strict=True):
        assert pin["route"][0]["destination"]["subset"] == "canary"
        assert {d["destination"]["subset"]: d["weight"] for d in weighted["route"]} == {"stable": 100, "canary": 0}
        host = "minilm.ml.svc.cluster.local"
        assert weighted["mirror"] == {"host": host, "subset": "canary", "port": {"number": port}}
        assert weighted["mirrorPercentage"] == {"value": 25.0}
    promoted = step(state, GOOD, spec, t0, Command("promote", state.canary_revision or ""))
    for flipped in virtual_service(spec, promoted, make_md)["spec"]["http"][1::2]:
        assert {d["destination"]["subset"]: d["weight"] for d in flipped["route"]} == {"stable": 0, "canary": 100}
        assert "mirror" not in flipped and "mirrorPercentage" not in flipped
    aborted = step(state, GOOD, spec, t0, Command("abort", state.canary_revision or ""))
    only = virtual_service(spec, aborted, make_md)["spec"]["http"]
    assert [r["name"] for r in only] == ["weighted", "weighted-http"] and all("mirror" not in r for r in only)


def test_a_weighted_canary_is_never_mirrored(make_md: MakeManifest, t0: datetime) -> None:
    spec = parse_model_deployment(make_md({"traffic": {"canary": {"model": {"storageUri": "pvc://m/v2"}}}})).spec
    state = step(step(initial_state(spec), None, spec, t0), Observation(canary_ready_replicas=1), spec, t0)
    assert (state.mode, state.mirror_percent, state.weights) == (RolloutMode.WEIGHTED, 0, Weights(90, 10))
    assert all("mirror" not in route for route in virtual_service(spec, state, make_md)["spec"]["http"])


def test_mirrored_analysis_selects_the_canary_workload_under_any_host() -> None:
    query = success_rate_query(canary_target("minilm", "ml", "1m", mirrored=True))
    assert 'destination_workload="minilm-canary"' in query and "destination_service_name" not in query
    assert 'destination_service_name="minilm"' in success_rate_query(canary_target("minilm", "ml", "1m"))


def _status(spec: ModelDeploymentSpec, state: RolloutState, t0: datetime) -> dict[str, Any]:
    return status_patch(
        state, spec, generation=1, stable_ready_replicas=2, canary_ready_replicas=1, grpc_endpoint="e:1", now=t0
    )


def test_status_shows_mode_spaces_and_mirror_and_round_trips(
    spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE)
    state = step(mirroring(spec, t0), GOOD, spec, t0 + MINUTE)
    patch = _status(spec, state, t0)
    canary = patch["canary"]
    assert (canary["mode"], canary["mirrorPercent"], canary["weight"], canary["steps"]) == ("Reindex", 10, 0, 1)
    assert canary["embeddingSpace"] == spec.desired_serving.model.effective_embedding_space
    assert patch["stable"]["embeddingSpace"] == spec.model.effective_embedding_space
    assert "waiting for re-index" in patch["message"]
    back = rollout_state(ModelDeploymentStatus.model_validate(patch), spec)
    assert back == state
    promoted = step(state, GOOD, spec, t0, Command("promote", state.canary_revision or ""))
    assert rollout_state(ModelDeploymentStatus.model_validate(_status(spec, promoted, t0)), spec) == promoted


def test_rollout_status_explains_the_mode(
    spec_of: Callable[..., ModelDeploymentSpec], make_md: MakeManifest, t0: datetime
) -> None:
    spec = spec_of(NEW_SPACE)
    state = mirroring(spec, t0)
    md = make_md(spec.wire()) | {"status": _status(spec, state, t0)}
    text = format_status(md, now=t0)
    assert "Mode:          Reindex: embedding space changes from auto:" in text
    assert "Mirror:        10% of live traffic mirrored to the canary" in text
    assert f"Spaces:        stable {spec.model.effective_embedding_space}, canary auto:" in text
    assert "Weights:       stable 100%, canary 0%" in text
    assert "waiting for re-index" in text
    assert command_for(md, "promote").action == "promote"
    aborted = step(state, GOOD, spec, t0, Command("abort", state.canary_revision or ""))
    md["status"] = _status(spec, aborted, t0)
    with pytest.raises(RolloutCommandError, match="aborted re-index canary has no replicas"):
        command_for(md, "promote")
