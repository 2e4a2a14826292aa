"""text-embeddings-inference's REST routes: POST /embed, /predict, /tokenize and / ; GET /health and /info.

Shapes follow TEI's router (router/src/http/types.rs). Where bertmesh cannot do what TEI does, it says so
rather than guess: left truncation, prompts and sentence pairs in /predict are refused (422).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError

from model_server.dataplane import DataPlane, with_article
from model_server.errors import FailedPrecondition, InvalidArgument, NotReady
from model_server.http.app import Deadline, Plane
from model_server.http.encoding import JsonResponse, check_dimensions, float_list, shorten
from model_server.http.errors import Api, validation_error
from model_server.http.openai_routes import require_embedding
from model_server.tasks import Classification, ClassifyOptions, EmbedOptions, Task
from model_server.tokenization import Encoded

router = APIRouter(tags=["text-embeddings-inference"])

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}
_TOKENIZATION_WORKERS = 2  # DataPlane's tokenizer threads


class EmbedRequest(BaseModel):
    """The body of POST /embed."""

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: str = Field(default="right", description="right only; left is refused")
    prompt_name: str | None = Field(default=None, description="refused: no prompts are configured")
    dimensions: int | None = None


class PredictRequest(BaseModel):
    """The body of POST /predict: a text, or a batch of one-text lists (TEI's pairs are refused)."""

    inputs: str | list[str] | list[list[str]]
    truncate: bool | None = None
    raw_scores: bool = False


class TokenizeRequest(BaseModel):
    """The body of POST /tokenize."""

    inputs: str | list[str]
    add_special_tokens: bool = True


class Prediction(BaseModel):
    """One label's score."""

    score: float
    label: str


class SimpleToken(BaseModel):
    """One token; start and stop are character offsets in the input (null for special tokens)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


def _texts(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else inputs


@router.post("/embed", response_model=list[list[float]])
async def embed(body: EmbedRequest, plane: Plane, deadline: Deadline) -> JsonResponse:
    """Embeds the inputs: one vector per input."""
    require_embedding(plane, "POST /embed")
    if body.truncation_direction.lower() != "right":
        raise InvalidArgument(
            f"truncation_direction: {body.truncation_direction!r} is not supported; inputs are cut on the right"
        )
    if body.prompt_name is not None:
        raise InvalidArgument(f"prompt_name: {body.prompt_name!r}: this server has no prompts configured")
    dimensions = check_dimensions(body.dimensions, plane.model.dimensions)
    options = EmbedOptions(plane.model.default_pooling, body.normalize, bool(body.truncate))
    reply = await plane.infer(_texts(body.inputs), options, deadline)
    return JsonResponse([float_list(shorten(v, dimensions, body.normalize)) for v in reply.results])


def _pairs_refused(inputs: str | list[str] | list[list[str]]) -> tuple[list[str], bool]:
    """The texts of a /predict body and whether it was a batch; InvalidArgument for sentence pairs."""
    if isinstance(inputs, str):
        return [inputs], False
    if all(isinstance(item, str) for item in inputs):
        if len(inputs) == 1:
            return [inputs[0]], False  # type: ignore[list-item]
        raise InvalidArgument("inputs: sentence pairs are not supported; send a text, or a batch [[text], ...]")
    texts = []
    for i, item in enumerate(inputs):
        if isinstance(item, str) or len(item) != 1:
            raise InvalidArgument(f"inputs[{i}]: each batch item is one text in a list ([text]); pairs are refused")
        texts.append(item[0])
    return texts, True


def _predictions(result: Classification, raw_scores: bool) -> list[dict[str, Any]]:
    if raw_scores and result.logits is not None:
        logits = result.logits
        ranked = sorted(result.labels, key=lambda label: -float(logits[label.index]))
        return [{"score": float(logits[label.index]), "label": label.label} for label in ranked]
    return [{"score": label.score, "label": label.label} for label in result.labels]


@router.post("/predict", response_model=list[Prediction] | list[list[Prediction]])
async def predict(body: PredictRequest, plane: Plane, deadline: Deadline) -> JsonResponse:
    """Classifies the inputs: every label's score, best first (raw_scores: the logits)."""
    if plane.model.task is not Task.SEQUENCE_CLASSIFICATION:
        raise FailedPrecondition(
            f"POST /predict needs a sequence-classification model; {plane.model.name!r} is "
            f"{with_article(plane.model.task.value)} model"
        )
    texts, batch = _pairs_refused(body.inputs)
    options = ClassifyOptions(truncate=bool(body.truncate), return_logits=body.raw_scores)
    reply = await plane.infer(texts, options, deadline)
    answers = [_predictions(result, body.raw_scores) for result in reply.results]
    return JsonResponse(answers if batch else answers[0])


def _tokens(text: str, encoding: Encoded, plane: DataPlane, special_tokens: bool) -> list[dict[str, Any]]:
    tokens = []
    for token_id, (start, stop), special in zip(encoding.ids, encoding.offsets, encoding.special, strict=True):
        if special and not special_tokens:
            continue
        if special:
            tokens.append(
                {"id": token_id, "text": plane.token_string(token_id), "special": True, "start": None, "stop": None}
            )
        else:
            tokens.append({"id": token_id, "text": text[start:stop], "special": False, "start": start, "stop": stop})
    return tokens


@router.post("/tokenize", response_model=list[list[SimpleToken]])
async def tokenize(body: TokenizeRequest, plane: Plane) -> JsonResponse:
    """The tokens of each input, as the served model's tokenizer cuts them."""
    texts = _texts(body.inputs)
    encodings = await plane.tokenize(texts)
    return JsonResponse(
        [_tokens(text, enc, plane, body.add_special_tokens) for text, enc in zip(texts, encodings, strict=True)]
    )


@router.post("/", response_model=list[list[float]] | list[Prediction] | list[list[Prediction]])
async def by_task(request: Request, plane: Plane, deadline: Deadline) -> JsonResponse:
    """TEI's root route (what huggingface_hub.InferenceClient(model=url) posts to): /embed or /predict by the
    served model's task."""
    body = await request.json()
    try:
        if plane.model.task is Task.SEQUENCE_CLASSIFICATION:
            return await predict(PredictRequest.model_validate(body), plane, deadline)
        return await embed(EmbedRequest.model_validate(body), plane, deadline)
    except ValidationError as exc:
        error = validation_error(list(exc.errors()), Api.TEI)  # type: ignore[arg-type]
        return JsonResponse(error.body, status_code=error.status)


@router.get("/health", status_code=200)
async def health(request: Request) -> JsonResponse:
    """200 once the model is loaded and warm; 503 while loading and from SIGTERM on."""
    try:
        request.app.state.plane()
    except NotReady as exc:
        return JsonResponse({"error": exc.message, "error_type": "Unhealthy"}, status_code=503)
    return JsonResponse(None)


def _model_type(plane: DataPlane) -> dict[str, Any]:
    model = plane.model
    if model.task is Task.SEQUENCE_CLASSIFICATION:
        id2label = {str(i): label for i, label in enumerate(model.labels)}
        return {"classifier": {"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}}
    return {"embedding": {"pooling": model.default_pooling.value}}


@router.get("/info")
async def info(plane: Plane, request: Request) -> JsonResponse:
    """TEI's description of the served model and the server's limits."""
    model, limits, batching = plane.model, plane.model.limits, plane.model.batching
    return JsonResponse(
        {
            "model_id": model.name,
            "model_sha": model.revision,
            "model_dtype": _DTYPES.get(model.precision, model.precision),
            "model_type": _model_type(plane),
            "max_concurrent_requests": batching.max_batch_requests,
            "max_input_length": limits.max_tokens_per_input,
            "max_batch_tokens": batching.max_batch_tokens,
            "max_batch_requests": batching.max_batch_requests,
            "max_client_batch_size": limits.max_inputs_per_request,
            "auto_truncate": False,
            "tokenization_workers": _TOKENIZATION_WORKERS,
            "version": request.app.state.version,
            "sha": None,
            "docker_label": None,
        }
    )
