"""The canary rollout as a pure state machine: `step(state, observation, spec, now) -> state`.

A change to what the spec serves (model or runtime, canary overrides included) starts a canary at weight 0;
once a canary replica is ready it gets the first step's weight. Every `interval` the operator's observation of
the canary (gRPC success rate and p99 latency from Istio's metrics) is checked against the analysis
thresholds: a pass moves to the next step, a failure — missing data included — counts against `threshold`,
and reaching it aborts (100% stable, canary scaled to zero, Degraded). After the last step passes, the stable
track takes the candidate ("Promoting": traffic stays split while the stable Deployment rolls) and, once it
is rolled out, the canary is removed. A new change during a rollout restarts it from the first step. The
traffic split to route is the new state's `weights`; phases and reasons are the types of `states`.

A rollout that changes an embedder's vector space runs in re-index mode (`rollout_mode`): once the canary is
ready it gets no weight but `mirror_percent` of live traffic mirrored, is checked every interval like a step,
and waits there (the re-index job writes the new index through the header pin) until `bertmesh rollout
promote`, or until a check passes after the job declared the canary's space re-indexed (the
`REINDEXED_ANNOTATION` naming that space). Promotion then routes 100% to the canary at once while the stable
Deployment rolls, so the two spaces never serve side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from bertmesh_operator.rollout_mode import decide_mode
from bertmesh_operator.spec import AnalysisSpec, CanarySpec, ModelDeploymentSpec, ServingSpec
from bertmesh_operator.states import Action, Phase, Reason, RolloutMode, command_applies


@dataclass(frozen=True)
class Weights:
    """The traffic split, in percent; always sums to 100."""

    stable: int
    canary: int

    def __post_init__(self) -> None:
        if self.stable + self.canary != 100 or not 0 <= self.canary <= 100:
            raise ValueError(f"weights must be within 0..100 and sum to 100, got {self}")


@dataclass(frozen=True)
class Observation:
    """What the operator measured at one reconcile; None means no data (which fails a due check)."""

    canary_ready_replicas: int = 0
    # The stable Deployment has finished rolling out the state's stable revision (ends Promoting).
    stable_ready: bool = False
    success_rate: float | None = None
    p99_latency_ms: float | None = None
    # Why the metrics could not be asked for (Prometheus unreachable); None when they were. A due check waits
    # for up to one more interval for the metrics source to come back, then counts as failed like no data.
    metrics_error: str | None = None
    # The embedding space a re-index job declared complete (REINDEXED_ANNOTATION); promotes a re-index rollout.
    reindexed_space: str | None = None


# `bertmesh rollout promote|abort` writes "<action>:<canary revision>" here; the operator reads it.
COMMAND_ANNOTATION = "serving.bertmesh.io/rollout-command"
# A re-index job sets this to the canary's embedding space when the new index is complete; the next passing
# mirror check then promotes the canary.
REINDEXED_ANNOTATION = "serving.bertmesh.io/reindexed-space"


@dataclass(frozen=True)
class Command:
    """A manual `bertmesh rollout promote|abort`, bound to the canary revision it was issued for."""

    action: Action
    revision: str

    def annotation(self) -> str:
        """The value of the rollout-command annotation carrying this command."""
        return f"{self.action}:{self.revision}"

    @staticmethod
    def parse(value: str | None) -> Command | None:
        """Read a rollout-command annotation value; None when absent or malformed (it is then ignored)."""
        action, _, revision = (value or "").strip().partition(":")
        if action == "promote" and revision:
            return Command("promote", revision)
        if action == "abort" and revision:
            return Command("abort", revision)
        return None


@dataclass(frozen=True)
class RolloutState:
    """Everything the rollout remembers between reconciles (persisted in the ModelDeployment's status)."""

    stable: ServingSpec
    phase: Phase = Phase.STABLE
    canary: ServingSpec | None = None
    step: int = 0  # 1-based step of the schedule; 0 while the canary gets no traffic yet
    canary_weight: int = 0
    failed_checks: int = 0
    step_started_at: datetime | None = None
    reason: Reason = Reason.STABLE
    message: str = ""
    mode: RolloutMode = RolloutMode.WEIGHTED
    mode_reason: str = ""
    mirror_percent: int = 0  # share of live traffic mirrored to the canary (re-index mode only)

    @property
    def stable_revision(self) -> str:
        """The revision the stable track serves."""
        return self.stable.revision

    @property
    def canary_revision(self) -> str | None:
        """The revision the canary track serves, if there is one."""
        return None if self.canary is None else self.canary.revision

    @property
    def weights(self) -> Weights:
        """The traffic split this state routes."""
        return Weights(stable=100 - self.canary_weight, canary=self.canary_weight)

    @property
    def canary_scaled_down(self) -> bool:
        """Whether the canary Deployment exists but must run no replicas."""
        return self.phase is Phase.ABORTED


def initial_state(spec: ModelDeploymentSpec) -> RolloutState:
    """The state before the first reconcile: stable serves model and runtime as written.

    Canary overrides present at creation therefore go out as a canary, not straight to stable.
    """
    return RolloutState(stable=spec.base_serving, message="no rollout yet")


def follow_spec(state: RolloutState, spec: ModelDeploymentSpec, now: datetime) -> RolloutState:
    """Start, restart or cancel a rollout when what the spec serves differs from what the tracks serve."""
    desired = spec.desired_serving
    if state.phase is Phase.PROMOTING and state.mode is RolloutMode.REINDEX:
        # Stable's pods are switching spaces while the canary takes 100%: a new rollout now would route to
        # both spaces at once, so it starts once the promotion is over.
        return state
    if desired.revision == state.stable_revision:
        if state.phase in (Phase.PROGRESSING, Phase.ABORTED):
            return _to_stable(
                state, Reason.ROLLOUT_CANCELLED, f"the spec serves the stable revision {desired.revision}"
            )
        return state
    if state.phase is not Phase.STABLE and desired.revision == state.canary_revision:
        return state
    decision = decide_mode(state.stable, desired, spec.traffic.policy)
    how = " by re-index (mirrored traffic, then 100% at once)" if decision.mode is RolloutMode.REINDEX else ""
    return RolloutState(
        stable=state.stable,
        phase=Phase.PROGRESSING,
        canary=desired,
        step_started_at=now,
        reason=Reason.CANARY_STARTED,
        message=f"rolling out {desired.revision} over {state.stable_revision}{how}; waiting for a ready canary",
        mode=decision.mode,
        mode_reason=decision.reason,
    )


def step(
    state: RolloutState,
    observation: Observation | None,
    spec: ModelDeploymentSpec,
    now: datetime,
    command: Command | None = None,
) -> RolloutState:
    """Advance the rollout by one reconcile and return the new state (whose `weights` are the split to route)."""
    policy = spec.traffic.policy
    before = (state.stable_revision, state.canary_revision)
    state = follow_spec(state, spec, now)
    state = _apply_command(state, command, now)
    # An observation describes the tracks it was measured on: once either track changed revision in this
    # call, it says nothing about the new one (a ready canary of the previous candidate is not ready now).
    if observation is None or (state.stable_revision, state.canary_revision) != before:
        observation = Observation()
    state = _advance(state, observation, policy, now)
    return replace(state, canary_weight=_weight(state, policy), mirror_percent=_mirror(state, policy))


def _apply_command(state: RolloutState, command: Command | None, now: datetime) -> RolloutState:
    # A command names the canary revision it was meant for, so a stale one never hits a later rollout.
    if command is None or command.revision != state.canary_revision or not command_applies(command.action, state.phase):
        return state
    if not command_applies_to_mode(command.action, state.phase, state.mode):
        return state
    if command.action == "promote":
        return _promote(state, now, "promoted by a rollout promote command")
    return _abort(state, now, "aborted by a rollout abort command")


def _advance(state: RolloutState, obs: Observation, policy: CanarySpec, now: datetime) -> RolloutState:
    if state.phase is Phase.PROMOTING:
        if obs.stable_ready:
            return _to_stable(state, Reason.PROMOTED, f"stable serves {state.stable_revision}")
        return state
    if state.phase is not Phase.PROGRESSING:
        return state
    elapsed = (now - (state.step_started_at or now)).total_seconds()
    if state.step == 0:
        if obs.canary_ready_replicas > 0:
            message = f"step 1/{len(policy.schedule)}: canary at {policy.schedule[0]}%"
            if state.mode is RolloutMode.REINDEX:
                message = f"re-index: canary ready, {policy.mirror_percent}% of live traffic mirrored to it; {_WAITING}"
            return replace(state, step=1, step_started_at=now, reason=Reason.CANARY_READY, message=message)
        if elapsed >= policy.progress_deadline_seconds:
            return _abort(state, now, f"the canary had no ready replica within {policy.progress_deadline}")
        return state
    if elapsed < policy.interval_seconds:
        return state
    if obs.metrics_error is not None and obs.canary_ready_replicas > 0 and elapsed < 2 * policy.interval_seconds:
        # A restarting Prometheus should not cost the canary a check; a dead one still does, one interval late.
        return replace(
            state,
            reason=Reason.ANALYSIS_DEFERRED,
            message=f"{_stage(state, policy, state.step)}: check deferred, metrics unavailable: {obs.metrics_error}",
        )
    failure = check(obs, policy.analysis)
    if failure is None and state.mode is RolloutMode.REINDEX:
        return _mirror_check_passed(state, obs, now)
    if failure is None:
        if state.step >= len(policy.schedule):
            return _promote(state, now, f"all {len(policy.schedule)} steps passed their checks")
        nxt = state.step + 1
        return replace(
            state,
            step=nxt,
            step_started_at=now,
            reason=Reason.CHECK_PASSED,
            message=f"step {nxt}/{len(policy.schedule)}: canary at {policy.schedule[nxt - 1]}%",
        )
    failed = state.failed_checks + 1
    if failed >= policy.threshold:
        return _abort(replace(state, failed_checks=failed), now, f"{failed} failed checks, last: {failure}")
    return replace(
        state,
        failed_checks=failed,
        step_started_at=now,
        reason=Reason.CHECK_FAILED,
        message=f"check failed ({failed}/{policy.threshold}): {failure}",
    )


_WAITING = (
    f"waiting for re-index (bertmesh rollout promote, or annotate {REINDEXED_ANNOTATION}=<canary space> "
    "when the new index is complete)"
)


def command_applies_to_mode(action: Action, phase: Phase, mode: RolloutMode) -> bool:
    """Whether a command that applies in `phase` also applies to a rollout of `mode`.

    An aborted re-index canary has no replicas: promoting it would send 100% of traffic to nothing.
    """
    return not (action == "promote" and phase is Phase.ABORTED and mode is RolloutMode.REINDEX)


def _stage(state: RolloutState, policy: CanarySpec, step: int) -> str:
    if state.mode is RolloutMode.REINDEX:
        return "re-index"
    return f"step {step}/{len(policy.schedule)}"


def _mirror_check_passed(state: RolloutState, obs: Observation, now: datetime) -> RolloutState:
    assert state.canary is not None  # only called while a canary exists
    space = state.canary.model.effective_embedding_space
    if obs.reindexed_space == space:
        return _promote(state, now, f"the re-index of embedding space {space} is complete and the mirror check passed")
    return replace(
        state,
        step_started_at=now,
        reason=Reason.WAITING_FOR_REINDEX,
        message=f"re-index: mirror check passed; {_WAITING}",
    )


def check(obs: Observation, analysis: AnalysisSpec) -> str | None:
    """Return why the observation fails the analysis thresholds, or None when it passes."""
    if obs.canary_ready_replicas <= 0:
        return "the canary has no ready replica"
    rate, p99 = obs.success_rate, obs.p99_latency_ms
    if obs.metrics_error is not None:
        return f"no metrics for the canary: {obs.metrics_error}"
    if rate is None or math.isnan(rate) or p99 is None or math.isnan(p99):
        return "no metrics for the canary (no traffic, or Prometheus unreachable)"
    if rate < analysis.min_success_rate:
        return f"success rate {rate:.4f} < {analysis.min_success_rate}"
    if p99 > analysis.max_p99_latency_ms:
        return f"p99 latency {p99:.0f}ms > {analysis.max_p99_latency_ms}ms"
    return None


def _weight(state: RolloutState, policy: CanarySpec) -> int:
    if state.mode is RolloutMode.REINDEX:
        # All or nothing: stable's pods change space while promoting, so the canary then takes everything.
        return 100 if state.phase is Phase.PROMOTING else 0
    # Recomputed from the policy in force, so editing the policy mid-rollout never leaves a stale weight.
    if state.phase is Phase.PROGRESSING and state.step > 0:
        schedule = policy.schedule
        return schedule[min(state.step, len(schedule)) - 1]
    if state.phase is Phase.PROMOTING:
        return min(state.canary_weight, policy.effective_max_weight)
    return 0


def _mirror(state: RolloutState, policy: CanarySpec) -> int:
    if state.mode is RolloutMode.REINDEX and state.phase is Phase.PROGRESSING and state.step > 0:
        return policy.mirror_percent
    return 0


def _promote(state: RolloutState, now: datetime, why: str) -> RolloutState:
    assert state.canary is not None  # only called while a canary exists
    return replace(
        state,
        phase=Phase.PROMOTING,
        stable=state.canary,
        step_started_at=now,
        reason=Reason.PROMOTING,
        message=f"{why}; stable is rolling to {state.canary.revision}",
    )


def _abort(state: RolloutState, now: datetime, why: str) -> RolloutState:
    return replace(
        state,
        phase=Phase.ABORTED,
        canary_weight=0,
        step_started_at=now,
        reason=Reason.CANARY_ABORTED,
        message=f"canary {state.canary_revision} aborted: {why}; 100% of traffic is on stable {state.stable_revision}",
    )


def _to_stable(state: RolloutState, reason: Reason, message: str) -> RolloutState:
    return RolloutState(stable=state.stable, reason=reason, message=message)
