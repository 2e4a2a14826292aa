"""Tiny random BERT checkpoints, written in the Hugging Face layout the server loads (real files, real loader)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from model_server.backend.packed_bert import Packing
from model_server.tasks import ModelInput, Pooling

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an is are was were be to of and in on at for with by from as it this that these those i you "
    "he she we they my your our their paris london berlin john mary acme corp city country river "
    "mountain company works lives visited founded born capital of france germany england good bad great "
    "terrible movie film book love hate like not very really quite weather today tomorrow rain sun sunny "
    "cloudy cold hot warm new old big small red blue green house car dog cat bird tree water fire earth "
    "air sky sea day night time year people man woman child world life hand part place case week point "
    "number group problem fact"
).split()
PIECES = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + ["##s", "##ing", "##ed", "##er", "##ly"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789")
PUNCT = list(".,!?;:'\"-()")
VOCAB = SPECIAL + sorted(set(WORDS)) + LETTERS + PIECES + PUNCT

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
SENTIMENT_LABELS = ["negative", "neutral", "positive"]


def _config(**extra: Any) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )


def _labels(names: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def write_tokenizer(path: Path) -> None:
    """A WordPiece tokenizer over VOCAB, saved as tokenizer.json + vocab.txt + tokenizer_config.json."""
    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    # The vocabulary as a mapping: transformers 5's BertTokenizer ignores `vocab_file` and would save a
    # tokenizer.json knowing only the special tokens (every word [UNK]).
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    tokenizer.save_pretrained(str(path))


def build(path: Path, task: str, *, seed: int = 0, type_vocab_size: int = 2) -> Path:
    """Writes a random checkpoint for `task` (embedding, sequence-classification, token-classification,
    fill-mask, rerank) with its tokenizer into `path`; `type_vocab_size` 1 is a model without segment types."""
    torch.manual_seed(seed)
    model: transformers.PreTrainedModel
    if task == "embedding":
        model = transformers.BertModel(_config())
    elif task == "sequence-classification":
        model = transformers.BertForSequenceClassification(_config(**_labels(SENTIMENT_LABELS)))
    elif task == "token-classification":
        model = transformers.BertForTokenClassification(_config(**_labels(NER_LABELS)))
    elif task == "fill-mask":
        model = transformers.BertForMaskedLM(_config())
    elif task == "rerank":  # a cross-encoder: one relevance logit per (query, document) pair
        # Wider weights than BERT's 0.02: the default leaves every logit near 0, so that a pair typed wrong or
        # cut wrong would still score within a test's tolerance.
        model = transformers.BertForSequenceClassification(
            _config(num_labels=1, initializer_range=0.2, type_vocab_size=type_vocab_size)
        )
    else:
        raise ValueError(task)
    model.train(False)
    model.save_pretrained(str(path), safe_serialization=True)
    write_tokenizer(path)
    return path


def inputs_of_lengths(lengths: Sequence[int]) -> list[ModelInput]:
    """Model inputs of these lengths ([CLS] ... [SEP] around ordinary tokens), alternating mean and CLS pooling,
    each with one fill-mask position (heads read what they need)."""
    return [
        ModelInput(
            (2, *(5 + (i * 7 + j) % 90 for j in range(n - 2)), 3)[:n], Pooling.CLS if i % 2 else Pooling.MEAN, (0,)
        )
        for i, n in enumerate(lengths)
    ]


def mean_pool(states: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Reference pooling for packed-encoder tests: each sequence's mean token vector, [sequences, hidden]."""
    starts = packing.starts.tolist()
    return torch.stack([states[start : start + n].mean(0) for start, n in zip(starts, packing.lengths, strict=True)])
