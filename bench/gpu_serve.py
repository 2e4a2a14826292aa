"""`bertmesh serve` on the GPU over gRPC, loaded from several client processes (part "serve").

One server per model (result cache off, the engine and batching defaults a user gets on CUDA), then per
scenario: `clients` processes (spawned, each its own grpc.aio loop) share the concurrency in a closed loop
(model_server.loadgen.drivers) of Embed requests drawn from the corpus. Reported: real tokens/s (the corpus's
token counts of the texts answered), p50/p99 latency over every client's answers, GPU utilisation sampled by
nvidia-smi during the window, and the server's CPU cores (its process tree's CPU seconds over the window).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import corpus
from bench.gpu_report import attempt
from bench.procs import ServerProcess, free_port
from bench.systems import ROOT, _health_check
from model_server.loadgen.stats import percentile

if TYPE_CHECKING:
    from bench.gpu import GpuBenchOptions

WARMUP_S = 3.0
SAMPLE_S = 0.25


@dataclass(frozen=True)
class Scenario:
    """One load: texts per request (uniform in min..max) at a total concurrency, on one model."""

    name: str
    model: str
    min_texts: int
    max_texts: int
    concurrency: int


def scenarios(models: tuple[str, ...], clients: int) -> list[Scenario]:
    """Issue 12's loads: MiniLM (the first model) 1-8 texts at c=64 and c=256 and 64 texts at c=16; the
    others 64 texts at c=16. Concurrency is at least one caller per client process."""
    first, *rest = models
    loads = [Scenario("1-8 texts, c=64", first, 1, 8, 64), Scenario("1-8 texts, c=256", first, 1, 8, 256)]
    loads += [Scenario("64 texts, c=16", model, 64, 64, max(16, clients)) for model in (first, *rest)]
    return loads


def _client(
    port: int, seed: int, scenario: Scenario, callers: int, warmup_s: float, measure_s: float
) -> dict[str, Any]:
    """One client process: a closed loop of `callers` Embed callers; its answered tokens and latencies."""
    import grpc

    from model_server.loadgen.drivers import closed_loop
    from model_server.proto.bertmesh.v1 import inference_pb2 as pb
    from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc

    texts = corpus.load()
    requests = corpus.sample_requests(texts, 2000, seed, scenario.min_texts, scenario.max_texts)

    async def run() -> dict[str, Any]:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)

            async def call(request: corpus.Request) -> None:
                try:
                    await stub.Embed(pb.EmbedRequest(inputs=request.strings), timeout=60)
                except grpc.aio.AioRpcError as exc:  # counted by status code, e.g. RESOURCE_EXHAUSTED
                    raise type(exc.code().name, (RuntimeError,), {})(exc.details()) from None

            started = time.time()
            window = await closed_loop(call, requests, callers, warmup_s, measure_s)
        return {
            "started": started,
            "seconds": window.seconds,
            "tokens": sum(r.tokens for r in window.requests),
            "latencies_s": window.latencies_s,
            "failures": window.failures,
        }

    return asyncio.run(run())


class Sampler:
    """Samples the server's CPU seconds and nvidia-smi's GPU utilisation every SAMPLE_S in a thread, with wall
    times, so both can be read over the measurement window alone (not the clients' start-up and warm-up)."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self._smi = shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float, float | None]] = []  # (wall time, server CPU s, GPU busy %)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _gpu_busy(self) -> float | None:
        if self._smi is None:
            return None
        query = [self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=10)
        return float(done.stdout.split()[0]) if done.returncode == 0 and done.stdout.strip() else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._server.cpu_seconds(), self._gpu_busy()))
            self._stop.wait(SAMPLE_S)

    def over(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(server CPU cores, mean GPU busy %) between two wall times (None where too few samples)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None, None
        cores = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
        busy = [s[2] for s in inside if s[2] is not None]
        return cores, (sum(busy) / len(busy) if busy else None)


def callers_per_client(concurrency: int, clients: int) -> list[int]:
    """The closed loop's callers shared out over the client processes as evenly as they go."""
    return [concurrency // clients + (i < concurrency % clients) for i in range(clients)]


def merged(answers: list[dict[str, Any]], warmup: float) -> tuple[float, float, list[float], dict[str, int]]:
    """Client answers together: the window where every client measured (from the last one's warm-up end to the
    first one's window end), every latency, and failures counted by kind."""
    start = max(a["started"] for a in answers) + warmup
    end = min(a["started"] + warmup + a["seconds"] for a in answers)
    latencies = [x for a in answers for x in a["latencies_s"]]
    failures: dict[str, int] = {}
    for a in answers:
        for kind, n in a["failures"].items():
            failures[kind] = failures.get(kind, 0) + n
    return start, end, latencies, failures


def _run(server: ServerProcess, port: int, scenario: Scenario, options: GpuBenchOptions) -> dict[str, Any]:
    clients = min(options.clients, scenario.concurrency)
    callers = callers_per_client(scenario.concurrency, clients)
    warmup = min(WARMUP_S, options.serve_seconds)
    context = multiprocessing.get_context("spawn")  # no grpc state forked into the clients
    with context.Pool(clients) as pool, Sampler(server) as sampler:
        args = [(port, 100 + i, scenario, n, warmup, options.serve_seconds) for i, n in enumerate(callers)]
        answers = pool.starmap(_client, args)
    window_start, window_end, latencies, failures = merged(answers, warmup)
    cpu_cores, gpu_busy = sampler.over(window_start, window_end)
    return {
        "scenario": scenario.name,
        "model": scenario.model,
        "client_processes": clients,
        "tokens_per_s": sum(a["tokens"] / a["seconds"] for a in answers if a["seconds"] > 0),
        "p50_ms": 1000 * percentile(latencies, 50) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "answers": len(latencies),
        "failures": failures,
        "gpu_busy_percent": gpu_busy,
        "server_cpu_cores": cpu_cores,
    }


def serve_bench(
    dirs: dict[str, Path],
    options: GpuBenchOptions,
    out: Path,
    on_row: Callable[[dict[str, Any]], None],
    on_error: Callable[[str, BaseException], None],
) -> None:
    """Every scenario, one server per model (first precision), started and stopped here; then the first model's
    1-8-text c=64 and 64-text loads again on a server with the other number of batches in flight (the
    pipelining A/B: bench.gpu.other_inflight). Each row goes to `on_row` as it is measured; a server that does
    not start, or a scenario that fails, to `on_error`, and the next one runs."""
    from bench.gpu import other_inflight

    plan = scenarios(options.models, options.clients)
    servers: list[tuple[str, list[Scenario], int | None]] = [
        (model, [s for s in plan if s.model == model], None) for model in dict.fromkeys(s.model for s in plan)
    ]
    cuda_engine = options.engine == "cuda" or (options.engine == "auto" and options.device == "cuda")
    if cuda_engine:  # the only engine with batches in flight together
        first = plan[0].model
        again = [s for s in plan if s.model == first and s.concurrency != 256]
        servers.append((first, again, other_inflight(options.device)))
    for model, scenarios_of_server, inflight in servers:
        attempt(
            f"serve {model} (inflight {inflight or 'default'})",
            functools.partial(
                _serve, dirs[model], model, scenarios_of_server, options, out, inflight, on_row, on_error
            ),
            on_error,
        )


def _serve(
    model_dir: Path,
    model: str,
    plan: list[Scenario],
    options: GpuBenchOptions,
    out: Path,
    inflight: int | None,
    on_row: Callable[[dict[str, Any]], None],
    on_error: Callable[[str, BaseException], None],
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "bertmesh_cli", "serve", "--model", str(model_dir), "--port", str(port)]
    argv += ["--device", options.device, "--precision", options.precisions[0], "--cache-entries", "0"]
    # No HTTP front (--http-port 0): this measures gRPC, and a fixed port would clash with anything on 8080.
    argv += ["--metrics-port", "0", "--http-port", "0", "--drain-delay-seconds", "0", "--log-level", "WARNING"]
    argv += ["--engine", options.engine]
    name = f"bertmesh-{model}"
    if inflight is not None:
        argv += ["--inflight-batches", str(inflight)]
        name += f"-inflight-{inflight}"
    server = ServerProcess(name, argv, out / f"serve-{name}.log", {}, ROOT)
    extra = {"precision": options.precisions[0], "inflight_batches": inflight}
    try:
        server.wait_ready(_health_check(port), timeout=600)
        for scenario in plan:
            row = attempt(
                f"serve {model} {scenario.name}", functools.partial(_run, server, port, scenario, options), on_error
            )
            if row is not None:
                on_row(row | extra)
    finally:
        server.stop()
