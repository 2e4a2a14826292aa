"""The peers on the GPU, on the same corpus texts and random-weight checkpoints (part "peers").

- sentence-transformers `encode` (fp16 on CUDA: the model halved), batch 32 and 256, tokenisation included.
- plain transformers: the texts tokenised, sorted by length, cut into padded batches of 256 and moved to the
  device beforehand; timed: the forward passes only (the best case of a hand-written script). MFU counts real
  tokens only, as for bertmesh.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import corpus
from bench.flops import EncoderShape, useful_flops
from bench.gpu_report import attempt

if TYPE_CHECKING:
    from bench.gpu import GpuBenchOptions

PADDED_BATCH = 256
ENCODE_BATCHES = (32, 256)
MAX_TEXTS = 4096  # per timed pass (the corpus has more; the rate settles long before)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _texts(options: GpuBenchOptions) -> list[corpus.Text]:
    texts = corpus.load()[:MAX_TEXTS]
    return texts[:64] if options.device == "cpu" else texts  # the dry run proves the path, no more


def sentence_transformers_rate(model_dir: Path, options: GpuBenchOptions, batch_size: int) -> dict[str, Any]:
    """Real tokens/s of `SentenceTransformer.encode` over the texts at one batch size."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=options.device)
    if options.precisions[0] == "fp16":
        model.half()
    elif options.precisions[0] == "bf16":
        model.bfloat16()
    texts = _texts(options)
    strings = [t.text for t in texts]
    model.encode(strings[: 2 * batch_size], batch_size=batch_size)  # warm-up
    _sync(options.device)
    start = time.perf_counter()
    model.encode(strings, batch_size=batch_size)
    _sync(options.device)
    elapsed = time.perf_counter() - start
    return {
        "peer": f"sentence-transformers encode, batch {batch_size}",
        "tokens_per_s": sum(t.tokens for t in texts) / elapsed,
    }


def padded_transformers_rate(model_dir: Path, shape: EncoderShape, options: GpuBenchOptions) -> dict[str, Any]:
    """Real tokens/s and useful FLOP/s of transformers' forward on length-sorted padded batches."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(options.precisions[0], torch.float32)
    model: Any = transformers.AutoModel.from_pretrained(
        str(model_dir), local_files_only=True, attn_implementation="sdpa", dtype=dtype
    ).to(options.device)
    model.train(False)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    ids = sorted((e.ids for e in tokenizer.encode_batch([t.text for t in _texts(options)])), key=len)
    batches = []
    for i in range(0, len(ids), PADDED_BATCH):
        chunk = ids[i : i + PADDED_BATCH]
        longest = max(len(x) for x in chunk)
        tokens = torch.zeros(len(chunk), longest, dtype=torch.long)
        mask = torch.zeros(len(chunk), longest, dtype=torch.long)
        for row, x in enumerate(chunk):
            tokens[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        batches.append((tokens.to(options.device), mask.to(options.device)))
    with torch.inference_mode():
        model(input_ids=batches[-1][0], attention_mask=batches[-1][1])  # warm-up on the longest batch
        _sync(options.device)
        start = time.perf_counter()
        for tokens, mask in batches:
            model(input_ids=tokens, attention_mask=mask)
        _sync(options.device)
        elapsed = time.perf_counter() - start
    lengths = [len(x) for x in ids]
    return {
        "peer": f"transformers forward, length-sorted padded batches of {PADDED_BATCH}",
        "tokens_per_s": sum(lengths) / elapsed,
        "useful_flops_per_s": useful_flops(lengths, shape) / elapsed,
    }


def peers(
    dirs: dict[str, Path],
    shapes: dict[str, EncoderShape],
    options: GpuBenchOptions,
    peak: float,
    on_row: Callable[[dict[str, Any]], None],
    on_error: Callable[[str, BaseException], None],
) -> None:
    """Every peer on every model, at the first precision; each row handed to `on_row` as it is measured, each
    failure to `on_error`."""
    for model, path in dirs.items():
        measurements = [
            (f"sentence-transformers batch {size}", functools.partial(sentence_transformers_rate, path, options, size))
            for size in ENCODE_BATCHES
        ]
        measurements.append(
            ("transformers padded", functools.partial(padded_transformers_rate, path, shapes[model], options))
        )
        for what, measurement in measurements:
            measured = attempt(f"peer {model} {what}", measurement, on_error)
            if measured is None:
                continue
            row = measured | {"model": model, "precision": options.precisions[0]}
            if "useful_flops_per_s" in row:
                row["mfu_measured_peak"] = row["useful_flops_per_s"] / peak
            on_row(row)
