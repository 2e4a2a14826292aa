"""The GPU benchmark: BERT-base (random weights) at fp16/bf16 through bertmesh's own engine, and its model FLOP
utilisation (MFU) against the GPU's bf16 peak.

  python -m bench gpu                                   # fp16 and bf16 on CUDA, 20 s each
  python -m bench gpu --device cpu --tiny --seconds 1   # the same code path on CPU, a tiny model (smoke run)

The checkpoint is made in a temporary directory: bert-base-uncased's shape (12 layers, hidden 768, FFN 3072,
vocabulary 30 522) with random weights in safetensors, and the bundled MiniLM tokenizer (the same uncased
WordPiece vocabulary). bertmesh loads it with its own loader (`model_server.server.load_model`: engine,
precision, batch limits), then computes batches of corpus texts, chosen by bertmesh's batch selection from a
queue that is never empty, back to back: the saturated model, without gRPC. Useful FLOPs count real tokens
only (bench.flops). The peak is measured in the same run (best bf16 `torch.mm` of 8192^3; fp32 on CPU) and, for
GPUs whose data sheet is known, the nominal dense bf16 peak is reported beside it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import corpus
from bench.flops import EncoderShape, useful_flops
from bench.systems import ROOT

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s, by device-name substring.
NOMINAL_BF16_PEAK = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100": 756e12, "A100": 312e12, "L40S": 362e12}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def make_checkpoint(directory: Path, *, tiny: bool) -> EncoderShape:
    """A random-weight BERT (base, or tiny) with the bundled tokenizer; returns its FLOP shape."""
    import transformers

    from bench.model import bundled_model_path

    hidden, layers, heads, ffn = (64, 2, 4, 128) if tiny else (768, 12, 12, 3072)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
        architectures=["BertModel"],
    )
    transformers.BertModel(config).save_pretrained(directory, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(bundled_model_path() / name, directory / name)
    return EncoderShape(params=(4 * hidden * hidden + 2 * hidden * ffn) * layers, layers=layers, hidden=hidden)


def measured_peak(device: str, seconds: float = 2.0) -> float:
    """Best matmul rate in FLOP/s: bf16 8192^3 on CUDA, fp32 1536^3 on CPU."""
    import torch

    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (1536, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2.0 * size**3 / (time.perf_counter() - start))
    return best


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
    from model_server.config import ModelConfig, engine_defaults
    from model_server.server import load_model
    from model_server.tasks import Task

    settings = dataclasses.replace(engine_defaults(), precision=precision, device=device, **(engine or {}))
    model, tokenizer, backend = load_model(ModelConfig(path=model_dir, task=Task.EMBEDDING), settings)
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
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = batches[count % len(batches)]
        backend.run([ModelInput(ids, model.default_pooling) for ids in batch])  # returns host arrays: synced
        lengths.extend(len(ids) for ids in batch)
        count += 1
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
        "kernel_shares": shares,
        "precision": backend.info.precision,
        "engine": backend.info.engine,
        "kernels": backend.info.kernels,
        "max_batch_tokens": limits.max_batch_tokens,
        "batches": count,
        "tokens_per_s": sum(lengths) / elapsed,
        "inputs_per_s": len(lengths) / elapsed,
        "useful_flops_per_s": useful_flops(lengths, shape) / elapsed,
    }


def gpu_bench(
    precisions: list[str], device: str, seconds: float, *, tiny: bool, out: Path | None = None
) -> dict[str, Any]:
    """Runs every precision on one checkpoint; prints and writes results.json to `out` (default
    bench/results/gpu-<time>/)."""
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    nominal = next((peak for key, peak in NOMINAL_BF16_PEAK.items() if key in name), None)
    with tempfile.TemporaryDirectory(prefix="bertmesh-gpu-bench-") as tmp:
        shape = make_checkpoint(Path(tmp), tiny=tiny)
        peak = measured_peak(device)
        rows = [measure(Path(tmp), shape, p, device, seconds) for p in precisions]
    for row in rows:
        row["mfu_measured_peak"] = row["useful_flops_per_s"] / peak
        row["mfu_nominal_peak"] = row["useful_flops_per_s"] / nominal if nominal else None
    result = {"device": name, "model": "tiny" if tiny else "bert-base", "measured_peak_flops": peak,
              "nominal_bf16_peak_flops": nominal, "rows": rows}  # fmt: skip
    out = out or ROOT / "bench" / "results" / time.strftime("gpu-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"{name}: measured matmul peak {peak / 1e12:.1f} TFLOP/s; nominal bf16 {nominal and nominal / 1e12}")
    print("| precision | tokens/s | inputs/s | useful TFLOP/s | MFU (measured peak) | MFU (nominal bf16) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        nominal_mfu = f"{r['mfu_nominal_peak']:.1%}" if r["mfu_nominal_peak"] is not None else "-"
        print(f"| {r['precision']} | {r['tokens_per_s']:,.0f} | {r['inputs_per_s']:,.0f} | "
              f"{r['useful_flops_per_s'] / 1e12:.2f} | {r['mfu_measured_peak']:.1%} | {nominal_mfu} |")  # fmt: skip
    print(f"results in {out}")
    return result
