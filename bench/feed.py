"""Can one `bertmesh serve` process feed a GPU? The serving path's own cost, with the model's compute taken out.

On a GPU the model is fast and everything around it (gRPC, tokenisation, the data plane, batching, encoding
replies) decides the rate; on a CPU the model hides it. This runs the real server (`model_server.server.main`,
the bundled MiniLM loaded and warmed by the real loading code) in a subprocess whose engine is then swapped for
FreeEngine: it answers every batch at once with a constant vector of the model's width, so what is left is
exactly the serving path. The gpu_serve loads drive it over gRPC from client processes. Reported per load:
answered tokens/s, the server's CPU cores, tokens per server CPU-second, the event-loop (main) thread's CPU
share (the part that holds the GIL), p50/p99.

  python -m bench feed [--seconds 8] [--clients 2] [--out DIR] [--serve-flags '--event-loop asyncio'] [--echo]

The rate here is bounded by this machine's cores (clients and server share them): read tokens per server
CPU-second and the main thread's share, which carry to a machine with more cores.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_serve import Sampler, Scenario, _client, callers_per_client, merged
from bench.procs import ServerProcess, free_port, thread_cpu_seconds
from bench.systems import ROOT, _health_check
from model_server.backend import BackendInfo
from model_server.config import DEFAULT_BATCH_TOKENS
from model_server.loadgen.stats import percentile
from model_server.tasks.base import FloatArray, ModelInput

LOADS = (
    Scenario("1-8 texts, c=64", "minilm", 1, 8, 64),
    Scenario("64 texts, c=16", "minilm", 64, 64, 16),
)
# The CUDA default batch budget, so batches are as large as a GPU pod forms them; no result cache.
SERVER_FLAGS: tuple[str, ...] = ("--max-batch-tokens", str(DEFAULT_BATCH_TOKENS["cuda"]), "--cache-entries", "0")
SERVER_FLAGS += ("--http-port", "0", "--metrics-port", "0")


class FreeEngine:
    """A Backend that computes nothing: each embedding input gets the same vector (0.5 throughout, or that at unit
    length where the input asks to be normalised, as a real engine's head does), at once."""

    def __init__(self, info: BackendInfo) -> None:
        self.info = info
        self._row: FloatArray = np.full(info.hidden_size, 0.5, np.float32)
        self._unit: FloatArray = self._row / np.float32(np.sqrt(self._row.dot(self._row)))

    def warmup(self, sample: Sequence[int]) -> None:
        """Nothing to warm."""

    def run(self, inputs: Sequence[ModelInput]) -> list[FloatArray]:
        """One constant vector per input."""
        return [self._unit if item.normalize else self._row for item in inputs]


def serve_free(argv: Sequence[str]) -> int:
    """`bertmesh serve` with the loaded model's engine replaced by FreeEngine (runs in the server process)."""
    import model_server.server as server

    load = server.load_model

    def load_free(*args: Any, **kwargs: Any) -> Any:
        description, tokenizer, backend = load(*args, **kwargs)
        # Reported as the packed engine, so the batcher packs batches as it does for the CUDA engine.
        return description, tokenizer, FreeEngine(replace(backend.info, engine="packed"))

    server.load_model = load_free  # the one seam this benchmark needs
    return server.main(list(argv))


def _load(server: ServerProcess, port: int, scenario: Scenario, clients: int, seconds: float) -> dict[str, Any]:
    callers = callers_per_client(scenario.concurrency, clients)
    warmup = 2.0
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool, Sampler(server) as sampler:
        pending = pool.starmap_async(
            _client, [(port, 100 + i, scenario, n, warmup, seconds) for i, n in enumerate(callers)]
        )
        time.sleep(warmup + 0.5)
        main0, t0 = thread_cpu_seconds(server.pid, server.pid), time.time()
        time.sleep(max(seconds - 1.0, 0.5))
        main1, t1 = thread_cpu_seconds(server.pid, server.pid), time.time()
        answers = pending.get()
    start, end, latencies, failures = merged(answers, warmup)
    cores, _ = sampler.over(start, end)
    tokens_per_s = sum(a["tokens"] / a["seconds"] for a in answers if a["seconds"] > 0)
    return {
        "load": scenario.name,
        "tokens_per_s": tokens_per_s,
        "requests_per_s": len(latencies) / max(end - start, 1e-9),
        "server_cores": cores,
        "tokens_per_server_cpu_s": tokens_per_s / cores if cores else None,
        "main_thread_cores": (main1 - main0) / (t1 - t0),
        "p50_ms": 1000 * percentile(latencies, 50) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "failures": failures,
    }


def _measure(
    name: str, argv: Sequence[str], port: int, log: Path, clients: int, seconds: float, prefix: str = ""
) -> list[dict[str, Any]]:
    """Every load against one server process started from `argv`; each row's load name after `prefix`."""
    server = ServerProcess(name, list(argv), log, {}, ROOT)
    try:
        server.wait_ready(_health_check(port), timeout=300)
        rows = [_load(server, port, s, clients, seconds) for s in LOADS]
    finally:
        server.stop()
    return [r | {"load": prefix + r["load"]} for r in rows]


def feed_bench(
    seconds: float, clients: int, out: Path | None, serve_flags: Sequence[str] = (), echo: bool = False
) -> list[dict[str, Any]]:
    """Every load against one free-engine server (`serve_flags` added to its own), and with `echo` against the
    bench's echo server (a bare grpc.aio Embed answering zero vectors: the floor of a Python gRPC server);
    prints a table and writes feed.json."""
    out = out or ROOT / "bench" / "results" / time.strftime("feed-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", "bench", "feed-server", "--port", str(port), *SERVER_FLAGS]
    argv += ["--device", "cpu", "--drain-delay-seconds", "0", "--log-level", "WARNING", *serve_flags]
    rows = _measure("bertmesh-free-engine", argv, port, out / "server.log", clients, seconds)
    if echo:
        port = free_port()
        argv = [sys.executable, "-m", "bench", "echo-server", "--port", str(port)]
        rows += _measure("echo", argv, port, out / "echo.log", clients, seconds, prefix="echo: ")
    (out / "feed.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print(f"results in {out}")
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| load | tokens/s | requests/s | server cores | tokens per server CPU-s | main thread cores | p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_cpu = f"{r['tokens_per_server_cpu_s']:,.0f}" if r["tokens_per_server_cpu_s"] else "-"
        cores = f"{r['server_cores']:.2f}" if r["server_cores"] is not None else "-"
        p50, p99 = r["p50_ms"], r["p99_ms"]
        latency = f"{p50:.1f} / {p99:.1f}" if p50 is not None and p99 is not None else "-"
        failed = f" (failures {r['failures']})" if r["failures"] else ""
        lines.append(
            f"| {r['load']}{failed} | {r['tokens_per_s']:,.0f} | {r['requests_per_s']:,.0f} | {cores} | {per_cpu} "
            f"| {r['main_thread_cores']:.2f} | {latency} |"
        )
    return "\n".join(lines)
