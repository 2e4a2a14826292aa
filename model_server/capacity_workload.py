"""The load `bertmesh bench` puts on a model: the real data plane, in process, driven by `model_server.loadgen`.

Requests go through `DataPlane` exactly as the servicers send them (tokenisation, limits, the batcher, the
backend), without gRPC: the report measures the model and its batching on this hardware, not the network. The
loops and their warm-up, counting and timeout rules are `model_server.loadgen.drivers`'s, shared with
`python -m bench`; this module supplies the texts, the task's call, and the report's reading of a window.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from model_server.dataplane import DataPlane, Reply
from model_server.errors import Overloaded
from model_server.loadgen.drivers import TIMEOUT, Window, closed_loop, open_loop
from model_server.loadgen.schedules import poisson_arrivals
from model_server.loadgen.stats import percentile
from model_server.tasks import spec
from model_server.tasks.rerank import RerankOptions

Call = Callable[[Sequence[str]], Awaitable[Reply[Any]]]

# Each measurement is preceded by a warm-up of a third of its length: the report's 6 s default gets the 2 s
# warm-up `python -m bench` uses.
WARMUP_SHARE = 1 / 3
PLAN_LENGTH = 1000  # requests per plan; the loops cycle it (the report turns the result cache off)


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


# A cross-encoder scores (query, document) pairs: the benchmark's texts are the documents, paired with a
# search-engine-length query (a request without one is refused as empty).
RERANK_QUERY = "which of these passages answers the question best?"


def task_call(plane: DataPlane) -> Call:
    """The data-plane call of the served task: a request that sets no option but truncation (and, for
    rerank, the query every text is paired with)."""
    options = dataclasses.replace(spec(plane.model.task).defaults(plane.model), truncate=True)
    if isinstance(options, RerankOptions):
        options = dataclasses.replace(options, query=RERANK_QUERY)
    return lambda texts: plane.infer(texts, options, None)


def request_plan(texts: Sequence[str], per_request: int, seed: int) -> list[list[str]]:
    """A seeded sequence of requests, each of `per_request` distinct texts drawn from the sample."""
    rng = random.Random(seed)
    k = min(per_request, len(texts))
    return [rng.sample(list(texts), k) for _ in range(PLAN_LENGTH)]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One load level: requests per second answered, latency percentiles, requests shed or timed out."""

    offered_rps: float | None  # None: closed loop
    rps: float
    p50_ms: float
    p99_ms: float
    shed: int
    timed_out: int


def measurement(window: Window[Any], offered_rps: float | None) -> Measurement:
    """The report's reading of a window: `Overloaded` is shed, a timeout is counted, any other failure stops it."""
    shed = window.failures.get(Overloaded.__name__, 0)
    timed_out = window.failures.get(TIMEOUT, 0)
    if window.errors > shed + timed_out:
        raise RuntimeError(f"requests failed {window.failures}; first: {window.first_error}")
    ms = [x * 1000 for x in window.latencies_s]
    rps = len(ms) / window.seconds
    return Measurement(offered_rps, rps, percentile(ms, 50), percentile(ms, 99), shed, timed_out)


async def measure_closed(call: Call, requests: Sequence[list[str]], concurrency: int, seconds: float) -> Measurement:
    """`concurrency` callers, each sending its next request when the last returns, for `seconds` (after warm-up)."""
    window = await closed_loop(call, requests, concurrency, seconds * WARMUP_SHARE, seconds)
    return measurement(window, None)


async def measure_open(
    call: Call, requests: Sequence[list[str]], rate: float, seconds: float, seed: int = 1
) -> Measurement:
    """Poisson arrivals at `rate` per second for `seconds` (after warm-up); latency from each scheduled arrival."""
    warmup = seconds * WARMUP_SHARE
    window = await open_loop(call, requests, poisson_arrivals(rate, warmup + seconds, seed), warmup, seconds)
    return measurement(window, rate)
