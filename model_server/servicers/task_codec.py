"""bertmesh.v1 messages to task options and task results to messages (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from model_server.dataplane import ModelDescription, Reply
from model_server.errors import InvalidArgument
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.tasks import (
    Aggregation,
    Classification,
    ClassifyOptions,
    EmbedOptions,
    EntityList,
    FillMaskOptions,
    FloatArray,
    MaskCandidates,
    Pooling,
    Task,
    TokenClassifyOptions,
)
from model_server.tokenization import Encoded

_POOLING_IN = {pb.POOLING_MEAN: Pooling.MEAN, pb.POOLING_CLS: Pooling.CLS}
_POOLING_OUT = {Pooling.MEAN: pb.POOLING_MEAN, Pooling.CLS: pb.POOLING_CLS}
_AGGREGATION_IN = {
    pb.AGGREGATION_UNSPECIFIED: Aggregation.SIMPLE,
    pb.AGGREGATION_NONE: Aggregation.NONE,
    pb.AGGREGATION_SIMPLE: Aggregation.SIMPLE,
    pb.AGGREGATION_FIRST: Aggregation.FIRST,
    pb.AGGREGATION_AVERAGE: Aggregation.AVERAGE,
    pb.AGGREGATION_MAX: Aggregation.MAX,
}
_TASK_OUT = {
    Task.EMBEDDING: pb.TASK_EMBEDDING,
    Task.SEQUENCE_CLASSIFICATION: pb.TASK_SEQUENCE_CLASSIFICATION,
    Task.TOKEN_CLASSIFICATION: pb.TASK_TOKEN_CLASSIFICATION,
    Task.FILL_MASK: pb.TASK_FILL_MASK,
}
DEFAULT_FILL_MASK_TOP_K = 5


def embed_options(request: pb.EmbedRequest, model: ModelDescription) -> EmbedOptions:
    """Options of an Embed request, model defaults filled in (unknown enum values fall back to them)."""
    if request.pooling and request.pooling not in _POOLING_IN:
        raise InvalidArgument(f"pooling: unknown value {request.pooling}; use POOLING_MEAN or POOLING_CLS")
    return EmbedOptions(
        pooling=_POOLING_IN.get(request.pooling, model.default_pooling),
        normalize=request.normalize if request.HasField("normalize") else model.default_normalize,
        truncate=request.truncate,
    )


def classify_options(request: pb.ClassifyRequest) -> ClassifyOptions:
    """Options of a Classify request."""
    return ClassifyOptions(top_k=request.top_k, truncate=request.truncate, return_logits=request.return_logits)


def token_options(request: pb.ClassifyTokensRequest) -> TokenClassifyOptions:
    """Options of a ClassifyTokens request."""
    if request.aggregation not in _AGGREGATION_IN:
        raise InvalidArgument(f"aggregation: unknown value {request.aggregation}")
    return TokenClassifyOptions(
        aggregation=_AGGREGATION_IN[request.aggregation],
        truncate=request.truncate,
        include_outside=request.include_outside,
    )


def fill_mask_options(request: pb.FillMaskRequest) -> FillMaskOptions:
    """Options of a FillMask request (top_k 0 means the default)."""
    return FillMaskOptions(top_k=request.top_k or DEFAULT_FILL_MASK_TOP_K, truncate=request.truncate)


def _usage(reply: Reply[Any]) -> pb.Usage:
    return pb.Usage(tokens=reply.tokens, cached_inputs=reply.cached)


def embed_response(reply: Reply[FloatArray], request_id: str, model: ModelDescription) -> pb.EmbedResponse:
    """An EmbedResponse of packed float vectors."""
    return pb.EmbedResponse(
        embeddings=[pb.Embedding(values=v.tolist()) for v in reply.results],
        dimensions=model.dimensions,
        model=model.name,
        id=request_id,
        usage=_usage(reply),
    )


def classify_response(reply: Reply[Classification], request_id: str, model: ModelDescription) -> pb.ClassifyResponse:
    """A ClassifyResponse."""
    return pb.ClassifyResponse(
        results=[
            pb.Classification(
                labels=[pb.LabelScore(label=s.label, index=s.index, score=s.score) for s in c.labels],
                logits=c.logits.tolist() if c.logits is not None else [],
            )
            for c in reply.results
        ],
        model=model.name,
        id=request_id,
        usage=_usage(reply),
    )


def tokens_response(reply: Reply[EntityList], request_id: str, model: ModelDescription) -> pb.ClassifyTokensResponse:
    """A ClassifyTokensResponse."""
    return pb.ClassifyTokensResponse(
        results=[
            pb.TokenClassification(
                entities=[
                    pb.Entity(label=e.label, score=e.score, start=e.start, end=e.end, text=e.text) for e in entities
                ]
            )
            for entities in reply.results
        ],
        model=model.name,
        id=request_id,
        usage=_usage(reply),
    )


def fill_mask_response(reply: Reply[MaskCandidates], request_id: str, model: ModelDescription) -> pb.FillMaskResponse:
    """A FillMaskResponse."""
    return pb.FillMaskResponse(
        results=[
            pb.FillMaskResult(
                masks=[
                    pb.MaskPredictions(
                        candidates=[pb.TokenScore(token_id=c.token_id, token=c.token, score=c.score) for c in mask]
                    )
                    for mask in masks
                ]
            )
            for masks in reply.results
        ],
        model=model.name,
        id=request_id,
        usage=_usage(reply),
    )


def tokenize_response(
    encodings: Sequence[Encoded], token_string: Callable[[int], str], model: ModelDescription
) -> pb.TokenizeResponse:
    """A TokenizeResponse; `token_string` maps an id to its vocabulary entry."""
    return pb.TokenizeResponse(
        results=[
            pb.TokenizedInput(
                tokens=[
                    pb.Token(id=i, text=token_string(i), start=s, end=e, special=sp)
                    for i, (s, e), sp in zip(enc.ids, enc.offsets, enc.special, strict=True)
                ]
            )
            for enc in encodings
        ],
        model=model.name,
    )


def model_info(model: ModelDescription) -> pb.ModelInfoResponse:
    """A ModelInfoResponse."""
    lim, bat = model.limits, model.batching
    return pb.ModelInfoResponse(
        name=model.name,
        revision=model.revision,
        task=_TASK_OUT[model.task],
        precision=model.precision,
        device=model.device,
        dimensions=model.dimensions,
        labels=list(model.labels),
        default_pooling=_POOLING_OUT[model.default_pooling],
        default_normalize=model.default_normalize,
        mask_token=model.mask_token,
        architecture=model.architecture,
        engine=model.engine,
        limits=pb.Limits(
            max_inputs_per_request=lim.max_inputs_per_request,
            max_chars_per_input=lim.max_chars_per_input,
            max_tokens_per_input=lim.max_tokens_per_input,
            max_message_bytes=lim.max_message_bytes,
            max_batch_tokens=bat.max_batch_tokens,
            max_batch_requests=bat.max_batch_requests,
            max_queued_tokens=bat.max_queued_tokens,
        ),
    )
