"""The ModelDeployment spec (`serving.bertmesh.io/v1alpha1`): what a model team writes, with its defaults.

These models are the single source of truth: the CRD's OpenAPI schema and CEL rules are generated from them
(`hack/gen_crd.py`), `bertmesh render` validates with them, and the operator parses every object with them.
Field descriptions become `kubectl explain` text, so each one states its default.
"""

from __future__ import annotations

from pydantic import Field, ValidationError, model_validator

from bertmesh_operator.schema import CelRule, CrdModel
from bertmesh_operator.spec.serving import (
    DEFAULT_IMAGE,
    ModelOverride,
    ModelSpec,
    RuntimeOverride,
    RuntimeSpec,
    ServingSpec,
)
from bertmesh_operator.spec.traffic import (
    AccessSpec,
    AnalysisSpec,
    Caller,
    CanarySpec,
    HeaderPin,
    RateLimitSpec,
    TrafficSpec,
)
from bertmesh_operator.spec.workload import AutoscalingSpec, ResourcesSpec, Toleration

__all__ = [
    "DEFAULT_IMAGE",
    "AccessSpec",
    "AnalysisSpec",
    "AutoscalingSpec",
    "Caller",
    "CanarySpec",
    "HeaderPin",
    "ModelDeploymentSpec",
    "ModelOverride",
    "ModelSpec",
    "RateLimitSpec",
    "ResourcesSpec",
    "RuntimeOverride",
    "RuntimeSpec",
    "ServingSpec",
    "Toleration",
    "TrafficSpec",
]


def weighted_across_spaces(s: ModelDeploymentSpec) -> bool:
    """Whether the spec asks for weighted steps between two embedding spaces (which would mix their vectors)."""
    canary = s.traffic.canary
    if canary is None or (canary.steps is None and canary.step_weight is None and canary.max_weight is None):
        return False
    try:
        desired = s.desired_serving
    except ValidationError:
        return False  # the candidate is invalid anyway, and `_candidate_is_valid` says why
    base = s.base_serving.model
    if "embedding" not in (base.task, desired.model.task):
        return False
    return base.effective_embedding_space != desired.model.effective_embedding_space


# The same test in CEL. Derived spaces ("auto:<hash>") cannot be computed there, but they need not be: two
# derived spaces differ exactly when storageUri or revision differ, and a derived one never equals a declared one.
_C, _M = "self.traffic.canary.model", "self.model"
_SPACES_DIFFER = (
    f"(has({_C}.embeddingSpace) ? (!has({_M}.embeddingSpace) || {_C}.embeddingSpace != {_M}.embeddingSpace)"
    f" : ((has({_C}.storageUri) || has({_C}.revision)) && (has({_M}.embeddingSpace)"
    f" || (has({_C}.storageUri) && {_C}.storageUri != {_M}.storageUri)"
    f" || (has({_C}.revision) ? (!has({_M}.revision) || {_C}.revision != {_M}.revision) : has({_M}.revision)))))"
)
_WEIGHTED_ACROSS_SPACES = CelRule(
    rule="!has(self.traffic.canary) || !has(self.traffic.canary.model)"
    " || !(has(self.traffic.canary.steps) || has(self.traffic.canary.stepWeight)"
    " || has(self.traffic.canary.maxWeight))"
    f" || !((has({_M}.task) && {_M}.task == 'embedding') || (has({_C}.task) && {_C}.task == 'embedding'))"
    f" || !{_SPACES_DIFFER}",
    message="an embedding canary in another embeddingSpace is never split by weight (callers would mix two "
    "spaces' vectors in one index): remove steps, stepWeight and maxWeight for a re-index rollout (mirrored "
    "traffic, then 100% at once), or declare the same embeddingSpace if the vectors are interchangeable",
    check=lambda s: not weighted_across_spaces(s),
    field_path=".traffic.canary",
)


def _precision_fits_device(s: ModelDeploymentSpec) -> bool:
    if s.resources.gpus > 0:
        return s.runtime.precision != "int8"
    return s.runtime.precision not in ("fp16", "bf16")


class ModelDeploymentSpec(CrdModel):
    """The desired state of one served model."""

    cel_rules = (
        CelRule(
            rule="self.resources.gpus > 0 ? self.runtime.precision != 'int8' "
            ": !(self.runtime.precision in ['fp16', 'bf16'])",
            message="precision fp16/bf16 needs gpus > 0 and int8 is CPU-only (gpus = 0)",
            check=_precision_fits_device,
            field_path=".runtime.precision",
        ),
        _WEIGHTED_ACROSS_SPACES,
    )

    model: ModelSpec
    runtime: RuntimeSpec = Field(default=RuntimeSpec())
    resources: ResourcesSpec = Field(default=ResourcesSpec())
    autoscaling: AutoscalingSpec = Field(default=AutoscalingSpec())
    traffic: TrafficSpec = Field(default=TrafficSpec())
    rate_limit: RateLimitSpec | None = Field(
        default=None, description="Per-replica request rate limit in the sidecar. Default: none."
    )
    access: AccessSpec = Field(default=AccessSpec())

    @model_validator(mode="after")
    def _candidate_is_valid(self) -> ModelDeploymentSpec:
        # The API server checks each part; only the merge shows whether the candidate as a whole is valid.
        try:
            _ = self.desired_serving
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ValueError(
                f"traffic.canary: the candidate (with the overrides applied) is invalid: {problems}"
            ) from None
        return self

    @property
    def base_serving(self) -> ServingSpec:
        """What the stable track serves when no rollout has happened yet: model and runtime as written."""
        return ServingSpec(model=self.model, runtime=self.runtime)

    @property
    def desired_serving(self) -> ServingSpec:
        """What the spec asks to serve: model and runtime with the canary's overrides applied."""
        canary = self.traffic.canary
        if canary is None:
            return self.base_serving
        return self.base_serving.with_overrides(canary.model, canary.runtime)
