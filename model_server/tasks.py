"""What a model computes, the per-request options of each task and the per-input results (plain data)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class Task(Enum):
    """A model's task; the value is the name used on the command line and in ModelDeployments."""

    EMBEDDING = "embedding"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    FILL_MASK = "fill-mask"


class Pooling(Enum):
    """How token vectors become one sentence vector."""

    MEAN = "mean"
    CLS = "cls"


class Aggregation(Enum):
    """How token-classification predictions are grouped into entities (Hugging Face pipeline strategies)."""

    NONE = "none"
    SIMPLE = "simple"
    FIRST = "first"
    AVERAGE = "average"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """Options of an Embed request."""

    pooling: Pooling
    normalize: bool
    truncate: bool = False


@dataclass(frozen=True, slots=True)
class ClassifyOptions:
    """Options of a Classify request; top_k 0 means every label."""

    top_k: int = 0
    truncate: bool = False
    return_logits: bool = False


@dataclass(frozen=True, slots=True)
class TokenClassifyOptions:
    """Options of a ClassifyTokens request."""

    aggregation: Aggregation = Aggregation.SIMPLE
    truncate: bool = False
    include_outside: bool = False


@dataclass(frozen=True, slots=True)
class FillMaskOptions:
    """Options of a FillMask request."""

    top_k: int = 5
    truncate: bool = False


TaskOptions = EmbedOptions | ClassifyOptions | TokenClassifyOptions | FillMaskOptions


@dataclass(frozen=True, slots=True)
class LabelScore:
    """One label of a classification with its probability."""

    label: str
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class Classification:
    """The labels of one input, best first, and its logits when asked for."""

    labels: tuple[LabelScore, ...]
    logits: FloatArray | None


@dataclass(frozen=True, slots=True)
class Entity:
    """A labelled span of an input; start and end are character offsets, end exclusive."""

    label: str
    score: float
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class TokenScore:
    """A candidate token for a mask."""

    token_id: int
    token: str
    score: float


# Per-input results of each task, as returned by the data plane and stored in the result cache.
EntityList = tuple[Entity, ...]
MaskCandidates = tuple[tuple[TokenScore, ...], ...]
TaskResult = FloatArray | Classification | EntityList | MaskCandidates
