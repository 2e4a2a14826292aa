"""Which autoscaling signal tracks latency: queued tokens, in-flight requests or CPU, against p99.

    python -m bench.autoscale_signal [--seconds 8] [--threads 2] [--out DIR]

One `bertmesh serve` (the bundled MiniLM, fp32, result cache off) takes open-loop Poisson load in phases that
differ in load AND in request size: small requests (1 text) and large ones (16 texts), each at 30 %, 60 %, 90 %
and 110 % of the capacity measured for that size first. Every 0.5 s the server's own gauges are read from its
/metrics (`bertmesh_queue_tokens`, `bertmesh_inflight_requests`) and its CPU from /proc. Per phase: each
signal's mean and the p99 latency of the requests sent in it. Which signal tracks latency best is its
Spearman rank correlation with p99 across the phases (1: the same order), and whether one threshold could
serve both request sizes: the signal's value at the phases where p99 first passes the target, per size.
Prints a table and writes results.json under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.corpus import Request, load, sample_requests
from bench.systems import Bertmesh, Settings
from model_server.loadgen.drivers import closed_loop, open_loop
from model_server.loadgen.schedules import poisson_arrivals
from model_server.loadgen.stats import percentile

SIGNALS = ("queue_tokens", "inflight_requests", "cpu_cores")
FRACTIONS = (0.3, 0.6, 0.9, 1.1)
SIZES = {"small (1 text)": (1, 1), "large (16 texts)": (16, 16)}
SAMPLE_S = 0.5
GAUGES = {"bertmesh_queue_tokens": "queue_tokens", "bertmesh_inflight_requests": "inflight_requests"}


@dataclass(frozen=True)
class Phase:
    """One load phase: request size, offered rate, each signal's mean and the p99 of its requests."""

    size: str
    fraction: float
    offered_rps: float
    p99_ms: float
    errors: int
    queue_tokens: float
    inflight_requests: float
    cpu_cores: float


def gauges(text: str) -> dict[str, float]:
    """The watched gauges in Prometheus text format (summed over labels)."""
    out = dict.fromkeys(GAUGES.values(), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if not line.startswith("#") and name in GAUGES:
            out[GAUGES[name]] += float(line.rsplit(" ", 1)[1])
    return out


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long series (nan if either is constant)."""
    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else float("nan")


async def _sample(server: Bertmesh, stop: asyncio.Event, into: list[dict[str, float]]) -> None:
    """Reads the gauges and the server's CPU every SAMPLE_S until `stop`."""
    loop = asyncio.get_running_loop()
    last_cpu, last_t = server.cpu_seconds(), time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(SAMPLE_S)
        text = await loop.run_in_executor(None, _read, server.metrics_url())
        cpu, now = server.cpu_seconds(), time.monotonic()
        into.append({**gauges(text), "cpu_cores": (cpu - last_cpu) / (now - last_t)})
        last_cpu, last_t = cpu, now


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text: str = reply.read().decode()
        return text


async def _phase(
    server: Bertmesh, requests: list[Request], size: str, fraction: float, capacity: float, seconds: float
) -> Phase:
    rate = fraction * capacity
    samples: list[dict[str, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(server, stop, samples))
    arrivals = poisson_arrivals(rate, seconds + 2.0, seed=int(fraction * 100))
    window = await open_loop(server.call, requests, arrivals, warmup_s=2.0, measure_s=seconds)
    stop.set()
    await sampler
    measured = samples[int(2.0 / SAMPLE_S) :] or samples  # the warm-up's samples left out
    means = {s: sum(x[s] for x in measured) / len(measured) for s in SIGNALS}
    p99 = percentile(window.latencies_s, 99) * 1e3
    return Phase(size, fraction, rate, p99, window.errors, **means)


async def run(seconds: float, threads: int, out: Path) -> list[Phase]:
    """Measures each size's capacity, then every phase; returns the phases."""
    server = Bertmesh(Settings(threads=threads))
    await server.start(out / "logs")
    phases: list[Phase] = []
    try:
        corpus = load()
        for size, (low, high) in SIZES.items():
            requests = sample_requests(corpus, 400, seed=11, min_texts=low, max_texts=high)
            window = await closed_loop(server.call, requests, 8, warmup_s=2.0, measure_s=seconds)
            capacity = len(window.latencies_s) / window.seconds
            print(f"autoscale-signal: {size}: capacity {capacity:.1f} req/s at c=8", flush=True)
            for fraction in FRACTIONS:
                phase = await _phase(server, requests, size, fraction, capacity, seconds)
                print(f"autoscale-signal: {asdict(phase)}", flush=True)
                phases.append(phase)
    finally:
        await server.close()
    return phases


def table(phases: Sequence[Phase]) -> str:
    """The phases and each signal's rank correlation with p99, as markdown."""
    lines = [
        "| requests | load | offered req/s | p99 ms | queued tokens | in-flight requests | server CPU cores |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p.size} | {p.fraction:.0%} | {p.offered_rps:.1f} | {p.p99_ms:.0f} | {p.queue_tokens:.0f} | "
        f"{p.inflight_requests:.1f} | {p.cpu_cores:.2f} |"
        for p in phases
    ]
    p99 = [p.p99_ms for p in phases]
    lines += ["", "| signal | Spearman correlation with p99 (all phases) |", "|---|---|"]
    lines += [f"| {s} | {spearman([getattr(p, s) for p in phases], p99):.2f} |" for s in SIGNALS]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / time.strftime("autoscale-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    phases = asyncio.run(run(args.seconds, args.threads, out))
    report = table(phases)
    print(report)
    (out / "results.json").write_text(json.dumps([asdict(p) for p in phases], indent=2))
    (out / "summary.md").write_text(report + "\n")
    print(f"autoscale-signal: results in {out} (load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
