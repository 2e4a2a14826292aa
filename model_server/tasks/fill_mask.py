"""Fill-mask: the likeliest tokens for each mask token of each input, from the model's language-model head.

Options: top_k (0 or absent: DEFAULT_TOP_K; at most MAX_TOP_K), truncation. Each input needs 1 to
MAX_MASKS_PER_INPUT mask tokens; the head runs on the masked positions only. Served by FillMask (bertmesh.v1)
and by ModelInfer's output 'predictions' BYTES [N] (per input a JSON list, one per mask, of candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model_server.description import ModelDescription
from model_server.errors import InvalidArgument
from model_server.oip_tensors import OutputTensor, Parameters, json_elements, parameter
from model_server.postprocess import softmax
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
    requested_truncation,
    split_rows,
)
from model_server.tokenization import Encoded
from model_server.validation import check_top_k

DEFAULT_TOP_K = 5
MAX_TOP_K = 100
MAX_MASKS_PER_INPUT = 16  # each mask returns a vocabulary of logits from the model


@dataclass(frozen=True, slots=True)
class FillMaskOptions:
    """Options of a FillMask request."""

    top_k: int = DEFAULT_TOP_K
    truncate: bool = False


@dataclass(frozen=True, slots=True)
class TokenScore:
    """A candidate token for a mask."""

    token_id: int
    token: str
    score: float


MaskCandidates = tuple[tuple[TokenScore, ...], ...]


def options(top_k: int, truncate: bool) -> FillMaskOptions:
    """Options from a request's top_k, where 0 (the wire's absent value) means DEFAULT_TOP_K."""
    return FillMaskOptions(top_k=top_k or DEFAULT_TOP_K, truncate=truncate)


def _check(options: FillMaskOptions) -> None:
    check_top_k(options.top_k, MAX_TOP_K)


def _prepare(enc: Encoded, index: int, options: FillMaskOptions, served: Served) -> ModelInput:
    """The input with its mask positions; INVALID_ARGUMENT without a mask or with too many."""
    mask_token = served.model.mask_token
    positions = tuple(p for p, token in enumerate(enc.ids) if token == served.mask_id)
    if not positions:
        cut = " after truncation" if enc.truncated else ""
        raise InvalidArgument(f"inputs[{index}]: no {mask_token} token{cut}")
    if len(positions) > MAX_MASKS_PER_INPUT:
        raise InvalidArgument(
            f"inputs[{index}]: {len(positions)} {mask_token} tokens exceed the limit of {MAX_MASKS_PER_INPUT} per input"
        )
    return ModelInput(enc.ids, positions=positions)


def head(out: EncoderOutput, inputs: Sequence[ModelInput]) -> list[FloatArray]:
    """Each input's vocabulary logits at its mask positions [masks, vocabulary]."""
    rows = [start + pos for start, item in zip(out.starts, inputs, strict=True) for pos in item.positions or ()]
    logits = out.host(out.vocabulary_logits(rows).float())
    return split_rows(logits, [len(item.positions or ()) for item in inputs])


def mask_candidates(mask_logits: FloatArray, top_k: int, token_text: Callable[[int], str]) -> MaskCandidates:
    """Top-k candidate tokens for each mask row of logits, with softmax probabilities."""
    result = []
    for row in mask_logits:
        probs = softmax(row)
        k = min(top_k, probs.shape[0])
        top = np.argpartition(-probs, k - 1)[:k]
        top = top[np.argsort(-probs[top], kind="stable")]
        result.append(tuple(TokenScore(int(t), token_text(int(t)), float(probs[t])) for t in top))
    return tuple(result)


def _finish(out: FloatArray, enc: Encoded, text: str, options: FillMaskOptions, served: Served) -> MaskCandidates:
    return mask_candidates(out, options.top_k, served.token_text)


def options_from_request(request: pb.FillMaskRequest, model: ModelDescription) -> FillMaskOptions:
    """Options of a FillMask request."""
    return options(request.top_k, requested_truncation(request, model))


def response(results: Sequence[MaskCandidates], model: ModelDescription) -> pb.FillMaskResponse:
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
            for masks in results
        ]
    )


def _oip_options(params: Parameters, truncate: bool, model: ModelDescription) -> FillMaskOptions:
    top_k = parameter(params, "top_k", int)
    return options(top_k if isinstance(top_k, int) else 0, truncate)


def _tensors(results: Sequence[MaskCandidates], model: ModelDescription) -> list[OutputTensor]:
    """'predictions': per input a JSON list (one per mask) of {token_id, token, score}."""
    documents = [
        [[{"token_id": c.token_id, "token": c.token, "score": c.score} for c in mask] for mask in masks]
        for masks in results
    ]
    return [json_elements("predictions", documents)]


SPEC: TaskSpec[FillMaskOptions, MaskCandidates] = TaskSpec(
    task=Task.FILL_MASK,
    options=FillMaskOptions,
    defaults=class_defaults(FillMaskOptions),
    model_class="AutoModelForMaskedLM",
    check=_check,
    prepare=_prepare,
    head=head,
    finish=_finish,
    api=TaskApi("FillMask", options_from_request, response),
    oip=TaskOip((OipOutput("predictions", "BYTES", (-1,)),), _oip_options, _tensors),
)
