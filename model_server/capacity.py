"""`bertmesh bench --report`: a capacity report for one model on this hardware.

For each precision the device supports it measures, in a fresh process (clean memory numbers): the memory the
model takes, throughput at saturation for a few batch budgets (and picks the smallest within 3% of the best:
the same throughput with shorter waits), latency unloaded and under open-loop load at fractions of capacity,
and outputs on a fixed sample. It then compares each precision's outputs with fp32 (cosine for embeddings,
agreement for labels, entities and tokens) and recommends, for a target request rate and p99, the batch budget
and the number of replicas. Markdown on stdout; `--report` also writes report.md, results.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from model_server.config import openmp_defaults

LOAD_FRACTIONS = (0.3, 0.5, 0.7, 0.9)
BUDGETS = {"cpu": (512, 1024, 2048, 4096), "cuda": (4096, 8192, 16384, 32768)}
FIDELITY_SAMPLE = 64
# A worker's stderr line that reports a measurement starting; the parent shows it at once (the rest of the
# worker's stderr is kept for a failure message).
PROGRESS_MARK = "bertmesh-bench-progress "


def measurement_steps(device: str, seconds: float) -> list[tuple[str, float]]:
    """What a worker measures, in order, with each measurement's length in seconds (for progress lines)."""
    steps = [(f"throughput at batch budget {budget} tokens", seconds / 2) for budget in BUDGETS[device]]
    steps += [("capacity at the chosen budget", seconds), ("latency unloaded", seconds)]
    steps += [(f"latency at {round(f * 100)}% load", seconds) for f in LOAD_FRACTIONS]
    return [*steps, (f"outputs of {FIDELITY_SAMPLE} texts for fidelity", 0.0)]


class _Steps:
    """Announces each measurement of a worker on stderr as it starts."""

    def __init__(self, device: str, seconds: float) -> None:
        self.steps = iter(enumerate(measurement_steps(device, seconds), start=1))
        self.total = len(measurement_steps(device, seconds))

    def next(self) -> None:
        """Reports that the next measurement starts."""
        number, (what, length) = next(self.steps)
        took = f" ({length:g} s)" if length else ""
        print(f"{PROGRESS_MARK}[{number}/{self.total}] {what}{took}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The `bertmesh bench` argument parser."""
    p = argparse.ArgumentParser(prog="bertmesh bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--report", action="store_true", help="also write report.md, results.json and a PNG to --out")
    p.add_argument("--out", type=Path, default=Path("bertmesh-capacity"), help="report folder")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--texts", type=Path, default=None, help="representative texts, one per line")
    p.add_argument("--texts-per-request", type=int, default=4, help="texts per request (default: 4)")
    p.add_argument("--precisions", default="", help="comma-separated (default: all the device supports)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch threads per replica (default: torch's)")
    p.add_argument("--target-rps", type=float, default=50.0, help="requests per second to serve (default: 50)")
    p.add_argument("--target-p99-ms", type=float, default=500.0, help="p99 latency to meet (default: 500)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each measurement (default: 6)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def _rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _outputs(results: Sequence[Any]) -> list[Any]:
    """Task results as JSON data for the fidelity comparison."""
    out: list[Any] = []
    for r in results:
        if isinstance(r, np.ndarray):
            out.append([float(x) for x in r])
        elif hasattr(r, "labels"):
            out.append(r.labels[0].label if r.labels else "")
        elif isinstance(r, tuple) and r and isinstance(r[0], tuple):
            out.append([c.token_id for mask in r for c in mask[:1]])
        else:
            out.append(sorted((e.label, e.start, e.end) for e in r))
    return out


async def _measure(args: dict[str, Any]) -> dict[str, Any]:
    from model_server.capacity_workload import (
        measure_closed,
        measure_open,
        request_plan,
        sample_texts,
        task_call,
        with_masks,
    )
    from model_server.config import EngineConfig, ModelConfig, engine_defaults
    from model_server.dataplane import DataPlane
    from model_server.server import load_model
    from model_server.tasks import Task

    engine: EngineConfig = dataclasses.replace(
        engine_defaults(), precision=args["precision"], device=args["device"], threads=args["threads"] or None
    )
    before = _rss_mib()
    model, tokenizer, backend = load_model(ModelConfig(path=Path(args["model"]) if args["model"] else None), engine)
    memory = _rss_mib() - before
    texts = sample_texts(Path(args["texts"]) if args["texts"] else None)
    if model.task is Task.FILL_MASK:
        texts = with_masks(texts, model.mask_token)
    seconds, per_request = args["seconds"], args["per_request"]
    device = "cuda" if model.device.startswith("cuda") else "cpu"

    def plane_for(budget: int) -> DataPlane:
        batching = dataclasses.replace(model.batching, max_batch_tokens=max(budget, model.limits.max_tokens_per_input))
        return DataPlane(dataclasses.replace(model, batching=batching), tokenizer, backend, cache_entries=0)

    saturating = request_plan(texts, per_request, 0)
    steps = _Steps(device, seconds)
    sweep: dict[int, float] = {}
    for budget in BUDGETS[device]:
        steps.next()
        plane = plane_for(budget)
        plane.start()
        sweep[budget] = (await measure_closed(task_call(plane), saturating, 32, seconds / 2)).rps
        await plane.close()
    best = max(sweep.values())
    budget = min(b for b, rps in sweep.items() if rps >= 0.97 * best)
    plane = plane_for(budget)
    plane.start()
    call = task_call(plane)
    steps.next()
    capacity = await measure_closed(call, saturating, 32, seconds)
    steps.next()
    unloaded = await measure_closed(call, request_plan(texts, per_request, 2), 1, seconds)
    loaded = []
    for f in LOAD_FRACTIONS:
        steps.next()
        loaded.append(await measure_open(call, request_plan(texts, per_request, 3), f * capacity.rps, seconds))
    steps.next()
    fidelity = [await call([text]) for text in texts[:FIDELITY_SAMPLE]]
    await plane.close()
    return {
        "precision": model.precision,
        "engine": model.engine,
        "device": model.device,
        "task": model.task.value,
        "name": model.name,
        "memory_mib": memory,
        "budget_sweep": sweep,
        "max_batch_tokens": budget,
        "capacity": dataclasses.asdict(capacity),
        "unloaded": dataclasses.asdict(unloaded),
        "loaded": [dataclasses.asdict(m) for m in loaded],
        "outputs": _outputs([reply.results[0] for reply in fidelity]),
    }


def _run_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Measures one precision in a child process; returns its results."""
    env = dict(os.environ)
    openmp_defaults(env)  # as `bertmesh serve` runs
    worker = subprocess.Popen(
        [sys.executable, "-m", "model_server.capacity", "--worker", json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert worker.stdout is not None and worker.stderr is not None
    kept: list[str] = []
    # stderr is read on a thread while stdout is read here: the worker's last write, its results, can outgrow a
    # pipe's buffer, and it must not block on it while this process waits on stderr.
    relay = threading.Thread(target=_relay, args=(worker.stderr, args["precision"], kept), daemon=True)
    relay.start()
    out = worker.stdout.read()
    worker.wait()
    relay.join()
    if worker.returncode != 0:
        raise SystemExit(f"bertmesh bench: measuring {args['precision']} failed:\n{''.join(kept)[-3000:]}")
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def _relay(stream: TextIO, precision: str, kept: list[str]) -> None:
    """Shows the worker's progress lines as they come; keeps its other stderr lines."""
    for line in stream:
        if line.startswith(PROGRESS_MARK):
            print(
                f"bertmesh bench: {precision} {line.removeprefix(PROGRESS_MARK)}", end="", file=sys.stderr, flush=True
            )
        else:
            kept.append(line)


def fidelity(task: str, reference: Sequence[Any], other: Sequence[Any]) -> dict[str, float]:
    """How close a precision's outputs are to fp32's on the same texts."""
    if task == "embedding":
        a, b = np.array(reference), np.array(other)
        cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean())}
    if task == "rerank":  # relevance scores (the logit's sigmoid): how far a precision moves them
        scores = [1 / (1 + np.exp(-np.array(outputs, dtype=np.float64)[:, 0])) for outputs in (reference, other)]
        return {"score_max_abs_diff": float(np.abs(scores[0] - scores[1]).max())}
    agree = [x == y for x, y in zip(reference, other, strict=True)]
    return {"agreement": float(np.mean(agree))}


def recommend(result: dict[str, Any], target_rps: float, target_p99_ms: float) -> dict[str, Any]:
    """Replicas for the target rate: each replica runs at the highest measured load whose p99 meets the target."""
    capacity = result["capacity"]["rps"]
    meeting = [m for m in result["loaded"] if m["p99_ms"] <= target_p99_ms and not (m["shed"] or m["timed_out"])]
    if not meeting or capacity <= 0:
        return {
            "replicas": None,
            "per_replica_rps": None,
            "why": f"p99 {target_p99_ms:.0f} ms is not met even at "
            f"{LOAD_FRACTIONS[0]:.0%} load (unloaded p99 {result['unloaded']['p99_ms']:.0f} ms)",
        }
    best = max(meeting, key=lambda m: m["offered_rps"])
    per_replica = best["offered_rps"]
    return {
        "replicas": math.ceil(target_rps / per_replica),
        "per_replica_rps": per_replica,
        "load_fraction": per_replica / capacity,
        "p99_ms": best["p99_ms"],
    }


def render_markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The report as Markdown."""
    first = results[0]
    lines = [
        f"# Capacity report: {first['name']} ({first['task']}) on {first['device']}",
        "",
        f"Requests of {args.texts_per_request} texts; target {args.target_rps:g} req/s at p99 <= "
        f"{args.target_p99_ms:g} ms; {args.seconds:g} s per measurement.",
        "",
        "| precision | engine | memory MiB | max batch tokens | capacity req/s | texts/s | unloaded p99 ms | "
        "p99 ms at 50% / 90% load | fidelity to fp32 | replicas for target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        loaded = {round(m["offered_rps"] / r["capacity"]["rps"], 1): m["p99_ms"] for m in r["loaded"]}
        fid = r.get("fidelity", {})
        fid_text = (
            f"cos min {fid['cosine_min']:.4f}, mean {fid['cosine_mean']:.4f}"
            if "cosine_min" in fid
            else f"relevance max |diff| {fid['score_max_abs_diff']:.4f}"
            if "score_max_abs_diff" in fid
            else f"agreement {fid['agreement']:.1%}"
            if fid
            else "reference"
        )
        rec = r["recommendation"]
        rec_text = f"{rec['replicas']} (at {rec['per_replica_rps']:.1f} req/s each)" if rec["replicas"] else rec["why"]
        lines.append(
            f"| {r['precision']} | {r['engine']} | {r['memory_mib']:.0f} | {r['max_batch_tokens']} | "
            f"{r['capacity']['rps']:.1f} | {r['capacity']['rps'] * args.texts_per_request:.0f} | "
            f"{r['unloaded']['p99_ms']:.0f} | {loaded.get(0.5, float('nan')):.0f} / "
            f"{loaded.get(0.9, float('nan')):.0f} | {fid_text} | {rec_text} |"
        )
    options = [r for r in results if r["recommendation"]["replicas"]]
    if options:
        pick = min(options, key=lambda r: (r["recommendation"]["replicas"], r["precision"] != "fp32"))
        lines += [
            "",
            f"Recommended: `--precision {pick['precision']} --max-batch-tokens {pick['max_batch_tokens']}`,"
            f" {pick['recommendation']['replicas']} replicas (HPA minReplicas), each kept under "
            f"{pick['recommendation']['per_replica_rps']:.1f} req/s. Check the fidelity column first: "
            "a lower precision is only a saving if its outputs are close enough for your use.",
        ]
    lines += [
        "",
        "Batch budget sweep (req/s at saturation): "
        + "; ".join(
            f"{r['precision']}: " + ", ".join(f"{b}={v:.1f}" for b, v in r["budget_sweep"].items()) for r in results
        ),
    ]
    return "\n".join(lines) + "\n"


def _plot(results: list[dict[str, Any]], path: Path, target_p99_ms: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        points = sorted((m["offered_rps"], m["p99_ms"]) for m in r["loaded"])
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=r["precision"])
    ax.axhline(target_p99_ms, linestyle="--", color="grey", label="target p99")
    ax.set_xlabel("offered load, requests/s per replica")
    ax.set_ylabel("p99 latency, ms")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str]) -> int:
    """Entry point of `bertmesh bench`."""
    args = build_parser().parse_args(list(argv))
    if args.worker is not None:
        result = asyncio.run(_measure(json.loads(args.worker)))
        print(json.dumps(result))
        return 0
    # Only the device is resolved here; each worker process applies the MKL answer itself (load_model).
    from model_server.backend.torch_engine import resolve_device

    device = resolve_device(args.device)
    precisions = [p for p in args.precisions.split(",") if p] or (
        ["fp32", "fp16", "bf16"] if device.startswith("cuda") else ["fp32", "int8"]
    )
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # the fidelity reference
    common = {
        "model": str(args.model) if args.model else "",
        "texts": str(args.texts) if args.texts else "",
        "device": device,
        "threads": args.threads,
        "seconds": args.seconds,
        "per_request": args.texts_per_request,
    }
    results = []
    steps = measurement_steps("cuda" if device.startswith("cuda") else "cpu", args.seconds)
    plan = f"{len(steps)} measurements, about {sum(length for _, length in steps):.0f} s"
    for precision in precisions:
        print(f"bertmesh bench: measuring {precision}: loading the model, then {plan}", file=sys.stderr, flush=True)
        results.append(_run_worker({**common, "precision": precision}))
    reference = results[0]["outputs"]
    for r in results:
        if r is not results[0]:
            r["fidelity"] = fidelity(r["task"], reference, r["outputs"])
        r["recommendation"] = recommend(r, args.target_rps, args.target_p99_ms)
    markdown = render_markdown(results, args)
    print(markdown)
    if args.report:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(markdown)
        (args.out / "results.json").write_text(
            json.dumps([{k: v for k, v in r.items() if k != "outputs"} for r in results], indent=2)
        )
        plotted = _plot(results, args.out / "latency_vs_load.png", args.target_p99_ms)
        print(
            f"bertmesh bench: wrote {args.out}/report.md, results.json"
            + (", latency_vs_load.png" if plotted else " (no PNG: matplotlib is not installed)"),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
