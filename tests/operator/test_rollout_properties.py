"""Properties of the rollout machine over arbitrary sequences of observations, commands and spec edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, initial_state, step
from bertmesh_operator.spec import ModelDeploymentSpec
from bertmesh_operator.states import Phase

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(policy: dict[str, Any], candidate: str) -> ModelDeploymentSpec:
    canary = {"model": {"storageUri": f"pvc://models/{candidate}"}, "interval": "1m", **policy}
    manifest = {
        "apiVersion": "serving.bertmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minilm"},
        "spec": {"model": {"storageUri": "pvc://models/v1"}, "traffic": {"canary": canary}},
    }
    return parse_model_deployment(manifest).spec


steps_policy = st.lists(st.integers(1, 100), min_size=1, max_size=6, unique=True).map(lambda xs: {"steps": sorted(xs)})
weight_policy = st.builds(
    lambda step, top: {"stepWeight": min(step, top), "maxWeight": top},
    st.integers(1, 100),
    st.integers(1, 100),
)
policies = st.tuples(st.one_of(steps_policy, weight_policy), st.integers(1, 5)).map(
    lambda p: p[0] | {"threshold": p[1]}
)
GOOD = Observation(canary_ready_replicas=1, stable_ready=True, success_rate=1.0, p99_latency_ms=5.0)
# Passing observations are weighted up so that sequences reach promotion, not only abort.
observations = st.one_of(
    st.just(GOOD),
    st.just(GOOD),
    st.just(GOOD),
    st.none(),
    st.builds(
        Observation,
        canary_ready_replicas=st.integers(0, 3),
        stable_ready=st.booleans(),
        success_rate=st.one_of(st.none(), st.floats(0, 1), st.just(float("nan"))),
        p99_latency_ms=st.one_of(st.none(), st.floats(0, 5000)),
        metrics_error=st.one_of(st.none(), st.just("Prometheus unreachable")),
    ),
)
ticks = st.integers(0, 90).map(lambda s: timedelta(seconds=s))


def _invariants(state: RolloutState, spec: ModelDeploymentSpec) -> None:
    weights = state.weights
    assert weights.stable + weights.canary == 100
    assert 0 <= weights.canary <= spec.traffic.policy.effective_max_weight
    assert state.failed_checks <= spec.traffic.policy.threshold
    if state.phase in (Phase.STABLE, Phase.ABORTED):
        assert (weights.stable, weights.canary) == (100, 0)
    if state.phase is Phase.STABLE:
        assert state.canary is None
    else:
        assert state.canary is not None


@settings(max_examples=300, deadline=None)
@given(policy=policies, events=st.lists(st.tuples(ticks, observations), max_size=40))
def test_observations_alone_never_promote_past_the_threshold(
    policy: dict[str, Any], events: list[tuple[timedelta, Observation | None]]
) -> None:
    spec = _spec(policy, "v2")
    schedule = spec.traffic.policy.schedule
    state, now = initial_state(spec), T0
    for tick, observation in events:
        now += tick
        before = state
        state = step(state, observation, spec, now)
        _invariants(state, spec)
        if before.phase is Phase.ABORTED:
            assert state.phase is Phase.ABORTED  # only a spec change or a command leaves Aborted
        if state.phase is Phase.PROMOTING and before.phase is Phase.PROGRESSING:
            # Promotion needs every step passed and fewer failures than the threshold.
            assert before.step == len(schedule)
            assert before.failed_checks < spec.traffic.policy.threshold
        if state.failed_checks >= spec.traffic.policy.threshold:
            assert state.phase is Phase.ABORTED


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    events=st.lists(
        st.tuples(
            ticks,
            observations,
            st.sampled_from(["v1", "v2", "v3"]),
            st.sampled_from([None, "promote", "abort", "promote-stale", "abort-stale"]),
        ),
        max_size=40,
    ),
)
def test_weights_stay_valid_under_any_edits_and_commands(
    policy: dict[str, Any], events: list[tuple[timedelta, Observation | None, str, str | None]]
) -> None:
    specs = {candidate: _spec(policy, candidate) for candidate in ("v1", "v2", "v3")}
    state, now = initial_state(specs["v2"]), T0
    for tick, observation, candidate, action in events:
        now += tick
        spec = specs[candidate]
        command = None
        if action is not None:
            verb, _, stale = action.partition("-")
            revision = "0000000000" if stale else (state.canary_revision or "")
            command = Command(verb, revision)  # type: ignore[arg-type]
        before = state
        state = step(state, observation, spec, now, command)
        _invariants(state, spec)
        aimed = command is not None and state.canary_revision == before.canary_revision == command.revision
        if aimed and command is not None and command.action == "abort" and before.phase is Phase.PROGRESSING:
            assert state.phase is Phase.ABORTED
        if state.phase is Phase.ABORTED:
            assert state.weights.canary == 0
        # Whatever happens, the tracks only ever serve the original model or a candidate of the spec.
        served = {s.desired_serving.revision for s in specs.values()} | {specs["v1"].base_serving.revision}
        assert state.stable_revision in served
