"""The data plane: limits, result cache, tokenisation off the event loop, admission and batching per task.

Servicers call one method per task and get per-input results; everything here is torch-free: the backend is
reached through the Backend protocol, in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from model_server import postprocess
from model_server.backend import Backend, ModelInput
from model_server.batcher import BatchLimits, TokenBudgetBatcher
from model_server.cache import CacheKey, ResultCache
from model_server.errors import FailedPrecondition, InvalidArgument, NotFound
from model_server.metrics import Metrics
from model_server.tasks import (
    Classification,
    ClassifyOptions,
    EmbedOptions,
    EntityList,
    FillMaskOptions,
    FloatArray,
    MaskCandidates,
    Pooling,
    Task,
    TaskOptions,
    TaskResult,
    TokenClassifyOptions,
)
from model_server.tokenization import Encoded, TextTokenizer
from model_server.validation import Limits, check_texts, check_top_k, over_token_limit, refuse_long

T = TypeVar("T", bound=TaskResult)

MAX_TOP_K = 100
MAX_MASKS_PER_INPUT = 16  # each mask returns a vocabulary of logits from the model


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """The served model as ModelInfo and ModelMetadata report it."""

    name: str
    revision: str
    task: Task
    architecture: str
    device: str
    precision: str
    engine: str
    dimensions: int
    labels: tuple[str, ...]
    multi_label: bool
    default_pooling: Pooling
    default_normalize: bool
    mask_token: str
    limits: Limits
    batching: BatchLimits


@dataclass(frozen=True, slots=True)
class Reply(Generic[T]):
    """Per-input results in input order, with the tokens computed and the inputs served from cache."""

    results: list[T]
    tokens: int
    cached: int


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
        # One compute thread: torch parallelises inside an op; two batches at once would fight for cores.
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="bertmesh-model")
        self._tokenize = ThreadPoolExecutor(2, thread_name_prefix="bertmesh-tokenize")
        self._cache: ResultCache[TaskResult] = ResultCache(cache_entries)
        self.batcher: TokenBudgetBatcher[ModelInput, FloatArray] = TokenBudgetBatcher(
            self._run_batch,
            model.batching,
            padded=not backend.info.packed,
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

    def check_model(self, name: str, field: str = "model") -> None:
        """Accepts an empty name or the served model's name; anything else is NOT_FOUND."""
        if name and name != self.model.name:
            raise NotFound(f"{field}: model {name!r} is not served here; this server serves {self.model.name!r}")

    def _require(self, task: Task, rpc: str) -> None:
        if self.model.task is not task:
            raise FailedPrecondition(
                f"{rpc} needs a {task.value} model; {self.model.name!r} is a {self.model.task.value} model"
            )

    # -- tasks ----------------------------------------------------------------------------------------

    async def embed(
        self, texts: Sequence[str], options: EmbedOptions, deadline: float | None, *, wait_for_room: bool = False
    ) -> Reply[FloatArray]:
        """One vector per input."""
        self._require(Task.EMBEDDING, "Embed")

        def finish(text: str, enc: Encoded, out: FloatArray) -> FloatArray:
            vector = postprocess.l2_normalize(out) if options.normalize else out.astype(np.float32, copy=True)
            vector.flags.writeable = False  # shared through the cache
            return vector

        return await self._infer(
            Task.EMBEDDING, texts, options, deadline, finish, pooling=options.pooling, wait_for_room=wait_for_room
        )

    async def classify(
        self, texts: Sequence[str], options: ClassifyOptions, deadline: float | None
    ) -> Reply[Classification]:
        """Label probabilities per input, best first."""
        self._require(Task.SEQUENCE_CLASSIFICATION, "Classify")
        check_top_k(options.top_k, MAX_TOP_K)  # beyond the label count it simply returns every label

        def finish(text: str, enc: Encoded, out: FloatArray) -> Classification:
            return postprocess.classification(
                out,
                self.model.labels,
                multi_label=self.model.multi_label,
                top_k=options.top_k,
                return_logits=options.return_logits,
            )

        return await self._infer(Task.SEQUENCE_CLASSIFICATION, texts, options, deadline, finish)

    async def classify_tokens(
        self, texts: Sequence[str], options: TokenClassifyOptions, deadline: float | None
    ) -> Reply[EntityList]:
        """Entities per input."""
        self._require(Task.TOKEN_CLASSIFICATION, "ClassifyTokens")

        def finish(text: str, enc: Encoded, out: FloatArray) -> EntityList:
            return postprocess.entities(
                out, enc, text, self.model.labels, options.aggregation, include_outside=options.include_outside
            )

        return await self._infer(Task.TOKEN_CLASSIFICATION, texts, options, deadline, finish)

    async def fill_mask(
        self, texts: Sequence[str], options: FillMaskOptions, deadline: float | None
    ) -> Reply[MaskCandidates]:
        """Candidates for each mask of each input."""
        self._require(Task.FILL_MASK, "FillMask")
        check_top_k(options.top_k, MAX_TOP_K)

        def finish(text: str, enc: Encoded, out: FloatArray) -> MaskCandidates:
            return postprocess.mask_candidates(out, options.top_k, self._tokenizer.token_text)

        return await self._infer(Task.FILL_MASK, texts, options, deadline, finish, masks=True)

    async def tokenize(self, texts: Sequence[str]) -> list[Encoded]:
        """The tokens of each input (limits on count and characters apply; no token limit)."""
        check_texts(texts, self.model.limits)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize, self._tokenizer.encode, list(texts))

    def token_string(self, token_id: int) -> str:
        """The vocabulary entry of a token id."""
        return self._tokenizer.token_string(token_id)

    # -- the shared path ------------------------------------------------------------------------------

    async def _encode(self, texts: list[str], indices: list[int], truncate: bool) -> list[Encoded]:
        loop = asyncio.get_running_loop()
        encode = functools.partial(self._tokenizer.encode, texts, truncate=truncate)
        encodings = await loop.run_in_executor(self._tokenize, encode)
        for i in over_token_limit(encodings, self.model.limits):
            raise refuse_long(indices[i], len(encodings[i]), self.model.limits)
        return encodings

    def _mask_positions(self, enc: Encoded, index: int) -> tuple[int, ...]:
        mask_id = self._tokenizer.mask_id
        positions = tuple(p for p, token in enumerate(enc.ids) if token == mask_id)
        if not positions:
            cut = " after truncation" if enc.truncated else ""
            raise InvalidArgument(f"inputs[{index}]: no {self.model.mask_token} token{cut}")
        if len(positions) > MAX_MASKS_PER_INPUT:
            raise InvalidArgument(
                f"inputs[{index}]: {len(positions)} {self.model.mask_token} tokens exceed the limit of "
                f"{MAX_MASKS_PER_INPUT} per input"
            )
        return positions

    async def _infer(
        self,
        task: Task,
        texts: Sequence[str],
        options: TaskOptions,
        deadline: float | None,
        finish: Callable[[str, Encoded, FloatArray], T],
        *,
        pooling: Pooling | None = None,
        masks: bool = False,
        wait_for_room: bool = False,
    ) -> Reply[T]:
        check_texts(texts, self.model.limits)
        keys = [CacheKey(self.model.revision, task.value, options, text) for text in texts]
        results: list[T | None] = [self._cache.get(k) for k in keys]  # type: ignore[misc]
        # Identical texts in one request are computed once.
        todo: dict[str, list[int]] = {}
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
        encodings = await self._encode(unique, first_index, options.truncate)
        inputs = [
            ModelInput(enc.ids, pooling, self._mask_positions(enc, first_index[n]) if masks else None)
            for n, enc in enumerate(encodings)
        ]
        items = [(len(item.ids), item) for item in inputs]
        if wait_for_room:
            futures = await self.batcher.submit_when_room(items, deadline)
        else:
            futures = self.batcher.submit(items, deadline)
        try:
            outputs = await asyncio.gather(*futures)
        finally:
            for f in futures:  # on error or cancellation, nothing of this request stays queued
                f.cancel()
        for text, enc, out in zip(unique, encodings, outputs, strict=True):
            result = finish(text, enc, out)
            for i in todo[text]:
                results[i] = result
            self._cache.put(keys[todo[text][0]], result)
        return Reply([r for r in results if r is not None], sum(len(e) for e in encodings), cached)


def deadline_from(time_remaining: float | None) -> float | None:
    """An absolute monotonic deadline from a call's remaining seconds (None: no deadline)."""
    return None if time_remaining is None else time.monotonic() + time_remaining
