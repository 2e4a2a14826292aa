"""Reads a Hugging Face format model directory without loading weights: files, task, labels, defaults.

Safetensors only: a directory holding pickle weights (pytorch_model.bin, *.pt, ...) and no *.safetensors is
refused, because unpickling runs arbitrary code from the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_server.errors import ConfigError
from model_server.tasks import Pooling, Task

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_OFFSET_POSITION_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "longformer"})
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
# Architecture name suffix -> task, in the order they are tried.
_ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForMaskedLM", Task.FILL_MASK),
    ("ForPreTraining", Task.FILL_MASK),
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the server needs to know about a model directory before and after loading it."""

    path: Path
    config: dict[str, Any]
    task: Task
    architecture: str
    weight_files: tuple[Path, ...]
    labels: tuple[str, ...]
    multi_label: bool
    default_pooling: Pooling
    default_normalize: bool
    max_positions: int
    sentence_max_tokens: int | None
    digest: str

    @property
    def label_count(self) -> int:
        """Outputs of the classification head the config declares."""
        return _label_count(self.config)

    @property
    def default_max_tokens(self) -> int:
        """Token limit per input: the sentence-transformers max_seq_length if set, else the positions."""
        if self.sentence_max_tokens:
            return min(self.sentence_max_tokens, self.max_positions)
        return self.max_positions


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return data


def _weight_files(path: Path) -> tuple[Path, ...]:
    weights = tuple(sorted(path.glob("*.safetensors")))
    if weights:
        return weights
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); bertmesh loads safetensors only, because "
            'unpickling runs code from the file. Convert with: python -c "from transformers import AutoModel; '
            f"AutoModel.from_pretrained('{path}').save_pretrained('OUT', safe_serialization=True)\""
        )
    raise ConfigError(f"{path} holds no *.safetensors weights")


def _detect_task(config: dict[str, Any], path: Path) -> tuple[Task, str]:
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else str(config.get("model_type", "unknown"))
    if (path / "modules.json").exists():
        return Task.EMBEDDING, architecture  # a sentence-transformers model
    for suffix, task in _ARCHITECTURE_TASKS:
        if architecture.endswith(suffix):
            # One output cannot be a class distribution: it is a cross-encoder's relevance logit.
            if task is Task.SEQUENCE_CLASSIFICATION and _label_count(config) == 1:
                return Task.RERANK, architecture
            return task, architecture
    return Task.EMBEDDING, architecture


def _label_count(config: dict[str, Any]) -> int:
    """Outputs of a classification head: id2label's size, else num_labels (transformers' default 2)."""
    return len(config.get("id2label") or {}) or int(config.get("num_labels", 2))


def _sentence_defaults(path: Path) -> tuple[Pooling, bool, int | None]:
    """Pooling, normalisation and token limit from a sentence-transformers layout, if there is one."""
    pooling, normalize, max_tokens = Pooling.MEAN, False, None
    modules_file = path / "modules.json"
    if modules_file.exists():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"cannot read {modules_file}: {exc}") from exc
        normalize = any(isinstance(m, dict) and m.get("type") == _ST_NORMALIZE for m in modules)
        for module in modules:
            if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
                pooling_config = path / str(module.get("path", "")) / "config.json"
                if pooling_config.exists() and _read_json(pooling_config).get("pooling_mode_cls_token"):
                    pooling = Pooling.CLS
    st_config = path / "sentence_bert_config.json"
    if st_config.exists():
        value = _read_json(st_config).get("max_seq_length")
        max_tokens = int(value) if isinstance(value, int) and value > 0 else None
    return pooling, normalize, max_tokens


def _max_positions(config: dict[str, Any]) -> int:
    """Usable sequence length; RoBERTa-style models offset positions by pad_token_id + 1."""
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in _OFFSET_POSITION_TYPES:
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions


def _digest(config_file: Path, weights: tuple[Path, ...]) -> str:
    """A revision for caches and ModelInfo: config plus each weight file's size and safetensors header.

    The header lists every tensor's name, dtype, shape and offsets, so it changes with the weights' layout;
    hashing whole files would cost seconds on large models at every start.
    """
    h = hashlib.sha256(config_file.read_bytes())
    for weight in weights:
        with weight.open("rb") as f:
            raw_len = f.read(8)
            header_len = struct.unpack("<Q", raw_len)[0] if len(raw_len) == 8 else 0
            h.update(weight.name.encode() + raw_len + f.read(min(header_len, 100_000_000)))
        h.update(str(weight.stat().st_size).encode())
    return "sha256:" + h.hexdigest()[:16]


def inspect_checkpoint(path: Path, task: Task | None = None) -> Checkpoint:
    """Reads a model directory; `task` overrides the one detected from its architecture."""
    if not path.is_dir():
        raise ConfigError(f"model directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ConfigError(f"{path} has no config.json: not a Hugging Face model directory")
    config = _read_json(config_file)
    weights = _weight_files(path)
    if not (path / "tokenizer.json").exists() and not (path / "vocab.txt").exists():
        raise ConfigError(f"{path} has neither tokenizer.json nor vocab.txt")
    detected, architecture = _detect_task(config, path)
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label)))
    pooling, normalize, sentence_max = _sentence_defaults(path)
    return Checkpoint(
        path=path,
        config=config,
        task=task or detected,
        architecture=architecture,
        weight_files=weights,
        labels=labels,
        multi_label=config.get("problem_type") == "multi_label_classification",
        default_pooling=pooling,
        default_normalize=normalize,
        max_positions=_max_positions(config),
        sentence_max_tokens=sentence_max,
        digest=_digest(config_file, weights),
    )
