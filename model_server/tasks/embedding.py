"""Embedding: one vector per input, the mean or first-token pooling of the encoder's hidden states.

Options: pooling and normalisation (defaults: the checkpoint's sentence-transformers settings), truncation.
Served by Embed and EmbedStream (bertmesh.v1) and by ModelInfer's FP32 output 'embedding' [N, D].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_server.description import ModelDescription
from model_server.errors import InvalidArgument
from model_server.oip_tensors import OutputTensor, Parameters, float_matrix, parameter
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.tasks.base import (
    EncoderOutput,
    FloatArray,
    ModelInput,
    OipOutput,
    Pooling,
    Served,
    Task,
    TaskApi,
    TaskOip,
    TaskSpec,
    any_options,
    choose,
    requested_truncation,
)
from model_server.tokenization import Encoded

_POOLING_IN = {pb.POOLING_MEAN: Pooling.MEAN, pb.POOLING_CLS: Pooling.CLS}


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """Options of an Embed request."""

    pooling: Pooling
    normalize: bool
    truncate: bool = False


def _prepare(enc: Encoded, index: int, options: EmbedOptions, served: Served) -> ModelInput:
    return ModelInput(enc.ids, options.pooling, normalize=options.normalize)


def head(out: EncoderOutput, inputs: Sequence[ModelInput]) -> list[FloatArray]:
    """Each input's mean or first-token ([CLS]) vector of the hidden states, in float32, at unit length where
    the input asks for it."""
    hidden = out.hidden().float()
    count = len(inputs)
    lengths = np.asarray(out.lengths)
    # Index and scale vectors are built on the host and copied without waiting for the device: nothing here waits
    # for the GPU before the one copy of the results back.
    starts = out.on_device(np.asarray(out.starts, dtype=np.int64))
    sequence_of_token = out.on_device(np.repeat(np.arange(count, dtype=np.int64), lengths))
    sums = hidden.new_zeros(count, hidden.shape[1]).index_add_(0, sequence_of_token, hidden)
    # Both poolings leave the device in one copy.
    pooled = hidden.new_empty(2 * count, hidden.shape[1])
    pooled[:count] = sums / out.on_device(lengths.astype(np.float32))[:, None]
    pooled[count:] = hidden.index_select(0, starts)
    if any(item.normalize for item in inputs):
        # Scaled here, over the whole batch at once (on the device for a GPU), not vector by vector on the event
        # loop: 1 / norm for the rows asked for (a zero vector stays zero), 1 for the others.
        wanted = out.on_device(np.tile(np.array([item.normalize for item in inputs], np.float32), 2))
        norms = pooled.norm(dim=1).clamp_min(1e-12)
        pooled.mul_((wanted / norms + (1 - wanted))[:, None])
    both = out.host(pooled)
    mean, cls = both[:count], both[count:]
    return [cls[row] if item.pooling is Pooling.CLS else mean[row] for row, item in enumerate(inputs)]


def _finish(out: FloatArray, enc: Encoded, text: str, options: EmbedOptions, served: Served) -> FloatArray:
    # The head has normalised it where asked (ModelInput.normalize); a copy, so the cache holds no batch array.
    vector = out.astype(np.float32, copy=True)
    vector.flags.writeable = False  # shared through the cache
    return vector


def defaults(model: ModelDescription) -> EmbedOptions:
    """The model's pooling and normalisation, no truncation: what a request that sets nothing gets."""
    return EmbedOptions(pooling=model.default_pooling, normalize=model.default_normalize)


def options_from_request(request: pb.EmbedRequest, model: ModelDescription) -> EmbedOptions:
    """Options of an Embed request, model defaults filled in."""
    if request.pooling and request.pooling not in _POOLING_IN:
        raise InvalidArgument(f"pooling: unknown value {request.pooling}; use POOLING_MEAN or POOLING_CLS")
    default = defaults(model)
    return EmbedOptions(
        pooling=_POOLING_IN.get(request.pooling, default.pooling),
        normalize=request.normalize if request.HasField("normalize") else default.normalize,
        truncate=requested_truncation(request, model),
    )


def response(results: Sequence[FloatArray], model: ModelDescription) -> pb.EmbedResponse:
    """An EmbedResponse of packed float vectors, parsed from wire bytes built from one contiguous array."""
    message = pb.EmbedResponse(dimensions=model.dimensions)
    message.MergeFromString(embeddings_wire(results))
    return message


def embeddings_wire(rows: Sequence[FloatArray]) -> bytes:
    """The protobuf encoding of `repeated Embedding embeddings = 1`, each `repeated float values = 1` (packed).

    One numpy copy of the little-endian floats behind a fixed per-row header, instead of a Python float per value
    (`values=v.tolist()` was ~30x slower and held the GIL: bench/feed.py)."""
    if not rows:
        return b""
    matrix = np.asarray(rows, dtype="<f4").reshape(len(rows), -1)
    width = matrix.shape[1] * 4
    if width == 0:  # proto3 leaves an empty packed field out: each Embedding is empty
        return (_field_header(1, 0)) * len(rows)
    header = _row_header(width)
    wire = np.empty((len(rows), len(header) + width), np.uint8)
    wire[:, : len(header)] = header
    wire[:, len(header) :] = matrix.view(np.uint8)
    return wire.tobytes()


@functools.lru_cache(maxsize=16)  # one model width (and `dimensions` cuts): the same header for every row
def _row_header(width: int) -> npt.NDArray[np.uint8]:
    """The bytes before each row's floats: EmbedResponse.embeddings' tag and length, then Embedding.values'."""
    inner = _field_header(1, width)  # Embedding.values, packed
    return np.frombuffer(_field_header(1, len(inner) + width) + inner, np.uint8)  # read-only: shared


def _field_header(field: int, length: int) -> bytes:
    """Tag (wire type 2, length-delimited) and varint length of a field."""
    out = bytearray([field << 3 | 2])
    while length >= 0x80:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def _oip_options(params: Parameters, truncate: bool, model: ModelDescription) -> EmbedOptions:
    pooling = parameter(params, "pooling", str)
    normalize = parameter(params, "normalize", bool)
    default = defaults(model)
    return EmbedOptions(
        pooling=default.pooling if pooling is None else choose(pooling, _POOLINGS, "parameters['pooling']"),
        normalize=default.normalize if normalize is None else bool(normalize),
        truncate=truncate,
    )


_POOLINGS = {p.value: p for p in Pooling}


def _tensors(results: Sequence[FloatArray], model: ModelDescription) -> list[OutputTensor]:
    return [float_matrix("embedding", results, model.dimensions)]


SPEC: TaskSpec[EmbedOptions, FloatArray] = TaskSpec(
    task=Task.EMBEDDING,
    options=EmbedOptions,
    defaults=defaults,
    model_class="AutoModel",
    check=any_options,
    prepare=_prepare,
    head=head,
    finish=_finish,
    api=TaskApi("Embed", options_from_request, response),
    oip=TaskOip((OipOutput("embedding", "FP32", (-1, -1)),), _oip_options, _tensors),
    unused_modules=frozenset({"pooler"}),  # embeddings pool the hidden states; the pooler is never run
)
