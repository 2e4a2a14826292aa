"""Python's garbage collector inside bertmesh under load, and what gc.freeze() after start-up changes.

`python -m bench gc`: two bertmesh servers (bench/gcwrap.py; one with gc.freeze() once warm), driven in turn by
the same closed loop for several rounds; per window: throughput and the seconds spent in each GC generation.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import corpus
from bench.procs import ServerProcess
from bench.run import RESULTS
from bench.systems import ROOT, Bertmesh, Settings, _health_check, _poll_ready, _thread_env
from model_server.loadgen.drivers import closed_loop
from model_server.loadgen.stats import median


class WrappedBertmesh(Bertmesh):
    """bertmesh serve run through bench.gcwrap."""

    def __init__(self, settings: Settings, name: str, freeze: bool, stats: Path) -> None:
        super().__init__(settings, name=name)
        self.freeze = freeze
        self.stats = stats

    async def start(self, logs: Path) -> None:
        import grpc

        from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc

        s = self.settings
        serve = ["--port", str(self.port), "--metrics-port", str(self.metrics_port), "--http-port", str(self.http_port)]
        serve += ["--precision", "fp32"]
        serve += ["--device", "cpu", "--threads", str(s.threads), "--cache-entries", "0", "--log-level", "WARNING"]
        argv = [sys.executable, "-m", "bench.gcwrap", str(self.stats), *(["--freeze"] if self.freeze else []), "--"]
        self.server = ServerProcess(self.name, [*argv, *serve], logs / f"{self.name}.log", _thread_env(s.threads), ROOT)
        await _poll_ready(self.server, _health_check(self.port), 300)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    def gc_seconds(self) -> dict[str, Any]:
        """The GC totals the wrapper wrote last."""
        data: dict[str, Any] = json.loads(self.stats.read_text())
        return data


def gc_probe(concurrency: int, rounds: int, seconds: float) -> dict[str, Any]:
    """Runs the comparison; prints and writes the result."""
    out = RESULTS / f"gc-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    async def main() -> dict[str, Any]:
        systems = [
            WrappedBertmesh(Settings(), "bertmesh", False, out / "gc-default.json"),
            WrappedBertmesh(Settings(), "bertmesh+gc-freeze", True, out / "gc-freeze.json"),
        ]
        for s in systems:
            await s.start(out)
        await asyncio.sleep(1.5)  # let the freeze happen
        requests = corpus.sample_requests(corpus.load(), 5000, 6)
        rows = []
        try:
            for r in range(rounds):
                for s in systems if r % 2 == 0 else systems[::-1]:
                    before = s.gc_seconds()
                    w = await closed_loop(s.call, requests, concurrency, 1.0, seconds)
                    await asyncio.sleep(0.6)
                    after = s.gc_seconds()
                    gc_s = {g: after["totals"][g]["seconds"] - before["totals"][g]["seconds"] for g in "012"}
                    n = {g: after["totals"][g]["collections"] - before["totals"][g]["collections"] for g in "012"}
                    row = {
                        "system": s.name,
                        "round": r,
                        "req_per_s": len(w.latencies_s) / w.seconds,
                        "p99_ms": sorted(w.latencies_s)[int(0.99 * (len(w.latencies_s) - 1))] * 1000
                        if w.latencies_s
                        else 0,
                        "gc_seconds_per_second": {g: v / (seconds + 1.6) for g, v in gc_s.items()},
                        "collections": n,
                        "frozen_objects": after["frozen"],
                    }
                    rows.append(row)
                    print(f"bench: gc {json.dumps(row)}", flush=True)
        finally:
            for s in systems:
                await s.close()
        summary = {
            s.name: {
                "req_per_s": median([x["req_per_s"] for x in rows if x["system"] == s.name]),
                "gen2_seconds_per_second": median(
                    [x["gc_seconds_per_second"]["2"] for x in rows if x["system"] == s.name]
                ),
            }
            for s in systems
        }
        return {"concurrency": concurrency, "summary": summary, "rows": rows}

    result = asyncio.run(main())
    (out / "gc.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"gc results in {out}")
    return result
