"""A checkpoint lacking weights its task runs is refused at start, never served with random weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from model_server.config import EngineConfig, ModelConfig
from model_server.errors import ConfigError
from model_server.server import load_model
from model_server.tasks import Task
from tests.server import checkpoints

CPU = EngineConfig(device="cpu")


@pytest.mark.parametrize(
    ("saved", "served", "missing"),
    [
        ("embedding", Task.FILL_MASK, "cls.predictions"),
        ("embedding", Task.TOKEN_CLASSIFICATION, "classifier.weight"),
        ("fill-mask", Task.TOKEN_CLASSIFICATION, "classifier.weight"),
        ("token-classification", Task.SEQUENCE_CLASSIFICATION, "bert.pooler.dense"),  # its classifier reads it
        ("token-classification", Task.FILL_MASK, "cls.predictions"),
    ],
)
def test_a_task_whose_weights_the_checkpoint_lacks_is_refused(
    tiny_models: dict[str, Path], saved: str, served: Task, missing: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(ModelConfig(path=tiny_models[saved], task=served), CPU)
    message = str(err.value)
    assert f"cannot serve {served.value}" in message
    assert missing in message and "would be random" in message


def test_the_refusal_counts_the_missing_weights_and_names_a_few(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r": 6 weights of AutoModelForMaskedLM are not in the checkpoint") as err:
        load_model(ModelConfig(path=tiny_models["embedding"], task=Task.FILL_MASK), CPU)
    assert str(err.value).count("cls.predictions.") == 4 and ", ...)" in str(err.value)


@pytest.mark.parametrize("saved", ["embedding", "sequence-classification", "token-classification", "fill-mask"])
def test_complete_checkpoints_load_for_their_task_and_as_embeddings(tiny_models: dict[str, Path], saved: str) -> None:
    own, _, _ = load_model(ModelConfig(path=tiny_models[saved]), CPU)
    assert own.task.value == saved
    # Embeddings never run the pooler, which masked-LM and token-classification checkpoints do not carry.
    embedding, _, _ = load_model(ModelConfig(path=tiny_models[saved], task=Task.EMBEDDING), CPU)
    assert embedding.task is Task.EMBEDDING


def test_serving_the_bundled_model_as_fill_mask_exits_2_naming_the_missing_head() -> None:
    ports = ["--port", "0", "--metrics-port", "0", "--http-port", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "bertmesh_cli", "serve", "--task", "fill-mask", *ports],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "cannot serve fill-mask" in result.stderr and "cls.predictions" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tokenizer_with_more_tokens_than_the_embedding_has_rows_is_refused(tmp_path: Path) -> None:
    # A token added to the tokenizer but never to the model: any text with it would index past the embedding.
    path = checkpoints.build(tmp_path / "grown", "embedding")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    rows = len(checkpoints.VOCAB)  # the config's vocab_size (the tokenizer has a few rows fewer: no harm)
    tokenizer.add_tokens([f"bertmeshword{i}" for i in range(rows - len(tokenizer) + 1)])
    tokenizer.save_pretrained(str(path))
    with pytest.raises(ConfigError, match=rf"tokenizer has {rows + 1} tokens .* embedding {rows} rows") as err:
        load_model(ModelConfig(path=path), CPU)
    assert "resize_token_embeddings" in str(err.value)
