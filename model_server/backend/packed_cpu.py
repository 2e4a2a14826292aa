"""The packed engine's model on CPU: each kernel combination the flags allow is built and timed at load on
batches shaped like the token budget, and the fastest is kept (model_server.backend.kernel_choice decides).

Candidates: projections by oneDNN (fp32 with the activation fused, or per-token int8) or by PyTorch (int8: torch's
dynamic quantisation), attention by the packed kernel or by PyTorch's scaled-dot-product attention. For int8,
`auto` projections are oneDNN's wherever torch has it, whatever the timing: torch's dynamic quantisation
scales each batch as a whole, which costs accuracy and makes a text's vector depend on its batch (the result
cache relies on it not doing so). The MKL vendor answer (model_server.mkl_amd) is not among the candidates: it
is decided before torch loads, so one process cannot time both; `python -m bench engine` measures it.

Cost at load: each candidate runs each shape four times on the serving thread count; on the bundled MiniLM
with one thread about two seconds in all (the startup line states it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from model_server.backend import native_attention
from model_server.backend.kernel_choice import Kernels, candidates, choose, summary
from model_server.backend.onednn import int8_path, onednn_available
from model_server.backend.packed_bert import PackedModel, plan
from model_server.backend.torch_engine import quantize_int8
from model_server.config import DEFAULT_BATCH_TOKENS, EngineConfig

log = logging.getLogger(__name__)

# Timed batches: one short and one long sentence (what a lone request waits for), and mixed lengths (the
# corpus's spread) up to the token budget, capped so that load stays quick on big models.
MEASURE_TOKENS = 384
MIXED_LENGTHS = (24, 64, 128, 16, 96, 40, 200, 8, 48, 32, 80, 12, 144, 56)
ROUNDS = 3  # timed runs per shape after one untimed (the best counts: the machine may be busy)


def shapes(batch_tokens: int, max_positions: int) -> dict[str, list[int]]:
    """The timed batches by name: sequence lengths each, within the model's positions."""
    budget = min(batch_tokens, MEASURE_TOKENS)
    mixed: list[int] = []
    for length in MIXED_LENGTHS * (budget // 8 + 1):
        take = min(length, max_positions, budget - sum(mixed))
        if take <= 0:
            break
        mixed.append(take)
    return {"1x16": [min(16, max_positions)], "1x128": [min(128, max_positions)], f"{sum(mixed)} tokens": mixed}


def cpu_model(model: Any, precision: str, settings: EngineConfig) -> tuple[PackedModel, str]:
    """The packed model with the kernels chosen for this machine; and that choice in words."""
    int8 = precision == "int8"
    onednn = onednn_available()
    kernel, how = native_attention.load() if settings.attention != "torch" else (None, "--attention torch")
    config = model.config
    head_dim = int(config.hidden_size) // int(config.num_attention_heads)
    native = kernel is not None and kernel.supports(head_dim, torch.float32, torch.device("cpu"))
    if kernel is not None and not native:
        how = "the packed kernel takes head size 32 or 64"
    projections = "onednn" if int8 and onednn and settings.projections == "auto" else settings.projections
    options = candidates(projections, settings.attention, onednn=onednn, native=native)
    built: dict[str, PackedModel] = {}
    for choice in dict.fromkeys(c.projections for c in options):
        built[choice] = _build(model, choice, int8, settings.int8_fuse)

    def configure(kernels: Kernels) -> PackedModel:
        packed = built[kernels.projections]
        if kernels.attention == "native" and kernel is not None:
            packed.encoder.use_native_attention(kernel)
        else:
            packed.encoder.use_pytorch_attention()
        return packed

    if len(options) == 1:
        chosen = options[0]
        line = f"{chosen.describe()} (only candidate: flags or availability)"
    else:
        started = time.perf_counter()
        batches = shapes(settings.batch_tokens or DEFAULT_BATCH_TOKENS["cpu"], int(config.max_position_embeddings))
        timings = _measure(options, configure, list(batches.values()), int(config.vocab_size))
        chosen = choose(timings)
        line = (
            f"chosen by timing on {torch.get_num_threads()} thread(s), {summary(timings, chosen, list(batches))} "
            f"({time.perf_counter() - started:.1f} s)"
        )
    packed = configure(chosen)
    isa = f", packed kernel {kernel.isa} code" if kernel is not None and chosen.attention == "native" else ""
    if native or settings.attention == "torch":
        log.info("packed engine kernels: %s%s", line, isa)
    else:
        log.info("packed engine kernels: %s%s (packed attention kernel not used: %s)", line, isa, how)
    if int8 and chosen.projections == "onednn":
        log.info("packed engine: %s", int8_path().describe())
    return packed, chosen.describe() + isa


def _build(model: Any, projections: str, int8: bool, fuse: bool) -> PackedModel:
    packed = PackedModel(model).eval()
    if projections == "onednn":
        log.info("packed engine: candidate projections by %s", packed.encoder.use_onednn(int8=int8, fuse=fuse))
    elif int8:
        packed = quantize_int8(packed)
        log.info("packed engine: int8 by torch's dynamic quantisation (no oneDNN; per-batch 7-bit activations)")
    return packed


def _measure(
    options: list[Kernels], configure: Callable[[Kernels], PackedModel], batches: list[list[int]], vocabulary: int
) -> dict[Kernels, list[float]]:
    """Best seconds per batch of each candidate's encoder; rounds interleave the candidates (so that a burst of
    other load hits them all alike), the first untimed."""
    inputs = []
    for lengths in batches:
        ids = torch.arange(sum(lengths)) % max(vocabulary - 1, 1) + 1
        inputs.append((ids, plan(lengths, torch.device("cpu"))))
    best = {candidate: [float("inf")] * len(inputs) for candidate in options}
    with torch.inference_mode():
        for round_number in range(ROUNDS + 1):
            for candidate in options:
                encoder = configure(candidate).encoder
                for i, (ids, packing) in enumerate(inputs):
                    started = time.perf_counter()
                    encoder(ids, packing)
                    if round_number:
                        best[candidate][i] = min(best[candidate][i], time.perf_counter() - started)
    return best
