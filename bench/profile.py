"""Where bertmesh spends its time under load: py-spy samples of the server while the closed loop drives it.

Samples every thread of `bertmesh serve` (Python and native frames) and buckets each sample by the innermost
part of the serving path it is in: model compute, tokenisation, protobuf/reply encoding, batch formation,
gRPC/asyncio machinery, idle. Writes the raw collapsed stacks and the buckets under bench/results/.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter

from bench import corpus, promscrape
from bench.procs import machine_cpu_seconds
from bench.run import RESULTS
from bench.systems import ROOT, Bertmesh, Settings
from model_server.loadgen.drivers import closed_loop

# First match wins, checked from the innermost frame outwards.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (waiting)", ("epoll_wait", "select (selectors", "_worker (concurrent", "pthread_cond", "sem_wait", "futex")),
    ("tokenisation", ("tokenization.py", "tokenizers", "encode_batch")),
    ("model: torch forward", ("model_server/backend/", "torch/nn", "libtorch", "transformers/")),
    ("batch formation", ("batcher.py",)),
    (
        "reply/request encoding",
        ("task_codec.py", "oip_tensors.py", "model_server/tasks/", "postprocess.py", "_pb2", "protobuf", "upb"),
    ),
    ("servicer + data plane", ("servicers/", "dataplane.py", "validation.py", "cache.py", "interceptors.py")),
    ("gRPC + asyncio machinery", ("grpc", "asyncio", "cygrpc")),
    ("metrics", ("prometheus", "metrics.py")),
)


def bucket(frames: list[str]) -> str:
    """The bucket of one sample (frames outermost first)."""
    for name, needles in BUCKETS:
        for frame in reversed(frames[-6:]) if name.startswith("idle") else reversed(frames):
            if any(n in frame for n in needles):
                return name
    return "other"


def summarize_collapsed(text: str) -> dict[str, dict[str, float]]:
    """Shares of samples per thread and bucket from py-spy's raw (collapsed) output."""
    per_thread: dict[str, Counter[str]] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, _, rest = stack.partition(": ")  # "thread (1234): bertmesh-model_0;frame;frame"
        frames = rest.split(";")
        thread = frames[0] if head.startswith("thread") else "?"
        per_thread.setdefault(thread, Counter())[bucket(frames[1:])] += int(count)
    out = {}
    for thread, counts in per_thread.items():
        total = sum(counts.values())
        out[thread] = {k: v / total for k, v in counts.most_common()} | {"samples": float(total)}
    return out


def _start_pyspy(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile(concurrency: int, seconds: int) -> int:
    """Runs bertmesh under closed-loop load with py-spy attached; prints and writes the buckets."""
    pyspy = subprocess.run(
        [str(ROOT / "bench" / "peers" / "py-spy.sh")], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    out = RESULTS / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    async def main() -> dict[str, object]:
        system = Bertmesh(Settings())
        await system.start(out)
        requests = corpus.sample_requests(corpus.load(), 5000, 6)
        try:
            await closed_loop(system.call, requests, concurrency, 0.0, 3.0)  # warm up
            assert system.server is not None
            raw = out / "pyspy.txt"
            spy = _start_pyspy(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(system.server.pid),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "100",
                    "--threads",
                    "--idle",
                    "--native",
                ]
            )
            before = promscrape.scrape(system.metrics_url())
            busy0, _ = machine_cpu_seconds()
            cpu0 = system.cpu_seconds()
            window = await closed_loop(system.call, requests, concurrency, 0.5, float(seconds))
            busy1, _ = machine_cpu_seconds()
            server_cores = (system.cpu_seconds() - cpu0) / (seconds + 0.5)
            stats = promscrape.window_stats(before, promscrape.scrape(system.metrics_url()), seconds + 0.5)
            spy.wait(timeout=120)
            threads = summarize_collapsed(raw.read_text()) if raw.exists() else {}
            return {
                "concurrency": concurrency,
                "req_per_s": len(window.latencies_s) / window.seconds,
                "batches": stats,
                "server_cores": server_cores,
                "foreign_cores": (busy1 - busy0) / (seconds + 0.5) - server_cores,
                "threads": threads,
                "pyspy_stderr": (spy.stderr.read().decode() if spy.stderr else "")[-500:],
            }
        finally:
            await system.close()

    result = asyncio.run(main())
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"profile in {out}")
    return 0
