"""How requests reach the model: canary policy, routing timeouts and retries, rate limit, allowed callers."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated

from pydantic import Field

from bertmesh_operator.schema import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    CelRule,
    CrdModel,
    Duration,
    duration_seconds,
)
from bertmesh_operator.spec.serving import ModelOverride, RuntimeOverride

DEFAULT_STEP_WEIGHT = 10
DEFAULT_MAX_WEIGHT = 50
DEFAULT_MIRROR_PERCENT = 10


def _duration_rule(field: str, low: str, high: str) -> CelRule:
    """A CEL rule (and its Python twin) bounding a duration field to [low, high]."""
    attr = "".join("_" + c.lower() if c.isupper() else c for c in field)
    return CelRule(
        rule=f"duration(self.{field}) >= duration('{low}') && duration(self.{field}) <= duration('{high}')",
        message=f"{field} must be between {low} and {high}",
        check=lambda m: duration_seconds(low) <= duration_seconds(getattr(m, attr)) <= duration_seconds(high),
        field_path=f".{field}",
    )


class AnalysisSpec(CrdModel):
    """The thresholds a canary must meet at every check, measured by Istio at the canary's sidecars."""

    min_success_rate: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="Lowest share of gRPC calls not failing with a server-side status (UNKNOWN, "
        "DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). Default: 0.99.",
    )
    max_p99_latency_ms: int = Field(
        default=1000, ge=1, le=600000, description="Highest p99 request duration in ms. Default: 1000."
    )


class HeaderPin(CrdModel):
    """A request header that sends a call to the canary whatever the weights (for testing it directly)."""

    name: str = Field(
        default="x-bertmesh-track",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][-a-z0-9]*$",
        description="Header name, lower case (gRPC metadata keys are). Default: x-bertmesh-track.",
    )
    value: str = Field(
        default="canary", min_length=1, max_length=128, pattern=r"^[!-~]+$", description="Default: canary."
    )


StepWeight = Annotated[int, Field(ge=1, le=100)]


def _ascending(steps: list[int] | None) -> bool:
    return steps is None or all(a < b for a, b in pairwise(steps))


class CanarySpec(CrdModel):
    """A canary: the candidate (overrides of model and runtime) and the policy that promotes or aborts it."""

    cel_rules = (
        CelRule(
            rule="!(has(self.steps) && has(self.stepWeight))",
            message="set steps or stepWeight, not both",
            check=lambda c: c.steps is None or c.step_weight is None,
        ),
        CelRule(
            rule="!has(self.steps) || self.steps.isSorted()",
            message="steps must be strictly ascending",
            check=lambda c: _ascending(c.steps),
            field_path=".steps",
        ),
        CelRule(
            rule="!has(self.maxWeight) || !has(self.steps) || self.steps.all(s, s <= self.maxWeight)",
            message="every step must be at most maxWeight",
            check=lambda c: c.max_weight is None or c.steps is None or max(c.steps) <= c.max_weight,
            field_path=".steps",
        ),
        CelRule(
            rule="!has(self.maxWeight) || !has(self.stepWeight) || self.stepWeight <= self.maxWeight",
            message="stepWeight must be at most maxWeight",
            check=lambda c: c.max_weight is None or c.step_weight is None or c.step_weight <= c.max_weight,
            field_path=".stepWeight",
        ),
        _duration_rule("interval", "10s", "1h"),
        _duration_rule("progressDeadline", "1m", "2h"),
    )

    model: ModelOverride | None = Field(
        default=None,
        description="Model fields the canary changes; a new storageUri also resets secretName and revision, "
        "and a new storageUri or revision resets embeddingSpace, unless they are set here too.",
    )
    runtime: RuntimeOverride | None = Field(default=None, description="Runtime fields the canary changes.")
    # A set (no duplicates) that is sorted is strictly ascending: two cheap checks instead of a pairwise rule.
    steps: Annotated[list[StepWeight], Field(min_length=1, max_length=20)] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Canary weights (%) in strictly ascending order, e.g. [5, 25, 50]. Exclusive with stepWeight.",
    )
    step_weight: StepWeight | None = Field(
        default=None,
        description=f"Weight added at each step up to maxWeight. Default (when steps is unset too): "
        f"{DEFAULT_STEP_WEIGHT}.",
    )
    max_weight: StepWeight | None = Field(
        default=None,
        description=f"Highest canary weight before promotion. Default: the last step, or "
        f"{DEFAULT_MAX_WEIGHT} with stepWeight.",
    )
    interval: Duration = Field(
        default="1m", description="Time at each step before its check (and the metrics window). Default: 1m."
    )
    threshold: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Failed checks (missing metrics count as failed) that abort the rollout. Default: 3.",
    )
    progress_deadline: Duration = Field(
        default="10m", description="How long the canary may take to become ready before abort. Default: 10m."
    )
    analysis: AnalysisSpec = Field(default=AnalysisSpec())
    header_pin: HeaderPin = Field(default=HeaderPin())
    mirror_percent: int = Field(
        default=DEFAULT_MIRROR_PERCENT,
        ge=1,
        le=100,
        description="Re-index rollouts only (an embedding canary in another embeddingSpace): the share of live "
        "traffic (%) Istio mirrors to the canary, its answers discarded, for the analysis to measure. "
        f"Default: {DEFAULT_MIRROR_PERCENT}.",
    )

    @property
    def schedule(self) -> tuple[int, ...]:
        """The canary weight at each step; promotion follows the last one."""
        if self.steps is not None:
            return tuple(self.steps)
        step = self.step_weight or DEFAULT_STEP_WEIGHT
        top = self.effective_max_weight
        return (*range(step, top, step), top)

    @property
    def effective_max_weight(self) -> int:
        """The highest weight the canary ever gets."""
        if self.max_weight is not None:
            return self.max_weight
        if self.steps is not None:
            return self.steps[-1]
        return max(DEFAULT_MAX_WEIGHT, self.step_weight or DEFAULT_STEP_WEIGHT)

    @property
    def interval_seconds(self) -> int:
        """The interval in seconds."""
        return duration_seconds(self.interval)

    @property
    def progress_deadline_seconds(self) -> int:
        """The progress deadline in seconds."""
        return duration_seconds(self.progress_deadline)


def _has_candidate(t: TrafficSpec) -> bool:
    return t.canary is None or t.canary.model is not None or t.canary.runtime is not None


class TrafficSpec(CrdModel):
    """Routing of the model's gRPC traffic through Istio."""

    cel_rules = (
        CelRule(
            rule="!has(self.canary) || has(self.canary.model) || has(self.canary.runtime)",
            message="canary needs a model or runtime override: a canary identical to stable tests nothing",
            check=_has_candidate,
            field_path=".canary",
        ),
        _duration_rule("timeout", "1s", "1h"),
    )

    canary: CanarySpec | None = Field(
        default=None,
        description="A candidate to roll out step by step. Without it, a change to model or runtime still "
        "goes out as a canary with the default policy.",
    )
    timeout: Duration = Field(default="30s", description="Per-call timeout at the mesh. Default: 30s.")
    retry_attempts: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of calls that never reached a server (connect failure, refused stream, "
        "UNAVAILABLE, CANCELLED); never of RESOURCE_EXHAUSTED. Default: 2.",
    )

    @property
    def policy(self) -> CanarySpec:
        """The rollout policy in force: the canary's, or the defaults."""
        return self.canary if self.canary is not None else CanarySpec()


class RateLimitSpec(CrdModel):
    """A token bucket in each replica's sidecar; excess calls get RESOURCE_EXHAUSTED (never retried)."""

    cel_rules = (
        CelRule(
            rule="!has(self.burst) || self.burst >= self.requestsPerSecond",
            message="burst must be at least requestsPerSecond",
            check=lambda r: r.burst is None or r.burst >= r.requests_per_second,
            field_path=".burst",
        ),
    )

    requests_per_second: int = Field(ge=1, le=1000000, description="Sustained calls per second per replica.")
    burst: int | None = Field(default=None, ge=1, le=10000000, description="Bucket size. Default: requestsPerSecond.")
    per_caller: bool = Field(
        default=False,
        description="One bucket per calling workload identity (mTLS principal) instead of one shared bucket. "
        "Needs Istio 1.26+ (Envoy dynamic descriptors). Default: false.",
    )

    @property
    def effective_burst(self) -> int:
        """The bucket size, with its default applied."""
        return self.burst if self.burst is not None else self.requests_per_second


class Caller(CrdModel):
    """A workload allowed to call the model: a whole namespace, or one service account in it."""

    namespace: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)
    service_account: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="Only this service account of the namespace. Default: any workload in the namespace.",
    )


class AccessSpec(CrdModel):
    """Who may call the model; everyone else is denied by the sidecar (mTLS identity, not network)."""

    allowed_callers: Annotated[list[Caller], Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="Default: workloads in the ModelDeployment's own namespace."
    )
