"""bertmesh.v1 replies shared by every task, Tokenize and ModelInfo (pure functions); each task module encodes its
own options and results (model_server.tasks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from model_server.dataplane import ModelDescription, Reply
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.tasks import Pooling, RerankReply, Task, TaskSpec, rerank
from model_server.tasks.rerank import top
from model_server.tokenization import Encoded

_POOLING_OUT = {Pooling.MEAN: pb.POOLING_MEAN, Pooling.CLS: pb.POOLING_CLS}
_TASK_OUT = {
    Task.EMBEDDING: pb.TASK_EMBEDDING,
    Task.SEQUENCE_CLASSIFICATION: pb.TASK_SEQUENCE_CLASSIFICATION,
    Task.TOKEN_CLASSIFICATION: pb.TASK_TOKEN_CLASSIFICATION,
    Task.FILL_MASK: pb.TASK_FILL_MASK,
    Task.RERANK: pb.TASK_RERANK,
}


def task_response(task: TaskSpec[Any, Any], reply: Reply[Any], request_id: str, model: ModelDescription) -> Any:
    """The task's response message (its module encodes the results) with the fields every task reply has."""
    return _stamped(
        task.api.response(reply.results, model),
        request_id,
        model,
        pb.Usage(tokens=reply.tokens, cached_inputs=reply.cached),
    )


def rerank_response(reply: RerankReply, request: pb.RerankRequest, model: ModelDescription) -> pb.RerankResponse:
    """A RerankResponse: the request's top_n documents (0: all), best first, their texts if asked for."""
    order = top(reply.scores, request.top_n or None)
    response = rerank.response(reply, order, request.documents if request.return_documents else ())
    stamped: pb.RerankResponse = _stamped(response, request.id, model, pb.Usage(tokens=reply.tokens))
    return stamped


def _stamped(response: Any, request_id: str, model: ModelDescription, usage: pb.Usage) -> Any:
    response.model = model.name
    response.id = request_id
    response.usage.CopyFrom(usage)
    return response


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
