"""Linear layers computed by oneDNN on CPU, fp32 and int8, with weights packed once into oneDNN's layout.

Why: oneDNN packs each weight once into its own blocked layout, fuses the feed-forward activation, and has
VNNI int8 kernels; torch's default CPU path (MKL) keeps to generic code on AMD processors unless
model_server.mkl_amd answers its vendor test. `python -m bench engine` measures the engine with and without
these (docs/benchmarks.md). Only for the packed engine, whose activations are 2-D [tokens, features].
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from model_server.backend.int8_isa import Int8Path, choose_int8_path, detect_isa

_log = logging.getLogger(__name__)

# transformers' hidden_act -> oneDNN's fused post-op (attr, algorithm).
FUSED_ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "relu": ("relu", "")}
_INT8_RANGE = 127.0
_UINT8_ZERO = 128
# Without VNNI two adjacent u8 x s8 products are summed into an int16: with |w1| + |w2| <= 128,
# 255 x 128 = 32 640 <= 32 767 and no pair can saturate (model_server.backend.int8_isa).
_PAIR_LIMIT = 128
# The inputs oneDNN pairs: adjacent ones within each aligned group of four (its int8 weight layouts' inner block).
_PAIR_GROUP = 4


def onednn_available() -> bool:
    """Whether torch was built with oneDNN's fp32 and int8 linear kernels."""
    available = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return (
        bool(available)
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.onednn, "qlinear_pointwise")
    )


class OneDnnLinear(nn.Module):
    """x @ W.T + b in fp32 by oneDNN, optionally followed by a fused activation."""

    def __init__(self, linear: Any, attr: str = "none", algorithm: str = "") -> None:
        super().__init__()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = linear.bias.detach() if linear.bias is not None else None
        self.attr = attr
        self.algorithm = algorithm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The projection of [tokens, in] to [tokens, out]."""
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.packed_weight, self.bias, self.attr, [], self.algorithm
        )
        return out


class OneDnnInt8Linear(nn.Module):
    """x @ W.T + b with int8 weights (one scale per output channel) and int8 activations (one scale per token).

    oneDNN's kernel takes one activation scale per call, so each token is first divided by its own largest
    magnitude: every row then uses the full int8 range under the common scale 1/127, and the row's magnitude
    multiplies the result back. Per-token scales keep a token's result independent of the batch it shares
    (the result cache relies on that) and keep accuracy: MiniLM embeddings at cosine >= 0.98 to fp32 (the tests'
    sentences; 0.996 on the bench corpus), against 0.87 for per-batch scales (torch's dynamic quantisation).

    Where the CPU's int8 product sums pairs into int16 (`int8_path()`; or as `limit_pairs` says), the weights
    are first limited by `limit_pair_sums`, so the product stays exact there too.
    """

    def __init__(self, linear: Any, *, limit_pairs: bool | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        saturates = int8_path().saturates if limit_pairs is None else limit_pairs
        quantised, scales = (quantise_pair_safe if saturates else quantise_weights)(weight)
        self.packed_weight = torch.ops.onednn.qlinear_prepack(quantised, None)
        self.weight_scales = scales
        self.weight_zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        # Always a tensor (zeros for a layer without one): the staged forward adds it in its fused pass.
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(weight.shape[0])
        self.bias: torch.Tensor = bias

    def product(self, quantised: torch.Tensor) -> torch.Tensor:
        """The int8 product of rows quantised by `quantise_rows`, before each row's magnitude multiplies back."""
        out: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
            quantised,
            1.0 / _INT8_RANGE,
            _UINT8_ZERO,
            self.packed_weight,
            self.weight_scales,
            self.weight_zero_points,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The projection of fp32 [tokens, in] to fp32 [tokens, out]."""
        quantised, magnitude = quantise_rows(x)
        return _scale_back(self.product(quantised), magnitude, self.bias)


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of fp32 [tokens, features] to uint8 around 128 over its own largest magnitude; and those
    magnitudes [tokens, 1]."""
    magnitude = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
    quantised = (x / magnitude * _INT8_RANGE).round() + _UINT8_ZERO
    return quantised.to(torch.uint8), magnitude


def quantise_weights(weight: torch.Tensor, levels: float = _INT8_RANGE) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 weights [out, in] to int8 in [-levels, levels] over each output channel's largest magnitude; and
    the channels' scales [out]."""
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / levels
    return torch.round(weight / scales[:, None]).to(torch.int8), scales


# The ranges tried per output channel where pairs can saturate: 64 never needs limiting (64 + 64 = 128).
_PAIR_SAFE_LEVELS = (127.0, 112.0, 96.0, 80.0, 64.0)


def quantise_pair_safe(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantise_weights` for an int8 product with int16 pair sums: per output channel, the range (127 down to
    64) whose pair-limited weights (`limit_pair_sums`) are closest to the fp32 ones."""
    peak = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
    best, best_scales, best_error = weight, peak, torch.full_like(peak, float("inf"))
    for levels in _PAIR_SAFE_LEVELS:  # in float throughout: int8 conversions dominated the load time
        scales = peak / levels
        quantised = _limit_pairs(torch.round(weight / scales))
        error = (quantised * scales - weight).square().sum(dim=1, keepdim=True)
        better = error < best_error
        best = torch.where(better, quantised, best)
        best_scales, best_error = torch.where(better, scales, best_scales), torch.where(better, error, best_error)
    return best.to(torch.int8), best_scales.squeeze(1)


def limit_pair_sums(quantised: torch.Tensor) -> torch.Tensor:
    """int8 weights [out, in] changed where needed so that in every aligned group of four inputs any two
    magnitudes add up to at most 128: no u8 x s8 pair sum can then saturate an int16.

    Only groups whose two largest magnitudes exceed 128 change: where the second largest is at most 64, the
    largest is cut to 128 minus it; otherwise every magnitude above 64 is cut to 64.
    """
    return _limit_pairs(quantised.float()).to(torch.int8)


def _limit_pairs(quantised: torch.Tensor) -> torch.Tensor:
    """`limit_pair_sums` on integer-valued fp32 weights."""
    rows, inputs = quantised.shape
    half = _PAIR_LIMIT // 2
    magnitudes = F.pad(quantised.abs(), (0, -inputs % _PAIR_GROUP)).view(rows, -1, _PAIR_GROUP)
    # The second largest of four by a min/max network: several times cheaper than topk.
    a, b, c, d = magnitudes.unbind(dim=2)
    second = torch.maximum(torch.minimum(a.maximum(b), c.maximum(d)), torch.maximum(a.minimum(b), c.minimum(d)))
    cap = torch.where(second > half, half, _PAIR_LIMIT - second).unsqueeze(2)
    return torch.copysign(torch.minimum(magnitudes, cap).view(rows, -1)[:, :inputs], quantised)


@functools.cache
def int8_path() -> Int8Path:
    """This machine's int8 path (decided once per process from /proc/cpuinfo and ONEDNN_MAX_CPU_ISA)."""
    return choose_int8_path(detect_isa())


def _scale_back(product: torch.Tensor, magnitude: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """An int8 product in fp32 with its rows' magnitudes and the layer's bias applied."""
    return product * magnitude + bias


def _norm_stage(
    product: torch.Tensor,
    magnitude: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A projection's output plus the residual, layer-normed, and that result quantised for the next product."""
    y = F.layer_norm(product * magnitude + bias + residual, (residual.shape[1],), weight, norm_bias, eps)
    quantised, scale = quantise_rows(y)
    return y, quantised, scale


def _activation_stage(
    product: torch.Tensor, magnitude: torch.Tensor, bias: torch.Tensor, activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The feed-forward's up projection, activated ("gelu", "gelu-tanh" or "relu") and quantised for the down."""
    h = product * magnitude + bias
    approximate = "tanh" if activation == "gelu-tanh" else "none"
    return quantise_rows(F.relu(h) if activation == "relu" else F.gelu(h, approximate=approximate))


# transformers' hidden_act -> the activation the int8 feed-forward stage applies.
INT8_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu-tanh", "relu": "relu"}


class Int8Stages:
    """The element-wise work around int8 products (quantise, scale back, bias, residual, layer norm, GELU).

    Eagerly each of these is several passes over the activations, which cost as much as the int8 products
    themselves (eager, int8 is 1.01x fp32 on MiniLM; fused, 1.60x: `python -m bench engine`). `compile()` has
    torch.compile (inductor, C++ on CPU) fuse each stage into one or two loops; without a working compiler the
    stages stay eager, with the same arithmetic.
    """

    def __init__(self) -> None:
        # Typed loosely: torch.compile returns untyped callables with the same signatures.
        self.quantise: Callable[..., Any] = quantise_rows
        self.scale_back: Callable[..., Any] = _scale_back
        self.norm: Callable[..., Any] = _norm_stage
        self.activation: Callable[..., Any] = _activation_stage
        self.compiled = False

    def compile(self, hidden: int, intermediate: int, activation: str, eps: float) -> bool:
        """Compiles every stage for any number of tokens (tried on small batches); False, eager, on failure."""
        try:
            stages = [torch.compile(f, dynamic=True) for f in (quantise_rows, _scale_back, _norm_stage)]
            activation_stage = torch.compile(_activation_stage, dynamic=True)
            bias, norm, wide_bias = torch.randn(hidden), torch.ones(hidden), torch.randn(intermediate)
            with torch.inference_mode():
                # Two token counts: shapes are settled here, never while a request waits.
                for rows in (7, 9):
                    x, scale = torch.randn(rows, hidden), torch.rand(rows, 1)
                    stages[0](x)
                    stages[1](x, scale, bias)
                    stages[2](x, scale, bias, x, norm, bias, eps)
                    activation_stage(torch.randn(rows, intermediate), scale, wide_bias, activation)
        except Exception as exc:  # no C++ compiler, an unsupported platform: eager works everywhere
            _log.warning("int8 stages stay unfused (torch.compile failed: %s)", str(exc).splitlines()[0][:200])
            return False
        self.quantise, self.scale_back, self.norm = stages
        self.activation = activation_stage
        self.compiled = True
        return True
