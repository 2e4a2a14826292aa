"""The packed attention kernel per instruction set against PyTorch's attention, alone, on MiniLM's heads.

  python -m bench kernels [--threads 1,2] [--isas avx512,avx2] [--rounds 5]

Each (instruction set, thread count) runs in its own process: the kernel's code is capped there by
BERTMESH_KERNEL_ISA and oneDNN's (PyTorch's attention runs MKL/oneDNN products) by ONEDNN_MAX_CPU_ISA, with the
server's OpenMP waiting policy. Shapes are batches the server forms for one-sentence requests (12 heads of 32,
lengths 8-256 as in the corpus): one short sentence, one long one, and a budget of mixed lengths. Reports
microseconds per call (best of rounds: the machine is shared) and the kernel's speed-up over PyTorch's
attention (> 1: the kernel is faster).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.systems import ROOT

# name -> sequence lengths of one batch (packed, 12 heads x 32: MiniLM's attention).
SHAPES: dict[str, list[int]] = {
    "1x16": [16],
    "1x128": [128],
    "1x256": [256],
    "mixed 2048 tokens": [24, 64, 128, 16, 256, 40, 96, 8, 200, 32, 48, 160, 12, 80, 56, 112, 20, 72, 144, 24] * 1
    + [64] * 5
    + [136],
}
HEADS, HEAD_DIM = 12, 32
# What each --isas name sets in the worker's environment: the kernel's cap, oneDNN's, MKL's
# (MKL_ENABLE_INSTRUCTIONS) and PyTorch's own vectorised kernels' (ATEN_CPU_CAPABILITY), so an AVX-512 machine
# runs every library's AVX2 code.
ISA_ENV = {
    "avx512": {},
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "BERTMESH_KERNEL_ISA": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
}


def _best(call: Callable[[], Any], rounds: int, repeat: int) -> float:
    call()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            call()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def worker(threads: int, rounds: int) -> dict[str, Any]:
    """Times every shape in this process (started by kernels_bench with its environment)."""
    import torch

    from model_server.backend import native_attention
    from model_server.backend.packed_bert import PackedBertEncoder, plan

    torch.set_num_threads(threads)
    kernel, how = native_attention.load()
    assert kernel is not None, how
    config = _config()
    layer = PackedBertEncoder(_bert(config))._typed_layers[0]
    rows: dict[str, Any] = {"isa": kernel.isa, "threads": threads, "shapes": {}}
    with torch.inference_mode():
        for name, lengths in SHAPES.items():
            packing = plan(lengths, torch.device("cpu"))
            qkv = torch.randn(sum(lengths), 3 * HEADS * HEAD_DIM)
            repeat = max(1, 4096 // sum(lengths))
            call = functools.partial(layer.attend, qkv, packing)
            layer.native = None
            sdpa = _best(call, rounds, repeat)
            layer.native = kernel
            ours = _best(call, rounds, repeat)
            rows["shapes"][name] = {"kernel_us": ours * 1e6, "torch_us": sdpa * 1e6}
    return rows


def _config() -> Any:
    import transformers

    return transformers.BertConfig(
        vocab_size=100,
        hidden_size=HEADS * HEAD_DIM,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        intermediate_size=4 * HEADS * HEAD_DIM,
        max_position_embeddings=512,
    )


def _bert(config: Any) -> Any:
    import transformers

    model: Any = transformers.BertModel(config)
    return model.eval()


def kernels_bench(threads: Sequence[int], isas: Sequence[str], rounds: int) -> list[dict[str, Any]]:
    """Every (instruction set, thread count) in its own process; prints the table."""
    from model_server.config import OPENMP_DEFAULTS

    results = []
    for isa in isas:
        for count in threads:
            env = {**os.environ, **OPENMP_DEFAULTS, **ISA_ENV[isa]}
            done = subprocess.run(
                [sys.executable, "-m", "bench", "kernels", "--worker", str(count), "--rounds", str(rounds)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                check=True,
            )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| kernel code | threads | shape | kernel µs | PyTorch µs | kernel speed-up |")
    print("|---|---|---|---|---|---|")
    for row in results:
        for shape, t in row["shapes"].items():
            print(
                f"| {row['isa']} | {row['threads']} | {shape} | {t['kernel_us']:,.0f} | {t['torch_us']:,.0f} | "
                f"{t['torch_us'] / t['kernel_us']:.2f} |"
            )
    return results
