"""OpenAI's embeddings API: POST /v1/embeddings and GET /v1/models, on the served embedding model.

`input` may be a string, a list of strings, a list of token ids or a list of token-id lists. Token ids are fed
to the model as they are (no decode and re-encode), read as ids of the served model's own vocabulary with its
special tokens added; an id outside it is a 400. `model` must be the served model's name; an empty one is
accepted (as in gRPC) and any other is a 404. `usage` counts the tokens the server computed: inputs answered
from the result cache add none.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from model_server.dataplane import DataPlane, with_article
from model_server.errors import FailedPrecondition
from model_server.http.app import Deadline, Plane
from model_server.http.encoding import JsonResponse, base64_floats, check_dimensions, float_list, shorten
from model_server.tasks import Task, spec
from model_server.tokenization import TokenIds

router = APIRouter(tags=["OpenAI"])


class EmbeddingRequest(BaseModel):
    """The body of POST /v1/embeddings."""

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, texts, token ids of the served vocabulary, or lists of them"
    )
    model: str = Field(description="the served model's name (see GET /v1/models)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="truncate each vector to this width, re-normalised")
    user: str | None = None


class Embedding(BaseModel):
    """One input's vector (a list of floats, or base64 of little-endian float32)."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Tokens the request computed."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """The answer of POST /v1/embeddings."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    """A served model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """The answer of GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[Model]


def inputs_of(value: str | list[str] | list[int] | list[list[int]]) -> list[str | TokenIds]:
    """The request's inputs as texts and token-id inputs, in order."""
    if isinstance(value, str):
        return [value]
    items: list[Any] = list(value)
    if items and all(isinstance(item, int) for item in items):
        return [TokenIds(tuple(items))]
    return [item if isinstance(item, str) else TokenIds(tuple(item)) for item in items]


def require_embedding(plane: DataPlane, route: str) -> None:
    """FailedPrecondition (400) unless the served model is an embedding model."""
    if plane.model.task is not Task.EMBEDDING:
        raise FailedPrecondition(
            f"{route} needs an embedding model; {plane.model.name!r} is {with_article(plane.model.task.value)} model"
        )


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def create_embeddings(body: EmbeddingRequest, plane: Plane, deadline: Deadline) -> JsonResponse:
    """Embeds the inputs with the served model."""
    plane.check_model(body.model)
    require_embedding(plane, "POST /v1/embeddings")
    dimensions = check_dimensions(body.dimensions, plane.model.dimensions)
    options = spec(Task.EMBEDDING).defaults(plane.model)
    reply = await plane.infer(inputs_of(body.input), options, deadline, field="input")
    encode = base64_floats if body.encoding_format == "base64" else float_list
    data = [
        {"object": "embedding", "index": i, "embedding": encode(shorten(v, dimensions, options.normalize))}
        for i, v in enumerate(reply.results)
    ]
    usage = {"prompt_tokens": reply.tokens, "total_tokens": reply.tokens}
    return JsonResponse({"object": "list", "data": data, "model": plane.model.name, "usage": usage})


def _model(plane: DataPlane, request: Request) -> dict[str, object]:
    return {"id": plane.model.name, "object": "model", "created": request.app.state.started, "owned_by": "bertmesh"}


@router.get("/v1/models", response_model=ModelList)
async def list_models(plane: Plane, request: Request) -> JsonResponse:
    """The served model."""
    return JsonResponse({"object": "list", "data": [_model(plane, request)]})


@router.get("/v1/models/{model}", response_model=Model)
async def retrieve_model(model: str, plane: Plane, request: Request) -> JsonResponse:
    """The served model, if `model` names it (404 otherwise)."""
    plane.check_model(model, required=True)
    return JsonResponse(_model(plane, request))
