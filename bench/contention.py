"""How each system copes with a known CPU competitor: `python -m bench contention`.

The machine is shared, so every system sometimes runs next to someone else's build. This experiment makes
that competition explicit and equal: a burner process spinning on one core (the same for everyone), switched
on and off between windows. Systems are measured round-robin at one concurrency, with and without the
burner, for several rounds; the result is each system's throughput under the burner as a share of its
throughput without it, plus bertmesh variants that differ only in environment (thread and spin settings).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import corpus
from bench.procs import machine_cpu_seconds
from bench.run import RESULTS
from bench.systems import Bertmesh, InProcess, Settings, System
from model_server.loadgen.drivers import closed_loop
from model_server.loadgen.stats import median

VARIANTS: dict[str, dict[str, str]] = {
    "bertmesh": {},
    # libgomp workers sleep at once instead of spinning after each parallel region
    "bertmesh+omp-passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    # the Rust tokenizer computes on the calling thread instead of its own rayon pool
    "bertmesh+tok-serial": {"TOKENIZERS_PARALLELISM": "false"},
    "bertmesh+both": {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"},
    # libgomp spins this many times (~0.1 ms) before sleeping; an explicit count overrides the wait policy
    "bertmesh+spin1k": {"GOMP_SPINCOUNT": "1000"},
    "bertmesh+spin3k": {"GOMP_SPINCOUNT": "3000"},
    "bertmesh+spin10k": {"GOMP_SPINCOUNT": "10000"},
    # libgomp's own default when no policy is set (~3 ms of spinning)
    "bertmesh+spin300k": {"GOMP_SPINCOUNT": "300000"},
}


def _burner() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contention(concurrency: int, rounds: int, seconds: float, variants: list[str]) -> dict[str, Any]:
    """Runs the experiment; prints and writes the shares."""
    out = RESULTS / f"contention-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    async def main() -> dict[str, Any]:
        settings = Settings()
        systems: list[System] = [Bertmesh(settings, name=v, env=VARIANTS[v]) for v in variants]
        systems.append(InProcess(settings))
        for s in systems:
            await s.start(out)
        requests = corpus.sample_requests(corpus.load(), 5000, 6)
        rows: list[dict[str, Any]] = []
        try:
            for r in range(rounds):
                for burn in (False, True):
                    burner = _burner() if burn else None
                    try:
                        order = systems[r % len(systems) :] + systems[: r % len(systems)]
                        for s in order:
                            busy0, _ = machine_cpu_seconds()
                            t0 = time.perf_counter()
                            w = await closed_loop(s.call, requests, concurrency, 1.0, seconds)
                            elapsed = time.perf_counter() - t0
                            busy1, _ = machine_cpu_seconds()
                            row = {
                                "system": s.name,
                                "round": r,
                                "burner": burn,
                                "req_per_s": len(w.latencies_s) / w.seconds,
                                "machine_busy_cores": (busy1 - busy0) / elapsed,
                            }
                            rows.append(row)
                            print(f"bench: contention {json.dumps(row)}", flush=True)
                    finally:
                        if burner is not None:
                            burner.kill()
                            burner.wait()
        finally:
            for s in systems:
                await s.close()
        summary = {}
        for s in systems:
            free = median([x["req_per_s"] for x in rows if x["system"] == s.name and not x["burner"]])
            burned = median([x["req_per_s"] for x in rows if x["system"] == s.name and x["burner"]])
            summary[s.name] = {"req_per_s": free, "req_per_s_with_burner": burned, "kept": burned / free if free else 0}
        return {"concurrency": concurrency, "rounds": rounds, "seconds": seconds, "summary": summary, "rows": rows}

    result = asyncio.run(main())
    Path(out / "contention.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"contention results in {out}")
    return result
