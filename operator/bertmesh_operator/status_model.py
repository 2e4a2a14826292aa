"""The ModelDeployment status as an API type: the conditions, the tracks and the canary's progress.

Part of the resource's schema (`resource.ModelDeployment`, the generated CRD); it knows nothing of the rollout
state machine. What the operator writes here, and how it reads its rollout back, is `status`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from bertmesh_operator.schema import CrdModel
from bertmesh_operator.spec import ModelSpec, RuntimeSpec
from bertmesh_operator.states import Phase, RolloutMode

ConditionType = Literal["Ready", "Progressing", "Degraded", "Autoscaling"]
Revision = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[a-f0-9]+$")]
Replicas = Annotated[int, Field(ge=0, le=100000)]


class Condition(CrdModel):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    observed_generation: int | None = Field(default=None, ge=0, le=2**53)
    last_transition_time: datetime


class TrackStatus(CrdModel):
    """One track: the revision it serves, exactly what that revision is, and its ready replicas."""

    revision: Revision
    ready_replicas: Replicas = 0
    model: ModelSpec
    runtime: RuntimeSpec
    embedding_space: str | None = Field(
        default=None,
        max_length=63,
        description="The embedding space the track writes: the model's embeddingSpace, or the one derived "
        "from its storageUri and revision (auto:<hash>).",
    )


class CanaryStatus(TrackStatus):
    """The canary track and its progress."""

    weight: int = Field(default=0, ge=0, le=100, description="Share of traffic routed to the canary (%).")
    step: int = Field(default=0, ge=0, le=20, description="Current step (1-based); 0 before the first.")
    steps: int = Field(default=0, ge=0, le=20, description="Number of steps in the schedule.")
    failed_checks: int = Field(default=0, ge=0, le=100)
    step_started_at: datetime | None = None
    mode: RolloutMode | None = Field(
        default=None,
        description="Weighted (steps through the weights) or Reindex (an embedder changing space: mirrored "
        "traffic, then 100% at once).",
    )
    mode_reason: str | None = Field(default=None, max_length=1024, description="Why the rollout runs in its mode.")
    mirror_percent: int = Field(
        default=0, ge=0, le=100, description="Share of live traffic mirrored to the canary (%), re-index mode."
    )


class ModelDeploymentStatus(CrdModel):
    """What the operator observed and decided."""

    # Tolerate fields other writers keep in status (kopf's own bookkeeping, for instance).
    model_config = CrdModel.model_config | ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, ge=0, le=2**53)
    conditions: Annotated[list[Condition], Field(max_length=8)] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: Phase | None = None
    stable: TrackStatus | None = None
    canary: CanaryStatus | None = None
    grpc_endpoint: str | None = Field(default=None, max_length=320, description="host:port to call over gRPC.")
    message: str | None = Field(default=None, max_length=32768)
