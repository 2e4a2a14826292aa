"""Where and how many: the resources of one replica and the autoscaling of each track.

Changes here apply to the running tracks in place (a rolling update), not through a canary.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from bertmesh_operator.schema import LABEL_KEY, CelRule, CrdModel, LabelKey, LabelValue, Quantity, quantity_value


class Toleration(CrdModel):
    """A pod toleration (the subset of core/v1 Toleration a model pod needs)."""

    cel_rules = (
        CelRule(
            rule="self.operator != 'Exists' || !has(self.value)",
            message="a toleration with operator Exists must not set value",
            check=lambda t: t.operator != "Exists" or t.value is None,
        ),
    )

    key: Annotated[str, Field(max_length=317)] | None = None
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Default: Equal.")
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=86400)


def _cel_quoted(text: str) -> str:
    """`text` inside a single-quoted CEL string literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


class ResourcesSpec(CrdModel):
    """What one replica gets: GPUs, CPU, memory, where it may be scheduled."""

    cel_rules = (
        CelRule(
            rule="quantity(self.cpu).isGreaterThan(quantity('0'))",
            message="cpu must be greater than zero",
            check=lambda r: quantity_value(r.cpu) > 0,
            field_path=".cpu",
        ),
        CelRule(
            rule="quantity(self.memory).isGreaterThan(quantity('0'))",
            message="memory must be greater than zero",
            check=lambda r: quantity_value(r.memory) > 0,
            field_path=".memory",
        ),
        # The CRD cannot constrain map keys in its schema (no patternProperties): these rules do, so a bad key is
        # refused by the API server rather than found by the operator.
        CelRule(
            rule="!has(self.nodeSelector) || self.nodeSelector.all(k, k.size() <= 317)",
            message="nodeSelector keys are label keys: at most 317 characters",
            check=lambda r: r.node_selector is None or all(len(k) <= 317 for k in r.node_selector),
            field_path=".nodeSelector",
        ),
        CelRule(
            rule="!has(self.nodeSelector) || self.nodeSelector.all(k, k.matches('" + _cel_quoted(LABEL_KEY) + "'))",
            message="nodeSelector keys must be label keys such as example.com/name",
            check=lambda r: r.node_selector is None or all(re.fullmatch(LABEL_KEY, k) for k in r.node_selector),
            field_path=".nodeSelector",
        ),
    )

    # One: the server runs its model on one GPU (cuda:0), so a second GPU per pod would be allocated and never
    # used; more GPUs are more replicas, which the autoscaler and the mesh already spread load over.
    gpus: int = Field(
        default=0,
        ge=0,
        le=1,
        description="nvidia.com/gpu per replica: 0 (CPU) or 1, as the server runs its model on one GPU; more GPUs "
        "are more replicas. With 1 the server runs on CUDA and the pod tolerates the nvidia.com/gpu taint. "
        "Default: 0.",
    )
    cpu: Quantity = Field(default="1", description="CPU request (no CPU limit: no throttling). Default: 1.")
    memory: Quantity = Field(default="2Gi", description="Memory request and limit. Default: 2Gi.")
    model_volume_size: Quantity = Field(
        default="10Gi",
        description="Size limit of the volume a downloaded model is written to. Default: 10Gi.",
    )
    node_selector: Annotated[dict[LabelKey, LabelValue], Field(max_length=16)] | None = Field(
        default=None, description="Node labels the pods require. Default: none."
    )
    tolerations: Annotated[list[Toleration], Field(max_length=16)] | None = Field(
        default=None, description="Extra tolerations (the nvidia.com/gpu one is added when gpus > 0)."
    )


Metric = Literal["inflight", "queuedTokens", "cpu"]
DEFAULT_TARGETS: dict[str, int] = {"inflight": 16, "queuedTokens": 16384, "cpu": 70}
# queuedTokens per pod without GPUs: a CPU pod computes thousands of tokens a second, not millions, so a GPU
# pod's backlog (one full batch, 16384) would be seconds of waiting there. Measured (bench/autoscale_signal.py,
# 2 cores): p99 passed ~400 ms at ~300 queued tokens per pod with 1-text requests and ~500 with 16-text ones.
CPU_QUEUED_TOKENS_TARGET = 512


class AutoscalingSpec(CrdModel):
    """How many replicas each track runs (a KEDA ScaledObject or an autoscaling/v2 HPA per track)."""

    cel_rules = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
            field_path=".minReplicas",
        ),
        CelRule(
            rule="!has(self.target) || self.metric != 'cpu' || self.target <= 1000",
            message="a cpu target is a utilisation percentage of the request: at most 1000",
            check=lambda a: a.target is None or a.metric != "cpu" or a.target <= 1000,
            field_path=".target",
        ),
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Default: 1.")
    max_replicas: int = Field(default=3, ge=1, le=1000, description="Default: 3.")
    metric: Metric = Field(
        default="queuedTokens",
        description="queuedTokens (average bertmesh_queue_tokens per pod: the work waiting, which tracks latency "
        "best across request sizes), inflight (average bertmesh_inflight_requests per pod), or cpu "
        "(utilisation %). The first two are read from Prometheus by a KEDA ScaledObject (the operator's "
        "default autoscaler; with --autoscaler hpa, a custom-metrics adapter must serve them); cpu is a plain "
        "HPA. Default: queuedTokens.",
    )
    target: int | None = Field(
        default=None,
        ge=1,
        le=10000000,
        description="Target value per pod. Default: queuedTokens 16384 with GPUs, 512 without; inflight 16; cpu 70.",
    )
    fallback_replicas: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="KEDA only: the replicas each track keeps while Prometheus cannot be read (3 failed reads "
        "in a row), or the count running when that is more; capped at maxReplicas. Default: minReplicas (the "
        "track holds its count).",
    )
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="How long load must stay low before scaling down (model pods are slow to start). Default: 300.",
    )

    def effective_target(self, gpus: int) -> int:
        """The target value, with the default of the metric (and, for queued tokens, of GPU or CPU pods)."""
        if self.target is not None:
            return self.target
        if self.metric == "queuedTokens" and gpus == 0:
            return CPU_QUEUED_TOKENS_TARGET
        return DEFAULT_TARGETS[self.metric]
