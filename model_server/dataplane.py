"""The data plane: limits, result cache, tokenisation off the event loop, admission and batching.

Servicers call one generic method, `infer(texts, options, deadline)`, and get per-input results; the options'
type names the task, whose module (model_server.tasks) checks the options, prepares each input and finishes each
result. `rerank` is built on it: a cross-encoder's pairs are one `infer`, an embedding model's cosine two.
Everything here is torch-free: the engine is reached through the Backend protocol, in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from model_server.backend import Backend
from model_server.batcher import TokenBudgetBatcher
from model_server.cache import CacheKey, ResultCache
from model_server.coalesce import Coalescer
from model_server.description import ModelDescription
from model_server.errors import FailedPrecondition, InvalidArgument, NotFound
from model_server.metrics import Metrics
from model_server.tasks import Task, TaskResult, spec_of
from model_server.tasks.base import FloatArray, ModelInput, Options, Served
from model_server.tasks.embedding import defaults as embedding_defaults
from model_server.tasks.rerank import RerankOptions, RerankReply, from_embeddings, from_logits
from model_server.tokenization import Encoded, TextTokenizer, TokenIds
from model_server.validation import check_pair_room, check_text, check_texts, over_token_limit, refuse_long

T = TypeVar("T")

__all__ = ["DataPlane", "ModelDescription", "Reply", "deadline_from"]

# Threads that tokenise, each taking the requests waiting at the time (the tokenizer runs without the GIL).
TOKENIZER_THREADS = 2
# Texts per tokenizer call when requests are tokenised together: enough to pay the hand-over once for many small
# requests, few enough (~8 ms of MiniLM's tokenizer on one core) that the first request of a group is not held
# long by the last; a bigger request is tokenised alone.
TEXTS_PER_TOKENIZER_CALL = 64


@dataclass(frozen=True, slots=True)
class Reply(Generic[T]):
    """Per-input results in input order, with the tokens computed and the inputs served from cache."""

    results: list[T]
    tokens: int
    cached: int


def with_article(noun: str) -> str:
    """The noun after 'a' or 'an', as it is spoken ("an embedding", "a fill-mask")."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


class DataPlane:
    """Runs requests for one loaded model."""

    def __init__(
        self,
        model: ModelDescription,
        tokenizer: TextTokenizer,
        backend: Backend,
        *,
        cache_entries: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.model = model
        self._tokenizer = tokenizer
        self._backend = backend
        self._metrics = metrics
        # One compute thread per batch the backend takes at once: on CPU one (torch parallelises inside an op; two
        # batches would fight for cores); the cuda engine prepares the next batch while one computes.
        self._compute = ThreadPoolExecutor(backend.info.concurrent_batches, thread_name_prefix="bertmesh-model")
        self._tokenize = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="bertmesh-tokenize")
        # Requests waiting for the tokenizer together are tokenised together: one hop per group, not per request.
        self._encoder: Coalescer[tuple[bool, str | None], str, Encoded] = Coalescer(
            self._encode_group, self._tokenize, workers=TOKENIZER_THREADS, max_items=TEXTS_PER_TOKENIZER_CALL
        )
        self._cache: ResultCache[TaskResult] = ResultCache(cache_entries)
        self._served = Served(model, tokenizer.mask_id, tokenizer.token_text)
        self.batcher: TokenBudgetBatcher[ModelInput, FloatArray] = TokenBudgetBatcher(
            self._run_batch,
            model.batching,
            padded=not backend.info.packed,
            concurrency=backend.info.concurrent_batches,
            on_batch=metrics.on_batch if metrics else None,
            on_expired=metrics.on_expired if metrics else None,
        )
        if metrics is not None:
            metrics.bind_queue(lambda: self.batcher.queued_inputs, lambda: self.batcher.queued_tokens)

    def start(self) -> None:
        """Starts batching on the running event loop."""
        self.batcher.start()

    async def close(self) -> None:
        """Finishes every admitted input, then releases the worker threads."""
        await self.batcher.close()
        self._compute.shutdown(wait=True)
        self._tokenize.shutdown(wait=True)

    async def _run_batch(self, inputs: list[ModelInput]) -> list[FloatArray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._compute, self._backend.run, inputs)

    # -- request checks -------------------------------------------------------------------------------

    def check_model(self, name: str, field: str = "model", *, required: bool = False) -> None:
        """Accepts the served model's name (or an empty one unless `required`); anything else is NOT_FOUND."""
        if (name or required) and name != self.model.name:
            raise NotFound(f"{field}: model {name!r} is not served here; this server serves {self.model.name!r}")

    def check_version(self, version: str, field: str) -> None:
        """Accepts an empty version or the served revision; anything else is NOT_FOUND."""
        if version and version != self.model.revision:
            raise NotFound(f"{field}: {version!r} is not served; the served version is {self.model.revision!r}")

    # -- the generic call -----------------------------------------------------------------------------

    async def infer(
        self,
        texts: Sequence[str | TokenIds],
        options: Options,
        deadline: float | None,
        *,
        wait_for_room: bool = False,
        field: str = "inputs",
        scalar: bool = False,
    ) -> Reply[Any]:
        """Per-input results of the task whose options these are (see model_server.tasks); FAILED_PRECONDITION
        when the served model does another task. Embeddings also take token ids of the served vocabulary;
        `field` is the inputs' name in the caller's API, for messages (`scalar`: one input that the API names
        without an index, e.g. rerank's `query`)."""
        task = spec_of(options)
        if self.model.task is not task.task:
            raise FailedPrecondition(
                f"{task.api.rpc} needs {with_article(task.task.value)} model; "
                f"{self.model.name!r} is {with_article(self.model.task.value)} model"
            )
        task.check(options)
        first = task.paired_with(options)
        if first is not None:
            check_text(first, self.model.limits, "query")
        check_texts(texts, self.model.limits, field)
        self._check_ids(texts, task.task, field)
        keys = [CacheKey(self.model.revision, task.task.value, options, text) for text in texts]
        results: list[TaskResult | None] = [self._cache.get(k) for k in keys]
        # Identical texts in one request are computed once.
        todo: dict[str | TokenIds, list[int]] = {}
        for i, (text, result) in enumerate(zip(texts, results, strict=True)):
            if result is None:
                todo.setdefault(text, []).append(i)
        cached = len(texts) - sum(len(v) for v in todo.values())
        if self._metrics is not None and self._cache.enabled:
            self._metrics.on_cache(cached, len(texts) - cached)
        if not todo:
            return Reply([r for r in results if r is not None], 0, cached)

        unique = list(todo)
        first_index = [todo[text][0] for text in unique]
        encodings = await self._encode(unique, first_index, options.truncate, field, first, scalar)
        inputs = [task.prepare(enc, first_index[n], options, self._served) for n, enc in enumerate(encodings)]
        items = [(len(item.ids), item) for item in inputs]
        if wait_for_room:
            computed = await self.batcher.submit_when_room(items, deadline)
        else:
            computed = self.batcher.submit(items, deadline)
        try:
            outputs = await computed
        finally:
            computed.cancel()  # on error or cancellation, nothing of this request stays queued
        for text, enc, out in zip(unique, encodings, outputs, strict=True):
            result = task.finish(out, enc, text if isinstance(text, str) else "", options, self._served)
            for i in todo[text]:
                results[i] = result
            self._cache.put(keys[todo[text][0]], result)
        return Reply([r for r in results if r is not None], sum(len(e) for e in encodings), cached)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool,
        deadline: float | None,
        wait_for_room: bool = False,
        fields: tuple[str, str] = ("query", "documents"),
    ) -> RerankReply:
        """Each document's relevance to the query, in input order: a cross-encoder scores each pair, an embedding
        model the cosine of the query's and each document's unit vector; FAILED_PRECONDITION for other tasks.
        `fields` names the query and documents in errors as the caller's API does (TEI says `texts`)."""
        query_field, documents_field = fields
        if self.model.task is Task.RERANK:
            pairs = RerankOptions(query, truncate)
            reply = await self.infer(documents, pairs, deadline, wait_for_room=wait_for_room, field=documents_field)
            return from_logits(reply.results, reply.tokens)
        if self.model.task is not Task.EMBEDDING:
            raise FailedPrecondition(
                f"Rerank needs a rerank (cross-encoder) or an embedding model; "
                f"{self.model.name!r} is {with_article(self.model.task.value)} model"
            )
        # Both checked before either is computed.
        check_text(query, self.model.limits, query_field)
        check_texts(documents, self.model.limits, documents_field)
        options = replace(embedding_defaults(self.model), normalize=True, truncate=truncate)
        calls = [
            asyncio.ensure_future(
                self.infer(texts, options, deadline, wait_for_room=wait_for_room, field=field, scalar=scalar)
            )
            for texts, field, scalar in (([query], query_field, True), (documents, documents_field, False))
        ]
        try:
            asked, found = await asyncio.gather(*calls)
        finally:
            for call in calls:  # one refused: the other is not computed for nothing
                call.cancel()
        return from_embeddings(asked.results[0], found.results, asked.tokens + found.tokens)

    async def tokenize(self, texts: Sequence[str]) -> list[Encoded]:
        """The tokens of each input (limits on count and characters apply; no token limit)."""
        check_texts(texts, self.model.limits)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize, self._tokenizer.encode, list(texts))

    def token_string(self, token_id: int) -> str:
        """The vocabulary entry of a token id."""
        return self._tokenizer.token_string(token_id)

    # -- the shared path ------------------------------------------------------------------------------

    def _check_ids(self, inputs: Sequence[str | TokenIds], task: Task, field: str) -> None:
        """Token-id inputs: embeddings only, every id in the served vocabulary."""
        vocabulary = self._tokenizer.vocab_size
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                continue
            if task is not Task.EMBEDDING:
                raise InvalidArgument(f"{field}[{i}]: token-id inputs are served for embeddings only; send text")
            bad = next((t for t in item.ids if not 0 <= t < vocabulary), None)
            if bad is not None:
                raise InvalidArgument(
                    f"{field}[{i}]: token id {bad} is outside the vocabulary of {self.model.name!r} "
                    f"(0..{vocabulary - 1}); send text, or ids from this model's own tokenizer (not tiktoken's)"
                )

    async def _encode(
        self,
        inputs: list[str | TokenIds],
        indices: list[int],
        truncate: bool,
        field: str,
        first: str | None,
        scalar: bool,
    ) -> list[Encoded]:
        texts = [item for item in inputs if isinstance(item, str)]
        encoded: list[Encoded] = []
        if texts:
            started = time.perf_counter()
            encoded = await self._encoder((truncate, first), texts)
            if self._metrics is not None:
                self._metrics.tokenization.observe(time.perf_counter() - started)
        # Token-id inputs need no tokenizer (embeddings only, so never a pair).
        wrapped = self._tokenizer.wrap([item for item in inputs if isinstance(item, TokenIds)], truncate=truncate)
        from_text, from_ids = iter(encoded), iter(wrapped)
        encodings = [next(from_text) if isinstance(item, str) else next(from_ids) for item in inputs]
        for i in over_token_limit(encodings, self.model.limits):
            index = None if scalar else indices[i]
            raise refuse_long(index, len(encodings[i]), self.model.limits, field, paired=first is not None)
        return encodings

    def _encode_group(self, key: tuple[bool, str | None], texts: Sequence[str]) -> list[Encoded]:
        truncate, first = key
        return self._encode_blocking(list(texts), truncate, first)

    def _encode_blocking(self, texts: list[str], truncate: bool, first: str | None) -> list[Encoded]:
        if first is not None:  # a pair is only ever cut on its second text, so the first must leave room
            check_pair_room(self._tokenizer.pair_overhead(first), self.model.limits)
        return self._tokenizer.encode(texts, truncate=truncate, first=first)


def deadline_from(time_remaining: float | None) -> float | None:
    """An absolute monotonic deadline from a call's remaining seconds (None: no deadline)."""
    return None if time_remaining is None else time.monotonic() + time_remaining
