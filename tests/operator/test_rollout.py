"""The rollout state machine: every transition, one test each, with a fixed clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, Weights, follow_spec, initial_state, step
from bertmesh_operator.spec import ModelDeploymentSpec
from bertmesh_operator.states import Phase

MakeManifest = Callable[..., dict[str, Any]]
GOOD = Observation(canary_ready_replicas=1, success_rate=0.999, p99_latency_ms=20.0)
MINUTE = timedelta(minutes=1)
CANARY = {"model": {"storageUri": "pvc://models/v2"}, "steps": [10, 50], "threshold": 2}


@pytest.fixture
def spec_of(make_md: MakeManifest) -> Callable[..., ModelDeploymentSpec]:
    def build(fragment: dict[str, Any] | None = None) -> ModelDeploymentSpec:
        return parse_model_deployment(make_md(fragment)).spec

    return build


@pytest.fixture
def canary_spec(spec_of: Callable[..., ModelDeploymentSpec]) -> ModelDeploymentSpec:
    return spec_of({"traffic": {"canary": CANARY}})


def started(spec: ModelDeploymentSpec, t0: datetime) -> RolloutState:
    """A rollout whose canary has just become ready and receives the first step's weight."""
    state = step(initial_state(spec), None, spec, t0)
    state = step(state, Observation(canary_ready_replicas=1), spec, t0)
    assert (state.phase, state.step, state.weights) == (Phase.PROGRESSING, 1, Weights(90, 10))
    return state


def test_no_change_stays_stable(spec_of: Callable[..., ModelDeploymentSpec], t0: datetime) -> None:
    spec = spec_of()
    state = step(initial_state(spec), GOOD, spec, t0)
    assert state.phase is Phase.STABLE
    assert state.weights == Weights(100, 0)
    assert state.canary is None


def test_a_canary_override_starts_a_canary_at_zero_until_ready(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = step(initial_state(canary_spec), Observation(), canary_spec, t0)
    assert (state.phase, state.step, state.weights) == (Phase.PROGRESSING, 0, Weights(100, 0))
    assert state.canary == canary_spec.desired_serving
    assert state.stable == canary_spec.base_serving
    assert state.reason == "CanaryStarted"
    state = step(state, Observation(canary_ready_replicas=0), canary_spec, t0 + MINUTE)
    assert (state.step, state.weights) == (0, Weights(100, 0))
    state = step(state, Observation(canary_ready_replicas=1), canary_spec, t0 + 2 * MINUTE)
    assert (state.step, state.weights, state.reason) == (1, Weights(90, 10), "CanaryReady")


def test_a_canary_never_ready_aborts_at_the_progress_deadline(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = step(initial_state(canary_spec), None, canary_spec, t0)
    state = step(state, None, canary_spec, t0 + 9 * MINUTE)
    assert state.phase is Phase.PROGRESSING
    state = step(state, None, canary_spec, t0 + 10 * MINUTE)
    assert (state.phase, state.reason, state.weights) == (Phase.ABORTED, "CanaryAborted", Weights(100, 0))
    assert "no ready replica within 10m" in state.message


def test_no_check_before_the_interval(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = started(canary_spec, t0)
    bad = Observation(canary_ready_replicas=1, success_rate=0.5, p99_latency_ms=20.0)
    after = step(state, bad, canary_spec, t0 + timedelta(seconds=59))
    assert after == state


def test_a_passing_check_advances_one_step(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = started(canary_spec, t0)
    state = step(state, GOOD, canary_spec, t0 + MINUTE)
    assert (state.phase, state.step, state.weights, state.reason) == (
        Phase.PROGRESSING,
        2,
        Weights(50, 50),
        "CheckPassed",
    )
    assert state.step_started_at == t0 + MINUTE


def test_after_the_last_step_stable_takes_the_candidate(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = started(canary_spec, t0)
    state = step(state, GOOD, canary_spec, t0 + MINUTE)
    state = step(state, GOOD, canary_spec, t0 + 2 * MINUTE)
    assert (state.phase, state.reason, state.weights) == (Phase.PROMOTING, "Promoting", Weights(50, 50))
    assert state.stable == canary_spec.desired_serving
    # The split holds until the stable Deployment has rolled out the new revision.
    state = step(state, GOOD, canary_spec, t0 + 3 * MINUTE)
    assert (state.phase, state.weights) == (Phase.PROMOTING, Weights(50, 50))
    state = step(state, Observation(stable_ready=True), canary_spec, t0 + 4 * MINUTE)
    assert (state.phase, state.reason, state.weights) == (Phase.STABLE, "Promoted", Weights(100, 0))
    assert state.canary is None
    assert state.stable_revision == canary_spec.desired_serving.revision


@pytest.mark.parametrize(
    ("observation", "why"),
    [
        (None, "no ready replica"),
        (Observation(canary_ready_replicas=1), "no metrics"),
        (Observation(canary_ready_replicas=1, success_rate=float("nan"), p99_latency_ms=5.0), "no metrics"),
        (Observation(canary_ready_replicas=1, success_rate=1.0), "no metrics"),
        (Observation(canary_ready_replicas=1, success_rate=0.98, p99_latency_ms=5.0), "success rate 0.9800"),
        (Observation(canary_ready_replicas=1, success_rate=1.0, p99_latency_ms=1500.0), "p99 latency 1500ms"),
        (Observation(canary_ready_replicas=0, success_rate=1.0, p99_latency_ms=5.0), "no ready replica"),
    ],
)
def test_failed_or_missing_checks_count_then_abort(
    canary_spec: ModelDeploymentSpec, t0: datetime, observation: Observation | None, why: str
) -> None:
    state = started(canary_spec, t0)
    state = step(state, observation, canary_spec, t0 + MINUTE)
    assert (state.phase, state.failed_checks, state.step, state.weights) == (
        Phase.PROGRESSING,
        1,
        1,
        Weights(90, 10),
    )
    assert state.reason == "CheckFailed"
    assert why in state.message
    state = step(state, observation, canary_spec, t0 + 2 * MINUTE)
    assert (state.phase, state.failed_checks, state.reason, state.weights) == (
        Phase.ABORTED,
        2,
        "CanaryAborted",
        Weights(100, 0),
    )
    assert state.canary_scaled_down


def test_failed_checks_accumulate_over_the_rollout(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = started(canary_spec, t0)
    state = step(state, None, canary_spec, t0 + MINUTE)
    state = step(state, GOOD, canary_spec, t0 + 2 * MINUTE)
    assert (state.phase, state.step, state.failed_checks) == (Phase.PROGRESSING, 2, 1)
    state = step(state, None, canary_spec, t0 + 3 * MINUTE)
    assert (state.phase, state.failed_checks) == (Phase.ABORTED, 2)


def test_an_aborted_canary_stays_aborted_until_the_spec_changes(
    canary_spec: ModelDeploymentSpec, spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    state = started(canary_spec, t0)
    state = step(state, None, canary_spec, t0, Command("abort", state.canary_revision or ""))
    assert state.phase is Phase.ABORTED
    for minute in range(1, 30, 7):
        state = step(state, GOOD, canary_spec, t0 + minute * MINUTE)
        assert (state.phase, state.weights) == (Phase.ABORTED, Weights(100, 0))
    third = spec_of({"traffic": {"canary": CANARY | {"model": {"storageUri": "pvc://models/v3"}}}})
    state = step(state, GOOD, third, t0 + 40 * MINUTE)
    assert (state.phase, state.step, state.failed_checks) == (Phase.PROGRESSING, 0, 0)
    assert state.canary == third.desired_serving


def test_reverting_the_spec_cancels_the_rollout(
    canary_spec: ModelDeploymentSpec, spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    state = started(canary_spec, t0)
    state = step(state, GOOD, spec_of(), t0 + MINUTE)
    assert (state.phase, state.reason, state.weights) == (Phase.STABLE, "RolloutCancelled", Weights(100, 0))
    assert state.canary is None


def test_an_observation_of_a_replaced_canary_is_ignored(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    # The canary's pods were ready when measured, but the spec change replaces them in the same reconcile.
    state = step(initial_state(canary_spec), GOOD, canary_spec, t0)
    assert (state.step, state.weights) == (0, Weights(100, 0))


def test_a_new_change_during_a_rollout_restarts_it(
    canary_spec: ModelDeploymentSpec, spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    state = started(canary_spec, t0)
    state = step(state, None, canary_spec, t0 + MINUTE)
    assert state.failed_checks == 1
    third = spec_of({"traffic": {"canary": CANARY | {"runtime": {"maxBatchTokens": 8192}}}})
    state = step(state, GOOD, third, t0 + 2 * MINUTE)
    assert (state.phase, state.step, state.failed_checks) == (Phase.PROGRESSING, 0, 0)
    assert state.weights == Weights(100, 0)
    assert state.canary == third.desired_serving
    assert state.stable == canary_spec.base_serving


def test_a_change_while_promoting_keeps_the_promoted_stable(
    canary_spec: ModelDeploymentSpec, spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    state = started(canary_spec, t0)
    state = step(state, None, canary_spec, t0, Command("promote", state.canary_revision or ""))
    assert state.phase is Phase.PROMOTING
    third = spec_of({"traffic": {"canary": CANARY | {"model": {"storageUri": "pvc://models/v3"}}}})
    state = step(state, GOOD, third, t0 + MINUTE)
    assert state.phase is Phase.PROGRESSING
    assert state.stable == canary_spec.desired_serving
    assert state.canary == third.desired_serving


def test_manual_promote_and_abort(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = started(canary_spec, t0)
    revision = state.canary_revision or ""
    stale = step(state, None, canary_spec, t0, Command("promote", "0000000000"))
    assert stale.phase is Phase.PROGRESSING
    promoted = step(state, None, canary_spec, t0, Command("promote", revision))
    assert (promoted.phase, promoted.weights) == (Phase.PROMOTING, Weights(90, 10))
    assert "promote command" in promoted.message
    # Too late to abort once stable has taken the candidate.
    still = step(promoted, None, canary_spec, t0, Command("abort", revision))
    assert still.phase is Phase.PROMOTING
    aborted = step(state, None, canary_spec, t0, Command("abort", revision))
    assert (aborted.phase, aborted.reason, aborted.weights) == (Phase.ABORTED, "CanaryAborted", Weights(100, 0))
    # An operator may overrule the analysis: promote an aborted canary.
    overruled = step(aborted, None, canary_spec, t0, Command("promote", revision))
    assert overruled.phase is Phase.PROMOTING
    assert overruled.stable == canary_spec.desired_serving


def test_commands_without_a_canary_do_nothing(spec_of: Callable[..., ModelDeploymentSpec], t0: datetime) -> None:
    spec = spec_of()
    state = initial_state(spec)
    for command in (Command("promote", state.stable_revision), Command("abort", state.stable_revision)):
        after = step(state, None, spec, t0, command)
        assert (after.phase, after.weights) == (Phase.STABLE, Weights(100, 0))


def test_editing_the_policy_mid_rollout_moves_the_weight(
    canary_spec: ModelDeploymentSpec, spec_of: Callable[..., ModelDeploymentSpec], t0: datetime
) -> None:
    state = started(canary_spec, t0)
    state = step(state, GOOD, canary_spec, t0 + MINUTE)
    assert state.canary_weight == 50
    smaller = spec_of({"traffic": {"canary": CANARY | {"steps": [5]}}})
    assert smaller.desired_serving == canary_spec.desired_serving
    state = step(state, None, smaller, t0 + MINUTE)
    assert state.weights == Weights(95, 5)


def test_follow_spec_is_idempotent(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    once = follow_spec(initial_state(canary_spec), canary_spec, t0)
    assert follow_spec(once, canary_spec, t0 + MINUTE) == once


def test_weights_refuse_a_split_not_summing_to_100() -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        Weights(60, 50)


@pytest.mark.parametrize(
    ("value", "command"),
    [
        ("promote:0123456789", Command("promote", "0123456789")),
        (" abort:abc ", Command("abort", "abc")),
        ("abort:", None),
        ("restart:abc", None),
        ("", None),
        (None, None),
    ],
)
def test_command_annotation(value: str | None, command: Command | None) -> None:
    assert Command.parse(value) == command
    if command is not None:
        assert Command.parse(command.annotation()) == command


UNREACHABLE = Observation(canary_ready_replicas=1, metrics_error="Prometheus at http://p:9090 is unreachable")


def test_unreachable_metrics_defer_a_due_check_for_one_interval(canary_spec: ModelDeploymentSpec, t0: datetime) -> None:
    state = started(canary_spec, t0)
    state = step(state, UNREACHABLE, canary_spec, t0 + MINUTE)
    assert (state.phase, state.step, state.failed_checks, state.weights) == (Phase.PROGRESSING, 1, 0, Weights(90, 10))
    assert state.reason == "AnalysisDeferred"
    assert "unreachable" in state.message
    assert state.step_started_at == t0  # still due: the next reconcile checks again
    # Prometheus is back before the second interval ends: the check runs as usual.
    state = step(state, GOOD, canary_spec, t0 + MINUTE + MINUTE / 2)
    assert (state.step, state.failed_checks, state.weights) == (2, 0, Weights(50, 50))


def test_metrics_unreachable_for_two_intervals_count_as_a_failed_check(
    canary_spec: ModelDeploymentSpec, t0: datetime
) -> None:
    state = started(canary_spec, t0)
    state = step(state, UNREACHABLE, canary_spec, t0 + MINUTE)
    state = step(state, UNREACHABLE, canary_spec, t0 + 2 * MINUTE)
    assert (state.reason, state.failed_checks, state.weights) == ("CheckFailed", 1, Weights(90, 10))
    assert "unreachable" in state.message


def test_unreachable_metrics_never_defer_a_canary_without_ready_replicas(
    canary_spec: ModelDeploymentSpec, t0: datetime
) -> None:
    state = started(canary_spec, t0)
    observation = Observation(canary_ready_replicas=0, metrics_error="down")
    state = step(state, observation, canary_spec, t0 + MINUTE)
    assert (state.reason, state.failed_checks) == ("CheckFailed", 1)
    assert "no ready replica" in state.message
