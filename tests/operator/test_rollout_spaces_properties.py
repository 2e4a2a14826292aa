"""Property: over any embedder specs, edits, observations and commands, no rendered VirtualService ever sends
live traffic (non-zero weights) to two embedding spaces at once.

The stable subset is modelled honestly: while the stable Deployment rolls to a new revision its pods serve the
old and the new model side by side, until the rollout machine has seen it rolled out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bertmesh_operator.errors import InvalidSpecError
from bertmesh_operator.render import render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, RolloutState, initial_state, step
from bertmesh_operator.spec import ModelDeploymentSpec, ServingSpec
from bertmesh_operator.states import Phase

T0 = datetime(2026, 1, 1, tzinfo=UTC)
URIS = ("pvc://models/minilm", "pvc://models/bge")

stable_models = st.fixed_dictionaries(
    {"storageUri": st.sampled_from(URIS), "task": st.just("embedding")},
    optional={"revision": st.sampled_from(["v1", "v2"]), "embeddingSpace": st.sampled_from(["s1", "s2"])},
)
model_overrides = st.fixed_dictionaries(
    {},
    optional={
        "storageUri": st.sampled_from(URIS),
        "revision": st.sampled_from(["v1", "v2", "v3"]),
        "embeddingSpace": st.sampled_from(["s1", "s2"]),
    },
).filter(bool)
runtime_overrides = st.sampled_from([{"precision": "int8"}, {"image": "ghcr.io/bertmesh/model-server:0.2.0"}])
policies: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
    [{}, {"steps": [20, 60]}, {"stepWeight": 25}, {"mirrorPercent": 30}]
)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """An embedder's spec, with or without a canary of a new model and/or runtime, under some policy."""
    spec: dict[str, Any] = {"model": draw(stable_models)}
    canary: dict[str, Any] = draw(policies) | {"interval": "1m", "threshold": draw(st.integers(1, 3))}
    model, runtime = draw(st.none() | model_overrides), draw(st.none() | runtime_overrides)
    if model is not None:
        canary["model"] = model
    if runtime is not None:
        canary["runtime"] = runtime
    if model is not None or runtime is not None:
        spec["traffic"] = {"canary": canary}
    return spec


GOOD = Observation(canary_ready_replicas=1, stable_ready=True, success_rate=1.0, p99_latency_ms=5.0)
observations = st.one_of(
    st.just(GOOD),
    st.just(GOOD),
    st.none(),
    st.builds(
        Observation,
        canary_ready_replicas=st.integers(0, 2),
        stable_ready=st.booleans(),
        success_rate=st.one_of(st.none(), st.floats(0, 1)),
        p99_latency_ms=st.just(5.0),
    ),
)


def _manifest(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.bertmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minilm", "namespace": "ml"},
        "spec": spec,
    }


def _parsed(spec: dict[str, Any]) -> ModelDeploymentSpec | None:
    try:
        return parse_model_deployment(_manifest(spec)).spec
    except InvalidSpecError:
        return None  # the API server refuses it: the operator never sees it


def _space(serving: ServingSpec) -> str:
    return serving.model.effective_embedding_space


def _live_spaces(vs: dict[str, Any], stable_pods: set[str], canary: ServingSpec | None) -> list[set[str]]:
    """Per route, the spaces of the destinations it gives a non-zero weight."""
    found = []
    for route in vs["spec"]["http"]:
        spaces: set[str] = set()
        for destination in route["route"]:
            if destination["weight"] == 0:
                continue
            subset = destination["destination"]["subset"]
            assert subset == "stable" or canary is not None
            spaces |= stable_pods if subset == "stable" else {_space(canary)}  # type: ignore[arg-type]
        found.append(spaces)
    return found


@settings(max_examples=300, deadline=None)
@given(
    first=specs(),
    edits=st.lists(
        st.tuples(
            st.integers(0, 90).map(lambda s: timedelta(seconds=s)),
            observations,
            st.none() | specs(),
            st.sampled_from([None, None, "promote", "abort"]),
        ),
        max_size=30,
    ),
)
def test_no_virtual_service_routes_two_embedding_spaces_at_once(
    first: dict[str, Any], edits: list[tuple[timedelta, Observation | None, dict[str, Any] | None, str | None]]
) -> None:
    spec_dict = first
    spec = _parsed(first)
    if spec is None:
        spec_dict, spec = {"model": first["model"]}, _parsed({"model": first["model"]})
    assert spec is not None
    state, now = initial_state(spec), T0
    stable_pods = {_space(state.stable)}
    for tick, observation, edit, action in edits:
        now += tick
        edited = _parsed(edit) if edit is not None else None
        if edited is not None and edit is not None:
            spec, spec_dict = edited, edit
        command = Command(action, state.canary_revision or "") if action else None  # type: ignore[arg-type]
        before: RolloutState = state
        state = step(state, observation, spec, now, command)
        if state.stable != before.stable:
            stable_pods.add(_space(state.stable))  # the stable Deployment starts rolling
        if before.phase is Phase.PROMOTING and state.phase is Phase.STABLE:
            stable_pods = {_space(state.stable)}  # ...and has rolled out
        vs = next(o for o in render(_manifest(spec_dict), state=state) if o["kind"] == "VirtualService")
        for spaces in _live_spaces(vs, stable_pods, state.canary):
            assert len(spaces) <= 1, (spaces, state.phase, state.mode, state.weights)
        if state.mirror_percent > 0:
            assert state.weights.canary == 0  # a mirrored canary never also serves live calls by weight
