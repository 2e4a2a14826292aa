"""Which way a rollout moves traffic (`states.RolloutMode`), decided from what the two tracks serve. Pure.

A weighted canary between two embedding models silently corrupts search: for the length of the rollout a share
of the callers writes model B's vectors into an index built with model A, or queries A's index with B's
vectors, and nothing fails. So an embedder whose canary writes another embedding space is never split by
weight: it runs a re-index rollout (stable keeps 100% of normal traffic, Istio mirrors a share to the canary for
the analysis, the header pin reaches it for the re-index job, promotion moves 100% at once). Everything else,
an embedder re-quantised or on a new image in the same space included, keeps the weighted canary.
"""

from __future__ import annotations

from dataclasses import dataclass

from bertmesh_operator.spec import CanarySpec, ServingSpec
from bertmesh_operator.states import RolloutMode

EMBEDDING = "embedding"


@dataclass(frozen=True)
class ModeDecision:
    """The rollout mode and the sentence that explains it (shown by status and `bertmesh rollout status`)."""

    mode: RolloutMode
    reason: str


def decide_mode(stable: ServingSpec, canary: ServingSpec, policy: CanarySpec) -> ModeDecision:
    """The mode of a rollout from `stable` to `canary` under `policy`."""
    before, after = stable.model.effective_embedding_space, canary.model.effective_embedding_space
    tasks = {stable.model.task, canary.model.task}
    if EMBEDDING not in tasks:
        if "auto" in tasks:
            return ModeDecision(
                RolloutMode.WEIGHTED,
                "task auto: the operator cannot tell an embedder from the spec, so it splits by weight "
                "(declare task: embedding to protect an index from mixed vectors)",
            )
        return ModeDecision(RolloutMode.WEIGHTED, f"task {canary.model.task} writes no vectors to an index")
    if before == after:
        return ModeDecision(
            RolloutMode.WEIGHTED, f"both tracks write embedding space {after}: their vectors are interchangeable"
        )
    reason = (
        f"embedding space changes from {before} to {after}: vectors of the two never share an index, so "
        f"stable keeps 100% while {policy.mirror_percent}% of live traffic is mirrored to the canary until "
        "the re-index is done and promotion moves 100% at once"
    )
    if policy.steps is not None or policy.step_weight is not None or policy.max_weight is not None:
        reason += "; the weighted steps in traffic.canary are ignored"
    return ModeDecision(RolloutMode.REINDEX, reason)
