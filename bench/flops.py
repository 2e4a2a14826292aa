"""Useful-token FLOPs of a BERT encoder and the fp32 GEMM peak they are compared with.

Useful work counts real tokens only: padding, pooling and the embedding lookup are not useful FLOPs.
Per input of n tokens: 2 x encoder_params x n (every Linear weight is one multiply-add per token) plus the
attention matmuls, per layer 2 x n x n x hidden for Q.K^T and as much for attention x V.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EncoderShape:
    """What the FLOP count needs to know about a BERT encoder."""

    params: int  # weights of the encoder layers' Linear modules (no embeddings, no pooler)
    layers: int
    hidden: int


def minilm_l6_shape() -> EncoderShape:
    """all-MiniLM-L6-v2: 6 layers, hidden 384, FFN 1536 (computed, so it matches encoder_shape of the model)."""
    hidden, ffn, layers = 384, 1536, 6
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn  # Q, K, V, output projection; FFN up and down
    return EncoderShape(params=per_layer * layers, layers=layers, hidden=hidden)


def input_flops(tokens: int, shape: EncoderShape) -> float:
    """Useful FLOPs of one input of `tokens` real tokens."""
    return 2.0 * shape.params * tokens + 4.0 * shape.layers * shape.hidden * tokens * tokens


def useful_flops(lengths: Iterable[int], shape: EncoderShape) -> float:
    """Useful FLOPs of many inputs."""
    return sum(input_flops(n, shape) for n in lengths)


def encoder_shape(model: object) -> EncoderShape:
    """The EncoderShape of a loaded transformers BertModel: counts its encoder layers' Linear weights."""
    import torch

    encoder = model.encoder  # type: ignore[attr-defined]
    params = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    config = model.config  # type: ignore[attr-defined]
    return EncoderShape(params=int(params), layers=int(config.num_hidden_layers), hidden=int(config.hidden_size))


def gemm_peak_flops(threads: int, size: int = 1536, seconds: float = 2.0) -> float:
    """Best fp32 matmul rate (FLOP/s) torch reaches on `threads` threads: square GEMMs, best of repeated timings,
    the faster of its two CPU matrix libraries (the default BLAS through torch.mm, and oneDNN, which bertmesh's
    packed engine uses). On AMD processors MKL is as fast as oneDNN only with its vendor test answered
    (model_server.mkl_amd, which `python -m bench` applies before torch loads); measuring one library alone
    could let a system using the other exceed "100%" of the peak."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        out = torch.empty(size, size)
        kernels: list[Callable[[], object]] = [lambda: torch.mm(a, b, out=out)]
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):  # type: ignore[no-untyped-call]
            packed = torch.ops.mkldnn._reorder_linear_weight(b, None)
            kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
        best = 0.0
        for kernel in kernels:
            kernel()  # warm the kernels
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                kernel()
                elapsed = time.perf_counter() - start
                best = max(best, 2.0 * size**3 / elapsed)
        return best
    finally:
        torch.set_num_threads(previous)
