"""Token classification: labelled entities per input, from the model's per-token head, grouped as the Hugging
Face pipeline groups them.

Options: the aggregation strategy (default simple), whether 'O' entities are kept, truncation. Served by
ClassifyTokens (bertmesh.v1) and by ModelInfer's output 'entities' BYTES [N] (a JSON list per input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from model_server.description import ModelDescription
from model_server.errors import InvalidArgument
from model_server.oip_tensors import OutputTensor, Parameters, json_elements, parameter
from model_server.postprocess import label_name, softmax
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
    choose,
    class_defaults,
    plain_input,
    requested_truncation,
    split_rows,
)
from model_server.tokenization import Encoded

OUTSIDE_LABELS = frozenset({"O"})


class Aggregation(Enum):
    """How token-classification predictions are grouped into entities (Hugging Face pipeline strategies)."""

    NONE = "none"
    SIMPLE = "simple"
    FIRST = "first"
    AVERAGE = "average"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class TokenClassifyOptions:
    """Options of a ClassifyTokens request."""

    aggregation: Aggregation = Aggregation.SIMPLE
    truncate: bool = False
    include_outside: bool = False


@dataclass(frozen=True, slots=True)
class Entity:
    """A labelled span of an input; start and end are character offsets, end exclusive."""

    label: str
    score: float
    start: int
    end: int
    text: str


EntityList = tuple[Entity, ...]

_AGGREGATION_IN = {
    pb.AGGREGATION_UNSPECIFIED: Aggregation.SIMPLE,
    pb.AGGREGATION_NONE: Aggregation.NONE,
    pb.AGGREGATION_SIMPLE: Aggregation.SIMPLE,
    pb.AGGREGATION_FIRST: Aggregation.FIRST,
    pb.AGGREGATION_AVERAGE: Aggregation.AVERAGE,
    pb.AGGREGATION_MAX: Aggregation.MAX,
}
_AGGREGATIONS = {a.value: a for a in Aggregation}


def head(out: EncoderOutput, inputs: Sequence[ModelInput]) -> list[FloatArray]:
    """Each input's per-token logits [tokens, labels]."""
    return split_rows(out.host(out.token_logits().float()), out.lengths)


def _finish(out: FloatArray, enc: Encoded, text: str, options: TokenClassifyOptions, served: Served) -> EntityList:
    return entities(out, enc, text, served.model.labels, options.aggregation, include_outside=options.include_outside)


def _split_tag(label: str) -> tuple[str, str]:
    """('B' | 'I', entity type) of an IOB label; labels without a prefix count as a continuation."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


Piece = tuple[str, float, int, int]  # label, score, start, end


def _token_entities(probs: FloatArray, encoded: Encoded, labels: Sequence[str]) -> list[Piece]:
    """(label, score, start, end, word) of each non-special token, by the argmax label."""
    out = []
    for t, (special, (start, end)) in enumerate(zip(encoded.special, encoded.offsets, strict=True)):
        if special or start == end:
            continue
        best = int(np.argmax(probs[t]))
        out.append((label_name(labels, best), float(probs[t][best]), start, end))
    return out


def _word_entities(probs: FloatArray, encoded: Encoded, labels: Sequence[str], strategy: Aggregation) -> list[Piece]:
    """One (label, score, start, end, word) per word, from its sub-tokens by the FIRST/AVERAGE/MAX rule."""
    words: dict[int, list[int]] = {}
    for t, (special, word) in enumerate(zip(encoded.special, encoded.word_ids, strict=True)):
        if not special and word is not None and encoded.offsets[t][0] != encoded.offsets[t][1]:
            words.setdefault(word, []).append(t)
    out = []
    for tokens in words.values():
        rows = probs[tokens]
        if strategy is Aggregation.FIRST:
            scores = rows[0]
        elif strategy is Aggregation.MAX:
            scores = rows[int(np.argmax(rows.max(axis=1)))]
        else:
            scores = rows.mean(axis=0)
        best = int(np.argmax(scores))
        start, end = encoded.offsets[tokens[0]][0], encoded.offsets[tokens[-1]][1]
        out.append((label_name(labels, best), float(scores[best]), start, end))
    return out


def entities(
    logits: FloatArray,
    encoded: Encoded,
    text: str,
    labels: Sequence[str],
    strategy: Aggregation,
    *,
    include_outside: bool,
) -> EntityList:
    """Entities of one input from its per-token logits, grouped as the Hugging Face pipeline does."""
    probs = softmax(logits)
    if strategy in (Aggregation.NONE, Aggregation.SIMPLE):
        pieces = _token_entities(probs, encoded, labels)
    else:
        pieces = _word_entities(probs, encoded, labels, strategy)
    if strategy is Aggregation.NONE:
        found = [Entity(label, score, s, e, text[s:e]) for label, score, s, e in pieces]
    else:
        found = _group(pieces, text)
    return tuple(e for e in found if include_outside or e.label not in OUTSIDE_LABELS)


def _group(pieces: Sequence[Piece], text: str) -> list[Entity]:
    """Merges adjacent pieces of the same entity type unless a piece starts a new one (B-)."""
    groups: list[list[Piece]] = []
    for piece in pieces:
        if groups:
            bi, tag = _split_tag(piece[0])
            _, last_tag = _split_tag(groups[-1][-1][0])
            if tag == last_tag and bi != "B":
                groups[-1].append(piece)
                continue
        groups.append([piece])
    result = []
    for group in groups:
        _, tag = _split_tag(group[0][0])
        start, end = group[0][2], group[-1][3]
        score = float(np.mean([p[1] for p in group]))
        result.append(Entity(tag, score, start, end, text[start:end]))
    return result


def options_from_request(request: pb.ClassifyTokensRequest, model: ModelDescription) -> TokenClassifyOptions:
    """Options of a ClassifyTokens request."""
    if request.aggregation not in _AGGREGATION_IN:
        raise InvalidArgument(f"aggregation: unknown value {request.aggregation}")
    return TokenClassifyOptions(
        aggregation=_AGGREGATION_IN[request.aggregation],
        truncate=requested_truncation(request, model),
        include_outside=request.include_outside,
    )


def response(results: Sequence[EntityList], model: ModelDescription) -> pb.ClassifyTokensResponse:
    """A ClassifyTokensResponse."""
    return pb.ClassifyTokensResponse(
        results=[
            pb.TokenClassification(
                entities=[pb.Entity(label=e.label, score=e.score, start=e.start, end=e.end, text=e.text) for e in found]
            )
            for found in results
        ]
    )


def _oip_options(params: Parameters, truncate: bool, model: ModelDescription) -> TokenClassifyOptions:
    aggregation = parameter(params, "aggregation", str)
    return TokenClassifyOptions(
        aggregation=Aggregation.SIMPLE
        if aggregation is None
        else choose(aggregation, _AGGREGATIONS, "parameters['aggregation']"),
        truncate=truncate,
    )


def _tensors(results: Sequence[EntityList], model: ModelDescription) -> list[OutputTensor]:
    """'entities': per input a JSON list of {label, score, start, end, text}."""
    documents = [
        [{"label": e.label, "score": e.score, "start": e.start, "end": e.end, "text": e.text} for e in found]
        for found in results
    ]
    return [json_elements("entities", documents)]


SPEC: TaskSpec[TokenClassifyOptions, EntityList] = TaskSpec(
    task=Task.TOKEN_CLASSIFICATION,
    options=TokenClassifyOptions,
    defaults=class_defaults(TokenClassifyOptions),
    model_class="AutoModelForTokenClassification",
    check=any_options,
    prepare=plain_input,
    head=head,
    finish=_finish,
    api=TaskApi("ClassifyTokens", options_from_request, response),
    oip=TaskOip((OipOutput("entities", "BYTES", (-1,)),), _oip_options, _tensors),
)
