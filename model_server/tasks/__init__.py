"""The tasks a model serves: one module per task, each defining SPEC (see model_server.tasks.base.TaskSpec).

A task module owns its options (defaults and validation), its head over an engine's hidden states, its
post-processing and its encoders for each front end. Adding a task is one module here, listed in SPECS, plus
its messages. The names below are re-exported for callers that only need the plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model_server.tasks import embedding, fill_mask, rerank, sequence_classification, token_classification
from model_server.tasks.base import FloatArray, ModelInput, Pooling, Task, TaskSpec
from model_server.tasks.embedding import EmbedOptions
from model_server.tasks.fill_mask import FillMaskOptions, MaskCandidates, TokenScore
from model_server.tasks.rerank import RerankOptions, RerankReply
from model_server.tasks.sequence_classification import Classification, ClassifyOptions, LabelScore
from model_server.tasks.token_classification import Aggregation, Entity, EntityList, TokenClassifyOptions

__all__ = [
    "SPECS",
    "Aggregation",
    "Classification",
    "ClassifyOptions",
    "EmbedOptions",
    "Entity",
    "EntityList",
    "FillMaskOptions",
    "FloatArray",
    "LabelScore",
    "MaskCandidates",
    "ModelInput",
    "Pooling",
    "RerankOptions",
    "RerankReply",
    "Task",
    "TaskOptions",
    "TaskResult",
    "TaskSpec",
    "TokenClassifyOptions",
    "TokenScore",
    "spec",
    "spec_of",
]

SPECS: Mapping[Task, TaskSpec[Any, Any]] = {
    s.task: s
    for s in (embedding.SPEC, sequence_classification.SPEC, token_classification.SPEC, fill_mask.SPEC, rerank.SPEC)
}
_BY_OPTIONS: Mapping[type, TaskSpec[Any, Any]] = {s.options: s for s in SPECS.values()}

TaskOptions = EmbedOptions | ClassifyOptions | TokenClassifyOptions | FillMaskOptions | RerankOptions
TaskResult = FloatArray | Classification | EntityList | MaskCandidates


def spec(task: Task) -> TaskSpec[Any, Any]:
    """The module of a task."""
    return SPECS[task]


def spec_of(options: object) -> TaskSpec[Any, Any]:
    """The task whose options these are."""
    return _BY_OPTIONS[type(options)]
