"""Reranking over HTTP: Cohere's POST /v1/rerank and /v2/rerank, and text-embeddings-inference's POST /rerank.

All three call `DataPlane.rerank`: a cross-encoder scores each (query, document) pair, an embedding model the
cosine of their embeddings. Cohere's answers name the method in `meta.method` (an extra field Cohere's SDK
keeps) and count `search_units` one per 100 documents, as Cohere bills; like Cohere, they cut long documents
rather than refuse them. TEI's /rerank refuses them unless `truncate` is set, as TEI does.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from model_server.dataplane import DataPlane
from model_server.http.app import Deadline, Plane
from model_server.http.encoding import JsonResponse
from model_server.tasks.rerank import top

router = APIRouter(tags=["rerank"])

DOCUMENTS_PER_SEARCH_UNIT = 100


class Document(BaseModel):
    """A v1 document given as an object."""

    text: str


class CohereRerankRequest(BaseModel):
    """The body of POST /v1/rerank and /v2/rerank (Cohere's shape)."""

    model: str = ""
    query: str
    documents: list[str | Document] = Field(description="texts; /v1/rerank also takes objects with `text`")
    top_n: int | None = None
    return_documents: bool = False
    max_tokens_per_doc: int | None = Field(default=None, description="accepted; the server's limit applies")


class TeiRerankRequest(BaseModel):
    """The body of POST /rerank (text-embeddings-inference's shape)."""

    query: str
    texts: list[str]
    truncate: bool | None = None
    raw_scores: bool = False
    return_text: bool = False


class RerankResult(BaseModel):
    """One ranked document."""

    index: int
    relevance_score: float
    document: Document | None = None


class CohereRerankResponse(BaseModel):
    """The answer of POST /v1/rerank and /v2/rerank."""

    id: str
    results: list[RerankResult]
    meta: dict[str, Any]


class Rank(BaseModel):
    """One ranked text (TEI)."""

    index: int
    score: float
    text: str | None = None


async def _cohere(body: CohereRerankRequest, plane: DataPlane, deadline: float | None, version: str) -> JsonResponse:
    plane.check_model(body.model)
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    # Cohere truncates long documents rather than refusing them.
    reply = await plane.rerank(body.query, texts, truncate=True, deadline=deadline)
    results = []
    for i in top(reply.scores, body.top_n):
        result: dict[str, Any] = {"index": i, "relevance_score": reply.scores[i]}
        if body.return_documents:
            result["document"] = {"text": texts[i]}
        results.append(result)
    meta = {
        "api_version": {"version": version},
        "billed_units": {"search_units": math.ceil(len(texts) / DOCUMENTS_PER_SEARCH_UNIT)},
        "method": reply.method,
    }
    return JsonResponse({"id": str(uuid.uuid4()), "results": results, "meta": meta})


@router.post("/v1/rerank", response_model=CohereRerankResponse)
async def rerank_v1(body: CohereRerankRequest, plane: Plane, deadline: Deadline) -> JsonResponse:
    """Ranks the documents by relevance to the query (Cohere v1)."""
    return await _cohere(body, plane, deadline, "1")


@router.post("/v2/rerank", response_model=CohereRerankResponse)
async def rerank_v2(body: CohereRerankRequest, plane: Plane, deadline: Deadline) -> JsonResponse:
    """Ranks the documents by relevance to the query (Cohere v2)."""
    return await _cohere(body, plane, deadline, "2")


@router.post("/rerank", response_model=list[Rank])
async def rerank_tei(body: TeiRerankRequest, plane: Plane, deadline: Deadline) -> JsonResponse:
    """Ranks the texts by relevance to the query, best first (text-embeddings-inference)."""
    reply = await plane.rerank(
        body.query, body.texts, truncate=bool(body.truncate), deadline=deadline, fields=("query", "texts")
    )
    scores = reply.raw_scores if body.raw_scores else reply.scores
    ranks = []
    for i in top(reply.scores, None):
        rank: dict[str, Any] = {"index": i, "score": scores[i]}
        if body.return_text:
            rank["text"] = body.texts[i]
        ranks.append(rank)
    return JsonResponse(ranks)
