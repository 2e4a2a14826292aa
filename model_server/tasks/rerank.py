"""Reranking: each document's relevance to a query, by a cross-encoder or by the cosine of embeddings.

A cross-encoder (`task: rerank`) is a sequence-classification model with one output: each (query, document)
pair is tokenised as a pair (token types 0 and 1, only the document cut when truncating), and its logit is the
relevance (its sigmoid the score). Embedding models rerank by the cosine of the query's and each document's
normalised embedding (model_server.dataplane.DataPlane.rerank); the reply names the method. Served by Rerank
(bertmesh.v1) and, on cross-encoders, by ModelInfer with the query in parameters['query'] and FP32 outputs
'score' [N] and 'logit' [N].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_server.description import ModelDescription
from model_server.errors import ConfigError, InvalidArgument
from model_server.oip_tensors import OutputTensor, Parameters, parameter
from model_server.postprocess import sigmoid
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.tasks.base import (
    EncoderOutput,
    FloatArray,
    ModelInput,
    OipOutput,
    Served,
    Task,
    TaskApi,
    TaskOip,
    TaskSpec,
    any_options,
)
from model_server.tokenization import Encoded

CROSS_ENCODER = "cross-encoder"
COSINE = "cosine"


@dataclass(frozen=True, slots=True)
class RerankOptions:
    """Options of a cross-encoder's inputs: the query every document is paired with, and truncation."""

    query: str = ""
    truncate: bool = False


@dataclass(frozen=True, slots=True)
class RerankReply:
    """Each document's relevance in input order, how it was computed, and the tokens computed."""

    scores: list[float]  # one per document, in input order (sigmoid of the logit for cross-encoders; cosine)
    method: str  # "cross-encoder" | "cosine"
    tokens: int  # tokens computed (pair tokens for cross-encoders)
    raw_scores: list[float]  # the logit (cross-encoder) or the cosine (embedding)


def top(scores: Sequence[float], top_n: int | None) -> list[int]:
    """Indices of the best `top_n` scores (None: all), best first, ties in input order."""
    if top_n is not None and top_n < 0:
        raise InvalidArgument(f"top_n: {top_n} is negative; leave it out for every document")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order if top_n is None else order[:top_n]


def from_logits(logits: Sequence[FloatArray], tokens: int) -> RerankReply:
    """A cross-encoder's reply from each pair's logit [1]."""
    raw = np.array([float(logit[0]) for logit in logits], dtype=np.float32)
    return RerankReply(sigmoid(raw).tolist(), CROSS_ENCODER, tokens, raw.tolist())


def from_embeddings(query: FloatArray, documents: Sequence[FloatArray], tokens: int) -> RerankReply:
    """An embedding model's reply: the cosine of the query's and each document's unit vector."""
    cosines = [float(np.dot(query, d)) for d in documents]
    return RerankReply(cosines, COSINE, tokens, list(cosines))


def check_labels(labels: int, path: str) -> None:
    """Refuses a sequence-classification checkpoint whose head has other than one output (a ConfigError)."""
    if labels != 1:
        raise ConfigError(
            f"{path}: rerank needs a cross-encoder, a sequence-classification head with one output; this head has "
            f"{labels} labels: serve it with --task sequence-classification"
        )


def _prepare(enc: Encoded, index: int, options: RerankOptions, served: Served) -> ModelInput:
    return ModelInput(enc.ids, type_ids=enc.type_ids)


def head(out: EncoderOutput, inputs: Sequence[ModelInput]) -> list[FloatArray]:
    """Each pair's logit [1]."""
    return list(out.host(out.sequence_logits().float()))


def _finish(out: FloatArray, enc: Encoded, text: str, options: RerankOptions, served: Served) -> FloatArray:
    logit = out.astype(np.float32, copy=True)
    logit.flags.writeable = False  # shared through the cache
    return logit


def options_from_request(request: pb.RerankRequest, model: ModelDescription) -> RerankOptions:
    """Options of a RerankRequest served by a cross-encoder."""
    return RerankOptions(query=request.query, truncate=request.truncate)


def response(reply: RerankReply, order: Sequence[int], documents: Sequence[str] = ()) -> pb.RerankResponse:
    """A RerankResponse's results, in `order` (see `top`), and method; the documents' texts where given. The
    servicer adds model, id and usage."""
    return pb.RerankResponse(
        results=[
            pb.RerankResult(
                index=i,
                relevance_score=reply.scores[i],
                raw_score=reply.raw_scores[i],
                document=documents[i] if documents else "",
            )
            for i in order
        ],
        method=reply.method,
    )


def _all_in_input_order(results: Sequence[FloatArray], model: ModelDescription) -> pb.RerankResponse:
    """Every document's score in input order, for the generic task path (the Rerank RPC ranks with `response`)."""
    return response(from_logits(results, 0), range(len(results)))


def _oip_options(params: Parameters, truncate: bool, model: ModelDescription) -> RerankOptions:
    query = parameter(params, "query", str)
    if not query:
        raise InvalidArgument("parameters['query']: a rerank model pairs each 'text' element with a query; set it")
    return RerankOptions(query=str(query), truncate=truncate)


def _tensors(results: Sequence[FloatArray], model: ModelDescription) -> list[OutputTensor]:
    reply = from_logits(results, 0)
    score = np.asarray(reply.scores, dtype="<f4")
    logit = np.asarray(reply.raw_scores, dtype="<f4")
    return [
        OutputTensor("score", "FP32", score.shape, score.tobytes()),
        OutputTensor("logit", "FP32", logit.shape, logit.tobytes()),
    ]


SPEC: TaskSpec[RerankOptions, FloatArray] = TaskSpec(
    task=Task.RERANK,
    options=RerankOptions,
    defaults=lambda model: RerankOptions(),
    model_class="AutoModelForSequenceClassification",
    check=any_options,
    prepare=_prepare,
    head=head,
    finish=_finish,
    api=TaskApi("Rerank", options_from_request, _all_in_input_order),
    oip=TaskOip((OipOutput("score", "FP32", (-1,)), OipOutput("logit", "FP32", (-1,))), _oip_options, _tensors),
    paired_with=lambda options: options.query,
)
