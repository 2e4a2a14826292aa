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


class _Tally:
    """Latencies of answered requests and the count of shed ones, for one load level."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.shed = 0

    async def send(self, call: Call, texts: Sequence[str], since: float) -> None:
        """One request; its latency counts from `since` (its start, or its scheduled arrival)."""
        try:
            await call(texts)
        except Overloaded:
            self.shed += 1
            return
        self.latencies.append(time.perf_counter() - since)

    def summary(self, elapsed: float, offered: float | None) -> Measurement:
        """Throughput over `elapsed` seconds and the latency percentiles."""
        if not self.latencies:
            return Measurement(offered, 0.0, float("nan"), float("nan"), self.shed)
        ms = np.array(self.latencies) * 1000
        p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        return Measurement(offered, len(self.latencies) / elapsed, p50, p99, self.shed)


async def closed_loop(call: Call, requests: Requests, concurrency: int, seconds: float) -> Measurement:
    """`concurrency` callers each sending its next request when the last returns, for `seconds`."""
    tally = _Tally()
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            await tally.send(call, requests.next(), time.perf_counter())

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return tally.summary(time.perf_counter() - started, None)


async def open_loop(call: Call, requests: Requests, rate: float, seconds: float, seed: int = 1) -> Measurement:
    """Poisson arrivals at `rate` per second for `seconds`; latency counts from each scheduled arrival."""
    rng = random.Random(seed)
    tally = _Tally()
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    arrival = start
    while arrival < start + seconds:
        arrival += rng.expovariate(rate)
        delay = arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(tally.send(call, requests.next(), arrival)))
    await asyncio.gather(*tasks)
    return tally.summary(seconds, rate)
