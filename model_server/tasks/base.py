"""What every task module provides (TaskSpec) and what it works on: model inputs and an engine's output.

Task modules are imported by the servicers and the data plane, which never import torch, and by the engines.
So a task's head is code over the tensors an engine hands it (`EncoderOutput`), written with tensor methods
only: no module here imports torch, not even for type checking (import-linter counts those imports too).
Tensors are therefore typed `Tensor` (Any).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from model_server.errors import InvalidArgument
from model_server.tokenization import Encoded
from model_server.validation import truncation

if TYPE_CHECKING:
    from model_server.description import ModelDescription
    from model_server.oip_tensors import OutputTensor, Parameters

FloatArray = npt.NDArray[np.float32]
Tensor = Any  # a torch.Tensor; see the module docstring


class Task(Enum):
    """A model's task; the value is the name used on the command line and in ModelDeployments."""

    EMBEDDING = "embedding"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    FILL_MASK = "fill-mask"
    RERANK = "rerank"


class Pooling(Enum):
    """How token vectors become one sentence vector."""

    MEAN = "mean"
    CLS = "cls"


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One tokenised input as the model sees it.

    `pooling` is set for embedding models, and `normalize` asks for the pooled vector at unit length;
    `positions` lists the token positions whose vocabulary logits a fill-mask model returns; `type_ids` are the
    token types of a pair (None: type 0 throughout).
    """

    ids: tuple[int, ...]
    pooling: Pooling | None = None
    positions: tuple[int, ...] | None = None
    type_ids: tuple[int, ...] | None = None
    normalize: bool = False


class Options(Hashable, Protocol):
    """What every task's options have: frozen and hashable (they key the result cache), and truncation."""

    @property
    def truncate(self) -> bool:
        """Whether inputs over the token limit are cut rather than refused."""


class EncoderOutput(Protocol):
    """One batch as an engine computed it, in the packed layout: each input's tokens are consecutive rows.

    Heads ask only for what they need; an engine computes each part on demand, with the layers of the loaded
    model class (the per-architecture heads of Hugging Face models stay theirs).
    """

    @property
    def lengths(self) -> Sequence[int]:
        """Tokens of each input, in batch order."""

    @property
    def starts(self) -> Sequence[int]:
        """The row of each input's first token."""

    def hidden(self) -> Tensor:
        """The encoder's last hidden states [tokens, hidden]."""

    def sequence_logits(self) -> Tensor:
        """The model's sequence-classification head on each input: [inputs, labels]."""

    def token_logits(self) -> Tensor:
        """The model's token-classification head on each token: [tokens, labels]."""

    def vocabulary_logits(self, rows: Sequence[int]) -> Tensor:
        """The model's masked-language-model head on the given rows: [rows, vocabulary]."""

    def on_device(self, array: npt.NDArray[Any]) -> Tensor:
        """A host array as a tensor on the batch's device, copied without waiting for the device (a head's index
        and scale vectors: a tensor made from a Python list is a copy that waits for everything queued before)."""

    def host(self, tensor: Tensor) -> npt.NDArray[Any]:
        """A tensor the head computed, copied to the host as a numpy array: the head's one copy off the device and
        its last device operation (an engine may start the next batch's device work once it is queued)."""


@dataclass(frozen=True, slots=True)
class Served:
    """What post-processing needs of the served model beyond its description."""

    model: ModelDescription
    mask_id: int | None
    token_text: Callable[[int], str]


Opt = TypeVar("Opt")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskApi(Generic[Opt, R]):
    """A task's bertmesh.v1 encoders: its RPC's request to options, results to the RPC's response."""

    rpc: str  # the InferenceService method serving the task
    options: Callable[[Any, ModelDescription], Opt]
    response: Callable[[Sequence[R], ModelDescription], Any]  # the servicer adds model, id and usage


@dataclass(frozen=True, slots=True)
class OipOutput:
    """One output tensor a task's ModelInfer returns, as ModelMetadata declares it."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TaskOip(Generic[Opt, R]):
    """A task's Open Inference Protocol encoders: request parameters to options, results to tensors."""

    outputs: tuple[OipOutput, ...]
    options: Callable[[Parameters, bool, ModelDescription], Opt]  # parameters, truncate, model
    tensors: Callable[[Sequence[R], ModelDescription], list[OutputTensor]]


@dataclass(frozen=True, slots=True)
class TaskSpec(Generic[Opt, R]):
    """Everything the server knows about one task; each task module defines one as SPEC."""

    task: Task
    options: type[Opt]  # the options class: an instance names its task in DataPlane.infer
    defaults: Callable[[ModelDescription], Opt]  # the options of a request that sets none (model defaults in)
    model_class: str  # the transformers Auto class the engines load
    check: Callable[[Opt], None]  # refuses invalid options (InvalidArgument), before any compute
    prepare: Callable[[Encoded, int, Opt, Served], ModelInput]  # the input's index in the request, for errors
    head: Callable[[EncoderOutput, Sequence[ModelInput]], list[FloatArray]]
    finish: Callable[[FloatArray, Encoded, str, Opt, Served], R]  # one input's head output to its result
    api: TaskApi[Opt, R]
    oip: TaskOip[Opt, R]
    # Modules of model_class the task never runs (a weight of theirs missing from a checkpoint is harmless).
    unused_modules: frozenset[str] = frozenset()
    # The text every input is paired with (its first sequence), or None: inputs are tokenised alone.
    paired_with: Callable[[Opt], str | None] = lambda options: None


def any_options(options: object) -> None:
    """The check of a task whose every combination of options is valid."""


def requested_truncation(request: Any, model: ModelDescription) -> bool:
    """A task API request's truncation (its optional `truncate` field), the server's default where unset."""
    return truncation(request.truncate if request.HasField("truncate") else None, model.limits)


def class_defaults(options: type[Opt]) -> Callable[[ModelDescription], Opt]:
    """The defaults of a task whose options do not depend on the model: the options class's own."""
    return lambda model: options()


def plain_input(enc: Encoded, index: int, options: object, served: Served) -> ModelInput:
    """The model input of a task that needs nothing beyond the token ids."""
    return ModelInput(enc.ids)


def split_rows(rows: FloatArray, counts: Sequence[int]) -> list[FloatArray]:
    """Consecutive rows of `rows` cut into pieces of `counts` rows, in order."""
    out, first = [], 0
    for count in counts:
        out.append(rows[first : first + count])
        first += count
    return out


def choose(value: object, choices: Mapping[str, Any], field: str) -> Any:
    """The choice named by a string value, case-insensitively; INVALID_ARGUMENT naming the choices otherwise."""
    try:
        return choices[str(value).lower()]
    except KeyError:
        raise InvalidArgument(f"{field}: {value!r} is not one of {', '.join(choices)}") from None
