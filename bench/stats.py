"""Per-run summaries (pure): what one window of one system produced, with its derived rates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from model_server.loadgen.stats import percentile


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one measurement window of one system at one load point produced."""

    system: str
    mode: str  # "closed" (concurrency) or "open" (request rate)
    load: float  # concurrency, or offered requests per second
    repeat: int
    seconds: float
    requests: int
    errors: int
    inputs: int
    tokens: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_s: float
    server_cpu_s: float
    useful_flops: float

    @property
    def req_per_s(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def inputs_per_s(self) -> float:
        """Completed texts per second."""
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Real (unpadded) tokens per second."""
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        """The summary with its derived rates."""
        out = asdict(self)
        out.update(req_per_s=self.req_per_s, inputs_per_s=self.inputs_per_s, tokens_per_s=self.tokens_per_s)
        return out


def summarize(
    system: str,
    mode: str,
    load: float,
    repeat: int,
    seconds: float,
    latencies_s: Sequence[float],
    errors: int,
    inputs: int,
    tokens: int,
    client_cpu_s: float,
    server_cpu_s: float,
    useful_flops: float,
) -> RunSummary:
    """A RunSummary from raw latencies (seconds) of the requests that completed inside the window."""
    ms = [x * 1000.0 for x in latencies_s]
    return RunSummary(
        system=system,
        mode=mode,
        load=load,
        repeat=repeat,
        seconds=seconds,
        requests=len(ms),
        errors=errors,
        inputs=inputs,
        tokens=tokens,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms) if ms else math.nan,
        client_cpu_s=client_cpu_s,
        server_cpu_s=server_cpu_s,
        useful_flops=useful_flops,
    )
