"""perf_analyzer (Triton's own load generator, C++) over OIP v2 gRPC: an independent check of our numbers.

Each request carries `pa_texts` texts from the corpus (perf_analyzer cycles through the data entries), the
same for bertmesh and Triton. Triton's model has a batch dimension, so it gets -b N with one text per entry
row; bertmesh's has none, so each entry is a [N] tensor. perf_analyzer reads each model's configuration with
Triton's ModelConfig RPC, which bertmesh answers too.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
from pathlib import Path
from typing import Any

from bench.corpus import Text
from bench.systems import ROOT, OipTarget, System

_ENTRIES = 200


def input_data(texts: list[Text], per_request: int, batched: bool) -> dict[str, Any]:
    """perf_analyzer --input-data JSON: `_ENTRIES` requests of `per_request` texts each."""
    data: list[dict[str, Any]] = []
    for i in range(_ENTRIES):
        chunk = [texts[(i * per_request + j) % len(texts)].text for j in range(per_request)]
        if batched:  # one entry per batch row; perf_analyzer takes -b consecutive entries per request
            data.extend({"text": {"content": [t], "shape": [1]}} for t in chunk)
        else:
            data.append({"text": {"content": chunk, "shape": [per_request]}})
    return {"data": data}


def parse_csv(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's -f CSV: one row per concurrency (latencies in microseconds)."""
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(f)]


def _run(binary: Path, target: OipTarget, data: Path, concurrency: int, per_request: int, csv_out: Path) -> str:
    argv = [
        str(binary),
        "-m",
        target.model,
        "-u",
        target.url,
        "-i",
        "grpc",
        "--input-data",
        str(data),
        "--concurrency-range",
        str(concurrency),
        "--measurement-interval",
        "5000",
        # Three windows, reported whatever their spread: on a shared 2-core machine perf_analyzer's own
        # stability test (10% by default) rarely passes, and the interleaved repeats carry the comparison.
        "--max-trials",
        "3",
        "--stability-percentage",
        "1000",
        "--percentile",
        "99",
        "-f",
        str(csv_out),
    ]
    if target.batched:
        argv += ["-b", str(per_request)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout


def _setup() -> Path:
    """The perf_analyzer wrapper (bench/peers/perf_analyzer.sh installs it once)."""
    done = subprocess.run(
        [str(ROOT / "bench" / "peers" / "perf_analyzer.sh")], check=True, capture_output=True, text=True
    )
    return Path(done.stdout.split()[-1])


async def sweep(
    plan: Any, systems: list[System], texts: list[Text], out: Path, notes: dict[str, str]
) -> dict[str, Any]:
    """perf_analyzer against every system with an OIP endpoint, interleaved per concurrency."""
    try:
        binary = await asyncio.get_running_loop().run_in_executor(None, _setup)
    except (subprocess.CalledProcessError, OSError) as exc:
        notes["perf_analyzer"] = f"setup failed: {getattr(exc, 'stderr', '') or exc}"[-800:]
        return {}
    targets: dict[str, OipTarget] = {}
    for system in systems:
        target = system.oip()
        if target is not None:
            targets[system.name] = target
    results: dict[str, Any] = {"per_request_texts": plan.pa_texts, "runs": []}
    loop = asyncio.get_running_loop()
    for concurrency in plan.pa_concurrency:
        for name, target in targets.items():
            data = out / f"pa-input-{'batched' if target.batched else 'flat'}.json"
            if not data.exists():
                data.write_text(json.dumps(input_data(texts, plan.pa_texts, target.batched)))
            csv_out = out / f"pa-{name}-c{concurrency}.csv"
            try:
                stdout = await loop.run_in_executor(
                    None, _run, binary, target, data, concurrency, plan.pa_texts, csv_out
                )
                (out / "logs" / f"pa-{name}-c{concurrency}.txt").write_text(stdout)
                for row in parse_csv(csv_out):
                    entry = {"system": name, "concurrency": concurrency, **row}
                    results["runs"].append(entry)
                    print(
                        f"bench: perf_analyzer {name:8s} c={concurrency}: {row.get('Inferences/Second', 0):.1f} "
                        f"infer/s p99 {row.get('p99 latency', 0) / 1000:.1f} ms",
                        flush=True,
                    )
            except Exception as exc:
                notes[f"perf_analyzer/{name}/c{concurrency}"] = str(exc)[-1500:]
                print(f"bench: perf_analyzer {name} c={concurrency} failed: {exc}", flush=True)
    return results
