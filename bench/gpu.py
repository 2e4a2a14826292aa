"""The GPU benchmark, one command: bertmesh's engine in process, its first pass over never-seen batches,
`bertmesh serve` over gRPC, and the peers, on the same corpus texts.

  python -m bench gpu                          # everything, on CUDA (hack/gpu-measure.sh on the GPU machine)
  python -m bench gpu --dry-run                # the same code path on CPU with a tiny model, through the table
  python -m bench gpu --parts engine --tiny --device cpu --precisions fp32 --seconds 1

Parts (`--parts`, default all):
  engine      MiniLM and BERT-base shapes (random weights, bench.gpu_models) at each precision through bertmesh's
              own loader and engine, batches as the server's batcher forms them from a never-empty queue, back to
              back (as many at once as the engine keeps in flight): tokens/s and model FLOP utilisation (useful
              FLOPs of real tokens, bench.flops) against the bf16 matmul peak measured in the same run (and the
              data sheet's, where known). With the cuda engine, the first model and precision also run with the
              other number of batches in flight (1 on CUDA, 2 on CPU): the A/B of pipelining.
  first-pass  64 batch compositions the engine has never seen, timed on their first pass and on the third.
  serve       `bertmesh serve` over gRPC from several client processes (bench.gpu_serve); with the cuda engine,
              the first model's 1-8-text c=64 and 64-text loads again with the other number of batches in flight.
  peers       sentence-transformers `encode` and plain transformers on length-sorted padded batches
              (bench.gpu_peers).
Results: results.json and summary.md (one table with ratios) in --out (default bench/results/gpu-<time>/).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import corpus
from bench.flops import EncoderShape, useful_flops
from bench.gpu_models import make_checkpoint, measured_peak
from bench.gpu_report import attempt, write_report
from bench.systems import ROOT

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s, by what
# torch.cuda.get_device_name() contains, for a side column only (MFU is against the matmul peak measured in the
# same run). An H100 SXM names itself "NVIDIA H100 80GB HBM3"; an H100
# not matched here (NVL) gets no nominal peak rather than another variant's.
NOMINAL_BF16_PEAK = {
    "H200": 989.4e12,
    "H100 80GB HBM3": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 PCIe": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
}
PARTS = ("engine", "first-pass", "serve", "peers")
FIRST_PASS_BATCHES = 64


@dataclass(frozen=True)
class GpuBenchOptions:
    """What one `python -m bench gpu` run measures."""

    device: str = "cuda"
    precisions: tuple[str, ...] = ("fp16", "bf16")
    models: tuple[str, ...] = ("minilm", "bert-base")
    parts: tuple[str, ...] = PARTS
    seconds: float = 20.0
    serve_seconds: float = 15.0
    clients: int = 8
    engine: str = "auto"  # --engine for every bertmesh measurement (auto: the cuda engine on CUDA)
    files: Path | None = None  # tokenizer/config files (default: the bundled MiniLM)
    out: Path | None = None


def dry_run(out: Path | None = None, files: Path | None = None) -> GpuBenchOptions:
    """Every part on CPU with a tiny model and short windows: proves the code path, measures nothing."""
    return GpuBenchOptions(
        device="cpu",
        precisions=("fp32",),
        models=("tiny",),
        seconds=0.3,
        serve_seconds=1.0,
        engine="cuda",
        files=files,
        out=out,
    )


def _loaded(model_dir: Path, precision: str, device: str, engine: Mapping[str, Any] | None = None) -> Any:
    """(description, tokenizer, backend) of the checkpoint, loaded and warmed as `bertmesh serve` does."""
    from model_server.config import ModelConfig, engine_defaults
    from model_server.server import load_model
    from model_server.tasks import Task

    settings = dataclasses.replace(engine_defaults(), precision=precision, device=device, **(engine or {}))
    return load_model(ModelConfig(path=model_dir, task=Task.EMBEDDING), settings)


def measure(
    model_dir: Path,
    shape: EncoderShape,
    precision: str,
    device: str,
    seconds: float,
    *,
    profile: bool = False,
    engine: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Saturated throughput and useful FLOP/s of one precision; with `profile`, also each kernel's share of the
    time over one pass of the batches (torch.profiler, self CPU time). `engine` overrides engine settings
    (model_server.config.EngineConfig fields)."""
    from model_server.backend import ModelInput
    from model_server.batcher import selection

    model, tokenizer, backend = _loaded(model_dir, precision, device, engine)
    texts = corpus.load()
    encoded = [e.ids for e in tokenizer.encode([t.text for t in texts], truncate=True)]
    limits = model.batching
    select = selection(padded=not backend.info.packed)  # as the server's batcher chooses for this engine
    # The batches a never-empty queue yields, in order (the queue refills from the corpus, cyclically).
    batches: list[list[tuple[int, ...]]] = []
    queue = list(encoded)
    while len(batches) < 64:
        chosen = select([len(ids) for ids in queue], limits.max_batch_tokens, limits.max_batch_requests)
        batches.append([queue[i] for i in chosen])
        taken = set(chosen)
        queue = [ids for k, ids in enumerate(queue) if k not in taken] + [queue[i] for i in chosen]
    for batch in batches[:3]:
        backend.run([ModelInput(ids, model.default_pooling) for ids in batch])
    lengths: list[int] = []
    count = 0
    inflight = backend.info.concurrent_batches
    # As the server runs them: `inflight` batches at once, each from its own thread (run returns host arrays).
    with ThreadPoolExecutor(inflight, thread_name_prefix="bench-batch") as pool:
        pending: deque[Future[Any]] = deque()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if len(pending) == inflight:
                pending.popleft().result()
            batch = batches[count % len(batches)]
            pending.append(pool.submit(backend.run, [ModelInput(ids, model.default_pooling) for ids in batch]))
            lengths.extend(len(ids) for ids in batch)
            count += 1
        for done in pending:
            done.result()
        elapsed = time.perf_counter() - start
    shares: dict[str, float] = {}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches[:8]:  # shares settle within a few batches; 64 took minutes at one thread
                backend.run([ModelInput(ids, model.default_pooling) for ids in batch])
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        shares = {e.key: e.self_cpu_time_total / total for e in events if e.self_cpu_time_total / total >= 0.01}
    return {
        "model": model_dir.name,
        "kernel_shares": shares,
        "precision": backend.info.precision,
        "engine": backend.info.engine,
        "kernels": backend.info.kernels,
        "inflight_batches": inflight,
        "max_batch_tokens": limits.max_batch_tokens,
        "batches": count,
        "tokens_per_s": sum(lengths) / elapsed,
        "inputs_per_s": len(lengths) / elapsed,
        "useful_flops_per_s": useful_flops(lengths, shape) / elapsed,
    }


def compositions(lengths: Sequence[int], count: int, max_tokens: int, max_inputs: int, seed: int) -> list[list[int]]:
    """`count` distinct batches (indices into `lengths`): random texts up to the token and input budgets."""
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    batches: list[list[int]] = []
    while len(batches) < count:
        batch: list[int] = []
        tokens = 0
        for i in rng.sample(range(len(lengths)), min(len(lengths), max_inputs)):
            if tokens + lengths[i] > max_tokens:
                break
            batch.append(i)
            tokens += lengths[i]
        key = tuple(sorted(batch))
        if batch and key not in seen:
            seen.add(key)
            batches.append(batch)
    return batches


def first_pass(
    model_dir: Path, precision: str, device: str, engine: Mapping[str, Any] | None = None, passes: int = 3
) -> dict[str, Any]:
    """Tokens/s of each pass over FIRST_PASS_BATCHES never-seen batch compositions (warm-up done as the server
    does it); the first pass is what a server meets, every batch a new composition."""
    from model_server.backend import ModelInput

    model, tokenizer, backend = _loaded(model_dir, precision, device, engine)
    ids = [e.ids for e in tokenizer.encode([t.text for t in corpus.load()], truncate=True)]
    limits = model.batching
    chosen = compositions(
        [len(i) for i in ids], FIRST_PASS_BATCHES, limits.max_batch_tokens, limits.max_batch_requests, 7
    )
    batches = [[ModelInput(ids[i], model.default_pooling) for i in batch] for batch in chosen]
    tokens = sum(len(ids[i]) for batch in chosen for i in batch)
    rates, per_batch_ms = [], []
    for _ in range(passes):
        start = time.perf_counter()
        for batch in batches:
            backend.run(batch)  # returns host arrays: synchronised
        elapsed = time.perf_counter() - start
        rates.append(tokens / elapsed)
        per_batch_ms.append(1000 * elapsed / len(batches))
    return {
        "model": model_dir.name,
        "precision": backend.info.precision,
        "engine": backend.info.engine,
        "batches": len(batches),
        "tokens_per_s_by_pass": rates,
        "ms_per_batch_by_pass": per_batch_ms,
        "first_over_steady": rates[0] / rates[-1],
    }


def nominal_peak(device_name: str) -> float | None:
    """The data sheet's dense bf16 FLOP/s of the GPU torch names so, where it is known."""
    return next((peak for key, peak in NOMINAL_BF16_PEAK.items() if key in device_name), None)


def gpu_bench(options: GpuBenchOptions) -> dict[str, Any]:
    """Runs the chosen parts; prints the summary table and writes results.json and summary.md to `out`, both
    rewritten after every measurement, so a run cut short (the device call's time limit) keeps what it measured."""
    import torch

    device = options.device
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    nominal = nominal_peak(name)
    result: dict[str, Any] = {"device": name, "torch": torch.__version__, "nominal_bf16_peak_flops": nominal}
    out = options.out or ROOT / "bench" / "results" / time.strftime("gpu-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    def failed(what: str, exc: BaseException) -> None:
        traceback.print_exception(exc)
        error = " / ".join(line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip())[:600]
        result.setdefault("errors", []).append({"what": what, "error": error})
        _save(result, out)
        print(f"bench gpu: FAILED {what}: {error}", flush=True)

    def add(part: str, row: dict[str, Any]) -> None:
        result.setdefault(part, []).append(row)
        _save(result, out)
        print(
            f"bench gpu: {part}: {row.get('model')} {row.get('scenario') or row.get('peer') or ''} "
            f"{row['tokens_per_s']:,.0f} tokens/s",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="bertmesh-gpu-bench-") as tmp:
        dirs: dict[str, Path] = {}
        shapes: dict[str, EncoderShape] = {}
        for model in options.models:
            dirs[model] = Path(tmp) / model
            shapes[model] = make_checkpoint(dirs[model], model, options.files)
        peak = result["measured_peak_flops"] = measured_peak(device)
        if "engine" in options.parts:
            runs: list[tuple[str, str, dict[str, Any]]] = [
                (m, p, {"kind": options.engine}) for m in options.models for p in options.precisions
            ]
            for n, (model, precision, engine) in enumerate(runs):
                row = attempt(
                    f"engine {model} {precision} " + " ".join(f"{key}={value}" for key, value in engine.items()),
                    functools.partial(
                        measure, dirs[model], shapes[model], precision, device, options.seconds, engine=engine
                    ),
                    failed,
                )
                if row is None:
                    continue
                row["model"] = model
                row["mfu_measured_peak"] = row["useful_flops_per_s"] / peak
                row["mfu_nominal_peak"] = row["useful_flops_per_s"] / nominal if nominal else None
                add("rows", row)
                # The pipelining A/B, next to the first cuda row measured (the first may have failed): the same
                # model and precision with the other number of batches in flight.
                if row["engine"] == "cuda" and not any("inflight_batches" in e for _, _, e in runs):
                    runs.insert(n + 1, (model, precision, engine | {"inflight_batches": other_inflight(device)}))
        first = options.models[0]
        if "first-pass" in options.parts:
            found = attempt(
                f"first pass {first} {options.precisions[0]}",
                lambda: first_pass(dirs[first], options.precisions[0], device, {"kind": options.engine}),
                failed,
            )
            if found is not None:
                result["first_pass"] = found | {"model": first}
                _save(result, out)
        if "serve" in options.parts:
            from bench.gpu_serve import serve_bench

            serve_bench(dirs, options, out, lambda row: add("serve", row), failed)
        if "peers" in options.parts:
            from bench.gpu_peers import peers

            peers(dirs, shapes, options, peak, lambda row: add("peers", row), failed)
    print(_save(result, out))
    print(f"results in {out}")
    return result


def _save(result: dict[str, Any], out: Path) -> str:
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return write_report(result, out)


def other_inflight(device: str) -> int:
    """The batches in flight that the A/B compares with the default (2 on CUDA, 1 on CPU): the other one."""
    return 1 if device == "cuda" else 2


def options_from(args: Mapping[str, Any]) -> GpuBenchOptions:
    """The options `python -m bench gpu` arguments ask for."""
    out = Path(args["out"]) if args["out"] else None
    files = Path(args["model_files"]) if args["model_files"] else None
    if args["dry_run"]:
        return dry_run(out, files)

    def split(value: str) -> tuple[str, ...]:
        return tuple(v for v in value.split(",") if v)

    return GpuBenchOptions(
        device=args["device"],
        precisions=split(args["precisions"]),
        models=("tiny",) if args["tiny"] else split(args["models"]),
        parts=split(args["parts"]),
        seconds=args["seconds"],
        serve_seconds=args["serve_seconds"],
        clients=args["clients"],
        engine=args["engine"],
        files=files,
        out=out,
    )
