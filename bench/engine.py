"""In-process A/B of bertmesh's CPU engine options on the bundled MiniLM: what each one is worth.

  python -m bench engine [--rounds 3] [--seconds 8] [--configs 'NAME;NAME'] [--isa avx512,avx2]
  (names: bench/engine.py CONFIGS; --isa avx2 caps oneDNN and the attention kernel at AVX2 in the workers, so
  an AVX-512 machine measures what an AVX2-only one runs, both in one command)

Each configuration runs in its own process (the MKL vendor answer must be decided before torch loads),
interleaved over rounds, through bertmesh's own loader and batch selection (bench.gpu.measure: batches of the
server's token budget, chosen as its batcher chooses for that engine, from a never-empty queue of corpus texts,
back to back, no gRPC). Reports real tokens/s (median over
rounds), each configuration's ratio to fp32, and the share of time in attention and in the projections.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.flops import minilm_l6_shape
from bench.kernels import ISA_ENV
from bench.systems import ROOT

# name -> (precision, environment, engine settings: model_server.config.EngineConfig fields). The MKL answer is
# set by the environment: it must be decided before torch loads, when the worker process starts.
CONFIGS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "fp32": ("fp32", {}, {}),  # kernels chosen by timing at load (the default)
    "fp32 without the MKL answer": ("fp32", {"BERTMESH_MKL_AMD": "0"}, {}),
    "fp32, attention kernel": ("fp32", {}, {"attention": "native", "projections": "onednn"}),
    "fp32, PyTorch attention": ("fp32", {}, {"attention": "torch", "projections": "onednn"}),
    "fp32, PyTorch projections and attention": ("fp32", {}, {"attention": "torch", "projections": "torch"}),
    "fp32, transformers engine (padded batches)": ("fp32", {}, {"kind": "transformers"}),
    "int8": ("int8", {}, {}),
    "int8, stages eager": ("int8", {}, {"int8_fuse": False}),
    "int8 without the MKL answer": ("int8", {"BERTMESH_MKL_AMD": "0"}, {}),
    "int8, attention kernel": ("int8", {}, {"attention": "native"}),
    "int8, PyTorch attention": ("int8", {}, {"attention": "torch"}),
}
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "bertmesh::packed_attention")
PROJECTIONS = ("mkldnn::_linear_pointwise", "onednn::qlinear_pointwise")


def worker(name: str, seconds: float, threads: int = 2) -> dict[str, Any]:
    """One configuration, measured in this process (started by engine_bench with its environment)."""
    import torch

    from bench.gpu import measure
    from bench.model import bundled_model_path

    torch.set_num_threads(threads)
    precision, _, engine = CONFIGS[name]
    return measure(bundled_model_path(), minilm_l6_shape(), precision, "cpu", seconds, profile=True, engine=engine)


def engine_bench(
    rounds: int, seconds: float, names: Sequence[str] = (), isas: Sequence[str] = ("avx512",), threads: int = 2
) -> dict[str, list[dict[str, Any]]]:
    """The configurations `names` (default all; fp32 always) `rounds` times on each instruction set of `isas`
    (bench.kernels.ISA_ENV), interleaved; prints the table and writes results.json."""
    from model_server.config import OPENMP_DEFAULTS

    chosen = ["fp32", *(n for n in names if n != "fp32")] if names else list(CONFIGS)
    runs: dict[str, list[dict[str, Any]]] = {_key(name, isa): [] for isa in isas for name in chosen}
    for r in range(rounds):
        for isa in isas:
            for name in chosen:
                env = CONFIGS[name][1]
                child_env = {**os.environ, **OPENMP_DEFAULTS, **ISA_ENV[isa], **env}  # as `bertmesh serve` runs
                worker_args = ["--worker", name, "--seconds", str(seconds), "--threads", str(threads)]
                done = subprocess.run(
                    [sys.executable, "-m", "bench", "engine", *worker_args],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    env=child_env,
                    check=True,
                )
                row = json.loads(done.stdout.strip().splitlines()[-1])
                runs[_key(name, isa)].append(row)
                print(f"bench engine: round {r} {_key(name, isa)}: {row['tokens_per_s']:,.0f} tokens/s", flush=True)
    out = ROOT / "bench" / "results" / time.strftime("engine-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(runs, indent=1))
    print("| ISA | configuration | tokens/s (median) | / fp32 | attention share | projections share | kernels |")
    print("|---|---|---|---|---|---|---|")
    for isa in isas:
        base = statistics.median(r["tokens_per_s"] for r in runs[_key("fp32", isa)])
        for name in chosen:
            rows = runs[_key(name, isa)]
            rate = statistics.median(r["tokens_per_s"] for r in rows)
            attention = statistics.median(sum(r["kernel_shares"].get(k, 0.0) for k in ATTENTION) for r in rows)
            projections = statistics.median(sum(r["kernel_shares"].get(k, 0.0) for k in PROJECTIONS) for r in rows)
            kernels = ", ".join(sorted({r.get("kernels", "") for r in rows}))
            print(
                f"| {isa} | {name} | {rate:,.0f} | {rate / base:.2f} | {attention:.0%} | {projections:.0%} | "
                f"{kernels} |"
            )
    print(f"results in {out}")
    return runs


def _key(name: str, isa: str) -> str:
    return f"{name} [{isa}]"
