"""Python client SDK of bertmesh.v1 for internal services: grpc + numpy only (no torch), deadlines on every call.

from model_server.client import BertmeshClient
with BertmeshClient("127.0.0.1:50051") as client:
    vectors = client.embed(["hello world"])  # numpy array [1, 384]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.tasks import Entity, FloatArray, LabelScore, TokenScore

DEFAULT_TIMEOUT = 30.0
_POOLING = {"mean": pb.POOLING_MEAN, "cls": pb.POOLING_CLS}
_AGGREGATION = {
    "none": pb.AGGREGATION_NONE,
    "simple": pb.AGGREGATION_SIMPLE,
    "first": pb.AGGREGATION_FIRST,
    "average": pb.AGGREGATION_AVERAGE,
    "max": pb.AGGREGATION_MAX,
}
AGGREGATIONS = tuple(_AGGREGATION)  # the names classify_tokens takes

# UNAVAILABLE (loading, draining, connection refused) is retried with backoff; RESOURCE_EXHAUSTED is not:
# an overloaded server must see less traffic, not more.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "bertmesh.v1.InferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RankedDocument:
    """One document's relevance: its index in the request, score, raw score (logit or cosine), text if asked."""

    index: int
    score: float
    raw_score: float
    document: str = ""


@dataclass(frozen=True, slots=True)
class Ranking:
    """Documents best first, how they were scored ("cross-encoder" or "cosine") and the tokens computed."""

    results: list[RankedDocument]
    method: str
    tokens: int


def split_inputs(texts: Sequence[str], limit: int) -> list[Sequence[str]]:
    """Consecutive slices of at most `limit` texts, in order; the whole as one slice when `limit` is 0 (none)."""
    if limit <= 0 or len(texts) <= limit:
        return [texts]
    return [texts[start : start + limit] for start in range(0, len(texts), limit)]


def _vectors(response: pb.EmbedResponse) -> FloatArray:
    if not response.embeddings:
        return np.zeros((0, response.dimensions), dtype=np.float32)
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def embed_request(
    texts: Sequence[str],
    *,
    pooling: str | None,
    normalize: bool | None,
    truncate: bool | None,
    model: str,
    request_id: str,
) -> pb.EmbedRequest:
    """Builds an EmbedRequest; pooling is 'mean', 'cls' or None (the model's own); truncate None: the server's
    default (refuse over-long inputs, or cut them under --auto-truncate)."""
    request = pb.EmbedRequest(inputs=list(texts), truncate=truncate, model=model, id=request_id)
    if pooling is not None:
        request.pooling = _POOLING[pooling]
    if normalize is not None:
        request.normalize = normalize
    return request


class BertmeshClient:
    """A blocking, thread-safe client over one channel; raises grpc.RpcError with the server's status."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        model: str = "",
        split_requests: bool = False,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        """split_requests: send more inputs than the server's max_inputs_per_request as several requests (in
        order, one after another) instead of having the server refuse them. metadata: gRPC metadata sent with
        every call, e.g. `[("x-bertmesh-track", "canary")]` to reach a canary through its header pin."""
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.max_receive_message_length", -1)]
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (*metadata, *((("authorization", f"Bearer {token}"),) if token else ()))
        self.timeout = timeout
        self.model = model
        self.split_requests = split_requests
        self._max_inputs: int | None = None

    def __enter__(self) -> BertmeshClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        return method(request, timeout=timeout or self.timeout, metadata=self._metadata)

    def max_inputs_per_request(self) -> int:
        """The server's limit on inputs per request (0: none), asked once per client."""
        if self._max_inputs is None:
            self._max_inputs = int(self.model_info().limits.max_inputs_per_request)
        return self._max_inputs

    def _per_slice(self, texts: Sequence[str], call: Callable[[Sequence[str]], list[T]]) -> list[T]:
        if not self.split_requests or len(texts) <= 1:
            return call(texts)
        return [item for part in split_inputs(texts, self.max_inputs_per_request()) for item in call(part)]

    def embed(
        self,
        texts: Sequence[str],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        timeout: float | None = None,
    ) -> FloatArray:
        """Vectors [len(texts), dimensions], float32."""

        def call(part: Sequence[str]) -> list[FloatArray]:
            request = embed_request(
                part, pooling=pooling, normalize=normalize, truncate=truncate, model=self.model, request_id=""
            )
            return [_vectors(self._call(self._stub.Embed, request, timeout))]

        parts = self._per_slice(texts, call)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def embed_stream(
        self,
        batches: Iterable[Sequence[str]],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        timeout: float | None = None,
    ) -> Iterator[FloatArray]:
        """Embeds many batches over one stream, yielding each batch's vectors in order (bulk jobs)."""
        requests = (
            embed_request(
                batch, pooling=pooling, normalize=normalize, truncate=truncate, model=self.model, request_id=str(n)
            )
            for n, batch in enumerate(batches)
        )
        for response in self._stub.EmbedStream(requests, timeout=timeout, metadata=self._metadata):
            yield _vectors(response)

    def classify(
        self, texts: Sequence[str], *, top_k: int = 0, truncate: bool | None = None, timeout: float | None = None
    ) -> list[list[LabelScore]]:
        """Labels per input, best first (top_k 0: all)."""

        def call(part: Sequence[str]) -> list[list[LabelScore]]:
            request = pb.ClassifyRequest(inputs=list(part), top_k=top_k, truncate=truncate, model=self.model)
            response = self._call(self._stub.Classify, request, timeout)
            return [[LabelScore(s.label, s.index, s.score) for s in r.labels] for r in response.results]

        return self._per_slice(texts, call)

    def classify_tokens(
        self,
        texts: Sequence[str],
        *,
        aggregation: str = "simple",
        truncate: bool | None = None,
        timeout: float | None = None,
    ) -> list[list[Entity]]:
        """Entities per input (aggregation: none, simple, first, average or max)."""

        def call(part: Sequence[str]) -> list[list[Entity]]:
            request = pb.ClassifyTokensRequest(
                inputs=list(part), aggregation=_AGGREGATION[aggregation], truncate=truncate, model=self.model
            )
            response = self._call(self._stub.ClassifyTokens, request, timeout)
            return [[Entity(e.label, e.score, e.start, e.end, e.text) for e in r.entities] for r in response.results]

        return self._per_slice(texts, call)

    def fill_mask(
        self, texts: Sequence[str], *, top_k: int = 5, truncate: bool | None = None, timeout: float | None = None
    ) -> list[list[list[TokenScore]]]:
        """Per input, per mask, the candidate tokens best first."""

        def call(part: Sequence[str]) -> list[list[list[TokenScore]]]:
            request = pb.FillMaskRequest(inputs=list(part), top_k=top_k, truncate=truncate, model=self.model)
            response = self._call(self._stub.FillMask, request, timeout)
            return [
                [[TokenScore(c.token_id, c.token, c.score) for c in m.candidates] for m in r.masks]
                for r in response.results
            ]

        return self._per_slice(texts, call)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        return_documents: bool = False,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> Ranking:
        """The documents by relevance to the query, best first (ties in input order), cut to top_n (None: all).

        With split_requests, more documents than the server takes in one request are scored in several and
        ranked together here (both methods' scores compare across requests)."""
        parts = [documents]
        if self.split_requests and len(documents) > 1:
            parts = split_inputs(documents, self.max_inputs_per_request())
        results: list[RankedDocument] = []
        method, tokens, offset = "", 0, 0
        for part in parts:
            request = pb.RerankRequest(
                query=query,
                documents=list(part),
                top_n=(top_n or 0) if len(parts) == 1 else 0,
                return_documents=return_documents,
                truncate=truncate,
                model=self.model,
            )
            response = self._call(self._stub.Rerank, request, timeout)
            results += [
                RankedDocument(offset + r.index, r.relevance_score, r.raw_score, r.document) for r in response.results
            ]
            method, tokens, offset = response.method, tokens + response.usage.tokens, offset + len(part)
        if len(parts) > 1:
            results.sort(key=lambda r: -r.score)  # stable: ties stay in input order
        return Ranking(results if top_n is None else results[:top_n], method, tokens)

    def tokenize(self, texts: Sequence[str], *, timeout: float | None = None) -> pb.TokenizeResponse:
        """The tokens of each input."""

        def call(part: Sequence[str]) -> list[pb.TokenizeResponse]:
            request = pb.TokenizeRequest(inputs=list(part), model=self.model)
            return [self._call(self._stub.Tokenize, request, timeout)]

        merged = pb.TokenizeResponse()
        for part in self._per_slice(texts, call):
            merged.MergeFrom(part)  # repeated results concatenate, in order
        return merged

    def model_info(self, *, timeout: float | None = None) -> pb.ModelInfoResponse:
        """The served model and the server's limits."""
        return self._call(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout)  # type: ignore[no-any-return]

    def serving(self, *, timeout: float = 2.0) -> bool:
        """Whether grpc.health.v1 reports SERVING."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_until_serving(self, timeout: float = 120.0) -> None:
        """Polls health until SERVING; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serving():
                return
            time.sleep(0.1)
        raise TimeoutError(f"server not SERVING after {timeout:.0f}s")
