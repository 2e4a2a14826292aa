"""Sequence classification: label probabilities per input, from the model's sequence-classification head.

Options: top_k (0: every label, at most MAX_TOP_K), logits on request, truncation. Scores are softmax, or
sigmoid for multi-label models. Served by Classify (bertmesh.v1) and by ModelInfer's outputs 'probabilities'
FP32 [N, C] and 'label' BYTES [N].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_server.description import ModelDescription
from model_server.oip_tensors import OutputTensor, Parameters, encode_bytes_elements
from model_server.postprocess import label_name, sigmoid, softmax
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
    class_defaults,
    plain_input,
    requested_truncation,
)
from model_server.tokenization import Encoded
from model_server.validation import check_top_k

MAX_TOP_K = 100  # beyond the label count it simply returns every label


@dataclass(frozen=True, slots=True)
class ClassifyOptions:
    """Options of a Classify request; top_k 0 means every label."""

    top_k: int = 0
    truncate: bool = False
    return_logits: bool = False


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


def _check(options: ClassifyOptions) -> None:
    check_top_k(options.top_k, MAX_TOP_K)


def head(out: EncoderOutput, inputs: Sequence[ModelInput]) -> list[FloatArray]:
    """Each input's logits [labels]."""
    return list(out.host(out.sequence_logits().float()))


def classification(
    logits: FloatArray, labels: Sequence[str], *, multi_label: bool, top_k: int, return_logits: bool
) -> Classification:
    """Label probabilities of one input, best first, cut to top_k (0: all)."""
    scores = sigmoid(logits) if multi_label else softmax(logits)
    order = np.argsort(-scores, kind="stable")
    if top_k:
        order = order[:top_k]
    return Classification(
        labels=tuple(LabelScore(label_name(labels, int(i)), int(i), float(scores[i])) for i in order),
        logits=logits.copy() if return_logits else None,
    )


def _finish(out: FloatArray, enc: Encoded, text: str, options: ClassifyOptions, served: Served) -> Classification:
    model = served.model
    return classification(
        out, model.labels, multi_label=model.multi_label, top_k=options.top_k, return_logits=options.return_logits
    )


def options_from_request(request: pb.ClassifyRequest, model: ModelDescription) -> ClassifyOptions:
    """Options of a Classify request."""
    truncate = requested_truncation(request, model)
    return ClassifyOptions(top_k=request.top_k, truncate=truncate, return_logits=request.return_logits)


def response(results: Sequence[Classification], model: ModelDescription) -> pb.ClassifyResponse:
    """A ClassifyResponse."""
    return pb.ClassifyResponse(
        results=[
            pb.Classification(
                labels=[pb.LabelScore(label=s.label, index=s.index, score=s.score) for s in c.labels],
                logits=c.logits.tolist() if c.logits is not None else [],
            )
            for c in results
        ]
    )


def _oip_options(params: Parameters, truncate: bool, model: ModelDescription) -> ClassifyOptions:
    return ClassifyOptions(truncate=truncate)


def _tensors(results: Sequence[Classification], model: ModelDescription) -> list[OutputTensor]:
    """'probabilities' in label-index order and 'label', the best label."""
    probs = np.zeros((len(results), len(model.labels)), dtype="<f4")
    for row, result in enumerate(results):
        for score in result.labels:
            probs[row, score.index] = score.score
    best = [r.labels[0].label.encode() if r.labels else b"" for r in results]
    return [
        OutputTensor("probabilities", "FP32", probs.shape, probs.tobytes()),
        OutputTensor("label", "BYTES", (len(results),), encode_bytes_elements(best)),
    ]


SPEC: TaskSpec[ClassifyOptions, Classification] = TaskSpec(
    task=Task.SEQUENCE_CLASSIFICATION,
    options=ClassifyOptions,
    defaults=class_defaults(ClassifyOptions),
    model_class="AutoModelForSequenceClassification",
    check=_check,
    prepare=plain_input,
    head=head,
    finish=_finish,
    api=TaskApi("Classify", options_from_request, response),
    oip=TaskOip(
        (OipOutput("probabilities", "FP32", (-1, -1)), OipOutput("label", "BYTES", (-1,))), _oip_options, _tensors
    ),
)
