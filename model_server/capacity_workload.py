"""The load `bertmesh bench` puts on a model: closed and open loops over the real data plane, in process.

Requests go through `DataPlane` exactly as the servicers send them (tokenisation, limits, the batcher, the
backend), without gRPC: the report measures the model and its batching on this hardware, not the network.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from model_server.dataplane import DataPlane, Reply
from model_server.errors import Overloaded
from model_server.tasks import ClassifyOptions, EmbedOptions, FillMaskOptions, Task, TokenClassifyOptions

Call = Callable[[Sequence[str]], Awaitable[Reply[Any]]]


def sample_texts(path: Path | None) -> list[str]:
    """Texts to send: one per line of `path`, or the packaged sample (300 texts of 8-256 MiniLM tokens)."""
    if path is not None:
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = resources.files("model_server").joinpath("data/sample_texts.txt").read_text("utf-8").splitlines()
    texts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not texts:
        raise SystemExit(f"no texts in {path}")
    return texts


def with_masks(texts: Sequence[str], mask_token: str) -> list[str]:
    """Each text with one word replaced by the mask token (fill-mask models need one)."""
    out = []
    for n, text in enumerate(texts):
        words = text.split()
        words[n % len(words)] = mask_token
        out.append(" ".join(words))
    return out


def task_call(plane: DataPlane) -> Call:
    """The data-plane call of the served task, with default options and truncation on."""
    model = plane.model
    if model.task is Task.EMBEDDING:
        options = EmbedOptions(model.default_pooling, model.default_normalize, truncate=True)
        return lambda texts: plane.embed(texts, options, None)
    if model.task is Task.SEQUENCE_CLASSIFICATION:
        return lambda texts: plane.classify(texts, ClassifyOptions(truncate=True), None)
    if model.task is Task.TOKEN_CLASSIFICATION:
        return lambda texts: plane.classify_tokens(texts, TokenClassifyOptions(truncate=True), None)
    return lambda texts: plane.fill_mask(texts, FillMaskOptions(top_k=1, truncate=True), None)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One load level: requests per second completed, latency percentiles, requests shed."""

    offered_rps: float | None  # None: closed loop
    rps: float
    p50_ms: float
    p99_ms: float
    shed: int


class Requests:
    """An endless, seeded sequence of requests of `per_request` texts drawn from the sample."""

    def __init__(self, texts: Sequence[str], per_request: int, seed: int = 0) -> None:
        self._texts = list(texts)
        self._per_request = per_request
        self._random = random.Random(seed)

    def next(self) -> list[str]:
        """The next request's texts."""
        return self._random.sample(self._texts, min(self._per_request, len(self._texts)))


def _summary(latencies: list[float], elapsed: float, offered: float | None, shed: int) -> Measurement:
    if not latencies:
        return Measurement(offered, 0.0, float("nan"), float("nan"), shed)
    ms = np.array(latencies) * 1000
    return Measurement(
        offered, len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), shed
    )


async def closed_loop(call: Call, requests: Requests, concurrency: int, seconds: float) -> Measurement:
    """`concurrency` callers each sending its next request when the last returns, for `seconds`."""
    latencies: list[float] = []
    shed = 0
    end = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal shed
        while time.perf_counter() < end:
            started = time.perf_counter()
            try:
                await call(requests.next())
            except Overloaded:
                shed += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return _summary(latencies, time.perf_counter() - started, None, shed)


async def open_loop(call: Call, requests: Requests, rate: float, seconds: float, seed: int = 1) -> Measurement:
    """Poisson arrivals at `rate` per second for `seconds`; latency counts from each scheduled arrival."""
    rng = random.Random(seed)
    latencies: list[float] = []
    shed = 0
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float) -> None:
        nonlocal shed
        try:
            await call(requests.next())
        except Overloaded:
            shed += 1
            return
        latencies.append(time.perf_counter() - scheduled)

    start = time.perf_counter()
    arrival = start
    while arrival < start + seconds:
        arrival += rng.expovariate(rate)
        delay = arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(arrival)))
    await asyncio.gather(*tasks)
    return _summary(latencies, seconds, rate, shed)
