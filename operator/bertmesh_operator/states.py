"""The rollout's vocabulary as types: its phases, the reasons it gives, and which manual command applies when.

The state machine (`rollout`), the status it is persisted in (`status`, `status_model`), the handlers that
time reconciles by phase and `bertmesh rollout` all speak in these, so a phase or a reason is spelled once.
Pure: no imports beyond the standard library.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# What `bertmesh rollout promote|abort` asks for (the rollout-command annotation's first part).
Action = Literal["promote", "abort"]


class Phase(StrEnum):
    """Where a ModelDeployment is in its rollout."""

    STABLE = "Stable"  # one track, 100% of traffic
    PROGRESSING = "Progressing"  # a canary exists and is being analysed
    PROMOTING = "Promoting"  # stable is rolling to the candidate; the canary still serves its share
    ABORTED = "Aborted"  # the candidate failed; 100% stable, canary at zero replicas, until the spec changes


class RolloutMode(StrEnum):
    """How a rollout moves traffic to its canary."""

    WEIGHTED = "Weighted"  # step by step through the schedule's weights
    # Stable keeps 100% while a share is mirrored to the canary; promotion moves 100% at once. For embedders
    # changing vector space, where a weighted split would mix two spaces' vectors in one index.
    REINDEX = "Reindex"


def phase_of(value: object) -> Phase | None:
    """The phase a status' `phase` field names; None when it names none (not reconciled yet)."""
    return Phase(value) if isinstance(value, str) and value in Phase.__members__.values() else None


# The phases in which a rollout moves without a spec change: the handlers reconcile these more often.
IN_FLIGHT = frozenset({Phase.PROGRESSING, Phase.PROMOTING})


class Reason(StrEnum):
    """Why a condition is as it is; also the reason of the Event posted for a rollout transition."""

    # The rollout's transitions (the Progressing or Degraded condition's reason while in that phase).
    STABLE = "Stable"
    CANARY_STARTED = "CanaryStarted"
    CANARY_READY = "CanaryReady"
    CHECK_PASSED = "CheckPassed"
    CHECK_FAILED = "CheckFailed"
    WAITING_FOR_REINDEX = "WaitingForReindex"
    ANALYSIS_DEFERRED = "AnalysisDeferred"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    CANARY_ABORTED = "CanaryAborted"
    ROLLOUT_CANCELLED = "RolloutCancelled"
    # A generation the operator cannot act on (Degraded).
    INVALID_SPEC = "InvalidSpec"
    APPLY_FAILED = "ApplyFailed"
    # The conditions' reasons when nothing is under way.
    SERVING = "Serving"
    NO_READY_REPLICAS = "NoReadyReplicas"
    NO_ROLLOUT = "NoRollout"
    AS_EXPECTED = "AsExpected"
    # The Autoscaling condition's reasons.
    AUTOSCALED = "Autoscaled"
    AUTOSCALER_MISSING = "AutoscalerMissing"  # KEDA's ScaledObject kind is not served: no autoscaler applied


# The reason a phase is entered with: what a status that lost its condition is read back as.
ENTERED_WITH = {
    Phase.STABLE: Reason.STABLE,
    Phase.PROGRESSING: Reason.CANARY_STARTED,
    Phase.PROMOTING: Reason.PROMOTING,
    Phase.ABORTED: Reason.CANARY_ABORTED,
}

# The phases in which each manual command changes something.
_APPLIES: dict[Action, frozenset[Phase]] = {
    "promote": frozenset({Phase.PROGRESSING, Phase.ABORTED}),
    "abort": frozenset({Phase.PROGRESSING}),
}


def command_applies(command: Action, phase: Phase) -> bool:
    """Whether `bertmesh rollout <command>` does something to a rollout in `phase` (else it is ignored)."""
    return phase in _APPLIES[command]
