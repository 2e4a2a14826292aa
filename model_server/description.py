"""The served model as the data plane, the front ends and the task modules see it (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: the task modules import this module
    from model_server.batcher import BatchLimits
    from model_server.tasks.base import Pooling, Task
    from model_server.validation import Limits


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """The served model as ModelInfo and ModelMetadata report it."""

    name: str
    revision: str
    task: Task
    architecture: str
    device: str
    precision: str
    engine: str
    dimensions: int
    labels: tuple[str, ...]
    multi_label: bool
    default_pooling: Pooling
    default_normalize: bool
    mask_token: str
    limits: Limits
    batching: BatchLimits
